"""Interventional ground truth: how much each concept moves each class logit of a model.

For a concept ``slot:value`` we render ``n_scenes`` random scenes with the slot forced to
``value`` and the *same* scenes (same render seeds, same other slots) with the slot set to another
value (a random other value per scene by default; for the marker: absent). The effect on class
``k`` is the mean over scenes of ``logit_k(with concept) - logit_k(replaced)``, with its standard
error. Because the renderer draws all randomness from the seed independently of the slots, the
paired images differ only in the concept's pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import random_slots, scene_seeds
from .render import _render_uint8, _to_float
from .rules import LabelRule, class_index, resolve_rule
from .vocab import VOCABULARY, Slots, all_concepts, parse_concept

__all__ = ["EffectTable", "interventional_effects", "model_logits"]


@dataclass(frozen=True)
class EffectTable:
    """Mean and standard error of the change of each class logit when a concept is introduced.

    Attributes:
        concepts: Concept names (rows).
        classes: Class names (columns).
        mean: ``[n_concepts, n_classes]`` mean logit change (concept present minus replaced).
        se: ``[n_concepts, n_classes]`` standard error of the mean.
        n_scenes: Scene pairs per concept.
        replace: The replacement policy used.

    Example:
        >>> t = EffectTable(["shape:circle"], ["a", "b"], torch.tensor([[2.0, -1.0]]),
        ...                 torch.tensor([[0.1, 0.1]]), 10, "random_other")
        >>> t.effect("shape:circle", "a"), t.ranking("b")
        (2.0, [('shape:circle', -1.0)])
    """

    concepts: list[str]
    classes: list[str]
    mean: torch.Tensor
    se: torch.Tensor
    n_scenes: int
    replace: str

    def _ci(self, concept: str) -> int:
        if concept not in self.concepts:
            slot, value = parse_concept(concept)  # raises for a malformed name
            concept = f"{slot}:{value}"
            if concept not in self.concepts:
                raise ValueError(
                    f"concept {concept!r} not in this table; concepts: {', '.join(self.concepts)}"
                )
        return self.concepts.index(concept)

    def _k(self, class_: int | str) -> int:
        return class_index(self.classes, class_)

    def effect(self, concept: str, class_: int | str) -> float:
        """Mean logit change of ``class_`` (name or index) when ``concept`` is introduced."""
        return float(self.mean[self._ci(concept), self._k(class_)])

    def stderr(self, concept: str, class_: int | str) -> float:
        """Standard error of :meth:`effect`."""
        return float(self.se[self._ci(concept), self._k(class_)])

    def z(self, concept: str, class_: int | str) -> float:
        """``effect / stderr`` (infinite when the standard error is 0 and the effect is not)."""
        m, s = self.effect(concept, class_), self.stderr(concept, class_)
        if s == 0:
            return 0.0 if m == 0 else math.copysign(math.inf, m)
        return m / s

    def magnitude(self, concept: str) -> float:
        """Largest absolute mean effect of ``concept`` over all classes."""
        return float(self.mean[self._ci(concept)].abs().max())

    def ranking(self, class_: int | str, absolute: bool = True) -> list[tuple[str, float]]:
        """Concepts sorted by effect on ``class_``: by absolute size (default) or signed, largest first.

        Returns ``[(concept, mean effect), ...]``.
        """
        k = self._k(class_)
        vals = [(c, float(self.mean[i, k])) for i, c in enumerate(self.concepts)]
        return sorted(vals, key=lambda cv: (-abs(cv[1]) if absolute else -cv[1], cv[0]))

    def to_rows(self) -> list[dict[str, float | str | int]]:
        """One dict per (concept, class): ``concept, class, mean, se, z, n``."""
        rows = []
        for i, c in enumerate(self.concepts):
            for k, name in enumerate(self.classes):
                rows.append(
                    {
                        "concept": c,
                        "class": name,
                        "mean": float(self.mean[i, k]),
                        "se": float(self.se[i, k]),
                        "z": self.z(c, k),
                        "n": self.n_scenes,
                    }
                )
        return rows


def model_logits(
    model: nn.Module, images: torch.Tensor, device: torch.device | str | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in eval mode without gradients; restores every module's mode.

    Returns a CPU float tensor ``[N, n_classes]``.
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                out = model(images[start : start + batch_size].to(device))
                outs.append(out.detach().float().cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    return torch.cat(outs) if outs else torch.empty(0)


def interventional_effects(
    model: nn.Module,
    concepts: Sequence[str] | None = None,
    task: str | LabelRule | None = None,
    classes: Sequence[str] | None = None,
    n_scenes: int = 128,
    seed: int = 0,
    replace: str = "random_other",
    size: int = 64,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> EffectTable:
    """Measure each concept's causal effect on each class logit of ``model``.

    Args:
        model: Classifier mapping images ``[B, 3, size, size]`` in [0, 1] to logits.
        concepts: Concept names (default: :func:`~lightning_xai.world.vocab.all_concepts`).
        task: Task name or :class:`LabelRule`, used only for the class names.
        classes: Class names (alternative to ``task``; default ``class_0``...).
        n_scenes: Scene pairs per concept.
        seed: Seed of the scenes (the same for every concept, so rows are comparable).
        replace: ``"random_other"`` (a random other value of the slot per scene; marker: absent) or
            a specific value of the slot, such as ``"plain"`` or ``"texture:plain"`` (applied to
            every concept of that slot; concepts of other slots use ``random_other``).
        size: Image size.
        device: Where to run the model (default: the device of its first parameter).
        batch_size: Images per forward pass.

    Returns:
        An :class:`EffectTable`. Deterministic for a given model and seed. The model is run in
        eval mode without gradients and every module's training flag is restored afterwards.

    Example:
        >>> table = interventional_effects(model, task="shape_texture", n_scenes=64)  # doctest: +SKIP
        >>> table.ranking("circle/lined")[:3]  # doctest: +SKIP
    """
    concepts = list(all_concepts() if concepts is None else concepts)
    parsed = [parse_concept(c) for c in concepts]
    concepts = [f"{s}:{v}" for s, v in parsed]
    n = int(n_scenes)
    if n < 2:
        raise ValueError(f"n_scenes must be >= 2 to estimate a standard error, got {n_scenes}")
    rep_slot, rep_value = None, None
    if replace != "random_other":
        if ":" in replace:
            rep_slot, rep_value = parse_concept(replace)
        else:
            hits = [s for s, vals in VOCABULARY.items() if replace in vals]
            if not hits:
                raise ValueError(
                    f"replace must be 'random_other' or a slot value / concept name, got {replace!r}"
                )
            rep_slot, rep_value = hits[0], replace
    base = random_slots(n, seed, "effects")
    seeds = scene_seeds(n, seed, "effects")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4, 104729]))
    u = rng.random((len(concepts), n))  # drawn for every concept, whatever the policy
    means, ses = [], []
    for ci, (slot, value) in enumerate(parsed):
        others = [v for v in VOCABULARY[slot] if v != value]
        on: list[Slots] = []
        off: list[Slots] = []
        for j, s in enumerate(base):
            if slot == rep_slot and rep_value != value:
                other = rep_value
            elif slot == "marker":
                other = "absent" if value == "present" else "present"
            else:
                other = others[min(int(u[ci, j] * len(others)), len(others) - 1)]
            on.append(s.with_value(slot, value))
            off.append(s.with_value(slot, other))
        images_u8, _ = _render_uint8(on + off, seeds + seeds, size, with_masks=False)
        logits = model_logits(model, _to_float(images_u8), device=device, batch_size=batch_size).double()
        diff = logits[:n] - logits[n:]
        means.append(diff.mean(0))
        ses.append(diff.std(0, unbiased=True) / math.sqrt(n))
    mean = torch.stack(means)
    se = torch.stack(ses)
    n_classes = mean.shape[1]
    if classes is None and task is not None:
        classes = resolve_rule(task).classes
    if classes is None:
        classes = [f"class_{k}" for k in range(n_classes)]
    classes = list(classes)
    if len(classes) != n_classes:
        raise ValueError(f"model has {n_classes} logits but {len(classes)} class names were given")
    return EffectTable(
        concepts=concepts, classes=classes, mean=mean.float(), se=se.float(), n_scenes=n, replace=replace
    )
