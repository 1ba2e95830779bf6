"""DiffExplainer in one call: :class:`DiffExplainer` is configured once, :meth:`DiffExplainer.explain` explains
a classifier in its current state and returns a
:class:`~lightning_xai.results.diffusion_explainer.DiffusionExplainerResult`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai import checks
from lightning_xai.capture import explanation_mode
from lightning_xai.results.diffusion_explainer import (
    BiasReport,
    DiffusionExplainerResult,
    Target,
    TargetExplanation,
)

from .bias import bias_report, suspects
from .optimize import PromptResult, ablation_effects, classifier_logits, optimize_prompt
from .prompt import PromptGenerator

__all__ = ["DiffExplainer"]

_GENERATOR_METHODS = ("render", "init_prompt", "images", "readout")


class DiffExplainer:
    """DiffExplainer (Pennisi et al. 2024): what each class or neuron of a classifier has come to look for.

    For each target, the generator's prompt is optimised (:func:`~lightning_xai.diffexplainer.optimize_prompt`)
    so that its images maximise the target (``-log p(class)``, or a neuron's activation), warm-started from the
    target's last optimised prompt (:attr:`prompts`); the prompt is read out in words and rendered with display
    seeds, and, with a concept detector, concepts the images show far more often than the unoptimised prompt's
    images and that are not the target's core concepts are flagged as suspected spurious features
    (:func:`~lightning_xai.diffexplainer.bias_report`, checked by removing them from the prompt when
    ``confirm``).

    Args:
        generator: a :class:`~lightning_xai.diffexplainer.PromptGenerator`.
        model: the classifier :meth:`explain` explains when it is given none.
        targets: class indices, ``"class:3"``, ``"neuron:12"``, ``"channel:<layer>:5"`` or :class:`Target`\\ s.
            Default: every class of the classifier.
        steps, lr, proximity, early_stop, min_prob, preprocess: see
            :func:`~lightning_xai.diffexplainer.optimize_prompt` (defaults 200, the generator's ``default_lr``,
            the generator's ``proximity``, 3, 0.9, none).
        init: the initial word or caption of every target, or ``{target (index, label or str(index)): word}``.
        warm_start: start each target from its last optimised prompt. Default: True.
        n_images: images made from each optimised prompt (display and bias report). Default: 16.
        concept_detector: ``images -> {concept: scores in [0, 1]}`` for the bias report; None: no report.
        core_concepts: the declared core concepts of each class, ``{class index or name: [concepts]}`` or a
            callable ``class index -> concepts``; needed with a detector.
        min_excess, min_score, min_effect: the bias report's thresholds (defaults 0.3, 0.5, 0.05).
        confirm: check each over-represented concept by removing it from the prompt (generators with
            ``ablate``). Default: True.
        seed: picks the display seeds (``10000 + 97 * seed + i``).
        show_progress: progress bars over targets and steps.
        prompts: warm starts to begin with, by target label (kept and updated in place: :attr:`prompts`).

    Attributes:
        prompts: the last optimised prompt of every target, by label (what a resumed run must keep).
        image_seeds: the display seeds.

    Raises:
        ValueError: a generator without the prompt-generator methods, an unreadable target, ``n_images`` < 1,
            a detector without core concepts.

    Example:
        >>> from lightning_xai.world import TinyCNN, WorldPromptGenerator
        >>> dx = DiffExplainer(WorldPromptGenerator(seeds=(0,)), targets=[1], steps=3, n_images=2)
        >>> result = dx.explain(TinyCNN(num_classes=6))
        >>> [t.label for t in result.targets], sorted(dx.prompts)
        (['class 1'], ['class 1'])
    """

    def __init__(
        self,
        generator: PromptGenerator,
        *,
        model: nn.Module | None = None,
        targets: Sequence[int | str | Target] | None = None,
        steps: int = 200,
        lr: float | None = None,
        proximity: float | None = None,
        early_stop: int | None = 3,
        min_prob: float = 0.9,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        init: str | Mapping[Any, str] | None = None,
        warm_start: bool = True,
        n_images: int = 16,
        concept_detector: Callable[[Tensor], Mapping[str, Any]] | None = None,
        core_concepts: Mapping[Any, Iterable[str]] | Callable[[int], Iterable[str]] | None = None,
        min_excess: float = 0.3,
        min_score: float = 0.5,
        confirm: bool = True,
        min_effect: float = 0.05,
        seed: int = 0,
        show_progress: bool = False,
        prompts: dict[str, Tensor] | None = None,
    ) -> None:
        if not all(callable(getattr(generator, m, None)) for m in _GENERATOR_METHODS):
            raise ValueError(
                f"generator must be a prompt generator with {'/'.join(_GENERATOR_METHODS)}, "
                f"got {type(generator).__name__}."
            )
        if concept_detector is not None and core_concepts is None:
            raise ValueError("a concept_detector needs core_concepts ({class: [concepts]} or a callable).")
        self.generator = generator
        self.model = model
        self.targets = None if targets is None else [Target.parse(t) for t in targets]
        self.steps = steps
        self.lr = lr
        self.proximity = proximity
        self.early_stop = early_stop
        self.min_prob = min_prob
        self.preprocess = preprocess
        self.init = init
        self.warm_start = bool(warm_start)
        self.image_seeds = [
            10_000 + 97 * int(seed) + i for i in range(checks.check_int("n_images", n_images, 1))
        ]
        self.concept_detector = concept_detector
        self.core_concepts = core_concepts
        self.min_excess = min_excess
        self.min_score = min_score
        self.confirm = bool(confirm)
        self.min_effect = min_effect
        self.show_progress = show_progress
        self.prompts: dict[str, Tensor] = {} if prompts is None else prompts
        self._reference: Tensor | None = None  # the unoptimised prompt's images, for the bias report

    # ------------------------------------------------------------------ configuration per target
    def targets_for(self, model: nn.Module) -> list[Target]:
        """The targets: the given ones, else every class of ``model`` (found by one probe forward pass)."""
        if self.targets is not None:
            return list(self.targets)
        device = next(iter(model.parameters()), torch.empty(0)).device
        with explanation_mode(model), torch.no_grad():
            probe = self.generator.render(self.generator.init_prompt(None))[:1]
            logits = classifier_logits(model(probe.to(device)))
        return [Target("class", c) for c in range(int(logits.shape[1]))]

    def _init_for(self, target: Target) -> str | None:
        if isinstance(self.init, Mapping):
            for key in (target.index, target.label, str(target.index)):
                if key in self.init:
                    return self.init[key]
            return None
        return self.init

    def _core_for(self, target: Target) -> list[str]:
        if target.kind != "class" or self.core_concepts is None:
            return []
        if callable(self.core_concepts):
            return sorted(self.core_concepts(target.index))
        for key in (target.index, str(target.index), target.label):
            if key in self.core_concepts:
                return sorted(self.core_concepts[key])
        return []

    # ------------------------------------------------------------------ explaining
    def explain(
        self, model: nn.Module | None = None, *, targets: Sequence[int | str | Target] | None = None
    ) -> DiffusionExplainerResult:
        """Optimise the prompt of every target (default: :meth:`targets_for` ``model``) for ``model`` (default:
        the constructor's) as it is now, and keep each optimised prompt in :attr:`prompts`.

        The classifier's modes and ``requires_grad`` flags are restored, and no parameter gets a ``.grad``.

        Raises:
            ValueError: no model, or a target out of range for it.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError(
                "no classifier to explain: pass one to explain(model) or DiffExplainer(model=...)."
            )
        chosen = self.targets_for(model) if targets is None else [Target.parse(t) for t in targets]
        bar = None
        if self.show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(chosen), desc="DiffExplainer", unit="target")
        entries, images, prompts = [], {}, {}
        try:
            for target in chosen:
                done = self._optimise(model, target)
                entries.append(self._entry(done, self._bias(model, target, done)))
                images[target.label] = done.images.detach().cpu()
                prompts[target.label] = done.prompt.detach().cpu()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.prompts.update(prompts)
        fingerprint = getattr(self.generator, "fingerprint", type(self.generator).__name__)
        return DiffusionExplainerResult(entries, generator=fingerprint, images=images, prompts=prompts)

    def merge(
        self, parts: Sequence[DiffusionExplainerResult | None], targets: Sequence[Target] | None = None
    ) -> DiffusionExplainerResult:
        """One result from the results of disjoint shares of the targets (e.g. one share per rank under DDP;
        ``None`` for a share without targets), in the order of ``targets`` (default: share order), and every
        share's prompts kept in :attr:`prompts` (so every rank warm-starts every target alike).

        Raises:
            ValueError: no part, or a target of ``targets`` that no part explained.
        """
        done = [p for p in parts if p is not None]
        if not done:
            raise ValueError("no share of the targets was explained.")
        entries = {e.label: e for p in done for e in p.targets}
        labels = list(entries) if targets is None else [t.label for t in targets]
        missing = [label for label in labels if label not in entries]
        if missing:
            raise ValueError(f"no share explained the targets {missing}.")
        images = {k: v for p in done for k, v in p.images.items()}
        prompts = {k: v for p in done for k, v in p.prompts.items()}
        self.prompts.update(prompts)
        return DiffusionExplainerResult(
            [entries[label] for label in labels], generator=done[0].generator, images=images, prompts=prompts
        )

    def _optimise(self, model: nn.Module, target: Target) -> PromptResult:
        start = self.prompts.get(target.label) if self.warm_start else None
        return optimize_prompt(
            model,
            self.generator,
            target,
            steps=self.steps,
            lr=self.lr,
            init=start if start is not None else self._init_for(target),
            proximity=self.proximity,
            early_stop=self.early_stop,
            min_prob=self.min_prob,
            preprocess=self.preprocess,
            image_seeds=self.image_seeds,
            show_progress=self.show_progress,
        )

    def _bias(self, model: nn.Module, target: Target, done: PromptResult) -> BiasReport | None:
        detector = self.concept_detector
        if detector is None:
            return None
        if self._reference is None:
            self._reference = self.generator.images(self.generator.init_prompt(None), self.image_seeds)
        core = self._core_for(target)
        thresholds = {"min_excess": self.min_excess, "min_score": self.min_score}
        effects: dict[str, float] = {}
        if self.confirm:
            candidates = suspects(done.images, detector, core, self._reference, **thresholds)
            effects = ablation_effects(
                model,
                self.generator,
                done,
                candidates,
                preprocess=self.preprocess,
                image_seeds=self.image_seeds,
            )
        return bias_report(
            done.images,
            detector,
            core,
            self._reference,
            target=target.label,
            effects=effects,
            min_effect=self.min_effect,
            **thresholds,
        )

    @staticmethod
    def _entry(done: PromptResult, bias: BiasReport | None) -> TargetExplanation:
        return TargetExplanation(
            target=done.target,
            label=done.target.label,
            readout=done.readout,
            steps=done.steps,
            stopped_early=done.stopped_early,
            initial_objective=done.initial_objective,
            final_objective=done.final_objective,
            image_objective=done.image_objective,
            mean_probability=done.mean_probability,
            share_predicted=done.share_predicted,
            probabilities=done.probabilities,
            loss_curve=list(done.loss_curve),
            bias=bias,
        )
