"""Prompt optimisation (DiffExplainer): targets, objectives, preprocessing and the optimisation loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.capture import explanation_mode, find_head, resolve_layer
from lightning_xai.layers import first_tensor
from lightning_xai.results.diffusion_explainer import Readout, Target
from lightning_xai.running import run_on_generated

from .prompt import PromptGenerator

__all__ = [
    "ClassifierInput",
    "PromptResult",
    "Target",
    "TargetObjective",
    "ablation_effects",
    "optimize_prompt",
]

DEFAULT_LR = 0.1  # Adam's step for a generator that names no default_lr


class ClassifierInput:
    """Adapts generated images (``[B, 3, H, W]`` in [0, 1]) to what the classifier expects: resize, normalise.

    Differentiable (bilinear resize with antialiasing), so gradients reach the prompt.

    Args:
        size: ``(H, W)`` or one int for a square; None keeps the size.
        mean, std: Per-channel normalisation, e.g. ImageNet's ``(0.485, 0.456, 0.406)`` and
            ``(0.229, 0.224, 0.225)``; None skips it.

    Example:
        >>> pre = ClassifierInput(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> pre(torch.ones(1, 3, 64, 64)).shape, float(pre(torch.ones(1, 3, 8, 8)).max())
        (torch.Size([1, 3, 224, 224]), 1.0)
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(size, int):
            size = (size, size)
        if size is not None and (len(size) != 2 or any(int(s) < 1 for s in size)):
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if std is not None and any(float(s) <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.mean = None if mean is None else torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.std = None if std is None else torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        x = images
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.mean is not None and self.std is not None:
            x = (x - self.mean.to(x)) / self.std.to(x)
        return x

    def __repr__(self) -> str:
        return f"ClassifierInput(size={self.size}, mean={self.mean is not None}, std={self.std is not None})"


def classifier_logits(out: Any) -> Tensor:
    """The logits of a classifier output: a tensor, a tuple starting with one, or a dict with ``logits``."""
    if isinstance(out, dict):
        for key in ("logits", "out", "output"):
            if isinstance(out.get(key), Tensor):
                return out[key]
    return first_tensor(out, "the classifier")


def predicts_target(logits: Tensor, index: int, min_prob: float) -> bool:
    """Every row predicts class ``index`` with probability >= ``min_prob`` (one step of early stopping)."""
    p = logits.detach().float().softmax(1)
    return bool((p.argmax(1) == index).all()) and float(p[:, index].min()) >= min_prob


class TargetObjective:
    """The objective of a :class:`Target` on a classifier: ``objective(images) -> (value, logits)``.

    Checks the target against the model once (class count, head width, layer and channel count) by a
    forward pass on ``probe``, and raises a ``ValueError`` naming the valid range otherwise. The value
    is what the optimiser minimises (lower is better for every kind).
    """

    def __init__(
        self, classifier: nn.Module, target: Target, probe: Tensor, preprocess: Callable[[Tensor], Tensor]
    ) -> None:
        self.classifier = classifier
        self.target = target
        self.preprocess = preprocess
        # the generator may live elsewhere (world renderer on CPU, classifier on a GPU): images follow the
        # classifier, and .to() keeps the graph, so gradients still reach the prompt
        self.device = next(iter(classifier.parameters()), torch.empty(0)).device
        self._module: nn.Module | None = None
        if target.kind == "neuron":
            _, self._module = find_head(classifier)
        elif target.kind == "channel":
            assert target.layer is not None
            self._module = resolve_layer(classifier, target.layer)
        with torch.no_grad():
            logits, feature = self._forward(probe[:1])
        if target.kind == "class" and target.index >= logits.shape[1]:
            raise ValueError(
                f"target class {target.index} is out of range: the classifier has {logits.shape[1]} classes "
                f"(valid: 0..{logits.shape[1] - 1})"
            )
        if feature is not None and target.index >= feature.shape[1]:
            what = "head input features" if target.kind == "neuron" else f"channels in layer {target.layer!r}"
            raise ValueError(
                f"target {target.kind} {target.index} is out of range: there are {feature.shape[1]} {what} "
                f"(valid: 0..{feature.shape[1] - 1})"
            )

    @contextlib.contextmanager
    def _tap(self) -> Iterator[list[Tensor]]:
        store: list[Tensor] = []
        handle = None
        if self.target.kind == "neuron":
            handle = self._module.register_forward_pre_hook(lambda m, args: store.append(args[0]))  # type: ignore[union-attr]
        elif self.target.kind == "channel":
            handle = self._module.register_forward_hook(
                lambda m, a, out: store.append(classifier_logits(out))
            )  # type: ignore[union-attr]
        try:
            yield store
        finally:
            if handle is not None:
                handle.remove()

    def _forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        with self._tap() as store:
            x = self.preprocess(images.to(self.device))
            logits = classifier_logits(run_on_generated(self.classifier, x, "preprocess"))
        return logits, (store[-1] if store else None)

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        logits, feature = self._forward(images)
        t = self.target
        if t.kind == "class":
            value = -logits.float().log_softmax(1)[:, t.index].mean()
        else:
            assert feature is not None
            value = -feature[:, t.index].float().mean()
        return value, logits


@dataclass
class PromptResult:
    """One optimisation: the prompt, its images and how the objective went.

    Attributes:
        target: What was maximised.
        prompt: The optimised prompt parameters (CPU, detached); warm-start the next run with it.
        images: Images of the optimised prompt for the display seeds (``[N, 3, H, W]``, CPU).
        loss_curve: The objective at every step (before that step's update).
        initial_objective, final_objective: The objective before the first and after the last update.
        steps: Optimisation steps taken.
        stopped_early: Whether the early-stopping rule ended the run.
        readout: The prompt in words (None for pixel-space optimisation).
        probabilities: Softmax probability of the target class for each display image (class targets).
        predicted: Predicted class of each display image.
        image_objective: The objective on the display images.
        image_seeds: The seeds the display images were made with.
    """

    target: Target
    prompt: Tensor
    images: Tensor
    loss_curve: list[float]
    initial_objective: float
    final_objective: float
    steps: int
    stopped_early: bool
    readout: Readout | None = None
    probabilities: list[float] | None = None
    predicted: list[int] = field(default_factory=list)
    image_objective: float = float("nan")
    image_seeds: list[int] = field(default_factory=list)

    @property
    def share_predicted(self) -> float | None:
        """Share of display images predicted as the target class (class targets only)."""
        if self.target.kind != "class" or not self.predicted:
            return None
        return sum(p == self.target.index for p in self.predicted) / len(self.predicted)

    @property
    def mean_probability(self) -> float | None:
        """Mean target-class probability over the display images (class targets only)."""
        if not self.probabilities:
            return None
        return sum(self.probabilities) / len(self.probabilities)


def _progress(total: int, desc: str, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def _check_optimiser_args(
    steps: int, lr: float, early_stop: int | None, min_prob: float, proximity: float
) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if early_stop is not None and (
        isinstance(early_stop, bool) or not isinstance(early_stop, int) or early_stop < 1
    ):
        raise ValueError(f"early_stop must be None (off) or an integer >= 1, got {early_stop!r}")
    if not 0.0 <= float(min_prob) < 1.0:
        raise ValueError(f"min_prob must lie in [0, 1), got {min_prob!r}")
    if not float(proximity) >= 0:
        raise ValueError(f"proximity must be >= 0, got {proximity!r}")


def evaluate_images(
    objective: TargetObjective, images: Tensor, batch_size: int = 64
) -> tuple[float, list[float] | None, list[int]]:
    """Objective, target probabilities and predictions on images (no gradient)."""
    values, probs, preds = [], [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            value, logits = objective(chunk)
            values.append(float(value) * len(chunk))
            p = logits.float().softmax(1)
            preds += p.argmax(1).tolist()
            if objective.target.kind == "class":
                probs += p[:, objective.target.index].tolist()
    return sum(values) / len(images), (probs if objective.target.kind == "class" else None), preds


def optimize_prompt(
    classifier: nn.Module,
    generator: PromptGenerator,
    target: int | str | Target,
    *,
    steps: int = 200,
    lr: float | None = None,
    init: str | Tensor | None = None,
    proximity: float | None = None,
    early_stop: int | None = 3,
    min_prob: float = 0.9,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    image_seeds: Sequence[int] = (1000, 1001, 1002, 1003),
    show_progress: bool = False,
) -> PromptResult:
    """Optimise a generator's prompt so that its images maximise a class or a neuron (DiffExplainer).

    Adam on the prompt parameters only; the objective is ``-log p(class)`` or minus the mean
    activation of a head-input neuron / a layer's channel, plus ``proximity * ||P - P0||^2``.
    The classifier is used in eval mode with its parameters frozen, and its modes and
    ``requires_grad`` flags are restored exactly afterwards; gradients are taken with
    ``torch.autograd.grad`` with respect to the prompt only, so no parameter of the classifier or
    the generator gets a ``.grad``.

    Args:
        classifier: Any ``nn.Module`` returning logits (a LightningModule during training).
        generator: A :class:`~lightning_xai.diffexplainer.PromptGenerator`.
        target: A class index, ``"class:3"``, ``"neuron:12"``, ``"channel:<layer>:5"`` or a :class:`Target`.
        steps: Optimisation step budget.
        lr: Adam learning rate; None: the generator's ``default_lr`` (0.1 where it has none). The scale
            that works depends on the prompt's space: 0.1 for the world's slot logits, about 3% of a token
            embedding's length for soft tokens (:class:`DiffusersPromptGenerator`).
        init: Initial prompt: a word or caption for ``generator.init_prompt``, or a prompt tensor (warm start).
        proximity: Weight of the prior ``||P - P0||^2`` (P0: the generator's ``init_prompt()`` for a warm
            start, else the initial prompt). None: the generator's default ``proximity``.
        early_stop: Stop once the classifier has predicted the target class for this many consecutive
            steps, on every optimised image and with probability >= ``min_prob`` (None: run every step;
            class targets only). DEXTER stops after 3 steps of argmax predictions (``min_prob=0``).
        min_prob: Probability the target class must reach for a step to count towards ``early_stop``.
        preprocess: Maps generated images to classifier input (e.g. :class:`ClassifierInput`).
        image_seeds: Seeds of the display images made from the final prompt (not the optimisation seeds,
            so the display shows whether the prompt carries over to new noise).
        show_progress: A progress bar over the steps.

    Returns:
        A :class:`PromptResult`.

    Raises:
        ValueError: A target out of range for this classifier, or an argument out of range.

    Example:
        >>> from lightning_xai.world import TinyCNN, WorldPromptGenerator
        >>> net = TinyCNN(num_classes=6)
        >>> res = optimize_prompt(net, WorldPromptGenerator(seeds=(0,)), target=2, steps=5, image_seeds=(7,))
        >>> len(res.loss_curve), res.images.shape
        (5, torch.Size([1, 3, 64, 64]))
    """
    target = Target.parse(target)
    proximity = float(getattr(generator, "proximity", 0.0) if proximity is None else proximity)
    lr = float(getattr(generator, "default_lr", DEFAULT_LR) if lr is None else lr)
    _check_optimiser_args(steps, lr, early_stop, min_prob, proximity)
    preprocess = preprocess or (lambda x: x)
    device = generator.device
    if isinstance(init, Tensor):
        start = init.detach().to(device=device, dtype=torch.float32).clone()
        anchor = generator.init_prompt(None).to(device)
        if start.shape != anchor.shape:
            raise ValueError(
                f"init prompt has shape {tuple(start.shape)}, but this generator's prompts have {tuple(anchor.shape)}"
            )
    else:
        start = generator.init_prompt(init).to(device)
        anchor = start.clone()

    with explanation_mode(classifier):
        prompt = start.clone().requires_grad_(True)
        with torch.no_grad():
            probe = generator.render(prompt)
        objective = TargetObjective(classifier, target, probe, preprocess)
        optimiser = torch.optim.Adam([prompt], lr=float(lr))
        curve: list[float] = []
        streak, stopped = 0, False
        bar = _progress(steps, f"DiffExplainer {target.label}", show_progress)
        try:
            for _ in range(steps):
                value, logits = objective(generator.render(prompt))
                loss = value + proximity * (prompt - anchor).pow(2).sum() if proximity else value
                (grad,) = torch.autograd.grad(loss, prompt)
                curve.append(float(value.detach()))
                if target.kind == "class" and early_stop is not None:
                    streak = streak + 1 if predicts_target(logits, target.index, min_prob) else 0
                prompt.grad = grad
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(objective=f"{curve[-1]:.4f}")
                if early_stop is not None and streak >= early_stop:
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        final = prompt.detach()
        with torch.no_grad():
            final_value = float(objective(generator.render(final))[0])
            images = generator.images(final, list(image_seeds))
        image_value, probs, preds = evaluate_images(objective, images)
    return PromptResult(
        target=target,
        prompt=final.cpu(),
        images=images,
        loss_curve=curve,
        initial_objective=curve[0],
        final_objective=final_value,
        steps=len(curve),
        stopped_early=stopped,
        readout=generator.readout(final),
        probabilities=probs,
        predicted=preds,
        image_objective=image_value,
        image_seeds=[int(v) for v in image_seeds],
    )


def ablation_effects(
    classifier: nn.Module,
    generator: PromptGenerator,
    result: PromptResult,
    concepts: Sequence[str],
    *,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    image_seeds: Sequence[int] | None = None,
) -> dict[str, float]:
    """How much the objective worsens when each concept is removed from an optimised prompt.

    For a generator with ``ablate(prompt, concept)`` (the world's), the prompt without the concept is
    rendered with the same seeds (default: the result's display seeds, whose objective it already holds), and
    the effect is ``objective(without) - objective(with)`` (for a class:
    the rise of the mean ``-log p``). A concept the images show but the classifier does not use has an
    effect near 0. Concepts the generator cannot remove are left out; a generator without ``ablate``
    gives ``{}``.

    Example:
        >>> from lightning_xai.world import TinyCNN, WorldPromptGenerator
        >>> net, gen = TinyCNN(num_classes=6), WorldPromptGenerator(seeds=(0,))
        >>> res = optimize_prompt(net, gen, 1, steps=2, image_seeds=(3,))
        >>> sorted(ablation_effects(net, gen, res, ["colour:red", "sky:blue"], image_seeds=(3,)))
        ['colour:red']
    """
    ablate = getattr(generator, "ablate", None)
    if not callable(ablate) or not concepts:
        return {}
    preprocess = preprocess or (lambda x: x)
    seeds = list(result.image_seeds if image_seeds is None else image_seeds)
    effects: dict[str, float] = {}
    with explanation_mode(classifier):
        prompt = result.prompt.to(generator.device)
        if seeds == result.image_seeds:  # the display images already hold the base objective
            objective = TargetObjective(classifier, result.target, result.images[:1], preprocess)
            base = result.image_objective
        else:
            base_images = generator.images(prompt, seeds)
            objective = TargetObjective(classifier, result.target, base_images[:1], preprocess)
            base, _, _ = evaluate_images(objective, base_images)
        for concept in concepts:
            without = ablate(prompt, concept)
            if without is None:
                continue
            value, _, _ = evaluate_images(objective, generator.images(without, seeds))
            effects[concept] = value - base
    return effects
