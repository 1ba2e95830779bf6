"""Bar charts drawn with numpy and PIL, fast enough to log every epoch.

A matplotlib bar chart with a legend costs about 50 to 60 ms to build and draw on a 2-core CPU (axes,
tick objects and ``tight_layout`` measure every text twice), and callbacks draw several every explained
epoch: TCAV scores, global attributions, symbol usage. :func:`bar_chart` draws the same chart (grouped
bars, error bars with caps, significance marks, a reference line, a legend) straight into a pixel canvas,
in matplotlib's default font and colour cycle, and lays it out from the measured sizes of its texts, so it
never clips a label. :func:`lightning_xai.panels.image_figure` wraps such an image in a matplotlib ``Figure``
for code that expects one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_xai.panels import _font, _text, text_size

__all__ = ["bar_chart", "side_by_side"]

# matplotlib's default colour cycle ("tab10"), so these charts match the package's matplotlib figures
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_INK = (0, 0, 0)
_GRID = (64, 64, 64)


def _rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(colour, str):
        c = colour.lstrip("#")
        if len(c) != 6:
            raise ValueError(f"colours are '#rrggbb' strings or (r, g, b) tuples, got {colour!r}.")
        return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
    return tuple(int(v) for v in colour)  # type: ignore[return-value]


def _ticks(lo: float, hi: float) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] (matplotlib's own choice), and the decimals that print them."""
    from matplotlib.ticker import MaxNLocator

    ticks = [float(t) for t in MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(7) if all(abs(round(t, d) - t) < abs(step) * 1e-6 for t in ticks)), 6)
    return ticks, decimals


