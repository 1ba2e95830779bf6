"""The report's view of representation_drift records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _fmt, _html_table
from lightning_xai.report.load import typed
from lightning_xai.report.svg import LineSeries, line_chart_svg
from lightning_xai.results.representation_drift import RepresentationDriftResult


def view(ren: Any, rec: Record, result: RepresentationDriftResult, used: set[str]) -> str:
    prev, ref = result.cka_prev, result.cka_ref
    reps = list(dict.fromkeys([*prev, *ref]))
    if not reps:
        return ""
    rows = [[r, result.representations.get(r), prev.get(r), ref.get(r)] for r in reps]
    table = _html_table(
        [
            "representation",
            "features",
            f"CKA vs previous (epoch {_fmt(result.previous_epoch)})",
            f"CKA vs reference (epoch {_fmt(result.reference_epoch)})",
        ],
        rows,
        attrs={"data-view": "cka"},
    )
    return f'<div class="view" data-view="cka"><h4>Linear CKA (1 = unchanged)</h4>{table}</div>'


def overview(ren: Any, epochs: Mapping[int, list[Record]]) -> str:
    points: dict[str, dict[int, Any]] = {}
    for epoch, recs in epochs.items():
        for rec in recs:
            result, _ = typed(rec)
            if not isinstance(result, RepresentationDriftResult):
                continue
            for against, values in (("vs previous", result.cka_prev), ("vs reference", result.cka_ref)):
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
