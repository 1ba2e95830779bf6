"""Bar and line charts drawn with numpy and PIL, fast enough to log every epoch.

A matplotlib chart with a legend costs about 50 to 60 ms to build and draw on a 2-core CPU (axes, tick
objects and ``tight_layout`` measure every text twice), and callbacks draw several every explained epoch:
TCAV scores, global attributions, symbol usage, permutation importances, predicate survival, and every
chart a TensorBoard run shows. :func:`bar_chart` and :func:`line_chart` draw the same charts (grouped bars,
error bars with caps, significance marks, lines with markers, a reference line, a legend) straight into a
pixel canvas, in matplotlib's default font and colour cycle, and lay them out from the measured sizes of
their texts, so no label is cut. :func:`lightning_xai.panels.image_figure` wraps such an image in a
matplotlib ``Figure`` for code that expects one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_xai.colours import TAB10, rgb
from lightning_xai.panels import draw_dashed_line, draw_text, text_font, text_size

__all__ = ["TAB10", "bar_chart", "line_chart", "side_by_side"]

_INK = (0, 0, 0)
_MARGIN = 6


def _ticks(lo: float, hi: float) -> tuple[list[float], int]:
    """Round tick values covering [lo, hi] (matplotlib's own choice), and the decimals that print them."""
    from matplotlib.ticker import MaxNLocator

    ticks = [float(t) for t in MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)]
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(7) if all(abs(round(t, d) - t) < abs(step) * 1e-6 for t in ticks)), 6)
    return [t for t in ticks if lo - 1e-9 * abs(step) <= t <= hi + 1e-9 * abs(step)], decimals


def _padded(lo: float, hi: float, include_zero: bool) -> tuple[float, float]:
    """A y range around [lo, hi] with 5% room, as matplotlib's autoscaling leaves."""
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    pad = 0.05 * ((hi - lo) or max(abs(hi), 1.0))
    return (lo - pad if not (include_zero and lo == 0.0) else 0.0), hi + pad


