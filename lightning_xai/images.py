"""Turning what explainers draw (arrays, tensors, PIL images, matplotlib figures) into RGB uint8 images,
masks and boxes for :class:`~lightning_xai.records.Media`."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from lightning_xai.jsonable import _is_torch_tensor, to_jsonable

__all__ = ["figure_to_array"]


def figure_to_array(fig: Any, close: bool = True) -> np.ndarray:
    """Render a matplotlib figure to a ``uint8`` RGB array ``[H, W, 3]``; close it (pyplot) if ``close``.

    The figure is drawn once on an Agg canvas at its own dpi and read from the canvas buffer (no PNG
    encode and decode on the way); transparent parts are composited over white, as a saved PNG on a
    white page would show them.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 1), dpi=50)
        >>> figure_to_array(fig).shape
        (50, 100, 3)
    """
    try:
        canvas = fig.canvas
        if not hasattr(canvas, "buffer_rgba"):  # a bare Figure() has no renderer of its own yet
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            canvas = FigureCanvasAgg(fig)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
        alpha = rgba[..., 3:4]
        if bool((alpha == 255).all()):
            return np.ascontiguousarray(rgba[..., :3])
        a = alpha.astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    finally:
        if close:
            _close_figure(fig)


def _close_figure(fig: Any) -> None:
    plt = sys.modules.get("matplotlib.pyplot")  # figures made with pyplot imply pyplot is imported
    if plt is not None:
        plt.close(fig)


def _is_figure(obj: Any) -> bool:
    mfig = sys.modules.get("matplotlib.figure")
    return mfig is not None and isinstance(obj, mfig.Figure)


def _to_rgb_uint8(image: Any, key: str) -> np.ndarray:
    """Normalise a supported image to a contiguous ``uint8`` ``[H, W, 3]`` array."""
    what = f"Media {key!r}"
    if _is_figure(image):
        return figure_to_array(image, close=True)
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        return np.asarray(image.convert("RGB")).copy()
    chw = False
    if _is_torch_tensor(image):
        t = image.detach().cpu()
        if t.dtype.is_floating_point and t.dtype != sys.modules["torch"].float64:
            t = t.float()
        arr = t.numpy()
        chw = arr.ndim == 3  # tensors are channel-first: [C, H, W]
    elif isinstance(image, np.ndarray):
        arr = image
        # numpy images are HWC; accept CHW when it is unambiguous
        chw = arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4)
    else:
        raise TypeError(
            f"{what}: image must be a float tensor [3, H, W] in [0, 1], a numpy array [H, W, 3] "
            f"(uint8, or float in [0, 1]), a PIL image or a matplotlib Figure; got {type(image).__qualname__}"
        )
    if arr.ndim == 3 and chw:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{what}: expected an image of shape [3, H, W] (tensor) or [H, W, 3] (numpy) "
            f"(1 channel or [H, W] grey is also accepted), got shape {tuple(image.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: image is empty (shape {tuple(image.shape)})")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{what}: integer image values must lie in [0, 255], got [{lo}, {hi}]")
        return np.ascontiguousarray(arr.astype(np.uint8))
    if arr.dtype.kind != "f":
        raise TypeError(f"{what}: unsupported image dtype {arr.dtype}; use uint8 or float in [0, 1]")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"{what}: float image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; undo the dataset "
            "normalisation (x * std + mean) or pass uint8"
        )
    return np.ascontiguousarray(np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8))


def _to_mask(mask: Any, name: str, key: str, hw: tuple[int, int]) -> np.ndarray:
    what = f"Media {key!r}: mask {name!r}"
    if _is_torch_tensor(mask):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [H, W] of class ids, got shape {mask.shape}")
    if tuple(mask.shape) != hw:
        raise ValueError(f"{what} has shape {tuple(mask.shape)} but the image is {hw} (H, W)")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or not np.all(mask == np.round(mask)):
            raise ValueError(
                f"{what} must hold integer class ids; threshold or label continuous maps first "
                "(e.g. (saliency > t).astype(int))"
            )
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"{what}: unsupported dtype {mask.dtype}; use an integer or bool array")
    lo, hi = int(mask.min()), int(mask.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{what}: class ids must lie in [0, 255], got [{lo}, {hi}]")
    return mask.astype(np.uint8)


_BOX_KEYS = ("x0", "y0", "x1", "y1")


def _to_box(box: Any, i: int, key: str) -> dict[str, Any]:
    what = f"Media {key!r}: boxes[{i}]"
    if not isinstance(box, Mapping):
        raise TypeError(
            f"{what} must be a dict with keys {list(_BOX_KEYS)} (+ optional label, class_id, score)"
        )
    missing = [k for k in _BOX_KEYS if k not in box]
    if missing:
        raise ValueError(
            f"{what} is missing {missing}; a box is {{'x0', 'y0', 'x1', 'y1'}} in pixels "
            "plus optional 'label' (str), 'class_id' (int), 'score' (float), 'group' (str)"
        )
    out: dict[str, Any] = {k: float(to_jsonable(box[k], f"{what}[{k!r}]")) for k in _BOX_KEYS}
    if out["x1"] < out["x0"] or out["y1"] < out["y0"]:
        raise ValueError(f"{what}: need x0 <= x1 and y0 <= y1, got {out}")
    for k, v in box.items():
        if k not in out:
            out[k] = to_jsonable(v, f"{what}[{k!r}]")
    return out