def bar_chart(
    groups: Sequence[str],
    values: Sequence[Sequence[float]] | np.ndarray,
    series: Sequence[str] | None = None,
    errors: Sequence[Any] | np.ndarray | None = None,
    marks: Sequence[Sequence[bool]] | np.ndarray | None = None,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "",
    ylim: tuple[float, float] | None = None,
    hline: float | None = None,
    colours: Sequence[str] | None = None,
    bar_colours: Sequence[Sequence[str]] | None = None,
    size: tuple[int, int] = (640, 380),
    font_pt: float = 8.0,
    dpi: int = 100,
) -> np.ndarray:
    """A grouped bar chart as a ``uint8`` RGB array ``[H, W, 3]``.

    Args:
        groups: the x-axis labels, one group of bars each.
        values: ``[S, G]``: one row of bar heights per series (a single series may be given as ``[G]``);
            NaN draws no bar.
        series: a name per series, shown in a legend right of the axes when there are two or more.
        errors: per series, ``[G]`` symmetric half-widths or ``[2, G]`` (below, above); NaN draws none.
        marks: ``[S, G]`` booleans: a ``*`` over the bars that are marked (e.g. significant).
        title: over the axes. ylabel, xlabel: axis labels.
        ylim: the y range; default from the bars and error bars (always including 0).
        hline: a dashed grey reference line at this height.
        colours: one per series; default matplotlib's colour cycle.
        bar_colours: ``[S, G]``: a colour per bar, over ``colours`` (e.g. by the sign of the value).
        size: ``(width, height)`` in pixels; the width grows if the labels need it.
        font_pt: size of tick labels and legend, in points at ``dpi``.

    Raises:
        ValueError: shapes of ``values``, ``errors``, ``marks`` or ``series`` that do not match ``groups``.

    Example:
        >>> img = bar_chart(["a", "b"], [[1.0, 2.0], [0.5, 1.5]], series=["x", "y"], title="demo")
        >>> img.shape[2], img.dtype.name
        (3, 'uint8')
    """
    from PIL import Image, ImageDraw

    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    G = len(groups)
    if v.ndim != 2 or v.shape[1] != G:
        raise ValueError(f"values must be [series, {G} groups], got shape {list(np.shape(values))}.")
    S = v.shape[0]
    names = list(series) if series is not None else []
    if names and len(names) != S:
        raise ValueError(f"{len(names)} series names for {S} rows of values; give one per row.")
    err = _errors(errors, S, G)
    mk = np.zeros((S, G), dtype=bool) if marks is None else np.asarray(marks, dtype=bool).reshape(S, G)
    palette = [_rgb(c) for c in (colours or TAB10)]
    if bar_colours is not None and (len(bar_colours) != S or any(len(row) != G for row in bar_colours)):
        raise ValueError(f"bar_colours must be [{S} series, {G} groups] of colours.")
    fills = [[_rgb(bar_colours[s][g]) if bar_colours is not None else palette[s % len(palette)] for g in range(G)]
             for s in range(S)]

    if ylim is None:
        tops = np.where(np.isnan(err[:, 1]), v, v + np.nan_to_num(err[:, 1]))
        bots = np.where(np.isnan(err[:, 0]), v, v - np.nan_to_num(err[:, 0]))
        hi = float(np.nanmax(tops, initial=0.0))
        lo = float(np.nanmin(bots, initial=0.0))
        if hline is not None:
            hi, lo = max(hi, hline), min(lo, hline)
        pad = 0.05 * ((hi - lo) or 1.0)
        ylim = (lo - pad if lo < 0 else 0.0, hi + pad if hi > 0 else pad)
    y0, y1 = float(ylim[0]), float(ylim[1])
    if not y1 > y0:
        raise ValueError(f"ylim must rise, got {ylim!r}.")
    ticks, decimals = _ticks(y0, y1)
    ticks = [t for t in ticks if y0 - 1e-9 <= t <= y1 + 1e-9]

    px = dpi / 72.0
    small, label_font, title_font = _font(font_pt * px), _font((font_pt + 1) * px), _font((font_pt + 1) * px)
    tick_texts = [f"{t:.{decimals}f}" for t in ticks]
    tick_w = max((text_size(t, small)[0] for t in tick_texts), default=0)
    line_h = text_size("Ag", small)[1]
    label_h = text_size("Ag", label_font)[1]

    widths = [text_size(g, small)[0] for g in groups]
    legend_w = 0
    if len(names) > 1:
        legend_w = 12 + 16 + 6 + max(text_size(n, small)[0] for n in names) + 8
    margin = 6
    left = margin + (label_h + 6 if ylabel else 0) + tick_w + 8
    width = max(int(size[0]), left + legend_w + margin + G * (3 + 5 * S))
    plot_w = width - left - legend_w - margin - 4
    group_w = plot_w / max(1, G)
    # x labels: all horizontal when they fit their group; else turned 30 degrees when there are few groups
    # (as matplotlib figures here do), or every k-th one horizontal when there are many
    every, turn = 1, False
    if max(widths, default=0) > group_w * 0.95:
        if G <= 12:
            turn = True
        else:
            every = math.ceil(max(widths) * 1.4 / group_w)
    angle = math.radians(30)
    if turn:  # a turned label hangs left of its tick: make room for the first ones
        overhang = max(w * math.cos(angle) + line_h * math.sin(angle) - (g + 0.5) * group_w for g, w in enumerate(widths))
        shift = max(0, math.ceil(margin + overhang - left))
        left, width = left + shift, width + shift
    if turn:
        xlab_h = max(int(w * math.sin(angle) + line_h * math.cos(angle)) for w in widths) + 6
    else:
        xlab_h = line_h + 6
    title_lines = _wrap(title, title_font, width - 2 * margin) if title else []
    top = margin + len(title_lines) * (label_h + 3) + (6 if title_lines else 4)
    height = max(int(size[1]), top + 80 + xlab_h + (label_h + 6 if xlabel else 0) + margin)
    bottom = height - margin - (label_h + 6 if xlabel else 0) - xlab_h - 4
    right = left + plot_w

    page = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(page)

    def y_of(value: float) -> float:
        return bottom - (value - y0) / (y1 - y0) * (bottom - top)

    # bars, error bars and marks, clipped to the axes
    bar_w = group_w * 0.8 / S
    zero = min(max(y_of(0.0), top), bottom)
    for s in range(S):
        for g in range(G):
            fill = fills[s][g]
            val = v[s, g]
            if not np.isfinite(val):
                continue
            x_a = left + group_w * (g + 0.1) + s * bar_w
            x_b = x_a + bar_w
            y_v = min(max(y_of(val), top), bottom)
            if abs(y_v - zero) >= 0.5:  # a bar of height 0 shows nothing, as in matplotlib
                draw.rectangle([round(x_a), round(min(y_v, zero)), round(x_b) - 1, round(max(y_v, zero))], fill=fill)
            xc = round((x_a + x_b) / 2)
            up, down = err[s, 1, g], err[s, 0, g]
            peak = val
            if np.isfinite(up) or np.isfinite(down):
                e_hi = val + (up if np.isfinite(up) else 0.0)
                e_lo = val - (down if np.isfinite(down) else 0.0)
                peak = e_hi
                ya, yb = min(max(y_of(e_hi), top), bottom), min(max(y_of(e_lo), top), bottom)
                draw.line([(xc, round(ya)), (xc, round(yb))], fill=_INK, width=1)
                cap = max(2, round(min(bar_w / 4, 4)))
                for yy in (ya, yb):
                    draw.line([(xc - cap, round(yy)), (xc + cap, round(yy))], fill=_INK, width=1)
            if mk[s, g]:
                _text(draw, (xc, max(top + 1, y_of(max(peak, val)) - 2)), "*", label_font, "md")

    if hline is not None and y0 <= hline <= y1:
        yh = round(y_of(hline))
        for xa in range(left, right, 8):
            draw.line([(xa, yh), (min(xa + 4, right), yh)], fill=(128, 128, 128), width=1)

    # frame, ticks and their labels
    draw.rectangle([left, top, right, bottom], outline=_INK, width=1)
    for t, text in zip(ticks, tick_texts):
        yt = round(y_of(t))
        draw.line([(left - 4, yt), (left, yt)], fill=_INK, width=1)
        _text(draw, (left - 6, yt), text, small, "rm")
    for g, name in enumerate(groups):
        if g % every:
            continue
        xc = round(left + group_w * (g + 0.5))
        draw.line([(xc, bottom), (xc, bottom + 4)], fill=_INK, width=1)
        if turn:
            _turned(page, name, small, (xc, bottom + 6), angle)
        else:
            _text(draw, (xc, bottom + 6), name, small, "ma")
    if ylabel:
        _turned(page, ylabel, label_font, (left - tick_w - 14 - label_h, (top + bottom) / 2), math.pi / 2, anchor="left-middle")
    if xlabel:
        _text(draw, ((left + right) / 2, height - margin), xlabel, label_font, "md")
    for i, line in enumerate(title_lines):
        _text(draw, (width / 2, margin + i * (label_h + 3)), line, title_font, "ma")

    if len(names) > 1:
        row_h = line_h + 5
        lx = right + 12
        ly = (top + bottom) / 2 - S * row_h / 2
        for s, name in enumerate(names):
            yy = ly + s * row_h
            draw.rectangle([lx, round(yy + 2), lx + 15, round(yy + row_h - 3)], fill=palette[s % len(palette)])
            _text(draw, (lx + 21, yy + row_h / 2), name, small, "lm")
    return np.asarray(page)


