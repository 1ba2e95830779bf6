"""The report's view of symbolic_tree records (:class:`~lightning_xai.results.symbolic_tree.SymbolicTreeResult`)."""

from __future__ import annotations

from typing import Any

from lightning_xai.records import Record
from lightning_xai.report.html import e, fmt, tree_html
from lightning_xai.results.symbolic_tree import SymbolicTreeResult


def view(ren: Any, rec: Record, result: SymbolicTreeResult, used: set[str]) -> str:
    """Fidelity, layer and levels; the rules; the class trees as nested lists."""
    fid = result.fidelity
    layer = "?" if result.layer is None else result.layer
    summary = (
        f"<p>Symbolic surrogate agrees with the model on <b>{fmt(fid['accuracy'])}</b> of held-out samples "
        f"(macro F1 {fmt(fid['macro_f1'])}); layer {e(layer)}, symbols per level {e(fmt(result.levels))}.</p>"
    )
    out = ['<div class="view" data-view="tree">', summary]
    if result.rules:
        out.append('<h4>Rules</h4><ul class="rules">')
        out += [f"<li><code>{e(r.text)}</code></li>" for r in result.rules]
        out.append("</ul>")
    if result.class_trees:
        out.append("<h4>Class trees</h4>")
        for cls, tree in result.class_trees.items():
            nodes = tree_html(tree.to_dict(), [0])
            out.append(f'<div class="tree" data-class="{e(cls)}"><ul class="tree root">{nodes}</ul></div>')
    out.append("</div>")
    return "".join(out)
