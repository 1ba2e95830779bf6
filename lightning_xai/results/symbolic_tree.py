"""The typed result of a symbolic explanation in hyperbolic space (:mod:`lightning_xai.hyperbolic`).

:class:`SymbolicTreeResult` is what :class:`~lightning_xai.hyperbolic.SymbolicTree` returns (and
:class:`~lightning_xai.callbacks.SymbolicTreeCallback` records) for one explained epoch; its parts are the
record's own types: :class:`TreeNode` (class and image trees), :class:`Rule`, :class:`FitReport`,
:class:`ImageTree` and :class:`SymbolEvidence`. :mod:`lightning_xai.hyperbolic` builds them and re-exports them.

This module imports neither geoopt nor networkx, so a report reads these records without the ``hyperbolic``
extra; the figures that :meth:`SymbolicTreeResult.logged` draws import them when it runs (at explanation time).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lightning_xai.records import Chart, Media, Table
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Observation, Result, transient

__all__ = ["FitReport", "ImageTree", "Rule", "SymbolEvidence", "SymbolicTreeResult", "TreeNode"]


@dataclass
class TreeNode:
    """A node of a class or image tree.

    Attributes:
        name: ``"S<level>_<symbol>"``, or the class label for the root of a class tree.
        level: the symbol's level (0 finest); the root sits one level above the top.
        symbol: the symbol index, ``None`` for the root.
        tokens: tokens of the tree's images on this symbol.
        edge: ``A`` of the edge to the parent (``None`` for the root and class symbols).
        routed: the edge comes from the token routes, not from a hard edge of ``A``.
        children: the node's children (one level down).
    """

    name: str
    level: int
    symbol: int | None
    tokens: int
    edge: float | None = None
    routed: bool = False
    children: list[TreeNode] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[TreeNode | None, TreeNode]]:
        """``(parent, node)`` for every node, depth first (the root's parent is ``None``)."""
        stack: list[tuple[TreeNode | None, TreeNode]] = [(None, self)]
        while stack:
            parent, node = stack.pop()
            yield parent, node
            stack.extend((node, c) for c in reversed(node.children))

    @property
    def routed_edges(self) -> int:
        """Edges of the tree taken from the token routes because ``A`` had none."""
        return sum(node.routed for _, node in self.walk())

    def symbols(self, level: int) -> list[int]:
        """The distinct symbols of ``level`` in the tree, sorted."""
        return sorted({n.symbol for _, n in self.walk() if n.level == level and n.symbol is not None})

    def is_connected_to(self, level: int = 0) -> bool:
        """Every path from the root ends at a symbol of ``level`` (and the root has children)."""
        if not self.children:
            return False
        return all(n.level == level for _, n in self.walk() if not n.children)

    def to_dict(self) -> dict[str, Any]:
        """Nested ``{"name", "level", "symbol", "tokens", "edge", "routed", "children": [...]}``."""
        return {
            "name": self.name,
            "level": self.level,
            "symbol": self.symbol,
            "tokens": self.tokens,
            "edge": self.edge,
            "routed": self.routed,
            "children": [c.to_dict() for c in self.children],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeNode:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["name"],
            int(data["level"]),
            data["symbol"],
            int(data["tokens"]),
            data.get("edge"),
            bool(data.get("routed", False)),
            [cls.from_dict(c) for c in data.get("children", [])],
        )


@dataclass(frozen=True)
class Rule:
    """One Horn-like rule: ``head <- body[0] op body[1] ...``.

    Attributes:
        class_index: the class whose tree the rule comes from (``"class"`` in the payload).
        level: level of the head (the number of levels for a class rule).
        head: ``"class 3 (name)"`` or ``"S2_4"``.
        body: the symbols of the body.
        op: ``"AND"`` (class rules: all class symbols) or ``"OR"`` (symbol rules: any child).
    """

    class_index: int
    level: int
    head: str
    body: tuple[str, ...]
    op: str

    @property
    def text(self) -> str:
        """``"S2_4 <- S1_12 OR S1_30"``."""
        return f"{self.head} <- " + f" {self.op} ".join(self.body)

    def to_dict(self) -> dict[str, Any]:
        """``{"class", "level", "head", "body", "op", "text"}`` (the text for readers of the JSON)."""
        return {"class": self.class_index, "level": self.level, "head": self.head, "body": list(self.body),
                "op": self.op, "text": self.text}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["class"]), int(data["level"]), data["head"], tuple(data["body"]), data["op"])


