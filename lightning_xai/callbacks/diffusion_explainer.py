"""``DiffusionExplainerCallback``: DiffExplainer prompts per class (or neuron), re-optimised as the model trains."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_xai.callbacks.base import (
    ExplainResult,
    XAICallback,
    check_int,
    check_interval,
    gather_objects,
    run_share,
)
from lightning_xai.capture import ValidationSample
from lightning_xai.diffexplainer import (
    PromptResult,
    Readout,
    Target,
    ablation_effects,
    bias_report,
    optimize_prompt,
    suspects,
)
from lightning_xai.panels import panel_image
from lightning_xai.records import Chart, Media, Table

__all__ = ["DiffusionExplainerCallback"]


class DiffusionExplainerCallback(XAICallback):
    r"""DiffExplainer (Pennisi et al. 2024) during training: what each class or neuron has come to look for.

    Every explained epoch, for each target, the generator's prompt is optimised so that its images maximise
    the target (``-log p(class)``, or a neuron's activation), warm-started from the previous explained
    epoch's prompt; then the prompt is read out in words, images of it are made with the display seeds, and,
    when a concept detector is given, concepts the images show far more often than the unoptimised prompt's
    images and that are not the target's core concepts are flagged as suspected spurious features.

    Logged:

    * per target: a figure of the images with the readout caption and target probabilities (media
      ``images``), scalars ``objective/<target>``, ``probability/<target>`` (class targets) and
      ``flagged/<target>`` (number of suspected spurious concepts, with a detector);
    * ``readout_changes``: prompt positions whose top word changed since the previous explained epoch,
      with the table ``readout_drift`` (target, position, before, after);
    * tables ``readout`` (target, caption, top words with scores, steps, objective, probability) and
      ``bias_report`` (target, concept, score, reference, excess, core, flagged); a line chart of every
      target's loss curve.

    Record ``{"method": "diffusion_explainer", "name": "epoch"}``; payload: ``targets`` (one dict per target:
    ``target``, ``label``, ``readout``, ``readout_changes``, ``steps``, ``stopped_early``,
    ``initial_objective``, ``final_objective``, ``image_objective``, ``mean_probability``,
    ``share_predicted``, ``loss_curve``, ``bias``), ``previous_epoch``, ``generator`` (its fingerprint).

    Under DDP the targets are split across ranks and the results gathered, so each rank optimises only
    its share.

    Args:
        generator: A :class:`~lightning_xai.diffexplainer.PromptGenerator`:
            :class:`~lightning_xai.diffexplainer.WorldPromptGenerator` for the planted-concept world, or
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
            :class:`~lightning_xai.diffexplainer.WorldPromptGenerator`, 3% of a token embedding's length for
            soft tokens).
        proximity: Weight of the prior ``||P - P0||^2``; None: the generator's default.
        early_stop: Consecutive steps with the target predicted (probability >= ``min_prob``) that end a
            run (None: never). Default: 3.
        min_prob: See ``early_stop``. Default: 0.9.
        preprocess: Maps generated images to classifier input (:class:`~lightning_xai.diffexplainer.ClassifierInput`).
        init: Initial word/caption for every target, or ``{target: word}`` (e.g. the class names).
        warm_start: Start each target from its previous explained epoch's prompt. Default: True.
        n_images: Images made from each optimised prompt (display and bias report). Default: 16.
        min_excess: How much more often than in the reference images a concept must appear to be flagged.
        min_score: Mean detector score a flagged concept must reach.
        confirm: Check each over-represented concept by removing it from the prompt (generators with
            ``ablate``, e.g. the world's): one the classifier does not use is reported, not flagged.
        min_effect: Rise of the objective (mean ``-log p``) on removal that confirms a flag. Default: 0.05.
        show_progress: A progress bar over targets and steps (rank 0). Default: True.
        on, on_error, seed: See :class:`XAICallback`; ``seed`` picks the display seeds.

    Raises:
        MisconfigurationException: a bad argument; the message names it and the valid choices.

    Example:
        >>> from lightning_xai.diffexplainer import WorldPromptGenerator
        >>> from lightning_xai.world import WorldColourMarkerDetector, get_task
        >>> rule = get_task("shape_texture")
        >>> cb = DiffusionExplainerCallback(WorldPromptGenerator(), targets=[0, 1], steps=100,
        ...     concept_detector=WorldColourMarkerDetector().scores, core_concepts=rule.positive_concepts)
        >>> [t.label for t in cb.targets]
        ['class 0', 'class 1']
    """

    method = "diffusion_explainer"

    def __init__(
        self,
        generator: Any = None,
        targets: Sequence[int | str] | None = None,
        steps: int = 200,
        every_n_epochs: int = 1,
        concept_detector: Callable[[Tensor], Mapping[str, Any]] | None = None,
        *,
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
        on: Literal["validation", "train_epoch_end"] = "validation",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, on=on, max_samples=2, on_error=on_error, max_failures=max_failures, seed=seed)
        if generator is not None and not all(
            callable(getattr(generator, m, None)) for m in ("render", "init_prompt", "images", "readout")
        ):
            raise MisconfigurationException(
                "generator must be a prompt generator with render/init_prompt/images/readout (e.g. "
                f"lightning_xai.diffexplainer.WorldPromptGenerator or DiffusersPromptGenerator), got {type(generator).__name__}."
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
        self.image_seeds = [10_000 + 97 * self.seed + i for i in range(n_images)]
        self._prompts: dict[str, Tensor] = {}
        self._readouts: dict[str, dict[str, Any]] = {}
        self._previous_epoch: int | None = None
        self._reference: Tensor | None = None
        self.history: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- identity and state
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "targets": None if self.targets is None else [t.label for t in self.targets],
            "steps": self.steps,
        }

    def explainer_state(self) -> dict[str, Any]:
        return {
            "prompts": {k: v.clone() for k, v in self._prompts.items()},
            "readouts": dict(self._readouts),
            "previous_epoch": self._previous_epoch,
            "history": list(self.history),
        }

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._prompts = {k: v.clone() for k, v in state.get("prompts", {}).items()}
        self._readouts = dict(state.get("readouts", {}))
        self._previous_epoch = state.get("previous_epoch")
        self.history = list(state.get("history", []))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.generator is None:
            rank_zero_warn(
                "DiffusionExplainerCallback has no generator, so it cannot explain anything; pass "
                "generator=WorldPromptGenerator() (planted-concept world) or DiffusersPromptGenerator(pipeline)."
            )

    # ---------------------------------------------------------------- explain
    def _targets(self, pl_module: LightningModule) -> list[Target]:
        if self.targets is not None:
            return self.targets
        with torch.no_grad():
            probe = self.generator.render(self.generator.init_prompt(None))[:1]
            out = pl_module(probe.to(pl_module.device))
        logits = out if isinstance(out, Tensor) else out[0]
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

    def _optimise(self, pl_module: LightningModule, target: Target, show_progress: bool) -> dict[str, Any]:
        start = self._prompts.get(target.label) if self.warm_start else None
        result = optimize_prompt(
            pl_module,
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
            show_progress=show_progress,
        )
        bias = None
        if self.concept_detector is not None:
            if self._reference is None:
                self._reference = self.generator.images(self.generator.init_prompt(None), self.image_seeds)
            core = self._core_for(target)
            effects = {}
            if self.confirm:
                candidates = suspects(
                    result.images,
                    self.concept_detector,
                    core,
                    self._reference,
                    min_excess=self.min_excess,
                    min_score=self.min_score,
                )
                effects = ablation_effects(
                    pl_module,
                    self.generator,
                    result,
                    candidates,
                    preprocess=self.preprocess,
                    image_seeds=self.image_seeds,
                )
            bias = bias_report(
                result.images,
                self.concept_detector,
                core,
                self._reference,
                target=target.label,
                min_excess=self.min_excess,
                min_score=self.min_score,
                effects=effects,
                min_effect=self.min_effect,
            ).to_dict()
        return {"result": result, "bias": bias}

    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> ExplainResult:
        if self.generator is None:
            raise ValueError(
                "No generator: pass generator=WorldPromptGenerator() or DiffusersPromptGenerator(pipeline)."
            )
        targets = self._targets(pl_module)
        world, rank = max(1, trainer.world_size), trainer.global_rank
        mine = [t for i, t in enumerate(targets) if i % world == rank]
        show = self.show_progress and trainer.is_global_zero

        def my_share() -> list[tuple[str, dict[str, Any]]]:
            local: list[tuple[str, dict[str, Any]]] = []
            bar = None
            if show:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(mine), desc=f"DiffExplainer epoch {trainer.current_epoch}", unit="target")
            try:
                for target in mine:
                    local.append((target.label, _portable(self._optimise(pl_module, target, show))))
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
            return local

        local = run_share(trainer, my_share)
        gathered = dict(item for part in gather_objects(trainer, local) for item in part)
        entries = [_entry(t, gathered[t.label], self._readouts.get(t.label)) for t in targets]
        for t in targets:
            self._prompts[t.label] = gathered[t.label]["prompt"]
            self._readouts[t.label] = gathered[t.label]["readout"]
        previous = self._previous_epoch
        self._previous_epoch = trainer.current_epoch
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "captions": {e["label"]: e["readout"]["caption"] for e in entries},
                "flagged": {e["label"]: (e["bias"] or {}).get("flagged", []) for e in entries},
            }
        )
        return self._result(trainer.current_epoch, entries, gathered, previous)

    def _result(
        self,
        epoch: int,
        entries: list[dict[str, Any]],
        gathered: dict[str, dict[str, Any]],
        previous: int | None,
    ) -> ExplainResult:
        scalars: dict[str, float] = {}
        readout_rows, drift_rows, bias_rows, curve_rows, media = [], [], [], [], []
        for e in entries:
            key = e["label"].replace(" ", "_")
            scalars[f"objective/{key}"] = e["final_objective"]
            if e["mean_probability"] is not None:
                scalars[f"probability/{key}"] = e["mean_probability"]
            r = e["readout"]
            top = "; ".join(
                f"{p}: " + ", ".join(f"{w} ({s:.2f})" for w, s in c)
                for p, c in zip(r["positions"], r["candidates"])
            )
            readout_rows.append(
                [
                    e["label"],
                    r["caption"],
                    top,
                    e["steps"],
                    e["final_objective"],
                    e["mean_probability"],
                    e["share_predicted"],
                ]
            )
            for pos, (old, new) in e["readout_changes"].items():
                drift_rows.append([e["label"], pos, old, new])
            if e["bias"] is not None:
                scalars[f"flagged/{key}"] = float(len(e["bias"]["flagged"]))
                for row in e["bias"]["rows"]:
                    bias_rows.append(
                        [
                            e["label"],
                            row["concept"],
                            row["score"],
                            row["reference"],
                            row["excess"],
                            row["core"],
                            row.get("effect"),
                            row["flagged"],
                        ]
                    )
            curve_rows += [[e["label"], step, value] for step, value in enumerate(e["loss_curve"])]
            images = gathered[e["label"]]["images"]
            media.append(
                Media(
                    key="images",
                    image=_image_figure(images, e, epoch),
                    caption=f"{e['label']}: {r['caption']}",
                )
            )
        scalars["readout_changes"] = float(len(drift_rows))
        tables = [
            Table(
                "readout",
                [
                    "target",
                    "caption",
                    "top_words",
                    "steps",
                    "objective",
                    "mean_probability",
                    "share_predicted",
                ],
                readout_rows,
            ),
            Table("readout_drift", ["target", "position", "before", "after"], drift_rows),
        ]
        if self.concept_detector is not None:
            tables.append(
                Table(
                    "bias_report",
                    ["target", "concept", "score", "reference", "excess", "core", "effect", "flagged"],
                    bias_rows,
                )
            )
        charts = []
        if curve_rows:
            labels = sorted({row[0] for row in curve_rows}, key=[e["label"] for e in entries].index)
            length = max(len(e["loss_curve"]) for e in entries)
            wide = [[s] + [_at(e["loss_curve"], s) for e in entries] for s in range(length)]
            charts.append(
                Chart(
                    key="loss_curves",
                    kind="line",
                    table=Table("loss_curves", ["step", *labels], wide),
                    x="step",
                    y=labels,
                    title=f"DiffExplainer objective per step, epoch {epoch}",
                )
            )
        payload = {
            "targets": entries,
            "previous_epoch": previous,
            "generator": getattr(self.generator, "fingerprint", type(self.generator).__name__),
        }
        return ExplainResult(payload=payload, scalars=scalars, tables=tables, charts=charts, media=media)


def _at(curve: list[float], step: int) -> float | None:
    return curve[step] if step < len(curve) else None


def _portable(done: dict[str, Any]) -> dict[str, Any]:
    """A rank's result as plain CPU data (picklable for gathering, small)."""
    r: PromptResult = done["result"]
    return {
        "target": r.target,
        "prompt": r.prompt.detach().cpu(),
        "images": r.images.detach().cpu(),
        "readout": r.readout.to_dict() if r.readout is not None else None,
        "loss_curve": list(r.loss_curve),
        "initial_objective": r.initial_objective,
        "final_objective": r.final_objective,
        "image_objective": r.image_objective,
        "steps": r.steps,
        "stopped_early": r.stopped_early,
        "probabilities": r.probabilities,
        "mean_probability": r.mean_probability,
        "share_predicted": r.share_predicted,
        "bias": done["bias"],
    }


def _entry(target: Target, data: dict[str, Any], previous_readout: dict[str, Any] | None) -> dict[str, Any]:
    readout = Readout.from_dict(data["readout"])
    changes = readout.changed_since(Readout.from_dict(previous_readout) if previous_readout else None)
    return {
        "target": {"kind": target.kind, "index": target.index, "layer": target.layer},
        "label": target.label,
        "readout": data["readout"],
        "readout_changes": {k: list(v) for k, v in changes.items()},
        "steps": data["steps"],
        "stopped_early": data["stopped_early"],
        "initial_objective": data["initial_objective"],
        "final_objective": data["final_objective"],
        "image_objective": data["image_objective"],
        "mean_probability": data["mean_probability"],
        "share_predicted": data["share_predicted"],
        "probabilities": data["probabilities"],
        "loss_curve": data["loss_curve"],
        "bias": data["bias"],
    }


def _image_figure(images: Tensor, entry: dict[str, Any], epoch: int, max_images: int = 8) -> Any:
    """The optimised prompt's images, each titled with the class probability, the readout over all."""
    n = min(max_images, len(images))
    probs = entry["probabilities"] or []
    flagged = (entry["bias"] or {}).get("flagged", [])
    note = f"; flagged: {', '.join(flagged)}" if flagged else ""
    return panel_image(
        [images[i] for i in range(n)],
        [f"p={probs[i]:.2f}" if i < len(probs) else "" for i in range(n)],
        f'{entry["label"]}, epoch {epoch}: "{entry["readout"]["caption"]}"{note}',
    )
