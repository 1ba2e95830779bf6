"""One call from cached feature maps to a symbolic explanation: split, fit, read out, measure.

:func:`explain_symbols` is what :class:`~lightning_xai.hyperbolic.SymbolicTree` runs on every call (and so
:class:`~lightning_xai.callbacks.SymbolicTreeCallback` every explained epoch), for a fitter of one's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .config import check_feature_map
from .fit import FitReport, SymbolicFitter
from .metrics import fidelity, level_norms, norm_order_share, perplexity
from .model import Encoding
from .tree import Hierarchy, Rule, TreeNode, read_hierarchy

__all__ = ["SymbolicExplanation", "explain_symbols", "heldout_split"]


def heldout_split(n: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded split of ``n`` rows into (fit rows, held-out rows), both sorted; the held-out part has
    ``round(holdout * n)`` rows (at least 1 when ``holdout > 0``, and at least 2 rows stay to fit).

    Example:
        >>> fit_rows, held = heldout_split(8, 0.25, seed=0)
        >>> len(fit_rows), len(held)
        (6, 2)
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must lie in [0, 1), but got {holdout!r}.")
    n_held = 0 if holdout == 0 else min(max(1, round(holdout * n)), n - 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_held:].sort().values, perm[:n_held].sort().values


@dataclass
class SymbolicExplanation:
    """Everything one fit explains.

    Attributes:
        fidelity: surrogate vs classifier on the held-out images (``accuracy``, ``macro_f1``).
        train_fidelity: the same on the images the model was fitted on.
        norms: mean hyperbolic norm of the codes per level, finest first.
        norm_order_share: share of hard edges whose parent is nearer the origin than its child.
        edge_agreement: per level, share of routed tokens that follow a hard edge.
        usage: tokens per symbol per level, over all images.
        perplexity: effective number of symbols in use, per level.
        hierarchy: the read-out (trees, rules) over all images.
        class_trees: the tree of every class the classifier predicts.
        rules: the rules of the class trees.
        encoding: symbols and surrogate logits of all images.
        fit_rows, heldout_rows: the split.
        report: the fit's report.
    """

    fidelity: dict[str, float]
    train_fidelity: dict[str, float]
    norms: list[float]
    norm_order_share: float
    edge_agreement: list[float]
    usage: list[list[int]]
    perplexity: list[float]
    hierarchy: Hierarchy
    class_trees: dict[int, TreeNode]
    rules: list[Rule]
    encoding: Encoding
    fit_rows: Tensor
    heldout_rows: Tensor
    report: FitReport

    @property
    def rule_texts(self) -> list[str]:
        return [r.text for r in self.rules]

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (no trees)."""
        return {
            "fidelity": dict(self.fidelity),
            "train_fidelity": dict(self.train_fidelity),
            "norms": list(self.norms),
            "norm_order_share": None if math.isnan(self.norm_order_share) else self.norm_order_share,
            "edge_agreement": [None if math.isnan(a) else a for a in self.edge_agreement],
            "perplexity": list(self.perplexity),
            "fit": self.report.to_dict(),
        }


def explain_symbols(
    fitter: SymbolicFitter,
    features: Tensor,
    classifier_logits: Tensor,
    steps: int,
    holdout: float = 0.25,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    prune: float = 0.3,
    class_share: float = 0.5,
    stop_at: float | None = None,
    min_steps: int = 0,
) -> SymbolicExplanation:
    """Fit ``fitter`` for ``steps`` more steps on part of the images and explain all of them.

    Args:
        fitter: a new or warm-started :class:`~lightning_xai.hyperbolic.SymbolicFitter`.
        features: the classifier's feature maps ``[N, C, H, W]`` at the explained layer.
        classifier_logits: the classifier's logits ``[N, n_classes]``; the teacher is their argmax.
        steps: optimisation steps of this call.
        holdout: share of images kept out of fitting to measure fidelity.
        seed: seed of the split.
        class_names: class names for trees and rules.
        prune, class_share: see :func:`~lightning_xai.hyperbolic.read_hierarchy`.
        stop_at, min_steps: early stop of the fit (see :meth:`~lightning_xai.hyperbolic.SymbolicFitter.fit`);
            only the fitting images count, so the held-out fidelity stays held out.

    Raises:
        lightning_xai.hyperbolic.FeatureMapError: ``features`` is not a spatial feature map.
        ValueError: mismatched shapes, or too few images.
    """
    check_feature_map(features, "the explained layer")
    if classifier_logits.dim() != 2 or classifier_logits.shape[0] != features.shape[0]:
        raise ValueError(
            f"classifier_logits must be [N, n_classes] with N = {features.shape[0]}, got {list(classifier_logits.shape)}."
        )
    n_classes = fitter.model.n_classes
    if classifier_logits.shape[1] != n_classes:
        raise ValueError(
            f"the classifier has {classifier_logits.shape[1]} logits but the symbolic model {n_classes} classes."
        )
    teacher = classifier_logits.argmax(1).cpu()
    fit_rows, held = heldout_split(features.shape[0], holdout, seed)
    model = fitter.model
    # a warm start checks the agreement before any step: encode every image for it, and keep the encoding
    # if no step runs (a settled epoch then encodes once, not twice)
    before = model.encode(features) if fitter.checks_first(steps, stop_at, min_steps) else None
    report = fitter.fit(
        features[fit_rows],
        teacher[fit_rows],
        steps,
        stop_at=stop_at,
        min_steps=min_steps,
        predictions=None if before is None else before.predictions[fit_rows],
    )
    encoding = before if before is not None and report.steps == 0 else model.encode(features)
    pred = encoding.predictions
    hierarchy = read_hierarchy(model, encoding, teacher, class_names, prune=prune, class_share=class_share)
    trees = hierarchy.class_trees()
    usage = [encoding.usage(level, k) for level, k in enumerate(model.sizes)]
    return SymbolicExplanation(
        fidelity=fidelity(pred[held], teacher[held], n_classes),
        train_fidelity=fidelity(pred[fit_rows], teacher[fit_rows], n_classes),
        norms=level_norms(model),
        norm_order_share=norm_order_share(model),
        edge_agreement=[hierarchy.edge_agreement(level) for level in range(model.num_levels - 1)],
        usage=[u.tolist() for u in usage],
        perplexity=[perplexity(u) for u in usage],
        hierarchy=hierarchy,
        class_trees=trees,
        rules=hierarchy.rules(trees),
        encoding=encoding,
        fit_rows=fit_rows,
        heldout_rows=held,
        report=report,
    )
