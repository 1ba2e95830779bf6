"""Static HTML review of a run's explanation records: what ``lightning-xai report`` and ``compare`` write.

:func:`build_report` turns a run directory (``<run dir>/xai/records.jsonl`` and ``<run dir>/xai/media/``,
see :mod:`lightning_xai.records`) into **one self-contained HTML file**::

    from lightning_xai.report import build_report, compare
    build_report("runs/quickstart")                                   # -> runs/quickstart/xai/report.html
    compare("runs/a", "runs/b", "compare.html")                       # two runs side by side

The page needs no server and no network: images are embedded as base64 ``data:`` URIs (files over
``max_media_bytes`` are left out with a note), charts are inline SVG drawn here, the stylesheet and
the small tab script are inline, and a Content-Security-Policy forbids any other load.

Layout, top to bottom:

* a header (run dir, epochs covered, methods, record, error and alert counts) and a table of contents;
* an alert box and an error box (each entry links to its epoch);
* one ``<section id="method-<method>" data-section="<method>">`` per ``record.method``, holding

  - an epoch navigation (``<nav class="epoch-nav">``; tabs with the inline script, anchors without it),
  - an overview across epochs where the method has one (CKA of ``representation_drift``, one timeline
    per drift series of ``drift``),
  - one ``<article id="epoch-<method>-<epoch>" class="epoch">`` per epoch with a card per record: the
    method's own view (rules, trees, TCAV bars, importance bars, generated images, drift rows, alerts,
    errors), the payload's scalars, its charts (SVG), media (with mask overlays and boxes), tables and
    text, and the raw payload (collapsed).

This module imports nothing from Lightning or torch; mask overlays are those of
:func:`lightning_xai.sinks.mask_overlay`, so they look as in TensorBoard.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_xai.colours import TAB10
from lightning_xai.records import MEDIA_DIR, RECORDS_FILE, RESERVED_PAYLOAD_KEYS, Record, read_records
from lightning_xai.sinks import mask_overlay

__all__ = [
    "KNOWN_METHODS",
    "LineSeries",
    "RecordsNotFoundError",
    "RunRecords",
    "bar_chart_svg",
    "build_report",
    "compare",
    "line_chart_svg",
    "load_run",
    "render_compare",
    "render_report",
]

#: Section order of the methods this package ships; other methods follow in alphabetical order.
KNOWN_METHODS = (
    "representation_drift",
    "logic_rules",
    "concept_attribution",
    "symbolic_tree",
    "concept_permutation",
    "diffusion_explainer",
    "drift",
)
METHOD_TITLES = {
    "representation_drift": "Representation drift (linear CKA)",
    "logic_rules": "Logic rules (VisionLogic)",
    "concept_attribution": "Concept attribution (TCAV / Visual-TCAV)",
    "symbolic_tree": "Symbolic trees (hyperbolic)",
    "concept_permutation": "Concept permutation importance (DEPICT)",
    "diffusion_explainer": "Diffusion explanations (DiffExplainer)",
    "drift": "Concept drift monitor",
}
#: Media files larger than this (bytes) are not embedded; the page says so where they would be.
DEFAULT_MAX_MEDIA_BYTES = 4_000_000
#: Once this many bytes of media are embedded, further media are left out (with a note).
DEFAULT_MAX_TOTAL_MEDIA_BYTES = 96_000_000
MAX_TABLE_ROWS = 200
MAX_RAW_CHARS = 20_000
_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


class RecordsNotFoundError(FileNotFoundError):
    """A run directory without ``xai/records.jsonl``; the message names the path looked at."""


# ----------------------------------------------------------------------------------------------------------
# Loading a run
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunRecords:
    """The records of one run and where they live.

    Attributes:
        run_dir: the run directory (the parent of the ``xai`` store, or the store itself if it has another
            name).
        root: the store directory holding ``records.jsonl``; media paths in payloads are relative to it.
        records: the records in the order they were written.
        skipped_lines: unreadable lines of ``records.jsonl`` (e.g. the last line of a crashed run).
        label: a short name for the run (its directory name), used in headings.
    """

    run_dir: Path
    root: Path
    records: list[Record]
    skipped_lines: int = 0
    label: str = ""

    @property
    def records_path(self) -> Path:
        return self.root / RECORDS_FILE

    @property
    def methods(self) -> list[str]:
        """Methods present, known ones in :data:`KNOWN_METHODS` order, then the others alphabetically."""
        return _order_methods({r.method for r in self.records})

    @property
    def epochs(self) -> list[int]:
        return sorted({r.epoch for r in self.records})

    @property
    def errors(self) -> list[Record]:
        return [r for r in self.records if r.name == "error"]

    def by_method(self) -> dict[str, dict[int, list[Record]]]:
        """``{method: {epoch: [records in written order]}}`` with epochs sorted."""
        out: dict[str, dict[int, list[Record]]] = {}
        for rec in self.records:
            out.setdefault(rec.method, {}).setdefault(rec.epoch, []).append(rec)
        return {m: dict(sorted(out[m].items())) for m in self.methods}

    def alerts(self) -> list[_Alert]:
        """Alert records (``name == "alert"``) plus flagged drift rows that no alert record reports."""
        found: list[_Alert] = []
        seen: set[tuple] = set()
        for rec in self.records:
            if rec.name != "alert":
                continue
            p = rec.payload
            found.append(
                _Alert(rec.method, rec.epoch, str(p.get("message") or _alert_text(p)), p.get("source"))
            )
            seen.add((rec.epoch, p.get("source"), p.get("kind"), p.get("key"), p.get("against")))
        for rec in self.records:
            if rec.method != "drift" or rec.name == "alert":
                continue
            for row in _drift_rows(rec):
                tag = (rec.epoch, row.get("source"), row.get("kind"), row.get("key"), row.get("against"))
                if row.get("alert") and tag not in seen:
                    seen.add(tag)
                    found.append(_Alert(rec.method, rec.epoch, _alert_text(row), row.get("source")))
        return found


@dataclass
class _Alert:
    method: str  # the section it is shown in
    epoch: int
    message: str
    source: Any = None  # the method whose explanation drifted, when the alert says


def _order_methods(methods: Iterable[str]) -> list[str]:
    methods = set(methods)
    return [m for m in KNOWN_METHODS if m in methods] + sorted(methods - set(KNOWN_METHODS))


def _locate(path: Path) -> tuple[Path, Path]:
    """``(run_dir, store root)`` for a run dir, an ``xai`` store dir or a ``records.jsonl`` file."""
    if path.is_file():
        root = path.parent
    elif (path / "xai" / RECORDS_FILE).is_file():
        root = path / "xai"
    elif (path / RECORDS_FILE).is_file():
        root = path
    else:
        looked = path / "xai" / RECORDS_FILE
        where = "does not exist" if not path.exists() else "has no xai/records.jsonl"
        raise RecordsNotFoundError(
            f"no explanation records at {looked} ({path} {where}). lightning-xai callbacks write "
            f"xai/{RECORDS_FILE} (and xai/{MEDIA_DIR}/) into the trainer's run directory while it trains "
            "(its log_dir, e.g. lightning_logs/version_0, or default_root_dir without a logger); pass that "
            "directory, an xai directory, or the records.jsonl file"
        )
    run_dir = root.parent if root.name == "xai" else root
    return run_dir, root


def load_run(path: str | os.PathLike, label: str | None = None) -> RunRecords:
    """Read a run's records for the report.

    Args:
        path: a run directory (holding ``xai/records.jsonl``), an ``xai`` store dir or the records file.
        label: name shown for the run; default the run directory's name.

    Raises:
        RecordsNotFoundError: if there is no ``records.jsonl`` (the message names the path looked at and
            says how records get there).

    Example:
        >>> run = load_run("runs/quickstart")  # doctest: +SKIP
        >>> run.methods, run.epochs  # doctest: +SKIP
        (['representation_drift', 'logic_rules', ...], [0, 1])
    """
    run_dir, root = _locate(Path(path).expanduser().resolve())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_records(root / RECORDS_FILE)
    skipped = 0
    for w in caught:
        m = re.search(r"skipped (\d+) unreadable", str(w.message))
        if m:
            skipped += int(m.group(1))
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return RunRecords(run_dir, root, records, skipped, label or run_dir.name or str(run_dir))


# ----------------------------------------------------------------------------------------------------------
# Small formatting helpers
# ----------------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "x"


def _num(value: Any) -> float | None:
    """A finite float, or ``None`` for anything that is not a finite number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _int(value: Any) -> int:
    v = _num(value)
    return int(v) if v is not None and v > 0 else 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """Short text for a table cell or a number."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        return text if len(text) <= 240 else text[:237] + "..."
    return str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: max(1, n - 1)] + "…"


def _alert_text(p: Mapping[str, Any]) -> str:
    what = " · ".join(str(p[k]) for k in ("source", "kind", "key") if p.get(k) is not None)
    value, threshold = _num(p.get("value")), _num(p.get("threshold"))
    cmp = f"{_fmt(value)} > {_fmt(threshold)}" if threshold is not None else _fmt(value)
    against = f" vs {p['against']}" if p.get("against") else ""
    return f"{what}{against}: {cmp}"


def _drift_rows(rec: Record) -> list[dict[str, Any]]:
    rows = rec.payload.get("rows")
    return [r for r in rows if isinstance(r, Mapping)] if isinstance(rows, list) else []


# ----------------------------------------------------------------------------------------------------------
# SVG charts
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# Media
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _MediaBudget:
    """Embeds media files as data URIs until a per-file or total size cap says no."""

    max_file: int
    max_total: int
    used: int = 0
    embedded: int = 0
    skipped: list[str] = field(default_factory=list)

    def _take(self, n: int, what: str) -> str | None:
        if n > self.max_file:
            reason = f"{what} is {n / 1e6:.1f} MB, over the {self.max_file / 1e6:.1f} MB per-image limit"
        elif self.used + n > self.max_total:
            reason = f"{what} left out: the report already embeds {self.used / 1e6:.1f} MB of media"
        else:
            self.used += n
            self.embedded += 1
            return None
        self.skipped.append(reason)
        return reason

    def file(self, path: Path) -> tuple[str | None, str]:
        """``(data URI, "")`` or ``(None, reason)``."""
        if not path.is_file():
            self.skipped.append(f"{path} is missing")
            return None, f"file missing: {path}"
        size = path.stat().st_size
        reason = self._take(size, path.name)
        if reason:
            return None, reason
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}", ""

    def png(self, data: bytes, what: str) -> tuple[str | None, str]:
        reason = self._take(len(data), what)
        if reason:
            return None, reason
        return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}", ""


def _mask_overlay_png(image_path: Path, mask_path: Path) -> bytes | None:
    """The mask's non-zero ids coloured over the image, as PNG bytes (``None`` if either is unreadable)."""
    try:
        import numpy as np
        from PIL import Image

        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(mask_path) as mm:
            mask = np.asarray(mm)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            return None
        buf = io.BytesIO()
        Image.fromarray(mask_overlay(image, mask)).save(buf, format="PNG")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a broken mask must not break the report; the page says it is missing
        return None