@dataclass
class FitReport:
    """Summary of one :meth:`~lightning_xai.hyperbolic.SymbolicFitter.fit` call.

    Attributes:
        steps: optimisation steps run.
        total_steps: steps run by this fitter so far (over all calls, and before a resume).
        seconds: wall time.
        losses: every loss term, averaged over the last quarter of the steps.
        restarts: codes moved back onto the data because nobody used them.
        initialised: whether this call placed the codebooks on the data (a first fit, not a warm start).
        stopped_early: whether the fit stopped before its ``steps`` because the surrogate already agreed
            with the classifier and the tokens followed the hierarchy's edges (``stop_at``).
        agreement: the surrogate's agreement with the classifier on the last ``check_every`` training
            batches (NaN when fewer steps ran; ``None`` in the payload).
        edge_agreement: the share of the tokens routed along a hard edge (adjacency > 0.5) from each level
            to the next, on the same batches (NaN when fewer steps ran; ``None`` in the payload).
    """

    steps: int
    total_steps: int
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    restarts: int = 0
    initialised: bool = False
    stopped_early: bool = False
    agreement: float = math.nan
    edge_agreement: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "total_steps": self.total_steps,
            "seconds": self.seconds,
            "losses": dict(self.losses),
            "restarts": self.restarts,
            "initialised": self.initialised,
            "stopped_early": self.stopped_early,
            "agreement": None if math.isnan(self.agreement) else self.agreement,
            "edge_agreement": None if math.isnan(self.edge_agreement) else self.edge_agreement,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitReport:
        """Inverse of :meth:`to_dict` (``None`` reads as NaN)."""
        agreement, edges = data.get("agreement"), data.get("edge_agreement")
        return cls(
            int(data["steps"]),
            int(data["total_steps"]),
            float(data["seconds"]),
            dict(data.get("losses") or {}),
            int(data.get("restarts", 0)),
            bool(data.get("initialised", False)),
            bool(data.get("stopped_early", False)),
            math.nan if agreement is None else float(agreement),
            math.nan if edges is None else float(edges),
        )


@dataclass
class ImageTree:
    """The tree of one explained image (a held-out one).

    Attributes:
        id: the image's sample id (the validation sample's ``ids``).
        row: its row in the explained sample.
        prediction: the classifier's predicted class.
        tree: its own top symbols walked back through the symbols it uses.
    """

    id: int
    row: int
    prediction: int
    tree: TreeNode

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageTree:
        return cls(
            int(data["id"]), int(data["row"]), int(data["prediction"]), TreeNode.from_dict(data["tree"])
        )


@dataclass
class SymbolEvidence:
    """Where one symbol is evidenced: the images that use it most (its visual-semantics panel row).

    Attributes:
        level: the symbol's level.
        symbol: the symbol's index.
        name: ``"S<level>_<symbol>"``.
        images: rows of those images in the explained sample (most tokens first).
        tokens: tokens each of them puts on the symbol.
        ids: their sample ids.
    """

    level: int
    symbol: int
    name: str
    images: list[int]
    tokens: list[int]
    ids: list[int]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@register
