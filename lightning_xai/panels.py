"""Image panels with titles, drawn fast enough to log every epoch.

Callbacks show images next to each other (a probe and its concept maps, the images an optimised prompt
generates) with a short title over each. Drawing those as matplotlib subplots costs about 50 ms per figure
(axes, ticks and ``tight_layout``; a probe with two concept maps, 2-core CPU), and a callback draws several
every explained epoch. :func:`panel_figure` composes the panels into one pixel canvas with numpy and draws
only the text with matplotlib (about 15 ms for the same figure, measured interleaved), and :func:`heat_overlay` blends a map over an image the way ``imshow`` with
``alpha`` would.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["display_image", "heat_overlay", "panel_figure"]

_TITLE_PT = 7.0
_SUPTITLE_PT = 9.0


def display_image(image: Tensor) -> Tensor:
    """An image (``[C, H, W]`` or ``[H, W]``, any range) as a new ``[3, H, W]`` tensor in [0, 1] for display.

    Grey is repeated to RGB and channels after the third dropped; values already in [0, 1] stay as they
    are, others (normalised inputs) are min-max scaled.

    Example:
        >>> display_image(torch.tensor([[[-1.0, 1.0]]])).tolist()  # one grey row, normalised
        [[[0.0, 1.0]], [[0.0, 1.0]], [[0.0, 1.0]]]
    """
    x = image.detach().float().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"an image must be [C, H, W] or [H, W], got shape {list(image.shape)}.")
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    x = x[:3]
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        x = (x - lo) / max(hi - lo, 1e-12)
    return x.clamp(0.0, 1.0)


def _hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """``[3, H, W]`` tensor or ``[H, W, 3]`` array in [0, 1] -> float ``[H, W, 3]`` array in [0, 1]."""
    if isinstance(image, Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3:
            raise ValueError(f"a panel must be an image [C, H, W], got shape {list(x.shape)}.")
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        arr = x[:3].permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (1, 3):
            raise ValueError(f"a panel must be an image [H, W, 3], got shape {list(arr.shape)}.")
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def heat_overlay(image: Tensor, heat: Tensor | np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> Tensor:
    """``heat`` (``[H, W]`` in [0, 1]) coloured with ``cmap`` and blended over ``image`` (``[3, H, W]`` in [0, 1]).

    The same pixels as ``imshow(image); imshow(heat, cmap=cmap, alpha=alpha, vmin=0, vmax=1)``, without axes.

    Example:
        >>> out = heat_overlay(torch.zeros(3, 4, 4), torch.ones(4, 4), alpha=1.0)
        >>> [round(float(v), 2) for v in out[:, 0, 0]]  # jet at 1.0 is dark red
        [0.5, 0.0, 0.0]
    """
    from matplotlib import colormaps

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    h = heat.detach().float().cpu().numpy() if isinstance(heat, Tensor) else np.asarray(heat, dtype=np.float32)
    if h.shape != tuple(image.shape[-2:]):
        raise ValueError(f"the heat map is {list(h.shape)} but the image is {list(image.shape[-2:])}.")
    colour = torch.from_numpy(colormaps[cmap](np.clip(h, 0.0, 1.0))[..., :3].astype(np.float32)).permute(2, 0, 1)
    return ((1.0 - alpha) * image.detach().float().cpu() + alpha * colour).clamp(0.0, 1.0)


def panel_figure(
    panels: Sequence[Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    title: str = "",
    cols: int | None = None,
    panel_px: int = 150,
    dpi: int = 100,
) -> Any:
    """A matplotlib ``Figure`` of image panels in rows of ``cols``, a title over each and ``title`` over all.

    Panels (``[3, H, W]`` tensors or ``[H, W, 3]`` arrays in [0, 1], all of one size) are enlarged by a whole
    factor towards ``panel_px`` pixels (nearest neighbour, so pixels stay sharp) and placed on a white
    canvas with numpy; only the titles are drawn by matplotlib, wrapped to their panel's width.

    Args:
        panels: the images, in reading order.
        titles: one per panel (``""`` for none); may contain line breaks.
        title: the figure's title.
        cols: panels per row; default all in one row.
        panel_px: the size a panel is enlarged towards (its longer side), in pixels.
        dpi: dots per inch of the figure (the canvas is drawn 1:1 in pixels).

    Raises:
        ValueError: no panels, panels of different sizes, or a number of titles other than of panels.

    Example:
        >>> from lightning_xai.records import figure_to_array
        >>> fig = panel_figure([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)], ["black", "white"], "two panels")
        >>> figure_to_array(fig).shape[1] > 2 * 8
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = [_hwc(p) for p in panels]
    if not images:
        raise ValueError("panel_figure needs at least one panel.")
    sizes = sorted({im.shape[:2] for im in images})
    if len(sizes) > 1:
        raise ValueError(f"panels must share one size, got {[list(s) for s in sizes]}.")
    titles = list(titles) if titles is not None else [""] * len(images)
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} panels; give one per panel.")
    n = len(images)
    cols = n if cols is None else max(1, min(int(cols), n))
    rows = math.ceil(n / cols)
    h0, w0 = sizes[0]
    scale = max(1, round(panel_px / max(h0, w0)))
    ph, pw = h0 * scale, w0 * scale
    gap, margin = 6, 4
    line_px = _TITLE_PT * dpi / 72.0 * 1.3
    chars = max(8, int(pw / (_TITLE_PT * dpi / 72.0 * 0.6)))  # a title wraps at its panel's width
    wrapped = ["\n".join(textwrap.fill(part, chars) for part in str(t).split("\n")) if t else "" for t in titles]
    lines = max((t.count("\n") + 1 if t else 0) for t in wrapped)
    band = math.ceil(lines * line_px) + (4 if lines else 0)
    top = math.ceil((title.count("\n") + 1) * _SUPTITLE_PT * dpi / 72.0 * 1.35) + 6 if title else 0
    width = 2 * margin + cols * pw + (cols - 1) * gap
    height = top + margin + rows * (band + ph) + (rows - 1) * gap
    canvas = np.ones((height, width, 3), dtype=np.float32)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y = top + r * (band + ph + gap) + band
        x = margin + c * (pw + gap)
        canvas[y : y + ph, x : x + pw] = np.repeat(np.repeat(im, scale, axis=0), scale, axis=1)
        if wrapped[i]:
            fig.text((x + pw / 2) / width, 1.0 - (y - 2) / height, wrapped[i], ha="center", va="bottom",
                     fontsize=_TITLE_PT, linespacing=1.1)
    fig.figimage(canvas, 0, 0, origin="upper")
    if title:
        fig.text(0.5, 1.0 - 3 / height, title, ha="center", va="top", fontsize=_SUPTITLE_PT)
    return fig
