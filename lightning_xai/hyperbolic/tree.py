"""Reading trees and rules out of a fitted symbolic model.

The learned soft adjacency ``A_l`` links the symbols of level ``l`` (children, rows) to those of level
``l + 1`` (parents, columns); a **hard edge** is ``A_l[j, k] > edge_threshold`` (0.5).

* **Class tree** of class ``c``: run the images the *classifier* predicts as ``c`` (not the labels: the
  explanation is of the model); its **class symbols** are the top-level symbols whose token count
  exceeds ``class_share`` (0.5) of the most used one. Each symbol is then walked back through the
  hard edges, level by level, to the level-0 symbols, keeping only children that the class's images
  use. A child is **pruned** when it carries fewer than ``prune`` (0.3) times the tokens of its busiest
  sibling. Pruning relative to siblings (rather than to the whole level, as the reference code does)
  always keeps the busiest child, so a kept symbol is never cut off from level 0 by pruning.
* If a used symbol has no hard edge to any child its tokens came from (the adjacency has not caught up
  with a route that changed during fitting), the child that routes most tokens to it is linked instead
  and the edge is marked ``routed`` (drawn dashed). :attr:`TreeNode.routed_edges` counts them.
* **Image tree**: the same walk restricted to the symbols one image uses.
* **Rules**, level by level: ``class 3 (name) <- S2_4 AND S2_7`` (an image of the class shows all its
  class symbols) and ``S2_4 <- S1_12 OR S1_30`` (a symbol is evidenced by any of its children).
  Symbols are named ``S<level>_<index>``, level 0 the finest.

Trees export as nested dicts (:meth:`TreeNode.to_dict`), Graphviz DOT text (:func:`tree_to_dot`) and
PNG figures (:func:`lightning_xai.hyperbolic.render.render_tree`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_xai.results.symbolic_tree import Rule, TreeNode

from .model import Encoding, SymbolicModel

#: ``A`` above which an edge is hard (read-out and the fitter's early stop)
EDGE_THRESHOLD = 0.5

__all__ = ["Hierarchy", "Rule", "TreeNode", "read_hierarchy", "symbol_name", "tree_to_dot"]


def symbol_name(level: int, symbol: int) -> str:
    """``"S<level>_<symbol>"``, the name symbols have in rules and trees.

    Example:
        >>> symbol_name(2, 4)
        'S2_4'
    """
    return f"S{level}_{symbol}"


def _class_label(c: int, names: Sequence[str] | None) -> str:
    return f"class {c} ({names[c]})" if names else f"class {c}"


@dataclass
class Hierarchy:
    """The read-out of a fitted symbolic model on a set of images.

    Attributes:
        sizes: symbols per level, finest first.
        adjacency: soft adjacency per level, ``[K_l, K_(l+1)]`` (CPU).
        codes: per level, the symbol of every token ``[N, C]``.
        teacher: the classifier's prediction for every image ``[N]``.
        class_names: names of the classes, if known.
        prune: sibling-relative pruning share.
        class_share: share of the most used top symbol above which a top symbol is a class symbol.
        edge_threshold: ``A`` above which an edge is hard.
    """

    sizes: tuple[int, ...]
    adjacency: list[Tensor]
    codes: list[Tensor]
    teacher: Tensor
    class_names: list[str] | None = None
    prune: float = 0.3
    class_share: float = 0.5
    edge_threshold: float = EDGE_THRESHOLD

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    @property
    def n_classes(self) -> int:
        return len(self.class_names) if self.class_names else int(self.teacher.max()) + 1

    def hard_edges(self, level: int) -> Tensor:
        """Boolean ``[K_level, K_(level+1)]``: the hard edges between ``level`` and ``level + 1``."""
        return self.adjacency[level] > self.edge_threshold

    def usage(self, level: int, rows: Tensor | None = None) -> Tensor:
        """Tokens on each symbol of ``level`` over the images ``rows`` (default: all)."""
        codes = self.codes[level] if rows is None else self.codes[level][rows]
        return torch.bincount(codes.flatten(), minlength=self.sizes[level])

    def routes(self, level: int, rows: Tensor | None = None) -> Tensor:
        """Tokens routed from each symbol of ``level`` to each of ``level + 1``: ``[K_l, K_(l+1)]``."""
        child = self.codes[level] if rows is None else self.codes[level][rows]
        parent = self.codes[level + 1] if rows is None else self.codes[level + 1][rows]
        k_parent = self.sizes[level + 1]
        flat = child.flatten() * k_parent + parent.flatten()
        return torch.bincount(flat, minlength=self.sizes[level] * k_parent).view(self.sizes[level], k_parent)

    def edge_agreement(self, level: int) -> float:
        """Share of the tokens routed from ``level`` to ``level + 1`` along a hard edge."""
        routes = self.routes(level)
        total = int(routes.sum())
        return float((routes * self.hard_edges(level)).sum()) / total if total else float("nan")

    # ------------------------------------------------------------------ trees
    def _top_symbols(self, rows: Tensor) -> list[int]:
        usage = self.usage(self.num_levels - 1, rows)
        if int(usage.max()) == 0:
            return []
        cut = self.class_share * float(usage.max())
        return [int(k) for k in torch.nonzero(usage >= cut).flatten() if usage[k] > 0]

    def class_symbols(self, class_index: int) -> list[int]:
        """Top-level symbols of the images the classifier predicts as ``class_index`` (empty if none)."""
        rows = torch.nonzero(self.teacher == class_index).flatten()
        return self._top_symbols(rows) if rows.numel() else []

    def _grow(self, node: TreeNode, rows: Tensor) -> None:
        level = node.level - 1
        if level < 0 or node.symbol is None:
            return
        k = node.symbol
        usage = self.usage(level, rows)
        hard = self.hard_edges(level)[:, k] & (usage > 0)
        candidates = torch.nonzero(hard).flatten().tolist()
        routed = False
        if not candidates:
            into = self.routes(level, rows)[:, k]
            if int(into.max()) == 0:
                return
            candidates, routed = [int(into.argmax())], True
        busiest = max(int(usage[j]) for j in candidates)
        kept = [j for j in candidates if usage[j] >= self.prune * busiest]
        kept.sort(key=lambda j: (-int(usage[j]), j))
        for j in kept:
            child = TreeNode(
                symbol_name(level, j), level, j, int(usage[j]), float(self.adjacency[level][j, k]), routed
            )
            node.children.append(child)
            self._grow(child, rows)

    def _tree(self, root: TreeNode, rows: Tensor, tops: list[int]) -> TreeNode:
        top = self.num_levels - 1
        usage = self.usage(top, rows)
        for k in sorted(tops, key=lambda k: (-int(usage[k]), k)):
            child = TreeNode(symbol_name(top, k), top, k, int(usage[k]))
            root.children.append(child)
            self._grow(child, rows)
        return root

    def class_tree(self, class_index: int) -> TreeNode:
        """The tree of ``class_index``: class symbols walked back to level 0 (no children if the
        classifier predicts the class for none of the images)."""
        rows = torch.nonzero(self.teacher == class_index).flatten()
        root = TreeNode(
            _class_label(class_index, self.class_names),
            self.num_levels,
            None,
            int(rows.numel()) * self.codes[0].shape[1],
        )
        return self._tree(root, rows, self.class_symbols(class_index) if rows.numel() else [])

    def image_tree(self, index: int) -> TreeNode:
        """The tree of image ``index``: its own top symbols walked back through the symbols it uses."""
        rows = torch.tensor([index])
        c = int(self.teacher[index])
        root = TreeNode(_class_label(c, self.class_names), self.num_levels, None, self.codes[0].shape[1])
        return self._tree(root, rows, self._top_symbols(rows))

    def class_trees(self) -> dict[int, TreeNode]:
        """:meth:`class_tree` of every class the classifier predicts for at least one image."""
        present = sorted(int(c) for c in torch.unique(self.teacher))
        return {c: self.class_tree(c) for c in present}

    # ------------------------------------------------------------------ rules
    def rules(self, trees: dict[int, TreeNode] | None = None) -> list[Rule]:
        """Rules of every class tree, level by level (class rule first, then top-down)."""
        trees = self.class_trees() if trees is None else trees
        out: list[Rule] = []
        for c, tree in trees.items():
            if not tree.children:
                continue
            out.append(Rule(c, self.num_levels, tree.name, tuple(ch.name for ch in tree.children), "AND"))
            seen: set[str] = set()
            by_level: dict[int, list[Rule]] = {}
            for _, node in tree.walk():
                if node.symbol is None or not node.children or node.name in seen:
                    continue
                seen.add(node.name)
                body = tuple(dict.fromkeys(ch.name for ch in node.children))
                by_level.setdefault(node.level, []).append(Rule(c, node.level, node.name, body, "OR"))
            for level in sorted(by_level, reverse=True):
                out.extend(sorted(by_level[level], key=lambda r: int(r.head.split("_")[1])))
        return out


def read_hierarchy(
    model: SymbolicModel,
    encoding: Encoding,
    teacher: Tensor,
    class_names: Sequence[str] | None = None,
    prune: float = 0.3,
    class_share: float = 0.5,
    edge_threshold: float = EDGE_THRESHOLD,
) -> Hierarchy:
    """Trees and rules of ``model`` on the images behind ``encoding``.

    Args:
        model: the fitted symbolic model.
        encoding: ``model.encode(features)`` of the images.
        teacher: the classifier's predictions for the same images.
        class_names: names of the classes (rules read ``class 3 (name)``).
        prune: a child with fewer than ``prune`` x the tokens of its busiest sibling is dropped.
        class_share: top symbols above this share of the most used one are class symbols.
        edge_threshold: ``A`` above which an edge is hard.

    Example:
        >>> from lightning_xai.hyperbolic import SymbolicConfig, SymbolicFitter
        >>> feats = torch.randn(32, 8, 4, 4); teacher = feats.mean((2, 3))[:, :3].argmax(1)
        >>> fitter = SymbolicFitter(8, 3, SymbolicConfig(levels=(8, 4), latent_channels=4))
        >>> _ = fitter.fit(feats, teacher, steps=3)
        >>> h = read_hierarchy(fitter.model, fitter.model.encode(feats), teacher)
        >>> h.class_tree(int(teacher[0])).is_connected_to(0)
        True
    """
    if not 0.0 <= prune <= 1.0 or not 0.0 < class_share <= 1.0 or not 0.0 < edge_threshold < 1.0:
        raise ValueError(
            f"prune must lie in [0, 1], class_share in (0, 1] and edge_threshold in (0, 1); got {prune!r}, "
            f"{class_share!r}, {edge_threshold!r}."
        )
    with torch.no_grad():
        adjacency = [model.adjacency(level).detach().cpu() for level in range(model.num_levels - 1)]
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != model.n_classes:
        raise ValueError(f"{len(names)} class names for {model.n_classes} classes.")
    return Hierarchy(
        model.sizes,
        adjacency,
        [c.cpu() for c in encoding.codes],
        teacher.detach().cpu().long(),
        names,
        float(prune),
        float(class_share),
        float(edge_threshold),
    )


def _dot_id(node: TreeNode) -> str:
    return node.name if node.symbol is not None else "root"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def tree_to_dot(tree: TreeNode, name: str = "tree") -> str:
    """Graphviz DOT text of a tree (a node shared by two parents appears once; routed edges dashed).

    Example:
        >>> leaf = TreeNode("S0_1", 0, 1, 5, edge=0.9)
        >>> print(tree_to_dot(TreeNode("class 0", 1, None, 5, children=[leaf]), "demo"))
        digraph "demo" {
          rankdir=TB;
          node [fontname="Helvetica", fontsize=10];
          "root" [label="class 0", shape=box, style=filled, fillcolor="#dddddd"];
          "S0_1" [label="S0_1\\n5 tokens", shape=ellipse];
          "root" -> "S0_1" [label="0.90"];
        }
    """
    lines = [
        f'digraph "{_dot_escape(name)}" {{',
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=10];',
    ]
    declared: set[str] = set()
    edges: list[str] = []
    for parent, node in tree.walk():
        nid = _dot_id(node)
        if nid not in declared:
            declared.add(nid)
            if node.symbol is None:
                lines.append(
                    f'  "{nid}" [label="{_dot_escape(node.name)}", shape=box, style=filled, fillcolor="#dddddd"];'
                )
            else:
                lines.append(f'  "{nid}" [label="{node.name}\\n{node.tokens} tokens", shape=ellipse];')
        if parent is not None:
            attrs = [f'label="{node.edge:.2f}"'] if node.edge is not None else []
            if node.routed:
                attrs.append("style=dashed")
            edge = f'  "{_dot_id(parent)}" -> "{nid}"' + (f" [{', '.join(attrs)}]" if attrs else "") + ";"
            if edge not in edges:
                edges.append(edge)
    return "\n".join([*lines, *edges, "}"])
