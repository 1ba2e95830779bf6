"""VisionLogic's entry point: :class:`LogicRules`, configured once, explains one epoch per call.

:meth:`LogicRules.explain` chains the pipeline of this package (pathways, vocabularies, local and global
rules, the rule classifier with its held-out fidelity, grounding and the perturbation study) and returns a
:class:`~lightning_xai.results.logic_rules.LogicRulesResult`. The rules need only the head's inputs, the
logits and the labels; grounding and the perturbation study run the model on a few images when the model
and the images are given.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from lightning_xai import checks
from lightning_xai.logic.grounding import GroundingReport, find_grounding_layer, ground_predicates
from lightning_xai.logic.pathways import LinearHead, extract_pathways
from lightning_xai.logic.perturbation import DEFAULT_LEVELS, PerturbationReport, perturbation_study
from lightning_xai.logic.rules import (
    SCORINGS,
    LocalRule,
    RuleClassifier,
    RuleEvaluation,
    crossfit_predictions,
    evaluate_rules,
    finite_mean,
    global_rules,
    local_rules,
)
from lightning_xai.logic.vocabulary import SOURCES, fit_vocabulary

if TYPE_CHECKING:
    from lightning_xai.results.logic_rules import GroundingSummary, LogicRulesResult

__all__ = ["LOCAL_RULES_KEPT", "SCORING_CHOICES", "LogicRules"]

#: the ``scoring`` values :class:`LogicRules` takes: ``"auto"`` picks the more faithful of :data:`SCORINGS`
SCORING_CHOICES = ("auto", *SCORINGS)
#: images whose local rules a result keeps besides the grounded ones (the sample's first)
LOCAL_RULES_KEPT = 16


class LogicRules:
    """VisionLogic rules of a classifier's linear head, with their fidelity and their grounding in the image.

    Args:
        scoring: the rule classifier's scoring reported as ``fidelity``/``accuracy``: ``"auto"`` (the more
            faithful of the two, by held-out fidelity), ``"share"`` or ``"restricted_logit"``. Both are always
            evaluated.
        source: ``"correct"`` (correctly classified images, the paper's protocol) or ``"predicted"`` (all images
            by prediction). Without labels, ``"predicted"`` is used (the result's ``source`` says so).
        crossfit_folds: folds of the held-out fidelity (>= 2), or 0 for in-sample fidelity.
        threshold_quantile: 0 (the reference's min/max thresholds) or a quantile in (0, 0.5) against outliers.
        max_terms: DNF terms shown per global rule.
        grounding_layer: the CAM layer (dotted name); ``None``: the last layer before the head whose map is at
            least 7x7 (see :func:`~lightning_xai.logic.find_grounding_layer`), found once per model.
        max_grounding_images: images whose local-rule predicates are grounded (0: no grounding).
        max_predicates_per_image: eligible predicates tested per image, in pathway order.
        max_perturbation_images: images of the perturbation study (0: none).
        perturbation_levels: strengths in (0, 1] (see :mod:`lightning_xai.logic.perturbation`).
        score_cam: try Score-CAM where Grad-CAM's sweep fails.
        seed: seed of the cross-fitting folds, of the images picked and of the random controls.

    Raises:
        ValueError: an argument is out of range (the message names the valid values).

    Example:
        >>> head = LinearHead(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64), torch.zeros(2))
        >>> z = torch.tensor([[2.0, 0.5], [1.5, 0.0], [0.2, 1.0], [0.0, 2.0]])
        >>> result = LogicRules(crossfit_folds=0).explain(z, head.logits(z), torch.tensor([0, 0, 1, 1]), head)
        >>> result.global_rules
        ['class 0 <- (f0 >= 1.5) [100%]', 'class 1 <- (f1 >= 1) [100%]']
        >>> result.evaluation[result.scoring].fidelity
        1.0
    """

    def __init__(
        self,
        *,
        scoring: Literal["auto", "share", "restricted_logit"] = "auto",
        source: Literal["correct", "predicted"] = "correct",
        crossfit_folds: int = 2,
        threshold_quantile: float = 0.0,
        max_terms: int = 3,
        grounding_layer: str | None = None,
        max_grounding_images: int = 8,
        max_predicates_per_image: int = 3,
        max_perturbation_images: int = 16,
        perturbation_levels: Sequence[float] | float = DEFAULT_LEVELS,
        score_cam: bool = True,
        seed: int = 0,
    ) -> None:
        if grounding_layer is not None and (not isinstance(grounding_layer, str) or not grounding_layer):
            raise ValueError(
                f"grounding_layer must be a dotted layer name or None (automatic), but got {grounding_layer!r}."
            )
        self.max_grounding_images = checks.check_int("max_grounding_images", max_grounding_images, 0)
        self.max_predicates_per_image = checks.check_int(
            "max_predicates_per_image", max_predicates_per_image, 1
        )
        self.max_perturbation_images = checks.check_int("max_perturbation_images", max_perturbation_images, 0)
        self.max_terms = checks.check_int("max_terms", max_terms, 1)
        levels = (
            [perturbation_levels]
            if isinstance(perturbation_levels, (int, float))
            else list(perturbation_levels)
        )
        if not levels or not all(isinstance(v, (int, float)) and 0 < float(v) <= 1 for v in levels):
            raise ValueError(
                f"perturbation_levels must be a non-empty list of strengths in (0, 1], but got {perturbation_levels!r}."
            )
        self.scoring = checks.check_choice("scoring", scoring, SCORING_CHOICES)
        self.source = checks.check_choice("source", source, SOURCES)
        if (
            isinstance(crossfit_folds, bool)
            or not isinstance(crossfit_folds, int)
            or crossfit_folds < 0
            or crossfit_folds == 1
        ):
            raise ValueError(
                f"crossfit_folds must be 0 (in-sample fidelity) or an integer >= 2, but got {crossfit_folds!r}."
            )
        if not isinstance(threshold_quantile, (int, float)) or not 0.0 <= float(threshold_quantile) < 0.5:
            raise ValueError(f"threshold_quantile must lie in [0, 0.5), but got {threshold_quantile!r}.")
        self.grounding_layer = grounding_layer
        self.perturbation_levels = tuple(float(v) for v in levels)
        self.crossfit_folds = crossfit_folds
        self.threshold_quantile = float(threshold_quantile)
        self.score_cam = bool(score_cam)
        self.seed = int(seed)
        self._layers: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict[str, object]:
        # the layers found are a cache of weak references (not picklable): a copy finds them again
        return {k: v for k, v in self.__dict__.items() if k != "_layers"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._layers = weakref.WeakKeyDictionary()

    @property
    def runs_model(self) -> bool:
        """Whether :meth:`explain` runs the model when given it and images (grounding or perturbation on)."""
        return self.max_grounding_images > 0 or self.max_perturbation_images > 0

    def explain(
        self,
        features: Tensor,
        logits: Tensor,
        labels: Tensor | None = None,
        head: LinearHead | nn.Linear | None = None,
        *,
        model: nn.Module | None = None,
        images: Tensor | None = None,
        ids: Tensor | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        computed_in: torch.dtype = torch.float32,
    ) -> LogicRulesResult:
        """The rules of ``head`` on these images, their fidelity and (with ``model`` and ``images``) grounding.

        Args:
            features: the head's inputs ``[N, D]`` (float32 or float64; other dtypes become float32).
            logits: the model's logits ``[N, C]``, which ``head`` must reproduce from ``features``.
            labels: true labels ``[N]``, or ``None`` (then vocabularies come from all images by prediction).
            head: the classifier's final linear layer as a :class:`~lightning_xai.logic.LinearHead` or an
                ``nn.Linear``; ``None``: the last ``nn.Linear`` of ``model``.
            model: the network, for grounding and the perturbation study (any mode; modes are restored).
            images: the model inputs ``[N, C, H, W]`` of the same rows; without them (or without ``model``)
                only the rules are learned, and the model is never run.
            ids: sample ids of the rows, shown in the local rules and grounding (default ``0..N-1``).
            class_names: ``C`` class names for the rules (default: class indices).
            computed_in: the dtype the model computed ``logits`` in (``torch.bfloat16`` under ``bf16-mixed``):
                the head check allows for its rounding (:meth:`~lightning_xai.logic.LinearHead.check`).

        Raises:
            lightning_xai.logic.HeadMismatchError: ``W z + b`` of the head does not reproduce ``logits``.
            lightning_xai.logic.GroundingLayerError: ``grounding_layer`` is not a feature-map layer before the
                head (only when grounding runs).
            ValueError: no head and no model, or inputs whose sizes disagree.
        """
        # imported here: the result module reads Vocabulary and PerturbationReport from this package
        from lightning_xai.results.logic_rules import ImageRule, LogicRulesResult, ScoringEvaluation

        head = self._head(head, model)
        z, logits = _floating(features), _floating(logits)
        head.check(z, logits, computed_in=computed_in)
        n, c = z.shape[0], head.num_classes
        names = list(class_names) if class_names is not None else None
        if names is not None and len(names) != c:
            raise ValueError(f"got {len(names)} class names for a head of {c} classes")
        labels = labels.detach().to("cpu", torch.long) if labels is not None else None
        source = self.source if labels is not None else "predicted"
        row_ids = (
            list(range(n))
            if ids is None
            else [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        )
        if len(row_ids) != n:
            raise ValueError(f"got {len(row_ids)} ids for {n} rows of features")
        if labels is not None and labels.shape != (n,):
            raise ValueError(f"labels must be [N] = [{n}], got shape {tuple(labels.shape)}")
        model_pred = logits.argmax(1)

        # rules: head inputs, logits and labels only (no forward pass)
        pathways = extract_pathways(z, head, model_pred)
        vocab = fit_vocabulary(z, pathways, c, labels, source, self.threshold_quantile)
        rules = local_rules(z, vocab, head, pathways=pathways)
        oof = (
            crossfit_predictions(
                z,
                logits,
                head,
                labels,
                self.crossfit_folds,
                self.seed,
                source,
                SCORINGS,
                self.threshold_quantile,
                pathways,
            )
            if self.crossfit_folds >= 2
            else {}
        )
        evals = {
            s: evaluate_rules(RuleClassifier(vocab, head, s), z, logits, labels, predictions=oof.get(s))
            for s in SCORINGS
        }
        chosen = self.scoring if self.scoring != "auto" else _more_faithful(evals)

        grounded, grounding, perturbation = self._run_model(
            model, images, z, rules, labels, model_pred, head.name
        )
        label_list = labels.tolist() if labels is not None else None
        kept = list(dict.fromkeys(grounded + list(range(min(n, LOCAL_RULES_KEPT)))))
        lengths = pathways.lengths.double()
        return LogicRulesResult(
            n_samples=n,
            num_features=head.num_features,
            head=head.name,
            classes=names,
            source=source,
            n_source=[cv.n_source for cv in vocab.classes],
            empty_classes=[cv.class_index for cv in vocab.classes if cv.empty],
            scoring=chosen,
            crossfit_folds=self.crossfit_folds,
            evaluation={s: ScoringEvaluation.read(e.to_dict()) for s, e in evals.items()},
            fidelity_per_class=_fidelity_per_class(evals[chosen].predictions, model_pred.cpu(), c),
            vocabulary=vocab,
            n80=[cv.n80 for cv in vocab.classes],
            global_rules=[g.text(self.max_terms, names) for g in global_rules(vocab)],
            local_rules=[
                ImageRule(
                    index=rules[i].index,
                    class_index=rules[i].predicted,
                    rule=rules[i].text(names),
                    predicates=[p.signed_id for p in rules[i].predicates],
                    pathway_length=rules[i].pathway_length,
                    in_vocabulary=rules[i].in_vocabulary,
                    id=row_ids[i],
                    label=label_list[i] if label_list is not None else None,
                )
                for i in kept
            ],
            pathway_length={"mean": float(lengths.mean()), "median": float(lengths.median())},
            eligibility=finite_mean([r.eligibility for r in rules]),
            retention=finite_mean([r.retention for r in rules]),
            grounding=None
            if grounding is None
            else _grounding_summary(grounding, [row_ids[i] for i in grounded]),
            perturbation=perturbation,
            grounding_report=grounding,
            grounded_images=None if grounding is None or images is None else images[grounded].detach().cpu(),
        )

    def _run_model(
        self,
        model: nn.Module | None,
        images: Tensor | None,
        z: Tensor,
        rules: list[LocalRule],
        labels: Tensor | None,
        model_pred: Tensor,
        head: str | None,
    ) -> tuple[list[int], GroundingReport | None, PerturbationReport | None]:
        """Grounding and the perturbation study on a bounded set of images, batched: the rows grounded, the
        grounding report and the perturbation report (empty and ``None`` without a model or images)."""
        if model is None or images is None:
            return [], None, None
        if images.shape[0] != z.shape[0]:
            raise ValueError(f"got {images.shape[0]} images for {z.shape[0]} rows of features")
        grounded: list[int] = []
        grounding = perturbation = None
        if self.max_grounding_images > 0:
            layer = self._grounding_layer(model, images, head)
            grounded = _pick_images(rules, labels, model_pred, self.max_grounding_images, self.seed)
            grounding = ground_predicates(
                model,
                images[grounded],
                [rules[i].predicates[: self.max_predicates_per_image] for i in grounded],
                layer,
                head=head,
                score_cam=self.score_cam,
                seed=self.seed,
            )
        if self.max_perturbation_images > 0:
            rows = _pick_images(rules, labels, model_pred, self.max_perturbation_images, self.seed + 1)
            perturbation = perturbation_study(
                model,
                images[rows],
                [rules[i].predicates for i in rows],
                levels=self.perturbation_levels,
                head=head,
                seed=self.seed,
                clean_features=z[rows],
            )
        return grounded, grounding, perturbation

    def _head(self, head: LinearHead | nn.Linear | None, model: nn.Module | None) -> LinearHead:
        if isinstance(head, LinearHead):
            return head
        if isinstance(head, nn.Module):
            return LinearHead.from_module(head)  # raises for a module that is not an nn.Linear
        if head is None and model is not None:
            return LinearHead.from_model(model)
        raise ValueError(
            f"head must be a LinearHead or the classifier's nn.Linear (or None with a model), but got "
            f"{type(head).__name__}"
        )

    def _grounding_layer(self, model: nn.Module, images: Tensor, head: str | None) -> str:
        """The CAM layer: ``grounding_layer`` checked on every call, or the default found once per model."""
        if self.grounding_layer is not None:
            return find_grounding_layer(model, images[:1], head=head, layer=self.grounding_layer)
        layer = self._layers.get(model)
        if layer is None:
            layer = self._layers[model] = find_grounding_layer(model, images[:1], head=head)
        return layer


def _grounding_summary(report: GroundingReport, ids: list[int]) -> GroundingSummary:
    """``report`` as the result's :class:`~lightning_xai.results.logic_rules.GroundingSummary` (``ids``: the
    sample ids of the grounded images, in their order)."""
    from lightning_xai.results.logic_rules import GroundingSummary, PredicateGrounding

    tests = [PredicateGrounding.read({**t.to_dict(), "id": ids[t.image]}) for t in report.tests]
    return GroundingSummary(**report.summary(), ids=ids, tests=tests)


def _floating(t: Tensor) -> Tensor:
    t = t.detach()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _fidelity_per_class(rule_pred: Tensor, model_pred: Tensor, n_classes: int) -> list[float | None]:
    """Per class, the share of the images the model assigns to it that the rules assign to it too."""
    out: list[float | None] = []
    for k in range(n_classes):
        mine = model_pred == k
        out.append(float((rule_pred.cpu()[mine] == k).double().mean()) if bool(mine.any()) else None)
    return out


def _more_faithful(evals: dict[str, RuleEvaluation]) -> str:
    """The scoring with the highest fidelity (the first of :data:`SCORINGS` on a tie or NaN)."""
    best, best_fid = SCORINGS[0], -1.0
    for s in SCORINGS:
        f = evals[s].fidelity
        if math.isfinite(f) and f > best_fid:
            best, best_fid = s, f
    return best


def _pick_images(rules: list[LocalRule], labels: Tensor | None, pred: Tensor, k: int, seed: int) -> list[int]:
    """Up to ``k`` rows with at least one eligible predicate (correctly classified if labels exist),
    classes taken in turn so every class appears, seeded order within a class."""
    ok = [
        i for i, r in enumerate(rules) if r.predicates and (labels is None or int(labels[i]) == int(pred[i]))
    ]
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list[int]] = {}
    for i in ok:
        by_class.setdefault(int(pred[i]), []).append(i)
    queues = {}
    for cls, rows in sorted(by_class.items()):
        order = torch.randperm(len(rows), generator=g).tolist()
        queues[cls] = [rows[j] for j in order]
    picked: list[int] = []
    while len(picked) < k and any(queues.values()):
        for cls in sorted(queues):
            if queues[cls] and len(picked) < k:
                picked.append(queues[cls].pop(0))
    return sorted(picked)
