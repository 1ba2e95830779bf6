"""Inline SVG line and bar charts of the report (no plotting library)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_xai.colours import TAB10
from lightning_xai.report.html import _e, _fmt, _is_number, _num, _short

__all__ = ["LineSeries", "bar_chart_svg", "line_chart_svg"]


@dataclass
class LineSeries:
    """One line of :func:`line_chart_svg`.

    Args:
        name: legend entry.
        xs: x values (numbers; any non-number makes the x axis categorical).
        ys: y values; ``None`` or non-finite values leave a gap.
        marks: per point, whether to mark it as an alert (a red ring).
        dashed: draw dashed (thresholds); a dashed series with one x spans the whole plot.
        colour: CSS colour; default from the palette (grey for dashed series).
    """

    name: str
    xs: Sequence[Any]
    ys: Sequence[Any]
    marks: Sequence[bool] = ()
    dashed: bool = False
    colour: str = ""


def _nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (steps 1, 2, 2.5, 5 times a power of ten)."""
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        pad = 1.0 if integer else (abs(hi) * 0.1 or 0.5)
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * mag for m in steps if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step))
    start = math.floor(lo / step + 1e-9) * step
    n = max(1, math.ceil((hi - start) / step - 1e-9))
    return [round(start + i * step, 12) for i in range(n + 1)]


def _tick_label(v: float) -> str:
    return f"{v:.6g}"


def _text_width(text: str, size: float = 11.0) -> float:
    return 0.58 * size * len(text)  # close enough for the sans-serif fonts browsers pick here


def _legend(entries: list[tuple[str, str, bool]], left: float, width: float) -> tuple[list[tuple], float]:
    """Place legend entries ``(name, colour, dashed)`` in rows; returns their positions and the height."""
    placed, x, row = [], left, 0
    for name, colour, dashed in entries:
        label = _short(name, 40)
        w = 26 + _text_width(label) + 14
        if x > left and x + w > left + width:
            x, row = left, row + 1
        placed.append((x, row, label, colour, dashed))
        x += w
    return placed, (row + 1) * 16 if entries else 0


def _svg_open(width: float, height: float, title: str, attrs: Mapping[str, str] | None) -> list[str]:
    extra = "".join(f' {k}="{_e(v)}"' for k, v in (attrs or {}).items())
    out = [
        (
            f'<svg class="chart" role="img" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" aria-label="{_e(title)}"{extra}>'
        ),
        f"<title>{_e(title)}</title>",
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#fff"/>',
    ]
    if title:
        out.append(
            f'<text class="ct" x="{width / 2:.1f}" y="16" text-anchor="middle">'
            f"{_e(_short(title, int(width / 7.2)))}</text>"
        )
    return out


def _y_grid(ticks: Sequence[float], py: Any, left: float, right: float) -> list[str]:
    """Horizontal grid lines with their tick labels, shared by the line and bar charts."""
    out = []
    for v in ticks:
        out.append(f'<line class="grid" x1="{left:.1f}" x2="{right:.1f}" y1="{py(v):.1f}" y2="{py(v):.1f}"/>')
        out.append(f'<text x="{left - 6:.1f}" y="{py(v) + 4:.1f}" text-anchor="end">{_tick_label(v)}</text>')
    return out


