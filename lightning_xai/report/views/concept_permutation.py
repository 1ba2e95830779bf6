"""The report's view of concept_permutation records: the importances with their intervals."""

from __future__ import annotations

from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt
from lightning_xai.report.svg import bar_chart_svg
from lightning_xai.results.concept_permutation import ConceptPermutationResult


def view(ren: Any, rec: Record, result: ConceptPermutationResult, used: set[str]) -> str:
    if not result.importance:
        return ""
    rows = sorted(result.importance, key=lambda r: r.rank)
    svg = bar_chart_svg(
        [r.concept for r in rows],
        {"importance": [r.importance for r in rows]},
        intervals={"importance": [(r.ci_low, r.ci_high) for r in rows]},
        title=f"Drop in {result.metric} when a concept is permuted ({round(100 * result.interval, 1):g}% interval)",
        y_label=f"{result.metric} drop",
        reference=0.0,
        attrs={"data-plot": "importance"},
    )
    # records of schema 1 also held the ranking's agreement with the previous explained epoch
    tau = result.recorded.get("kendall_tau_prev")
    extra = (
        f"<p>Ranking vs epoch {_e(result.recorded.get('previous_epoch'))}: Kendall tau <b>{_fmt(tau)}</b></p>"
        if tau is not None
        else ""
    )
    base = f"<p>Base {_e(result.metric)}: {_fmt(result.base)} on {_fmt(result.n_rows)} rows.</p>"
    return f'<div class="view" data-view="importance">{base}<div class="charts">{svg}</div>{extra}</div>'
