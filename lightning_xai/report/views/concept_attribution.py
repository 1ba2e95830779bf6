"""The report's view of concept_attribution records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.svg import bar_chart_svg


def view(ren: Any, rec: Record, result: Any, used: set[str]) -> str:
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