def side_by_side(charts: Sequence[np.ndarray], title: str = "", gap: int = 8, font_pt: float = 10.0, dpi: int = 100) -> np.ndarray:
    """Charts (``uint8 [H, W, 3]``) in one row on a white page, top-aligned, with ``title`` over them.

    Example:
        >>> side_by_side([np.zeros((4, 5, 3), np.uint8), np.zeros((6, 2, 3), np.uint8)]).shape
        (6, 15, 3)
    """
    from PIL import Image, ImageDraw

    if not charts:
        raise ValueError("side_by_side needs at least one chart.")
    font = _font(font_pt * dpi / 72.0)
    head = text_size("Ag", font)[1] + 10 if title else 0
    height = head + max(c.shape[0] for c in charts)
    width = sum(c.shape[1] for c in charts) + gap * (len(charts) - 1)
    page = np.full((height, width, 3), 255, dtype=np.uint8)
    x = 0
    for c in charts:
        page[head : head + c.shape[0], x : x + c.shape[1]] = c
        x += c.shape[1] + gap
    if title:
        img = Image.fromarray(page)
        _text(ImageDraw.Draw(img), (width / 2, 4), title, font, "ma")
        page = np.asarray(img)
    return page


# ------------------------------------------------------------------------------------------------ helpers
def _errors(errors: Any, S: int, G: int) -> np.ndarray:
    """Errors as ``[S, 2, G]`` (below, above); NaN where none."""
    out = np.full((S, 2, G), np.nan)
    if errors is None:
        return out
    if len(errors) != S:
        raise ValueError(f"{len(errors)} rows of errors for {S} series; give one per series.")
    for s, e in enumerate(errors):
        a = np.asarray(e, dtype=np.float64)
        if a.shape == (G,):
            out[s] = np.abs(a)[None]
        elif a.shape == (2, G):
            out[s] = np.abs(a)
        else:
            raise ValueError(f"errors of series {s} must be [{G}] or [2, {G}], got shape {list(a.shape)}.")
    return out


def _wrap(text: str, font: Any, width: int) -> list[str]:
    lines: list[str] = []
    for part in text.split("\n"):
        words, line = part.split(" "), ""
        for word in words:
            trial = f"{line} {word}" if line else word
            if line and text_size(trial, font)[0] > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _turned(page: Any, text: str, font: Any, at: tuple[float, float], angle: float, anchor: str = "right-top") -> None:
    """``text`` turned anticlockwise by ``angle`` and pasted onto ``page``: with its end at ``at`` (an x tick
    label hanging from its tick, ``"right-top"``), or with its middle left edge at ``at`` (``"left-middle"``)."""
    from PIL import Image, ImageDraw

    w, h = text_size(text, font)
    tile = Image.new("L", (w + 4, h + 4), 0)
    _text(ImageDraw.Draw(tile), (2, 2), text, font, "la", fill=255)
    turned = tile.rotate(math.degrees(angle), expand=True, resample=Image.BICUBIC)
    tw, th = turned.size
    if anchor == "right-top":
        x, y = round(at[0] - tw + 2), round(at[1])
    else:
        x, y = round(at[0]), round(at[1] - th / 2)
    ink = Image.new("RGB", turned.size, _INK)
    page.paste(ink, (x, y), turned)
