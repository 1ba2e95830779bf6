"""``LogicRulesCallback``: VisionLogic rules from the head's input neurons, learned while the model trains."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback, check_int, misconfigured
from lightning_xai.capture import HeadNotFoundError, ValidationSample, resolve_layer
from lightning_xai.logic import DEFAULT_LEVELS, LinearHead, LogicRules, class_label
from lightning_xai.results.logic_rules import LogicRulesResult

__all__ = ["LogicRulesCallback"]


class LogicRulesCallback(XAICallback):
    r"""VisionLogic logic rules of the classifier head, re-learned every few epochs while training.

    From the validation sample the shared capture already holds (head inputs, logits, labels; **no
    extra forward pass**) it extracts each image's pathway, fits per-class predicate vocabularies with
    thresholds, renders local and global rules, and runs the rules as a classifier to measure their
    fidelity to the model (held-out by cross-fitting) and their accuracy. On a small, bounded set of
    validation images it then grounds predicates in the image (Grad-CAM / Score-CAM of the predicate's
    neuron, blurred regions, area-matched random control) and measures predicate survival under noise,
    blur, colour jitter and occlusion. The method is :class:`lightning_xai.logic.LogicRules`, configured
    once from the arguments below (attribute ``logic_rules``); this callback decides when it runs and on
    which data.

    Each explained epoch writes one record ``{"method": "logic_rules", "name": "epoch"}`` whose payload is a
    :class:`~lightning_xai.results.logic_rules.LogicRulesResult` (its fields are documented there), and
    logs what :meth:`LogicRulesResult.logged <lightning_xai.results.logic_rules.LogicRulesResult.logged>`
    lists: scalars ``xai/logic_rules/...`` (monitorable: ``fidelity``, ``accuracy``, ``vocab_size``, ``n80``,
    ``grounding/guided_success``, ``survival/<kind>``, ..., plus ``time_s``; with ``log_scalars="all"`` also
    ``fidelity/<scoring>`` and ``accuracy/<scoring>``), the
    tables ``rules``, ``local_rules``, ``fidelity``, ``grounding`` and ``survival``, the chart
    ``predicate_survival``, the media ``grounding_images`` (each image next to its blurred counterpart,
    accepted regions as green boxes, the matched random rectangle in red) and ``survival_plot``, and the text
    ``rules`` (markdown). A record holds its own epoch only: how the vocabularies change between epochs is
    the :class:`~lightning_xai.callbacks.ConceptDriftMonitor`'s (kind ``rule_jaccard``). After an explained
    epoch, ``last_result`` is its :class:`~lightning_xai.results.logic_rules.LogicRulesResult` (without the
    grounded images, which were logged as media).

    Args:
        every_n_epochs: explain every n-th epoch. Default: 1.
        max_samples: validation samples the rules are learned from. Default: 512.
        grounding_layer: feature-map layer of the CAMs (dotted name). Default ``None``: the last layer before the
            head whose map is at least 7x7 (``conv4.2`` for ``TinyCNN``, ``layer4`` for a ResNet at 224 px);
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
        **base: ``on``, ``on_error``, ``max_failures``, ``head``, ``batch_to_input``, ``seed``: see
            :class:`~lightning_xai.callbacks.XAICallback`.

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
        *,
        every_n_epochs: int = 1,
        max_samples: int = 512,
        grounding_layer: str | None = None,
        max_grounding_images: int = 8,
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
        **base: Any,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            max_samples=max_samples,
            **base,
        )
        with misconfigured():
            self.logic_rules = LogicRules(
                scoring=scoring,
                source=source,
                crossfit_folds=crossfit_folds,
                threshold_quantile=threshold_quantile,
                max_terms=max_terms,
                grounding_layer=grounding_layer,
                max_grounding_images=max_grounding_images,
                max_predicates_per_image=max_predicates_per_image,
                max_perturbation_images=max_perturbation_images,
                perturbation_levels=perturbation_levels,
                score_cam=score_cam,
                seed=self.seed,
            )
        self.grounding_every = check_int("grounding_every", grounding_every, 1)
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
        ):
            raise MisconfigurationException(f"class_names must be a list of str, but got {class_names!r}.")
        self.class_names = list(class_names) if class_names is not None else None
        # images are kept in the sample only if something runs the model on them
        self.needs_inputs = self.logic_rules.runs_model
        self.last_result: LogicRulesResult | None = None

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        rules = self.logic_rules
        return {
            **super()._state_key_fields(),
            "grounding_layer": rules.grounding_layer,
            "max_grounding_images": rules.max_grounding_images,
            "scoring": rules.scoring,
            "source": rules.source,
        }

    # ---------------------------------------------------------------- hooks
    @override
    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        assert self._capture is not None and self._capture.head_name is not None
        head = resolve_layer(pl_module, self._capture.head_name)
        if not isinstance(head, nn.Linear):
            raise HeadNotFoundError(
                f"LogicRulesCallback needs a linear head: VisionLogic reads its weights (logits = W z + b), but "
                f"head={self._capture.head_name!r} is a {type(head).__name__}. Name the final nn.Linear with "
                "head='<name>', or leave LogicRulesCallback out for this model (the other callbacks explain it)."
            )
        layer = self.logic_rules.grounding_layer
        if layer is not None and self.needs_inputs:
            resolve_layer(pl_module, layer)  # a wrong name fails now, listing close names

    # ---------------------------------------------------------------- method
    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> LogicRulesResult:
        assert self._capture is not None and self._capture.head_name is not None
        head_name = self._capture.head_name
        head = LinearHead.from_module(resolve_layer(pl_module, head_name), head_name)
        # the images serve the grounding and the perturbation study alone, on their epochs
        grounds = self.needs_inputs and sample.inputs is not None and self._grounds_this_epoch(trainer)
        result = self.logic_rules.explain(
            sample.features,
            sample.logits,
            sample.labels,
            head,
            model=pl_module if grounds else None,
            images=sample.inputs if grounds else None,
            ids=sample.ids,
            class_names=self.class_names_for(trainer, pl_module, head.num_classes),
            computed_in=sample.computed_in,
        )
        if sample.labels is None and self.logic_rules.source == "correct":
            self._warnings.warn(
                "LogicRulesCallback: the validation batches carry no labels, so vocabularies are learned from all "
                "images grouped by prediction (source='predicted'); pass batch_to_input returning labels for the "
                "paper protocol."
            )
        if result.empty_classes:
            shown = ", ".join(class_label(k, result.classes) for k in result.empty_classes)
            what = "correctly classified" if result.source == "correct" else "predicted"
            # no epoch in the text: the warning cache then says it once per set of classes, records say when
            self._warnings.warn(
                f"LogicRulesCallback: no {what} validation sample of {shown} in an explained epoch; its "
                "vocabulary and rule are reported empty (payload 'empty_classes')."
            )
        # the grounded images go out as media with this result; the callback keeps no image tensors between epochs
        self.last_result = dataclasses.replace(result, grounded_images=None)
        return result

    @override
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
