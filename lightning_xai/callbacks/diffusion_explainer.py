"""``DiffusionExplainerCallback``: DiffExplainer prompts per class (or neuron), re-optimised as the model trains."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback, check_int, check_interval, gather_objects, run_share
from lightning_xai.capture import ValidationSample
from lightning_xai.diffexplainer import DiffExplainer, Target
from lightning_xai.input_match import fitted_to
from lightning_xai.results.diffusion_explainer import DiffusionExplainerResult

__all__ = ["DiffusionExplainerCallback"]


class DiffusionExplainerCallback(XAICallback):
    r"""DiffExplainer (Pennisi et al. 2024) during training: what each class or neuron has come to look for.

    Every explained epoch a :class:`~lightning_xai.diffexplainer.DiffExplainer` optimises, for each target, the
    generator's prompt so that its images maximise the target (``-log p(class)``, or a neuron's activation),
    warm-started from the previous explained epoch's prompt (kept in checkpoints); then the prompt is read out
    in words, images of it are made with the display seeds, and, when a concept detector is given, concepts the
    images show far more often than the unoptimised prompt's images and that are not the target's core
    concepts are flagged as suspected spurious features. It reads no validation sample: the images are its own.

    The record of an explained epoch is a
    :class:`~lightning_xai.results.diffusion_explainer.DiffusionExplainerResult` (its docstring documents every
    field); what it logs is :meth:`DiffusionExplainerResult.logged
    <lightning_xai.results.diffusion_explainer.DiffusionExplainerResult.logged>`: per target a figure of its
    images with the readout caption and target probabilities (media ``images``), scalars ``objective``,
    ``probability`` and ``flagged`` over the targets (with ``log_scalars="all"`` also ``objective/<target>``,
    ``probability/<target>`` and ``flagged/<target>``),
    tables ``readout`` and ``bias_report``, and a line chart of every target's loss curve. A record holds its
    own epoch only: how the readouts change between epochs is the
    :class:`~lightning_xai.callbacks.ConceptDriftMonitor`'s (kind ``readout``).

    Under DDP the targets are split across ranks and the results gathered, so each rank optimises only
    its share.

    Args:
        generator: A :class:`~lightning_xai.diffexplainer.PromptGenerator`:
            :class:`~lightning_xai.world.WorldPromptGenerator` for the planted-concept world, or
            :class:`~lightning_xai.diffexplainer.DiffusersPromptGenerator` around a Stable Diffusion pipeline.
        targets: Class indices, ``"class:3"``, ``"neuron:12"`` (input feature of the linear head) or
            ``"channel:<layer>:5"``. Default: every class.
        steps: Optimisation step budget per target and explained epoch. Default: 200.
        every_n_epochs: Explain every n-th epoch. Default: 1.
        concept_detector: ``images -> {concept: scores in [0, 1]}`` for the bias report (e.g. a CLIP
            zero-shot scorer; :meth:`~lightning_xai.world.WorldColourMarkerDetector.scores` for the world).
            None: no bias report.
        core_concepts: The declared core concepts of each class: ``{class index or name: [concepts]}`` or a
            callable ``class index -> concepts``. Needed with a detector.
        lr: Adam learning rate; None (default): the generator's ``default_lr`` (0.1 for
            :class:`~lightning_xai.world.WorldPromptGenerator`, 3% of a token embedding's length for
            soft tokens).
        proximity: Weight of the prior ``||P - P0||^2``; None: the generator's default.
        early_stop: Consecutive steps with the target predicted (probability >= ``min_prob``) that end a
            run (None: never). Default: 3.
        min_prob: See ``early_stop``. Default: 0.9.
        preprocess: Maps generated images to classifier input (:class:`~lightning_xai.diffexplainer.ClassifierInput`).
            Default: fit them to the validation inputs' size and channels (:class:`~lightning_xai.input_match.MatchInput`).
        init: Initial word/caption for every target, or ``{target: word}`` (e.g. the class names).
        warm_start: Start each target from its previous explained epoch's prompt. Default: True.
        n_images: Images made from each optimised prompt (display and bias report). Default: 16.
        min_excess: How much more often than in the reference images a concept must appear to be flagged.
        min_score: Mean detector score a flagged concept must reach.
        confirm: Check each over-represented concept by removing it from the prompt (generators with
            ``ablate``, e.g. the world's): one the classifier does not use is reported, not flagged.
        min_effect: Rise of the objective (mean ``-log p``) on removal that confirms a flag. Default: 0.05.
        show_progress: A progress bar over targets and steps (rank 0). Default: True.
        **base: ``on``, ``on_error``, ``max_failures``, ``seed``: see :class:`XAICallback`; ``seed`` picks the display
            seeds.

    Raises:
        MisconfigurationException: a bad argument; the message names it and the valid choices.

    Example:
        >>> from lightning_xai.world import WorldColourMarkerDetector, WorldPromptGenerator, get_task
        >>> rule = get_task("shape_texture")
        >>> cb = DiffusionExplainerCallback(WorldPromptGenerator(), targets=[0, 1], steps=100,
        ...     concept_detector=WorldColourMarkerDetector().scores, core_concepts=rule.positive_concepts)
        >>> [t.label for t in cb.targets]
        ['class 0', 'class 1']
    """

    method = "diffusion_explainer"
    needs_sample = False

    def __init__(
        self,
        generator: Any = None,
        targets: Sequence[int | str] | None = None,
        *,
        steps: int = 200,
        every_n_epochs: int = 1,
        concept_detector: Callable[[Tensor], Mapping[str, Any]] | None = None,
        core_concepts: Mapping[Any, Iterable[str]] | Callable[[int], Iterable[str]] | None = None,
        lr: float | None = None,
        proximity: float | None = None,
        early_stop: int | None = 3,
        min_prob: float = 0.9,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        init: str | Mapping[Any, str] | None = None,
        warm_start: bool = True,
        n_images: int = 16,
        min_excess: float = 0.3,
        min_score: float = 0.5,
        confirm: bool = True,
        min_effect: float = 0.05,
        show_progress: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            **base,
        )
        if generator is not None and not all(
            callable(getattr(generator, m, None)) for m in ("render", "init_prompt", "images", "readout")
        ):
            raise MisconfigurationException(
                "generator must be a prompt generator with render/init_prompt/images/readout (e.g. "
                f"lightning_xai.world.WorldPromptGenerator or DiffusersPromptGenerator), got {type(generator).__name__}."
            )
        if isinstance(targets, (str, int)):  # one target, not an iterable of characters
            targets = [targets]
        try:
            self.targets = None if targets is None else [Target.parse(t) for t in targets]
        except ValueError as exc:
            raise MisconfigurationException(str(exc)) from exc
        if self.targets is not None and not self.targets:
            raise MisconfigurationException(
                f"targets must name at least one target, or be None for every class, but got {targets!r}."
            )
        check_int("steps", steps, 1)
        if lr is not None:
            check_interval("lr", lr, 0, math.inf, low_open=True, high_open=True)
        if proximity is not None:
            check_interval("proximity", proximity, 0, math.inf, low_open=False, high_open=True)
        if early_stop is not None:
            check_int("early_stop", early_stop, 1)
        check_interval("min_prob", min_prob, 0, 1, low_open=False, high_open=True)
        check_int("n_images", n_images, 1)
        check_interval("min_excess", min_excess, 0, 1, low_open=True, high_open=False)
        check_interval("min_score", min_score, 0, 1, low_open=False, high_open=False)
        check_interval("min_effect", min_effect, 0, math.inf, low_open=False, high_open=True)
        for name, fn in (("concept_detector", concept_detector), ("preprocess", preprocess)):
            if fn is not None and not callable(fn):
                raise MisconfigurationException(f"{name} must be callable, got {type(fn).__name__}.")
        if concept_detector is not None and core_concepts is None:
            raise MisconfigurationException(
                "a concept_detector needs core_concepts ({class: [concepts]} or a callable class -> concepts), so that "
                "the bias report can tell a class's own concepts from suspected spurious ones."
            )
        if core_concepts is not None and not (callable(core_concepts) or isinstance(core_concepts, Mapping)):
            raise MisconfigurationException(
                f"core_concepts must be a mapping class -> concepts or a callable, got {type(core_concepts).__name__}."
            )
        self.generator = generator
        self.steps = steps
        self.concept_detector = concept_detector
        self.core_concepts = core_concepts
        self.lr = None if lr is None else float(lr)
        self.proximity = proximity
        self.early_stop = early_stop
        self.min_prob = float(min_prob)
        self.preprocess = preprocess
        self.init = init
        self.warm_start = bool(warm_start)
        self.n_images = n_images
        self.min_excess = float(min_excess)
        self.min_score = float(min_score)
        self.confirm = bool(confirm)
        self.min_effect = float(min_effect)
        self.show_progress = show_progress
        #: each target's last optimised prompt by label: the warm starts, kept in checkpoints
        self.prompts: dict[str, Tensor] = {}
        self._explainer: DiffExplainer | None = None

    # ---------------------------------------------------------------- identity and state
    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            # the callback passed max_samples=2 to the base before it could ask for no sample at all
            # (needs_sample): kept in the key, so checkpoints written then still find this callback's state
            "max_samples": 2,
            "targets": None if self.targets is None else [t.label for t in self.targets],
            "steps": self.steps,
        }

    @override
    def explainer_state(self) -> dict[str, Any]:
        return {"prompts": {k: v.clone() for k, v in self.prompts.items()}}

    @override
    def load_explainer_state(self, state: dict[str, Any]) -> None:
        # checkpoints of the callback before the typed results also hold "readouts", "previous_epoch" and
        # "history": ignored (the drift monitor compares the readouts across epochs)
        self.prompts.clear()  # in place: the explainer warm-starts from this very dict
        self.prompts.update({k: v.clone() for k, v in state.get("prompts", {}).items()})

    @override
    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.generator is None:
            rank_zero_warn(
                "DiffusionExplainerCallback has no generator, so it cannot explain anything; pass "
                "generator=WorldPromptGenerator() (planted-concept world) or DiffusersPromptGenerator(pipeline)."
            )

    # ---------------------------------------------------------------- explain
    def explainer(self, trainer: Trainer) -> DiffExplainer:
        """The :class:`~lightning_xai.diffexplainer.DiffExplainer` of this run, built at the first explained
        epoch from the callback's arguments (it keeps the bias report's reference images)."""
        if self._explainer is None:
            self._explainer = DiffExplainer(
                self.generator,
                targets=self.targets,
                steps=self.steps,
                lr=self.lr,
                proximity=self.proximity,
                early_stop=self.early_stop,
                min_prob=self.min_prob,
                preprocess=self.preprocess or fitted_to(self.input_shape, "preprocess"),
                init=self.init,
                warm_start=self.warm_start,
                n_images=self.n_images,
                concept_detector=self.concept_detector,
                core_concepts=self.core_concepts,
                min_excess=self.min_excess,
                min_score=self.min_score,
                confirm=self.confirm,
                min_effect=self.min_effect,
                seed=self.seed,
                show_progress=self.show_progress and trainer.is_global_zero,
                prompts=self.prompts,
            )
        return self._explainer

    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample | None = None
    ) -> DiffusionExplainerResult:
        if self.generator is None:
            raise ValueError(
                "No generator: pass generator=WorldPromptGenerator() or DiffusersPromptGenerator(pipeline)."
            )
        explainer = self.explainer(trainer)
        targets = explainer.targets_for(pl_module)
        world, rank = max(1, trainer.world_size), trainer.global_rank
        if world == 1:
            return explainer.explain(pl_module, targets=targets)
        mine = [t for i, t in enumerate(targets) if i % world == rank]
        part = run_share(trainer, lambda: explainer.explain(pl_module, targets=mine) if mine else None)
        return explainer.merge(gather_objects(trainer, part), targets)
