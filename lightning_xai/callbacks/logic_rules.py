"""``LogicRulesCallback``: VisionLogic rules from the head's input neurons, learned while the model trains."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_xai.callbacks.base import ExplainResult, XAICallback, check_int
from lightning_xai.capture import ValidationSample, resolve_layer
from lightning_xai.logic import (
    DEFAULT_LEVELS,
    SCORINGS,
    SOURCES,
    GroundingReport,
    GroundingTest,
    LinearHead,
    LocalRule,
    PerturbationReport,
    RuleClassifier,
    RuleEvaluation,
    Vocabulary,
    class_label,
    crossfit_predictions,
    evaluate_rules,
    extract_pathways,
    find_grounding_layer,
    fit_vocabulary,
    gaussian_blur,
    global_rules,
    ground_predicates,
    local_rules,
    perturbation_study,
    vocabulary_jaccard,
)
from lightning_xai.panels import display_image
from lightning_xai.records import Chart, Media, Table
from lightning_xai.sinks import chart_image

__all__ = ["LogicRulesCallback"]

_SCORING_CHOICES = ("auto", *SCORINGS)
_GUIDED_RGB = (0.1, 0.85, 0.2)
_RANDOM_RGB = (0.95, 0.2, 0.2)


def _fidelity_per_class(rule_pred: Tensor, model_pred: Tensor, n_classes: int) -> list[float | None]:
    """Per class, the share of the images the model assigns to it that the rules assign to it too."""
    out: list[float | None] = []
    for k in range(n_classes):
        mine = model_pred == k
        out.append(float((rule_pred.cpu()[mine] == k).double().mean()) if bool(mine.any()) else None)
    return out


def _finite_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class LogicRulesCallback(XAICallback):
    r"""VisionLogic logic rules of the classifier head, re-learned every few epochs while training.

    From the validation sample the shared capture already holds (head inputs, logits, labels; **no
    extra forward pass**) it extracts each image's pathway, fits per-class predicate vocabularies with
    thresholds, renders local and global rules, and runs the rules as a classifier to measure their
    fidelity to the model (held-out by cross-fitting) and their accuracy. On a small, bounded set of
    validation images it then grounds predicates in the image (Grad-CAM / Score-CAM of the predicate's
    neuron, blurred regions, area-matched random control) and measures predicate survival under noise,
    blur, colour jitter and occlusion. Method: :mod:`lightning_xai.logic`.

    Logged scalars (``xai/logic_rules/...``, monitorable): ``fidelity``, ``accuracy`` (the chosen
    scoring), ``fidelity/<scoring>``, ``accuracy/<scoring>``, ``model_accuracy``, ``coverage``,
    ``vocab_size`` (mean predicates per class), ``n80``, ``n80_fraction``, ``empty_classes``,
    ``pathway_length``, ``jaccard_prev`` (from the second explained epoch on),
    ``grounding/guided_success``, ``grounding/random_success``, ``grounding/occupancy_guided``,
    ``grounding/occupancy_random`` and ``survival/<kind>`` (mean over levels), plus ``time_s``.

    Tables: ``rules`` (one row per class: vocabulary, n80, Jaccard with the previous explained epoch,
    global rule), ``local_rules``, ``fidelity``, ``grounding``, ``survival``, ``vocabulary_jaccard`` and
    ``history``; line charts ``predicate_survival`` and ``history_chart``, a bar chart ``jaccard_chart``;
    media ``grounding_images`` (each image next to its blurred counterpart, accepted regions as boxes, drawn in
    green, the matched random rectangle in red) and ``survival_plot``; text ``rules`` (markdown).

    Args:
        every_n_epochs: explain every n-th epoch. Default: 1.
        max_samples: validation samples the rules are learned from. Default: 512.
        grounding_layer: feature-map layer of the CAMs (dotted name). Default ``None``: the last layer before
            the head whose map is at least 7x7 (``conv4.2`` for ``TinyCNN``, ``layer4`` for a ResNet at 224 px);
            see :func:`lightning_xai.logic.find_grounding_layer`.
        max_grounding_images: validation images whose local-rule predicates are grounded (0: no grounding).
            Default: 8.
        max_predicates_per_image: eligible predicates tested per image, in pathway order. Default: 3.
        max_perturbation_images: images of the perturbation study (0: none). Default: 16.
        grounding_every: run the grounding and the perturbation study on every n-th explained epoch, counted from
            the first (which always runs them), and on the fit's last epoch (``max_epochs``); the rules are
            learned every explained epoch. They are the only part that runs the model (about 0.25 s per run
            on the quickstart, against 0.025 s for the rules). Default: 5; 1: every explained epoch.
        perturbation_levels: strengths in (0, 1] (see :mod:`lightning_xai.logic.perturbation`).
        scoring: rule-classifier scoring: ``"auto"`` (default: the more faithful of the two, by held-out
            fidelity), ``"share"`` or ``"restricted_logit"``. Both are always reported.
        source: ``"correct"`` (default, paper protocol) or ``"predicted"``; without labels ``"predicted"``.
        crossfit_folds: folds for held-out fidelity (>= 2), or 0 for in-sample fidelity. Default: 2.
        score_cam: try Score-CAM where Grad-CAM's sweep fails. Default: True.
        threshold_quantile: 0 (reference min/max thresholds) or a quantile in (0, 0.5) against outliers.
        max_terms: DNF terms shown per global rule. Default: 3.
        class_names: class names for rules; default the model's or the datamodule's ``classes``.
        on, on_error, head, batch_to_input, seed: see :class:`~lightning_xai.callbacks.XAICallback`.

    Raises:
        MisconfigurationException: an argument is out of range (the message names the valid choices).
        lightning_xai.capture.LayerNotFoundError: at setup, ``grounding_layer`` is not a sub-module.
        lightning_xai.logic.GroundingLayerError: at the first explained epoch, ``grounding_layer`` is not a
            feature-map layer before the head (reported according to ``on_error``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_xai.callbacks.logic_rules import LogicRulesCallback
        >>> trainer = Trainer(callbacks=[LogicRulesCallback(every_n_epochs=2)])  # doctest: +SKIP
    """

    method = "logic_rules"
    needs_inputs = True

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_samples: int = 512,
        grounding_layer: str | None = None,
        max_grounding_images: int = 8,
        *,
        max_predicates_per_image: int = 3,
        max_perturbation_images: int = 16,
        grounding_every: int = 5,
        perturbation_levels: Sequence[float] = DEFAULT_LEVELS,
        scoring: Literal["auto", "share", "restricted_logit"] = "auto",
        source: Literal["correct", "predicted"] = "correct",
        crossfit_folds: int = 2,
        score_cam: bool = True,
        threshold_quantile: float = 0.0,
        max_terms: int = 3,
        class_names: Sequence[str] | None = None,
        on: Literal["validation", "train_epoch_end"] = "validation",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        head: str | None = None,
        batch_to_input: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            on=on,
            max_samples=max_samples,
            on_error=on_error,
            max_failures=max_failures,
            head=head,
            batch_to_input=batch_to_input,
            seed=seed,
        )
        if grounding_layer is not None and (not isinstance(grounding_layer, str) or not grounding_layer):
            raise MisconfigurationException(
                f"grounding_layer must be a dotted layer name or None (automatic), but got {grounding_layer!r}."
            )
        self.max_grounding_images = check_int("max_grounding_images", max_grounding_images, 0)
        self.max_predicates_per_image = check_int("max_predicates_per_image", max_predicates_per_image, 1)
        self.max_perturbation_images = check_int("max_perturbation_images", max_perturbation_images, 0)
        self.grounding_every = check_int("grounding_every", grounding_every, 1)
        self.max_terms = check_int("max_terms", max_terms, 1)
        levels = (
            [perturbation_levels]
            if isinstance(perturbation_levels, (int, float))
            else list(perturbation_levels)
        )
        if not levels or not all(isinstance(v, (int, float)) and 0 < float(v) <= 1 for v in levels):
            raise MisconfigurationException(
                f"perturbation_levels must be a non-empty list of strengths in (0, 1], but got {perturbation_levels!r}."
            )
        if scoring not in _SCORING_CHOICES:
            raise MisconfigurationException(
                f"scoring={scoring!r} is not supported; choose one of {list(_SCORING_CHOICES)}."
            )
        if source not in SOURCES:
            raise MisconfigurationException(
                f"source={source!r} is not supported; choose one of {list(SOURCES)}."
            )
        if (
            isinstance(crossfit_folds, bool)
            or not isinstance(crossfit_folds, int)
            or crossfit_folds < 0
            or crossfit_folds == 1
        ):
            raise MisconfigurationException(
                f"crossfit_folds must be 0 (in-sample fidelity) or an integer >= 2, but got {crossfit_folds!r}."
            )
        if not isinstance(threshold_quantile, (int, float)) or not 0.0 <= float(threshold_quantile) < 0.5:
            raise MisconfigurationException(
                f"threshold_quantile must lie in [0, 0.5), but got {threshold_quantile!r}."
            )
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
        ):
            raise MisconfigurationException(f"class_names must be a list of str, but got {class_names!r}.")
        self.grounding_layer = grounding_layer
        self.perturbation_levels = tuple(float(v) for v in levels)
        self.scoring = scoring
        self.source = source
        self.crossfit_folds = crossfit_folds
        self.score_cam = bool(score_cam)
        self.threshold_quantile = float(threshold_quantile)
        self.class_names = list(class_names) if class_names is not None else None
        # images are kept in the sample only if something runs the model on them
        self.needs_inputs = self.max_grounding_images > 0 or self.max_perturbation_images > 0
        self._resolved_layer: str | None = None
        self._previous: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_result: dict[str, Any] | None = None

    # ---------------------------------------------------------------- state
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "grounding_layer": self.grounding_layer,
            "max_grounding_images": self.max_grounding_images,
            "scoring": self.scoring,
            "source": self.source,
        }

    def explainer_state(self) -> dict[str, Any]:
        return {"previous": self._previous, "history": list(self.history)}

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._previous = state.get("previous")
        self.history = list(state.get("history", []))

    @property
    def previous_vocabulary(self) -> Vocabulary | None:
        """The vocabularies of the previous explained epoch (restored on resume)."""
        return Vocabulary.from_dict(self._previous["vocabulary"]) if self._previous else None

    # ---------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.grounding_layer is not None and self.needs_inputs:
            resolve_layer(pl_module, self.grounding_layer)  # a wrong name fails now, listing close names

    # ---------------------------------------------------------------- method
    def _names(self, trainer: Trainer, pl_module: LightningModule, num_classes: int) -> list[str] | None:
        for names in (
            self.class_names,
            getattr(pl_module, "classes", None),
            getattr(getattr(trainer, "datamodule", None), "classes", None),
        ):
            if (
                isinstance(names, (list, tuple))
                and len(names) == num_classes
                and all(isinstance(n, str) for n in names)
            ):
                return list(names)
        return None

    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> ExplainResult:
        epoch = trainer.current_epoch
        assert self._capture is not None and self._capture.head_name is not None
        head_name = self._capture.head_name
        head = LinearHead.from_module(resolve_layer(pl_module, head_name), head_name)
        z = sample.features.float()
        logits = sample.logits.float()
        head.check(z, logits)
        labels = sample.labels.long() if sample.labels is not None else None
        c = head.num_classes
        names = self._names(trainer, pl_module, c)
        source = self.source
        if labels is None and source == "correct":
            self._warnings.warn(
                "LogicRulesCallback: the validation batches carry no labels, so vocabularies are learned from all "
                "images grouped by prediction (source='predicted'); pass batch_to_input returning labels for the "
                "paper protocol."
            )
            source = "predicted"
        model_pred = logits.argmax(1)

        # --- rules: head inputs, logits and labels only (no forward pass)
        pathways = extract_pathways(z, head, model_pred)
        vocab = fit_vocabulary(z, pathways, c, labels, source, self.threshold_quantile)
        rules = local_rules(z, vocab, head, pathways=pathways)
        grules = global_rules(vocab)
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
        previous = self.previous_vocabulary
        jaccard = (
            vocabulary_jaccard(previous, vocab)
            if previous is not None and previous.num_classes == c
            else None
        )

        # --- grounding and perturbation: a bounded set of images, batched
        grounding: GroundingReport | None = None
        perturbation: PerturbationReport | None = None
        grounded_rows: list[int] = []
        if self.needs_inputs and sample.inputs is not None and self._grounds_this_epoch(trainer):
            if self.max_grounding_images > 0:
                layer = self._grounding_layer(pl_module, sample.inputs, head_name)
                grounded_rows = _pick_images(rules, labels, model_pred, self.max_grounding_images, self.seed)
                preds = [rules[i].predicates[: self.max_predicates_per_image] for i in grounded_rows]
                grounding = ground_predicates(
                    pl_module,
                    sample.inputs[grounded_rows],
                    preds,
                    layer,
                    head=head_name,
                    score_cam=self.score_cam,
                    seed=self.seed,
                )
            if self.max_perturbation_images > 0:
                rows = _pick_images(rules, labels, model_pred, self.max_perturbation_images, self.seed + 1)
                perturbation = perturbation_study(
                    pl_module,
                    sample.inputs[rows],
                    [rules[i].predicates for i in rows],
                    levels=self.perturbation_levels,
                    head=head_name,
                    seed=self.seed,
                    clean_features=z[rows],
                )

        return self._result(
            epoch,
            sample,
            head,
            vocab,
            rules,
            grules,
            evals,
            chosen,
            jaccard,
            grounding,
            grounded_rows,
            perturbation,
            names,
            source,
            pathways.lengths,
        )

    def wants_inputs(self, trainer: Trainer) -> bool:
        # the images serve the grounding and the perturbation study alone: copying them on the other epochs
        # (600 images of the quickstart: 30 MB per epoch) would be wasted
        return self._grounds_this_epoch(trainer)

    def _grounds_this_epoch(self, trainer: Trainer) -> bool:
        """Whether this explained epoch runs the grounding and the perturbation study (see ``grounding_every``)."""
        if len(self.explained_epochs) % self.grounding_every == 0:  # the epochs explained before this one
            return True
        max_epochs = trainer.max_epochs
        return max_epochs is not None and max_epochs > 0 and trainer.current_epoch == max_epochs - 1

    def _grounding_layer(self, pl_module: LightningModule, inputs: Tensor, head_name: str) -> str:
        if self._resolved_layer is None or self.grounding_layer is not None:
            self._resolved_layer = find_grounding_layer(
                pl_module, inputs[:1], head=head_name, layer=self.grounding_layer
            )
        return self._resolved_layer

    # ---------------------------------------------------------------- records
    def _result(
        self,
        epoch: int,
        sample: ValidationSample,
        head: LinearHead,
        vocab: Vocabulary,
        rules: list[LocalRule],
        grules: list,
        evals: dict[str, RuleEvaluation],
        chosen: str,
        jaccard: list[float] | None,
        grounding: GroundingReport | None,
        grounded_rows: list[int],
        perturbation: PerturbationReport | None,
        names: list[str] | None,
        source: str,
        lengths: Tensor,
    ) -> ExplainResult:
        ids = sample.ids.tolist()
        labels = sample.labels.tolist() if sample.labels is not None else None
        c = vocab.num_classes
        empty = [cv.class_index for cv in vocab.classes if cv.empty]
        if empty:
            shown = ", ".join(class_label(k, names) for k in empty)
            what = "correctly classified" if source == "correct" else "predicted"
            # no epoch in the text: the warning cache then says it once per set of classes, records say when
            self._warnings.warn(
                f"LogicRulesCallback: no {what} validation sample of {shown} in an explained epoch; its "
                "vocabulary and rule are reported empty (payload 'empty_classes')."
            )
        sizes = [cv.size for cv in vocab.classes]
        non_empty = [cv for cv in vocab.classes if not cv.empty]
        ev = evals[chosen]
        scalars: dict[str, float] = {
            "fidelity": ev.fidelity,
            "accuracy": ev.accuracy,
            "model_accuracy": ev.model_accuracy,
            "coverage": ev.coverage,
            "vocab_size": sum(sizes) / c,
            "n80": _finite_mean([cv.n80 for cv in non_empty]),
            "n80_fraction": _finite_mean([cv.n80_fraction for cv in non_empty]),
            "empty_classes": float(len(empty)),
            "pathway_length": float(lengths.double().mean()),
        }
        for s, e in evals.items():
            scalars[f"fidelity/{s}"] = e.fidelity
            scalars[f"accuracy/{s}"] = e.accuracy
        if jaccard is not None:
            scalars["jaccard_prev"] = _finite_mean(jaccard)

        rule_rows = []
        for cv, g in zip(vocab.classes, grules):
            k = cv.class_index
            rule_rows.append(
                [
                    k,
                    names[k] if names else str(k),
                    cv.n_source,
                    cv.size,
                    cv.n80,
                    _none_if_nan(cv.n80_fraction),
                    _none_if_nan(jaccard[k]) if jaccard is not None else None,
                    ", ".join(f"{p.text()} ({p.frequency:.0%})" for p in cv.predicates[:5]) or "(empty)",
                    g.text(self.max_terms, names),
                ]
            )
        tables = [
            Table(
                "rules",
                [
                    "class",
                    "name",
                    "n_source",
                    "vocab_size",
                    "n80",
                    "n80_fraction",
                    "jaccard_prev",
                    "top_predicates",
                    "global_rule",
                ],
                rule_rows,
            ),
            Table(
                "fidelity",
                ["scoring", "fidelity", "accuracy", "model_accuracy", "coverage", "tie_share", "chosen"],
                [
                    [
                        s,
                        _none_if_nan(e.fidelity),
                        _none_if_nan(e.accuracy),
                        _none_if_nan(e.model_accuracy),
                        _none_if_nan(e.coverage),
                        _none_if_nan(e.tie_share),
                        s == chosen,
                    ]
                    for s, e in evals.items()
                ],
            ),
        ]
        shown_rows = list(dict.fromkeys(grounded_rows + list(range(min(len(rules), 16)))))
        tables.append(
            Table(
                "local_rules",
                ["id", "label", "predicted", "rule", "pathway_length"],
                [
                    [
                        ids[i],
                        labels[i] if labels else None,
                        rules[i].predicted,
                        rules[i].text(names),
                        rules[i].pathway_length,
                    ]
                    for i in shown_rows
                ],
            )
        )
        charts: list[Chart] = []
        media: list[Media] = []
        if jaccard is not None:
            jt = Table(
                "vocabulary_jaccard",
                ["class", "jaccard_prev"],
                [[names[k] if names else str(k), _none_if_nan(v)] for k, v in enumerate(jaccard)],
            )
            tables.append(jt)
            charts.append(
                Chart(
                    "jaccard_chart",
                    "bar",
                    jt,
                    "class",
                    "jaccard_prev",
                    title=f"Vocabulary Jaccard, epoch {epoch} vs {self._previous['epoch']}",
                )
            )

        entry: dict[str, Any] = {
            "epoch": epoch,
            "fidelity": _none_if_nan(ev.fidelity),
            "accuracy": _none_if_nan(ev.accuracy),
            "vocab_size": scalars["vocab_size"],
            "n80": _none_if_nan(scalars["n80"]),
            "jaccard_prev": _none_if_nan(scalars.get("jaccard_prev", math.nan)),
        }
        grounding_payload = None
        if grounding is not None:
            summary = grounding.summary()
            for key in ("guided_success", "random_success", "occupancy_guided", "occupancy_random"):
                scalars[f"grounding/{key}"] = summary[key]
            entry["guided_success"] = _none_if_nan(summary["guided_success"])
            entry["random_success"] = _none_if_nan(summary["random_success"])
            tests = []
            for t in grounding.tests:
                d = t.to_dict()
                d["id"] = ids[grounded_rows[t.image]]
                tests.append(d)
            grounding_payload = {**summary, "ids": [ids[i] for i in grounded_rows], "tests": tests}
            tables.append(
                Table(
                    "grounding",
                    [
                        "id",
                        "class",
                        "predicate",
                        "accepted",
                        "stage",
                        "cutoff",
                        "area",
                        "random_accepted",
                        "random_area",
                        "skipped",
                    ],
                    [
                        [
                            d["id"],
                            d["class"],
                            d["predicate"],
                            d["accepted"],
                            d["stage"],
                            d["cutoff"],
                            d["area"],
                            d["random_accepted"],
                            d["random_area"],
                            d["skipped"],
                        ]
                        for d in tests
                    ],
                )
            )
            media.extend(self._grounding_media(sample, grounding, grounded_rows, rules, names))
        perturbation_payload = None
        if perturbation is not None:
            perturbation_payload = perturbation.to_dict()
            for k, curve in perturbation.survival.items():
                scalars[f"survival/{k}"] = _finite_mean(curve)
            st = Table(
                "survival",
                ["level", *perturbation.survival],
                [
                    [lv, *(_none_if_nan(perturbation.survival[k][i]) for k in perturbation.survival)]
                    for i, lv in enumerate(perturbation.levels)
                ],
            )
            tables.append(st)
            chart = Chart(
                "predicate_survival",
                "line",
                st,
                "level",
                list(perturbation.survival),
                title=f"Share of active predicates that survive, epoch {epoch}",
            )
            charts.append(chart)
            media.append(
                Media("survival_plot", chart_image(chart), caption=f"Predicate survival, epoch {epoch}")
            )

        self.history.append(entry)
        hist_cols = [
            "epoch",
            "fidelity",
            "accuracy",
            "vocab_size",
            "n80",
            "jaccard_prev",
            "guided_success",
            "random_success",
        ]
        ht = Table("history", hist_cols, [[h.get(col) for col in hist_cols] for h in self.history])
        tables.append(ht)
        charts.append(
            Chart(
                "history_chart",
                "line",
                ht,
                "epoch",
                ["fidelity", "guided_success", "random_success"],
                title="Rule fidelity and grounding success per explained epoch",
            )
        )

        payload: dict[str, Any] = {
            "n_samples": len(sample),
            "num_features": head.num_features,
            "head": head.name,
            "classes": names,
            "source": source,
            "n_source": [cv.n_source for cv in vocab.classes],
            "empty_classes": empty,
            "scoring": chosen,
            "crossfit_folds": self.crossfit_folds,
            "evaluation": {s: e.to_dict() for s, e in evals.items()},
            # per class: the share of the images the model assigns to it that the rules assign to it too
            "fidelity_per_class": _fidelity_per_class(ev.predictions, sample.logits.argmax(1).cpu(), c),
            "vocabulary": vocab.to_dict(),
            "n80": [cv.n80 for cv in vocab.classes],
            "global_rules": [g.text(self.max_terms, names) for g in grules],
            "local_rules": [dict(rules[i].to_dict(names), id=ids[i]) for i in shown_rows],
            "pathway_length": {
                "mean": float(lengths.double().mean()),
                "median": float(lengths.double().median()),
            },
            "eligibility": _finite_mean([r.eligibility for r in rules]),
            "retention": _finite_mean([r.retention for r in rules]),
            "previous_epoch": self._previous["epoch"] if self._previous else None,
            "jaccard_prev": None if jaccard is None else [_none_if_nan(v) for v in jaccard],
            "grounding": grounding_payload,
            "perturbation": perturbation_payload,
            "history": list(self.history),
        }
        text = {"rules": "\n".join(f"- {g.text(self.max_terms, names)}" for g in grules)}
        self._previous = {"epoch": epoch, "vocabulary": vocab.to_dict()}
        self.last_result = {
            "vocabulary": vocab,
            "rules": rules,
            "evaluations": evals,
            "grounding": grounding,
            "grounded_rows": grounded_rows,
            "perturbation": perturbation,
            "scoring": chosen,
        }
        return ExplainResult(
            payload=payload, scalars=scalars, tables=tables, charts=charts, media=media, text=text
        )

    def _grounding_media(
        self,
        sample: ValidationSample,
        grounding: GroundingReport,
        rows: list[int],
        rules: list[LocalRule],
        names: list[str] | None,
    ) -> list[Media]:
        inputs = sample.inputs
        assert inputs is not None
        out = []
        for k, i in enumerate(rows):
            tests = [t for t in grounding.tests if t.image == k]
            image = _displayable(inputs[i])
            if image is None:
                continue
            out.append(_grounding_panel(image, tests, f"id {int(sample.ids[i])}: {rules[i].text(names)}"))
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


def _displayable(image: Tensor) -> Tensor | None:
    """``[3, H, W]`` in [0, 1] for display (see :func:`~lightning_xai.panels.display_image`), or None for an
    image that is not grey or RGB."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        return None
    return display_image(image)


def _draw_rect(
    img: Tensor, box: tuple[int, int, int, int], rgb: tuple[float, float, float], scale: int, dx: int
) -> None:
    x0, y0, x1, y1 = (int(v) * scale for v in box)
    x0, x1 = x0 + dx, x1 + dx
    h, w = img.shape[1:]
    t = max(1, scale // 2)
    colour = torch.tensor(rgb)[:, None, None]
    x1, y1 = min(x1, w), min(y1, h)
    img[:, y0 : min(y0 + t, y1), x0:x1] = colour
    img[:, max(y1 - t, y0) : y1, x0:x1] = colour
    img[:, y0:y1, x0 : min(x0 + t, x1)] = colour
    img[:, y0:y1, max(x1 - t, x0) : x1] = colour


def _grounding_panel(image: Tensor, tests: list[GroundingTest], title: str) -> Media:
    """The image (boxes as metadata, for W&B/TensorBoard) next to the image with its accepted regions
    blurred, the regions drawn in green and the matched random rectangles in red, so sinks without box
    support still show them."""
    scale = max(1, 192 // max(image.shape[1:]))
    removed = np.zeros(image.shape[1:], dtype=bool)
    for t in tests:
        if t.accepted and t.region is not None:
            removed |= t.region
    # the right panel is the counterfactual the test ran: accepted regions replaced by the same blur
    blurred = gaussian_blur(image[None], 20.0 * min(image.shape[1:]) / 224.0)[0]
    after = torch.where(torch.from_numpy(removed)[None], blurred, image)

    def up(x: Tensor) -> Tensor:
        return x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)

    big = up(image)
    _, h, w = big.shape
    gap = 4
    panel = torch.ones(3, h, 2 * w + gap)
    panel[:, :, :w] = big
    panel[:, :, w + gap :] = up(after)
    boxes: list[dict[str, Any]] = []
    lines = []
    for t in tests:
        pred = t.predicate.text()
        if t.skipped:
            lines.append(f"{pred}: skipped ({t.skipped})")
            continue
        if t.accepted:
            for b in t.boxes:
                _draw_rect(panel, b, _GUIDED_RGB, scale, w + gap)
                boxes.append(
                    {
                        "x0": b[0] * scale,
                        "y0": b[1] * scale,
                        "x1": b[2] * scale,
                        "y1": b[3] * scale,
                        "label": pred,
                        "group": "guided",
                        "score": float(t.area or 0.0),
                    }
                )
            if t.matched_random_region is not None:
                ys, xs = np.nonzero(t.matched_random_region)
                rb = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                _draw_rect(panel, rb, _RANDOM_RGB, scale, w + gap)
                boxes.append(
                    {
                        "x0": rb[0] * scale,
                        "y0": rb[1] * scale,
                        "x1": rb[2] * scale,
                        "y1": rb[3] * scale,
                        "label": f"random ({pred})",
                        "group": "random",
                    }
                )
        guided = (
            f"removed by {t.stage} region at cutoff {t.cutoff:.2f} ({t.area:.0%} of image)"
            if t.accepted
            else "no region removed it"
        )
        rnd = "random removed it" if t.random_accepted else "random did not"
        lines.append(f"{pred}: {guided}; {rnd}")
    caption = title + (" | " + " | ".join(lines) if lines else "")
    return Media("grounding_images", panel.clamp(0, 1), caption=caption, boxes=boxes or None)