# ----------------------------------------------------------------------------------------------------------
# Page
# ----------------------------------------------------------------------------------------------------------
_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d8dde5;--bg:#f5f7fa;--card:#fff;--accent:#2f6fdd;
--alert:#b85c00;--alert-bg:#fff4e0;--err:#b3261e;--err-bg:#fdecea}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1320px;margin:0 auto;padding:0 18px 60px}
header.top{background:#1d2330;color:#fff;padding:18px 18px 14px}
header.top h1{margin:0 0 8px;font-size:22px}
header.top code{color:#cfe0ff}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.meta dt{color:#9fb0c8}dl.meta dd{margin:0}
.cols-meta{display:grid;grid-template-columns:1fr 1fr;gap:18px}
nav#toc{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 18px;display:flex;flex-wrap:wrap;gap:6px 14px}
nav#toc a{color:var(--accent);text-decoration:none;font-weight:600}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;background:#e4e9f2;color:var(--fg)}
.badge.alert{background:var(--alert-bg);color:var(--alert);border:1px solid #f0b66b}
.badge.error{background:var(--err-bg);color:var(--err);border:1px solid #eea49e}
.badge.ok{background:#e3f4e6;color:#1e6b2c}
.alert-box,.error-box{margin:16px 0;padding:10px 16px;border-radius:8px}
.alert-box{background:var(--alert-bg);border:2px solid #f0a640}
.error-box{background:var(--err-bg);border:2px solid #e0665e}
.alert-box h2,.error-box h2{margin:0 0 6px;font-size:17px}
.alert-box h2{color:var(--alert)}.error-box h2{color:var(--err)}
.alert-box a,.error-box a{color:inherit}
section.method{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:22px 0;padding:6px 18px 16px}
section.method>h2{margin:10px 0 2px;font-size:20px}
.muted{color:var(--muted);font-weight:400;font-size:13px}
nav.epoch-nav{display:flex;flex-wrap:wrap;gap:6px;margin:10px 0 12px;padding:8px 0;border-bottom:1px solid var(--line)}
nav.epoch-nav a{padding:3px 10px;border:1px solid var(--line);border-radius:14px;text-decoration:none;color:var(--fg);background:#fafbfc}
nav.epoch-nav a.active{background:var(--accent);border-color:var(--accent);color:#fff}
nav.epoch-nav a.has-alert{border-color:#f0a640}nav.epoch-nav a.has-error{border-color:#e0665e}
article.epoch{border-top:1px dashed var(--line);padding-top:6px}
article.epoch>h3{margin:6px 0 10px;font-size:17px}
.overview{margin:8px 0 14px}
.overview h3{font-size:15px;margin:8px 0}
.record{border:1px solid var(--line);border-radius:8px;padding:8px 12px;margin:0 0 12px;background:#fff}
.record.error{border:2px solid #e0665e;background:var(--err-bg)}
.record.alert{border:2px solid #f0a640;background:var(--alert-bg)}
.record-head{display:flex;gap:10px;align-items:baseline;margin-bottom:6px}
.record-head .name{font-weight:700;font-size:15px}
.inline-alert{background:var(--alert-bg);border-left:5px solid #f0a640;padding:6px 10px;margin:6px 0 10px;border-radius:4px}
.view{margin:6px 0 10px}
.view h4,.record h4{margin:10px 0 4px;font-size:14px}
ol.rules,ul.rules{margin:4px 0;padding-left:22px}
ol.rules code,ul.rules code{white-space:pre-wrap}
ul.tree{list-style:none;padding-left:18px;margin:2px 0;border-left:1px dotted #aab}
ul.tree.root{border-left:none;padding-left:0}
ul.tree li{margin:1px 0}
dl.kv{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:2px 14px;margin:6px 0}
dl.kv div{display:flex;gap:6px;overflow:hidden}dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;font-variant-numeric:tabular-nums}
.charts,.gallery,.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
svg.chart{border:1px solid var(--line);border-radius:6px;max-width:100%;height:auto}
svg.chart text{font-size:11px;fill:#333}
svg.chart text.ct{font-size:12.5px;font-weight:600}
svg.chart text.note{font-size:13px;font-weight:700;fill:#b3261e}
svg.chart .grid{stroke:#e6e9ee}svg.chart .axis{stroke:#555}svg.chart .tick{stroke:#555}
svg.chart path.series{fill:none;stroke-width:2}
svg.chart path.whisker{stroke:#222;stroke-width:1.2;fill:none}
.timeline{border-radius:6px}.timeline.alerted svg.chart{border:2px solid #f0a640}
figure.media{margin:0;max-width:100%;background:#fafbfc;border:1px solid var(--line);border-radius:6px;padding:6px}
figure.media figcaption{font-size:12px;color:var(--muted);max-width:640px}
.imgwrap{position:relative;display:inline-block;line-height:0}
.imgwrap img{max-width:100%;height:auto}
.imgwrap img.small{image-rendering:pixelated}
.imgwrap svg.boxes{position:absolute;left:0;top:0;width:100%;height:100%}
.masks{display:flex;flex-wrap:wrap;gap:6px;margin-top:4px}.masks figure{margin:0;font-size:11px;color:var(--muted)}
.missing{color:var(--muted);font-style:italic;border:1px dashed var(--line);padding:6px;border-radius:4px}
details{margin:4px 0}
summary{cursor:pointer;color:#34435a}
.scroll{overflow:auto;max-height:520px;max-width:100%}
.tables{display:flex;flex-wrap:wrap;gap:2px 22px;align-items:flex-start}.tables>details{max-width:100%}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0;width:max-content}
th,td{border:1px solid var(--line);padding:2px 7px;text-align:left;vertical-align:top;max-width:34em;overflow-wrap:anywhere}
th{background:#eef1f6;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.alert td{background:var(--alert-bg);color:var(--alert);font-weight:600}
pre{background:#f3f5f8;border:1px solid var(--line);border-radius:4px;padding:8px;overflow:auto;max-height:420px;font-size:12px;white-space:pre-wrap}
.error pre{background:#fff}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.col{min-width:0}
.col-head{font-weight:700;padding:3px 8px;border-radius:5px;margin-bottom:6px;background:#e9eef8}
.col[data-run=b] .col-head{background:#f3e9f8}
.only-in{color:var(--muted);font-style:italic;border:1px dashed var(--line);padding:10px;border-radius:6px}
.target{border:1px solid var(--line);border-radius:6px;padding:6px 10px;margin:6px 0}
.target .caption{font-size:15px;font-weight:600}
.empty{color:var(--muted);font-style:italic}
"""

# Tabs per method: one epoch visible at a time (the last by default); following an anchor shows its epoch.
_JS = """
(function(){
  var shows = [];
  document.querySelectorAll('section[data-section]').forEach(function(sec){
    var links = Array.prototype.slice.call(sec.querySelectorAll('nav.epoch-nav a[data-epoch]'));
    var arts = Array.prototype.slice.call(sec.querySelectorAll('article.epoch'));
    if (!links.length || !arts.length) return;
    function show(ep){
      arts.forEach(function(a){ a.hidden = ep !== 'all' && a.getAttribute('data-epoch') !== ep; });
      links.forEach(function(l){ l.classList.toggle('active', l.getAttribute('data-epoch') === ep); });
    }
    links.forEach(function(l){ l.addEventListener('click', function(){ show(l.getAttribute('data-epoch')); }); });
    shows.push({arts: arts, show: show});
    show(arts[arts.length - 1].getAttribute('data-epoch'));
  });
  function follow(){
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (!el) return;
    var art = el.closest('article.epoch');
    shows.forEach(function(s){ if (art && s.arts.indexOf(art) >= 0) s.show(art.getAttribute('data-epoch')); });
    el.scrollIntoView();
  }
  window.addEventListener('hashchange', follow);
  follow();
  document.body.setAttribute('data-js', 'ready');
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="lightning-xai report">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_JS}</script>\n</body></html>\n"
    )


# ----------------------------------------------------------------------------------------------------------
# Rendering of one run's records
# ----------------------------------------------------------------------------------------------------------
class _Renderer:
    """Renders records of one run; ``budget`` may be shared by the two runs of a comparison."""

    def __init__(self, run: RunRecords, budget: _MediaBudget) -> None:
        self.run = run
        self.budget = budget

    # -- generic parts ------------------------------------------------------------------------------------
    def record(self, rec: Record) -> str:
        kind = "error" if rec.name == "error" else "alert" if rec.name == "alert" else ""
        head = (
            f'<div class="record-head"><span class="name">{_e(rec.name)}</span>'
            f'<span class="muted">epoch {rec.epoch} · step {rec.global_step} · {rec.time_s:.2f} s</span>'
            + ('<span class="badge error">error</span>' if kind == "error" else "")
            + ('<span class="badge alert">alert</span>' if kind == "alert" else "")
            + "</div>"
        )
        parts = [
            (
                f'<div class="record {kind}" data-method="{_e(rec.method)}" data-name="{_e(rec.name)}" '
                f'data-epoch="{rec.epoch}" data-step="{rec.global_step}">'
            ),
            head,
        ]
        if rec.name == "error":
            parts.append(self.error_view(rec))
            parts.append("</div>")
            return "".join(parts)
        used: set[str] = set()
        view = _METHOD_VIEWS.get(rec.method)
        if rec.name == "alert":
            parts.append(self.alert_view(rec))
        elif view is not None:
            parts.append(view(self, rec, used))
        parts.append(self.scalars(rec.payload))
        parts.append(self.charts(rec.payload))
        parts.append(self.media(rec.payload, used))
        parts.append(self.tables(rec.payload))
        parts.append(self.texts(rec.payload))
        parts.append(self.raw(rec.payload))
        parts.append("</div>")
        return "".join(parts)

    def scalars(self, payload: Mapping[str, Any]) -> str:
        items: list[tuple[str, Any]] = []
        for k, v in payload.items():
            if k in RESERVED_PAYLOAD_KEYS or k in ("history", "rows", "message", "traceback"):
                continue
            if v is None or isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 120):
                items.append((k, v))
            elif isinstance(v, Mapping) and 0 < len(v) <= 12:
                items += [
                    (f"{k}.{k2}", v2)
                    for k2, v2 in v.items()
                    if v2 is None
                    or isinstance(v2, (bool, int, float))
                    or (isinstance(v2, str) and len(v2) <= 80)
                ]
        if not items:
            return ""
        cells = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd></div>" for k, v in items[:36])
        return f'<dl class="kv">{cells}</dl>'

    def charts(self, payload: Mapping[str, Any]) -> str:
        specs = payload.get("charts")
        tables = payload.get("tables") or {}
        if not isinstance(specs, Mapping) or not specs:
            return ""
        out = ['<h4>Charts</h4><div class="charts">']
        for key, spec in specs.items():
            out.append(self.chart(str(key), spec, tables))
        out.append("</div>")
        return "".join(out)

    def chart(self, key: str, spec: Any, tables: Mapping[str, Any]) -> str:
        if not isinstance(spec, Mapping):
            return f'<div class="missing">chart {_e(key)}: unreadable spec</div>'
        table = tables.get(spec.get("table"))
        if not isinstance(table, Mapping) or "columns" not in table:
            return f'<div class="missing">chart {_e(key)}: its table {_e(spec.get("table"))} is not in the record</div>'
        cols = list(table["columns"])
        rows = [r for r in table.get("rows") or [] if isinstance(r, list) and len(r) == len(cols)]
        x = spec.get("x")
        ys = spec.get("y")
        ys = [ys] if isinstance(ys, str) else list(ys or [])
        if x not in cols or not ys or any(y not in cols for y in ys):
            return f'<div class="missing">chart {_e(key)}: columns {_e(x)}/{_e(ys)} not in {_e(cols)}</div>'
        xi = cols.index(x)
        xs = [r[xi] for r in rows]
        title = str(spec.get("title") or key)
        attrs = {"data-chart": key}
        if spec.get("kind") == "bar":
            return bar_chart_svg(
                [_fmt(v) if not isinstance(v, str) else v for v in xs],
                {y: [r[cols.index(y)] for r in rows] for y in ys},
                title=title,
                y_label=ys[0] if len(ys) == 1 else "",
                attrs=attrs,
            )
        series = [LineSeries(y, xs, [r[cols.index(y)] for r in rows]) for y in ys]
        return line_chart_svg(
            series, title=title, x_label=str(x), y_label=ys[0] if len(ys) == 1 else "", attrs=attrs
        )

    def media(self, payload: Mapping[str, Any], used: set[str] | None = None) -> str:
        entries = payload.get("media")
        if not isinstance(entries, list):
            return ""
        entries = [m for m in entries if isinstance(m, Mapping) and m.get("path") not in (used or set())]
        if not entries:
            return ""
        return '<h4>Media</h4><div class="gallery">' + "".join(self.figure(m) for m in entries) + "</div>"

    def figure(self, m: Mapping[str, Any]) -> str:
        path = self.run.root / str(m.get("path", ""))
        caption = str(m.get("caption") or "")
        key = str(m.get("key") or "")
        w, h = _int(m.get("width")), _int(m.get("height"))
        scale = min(4, math.ceil(160 / w)) if 0 < w < 160 else 1  # tiny renders are unreadable at 1:1
        uri, reason = self.budget.file(path)
        if uri is None:
            body = f'<div class="missing">image not embedded: {_e(reason)} ({_e(m.get("path"))})</div>'
        else:
            size = f' width="{w * scale}" height="{h * scale}"' if w and h else ""
            cls = ' class="small"' if scale > 1 else ""
            boxes = self.boxes(m.get("boxes"), w, h) if w and h else ""
            body = (
                f'<div class="imgwrap"><img src="{uri}" alt="{_e(caption or key)}"{size}{cls}>{boxes}</div>'
                + self.masks(path, m, w, h, scale)
            )
        label = f"<b>{_e(key)}</b>" + (f": {_e(caption)}" if caption else "")
        # a long caption must wrap under the image instead of stretching the figure
        style = f' style="max-width:{max(w * scale, 240)}px"' if w else ""
        return f'<figure class="media" data-key="{_e(key)}">{body}<figcaption{style}>{label}</figcaption></figure>'

    def boxes(self, boxes: Any, w: int, h: int) -> str:
        if not isinstance(boxes, list) or not boxes:
            return ""
        out = [f'<svg class="boxes" viewBox="0 0 {w} {h}" preserveAspectRatio="none">']
        for i, b in enumerate(boxes):
            if not isinstance(b, Mapping) or any(_num(b.get(k)) is None for k in ("x0", "y0", "x1", "y1")):
                continue
            x0, y0, x1, y1 = (float(b[k]) for k in ("x0", "y0", "x1", "y1"))
            label = str(b.get("label", "region"))
            score = f" ({_fmt(b['score'])})" if _num(b.get("score")) is not None else ""
            colour = TAB10[i % len(TAB10)]
            out.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" fill="none" '
                f'stroke="{colour}" stroke-width="2" vector-effect="non-scaling-stroke">'
                f"<title>{_e(label)}{_e(score)}</title></rect>"
            )
        out.append("</svg>")
        return "".join(out)

    def masks(self, image_path: Path, m: Mapping[str, Any], w: int, h: int, scale: int) -> str:
        masks = m.get("masks")
        if not isinstance(masks, Mapping) or not masks:
            return ""
        labels = m.get("mask_labels") if isinstance(m.get("mask_labels"), Mapping) else {}
        out = ['<div class="masks">']
        for name, rel in masks.items():
            data = _mask_overlay_png(image_path, self.run.root / str(rel))
            if data is None:
                out.append(f'<div class="missing">mask {_e(name)}: unreadable ({_e(rel)})</div>')
                continue
            uri, reason = self.budget.png(data, f"mask {name}")
            if uri is None:
                out.append(f'<div class="missing">mask {_e(name)} not embedded: {_e(reason)}</div>')
                continue
            size = f' width="{w * scale}" height="{h * scale}"' if w and h else ""
            cls = ' class="small"' if scale > 1 else ""
            named = [f"{k}: {v}" for k, v in labels.items() if str(k) != "0" and str(v) != str(k)]
            legend = f" ({_e(', '.join(named))})" if named else ""
            out.append(
                f'<figure data-mask="{_e(name)}"><div class="imgwrap"><img src="{uri}" alt="mask {_e(name)}"{size}{cls}>'
                f"</div><figcaption>mask {_e(name)}{legend}</figcaption></figure>"
            )
        out.append("</div>")
        return "".join(out)

    def tables(self, payload: Mapping[str, Any]) -> str:
        tables = payload.get("tables")
        if not isinstance(tables, Mapping) or not tables:
            return ""
        return (
            '<h4>Tables</h4><div class="tables">'
            + "".join(self.table(str(k), t) for k, t in tables.items())
            + "</div>"
        )

    def table(self, key: str, table: Any) -> str:
        if not isinstance(table, Mapping) or not isinstance(table.get("columns"), list):
            return f'<div class="missing">table {_e(key)}: unreadable</div>'
        cols = table["columns"]
        rows = [r for r in table.get("rows") or [] if isinstance(r, list)]
        shown = rows[:MAX_TABLE_ROWS]
        note = (
            f'<p class="muted">showing the first {len(shown)} of {len(rows)} rows</p>'
            if len(rows) > len(shown)
            else ""
        )
        body = _html_table(cols, shown, attrs={"data-table": key, "data-rows": str(len(rows))})
        open_ = " open" if len(rows) <= 12 else ""
        return (
            f'<details class="table-block"{open_}><summary>table <b>{_e(key)}</b> '
            f'<span class="muted">{len(rows)} rows × {len(cols)} columns</span></summary>'
            f'<div class="scroll">{body}</div>{note}</details>'
        )

    def texts(self, payload: Mapping[str, Any]) -> str:
        texts = payload.get("text")
        if not isinstance(texts, Mapping) or not texts:
            return ""
        return "".join(
            f'<details class="text-block"><summary>text <b>{_e(k)}</b></summary><pre>{_e(v)}</pre></details>'
            for k, v in texts.items()
        )

    def raw(self, payload: Mapping[str, Any]) -> str:
        rest = {k: v for k, v in payload.items() if k not in RESERVED_PAYLOAD_KEYS}
        if not rest:
            return ""
        text = json.dumps(rest, indent=1, ensure_ascii=False, allow_nan=True, default=str)
        if len(text) > MAX_RAW_CHARS:
            text = (
                text[:MAX_RAW_CHARS] + f"\n... ({len(text) - MAX_RAW_CHARS} more characters in records.jsonl)"
            )
        return f'<details class="raw"><summary>payload (JSON)</summary><pre>{_e(text)}</pre></details>'

    # -- errors and alerts --------------------------------------------------------------------------------
    def error_view(self, rec: Record) -> str:
        p = rec.payload
        etype = p.get("qualified_type") or p.get("type") or "error"
        tb = str(p.get("traceback") or "")
        return (
            f'<div class="view" data-view="error"><p><b>{_e(p.get("type") or "Error")}</b>: '
            f'{_e(p.get("message") or "")}</p><p class="muted">{_e(etype)}</p>'
            + (f'<p class="hint">{_e(p["hint"])}</p>' if p.get("hint") else "")
            + (f"<details open><summary>traceback</summary><pre>{_e(tb)}</pre></details>" if tb else "")
            + "</div>"
        )

    def alert_view(self, rec: Record) -> str:
        p = rec.payload
        facts = [
            (k, p.get(k))
            for k in ("source", "kind", "key", "label", "against", "base_epoch", "value", "threshold")
        ]
        cells = "".join(
            f"<div><dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd></div>" for k, v in facts if v is not None
        )
        change = ""
        if "before" in p or "after" in p:
            change = (
                f'<div class="cols"><div><h4>before</h4><pre>{_e(_pretty(p.get("before")))}</pre></div>'
                f"<div><h4>after</h4><pre>{_e(_pretty(p.get('after')))}</pre></div></div>"
            )
        return (
            f'<div class="view" data-view="alert"><p><b>⚠ {_e(p.get("message") or _alert_text(p))}</b></p>'
            f'<dl class="kv">{cells}</dl>{change}</div>'
        )

    # -- method views -------------------------------------------------------------------------------------
    def drift_epoch_view(self, rec: Record, used: set[str]) -> str:
        rows = _drift_rows(rec)
        if not rows:
            return ""
        rows = sorted(
            rows,
            key=lambda r: (not r.get("alert"), str(r.get("source")), str(r.get("kind")), str(r.get("key"))),
        )
        n_alert = sum(bool(r.get("alert")) for r in rows)
        cols = ["source", "kind", "key", "against", "value", "threshold", "alert"]
        extra = [c for c in ("base_epoch", "label") if any(c in r for r in rows)]
        cols += extra
        body = _html_table(
            cols,
            [[r.get(c) for c in cols] for r in rows],
            attrs={"data-view": "drift-rows", "data-rows": str(len(rows))},
            row_class=["alert" if r.get("alert") else "" for r in rows],
        )
        ref = rec.payload.get("reference_epoch")
        return (
            f'<div class="view" data-view="drift"><p>{len(rows)} drift values'
            + (f" (reference epoch {_e(ref)})" if ref is not None else "")
            + (
                f', <span class="badge alert">{n_alert} over threshold</span>'
                if n_alert
                else ', <span class="badge ok">none over threshold</span>'
            )
            + f'</p><div class="scroll">{body}</div></div>'
        )

    def representation_drift_view(self, rec: Record, used: set[str]) -> str:
        p = rec.payload
        prev, ref = p.get("cka_prev"), p.get("cka_ref")
        if not isinstance(prev, Mapping) and not isinstance(ref, Mapping):
            return ""
        prev, ref = prev or {}, ref or {}
        dims = p.get("representations") if isinstance(p.get("representations"), Mapping) else {}
        reps = list(dict.fromkeys([*prev, *ref]))
        rows = [[r, dims.get(r), prev.get(r), ref.get(r)] for r in reps]
        table = _html_table(
            [
                "representation",
                "features",
                f"CKA vs previous (epoch {_fmt(p.get('previous_epoch'))})",
                f"CKA vs reference (epoch {_fmt(p.get('reference_epoch'))})",
            ],
            rows,
            attrs={"data-view": "cka"},
        )
        return f'<div class="view" data-view="cka"><h4>Linear CKA (1 = unchanged)</h4>{table}</div>'

    def logic_rules_view(self, rec: Record, used: set[str]) -> str:
        p = rec.payload
        out = ['<div class="view" data-view="rules">']
        rules = p.get("global_rules")
        if isinstance(rules, list) and rules:
            out.append('<h4>Class rules</h4><ol class="rules">')
            out += [f"<li><code>{_e(r)}</code></li>" for r in rules]
            out.append("</ol>")
        ev = p.get("evaluation")
        scoring = p.get("scoring")
        if isinstance(ev, Mapping) and isinstance(ev.get(scoring), Mapping):
            e = ev[scoring]
            out.append(
                f"<p>Rules agree with the model on <b>{_fmt(e.get('fidelity'))}</b> of held-out images "
                f"(scoring {_e(scoring)}; accuracy {_fmt(e.get('accuracy'))}, model accuracy "
                f"{_fmt(e.get('model_accuracy'))}, coverage {_fmt(e.get('coverage'))}).</p>"
            )
        g = p.get("grounding")
        if isinstance(g, Mapping) and "guided_success" in g:
            out.append(
                f"<p>Grounding of predicates to image regions: guided success <b>{_fmt(g.get('guided_success'))}</b> "
                f"vs random {_fmt(g.get('random_success'))} ({_fmt(g.get('n_tests'))} tests).</p>"
            )
        local = p.get("local_rules")
        if isinstance(local, list) and local:
            items = "".join(
                f"<li><code>{_e(r.get('rule', r) if isinstance(r, Mapping) else r)}</code>"
                + (
                    f' <span class="muted">image {_e(r.get("id"))}</span>'
                    if isinstance(r, Mapping) and "id" in r
                    else ""
                )
                + "</li>"
                for r in local[:40]
            )
            more = (
                f'<li class="muted">… {len(local) - 40} more in the table local_rules</li>'
                if len(local) > 40
                else ""
            )
            out.append(
                f'<details><summary>Per-image rules ({len(local)})</summary><ul class="rules">{items}{more}</ul></details>'
            )
        out.append("</div>")
        return "".join(out) if len(out) > 2 else ""

    def symbolic_tree_view(self, rec: Record, used: set[str]) -> str:
        p = rec.payload
        out = ['<div class="view" data-view="tree">']
        fid = p.get("fidelity")
        if isinstance(fid, Mapping):
            out.append(
                f"<p>Symbolic surrogate agrees with the model on <b>{_fmt(fid.get('accuracy'))}</b> of held-out "
                f"samples (macro F1 {_fmt(fid.get('macro_f1'))}); layer {_e(p.get('layer', '?'))}, "
                f"symbols per level {_e(_fmt(p.get('levels')))}.</p>"
            )
        rules = p.get("rules")
        if isinstance(rules, list) and rules:
            out.append('<h4>Rules</h4><ul class="rules">')
            for r in rules:
                text = r.get("text") if isinstance(r, Mapping) else r
                out.append(f"<li><code>{_e(text)}</code></li>")
            out.append("</ul>")
        trees = p.get("class_trees")
        if isinstance(trees, Mapping) and trees:
            out.append("<h4>Class trees</h4>")
            for cls, tree in trees.items():
                counter = [0]
                out.append(
                    f'<div class="tree" data-class="{_e(cls)}"><ul class="tree root">{_tree_html(tree, counter)}</ul></div>'
                )
        out.append("</div>")
        return "".join(out) if len(out) > 2 else ""

    def concept_attribution_view(self, rec: Record, used: set[str]) -> str:
        scores = rec.payload.get("scores")
        if not isinstance(scores, list) or not scores:
            return ""
        heading = "TCAV scores (share of class inputs whose logit rises along the concept; * significant; dashed: 0.5)"
        out = [f'<div class="view" data-view="tcav"><h4>{heading}</h4><div class="charts">']
        layers = list(dict.fromkeys(str(s.get("layer")) for s in scores if isinstance(s, Mapping)))
        for layer in layers:
            rows = [s for s in scores if isinstance(s, Mapping) and str(s.get("layer")) == layer]
            classes = list(dict.fromkeys(str(s.get("class")) for s in rows))
            concepts = list(dict.fromkeys(str(s.get("concept")) for s in rows))
            cell = {(str(s.get("class")), str(s.get("concept"))): s for s in rows}
            values = {c: [cell.get((k, c), {}).get("tcav") for k in classes] for c in concepts}
            notes = {
                c: ["*" if cell.get((k, c), {}).get("significant") else "" for k in classes] for c in concepts
            }
            out.append(
                bar_chart_svg(
                    classes,
                    values,
                    title=f"TCAV at {layer}",
                    y_label="TCAV score",
                    reference=0.5,
                    annotations=notes,
                    attrs={"data-plot": "tcav", "data-layer": layer},
                )
            )
        out.append("</div></div>")
        return "".join(out)

    def concept_permutation_view(self, rec: Record, used: set[str]) -> str:
        p = rec.payload
        imp = p.get("importance")
        if not isinstance(imp, list) or not imp:
            return ""
        rows = sorted((r for r in imp if isinstance(r, Mapping)), key=lambda r: _num(r.get("rank")) or 0)
        svg = bar_chart_svg(
            [r.get("concept") for r in rows],
            {"importance": [r.get("importance") for r in rows]},
            intervals={"importance": [(r.get("ci_low"), r.get("ci_high")) for r in rows]},
            title=f"Drop in {p.get('metric', 'performance')} when a concept is permuted (95% interval)",
            y_label=f"{p.get('metric', 'metric')} drop",
            reference=0.0,
            attrs={"data-plot": "importance"},
        )
        tau = p.get("kendall_tau_prev")
        extra = (
            f"<p>Ranking vs epoch {_e(p.get('previous_epoch'))}: Kendall tau <b>{_fmt(tau)}</b></p>"
            if tau is not None
            else ""
        )
        base = f"<p>Base {_e(p.get('metric', 'metric'))}: {_fmt(p.get('base'))} on {_fmt(p.get('n_rows'))} rows.</p>"
        return f'<div class="view" data-view="importance">{base}<div class="charts">{svg}</div>{extra}</div>'

    def diffusion_explainer_view(self, rec: Record, used: set[str]) -> str:
        p = rec.payload
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            return ""
        media = [m for m in p.get("media") or [] if isinstance(m, Mapping)]
        out = [
            '<div class="view" data-view="generated"><h4>Optimised prompts and their generated images</h4>'
        ]
        for t in targets:
            if not isinstance(t, Mapping):
                continue
            label = str(t.get("label") or t.get("target") or "target")
            readout = t.get("readout") if isinstance(t.get("readout"), Mapping) else {}
            bias = t.get("bias") if isinstance(t.get("bias"), Mapping) else {}
            flagged = [str(f) for f in bias.get("flagged") or []]
            badges = "".join(f' <span class="badge alert">suspected bias: {_e(f)}</span>' for f in flagged)
            mine = [m for m in media if str(m.get("caption", "")).startswith(f"{label}:")]
            used.update(str(m.get("path")) for m in mine)
            out.append(
                f'<div class="target" data-target="{_e(label)}"><div><b>{_e(label)}</b>{badges}</div>'
                f'<div class="caption">“{_e(readout.get("caption", ""))}”</div>'
                f'<div class="muted">mean class probability {_fmt(t.get("mean_probability"))}, share predicted '
                f"{_fmt(t.get('share_predicted'))}, objective {_fmt(t.get('initial_objective'))} → "
                f"{_fmt(t.get('final_objective'))} in {_fmt(t.get('steps'))} steps</div>"
                + ('<div class="gallery">' + "".join(self.figure(m) for m in mine) + "</div>" if mine else "")
                + "</div>"
            )
        out.append("</div>")
        return "".join(out)

    # -- overviews across epochs --------------------------------------------------------------------------
    def overview(self, method: str, epochs: Mapping[int, list[Record]]) -> str:
        if method == "representation_drift":
            return self.cka_overview(epochs)
        if method == "drift":
            return self.drift_overview(epochs)
        return ""

    def cka_overview(self, epochs: Mapping[int, list[Record]]) -> str:
        points: dict[str, dict[int, Any]] = {}
        for epoch, recs in epochs.items():
            for rec in recs:
                for against, key in (("vs previous", "cka_prev"), ("vs reference", "cka_ref")):
                    values = rec.payload.get(key)
                    if isinstance(values, Mapping):
                        for rep, v in values.items():
                            points.setdefault(f"{against} · {rep}", {})[epoch] = v
        if not points:
            return ""
        xs = sorted({e for p in points.values() for e in p})
        series = [LineSeries(name, xs, [p.get(e) for e in xs]) for name, p in points.items()]
        svg = line_chart_svg(
            series,
            title="Linear CKA over epochs (1 = representation unchanged)",
            x_label="epoch",
            y_label="CKA",
            y_include=(1.0,),
            width=640,
            attrs={"data-plot": "cka-timeline"},
        )
        return f'<div class="overview"><h3>CKA timeline</h3><div class="charts">{svg}</div></div>'

    def drift_overview(self, epochs: Mapping[int, list[Record]]) -> str:
        series: dict[tuple[str, str, str, str], dict[int, dict[str, Any]]] = {}
        for epoch, recs in epochs.items():
            for rec in recs:
                if rec.name == "alert":
                    p = rec.payload
                    tag = tuple(str(p.get(k)) for k in ("source", "kind", "key", "against"))
                    point = series.setdefault(tag, {}).setdefault(epoch, {})
                    point.setdefault("value", p.get("value"))
                    point.setdefault("threshold", p.get("threshold"))
                    point["alert"] = True
                    continue
                for row in _drift_rows(rec):
                    tag = tuple(str(row.get(k)) for k in ("source", "kind", "key", "against"))
                    point = series.setdefault(tag, {}).setdefault(epoch, {})
                    point["value"] = row.get("value")
                    point["threshold"] = row.get("threshold")
                    point["alert"] = bool(point.get("alert")) or bool(row.get("alert"))
        if not series:
            return ""
        by_source: dict[str, list[tuple]] = {}
        for tag in series:
            by_source.setdefault(tag[0], []).append(tag)
        out = [
            f'<div class="overview"><h3>Drift timelines ({len(series)} series; dashed: threshold, red rings: alerts)</h3>'
        ]
        for source, tags in sorted(by_source.items()):
            tags.sort(key=lambda t: (not any(p.get("alert") for p in series[t].values()), t))
            n_alert = sum(any(p.get("alert") for p in series[t].values()) for t in tags)
            badge = f' <span class="badge alert">{n_alert} alerted</span>' if n_alert else ""
            out.append(
                f'<details open data-source="{_e(source)}"><summary><b>{_e(source)}</b> · {len(tags)} series{badge}</summary><div class="grid">'
            )
            for tag in tags:
                pts = series[tag]
                xs = sorted(pts)
                lines = [
                    LineSeries(
                        f"{tag[1]} vs {tag[3]}",
                        xs,
                        [pts[e].get("value") for e in xs],
                        marks=[bool(pts[e].get("alert")) for e in xs],
                    )
                ]
                if any(_num(pts[e].get("threshold")) is not None for e in xs):
                    lines.append(
                        LineSeries("threshold", xs, [pts[e].get("threshold") for e in xs], dashed=True)
                    )
                alerted = any(pts[e].get("alert") for e in xs)
                svg = line_chart_svg(
                    lines,
                    title=f"{tag[1]} · {tag[2]} · vs {tag[3]}",
                    x_label="epoch",
                    y_label=tag[1],
                    y_include=(0.0,),
                    width=380,
                    height=230,
                    attrs={"data-plot": "drift-timeline", "data-series": "|".join(tag)},
                )
                out.append(f'<div class="timeline{" alerted" if alerted else ""}">{svg}</div>')
            out.append("</div></details>")
        out.append("</div>")
        return "".join(out)


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=1, ensure_ascii=False, allow_nan=True, default=str)


def _tree_html(node: Any, counter: list[int], depth: int = 0) -> str:
    """A nested list for a ``{"name", "tokens", "edge", "children"}`` tree (bounded in size)."""
    if not isinstance(node, Mapping) or counter[0] > 400 or depth > 12:
        return ""
    counter[0] += 1
    facts = []
    if node.get("tokens") is not None:
        facts.append(f"{_fmt(node.get('tokens'))} tokens")
    if _num(node.get("edge")) is not None:
        facts.append(f"edge {_fmt(node.get('edge'))}")
    if node.get("routed"):
        facts.append("routed")
    kids = [c for c in node.get("children") or [] if isinstance(c, Mapping)]
    inner = "".join(_tree_html(c, counter, depth + 1) for c in kids)
    fact = f' <span class="muted">{_e(", ".join(facts))}</span>' if facts else ""
    return (
        f"<li><code>{_e(node.get('name', '?'))}</code>{fact}"
        + (f'<ul class="tree">{inner}</ul>' if inner else "")
        + "</li>"
    )


def _html_table(
    columns: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    attrs: Mapping[str, str] | None = None,
    row_class: Sequence[str] | None = None,
) -> str:
    extra = "".join(f' {k}="{_e(v)}"' for k, v in (attrs or {}).items())
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = row_class[i] if row_class and i < len(row_class) and row_class[i] else ""
        cells = "".join(
            f'<td class="num">{_e(_fmt(v))}</td>' if _is_number(v) else f"<td>{_e(_fmt(v))}</td>" for v in row
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table{extra}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_METHOD_VIEWS = {
    "representation_drift": _Renderer.representation_drift_view,
    "logic_rules": _Renderer.logic_rules_view,
    "symbolic_tree": _Renderer.symbolic_tree_view,
    "concept_attribution": _Renderer.concept_attribution_view,
    "concept_permutation": _Renderer.concept_permutation_view,
    "diffusion_explainer": _Renderer.diffusion_explainer_view,
    "drift": _Renderer.drift_epoch_view,
}


# ----------------------------------------------------------------------------------------------------------
# Page parts shared by report and compare
# ----------------------------------------------------------------------------------------------------------
def _epoch_id(method: str, epoch: int) -> str:
    return f"epoch-{_slug(method)}-{epoch}"


def _method_heading(method: str, n_records: int, epochs: Sequence[int], n_err: int, n_alert: int) -> str:
    title = METHOD_TITLES.get(method, method)
    badges = (f' <span class="badge error">{_plural(n_err, "error")}</span>' if n_err else "") + (
        f' <span class="badge alert">{_plural(n_alert, "alert")}</span>' if n_alert else ""
    )
    span = (
        f"epochs {epochs[0]}–{epochs[-1]}"
        if len(epochs) > 1
        else f"epoch {epochs[0]}"
        if epochs
        else "no epochs"
    )
    return (
        f'<h2>{_e(title)} <span class="muted">{_e(method)}</span>{badges}</h2>'
        f'<p class="muted">{_plural(n_records, "record")} · {span}</p>'
    )


def _epoch_nav(method: str, epochs: Sequence[int], alert_epochs: set[int], error_epochs: set[int]) -> str:
    links = []
    for ep in epochs:
        cls = " ".join(
            c for c, on in (("has-alert", ep in alert_epochs), ("has-error", ep in error_epochs)) if on
        )
        mark = (" ⚠" if ep in alert_epochs else "") + (" ✖" if ep in error_epochs else "")
        links.append(
            f'<a href="#{_epoch_id(method, ep)}" data-epoch="{ep}"'
            + (f' class="{cls}"' if cls else "")
            + f">epoch {ep}{mark}</a>"
        )
    links.append(f'<a href="#method-{_slug(method)}" data-epoch="all">all epochs</a>')
    return f'<nav class="epoch-nav" aria-label="epochs of {_e(method)}">{"".join(links)}</nav>'


def _alert_box(run: RunRecords, alerts: Sequence[_Alert], box_id: str) -> str:
    if not alerts:
        return ""
    items = "".join(
        f'<li><a href="#{_epoch_id(a.method, a.epoch)}">epoch {a.epoch} · {_e(a.method)}</a>: {_e(a.message)}</li>'
        for a in alerts[:200]
    )
    more = f"<li>… {len(alerts) - 200} more in the drift section</li>" if len(alerts) > 200 else ""
    return (
        f'<div class="alert-box" id="{box_id}" role="alert"><h2>⚠ {len(alerts)} alert'
        f"{'s' if len(alerts) != 1 else ''} in {_e(run.label)}</h2><ul>{items}{more}</ul></div>"
    )


def _error_box(run: RunRecords, box_id: str) -> str:
    errors = run.errors
    if not errors:
        return ""
    items = "".join(
        f'<li><a href="#{_epoch_id(r.method, r.epoch)}">epoch {r.epoch} · {_e(r.method)}</a>: '
        f"<b>{_e(r.payload.get('type', 'Error'))}</b>: {_e(_short(str(r.payload.get('message', '')), 300))}</li>"
        for r in errors
    )
    return (
        f'<div class="error-box" id="{box_id}" role="alert"><h2>✖ {len(errors)} explainer error'
        f"{'s' if len(errors) != 1 else ''} in {_e(run.label)}</h2><ul>{items}</ul></div>"
    )


def _inline_alerts(run: RunRecords, alerts: Sequence[_Alert]) -> dict[tuple[str, int], list[_Alert]]:
    """Alerts to repeat at the epoch of the method whose explanation drifted (the drift section has them all)."""
    present = set(run.methods)
    out: dict[tuple[str, int], list[_Alert]] = {}
    for a in alerts:
        source = _source_method(a.source)
        if source in present and source != a.method:
            out.setdefault((source, a.epoch), []).append(a)
    return out


def _source_method(source: Any) -> str | None:
    """The method of a drift source: ``"logic_rules#2"`` (a second callback of a method) is ``logic_rules``."""
    return source.split("#", 1)[0] if isinstance(source, str) else None


def _header_meta(run: RunRecords, alerts: Sequence[_Alert]) -> str:
    epochs = run.epochs
    span = (
        f"{epochs[0]}–{epochs[-1]} ({len(epochs)} epoch{'s' if len(epochs) != 1 else ''}: "
        f"{', '.join(map(str, epochs[:40]))}{' …' if len(epochs) > 40 else ''})"
        if epochs
        else "none"
    )
    methods = (
        " ".join(f'<a class="badge" href="#method-{_slug(m)}">{_e(m)}</a>' for m in run.methods) or "none"
    )
    n_err, n_alert = len(run.errors), len(alerts)
    skipped = (
        f"<dt>skipped</dt><dd>{run.skipped_lines} unreadable line(s) of records.jsonl</dd>"
        if run.skipped_lines
        else ""
    )
    return (
        f'<dl class="meta" data-run-dir="{_e(run.run_dir)}"><dt>run</dt><dd><code>{_e(run.run_dir)}</code></dd>'
        f"<dt>records</dt><dd>{len(run.records)} in <code>{_e(run.records_path)}</code></dd>"
        f"<dt>epochs</dt><dd>{_e(span)}</dd><dt>methods</dt><dd>{methods}</dd>"
        f'<dt>errors</dt><dd><span class="badge {"error" if n_err else "ok"}" data-count="errors">{n_err}</span></dd>'
        f'<dt>alerts</dt><dd><span class="badge {"alert" if n_alert else "ok"}" data-count="alerts">{n_alert}</span></dd>'
        f"{skipped}</dl>"
    )


def _toc(methods: Sequence[str]) -> str:
    links = "".join(f'<a href="#method-{_slug(m)}">{_e(METHOD_TITLES.get(m, m))}</a>' for m in methods)
    return f'<nav id="toc" aria-label="methods"><a href="#top">↑ top</a>{links}</nav>'


def _generated() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _budget_note(budget: _MediaBudget) -> str:
    if not budget.skipped:
        return ""
    items = "".join(f"<li>{_e(s)}</li>" for s in budget.skipped[:50])
    return f'<details class="missing"><summary>{len(budget.skipped)} media not embedded</summary><ul>{items}</ul></details>'


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def render_report(
    run: str | os.PathLike | RunRecords,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> str:
    """The HTML of the report of one run, as a string (see the module docstring for the layout).

    Args:
        run: a run directory, ``xai`` dir or ``records.jsonl`` (see :func:`load_run`), or a loaded run.
        title: page title; default ``"lightning-xai report: <run name>"``.
        max_media_bytes: media files larger than this are not embedded (a note says so).
        max_total_media_bytes: embedding stops once this many bytes of media are in the page.

    Example:
        >>> page = render_report("runs/quickstart")  # doctest: +SKIP
        >>> 'data-section="logic_rules"' in page  # doctest: +SKIP
        True
    """
    run = run if isinstance(run, RunRecords) else load_run(run)
    budget = _MediaBudget(max_media_bytes, max_total_media_bytes)
    r = _Renderer(run, budget)
    alerts = run.alerts()
    inline = _inline_alerts(run, alerts)
    alert_epochs: dict[str, set[int]] = {}
    for a in alerts:
        alert_epochs.setdefault(a.method, set()).add(a.epoch)
        if _source_method(a.source):
            alert_epochs.setdefault(_source_method(a.source), set()).add(a.epoch)
    sections = []
    for method, epochs in run.by_method().items():
        recs = [x for rs in epochs.values() for x in rs]
        err_epochs = {x.epoch for x in recs if x.name == "error"}
        n_err = sum(1 for x in recs if x.name == "error")
        n_alert = sum(1 for a in alerts if a.method == method)
        parts = [
            f'<section id="method-{_slug(method)}" class="method" data-section="{_e(method)}">',
            _method_heading(method, len(recs), list(epochs), n_err, n_alert),
            _epoch_nav(method, list(epochs), alert_epochs.get(method, set()), err_epochs),
            r.overview(method, epochs),
        ]
        for epoch, records in epochs.items():
            notes = inline.get((method, epoch), [])
            parts.append(
                f'<article id="{_epoch_id(method, epoch)}" class="epoch" data-epoch="{epoch}" data-method="{_e(method)}">'
                f"<h3>Epoch {epoch}</h3>"
            )
            parts += [f'<div class="inline-alert">⚠ drift alert: {_e(a.message)}</div>' for a in notes]
            parts += [r.record(x) for x in records]
            parts.append("</article>")
        parts.append("</section>")
        sections.append("".join(parts))
    if not sections:
        sections.append(f'<p class="empty">{_e(run.records_path)} holds no records yet.</p>')
    title = title or f"lightning-xai report: {run.label}"
    body = (
        f'<header class="top" id="top" data-section="header"><h1>{_e(title)}</h1>{_header_meta(run, alerts)}'
        f'<p class="muted">generated {_generated()} · offline page: everything is embedded</p></header>'
        f"{_toc(run.methods)}<main>{_alert_box(run, alerts, 'alerts')}{_error_box(run, 'errors')}"
        + "".join(sections)
        + _budget_note(budget)
        + "</main>"
    )
    return _page(title, body)


def _write(out: Path, page: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a page
    return out


def build_report(
    run_dir: str | os.PathLike | RunRecords,
    out: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> Path:
    """Write the report of a run to one self-contained HTML file and return its path.

    Args:
        run_dir: the run directory (holding ``xai/records.jsonl``), an ``xai`` dir or the records file
            (or a run loaded with :func:`load_run`).
        out: the HTML file; default ``<run dir>/xai/report.html`` (next to ``records.jsonl``).
        title, max_media_bytes, max_total_media_bytes: see :func:`render_report`.

    Raises:
        RecordsNotFoundError: if the run has no ``records.jsonl``.

    Example:
        >>> build_report("runs/quickstart")  # doctest: +SKIP
        PosixPath('runs/quickstart/xai/report.html')
    """
    run = run_dir if isinstance(run_dir, RunRecords) else load_run(run_dir)
    page = render_report(
        run, title=title, max_media_bytes=max_media_bytes, max_total_media_bytes=max_total_media_bytes
    )
    return _write(Path(out) if out is not None else run.root / "report.html", page)


def _labels(a: RunRecords, b: RunRecords) -> None:
    """Make the two runs' labels distinct (``version_0`` twice says nothing)."""
    if a.label == b.label:
        a.label = f"{a.run_dir.parent.name}/{a.run_dir.name}"
        b.label = f"{b.run_dir.parent.name}/{b.run_dir.name}"
        if a.label == b.label:
            a.label, b.label = f"A: {a.label}", f"B: {b.label}"


def render_compare(
    run_a: str | os.PathLike | RunRecords,
    run_b: str | os.PathLike | RunRecords,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> str:
    """The HTML of a side-by-side comparison of two runs (per method and epoch, run A left, run B right).

    Epochs (or whole methods) present in only one run get a note in the other run's column.

    Example:
        >>> page = render_compare("runs/a", "runs/b")  # doctest: +SKIP
        >>> page.count('data-run="a"') > 0 and page.count('data-run="b"') > 0  # doctest: +SKIP
        True
    """
    a = run_a if isinstance(run_a, RunRecords) else load_run(run_a)
    b = run_b if isinstance(run_b, RunRecords) else load_run(run_b)
    _labels(a, b)
    budget = _MediaBudget(max_media_bytes, max_total_media_bytes)
    runs = (("a", a, _Renderer(a, budget)), ("b", b, _Renderer(b, budget)))
    alerts = {key: run.alerts() for key, run, _ in runs}
    grouped = {key: run.by_method() for key, run, _ in runs}
    inline = {key: _inline_alerts(run, alerts[key]) for key, run, _ in runs}

    def col(key: str, run: RunRecords, content: str) -> str:
        return f'<div class="col" data-run="{key}"><div class="col-head">{key.upper()} · {_e(run.label)}</div>{content}</div>'

    sections = []
    for method in _order_methods([*a.methods, *b.methods]):
        per = {key: grouped[key].get(method, {}) for key, _, _ in runs}
        epochs = sorted({*per["a"], *per["b"]})
        recs = {key: [x for rs in per[key].values() for x in rs] for key in per}
        alert_epochs = {
            x.epoch for key in per for x in alerts[key] if method in (x.method, _source_method(x.source))
        }
        err_epochs = {x.epoch for key in per for x in recs[key] if x.name == "error"}
        n_err = sum(1 for key in per for x in recs[key] if x.name == "error")
        n_alert = sum(1 for key in per for x in alerts[key] if x.method == method)
        parts = [
            f'<section id="method-{_slug(method)}" class="method" data-section="{_e(method)}">',
            _method_heading(method, len(recs["a"]) + len(recs["b"]), epochs, n_err, n_alert),
            _epoch_nav(method, epochs, alert_epochs, err_epochs),
        ]
        overviews = {key: r.overview(method, per[key]) for key, _, r in runs}
        if any(overviews.values()):
            parts.append(
                '<div class="cols">'
                + "".join(
                    col(key, run, overviews[key] or '<p class="empty">no overview</p>')
                    for key, run, _ in runs
                )
                + "</div>"
            )
        for epoch in epochs:
            parts.append(
                f'<article id="{_epoch_id(method, epoch)}" class="epoch" data-epoch="{epoch}" data-method="{_e(method)}">'
                f'<h3>Epoch {epoch}</h3><div class="cols">'
            )
            for key, run, r in runs:
                records = per[key].get(epoch)
                if records:
                    notes = "".join(
                        f'<div class="inline-alert">⚠ drift alert: {_e(x.message)}</div>'
                        for x in inline[key].get((method, epoch), [])
                    )
                    content = notes + "".join(r.record(x) for x in records)
                else:
                    other = "B" if key == "a" else "A"
                    where = (
                        f"{method} has no records in this run at all"
                        if not per[key]
                        else f"explained epochs of this run: {', '.join(map(str, per[key]))}"
                    )
                    content = (
                        f'<p class="only-in" data-only-in="{"b" if key == "a" else "a"}">No {_e(method)} records at '
                        f"epoch {epoch} in run {key.upper()}; only run {other} has this epoch ({_e(where)}).</p>"
                    )
                parts.append(col(key, run, content))
            parts.append("</div></article>")
        parts.append("</section>")
        sections.append("".join(parts))
    if not sections:
        sections.append('<p class="empty">Neither run holds records yet.</p>')
    title = title or f"lightning-xai compare: {a.label} vs {b.label}"
    meta = "".join(
        f'<div data-run="{key}"><h2>{key.upper()} · {_e(run.label)}</h2>{_header_meta(run, alerts[key])}</div>'
        for key, run, _ in runs
    )
    boxes = "".join(
        col(
            key,
            run,
            (_alert_box(run, alerts[key], f"alerts-{key}") + _error_box(run, f"errors-{key}"))
            or '<p class="empty">no alerts, no errors</p>',
        )
        for key, run, _ in runs
    )
    body = (
        f'<header class="top" id="top" data-section="header"><h1>{_e(title)}</h1><div class="cols-meta">{meta}</div>'
        f'<p class="muted">generated {_generated()} · offline page: everything is embedded</p></header>'
        f'{_toc(_order_methods([*a.methods, *b.methods]))}<main><div class="cols">{boxes}</div>'
        + "".join(sections)
        + _budget_note(budget)
        + "</main>"
    )
    return _page(title, body)


def compare(
    run_a: str | os.PathLike,
    run_b: str | os.PathLike,
    out: str | os.PathLike,
    *,
    title: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_MEDIA_BYTES,
    max_total_media_bytes: int = DEFAULT_MAX_TOTAL_MEDIA_BYTES,
) -> Path:
    """Write a side-by-side comparison of two runs to one self-contained HTML file; returns its path.

    Args:
        run_a, run_b: run directories (or ``xai`` dirs / records files); A is shown left, B right.
        out: the HTML file to write.
        title, max_media_bytes, max_total_media_bytes: see :func:`render_report`.

    Raises:
        RecordsNotFoundError: if either run has no ``records.jsonl``.

    Example:
        >>> compare("runs/seed0", "runs/seed1", "compare.html")  # doctest: +SKIP
        PosixPath('compare.html')
    """
    page = render_compare(
        load_run(run_a),
        load_run(run_b),
        title=title,
        max_media_bytes=max_media_bytes,
        max_total_media_bytes=max_total_media_bytes,
    )
    return _write(Path(out), page)
