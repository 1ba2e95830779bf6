"""The report's view of symbolic_tree records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import _e, _fmt, _tree_html


def view(ren: Any, rec: Record, result: Any, used: set[str]) -> str:
    p = rec.payload
    out = ['<div class="view" data-view="tree">']
    fid = p.get("fidelity")
    if isinstance(fid, Mapping):
        out.append(
            f"<p>Symbolic surrogate agrees with the model on <b>{_fmt(fid.get('accuracy'))}</b> of held-out "
            f"samples (macro F1 {_fmt(fid.get('macro_f1'))}); layer {_e(p.get('layer', '?'))}, "
            f"symbols per level {_e(_fmt(p.get('levels')))}.</p>"
        )
    rules = p.get("rules")
    if isinstance(rules, list) and rules:
        out.append('<h4>Rules</h4><ul class="rules">')
        for r in rules:
            text = r.get("text") if isinstance(r, Mapping) else r
            out.append(f"<li><code>{_e(text)}</code></li>")
        out.append("</ul>")
    trees = p.get("class_trees")
    if isinstance(trees, Mapping) and trees:
        out.append("<h4>Class trees</h4>")
        for cls, tree in trees.items():
            counter = [0]
            out.append(
                f'<div class="tree" data-class="{_e(cls)}"><ul class="tree root">{_tree_html(tree, counter)}</ul></div>'
            )
    out.append("</div>")
    return "".join(out) if len(out) > 2 else ""


