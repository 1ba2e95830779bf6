"""The report's view of logic_rules records: the class rules, their fidelity, grounding and per-image rules."""

from __future__ import annotations

from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt
from lightning_xai.results.logic_rules import LogicRulesResult

#: per-image rules listed before the rest is left to the table ``local_rules``
SHOWN_LOCAL_RULES = 40


def view(ren: Any, rec: Record, result: LogicRulesResult, used: set[str]) -> str:
    out = ['<div class="view" data-view="rules">']
    if result.global_rules:
        out.append('<h4>Class rules</h4><ol class="rules">')
        out += [f"<li><code>{_e(r)}</code></li>" for r in result.global_rules]
        out.append("</ol>")
    e = result.evaluation.get(result.scoring)
    if e is not None:
        out.append(
            f"<p>Rules agree with the model on <b>{_fmt(e.fidelity)}</b> of held-out images "
            f"(scoring {_e(result.scoring)}; accuracy {_fmt(e.accuracy)}, model accuracy "
            f"{_fmt(e.model_accuracy)}, coverage {_fmt(e.coverage)}).</p>"
        )
    g = result.grounding
    if g is not None:
        out.append(
            f"<p>Grounding of predicates to image regions: guided success <b>{_fmt(g.guided_success)}</b> "
            f"vs random {_fmt(g.random_success)} ({_fmt(g.n_tests)} tests).</p>"
        )
    local = result.local_rules
    if local:
        items = "".join(
            f'<li><code>{_e(r.rule)}</code> <span class="muted">image {_e(r.id)}</span></li>'
            for r in local[:SHOWN_LOCAL_RULES]
        )
        more = (
            f'<li class="muted">… {len(local) - SHOWN_LOCAL_RULES} more in the table local_rules</li>'
            if len(local) > SHOWN_LOCAL_RULES
            else ""
        )
        out.append(
            f'<details><summary>Per-image rules ({len(local)})</summary><ul class="rules">{items}{more}</ul></details>'
        )
    out.append("</div>")
    return "".join(out) if len(out) > 2 else ""
