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
from lightning_xai.report.load import RunRecords, _alert_text
from lightning_xai.report.media import _mask_overlay_png, _MediaBudget
from lightning_xai.report.svg import LineSeries, bar_chart_svg, line_chart_svg
from lightning_xai.report.views import view_module

MAX_TABLE_ROWS = 200
MAX_RAW_CHARS = 20_000


class _Renderer:
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
        if rec.name == "error":
            parts.append(self.error_view(rec))
            parts.append("</div>")
            return "".join(parts)
        used: set[str] = set()
        views = view_module(rec.method)
        view = getattr(views, "view", None)
        if rec.name == "alert":
            parts.append(self.alert_view(rec))
        elif view is not None:
            parts.append(view(self, rec, None, used))
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

    def overview(self, method: str, epochs: Mapping[int, list[Record]]) -> str:
        overview = getattr(view_module(method), "overview", None)
        return overview(self, epochs) if overview is not None else ""

