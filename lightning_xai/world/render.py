"""Deterministic renderer of planted-concept scenes, with exact per-concept pixel masks.

A scene is rendered from ``(slots, seed)``. The seed alone decides every random quantity (object
position, size and rotation, colour jitter, texture period/phase/angle and grey levels, the
marker's corner, pixel noise); these are drawn in a fixed order *before* the slots are looked at.
So rendering the same seed with one slot changed changes only the pixels of that slot's concepts:

* colour changed -> exactly the visible object pixels change;
* shape changed -> only pixels inside the old or the new object change;
* texture changed -> only background pixels where the two patterns differ change
  (``plain`` -> ``t`` changes exactly the pixels of ``t``'s mask);
* marker added -> exactly the marker pixels change.

Drawing order: grey background texture, then the coloured object, then the white marker cross,
then Gaussian pixel noise; values are clipped to [0, 1] and quantised to multiples of 1/255 (so
datasets can store images as ``uint8`` without loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .vocab import SHAPES, TEXTURES, Slots, parse_caption

__all__ = ["RENDERER_VERSION", "Scene", "SlotsLike", "render", "render_batch"]

RENDERER_VERSION = "1"
"""Changes whenever the pixels produced for a given (slots, seed, size) change."""

SlotsLike = Slots | str
"""A :class:`~lightning_xai.world.vocab.Slots` or a caption string."""

# Base RGB of each colour (before the seeded jitter).
_RGB = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.12, 0.78, 0.20),
    "blue": (0.15, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.12),
}
_NOISE_STD = 0.02
_MARKER_MARGIN = 0.1  # marker centre distance from the image edges, fraction of size


@dataclass(frozen=True)
class Scene:
    """One rendered scene.

    Attributes:
        image: Float tensor ``[3, H, W]`` with values in [0, 1].
        masks: One boolean ``[H, W]`` mask per concept present (``"shape:circle"``,
            ``"colour:red"``, ``"texture:striped"``, ``"marker:present"``). Shape and colour masks
            are the visible object pixels; the texture mask is the visible pattern pixels (for
            ``plain``: the visible background); the marker mask is the marker pixels.
        slots: The scene's slots.
        seed: The seed it was rendered with.

    Example:
        >>> scene = render("a red circle on a striped background", seed=3)
        >>> sorted(scene.masks)
        ['colour:red', 'shape:circle', 'texture:striped']
    """

    image: torch.Tensor
    masks: dict[str, torch.Tensor]
    slots: Slots
    seed: int

    @property
    def caption(self) -> str:
        """The scene's caption."""
        return self.slots.caption

    @property
    def object_mask(self) -> torch.Tensor:
        """Visible object pixels (all ``False`` when there is no object)."""
        if self.slots.shape is None:
            return torch.zeros(self.image.shape[1:], dtype=torch.bool)
        return self.masks[f"shape:{self.slots.shape}"]


def _as_slots(s: SlotsLike) -> Slots:
    if isinstance(s, Slots):
        return s
    if isinstance(s, str):
        return parse_caption(s)
    raise TypeError(f"expected Slots or a caption string, got {type(s).__name__}")


