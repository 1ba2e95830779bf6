"""How predicates behave under perturbation: survival curves of active predicates.

For each image and each of its predicates that is active on the clean image (usually its local rule),
the study measures the share that stays active when the image is perturbed, at several strengths.
Strength is a *level* in ``(0, 1]`` shared by every kind, so the curves can be drawn on one axis:

=================  ==============================================================================
kind               what level ``l`` means
=================  ==============================================================================
``noise``          additive Gaussian noise with std ``l * (the image's pixel std)``
``blur``           Gaussian blur with sigma ``l * side / 16`` pixels (4 px at level 1 on 64 px)
``colour_jitter``  per channel: contrast scaled by ``1 + l*u``, brightness shifted by ``l*v*std``,
                   ``u, v ~ U(-1, 1)`` drawn per image and channel (changes the colour balance)
``occlusion``      a square covering ``l / 2`` of the image at a uniform position, filled with the
                   image's per-channel mean
=================  ==============================================================================

All four work on any input scale (they are defined relative to each image's statistics), so
normalised inputs are fine. Randomness comes from one seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.capture import explanation_mode, find_head
from lightning_xai.logic.grounding import _Runner
from lightning_xai.logic.pathways import LinearHead
from lightning_xai.logic.regions import gaussian_blur
from lightning_xai.logic.vocabulary import Predicate

__all__ = ["DEFAULT_LEVELS", "PERTURBATIONS", "PerturbationReport", "perturb", "perturbation_study"]

PERTURBATIONS = ("noise", "blur", "colour_jitter", "occlusion")
"""Perturbation kinds, in report order."""

DEFAULT_LEVELS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
"""Default strengths (see the module docstring for each kind's meaning)."""


def perturb(
    images: Tensor, kind: str, level: float, generator: torch.Generator, pixel_std: Tensor | None = None
) -> Tensor:
    """Perturb ``[N, C, H, W]`` images; see the module docstring for ``kind`` and ``level``.

    ``pixel_std``: each image's pixel standard deviation ``[N]``, if already known (it is the same for
    every kind and level of a study).

    Example:
        >>> x = torch.rand(2, 3, 16, 16)
        >>> perturb(x, "occlusion", 1.0, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 3, 16, 16])
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose from {list(PERTURBATIONS)}")
    if not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"perturbation level must lie in [0, 1], got {level!r}")
    x = images.float()
    n, c, h, w = x.shape
    std = (x.flatten(1).std(1) if pixel_std is None else pixel_std).clamp_min(1e-6)[:, None, None, None]
    if kind == "noise":
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return x + level * std * noise
    if kind == "blur":
        return gaussian_blur(x, level * min(h, w) / 16.0)
    if kind == "colour_jitter":
        u = (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1).to(x.device)
        v = (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1).to(x.device)
        mean = x.mean(dim=(2, 3), keepdim=True)
        return mean + (x - mean) * (1 + level * u) + level * v * std
    # occlusion
    side = max(1, round(math.sqrt(level / 2.0) * min(h, w)))
    out = x.clone()
    mean = x.mean(dim=(2, 3))
    ys = torch.randint(0, h - side + 1, (n,), generator=generator).tolist()
    xs = torch.randint(0, w - side + 1, (n,), generator=generator).tolist()
    for i, (y0, x0) in enumerate(zip(ys, xs)):
        out[i, :, y0 : y0 + side, x0 : x0 + side] = mean[i][:, None, None]
    return out


@dataclass
class PerturbationReport:
    """Survival of active predicates (and of the prediction) under each perturbation.

    Attributes:
        levels: the strengths.
        survival: ``{kind: [mean share of an image's active predicates still active, per level]}``.
        prediction_kept: ``{kind: [share of images whose predicted class is unchanged, per level]}``.
        n_images: images with at least one active predicate.
        n_predicates: predicates followed.
        forward_calls: model forward passes spent.
    """

    levels: list[float]
    survival: dict[str, list[float]] = field(default_factory=dict)
    prediction_kept: dict[str, list[float]] = field(default_factory=dict)
    n_images: int = 0
    n_predicates: int = 0
    forward_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "survival": {k: list(v) for k, v in self.survival.items()},
            "prediction_kept": {k: list(v) for k, v in self.prediction_kept.items()},
            "n_images": self.n_images,
            "n_predicates": self.n_predicates,
            "forward_calls": self.forward_calls,
        }


def perturbation_study(
    model: nn.Module,
    images: Tensor,
    predicates: Sequence[Sequence[Predicate]],
    kinds: Sequence[str] = PERTURBATIONS,
    levels: Sequence[float] = DEFAULT_LEVELS,
    head: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
    clean_features: Tensor | None = None,
) -> PerturbationReport:
    """Share of each image's active predicates that survive each perturbation at each level.

    Predicates inactive on the clean image are not followed. The clean images take one batched pass (none
    with ``clean_features``), each kind (all its levels together) another.

    Args:
        model: the network (eval inside; modes restored).
        images: ``[N, C, H, W]``.
        predicates: per image, its predicates (e.g. its local rule).
        kinds: subset of :data:`PERTURBATIONS`.
        levels: strengths in ``(0, 1]``.
        head: the head's name (default: the last ``nn.Linear``).
        batch_size: images per forward pass.
        seed: seed of the perturbations.
        clean_features: the head inputs of ``images`` ``[N, D]`` if already known, e.g. captured by the
            validation pass the rules were learned from (then every predicate of a local rule is active on
            its image by construction, with no rounding from a second pass). Default: computed here.

    Example:
        >>> from lightning_xai.world import TinyCNN
        >>> net = TinyCNN().eval()
        >>> p = Predicate(0, 5, 1, -1e9, 1, 1.0, 64)   # always active
        >>> perturbation_study(net, torch.rand(2, 3, 64, 64), [[p], [p]], levels=[0.5]).survival["noise"]
        [1.0]
    """
    bad = [k for k in kinds if k not in PERTURBATIONS]
    if bad:
        raise ValueError(f"unknown perturbations {bad}; choose from {list(PERTURBATIONS)}")
    if len(predicates) != images.shape[0]:
        raise ValueError(f"got {len(predicates)} predicate lists for {images.shape[0]} images")
    levels = [float(v) for v in levels]
    report = PerturbationReport(levels=levels)
    with explanation_mode(model):
        _, head_module = find_head(model, head)
        runner = _Runner(model, head_module, None, batch_size)
        x = images.detach().to(runner.device).float()
        if clean_features is None:
            z0 = runner.z(x)
        else:
            if clean_features.shape[0] != x.shape[0]:
                raise ValueError(
                    f"got clean_features for {clean_features.shape[0]} images, but {x.shape[0]} images"
                )
            z0 = clean_features.detach().to("cpu", torch.float64).flatten(1)
        keep: list[tuple[int, list[Predicate]]] = []
        for i, ps in enumerate(predicates):
            alive = [p for p in ps if bool(p.is_active(z0[i : i + 1])[0])]
            if alive:
                keep.append((i, alive))
        report.n_images = len(keep)
        report.n_predicates = sum(len(ps) for _, ps in keep)
        if not keep:
            for k in kinds:
                report.survival[k] = [math.nan] * len(levels)
                report.prediction_kept[k] = [math.nan] * len(levels)
            report.forward_calls = runner.forward_calls
            return report
        rows = torch.tensor([i for i, _ in keep])
        x = x[rows]
        lin = LinearHead.from_module(head_module)
        y0 = lin.logits(z0[rows]).argmax(1)
        gen = torch.Generator().manual_seed(int(seed))
        n = len(keep)
        pixel_std = x.flatten(1).std(1)
        for k in kinds:
            # all levels of a kind in one batched pass: fewer, larger forwards
            z_all = runner.z(
                torch.cat([perturb(x, k, level, gen, pixel_std) for level in levels]), any_layout=True
            )
            surv, kept = [], []
            for li in range(len(levels)):
                z = z_all[li * n : (li + 1) * n]
                shares = [
                    sum(bool(p.is_active(z[r : r + 1])[0]) for p in ps) / len(ps)
                    for r, (_, ps) in enumerate(keep)
                ]
                surv.append(sum(shares) / len(shares))
                y = lin.logits(z).argmax(1)
                kept.append(float((y == y0).double().mean()))
            report.survival[k] = surv
            report.prediction_kept[k] = kept
        report.forward_calls = runner.forward_calls
    return report
