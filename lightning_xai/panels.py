"""Image panels with titles, drawn fast enough to log every epoch.

Callbacks show images next to each other (a probe and its concept maps, the images an optimised prompt
generates) with a short title over each. Drawing those as matplotlib subplots costs about 50 ms per figure
(axes, ticks and ``tight_layout``; a probe with two concept maps, 2-core CPU), and a callback draws several
every explained epoch. :func:`panel_image` composes the panels and their titles into one pixel canvas with
numpy and PIL (in matplotlib's default font): about 8 ms for the same figure, measured interleaved, and
callbacks log those pixels; :func:`panel_figure` shows them in a matplotlib figure for ``savefig``. The text
and dashed-line helpers here are what :mod:`lightning_xai.charts` and the tree renderer draw with.
:func:`heat_overlay` blends a map over an image the way ``imshow`` with ``alpha`` would.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "display_image",
    "draw_dashed_line",
    "draw_text",
    "heat_overlay",
    "image_figure",
    "panel_figure",
    "panel_image",
    "text_font",
    "text_size",
]

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
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}.")
    h = (
        heat.detach().float().cpu().numpy()
        if isinstance(heat, Tensor)
        else np.asarray(heat, dtype=np.float32)
    )
    if h.shape != tuple(image.shape[-2:]):
        raise ValueError(f"the heat map is {list(h.shape)} but the image is {list(image.shape[-2:])}.")
    lut = _colour_table(cmap)
    # the colour matplotlib's Colormap.__call__ picks for values in [0, 1]: entry floor(v * N), 1.0 the last
    idx = (np.clip(h, 0.0, 1.0).astype(np.float32) * np.float32(len(lut))).astype(np.int64)
    colour = torch.from_numpy(lut[np.minimum(idx, len(lut) - 1)]).permute(2, 0, 1)
    return ((1.0 - alpha) * image.detach().float().cpu() + alpha * colour).clamp(0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _colour_table(cmap: str) -> np.ndarray:
    """The RGB entries ``[N, 3]`` of a matplotlib colormap, built once: the registry hands out a fresh copy of a
    colormap on every look-up, and each copy builds its table again when first called (about 0.2 ms, once per
    panel otherwise)."""
    from matplotlib import colormaps

    colours = colormaps[cmap]
    return np.ascontiguousarray(colours(np.arange(colours.N))[:, :3], dtype=np.float32)


def panel_image(
    panels: Sequence[Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    title: str = "",
    cols: int | None = None,
    panel_px: int = 150,
    dpi: int = 100,
) -> np.ndarray:
    """Image panels in rows of ``cols``, a title over each and ``title`` over all, as a ``uint8`` RGB array
    ``[H, W, 3]`` (what a callback logs; :func:`panel_figure` wraps it in a matplotlib figure).

    Panels (``[3, H, W]`` tensors or ``[H, W, 3]`` arrays in [0, 1], all of one size) are enlarged by a whole
    factor towards ``panel_px`` pixels (nearest neighbour, so pixels stay sharp) and placed on a white
    canvas with numpy; the titles, wrapped to their panel's width, are drawn with PIL.

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
        >>> out = panel_image([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)], ["black", "white"], "two panels")
        >>> out.dtype.name, out.shape[1] > 2 * 8
        ('uint8', True)
    """
    from PIL import Image, ImageDraw

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
    title_px, suptitle_px = _TITLE_PT * dpi / 72.0, _SUPTITLE_PT * dpi / 72.0
    line_px = title_px * 1.3
    chars = max(8, int(pw / (title_px * 0.6)))  # a title wraps at its panel's width
    wrapped = [
        [line for part in str(t).split("\n") for line in (textwrap.wrap(part, chars) or [""])] if t else []
        for t in titles
    ]
    lines = max(len(t) for t in wrapped)
    band = math.ceil(lines * line_px) + (4 if lines else 0)
    head = title.split("\n") if title else []
    top = math.ceil(len(head) * suptitle_px * 1.35) + 6 if title else 0
    width = 2 * margin + cols * pw + (cols - 1) * gap
    height = top + margin + rows * (band + ph) + (rows - 1) * gap
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y = top + r * (band + ph + gap) + band
        x = margin + c * (pw + gap)
        canvas[y : y + ph, x : x + pw] = np.rint(np.repeat(np.repeat(im, scale, axis=0), scale, axis=1) * 255)
    # the text is drawn with PIL (a tenth of a millisecond a line) in matplotlib's own default font, so the
    # panels read like the package's other figures; laying out text with matplotlib cost most of a figure
    page = Image.fromarray(canvas)
    draw = ImageDraw.Draw(page)
    font, big = text_font(title_px), text_font(suptitle_px)
    for i, text in enumerate(wrapped):
        r, c = divmod(i, cols)
        bottom = top + r * (band + ph + gap) + band - 2  # the last line sits just above its panel
        for j, line in enumerate(text):
            y = bottom - (len(text) - 1 - j) * line_px
            draw_text(draw, (margin + c * (pw + gap) + pw / 2, y), line, font, "md")
    for j, line in enumerate(head):
        draw_text(draw, (width / 2, 3 + j * suptitle_px * 1.35), line, big, "ma")
    return np.asarray(page)


def panel_figure(
    panels: Sequence[Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    title: str = "",
    cols: int | None = None,
    panel_px: int = 150,
    dpi: int = 100,
) -> Any:
    """:func:`panel_image` as a matplotlib ``Figure`` that shows it 1:1 (e.g. to ``savefig`` it).

    Example:
        >>> from lightning_xai.records import figure_to_array
        >>> fig = panel_figure([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)], ["black", "white"], "two panels")
        >>> figure_to_array(fig).shape[1] > 2 * 8
        True
    """
    return image_figure(panel_image(panels, titles, title, cols, panel_px, dpi), dpi)


def image_figure(image: np.ndarray, dpi: int = 100) -> Any:
    """A matplotlib ``Figure`` that shows ``image`` (``uint8 [H, W, 3]``) 1:1 in pixels, for code that takes
    figures. (Callbacks log the array itself: drawing the figure again costs about 10 ms.)

    Example:
        >>> from lightning_xai.records import figure_to_array
        >>> figure_to_array(image_figure(np.zeros((20, 30, 3), np.uint8))).shape
        (20, 30, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = image.shape[:2]
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.figimage(image, 0, 0, origin="upper")
    return fig


def draw_text(
    draw: Any, xy: tuple[float, float], line: str, font: Any, anchor: str, fill: Any = (0, 0, 0)
) -> None:
    """One line of text at ``xy`` by a PIL anchor: horizontal ``l``/``m``/``r``, then vertical ``a`` (top),
    ``m`` (middle) or ``d`` (descender); works with PIL's bitmap font too, which takes no anchor.

    Example:
        >>> from PIL import Image, ImageDraw
        >>> page = Image.new("RGB", (60, 20), "white")
        >>> draw_text(ImageDraw.Draw(page), (30, 10), "hi", text_font(12), "mm")
        >>> min(page.getpixel((x, y))[0] for x in range(60) for y in range(20)) < 128
        True
    """
    try:
        draw.text(xy, line, fill=fill, font=font, anchor=anchor)
    except ValueError:  # PIL's bitmap font takes no anchor: place it by its measured size
        left, upper, right, lower = draw.textbbox((0, 0), line, font=font)
        w, h = right - left, lower - upper
        x = xy[0] - {"l": 0.0, "m": w / 2, "r": w}[anchor[0]]
        y = xy[1] - {"a": 0.0, "m": h / 2, "d": h}[anchor[1]]
        draw.text((x, y), line, fill=fill, font=font)


def draw_dashed_line(
    draw: Any, a: tuple[float, float], b: tuple[float, float], fill: Any, width: int, on: float, off: float
) -> None:
    """A dashed straight line from ``a`` to ``b``: dashes of ``on`` pixels with gaps of ``off`` (PIL draws no
    dashes of its own).

    Example:
        >>> from PIL import Image, ImageDraw
        >>> page = Image.new("L", (20, 1), 255)
        >>> draw_dashed_line(ImageDraw.Draw(page), (0, 0), (19, 0), 0, 1, 4, 4)
        >>> "".join("#" if page.getpixel((x, 0)) == 0 else "." for x in range(20))
        '#####...#####...####'
    """
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    if length == 0:
        return
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    t = 0.0
    while t < length:
        e = min(t + on, length)
        draw.line([(a[0] + ux * t, a[1] + uy * t), (a[0] + ux * e, a[1] + uy * e)], fill=fill, width=width)
        t = e + off


def text_size(line: str, font: Any) -> tuple[int, int]:
    """Width and height in pixels of one line of ``font`` text (ink box from the origin).

    Example:
        >>> w1, _ = text_size("ab", text_font(12)); w2, _ = text_size("abab", text_font(12))
        >>> w2 > w1
        True
    """
    left, upper, right, lower = font.getbbox(line)
    return math.ceil(right - min(0, left)), math.ceil(lower - min(0, upper))


@functools.lru_cache(maxsize=8)
def _font_at(size_px: int) -> Any:
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties()), size_px)
    except (OSError, ImportError, ValueError):  # no FreeType, or no font file: PIL's own bitmap font
        return ImageFont.load_default()


def text_font(size_px: float) -> Any:
    """A TrueType font of ``size_px`` pixels per em (matplotlib's default family, so text drawn with PIL reads
    like the package's matplotlib figures), cached; PIL's bitmap font where FreeType or the file is missing.

    Example:
        >>> text_font(12) is text_font(12.2)
        True
    """
    return _font_at(max(6, round(size_px)))
