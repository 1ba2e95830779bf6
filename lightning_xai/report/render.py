"""The card of one record: the method's own view, then what every record may hold (scalars, charts, media,
tables, text, the raw payload)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning_xai.colours import TAB10
from lightning_xai.records import RESERVED_PAYLOAD_KEYS, Record
from lightning_xai.report.html import _e, _fmt, _html_table, _int, _num, _pretty
from lightning_xai.report.load import RunRecords, typed
from lightning_xai.report.media import _mask_overlay_png, _MediaBudget
from lightning_xai.report.svg import LineSeries, bar_chart_svg, line_chart_svg
from lightning_xai.report.views import view_module
from lightning_xai.results.drift import DriftAlert
from lightning_xai.results.errors import ExplainerError
from lightning_xai.results.stored import StoredChart, StoredMedia, StoredOutputs, StoredTable
from lightning_xai.results.untyped import UntypedResult

MAX_TABLE_ROWS = 200
MAX_RAW_CHARS = 20_000


class _Renderer:
    """Renders the record cards of one run; ``budget`` may be shared by the two runs of a comparison."""

    def __init__(self, run: RunRecords, budget: _MediaBudget) -> None:
        self.run = run
        self.budget = budget

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
        result, problem = typed(rec)
        stored = StoredOutputs.from_payload(rec.payload)
        if problem is not None:
            parts.append(f'<div class="missing" data-view="unreadable">{_e(problem)}</div>')
        elif isinstance(result, ExplainerError):
            parts.append(self.error_view(result))
            parts.append("</div>")
            return "".join(parts)
        used: set[str] = set()
        if isinstance(result, DriftAlert):
            parts.append(self.alert_view(result))
        elif result is not None and not isinstance(result, UntypedResult):
            view = getattr(view_module(rec.method), "view", None)
            if view is not None:
                parts.append(view(self, rec, result, used))
        if result is not None:
            parts.append(self.scalars(result.summary()))
        parts.append(self.charts(stored))
        parts.append(self.media(stored.media, used))
        parts.append(self.tables(stored))
        parts.append(self.texts(stored))
        parts.append(self.raw(rec.payload))
        parts.append("</div>")
        return "".join(parts)

    def stored_media(self, rec: Record) -> list[StoredMedia]:
        """The media stored with ``rec`` (for views that show some of them in place)."""
        return StoredOutputs.from_payload(rec.payload).media

    def scalars(self, summary: Mapping[str, Any]) -> str:
        items: list[tuple[str, Any]] = []
        for k, v in summary.items():
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

    def charts(self, stored: StoredOutputs) -> str:
        if not stored.charts:
            return ""
        out = ['<h4>Charts</h4><div class="charts">']
        out += [self.chart(key, spec, stored.tables) for key, spec in stored.charts.items()]
        out.append("</div>")
        return "".join(out)

    def chart(self, key: str, spec: StoredChart | None, tables: Mapping[str, StoredTable | None]) -> str:
        if spec is None:
            return f'<div class="missing">chart {_e(key)}: unreadable spec</div>'
        table = tables.get(spec.table) if isinstance(spec.table, str) else None
        if table is None:
            return (
                f'<div class="missing">chart {_e(key)}: its table {_e(spec.table)} is not in the record</div>'
            )
        cols = table.columns
        rows = [r for r in table.rows if len(r) == len(cols)]
        x, ys = spec.x, spec.y
        if x not in cols or not ys or any(y not in cols for y in ys):
            return f'<div class="missing">chart {_e(key)}: columns {_e(x)}/{_e(ys)} not in {_e(cols)}</div>'
        xi = cols.index(x)
        xs = [r[xi] for r in rows]
        title = spec.title or key
        attrs = {"data-chart": key}
        if spec.kind == "bar":
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

    def media(self, media: list[StoredMedia], used: set[str] | None = None) -> str:
        entries = [m for m in media if m.path not in (used or set())]
        if not entries:
            return ""
        return '<h4>Media</h4><div class="gallery">' + "".join(self.figure(m) for m in entries) + "</div>"

    def figure(self, m: StoredMedia) -> str:
        path = self.run.root / m.path
        caption = m.caption
        key = m.key
        w, h = _int(m.width), _int(m.height)
        scale = min(4, math.ceil(160 / w)) if 0 < w < 160 else 1  # tiny renders are unreadable at 1:1
        uri, reason = self.budget.file(path)
        if uri is None:
            body = f'<div class="missing">image not embedded: {_e(reason)} ({_e(m.path)})</div>'
        else:
            size = f' width="{w * scale}" height="{h * scale}"' if w and h else ""
            cls = ' class="small"' if scale > 1 else ""
            boxes = self.boxes(m.boxes, w, h) if w and h else ""
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

    def masks(self, image_path: Path, m: StoredMedia, w: int, h: int, scale: int) -> str:
        if not m.masks:
            return ""
        out = ['<div class="masks">']
        for name, rel in m.masks.items():
            data = _mask_overlay_png(image_path, self.run.root / rel)
            if data is None:
                out.append(f'<div class="missing">mask {_e(name)}: unreadable ({_e(rel)})</div>')
                continue
            uri, reason = self.budget.png(data, f"mask {name}")
            if uri is None:
                out.append(f'<div class="missing">mask {_e(name)} not embedded: {_e(reason)}</div>')
                continue
            size = f' width="{w * scale}" height="{h * scale}"' if w and h else ""
            cls = ' class="small"' if scale > 1 else ""
            named = [f"{k}: {v}" for k, v in m.mask_labels.items() if str(k) != "0" and str(v) != str(k)]
            legend = f" ({_e(', '.join(named))})" if named else ""
            out.append(
                f'<figure data-mask="{_e(name)}"><div class="imgwrap"><img src="{uri}" alt="mask {_e(name)}"{size}{cls}>'
                f"</div><figcaption>mask {_e(name)}{legend}</figcaption></figure>"
            )
        out.append("</div>")
        return "".join(out)

    def tables(self, stored: StoredOutputs) -> str:
        if not stored.tables:
            return ""
        return (
            '<h4>Tables</h4><div class="tables">'
            + "".join(self.table(k, t) for k, t in stored.tables.items())
            + "</div>"
        )

    def table(self, key: str, table: StoredTable | None) -> str:
        if table is None:
            return f'<div class="missing">table {_e(key)}: unreadable</div>'
        rows = table.rows
        shown = rows[:MAX_TABLE_ROWS]
        note = (
            f'<p class="muted">showing the first {len(shown)} of {len(rows)} rows</p>'
            if len(rows) > len(shown)
            else ""
        )
        body = _html_table(table.columns, shown, attrs={"data-table": key, "data-rows": str(len(rows))})
        open_ = " open" if len(rows) <= 12 else ""
        return (
            f'<details class="table-block"{open_}><summary>table <b>{_e(key)}</b> '
            f'<span class="muted">{len(rows)} rows × {len(table.columns)} columns</span></summary>'
            f'<div class="scroll">{body}</div>{note}</details>'
        )

    def texts(self, stored: StoredOutputs) -> str:
        return "".join(
            f'<details class="text-block"><summary>text <b>{_e(k)}</b></summary><pre>{_e(v)}</pre></details>'
            for k, v in stored.text.items()
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

    def error_view(self, err: ExplainerError) -> str:
        return (
            f'<div class="view" data-view="error"><p><b>{_e(err.type or "Error")}</b>: '
            f'{_e(err.message or "")}</p><p class="muted">{_e(err.qualified_type or err.type or "error")}</p>'
            + (f'<p class="hint">{_e(err.hint)}</p>' if err.hint else "")
            + (
                f"<details open><summary>traceback</summary><pre>{_e(err.traceback)}</pre></details>"
                if err.traceback
                else ""
            )
            + "</div>"
        )

    def alert_view(self, alert: DriftAlert) -> str:
        facts = [
            (k, getattr(alert, k))
            for k in ("source", "kind", "key", "label", "against", "base_epoch", "value", "threshold")
        ]
        cells = "".join(
            f"<div><dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd></div>" for k, v in facts if v is not None
        )
        change = ""
        if alert.before is not None or alert.after is not None:
            change = (
                f'<div class="cols"><div><h4>before</h4><pre>{_e(_pretty(alert.before))}</pre></div>'
                f"<div><h4>after</h4><pre>{_e(_pretty(alert.after))}</pre></div></div>"
            )
        return f'<div class="view" data-view="alert"><p><b>⚠ {_e(alert.text())}</b></p><dl class="kv">{cells}</dl>{change}</div>'

    def overview(self, method: str, epochs: Mapping[int, list[Record]]) -> str:
        overview = getattr(view_module(method), "overview", None)
        return overview(self, epochs) if overview is not None else ""