def line_chart_svg(
    series: Sequence[LineSeries],
    *,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    width: int = 520,
    height: int = 260,
    y_include: Sequence[float] = (),
    attrs: Mapping[str, str] | None = None,
) -> str:
    """An inline SVG line plot (axes, ticks, legend, hover titles), no JavaScript and no fonts needed.

    Args:
        series: the lines; see :class:`LineSeries`.
        title, x_label, y_label: texts around the plot.
        width, height: size in pixels (the legend adds rows below).
        y_include: values the y range must include (e.g. ``[0, 1]`` for a similarity).
        attrs: extra attributes of the ``<svg>`` element (e.g. ``{"data-plot": "cka-timeline"}``).

    Example:
        >>> svg = line_chart_svg([LineSeries("fidelity", [0, 1, 2], [0.8, 0.9, 0.85])], title="rules")
        >>> svg.startswith("<svg") and "<path" in svg
        True
    """
    categorical = any(not _is_number(x) for s in series for x in s.xs)
    cats: list[str] = []
    if categorical:
        for s in series:
            for x in s.xs:
                if str(x) not in cats:
                    cats.append(str(x))

    def xval(x: Any) -> float | None:
        return float(cats.index(str(x))) if categorical else _num(x)

    lines = []
    for i, s in enumerate(series):
        marks = list(s.marks) + [False] * max(0, len(s.xs) - len(s.marks))
        pts = [(xval(x), _num(y), bool(m)) for x, y, m in zip(s.xs, s.ys, marks)]
        colour = s.colour or ("#777" if s.dashed else TAB10[i % len(TAB10)])
        lines.append((s, pts, colour))
    xs = [p[0] for _, pts, _ in lines for p in pts if p[0] is not None]
    ys = [p[1] for _, pts, _ in lines for p in pts if p[1] is not None] + [float(v) for v in y_include]
    integer_x = categorical or all(float(x).is_integer() for x in xs)
    xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if xhi - xlo < 1e-12:
        xlo, xhi = xlo - (1 if integer_x else 0.5), xhi + (1 if integer_x else 0.5)
    yt = _nice_ticks(min(ys), max(ys)) if ys else [0.0, 0.5, 1.0]
    if integer_x and xhi - xlo <= 12:
        xt = [float(v) for v in range(math.floor(xlo), math.ceil(xhi) + 1)]
    else:
        xt = _nice_ticks(xlo, xhi, 6, integer=integer_x)
        xlo, xhi = min(xlo, xt[0]), max(xhi, xt[-1])
    if categorical:
        xt = [v for v in xt if 0 <= v < len(cats)]
        if len(xt) > 12:
            xt = xt[:: math.ceil(len(xt) / 12)]
    ylo, yhi = yt[0], yt[-1]

    entries = (
        [(s.name, c, s.dashed) for s, _, c in lines if s.name]
        if len(lines) > 1 or any(s.dashed for s in series)
        else []
    )
    left, right, top = 58.0, width - 16.0, (30.0 if title else 12.0)
    legend, legend_h = _legend(entries, left, right - left)
    bottom = height - 40.0
    total_h = height + legend_h + (6 if legend_h else 0)

    def px(x: float) -> float:
        return left + (x - xlo) / (xhi - xlo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - ylo) / (yhi - ylo) * (bottom - top)

    out = _svg_open(width, total_h, title, attrs)
    out.append('<g class="axes">')
    out.extend(_y_grid(yt, py, left, right))
    for v in xt:
        label = cats[int(v)] if categorical else _tick_label(v)
        out.append(
            f'<line class="tick" x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{bottom:.1f}" y2="{bottom + 4:.1f}"/>'
        )
        out.append(
            f'<text x="{px(v):.1f}" y="{bottom + 16:.1f}" text-anchor="middle">{_e(_short(label, 14))}</text>'
        )
    out.append(f'<line class="axis" x1="{left:.1f}" x2="{right:.1f}" y1="{bottom:.1f}" y2="{bottom:.1f}"/>')
    out.append(f'<line class="axis" x1="{left:.1f}" x2="{left:.1f}" y1="{top:.1f}" y2="{bottom:.1f}"/>')
    if x_label:
        out.append(
            f'<text x="{(left + right) / 2:.1f}" y="{bottom + 32:.1f}" text-anchor="middle">{_e(x_label)}</text>'
        )
    if y_label:
        cy = (top + bottom) / 2
        out.append(
            f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
            f"{_e(_short(y_label, 40))}</text>"
        )
    out.append("</g>")
    many = sum(len(pts) for _, pts, _ in lines) > 240
    for s, pts, colour in lines:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        valid = [(x, y) for x, y, _ in pts if x is not None and y is not None]
        if s.dashed and len({x for x, _ in valid}) == 1:
            y = valid[0][1]
            out.append(
                f'<path class="series" d="M{left:.1f} {py(y):.1f} L{right:.1f} {py(y):.1f}" stroke="{colour}"{dash}>'
                f"<title>{_e(s.name)}: {_fmt(y)}</title></path>"
            )
            continue
        d, pen = [], "M"
        for x, y, _ in pts:
            if x is None or y is None:
                pen = "M"  # a gap: start a new segment at the next valid point
                continue
            d.append(f"{pen}{px(x):.1f} {py(y):.1f}")
            pen = "L"
        if d:
            out.append(f'<path class="series" d="{" ".join(d)}" stroke="{colour}"{dash}/>')
        for x, y, mark in pts:
            if x is None or y is None or (s.dashed and not mark):
                continue
            xs_text = cats[int(x)] if categorical else _fmt(x)
            tip = f"{_e(s.name)}: {_e(xs_text)} → {_fmt(y)}"
            if mark:
                out.append(
                    f'<circle class="alert-point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="6" fill="none" '
                    f'stroke="#c0392b" stroke-width="2.5"><title>alert · {tip}</title></circle>'
                )
            if not many or mark:
                out.append(
                    f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{colour}"><title>{tip}</title></circle>'
                )
    for x, row, label, colour, dashed in legend:
        y = height + 10 + row * 16
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(
            f'<line x1="{x:.1f}" x2="{x + 20:.1f}" y1="{y - 4:.1f}" y2="{y - 4:.1f}" stroke="{colour}" '
            f'stroke-width="2.5"{dash}/><text x="{x + 25:.1f}" y="{y:.1f}">{_e(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def bar_chart_svg(
    categories: Sequence[Any],
    values: Mapping[str, Sequence[Any]],
    *,
    title: str = "",
    y_label: str = "",
    reference: float | None = None,
    intervals: Mapping[str, Sequence[tuple[Any, Any] | None]] | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    width: int | None = None,
    height: int = 260,
    attrs: Mapping[str, str] | None = None,
) -> str:
    """An inline SVG bar chart: one bar per category, grouped when ``values`` has several series.

    Args:
        categories: bar labels.
        values: ``{series name: one value per category}`` (``None`` draws no bar).
        title, y_label: texts around the plot.
        reference: a dashed horizontal line (e.g. 0.5 for TCAV scores).
        intervals: ``{series: [(low, high) or None per category]}`` drawn as whiskers.
        annotations: ``{series: [text per category]}`` written above each bar (e.g. ``"*"``).
        width: pixels; default grows with the number of bars.
        height: pixels of the plot (rotated labels and the legend add to it).
        attrs: extra attributes of the ``<svg>`` element.

    Example:
        >>> svg = bar_chart_svg(["shape", "colour"], {"importance": [0.3, 0.05]}, reference=0.0)
        >>> svg.count('class="bar"')
        2
    """
    cats = [str(c) for c in categories]
    names = list(values)
    n_bars = max(1, len(cats) * max(1, len(names)))
    if width is None:
        width = int(min(1180, max(420, 90 + n_bars * 22 + len(cats) * 6)))
    left, right, top = 58.0, width - 16.0, (30.0 if title else 12.0)
    slot = (right - left) / max(1, len(cats))
    longest = max((len(_short(c, 22)) for c in cats), default=1)
    rotate = _text_width("x" * longest, 10.5) > slot - 4
    label_h = (min(22, longest) * 5.2 + 12) if rotate else 18.0
    entries = [(n, TAB10[j % len(TAB10)], False) for j, n in enumerate(names)] if len(names) > 1 else []
    legend, legend_h = _legend(entries, left, right - left)
    bottom = height - 12.0 - label_h
    if bottom - top < 80:
        bottom = top + 80.0
    total_h = bottom + label_h + 8 + legend_h

    nums = {n: [_num(v) for v in values[n]] for n in names}
    span = [0.0] + [v for vs in nums.values() for v in vs if v is not None]
    if reference is not None:
        span.append(float(reference))
    for ivs in (intervals or {}).values():
        for iv in ivs:
            if iv is not None:
                span += [v for v in (_num(iv[0]), _num(iv[1])) if v is not None]
    yt = _nice_ticks(min(span), max(span))
    ylo, yhi = yt[0], yt[-1]

    def py(y: float) -> float:
        return bottom - (y - ylo) / (yhi - ylo) * (bottom - top)

    out = _svg_open(width, total_h, title, attrs)
    out.append('<g class="axes">')
    out.extend(_y_grid(yt, py, left, right))
    out.append(f'<line class="axis" x1="{left:.1f}" x2="{left:.1f}" y1="{top:.1f}" y2="{bottom:.1f}"/>')
    if y_label:
        cy = (top + bottom) / 2
        out.append(
            f'<text x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
            f"{_e(_short(y_label, 40))}</text>"
        )
    for i, c in enumerate(cats):
        cx = left + (i + 0.5) * slot
        label = _e(_short(c, 22))
        if rotate:
            out.append(
                f'<text x="{cx:.1f}" y="{bottom + 12:.1f}" text-anchor="end" '
                f'transform="rotate(-40 {cx:.1f} {bottom + 12:.1f})">{label}</text>'
            )
        else:
            out.append(f'<text x="{cx:.1f}" y="{bottom + 15:.1f}" text-anchor="middle">{label}</text>')
    out.append("</g>")
    bw = slot * 0.8 / max(1, len(names))
    zero = py(min(max(0.0, ylo), yhi))
    for j, n in enumerate(names):
        colour = TAB10[j % len(TAB10)]
        ivs = list((intervals or {}).get(n) or [])
        notes = list((annotations or {}).get(n) or [])
        for i, v in enumerate(nums[n]):
            if v is None:
                continue
            x0 = left + i * slot + slot * 0.1 + j * bw
            y = py(v)
            tip = f"{_e(cats[i])} · {_e(n)}: {_fmt(v)}"
            out.append(
                f'<rect class="bar" x="{x0:.1f}" y="{min(y, zero):.1f}" width="{max(bw - 1, 1):.1f}" '
                f'height="{max(abs(zero - y), 0.8):.1f}" fill="{colour}"><title>{tip}</title></rect>'
            )
            iv = ivs[i] if i < len(ivs) else None
            top_y = min(y, zero)
            if iv is not None and _num(iv[0]) is not None and _num(iv[1]) is not None:
                lo_y, hi_y, mx = py(_num(iv[0])), py(_num(iv[1])), x0 + bw / 2
                top_y = min(top_y, hi_y)
                out.append(
                    f'<path class="whisker" d="M{mx:.1f} {lo_y:.1f} L{mx:.1f} {hi_y:.1f} M{mx - 3:.1f} {lo_y:.1f} '
                    f'L{mx + 3:.1f} {lo_y:.1f} M{mx - 3:.1f} {hi_y:.1f} L{mx + 3:.1f} {hi_y:.1f}"/>'
                )
            note = notes[i] if i < len(notes) else ""
            if note:
                out.append(
                    f'<text class="note" x="{x0 + bw / 2:.1f}" y="{top_y - 3:.1f}" '
                    f'text-anchor="middle">{_e(note)}</text>'
                )
    out.append(f'<line class="axis" x1="{left:.1f}" x2="{right:.1f}" y1="{zero:.1f}" y2="{zero:.1f}"/>')
    if reference is not None:
        ry = py(float(reference))
        out.append(
            f'<line class="reference" x1="{left:.1f}" x2="{right:.1f}" y1="{ry:.1f}" y2="{ry:.1f}" '
            f'stroke="#555" stroke-dasharray="6 4"><title>reference {_fmt(reference)}</title></line>'
        )
    for x, row, label, colour, _ in legend:
        y = bottom + label_h + 12 + row * 16
        out.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="18" height="10" fill="{colour}"/>'
            f'<text x="{x + 25:.1f}" y="{y:.1f}">{_e(label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