def _check_seed(seed: int) -> int:
    if isinstance(seed, torch.Tensor):
        seed = int(seed.item())
    if isinstance(seed, (bool,)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _draw(seeds: Sequence[int], size: int) -> dict[str, np.ndarray]:
    """Draw every random quantity of each scene, in a fixed order independent of the slots."""
    n = len(seeds)
    keys = (
        "cx",
        "cy",
        "radius",
        "angle",
        "jit_r",
        "jit_g",
        "jit_b",
        "period",
        "ph_x",
        "ph_y",
        "tex_angle",
        "bg",
        "ink",
        "corner",
    )
    p = {k: np.empty(n) for k in keys}
    noise = np.empty((n, 3, size, size), dtype=np.float32)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(_check_seed(seed))
        u = rng.random(14)
        p["cx"][i] = 0.36 + 0.28 * u[0]
        p["cy"][i] = 0.36 + 0.28 * u[1]
        p["radius"][i] = 0.15 + 0.05 * u[2]
        p["angle"][i] = (u[3] - 0.5) * 0.7  # +-20 degrees
        p["jit_r"][i] = (u[4] - 0.5) * 0.12
        p["jit_g"][i] = (u[5] - 0.5) * 0.12
        p["jit_b"][i] = (u[6] - 0.5) * 0.12
        p["period"][i] = 0.10 + 0.04 * u[7]
        p["ph_x"][i] = u[8]
        p["ph_y"][i] = u[9]
        p["tex_angle"][i] = (u[10] - 0.5) * 0.5
        p["bg"][i] = 0.52 + 0.10 * u[11]
        p["ink"][i] = 0.18 + 0.10 * u[12]
        p["corner"][i] = np.floor(u[13] * 4)
        noise[i] = rng.standard_normal((3, size, size), dtype=np.float32)
    return {**p, "noise": noise}


def _col(a: np.ndarray) -> np.ndarray:
    return a[:, None, None]


def _shape_masks(shape_idx: np.ndarray, p: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """Boolean [N, H, W] object masks (before the marker is drawn on top)."""
    n, size = len(shape_idx), len(xs)
    out = np.zeros((n, size, size), dtype=bool)
    for k, name in enumerate(SHAPES):
        sel = np.nonzero(shape_idx == k)[0]
        if len(sel) == 0:
            continue
        dx = xs[None, None, :] - _col(p["cx"][sel])
        dy = xs[None, :, None] - _col(p["cy"][sel])
        a = _col(p["angle"][sel])
        r = _col(p["radius"][sel])
        ux = np.cos(a) * dx + np.sin(a) * dy
        uy = -np.sin(a) * dx + np.cos(a) * dy
        if name == "circle":
            m = ux**2 + uy**2 <= r**2
        elif name == "square":  # same area as the circle
            m = np.maximum(np.abs(ux), np.abs(uy)) <= 0.886 * r
        else:  # triangle, apex up, centroid at the centre, circumradius 1.5 r
            big_r = 1.5 * r
            m = (
                (uy <= big_r / 2)
                & (-0.866 * ux - 0.5 * uy <= big_r / 2)
                & (0.866 * ux - 0.5 * uy <= big_r / 2)
            )
        out[sel] = m
    return out


def _texture_patterns(tex_idx: np.ndarray, p: dict[str, np.ndarray], xs: np.ndarray) -> np.ndarray:
    """Boolean [N, H, W] 'ink' pixels of each scene's texture (all False for plain)."""
    n, size = len(tex_idx), len(xs)
    out = np.zeros((n, size, size), dtype=bool)
    for k, name in enumerate(TEXTURES):
        sel = np.nonzero(tex_idx == k)[0]
        if len(sel) == 0 or name == "plain":
            continue
        x = xs[None, None, :] - 0.5
        y = xs[None, :, None] - 0.5
        a = _col(p["tex_angle"][sel])
        tx = np.cos(a) * x + np.sin(a) * y
        ty = -np.sin(a) * x + np.cos(a) * y
        per = _col(p["period"][sel])
        phx = _col(p["ph_x"][sel])
        phy = _col(p["ph_y"][sel])
        if name == "striped":
            m = np.mod(ty / per + phy, 1.0) < 0.4
        elif name == "zigzag":
            t = np.mod(tx / per + phx, 1.0)
            offset = 0.5 * np.abs(2.0 * t - 1.0)  # triangle wave, in periods
            m = np.mod(ty / per + offset + phy, 1.0) < 0.35
        elif name == "dotted":
            fx = np.mod(tx / per + phx, 1.0) - 0.5
            fy = np.mod(ty / per + phy, 1.0) - 0.5
            m = fx**2 + fy**2 < 0.27**2
        elif name == "checkered":
            m = (np.floor(tx / per + phx) + np.floor(ty / per + phy)) % 2 == 0
        else:  # pragma: no cover - vocabulary and renderer out of sync
            raise AssertionError(name)
        out[sel] = m
    return out


def _marker_masks(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Boolean [N, H, W] marker crosses (for every scene; the caller keeps those with a marker)."""
    n = len(p["corner"])
    c = round(_MARKER_MARGIN * size)
    half_len = max(2, round(0.08 * size))
    half_thick = 1
    pix = np.arange(size) + 0.5
    out = np.zeros((n, size, size), dtype=bool)
    for corner in range(4):
        sel = np.nonzero(p["corner"] == corner)[0]
        if len(sel) == 0:
            continue
        cx = c if corner in (0, 2) else size - c
        cy = c if corner in (0, 1) else size - c
        dx = np.abs(pix[None, :] - cx)
        dy = np.abs(pix[:, None] - cy)
        m = ((dx <= half_len) & (dy <= half_thick)) | ((dy <= half_len) & (dx <= half_thick))
        out[sel] = m
    return out


def _render_arrays(
    slots: Sequence[Slots], seeds: Sequence[int], size: int, with_masks: bool
) -> tuple[np.ndarray, list[dict[str, np.ndarray]] | None]:
    """Render a chunk: uint8 images [N, 3, H, W] and (optionally) numpy mask dicts."""
    p = _draw(seeds, size)  # all randomness first, independent of the slots
    xs = (np.arange(size) + 0.5) / size
    shape_idx = np.array([-1 if s.shape is None else SHAPES.index(s.shape) for s in slots])
    tex_idx = np.array([TEXTURES.index(s.texture) for s in slots])
    has_marker = np.array([s.marker for s in slots], dtype=bool)

    obj = _shape_masks(shape_idx, p, xs)
    ink = _texture_patterns(tex_idx, p, xs)
    marker = _marker_masks(p, size) & has_marker[:, None, None]

    grey = np.where(ink, _col(p["ink"]).astype(np.float32), _col(p["bg"]).astype(np.float32))  # [N, H, W]
    img = np.repeat(grey[:, None], 3, axis=1)
    base = np.array([_RGB[s.colour] if s.colour is not None else (0.0, 0.0, 0.0) for s in slots])
    jit = np.stack([p["jit_r"], p["jit_g"], p["jit_b"]], axis=1)
    rgb = np.clip(base + jit, 0.0, 1.0).astype(np.float32)  # [N, 3]
    img = np.where(obj[:, None], rgb[:, :, None, None], img)
    img = np.where(marker[:, None], np.float32(1.0), img)
    img += np.float32(_NOISE_STD) * p["noise"]
    img_u8 = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)

    if not with_masks:
        return img_u8, None
    visible_obj = obj & ~marker
    visible_bg = ~obj & ~marker
    masks: list[dict[str, np.ndarray]] = []
    for i, s in enumerate(slots):
        d: dict[str, np.ndarray] = {}
        if s.shape is not None:
            d[f"shape:{s.shape}"] = visible_obj[i]
            d[f"colour:{s.colour}"] = visible_obj[i]
        d[f"texture:{s.texture}"] = visible_bg[i] if s.texture == "plain" else (ink[i] & visible_bg[i])
        if s.marker:
            d["marker:present"] = marker[i]
        masks.append(d)
    return img_u8, masks


def _to_float(img_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.from_numpy(img_u8) if isinstance(img_u8, np.ndarray) else img_u8
    return t.to(torch.float32).div_(255.0)


_CHUNK = 512


def render_batch(
    slots: Sequence[SlotsLike],
    seeds: Sequence[int],
    size: int = 64,
    return_masks: bool = True,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Render many scenes at once (vectorised); scene ``i`` equals ``render(slots[i], seeds[i], size)``.

    Args:
        slots: :class:`Slots` or captions, one per scene.
        seeds: Non-negative integer seeds, one per scene.
        size: Image height and width in pixels.
        return_masks: If ``False`` the mask list is empty (faster).

    Returns:
        ``(images, masks)``: float images ``[N, 3, size, size]`` in [0, 1] and one mask dict per scene
        (see :class:`Scene`).

    Example:
        >>> images, masks = render_batch(["a red circle on a plain background"] * 2, seeds=[0, 1])
        >>> images.shape
        torch.Size([2, 3, 64, 64])
    """
    images_u8, masks = _render_uint8(slots, seeds, size, return_masks)
    return _to_float(images_u8), masks


def _render_uint8(
    slots: Sequence[SlotsLike], seeds: Sequence[int], size: int, with_masks: bool
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    if len(slots) != len(seeds):
        raise ValueError(
            f"got {len(slots)} slot descriptions but {len(seeds)} seeds; pass one seed per scene"
        )
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    sl = [_as_slots(s) for s in slots]
    sd = [_check_seed(s) for s in seeds]
    out = torch.empty((len(sl), 3, size, size), dtype=torch.uint8)
    all_masks: list[dict[str, torch.Tensor]] = []
    for start in range(0, len(sl), _CHUNK):
        imgs, masks = _render_arrays(
            sl[start : start + _CHUNK], sd[start : start + _CHUNK], int(size), with_masks
        )
        out[start : start + len(imgs)] = torch.from_numpy(imgs)
        if masks is not None:
            all_masks += [{k: torch.from_numpy(v.copy()) for k, v in m.items()} for m in masks]
    return out, all_masks


def render(slots: SlotsLike, seed: int, size: int = 64) -> Scene:
    """Render one scene deterministically from its slots (or caption) and seed.

    Args:
        slots: A :class:`Slots` or a caption such as ``"a red circle on a striped background"``.
        seed: Non-negative integer; decides position, size, rotation, colour jitter, texture
            period/phase/angle/greys, marker corner and pixel noise, independently of the slots.
        size: Image height and width in pixels.

    Returns:
        A :class:`Scene` with the image and the per-concept masks.

    Example:
        >>> a = render("a red circle on a striped background", seed=0)
        >>> b = render("a green circle on a striped background", seed=0)
        >>> changed = (a.image != b.image).any(0)
        >>> bool((changed == a.masks["shape:circle"]).all())
        True
    """
    s = _as_slots(slots)
    images, masks = render_batch([s], [seed], size)
    return Scene(image=images[0], masks=masks[0], slots=s, seed=_check_seed(seed))
