"""Local and global rules, and an executable rule classifier with fidelity and accuracy.

* **Local rule** of an image predicted as ``y``: its fresh pathway's predicates that are in ``V_y``
  *and* active (the *eligible* predicates), as a conjunction implying ``y``:
  ``"class 2 <- f17 >= 0.83 AND f40 >= 1.2"``.
* **Global rule** of a class: its vocabulary as a DNF over the distinct source pathways, most
  frequent first, truncated for display.
* **Rule classifier** (not in the reference; our design): each class gets a score from its
  vocabulary alone and the rules predict the best-scoring class. Two scorings:

  - ``"restricted_logit"`` (default, the more faithful): ``b_c + sum_{j in V_c} W[c, j] z_j``, the
    class logit restricted to the neurons of its vocabulary;
  - ``"share"``: the frequency-weighted share of the class's predicates that are active on ``z``.

  A class with an empty vocabulary has no rule and is never predicted. Ties (common with
  ``"share"``) are broken by the model's logit, as the specification suggests; the tie share is
  reported. Fidelity (agreement with the model's prediction) and accuracy (against labels) are
  computed with torchmetrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy

from lightning_xai.logic.pathways import LinearHead, Pathways, extract_pathways
from lightning_xai.logic.vocabulary import Predicate, Vocabulary, fit_vocabulary

__all__ = [
    "SCORINGS",
    "GlobalRule",
    "LocalRule",
    "RuleClassifier",
    "RuleEvaluation",
    "class_label",
    "crossfit_predictions",
    "evaluate_rules",
    "global_rules",
    "local_rules",
]

SCORINGS = ("restricted_logit", "share")
"""Scorings of :class:`RuleClassifier`; the first is the default."""


def finite_mean(values: Sequence[float | None]) -> float:
    """Mean of the finite values (``None`` and NaN left out); NaN if there is none.

    Example:
        >>> finite_mean([1.0, None, float("nan"), 2.0])
        1.5
    """
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def class_label(c: int, class_names: Sequence[str] | None = None) -> str:
    """``"class 2"`` or ``"class 2 (circle/lined)"``.

    Example:
        >>> class_label(2, ["a", "b", "circle/lined"])
        'class 2 (circle/lined)'
    """
    if class_names is not None and 0 <= c < len(class_names):
        return f"class {c} ({class_names[c]})"
    return f"class {c}"


@dataclass
class LocalRule:
    """The rule behind one prediction.

    Attributes:
        index: row of the image in the features given.
        predicted: the model's class.
        predicates: the eligible predicates (in ``V_predicted`` and active), in pathway order.
        pathway_length: length of the image's fresh pathway.
        in_vocabulary: how many pathway features are in ``V_predicted`` (active or not).
    """

    index: int
    predicted: int
    predicates: list[Predicate]
    pathway_length: int
    in_vocabulary: int

    @property
    def eligibility(self) -> float:
        """Share of the pathway's features that are in the predicted class's vocabulary."""
        return self.in_vocabulary / self.pathway_length if self.pathway_length else math.nan

    @property
    def retention(self) -> float:
        """Share of the in-vocabulary pathway features whose predicate is active (NaN if none)."""
        return len(self.predicates) / self.in_vocabulary if self.in_vocabulary else math.nan

    def text(
        self, class_names: Sequence[str] | None = None, feature_names: Sequence[str] | None = None
    ) -> str:
        """``"class 2 <- f17 >= 0.83 AND f40 >= 1.2"``.

        Example:
            >>> p = Predicate(2, 17, 1, 0.83, 1, 1.0, 64)
            >>> LocalRule(0, 2, [p, Predicate(2, 40, 1, 1.2, 1, 1.0, 64)], 2, 2).text()
            'class 2 <- f17 >= 0.83 AND f40 >= 1.2'
        """
        body = " AND ".join(p.text(feature_names) for p in self.predicates) or "(no eligible predicate)"
        return f"{class_label(self.predicted, class_names)} <- {body}"

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        return {
            "index": self.index,
            "class": self.predicted,
            "rule": self.text(class_names),
            "predicates": [p.signed_id for p in self.predicates],
            "pathway_length": self.pathway_length,
            "in_vocabulary": self.in_vocabulary,
        }


def local_rules(
    features: Tensor,
    vocabulary: Vocabulary,
    head: LinearHead,
    predictions: Tensor | None = None,
    pathways: Pathways | None = None,
) -> list[LocalRule]:
    """The local rule of every image (fresh pathway, then the eligible predicates).

    Args:
        features: head inputs ``[N, D]``.
        vocabulary: the class vocabularies.
        head: the linear head.
        predictions: the model's classes ``[N]`` (default ``argmax(W z + b)``).
        pathways: the images' pathways if already computed (must match ``features``).

    Example:
        >>> head = LinearHead(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
        >>> z = torch.tensor([[2.0, 1.0], [0.5, 1.5]])
        >>> vocab = fit_vocabulary(z, extract_pathways(z, head), 2, labels=torch.tensor([0, 1]))
        >>> [r.text() for r in local_rules(torch.tensor([[3.0, 0.0]]), vocab, head)]
        ['class 0 <- f0 >= 2']
    """
    if pathways is None:
        pathways = extract_pathways(features, head, predictions)
    # plain floats, one conversion for all images (Predicate.holds: the same float64 comparisons as is_active)
    z = features.detach().to("cpu", torch.float64).tolist()
    signed, lengths, predicted = (
        pathways.signed.tolist(),
        pathways.lengths.tolist(),
        pathways.predictions.tolist(),
    )
    out = []
    for i, (y, row, n) in enumerate(zip(predicted, signed, lengths)):
        cv = vocabulary[y]
        in_vocab = [p for p in map(cv.predicate, row[:n]) if p is not None]
        zi = z[i]
        eligible = [p for p in in_vocab if p.holds(zi[p.feature])]
        out.append(LocalRule(i, int(y), eligible, int(n), len(in_vocab)))
    return out


@dataclass
class GlobalRule:
    """The global rule of a class: a DNF over its source pathways, most frequent term first.

    Attributes:
        class_index: the class.
        n_source: number of source images.
        terms: ``[(predicates, count)]``, each a conjunction seen in ``count`` source pathways.
    """

    class_index: int
    n_source: int
    terms: list[tuple[list[Predicate], int]] = field(default_factory=list)

    def text(
        self,
        max_terms: int = 3,
        class_names: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> str:
        """``"class 2 <- (f17 >= 0.83 AND f40 >= 1.2) [60%] OR (f17 >= 0.83) [40%]"``, truncated.

        Example:
            >>> p = Predicate(2, 17, 1, 0.83, 2, 1.0, 64)
            >>> GlobalRule(2, 2, [([p], 2)]).text()
            'class 2 <- (f17 >= 0.83) [100%]'
        """
        head = class_label(self.class_index, class_names)
        if self.n_source == 0:
            return f"{head} <- (empty: no correctly classified source image)"
        parts = [
            f"({' AND '.join(p.text(feature_names) for p in preds)}) [{100 * n / self.n_source:.0f}%]"
            for preds, n in self.terms[:max_terms]
        ]
        more = len(self.terms) - max_terms
        tail = f" OR ... ({more} more)" if more > 0 else ""
        return f"{head} <- {' OR '.join(parts)}{tail}"


def global_rules(vocabulary: Vocabulary) -> list[GlobalRule]:
    """The global rule of every class (empty classes give an empty rule)."""
    out = []
    for cv in vocabulary.classes:
        terms = [([cv.predicate(s) for s in sids], n) for sids, n in cv.terms]
        out.append(GlobalRule(cv.class_index, cv.n_source, [(list(filter(None, t)), n) for t, n in terms]))
    return out


class RuleClassifier:
    """Predict classes from the vocabularies alone (our executable form of the global rules).

    Args:
        vocabulary: the class vocabularies.
        head: the linear head (weights for ``"restricted_logit"``).
        scoring: ``"restricted_logit"`` (default) or ``"share"`` (see the module docstring).

    Example:
        >>> head = LinearHead(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
        >>> z = torch.tensor([[2.0, 1.0], [0.5, 1.5]])
        >>> vocab = fit_vocabulary(z, extract_pathways(z, head), 2, labels=torch.tensor([0, 1]))
        >>> RuleClassifier(vocab, head, "share").predict(torch.tensor([[2.5, 0.0], [0.0, 2.0]])).tolist()
        [0, 1]
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        head: LinearHead,
        scoring: Literal["restricted_logit", "share"] = "restricted_logit",
    ) -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring={scoring!r} is not supported; choose one of {list(SCORINGS)}")
        if vocabulary.num_classes != head.num_classes or vocabulary.num_features != head.num_features:
            raise ValueError(
                f"vocabulary ({vocabulary.num_classes} classes, D={vocabulary.num_features}) does not match "
                f"the head ({head.num_classes} classes, D={head.num_features})"
            )
        self.vocabulary = vocabulary
        self.head = head
        self.scoring = scoring
        self._empty = torch.tensor([cv.empty for cv in vocabulary.classes])

    def scores(self, features: Tensor) -> Tensor:
        """``[N, C]`` float64 scores; ``-inf`` for classes with an empty vocabulary."""
        z = features.detach().to("cpu", torch.float64)
        n, c = z.shape[0], self.vocabulary.num_classes
        if self.scoring == "restricted_logit":
            mask = self.vocabulary.feature_mask().to(torch.float64)  # [C, D]
            s = self.head.bias + z @ (self.head.weight * mask).T
        else:
            active, cls = self.vocabulary.active(z)
            weights = torch.tensor([p.frequency for p in self.vocabulary.predicates], dtype=torch.float64)
            num = torch.zeros(n, c, dtype=torch.float64)
            den = torch.zeros(c, dtype=torch.float64)
            if weights.numel():
                num.index_add_(1, cls, active.to(torch.float64) * weights)
                den.index_add_(0, cls, weights)
            s = num / den.clamp_min(1e-300)
        return s.masked_fill(self._empty[None, :], -math.inf)

    def predict(self, features: Tensor, tie_logits: Tensor | None = None) -> Tensor:
        """``[N]`` predicted classes; ``-1`` where every vocabulary is empty.

        Args:
            features: head inputs ``[N, D]``.
            tie_logits: ``[N, C]`` model logits that break ties between best-scoring classes (default:
                the lowest class index wins a tie).
        """
        return self._predict(self.scores(features), tie_logits)[0]

    @staticmethod
    def _predict(scores: Tensor, tie_logits: Tensor | None) -> tuple[Tensor, Tensor]:
        best = scores.max(1, keepdim=True).values
        tied = scores == best
        if tie_logits is None:
            pick = tied.to(torch.int8).argmax(1)
        else:
            pick = tie_logits.detach().to("cpu", torch.float64).masked_fill(~tied, -math.inf).argmax(1)
        none = torch.isinf(best.squeeze(1)) & (best.squeeze(1) < 0)
        return torch.where(none, torch.full_like(pick, -1), pick), tied.sum(1) > 1


@dataclass
class RuleEvaluation:
    """How well a rule classifier reproduces the model and the labels.

    Attributes:
        scoring: the scoring evaluated.
        fidelity: agreement of rule predictions with the model's predictions (NaN if no rule exists).
        accuracy: rule predictions vs labels (NaN without labels).
        model_accuracy: the model vs labels (NaN without labels).
        coverage: share of images whose winning score is finite and nonzero ("share": some predicate of
            the winning class is active).
        tie_share: share of images whose best score was tied (the model's logit decided).
        n: number of images.
        predictions: ``[N]`` rule predictions.
    """

    scoring: str
    fidelity: float
    accuracy: float
    model_accuracy: float
    coverage: float
    tie_share: float
    n: int
    predictions: Tensor

    def to_dict(self) -> dict[str, Any]:
        return {
            "scoring": self.scoring,
            "fidelity": self.fidelity,
            "accuracy": self.accuracy,
            "model_accuracy": self.model_accuracy,
            "coverage": self.coverage,
            "tie_share": self.tie_share,
            "n": self.n,
        }


def _agreement(pred: Tensor, target: Tensor, num_classes: int) -> float:
    """Micro accuracy with torchmetrics; rows the rules could not predict (-1) count as disagreement."""
    if pred.numel() == 0:
        return math.nan
    if bool((pred < 0).all()):
        return math.nan
    # an impossible class index would be rejected; map "no rule" to a class that is never the target
    safe = torch.where(pred < 0, (target + 1) % max(num_classes, 2), pred)
    if num_classes == 1:
        return float((pred == target).double().mean())
    # the functional form: a metric object costs 10x more to build than the accuracy takes to compute
    return float(multiclass_accuracy(safe, target, num_classes, average="micro", validate_args=False))


def evaluate_rules(
    classifier: RuleClassifier,
    features: Tensor,
    logits: Tensor,
    labels: Tensor | None = None,
    predictions: Tensor | None = None,
) -> RuleEvaluation:
    """Fidelity and accuracy of ``classifier`` on ``(features, logits, labels)``.

    Args:
        classifier: the rule classifier.
        features: head inputs ``[N, D]``.
        logits: the model's logits ``[N, C]`` (its predictions, and the tie-breaker).
        labels: true labels ``[N]`` or ``None``.
        predictions: precomputed rule predictions ``[N]`` (e.g. out-of-fold, see
            :func:`crossfit_predictions`); default: the classifier's predictions on ``features``.
    """
    c = classifier.vocabulary.num_classes
    model_pred = logits.detach().to("cpu").argmax(1)
    scores = classifier.scores(features)
    pred, tied = classifier._predict(scores, logits)
    if predictions is not None:
        pred = predictions.detach().to("cpu", torch.long)
    win = scores.gather(1, pred.clamp_min(0)[:, None]).squeeze(1)
    covered = torch.isfinite(win) & (win != 0) & (pred >= 0)
    lab = labels.detach().to("cpu", torch.long) if labels is not None else None
    return RuleEvaluation(
        scoring=classifier.scoring,
        fidelity=_agreement(pred, model_pred, c),
        accuracy=_agreement(pred, lab, c) if lab is not None else math.nan,
        model_accuracy=_agreement(model_pred, lab, c) if lab is not None else math.nan,
        coverage=float(covered.double().mean()) if pred.numel() else math.nan,
        tie_share=float(tied.double().mean()) if pred.numel() else math.nan,
        n=int(pred.numel()),
        predictions=pred,
    )


def crossfit_predictions(
    features: Tensor,
    logits: Tensor,
    head: LinearHead,
    labels: Tensor | None = None,
    folds: int = 2,
    seed: int = 0,
    source: Literal["correct", "predicted"] = "correct",
    scorings: Sequence[str] = SCORINGS,
    threshold_quantile: float = 0.0,
    pathways: Pathways | None = None,
) -> dict[str, Tensor]:
    """Out-of-fold rule predictions: each image is predicted by vocabularies fit on the other folds.

    This measures fidelity on held-out images although the callback has only one sample. Images are
    assigned to folds by a seeded permutation.

    Returns:
        ``{scoring: [N] predictions}`` (``-1`` where the fold's vocabularies were all empty).
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2 for held-out predictions, got {folds}")
    n = features.shape[0]
    predictions = logits.detach().to("cpu").argmax(1)
    if pathways is None:
        pathways = extract_pathways(features, head, predictions)
    g = torch.Generator().manual_seed(int(seed))
    fold = torch.empty(n, dtype=torch.long)
    fold[torch.randperm(n, generator=g)] = torch.arange(n) % folds
    out = {s: torch.full((n,), -1, dtype=torch.long) for s in scorings}
    for k in range(folds):
        test = fold == k
        if not bool(test.any()):
            continue
        vocab = fit_vocabulary(
            features,
            pathways,
            head.num_classes,
            labels,
            source,
            threshold_quantile,
            rows=torch.nonzero(~test).flatten(),
        )
        for s in scorings:
            clf = RuleClassifier(vocab, head, s)  # type: ignore[arg-type]
            out[s][test] = clf.predict(features[test], logits[test])
    return out
