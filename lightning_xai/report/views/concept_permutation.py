"""The report's view of concept_permutation records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt, _num
from lightning_xai.report.svg import bar_chart_svg


def view(ren: Any, rec: Record, result: Any, used: set[str]) -> str:
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


