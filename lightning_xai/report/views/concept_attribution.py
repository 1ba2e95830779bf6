"""The report's view of concept_attribution records: per layer, the TCAV scores of every class and concept."""

from __future__ import annotations

from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.svg import bar_chart_svg
from lightning_xai.results.concept_attribution import ConceptAttributionResult


def view(ren: Any, rec: Record, result: ConceptAttributionResult, used: set[str]) -> str:
    if not result.scores:
        return ""
    heading = (
        "TCAV scores (share of class inputs whose logit rises along the concept; * significant; dashed: 0.5)"
    )
    out = [f'<div class="view" data-view="tcav"><h4>{heading}</h4><div class="charts">']
    for layer in dict.fromkeys(s.layer for s in result.scores):
        rows = [s for s in result.scores if s.layer == layer]
        classes = list(dict.fromkeys(s.class_name for s in rows))
        concepts = list(dict.fromkeys(s.concept for s in rows))
        cell = {(s.class_name, s.concept): s for s in rows}
        values = {c: [cell[k, c].tcav if (k, c) in cell else None for k in classes] for c in concepts}
        notes = {
            c: ["*" if (k, c) in cell and cell[k, c].significant else "" for k in classes] for c in concepts
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