class _Axes:
    """The frame a chart here is drawn in: title, y ticks and label, x tick labels, x label and legend.

    ``xticks`` are ``(fraction of the plot width, label)``. Labels that do not fit the space between ticks
    are turned 30 degrees when there are few (with room made for them on the left), else every k-th one is
    shown. Data is drawn between :meth:`open` and :meth:`close`; the frame is drawn over it.
    """

    def __init__(
        self,
        xticks: Sequence[tuple[float, str]],
        ylim: tuple[float, float],
        title: str,
        ylabel: str,
        xlabel: str,
        legend: Sequence[tuple[str, tuple[int, int, int]]],
        size: tuple[int, int],
        min_plot_w: int,
        font_pt: float,
        dpi: int,
    ) -> None:
        self.y0, self.y1 = float(ylim[0]), float(ylim[1])
        if not self.y1 > self.y0:
            raise ValueError(f"ylim must rise, got {tuple(ylim)!r}.")
        px = dpi / 72.0
        self.small, self.label_font = text_font(font_pt * px), text_font((font_pt + 1) * px)
        self.yticks, decimals = _ticks(self.y0, self.y1)
        self.ytexts = [f"{t:.{decimals}f}" for t in self.yticks]
        self.tick_w = max((text_size(t, self.small)[0] for t in self.ytexts), default=0)
        self.line_h = text_size("Ag", self.small)[1]
        self.label_h = text_size("Ag", self.label_font)[1]
        self.xticks, self.title, self.ylabel, self.xlabel, self.legend = (
            list(xticks),
            title,
            ylabel,
            xlabel,
            list(legend),
        )

        legend_w = (
            12 + 16 + 6 + max(text_size(n, self.small)[0] for n, _ in self.legend) + 8 if self.legend else 0
        )
        left = _MARGIN + (self.label_h + 6 if ylabel else 0) + self.tick_w + 8
        width = max(int(size[0]), left + legend_w + _MARGIN + 4 + min_plot_w)
        plot_w = width - left - legend_w - _MARGIN - 4
        widths = [text_size(t, self.small)[0] for _, t in self.xticks]
        fractions = [f for f, _ in self.xticks]
        gap = plot_w * (min(b - a for a, b in itertools.pairwise(fractions)) if len(fractions) > 1 else 1.0)
        self.every, self.turn, self.angle = 1, False, math.radians(30)
        if widths and max(widths) > 0.95 * gap:
            if len(widths) <= 12:
                self.turn = True
            else:
                self.every = math.ceil(max(widths) * 1.4 / gap)
        if self.turn:  # a turned label hangs left of its tick: make room for the first ones
            overhang = max(
                w * math.cos(self.angle) + self.line_h * math.sin(self.angle) - f * plot_w
                for f, w in zip(fractions, widths)
            )
            shift = max(0, math.ceil(_MARGIN + overhang - left))
            left, width = left + shift, width + shift
            xlab_h = (
                max(int(w * math.sin(self.angle) + self.line_h * math.cos(self.angle)) for w in widths) + 6
            )
        else:
            xlab_h = self.line_h + 6
        self.title_lines = _wrap(title, self.label_font, width - 2 * _MARGIN) if title else []
        self.top = _MARGIN + len(self.title_lines) * (self.label_h + 3) + (6 if self.title_lines else 4)
        self.height = max(
            int(size[1]), self.top + 80 + xlab_h + (self.label_h + 6 if xlabel else 0) + _MARGIN
        )
        self.bottom = self.height - _MARGIN - (self.label_h + 6 if xlabel else 0) - xlab_h - 4
        self.left, self.right, self.width = left, left + plot_w, width

    def open(self) -> tuple[Any, Any]:
        from PIL import Image, ImageDraw

        self.page = Image.new("RGB", (self.width, self.height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.page)
        return self.page, self.draw

    def y_of(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def x_of(self, fraction: float) -> float:
        return self.left + fraction * (self.right - self.left)

    def clip_y(self, y: float) -> float:
        return min(max(y, self.top), self.bottom)

    def dashed_hline(self, value: float) -> None:
        if self.y0 <= value <= self.y1:
            yh = round(self.y_of(value))
            draw_dashed_line(self.draw, (self.left, yh), (self.right, yh), (128, 128, 128), 1, 4, 4)

    def close(self) -> np.ndarray:
        draw, left, right, top, bottom = self.draw, self.left, self.right, self.top, self.bottom
        draw.rectangle([left, top, right, bottom], outline=_INK, width=1)
        for t, text in zip(self.yticks, self.ytexts):
            yt = round(self.y_of(t))
            draw.line([(left - 4, yt), (left, yt)], fill=_INK, width=1)
            draw_text(draw, (left - 6, yt), text, self.small, "rm")
        for i, (f, name) in enumerate(self.xticks):
            if i % self.every:
                continue
            xc = round(self.x_of(f))
            draw.line([(xc, bottom), (xc, bottom + 4)], fill=_INK, width=1)
            if self.turn:
                _turned(self.page, name, self.small, (xc, bottom + 6), self.angle)
            else:
                draw_text(draw, (xc, bottom + 6), name, self.small, "ma")
        if self.ylabel:
            at = (left - self.tick_w - 14 - self.label_h, (top + bottom) / 2)
            _turned(self.page, self.ylabel, self.label_font, at, math.pi / 2, anchor="left-middle")
        if self.xlabel:
            draw_text(draw, ((left + right) / 2, self.height - _MARGIN), self.xlabel, self.label_font, "md")
        for i, line in enumerate(self.title_lines):
            draw_text(draw, (self.width / 2, _MARGIN + i * (self.label_h + 3)), line, self.label_font, "ma")
        if self.legend:
            row_h = self.line_h + 5
            ly = (top + bottom) / 2 - len(self.legend) * row_h / 2
            for s, (name, colour) in enumerate(self.legend):
                yy = ly + s * row_h
                draw.rectangle([right + 12, round(yy + 2), right + 27, round(yy + row_h - 3)], fill=colour)
                draw_text(draw, (right + 33, yy + row_h / 2), name, self.small, "lm")
        return np.asarray(self.page)


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
        ValueError: shapes of ``values``, ``errors``, ``marks``, ``bar_colours`` or ``series`` that do not
            match ``groups``; a ``ylim`` that does not rise; a colour that is not ``'#rrggbb'``.

    Example:
        >>> img = bar_chart(["a", "b"], [[1.0, 2.0], [0.5, 1.5]], series=["x", "y"], title="demo")
        >>> img.shape[2], img.dtype.name
        (3, 'uint8')
    """
    G = len(groups)
    v, names = _rows(values, series, G, "groups")
    S = v.shape[0]
    err = _errors(errors, S, G)
    mk = np.zeros((S, G), dtype=bool) if marks is None else np.asarray(marks, dtype=bool).reshape(S, G)
    palette = [rgb(c) for c in (colours or TAB10)]
    if bar_colours is not None and (len(bar_colours) != S or any(len(row) != G for row in bar_colours)):
        raise ValueError(f"bar_colours must be [{S} series, {G} groups] of colours.")
    fills = [
        [rgb(bar_colours[s][g]) if bar_colours is not None else palette[s % len(palette)] for g in range(G)]
        for s in range(S)
    ]
    if ylim is None:
        tops = np.where(np.isnan(err[:, 1]), v, v + np.nan_to_num(err[:, 1]))
        bots = np.where(np.isnan(err[:, 0]), v, v - np.nan_to_num(err[:, 0]))
        hi, lo = float(np.nanmax(tops, initial=0.0)), float(np.nanmin(bots, initial=0.0))
        if hline is not None:
            hi, lo = max(hi, hline), min(lo, hline)
        if mk.any():  # room for the marks over the highest bars
            hi += 0.08 * ((hi - lo) or 1.0)
        ylim = _padded(lo, hi, include_zero=True)

    legend = [(n, palette[s % len(palette)]) for s, n in enumerate(names)] if len(names) > 1 else []
    axes = _Axes(
        [((g + 0.5) / max(1, G), name) for g, name in enumerate(groups)],
        ylim,
        title,
        ylabel,
        xlabel,
        legend,
        size,
        G * (3 + 5 * S),
        font_pt,
        dpi,
    )
    _, draw = axes.open()
    group_w = (axes.right - axes.left) / max(1, G)
    bar_w = group_w * 0.8 / S
    zero = axes.clip_y(axes.y_of(0.0))
    for s in range(S):
        for g in range(G):
            val = v[s, g]
            if not np.isfinite(val):
                continue
            x_a = axes.left + group_w * (g + 0.1) + s * bar_w
            x_b = x_a + bar_w
            y_v = axes.clip_y(axes.y_of(val))
            if abs(y_v - zero) >= 0.5:  # a bar of height 0 shows nothing, as in matplotlib
                draw.rectangle(
                    [round(x_a), round(min(y_v, zero)), round(x_b) - 1, round(max(y_v, zero))],
                    fill=fills[s][g],
                )
            xc = round((x_a + x_b) / 2)
            up, down = err[s, 1, g], err[s, 0, g]
            peak = val
            if np.isfinite(up) or np.isfinite(down):
                peak = val + (up if np.isfinite(up) else 0.0)
                low = val - (down if np.isfinite(down) else 0.0)
                ya, yb = axes.clip_y(axes.y_of(peak)), axes.clip_y(axes.y_of(low))
                draw.line([(xc, round(ya)), (xc, round(yb))], fill=_INK, width=1)
                cap = max(2, round(min(bar_w / 4, 4)))
                for yy in (ya, yb):
                    draw.line([(xc - cap, round(yy)), (xc + cap, round(yy))], fill=_INK, width=1)
            if mk[s, g]:
                draw_text(
                    draw, (xc, max(axes.top + 1, axes.y_of(max(peak, val)) - 2)), "*", axes.label_font, "md"
                )
    if hline is not None:
        axes.dashed_hline(hline)
    return axes.close()


def line_chart(
    x: Sequence[float] | Sequence[str],
    values: Sequence[Sequence[float]] | np.ndarray,
    series: Sequence[str] | None = None,
    title: str = "",
    ylabel: str = "",
    xlabel: str = "",
    ylim: tuple[float, float] | None = None,
    hline: float | None = None,
    colours: Sequence[str] | None = None,
    size: tuple[int, int] = (640, 360),
    font_pt: float = 8.0,
    dpi: int = 100,
) -> np.ndarray:
    """Lines with point markers as a ``uint8`` RGB array ``[H, W, 3]`` (lines drawn at twice the size and
    reduced, so they are smooth).

    Args:
        x: numbers (placed to scale, round ticks) or labels (evenly spaced, one tick each).
        values: ``[S, N]``: one row per line (one line may be given as ``[N]``); NaN breaks a line.
        series: a name per line, shown in a legend right of the axes when there are two or more.
        title, ylabel, xlabel, ylim, hline, colours, size, font_pt, dpi: as in :func:`bar_chart` (the y range
            defaults to the data's, with 5% room).

    Raises:
        ValueError: ``values`` or ``series`` that do not match ``x``; a ``ylim`` that does not rise.

    Example:
        >>> line_chart([0, 1, 2], [[1.0, 0.5, 0.25]], title="decay").dtype.name
        'uint8'
    """
    from PIL import Image, ImageDraw

    N = len(x)
    v, names = _rows(values, series, N, "points")
    S = v.shape[0]
    palette = [rgb(c) for c in (colours or TAB10)]
    numeric = all(isinstance(a, (int, float, np.integer, np.floating)) and not isinstance(a, bool) for a in x)
    if numeric and N:
        xs = np.asarray(x, dtype=np.float64)
        lo, hi = float(xs.min()), float(xs.max())
        pad = 0.05 * ((hi - lo) or 1.0)
        lo, hi = lo - pad, hi + pad
        fractions = (xs - lo) / (hi - lo)
        ticks, decimals = _ticks(lo, hi)
        xticks = [((t - lo) / (hi - lo), f"{t:.{decimals}f}") for t in ticks]
    else:
        fractions = (np.arange(N) + 0.5) / max(1, N)
        xticks = [(float(f), str(a)) for f, a in zip(fractions, x)]
    if ylim is None:
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hline is not None:
            lo, hi = min(lo, hline), max(hi, hline)
        ylim = _padded(lo, hi, include_zero=False)

    legend = [(n, palette[s % len(palette)]) for s, n in enumerate(names)] if len(names) > 1 else []
    axes = _Axes(xticks, ylim, title, ylabel, xlabel, legend, size, 120, font_pt, dpi)
    page, _ = axes.open()
    if hline is not None:
        axes.dashed_hline(hline)
    k = 2  # lines and markers on a mask at twice the size, reduced: smooth edges
    for s in range(S):
        mask = Image.new("L", (axes.width * k, axes.height * k), 0)
        pen = ImageDraw.Draw(mask)
        pts = [
            (axes.x_of(float(f)) * k, axes.clip_y(axes.y_of(float(y))) * k) if np.isfinite(y) else None
            for f, y in zip(fractions, v[s])
        ]
        run: list[tuple[float, float]] = []
        for p in [*pts, None]:
            if p is None:
                if len(run) > 1:
                    pen.line(run, fill=255, width=round(1.5 * dpi / 72 * k), joint="curve")
                run = []
            else:
                run.append(p)
        r = 1.5 * dpi / 72 * k  # matplotlib's markersize 3: 3 points across
        for p in pts:
            if p is not None:
                pen.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=255)
        page.paste(Image.new("RGB", page.size, palette[s % len(palette)]), (0, 0), mask.reduce(k))
    return axes.close()


def side_by_side(
    charts: Sequence[np.ndarray], title: str = "", gap: int = 8, font_pt: float = 10.0, dpi: int = 100
) -> np.ndarray:
    """Charts (``uint8 [H, W, 3]``) in one row on a white page, top-aligned, with ``title`` over them.

    Example:
        >>> side_by_side([np.zeros((4, 5, 3), np.uint8), np.zeros((6, 2, 3), np.uint8)]).shape
        (6, 15, 3)
    """
    from PIL import Image, ImageDraw

    if not charts:
        raise ValueError("side_by_side needs at least one chart.")
    font = text_font(font_pt * dpi / 72.0)
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
        draw_text(ImageDraw.Draw(img), (width / 2, 4), title, font, "ma")
        page = np.asarray(img)
    return page


# ------------------------------------------------------------------------------------------------ helpers
def _rows(values: Any, series: Sequence[str] | None, n: int, what: str) -> tuple[np.ndarray, list[str]]:
    """``values`` as ``[S, n]`` floats (one row may be given flat) and the series names, both checked."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != n:
        raise ValueError(f"values must be [series, {n} {what}], got shape {list(np.shape(values))}.")
    names = list(series) if series is not None else []
    if names and len(names) != v.shape[0]:
        raise ValueError(f"{len(names)} series names for {v.shape[0]} rows of values; give one per row.")
    return v, names


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
        line = ""
        for word in part.split(" "):
            trial = f"{line} {word}" if line else word
            if line and text_size(trial, font)[0] > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _turned(
    page: Any, text: str, font: Any, at: tuple[float, float], angle: float, anchor: str = "right-top"
) -> None:
    """``text`` turned anticlockwise by ``angle`` and pasted onto ``page``: with its end at ``at`` (an x tick
    label hanging from its tick, ``"right-top"``), or with its middle left edge at ``at`` (``"left-middle"``)."""
    from PIL import Image, ImageDraw

    w, h = text_size(text, font)
    tile = Image.new("L", (w + 4, h + 4), 0)
    draw_text(ImageDraw.Draw(tile), (2, 2), text, font, "la", fill=255)
    turned = tile.rotate(math.degrees(angle), expand=True, resample=Image.BICUBIC)
    tw, th = turned.size
    if anchor == "right-top":
        x, y = round(at[0] - tw + 2), round(at[1])
    else:
        x, y = round(at[0]), round(at[1] - th / 2)
    page.paste(Image.new("RGB", turned.size, _INK), (x, y), turned)