@dataclass(kw_only=True)
class SymbolicTreeResult(Result):
    """A symbolic model of the classifier, fitted on one explained epoch's sample, read out as trees and rules.

    The model quantises one token per channel of the explained feature map into symbols at
    ``len(levels)`` levels whose codebooks live on a Poincaré ball; a surrogate head on the top level
    predicts the classifier. Symbols are named ``S<level>_<index>``, level 0 the finest; a class ``c`` is
    keyed by its index (a string in the payload).

    Attributes:
        layer: the explained feature map (dotted layer name; ``None`` when the caller gave none).
        levels: symbols per level, finest first; the last is the top level (one per class by default).
        classes: class names, ``None`` when unknown.
        n_samples: images explained (the validation sample).
        n_fit: images the symbolic model was fitted on.
        n_heldout: images kept out of fitting, on which ``fidelity`` is measured.
        fidelity: agreement of the surrogate with the classifier's predictions on the held-out images:
            ``accuracy`` (share of images, 0-1) and ``macro_f1`` (per-class F1 averaged, 0-1).
        train_fidelity: the same on the fitted images.
        fit: this epoch's fit (:class:`FitReport`: steps, seconds, loss terms, early stop; ``fit.initialised``
            is false for a fit warm-started from the previous explained epoch's model).
        norms: mean hyperbolic distance of each level's codes from the origin, finest first (coarser
            levels lie nearer the origin).
        code_norms: hyperbolic distance of every code from the origin, per level (empty in schema-1 records).
        norm_order_share: share of hard edges whose parent is nearer the origin than its child (0-1;
            ``None`` without edges).
        edge_agreement: per level below the top, share of the tokens routed to the next level along a hard
            edge (0-1; ``None`` when no token is routed).
        edges: hard edges (adjacency > 0.5) between each level and the next.
        usage: tokens on every symbol, per level, over all explained images.
        perplexity: effective number of symbols in use per level (``exp`` of the usage entropy).
        class_symbols: per class, the top-level symbols its images use most (its class rule's body).
        class_trees: per class the classifier predicts, its tree (:class:`TreeNode`): class symbols walked
            back through hard edges to level 0.
        image_trees: trees of a few held-out images (:class:`ImageTree`), predicted classes taken in turn.
        rules: the rules of the class trees, level by level (:class:`Rule`).
        routed_edges: tree edges taken from the token routes because the adjacency had no hard edge.
        semantics: the most used symbols of each level and the images that evidence them
            (:class:`SymbolEvidence`; empty without input images).
        panels: the visual-semantics panels by level, ``[3, H, W]`` images (in memory only, for :meth:`logged`).

    Example:
        >>> tree = TreeNode("class 0", 2, None, 8, children=[TreeNode("S1_0", 1, 0, 8)])
        >>> r = SymbolicTreeResult(
        ...     layer="conv5", levels=[4, 2], classes=None, n_samples=8, n_fit=6, n_heldout=2,
        ...     fidelity={"accuracy": 1.0, "macro_f1": 1.0}, train_fidelity={"accuracy": 1.0, "macro_f1": 1.0},
        ...     fit=FitReport(steps=5, total_steps=5, seconds=0.1, initialised=True), norms=[1.5, 0.9],
        ...     norm_order_share=1.0, edge_agreement=[1.0], edges=[2], usage=[[5, 3, 0, 0], [8, 0]],
        ...     perplexity=[1.9, 1.0], class_symbols={0: [0]}, class_trees={0: tree}, image_trees=[],
        ...     rules=[Rule(0, 2, "class 0", ("S1_0",), "AND")], routed_edges=0, semantics=[])
        >>> r.logged(0).scalars["fidelity"], [o.key for o in r.observations()]
        (1.0, ['level_0', 'level_1'])
        >>> SymbolicTreeResult.from_payload(r.to_payload(), schema=2) == r
        True
    """

    method: ClassVar[str] = "symbolic_tree"
    summary_scalars: ClassVar[tuple[str, ...]] = (
        "fidelity",
        "macro_f1",
        "train_fidelity",
        "norm_order_share",
        "edge_agreement",
        "routed_edges",
        "fit_loss",
        "fit_steps",
        "time_s",
    )
    schema: ClassVar[int] = 2

    layer: str | None
    levels: list[int]
    classes: list[str] | None
    n_samples: int
    n_fit: int
    n_heldout: int
    fidelity: dict[str, float]
    train_fidelity: dict[str, float]
    fit: FitReport
    norms: list[float]
    code_norms: list[list[float]] = field(default_factory=list)
    norm_order_share: float | None
    edge_agreement: list[float | None]
    edges: list[int]
    usage: list[list[int]]
    perplexity: list[float]
    class_symbols: dict[int, list[int]]
    class_trees: dict[int, TreeNode]
    image_trees: list[ImageTree]
    rules: list[Rule]
    routed_edges: int
    semantics: list[SymbolEvidence]
    panels: dict[int, Any] = transient(default_factory=dict)

    # ------------------------------------------------------------------------------------ serialised form
    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        # schema 1 also named the explained epoch the fit warm-started from, the drift against the previous
        # explained epoch (symbol-usage JS divergence, rule Jaccard) and the history of every explained epoch
        return ("warm_start_epoch", "drift", "history") if schema == 1 else ()

    @classmethod
    def upgrade(cls, payload: dict[str, Any], schema: int) -> dict[str, Any]:
        # the same keys in schemas 1 and 2 (schema 2 adds code_norms); here the nested parts become typed
        parts = {
            "fit": FitReport.from_dict,
            "rules": lambda rules: [Rule.from_dict(r) for r in rules],
            "class_symbols": lambda d: {int(c): [int(k) for k in ks] for c, ks in d.items()},
            "class_trees": lambda d: {int(c): TreeNode.from_dict(t) for c, t in d.items()},
            "image_trees": lambda trees: [ImageTree.from_dict(t) for t in trees],
            "semantics": lambda entries: [SymbolEvidence(**entry) for entry in entries],
        }
        for key, read in parts.items():
            if key in payload:
                payload[key] = read(payload[key])
        return payload

    def to_payload(self) -> dict[str, Any]:
        out = super().to_payload()
        out["fit"] = self.fit.to_dict()
        out["rules"] = [r.to_dict() for r in self.rules]
        return out

    # ------------------------------------------------------------------------------------ what it logs
    @property
    def warm_started(self) -> bool:
        """Whether the fit continued the previous explained epoch's model."""
        return not self.fit.initialised

    def label(self, class_index: int) -> str:
        """The class's name, or ``"class <index>"`` without names."""
        return self.classes[class_index] if self.classes else f"class {class_index}"

    def scalars(self) -> dict[str, float]:
        """The monitorable numbers (``xai/symbolic_tree/<key>``), the non-finite ones left out."""
        out = {
            "fidelity": self.fidelity["accuracy"],
            "macro_f1": self.fidelity["macro_f1"],
            "train_fidelity": self.train_fidelity["accuracy"],
            "norm_order_share": math.nan if self.norm_order_share is None else self.norm_order_share,
            "edge_agreement": _mean([a for a in self.edge_agreement if a is not None and math.isfinite(a)]),
            "routed_edges": float(self.routed_edges),
            "fit_loss": self.fit.losses.get("total", math.nan),
            "fit_steps": float(self.fit.total_steps),
        }
        out.update({f"norm/level_{level}": norm for level, norm in enumerate(self.norms)})
        out.update({f"perplexity/level_{level}": ppl for level, ppl in enumerate(self.perplexity)})
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}

    def logged(self, epoch: int) -> Logged:
        """Scalars (:meth:`scalars`); tables ``rules`` (class, name, level, rule) and ``usage`` (level, symbol,
        tokens, share, norm); bar charts ``usage_level_<l>``; media ``class_tree`` (one per class, PNG),
        ``usage_histogram`` and ``semantics_level_<l>`` (the most used symbols of each level on the images
        that use them most, their evidence maps overlaid); text ``rules`` (markdown) and ``dot/class_<c>``
        (Graphviz)."""
        from lightning_xai.hyperbolic.render import tree_image, usage_image
        from lightning_xai.hyperbolic.tree import tree_to_dot

        norms = self.code_norms
        usage_rows = [
            [level, k, int(n), n / max(1, sum(u)), norms[level][k] if level < len(norms) else None]
            for level, u in enumerate(self.usage)
            for k, n in enumerate(u)
        ]
        tables = [
            Table("rules", ["class", "name", "level", "rule"],
                  [[r.class_index, self.label(r.class_index), r.level, r.text] for r in self.rules]),
            Table("usage", ["level", "symbol", "tokens", "share", "norm"], usage_rows),
        ]  # fmt: skip
        charts = [
            Chart(
                f"usage_level_{level}",
                "bar",
                Table(
                    f"usage_level_{level}",
                    ["symbol", "tokens"],
                    [[f"S{level}_{k}", int(n)] for k, n in enumerate(u)],
                ),
                "symbol",
                "tokens",
                title=f"Symbol usage at level {level}, epoch {epoch}",
            )
            for level, u in enumerate(self.usage)
        ]
        media = []
        for c, tree in self.class_trees.items():
            rules = "; ".join(
                r.text for r in self.rules if r.class_index == c and r.level == len(self.levels)
            )
            media.append(
                Media("class_tree", tree_image(tree), caption=f"epoch {epoch}: {rules or tree.name}")
            )
        media.append(
            Media(
                "usage_histogram",
                usage_image(self.usage, f"Symbol usage, epoch {epoch}"),
                caption=f"epoch {epoch}",
            )
        )
        for level, panel in sorted(self.panels.items()):
            shown = [s for s in self.semantics if s.level == level]
            rows = "; ".join(f"row {r + 1}: {s.name} on ids {s.ids}" for r, s in enumerate(shown))
            caption = f"epoch {epoch}, level {level}, where each symbol is evidenced ({rows})"
            media.append(Media(f"semantics_level_{level}", panel, caption=caption))
        text = {"rules": "\n".join(f"- `{r.text}`" for r in self.rules)}
        text.update({f"dot/class_{c}": tree_to_dot(t, f"class {c}") for c, t in self.class_trees.items()})
        return Logged(scalars=self.scalars(), tables=tables, charts=charts, media=media, text=text)

    def observations(self) -> list[Observation]:
        """The symbol usage of every level (drift kind ``symbol_js``: Jensen-Shannon divergence between epochs)."""
        return [
            Observation(
                "symbol_js", f"level_{level}", f"symbol usage at level {level}", [float(n) for n in usage]
            )
            for level, usage in enumerate(self.usage)
        ]

    def summary(self) -> dict[str, Any]:
        """The facts of the fit (trees, rules, usage and semantics are the view's), then what schema 1 recorded."""
        structural = {
            "code_norms",
            "usage",
            "class_symbols",
            "class_trees",
            "image_trees",
            "rules",
            "semantics",
        }
        out = {k: v for k, v in super().summary().items() if k not in structural}
        out["fit"] = self.fit.to_dict()
        return out
