"""The report's view of logic_rules records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt


def view(ren: Any, rec: Record, result: Any, used: set[str]) -> str:
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


