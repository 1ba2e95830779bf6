"""Metrics of a symbolic explanation: fidelity, norms per level, usage, and drift between fits."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from lightning_xai.drift import js_divergence

from .model import SymbolicModel

__all__ = [
    "fidelity",
    "js_divergence",
    "level_norms",
    "norm_order_share",
    "perplexity",
    "rules_jaccard",
]


def fidelity(surrogate_pred: Tensor, classifier_pred: Tensor, n_classes: int) -> dict[str, float]:
    """Agreement of the surrogate with the classifier (torchmetrics).

    ``accuracy`` is the share of images on which both predict the same class (micro average; micro-F1
    equals it for single-label data), ``macro_f1`` the per-class F1 averaged over classes.

    Example:
        >>> fidelity(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)["accuracy"]
        0.75
    """
    p, t = surrogate_pred.long().cpu(), classifier_pred.long().cpu()
    if p.numel() == 0:
        return {"accuracy": math.nan, "macro_f1": math.nan}
    return {
        "accuracy": float(multiclass_accuracy(p, t, num_classes=n_classes, average="micro")),
        "macro_f1": float(multiclass_f1_score(p, t, num_classes=n_classes, average="macro")),
    }


def level_norms(model: SymbolicModel) -> list[float]:
    """Mean hyperbolic distance from the origin of the codes of each level, finest first."""
    return [float(model.code_norms(level).mean()) for level in range(model.num_levels)]


def norm_order_share(model: SymbolicModel, edge_threshold: float = 0.5) -> float:
    """Share of hard edges whose parent lies nearer the origin than its child (NaN without edges)."""
    ok = total = 0
    with torch.no_grad():
        for level in range(model.num_levels - 1):
            hard = model.adjacency(level) > edge_threshold
            child = model.code_norms(level)[:, None]
            parent = model.code_norms(level + 1)[None, :]
            ok += int(((parent < child) & hard).sum())
            total += int(hard.sum())
    return ok / total if total else math.nan


def perplexity(counts: Tensor) -> float:
    """``exp(entropy)`` of a usage histogram: the effective number of symbols in use.

    Example:
        >>> perplexity(torch.tensor([5, 5, 0, 0]))
        2.0
    """
    p = counts.double() / counts.sum().clamp_min(1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum())) if p.numel() else 0.0


def rules_jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """Jaccard similarity of two rule sets (as texts); 1.0 for two empty sets.

    Example:
        >>> rules_jaccard(["S1_0 <- S0_1", "S1_1 <- S0_2"], ["S1_0 <- S0_1"])
        0.5
    """
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
