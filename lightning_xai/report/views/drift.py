"""The report's view of drift records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _html_table, _num
from lightning_xai.report.load import typed
from lightning_xai.report.svg import LineSeries, line_chart_svg
from lightning_xai.results.drift import DriftAlert, DriftResult


def view(ren: Any, rec: Record, result: DriftResult, used: set[str]) -> str:
    if not result.rows:
        return ""
    rows = sorted(result.rows, key=lambda r: (not r.alert, str(r.source), str(r.kind), str(r.key)))
    n_alert = sum(r.alert for r in rows)
    cols = ["source", "kind", "key", "against", "value", "threshold", "alert", "base_epoch"]
    body = _html_table(
        cols,
        [[getattr(r, c) for c in cols] for r in rows],
        attrs={"data-view": "drift-rows", "data-rows": str(len(rows))},
        row_class=["alert" if r.alert else "" for r in rows],
    )
    ref = result.reference_epoch
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


def overview(ren: Any, epochs: Mapping[int, list[Record]]) -> str:
    series: dict[tuple[str, str, str, str], dict[int, dict[str, Any]]] = {}
    for epoch, recs in epochs.items():
        for rec in recs:
            result, _ = typed(rec)
            if isinstance(result, DriftAlert):
                tag = tuple(str(v) for v in (result.source, result.kind, result.key, result.against))
                point = series.setdefault(tag, {}).setdefault(epoch, {})
                point.setdefault("value", result.value)
                point.setdefault("threshold", result.threshold)
                point["alert"] = True
                continue
            for row in result.rows if isinstance(result, DriftResult) else []:
                tag = (str(row.source), str(row.kind), str(row.key), str(row.against))
                point = series.setdefault(tag, {}).setdefault(epoch, {})
                point["value"] = row.value
                point["threshold"] = row.threshold
                point["alert"] = bool(point.get("alert")) or row.alert
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
                lines.append(LineSeries("threshold", xs, [pts[e].get("threshold") for e in xs], dashed=True))
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
