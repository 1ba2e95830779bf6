"""Configuration of the symbolic model and the checks behind its error messages.

Kept apart from the model so that callbacks can validate arguments (and tests can exercise the errors)
without building anything.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_xai.feature_maps import FeatureMapError

__all__ = [
    "FeatureMapError",
    "LevelsError",
    "LossWeights",
    "SymbolicConfig",
    "check_feature_map",
    "resolve_levels",
]


class LevelsError(ValueError):
    """A level list that cannot form a hierarchy ending in one symbol per class."""


@dataclass(frozen=True)
class LossWeights:
    """Weights of the terms of the objective (spec section 3, item 9).

    Attributes:
        commitment: weight of every level's VQ loss ``d(sg(u), e)^2 + beta * d(u, sg(e))^2``.
        beta: the commitment factor inside it (0.25 as in VQ-VAE; the reference used 1).
        composition: parents should be the A-weighted gyromidpoint of their children.
        edge: connected codes pulled together, unconnected pushed beyond ``margin``.
        path: token paths follow edges: ``-log A[k_l, k_(l+1)]``.
        norm: coarser codes at least ``norm_margin`` nearer the origin than their children.
        sparsity: mean of every adjacency matrix.
        align: one symbol per class: the top symbol of the classifier's class must hold the largest (soft)
            share of an image's tokens, ``align_margin`` ahead of any other (hinge); 0 switches it off.
        align_temperature: temperature of the soft top-level assignment inside ``align``.
        align_margin: the lead of the class's symbol that ``align`` asks for.
        margin: hyperbolic distance unconnected codes are pushed to.
        norm_margin: the gap of the norm ordering, in hyperbolic distance from the origin.

    Example:
        >>> LossWeights(path=0.5).path
        0.5
    """

    commitment: float = 1.0
    beta: float = 0.25
    composition: float = 0.1
    edge: float = 1.0
    path: float = 1.0
    norm: float = 1.0
    sparsity: float = 0.5
    align: float = 1.0
    align_temperature: float = 0.25
    align_margin: float = 0.1
    margin: float = 1.0
    norm_margin: float = 0.2

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"LossWeights.{name} must be a finite number >= 0, but got {value!r}.")
        if self.align_temperature <= 0:
            raise ValueError(
                f"LossWeights.align_temperature must be > 0, but got {self.align_temperature!r}."
            )


@dataclass(frozen=True)
class SymbolicConfig:
    """Hyper-parameters of :class:`~lightning_xai.hyperbolic.SymbolicModel`.

    Attributes:
        levels: codebook sizes of the levels below the top, finest first, strictly shrinking; the top
            level (``top_symbols``, by default one symbol per class) is added after them.
        top_symbols: symbols of the top level; ``None`` (default) means one per class. It may be
            smaller than the number of classes (symbols shared by classes), never larger.
        latent_channels: channels of the modulator, i.e. tokens per image.
        token_size: the modulated map is average-pooled to ``token_size x token_size``; a token (one
            per channel) has ``token_size ** 2`` dimensions whatever the input size.
        max_token_norm: tokens are softly clipped to this Euclidean norm before ``expmap0``, so the
            level-0 codes stay at hyperbolic distance <= ``2 * max_token_norm`` from the origin (far
            from the boundary, where float32 distances lose precision).
        lr: learning rate of ``RiemannianAdam``.
        codebook_lr_factor: the codebooks learn this many times faster than the modulator and surrogate,
            so codes keep up with the tokens the surrogate's gradient moves.
        adjacency_lr_factor: the adjacency logits learn this many times faster than the rest, so edges
            keep up with token paths that change as the codes move.
        batch_size: images per optimisation step.
        restart_every: steps between restarts of unused codes (0: never).
        weights: the loss weights.

    Example:
        >>> SymbolicConfig(levels=(16, 8)).resolved_levels(4)
        (16, 8, 4)
    """

    levels: tuple[int, ...] = (32, 16)
    top_symbols: int | None = None
    latent_channels: int = 32
    token_size: int = 4
    max_token_norm: float = 2.0
    lr: float = 3e-3
    codebook_lr_factor: float = 10.0
    adjacency_lr_factor: float = 100.0
    batch_size: int = 64
    restart_every: int = 25
    weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", _check_level_list(self.levels))
        if self.top_symbols is not None:
            _check_int("top_symbols", self.top_symbols, 1)
        _check_int("latent_channels", self.latent_channels, 1)
        _check_int("token_size", self.token_size, 1)
        _check_int("batch_size", self.batch_size, 2)
        _check_int("restart_every", self.restart_every, 0)
        for name in ("max_token_norm", "lr", "codebook_lr_factor", "adjacency_lr_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, but got {value!r}.")
        if isinstance(self.weights, dict):
            object.__setattr__(self, "weights", LossWeights(**self.weights))

    @property
    def token_dim(self) -> int:
        """Dimension of a token (and of the ball the codes live on)."""
        return self.token_size**2

    def resolved_levels(self, n_classes: int) -> tuple[int, ...]:
        """All codebook sizes, finest first, the top level last (see :func:`resolve_levels`)."""
        return resolve_levels(self.levels, n_classes, self.top_symbols)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (checkpoints, payloads); :meth:`from_dict` inverts it."""
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SymbolicConfig:
        data = dict(data)
        data["levels"] = tuple(data["levels"])
        data["weights"] = LossWeights(**data.get("weights", {}))
        return cls(**data)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, but got {value!r}.")
    return value


def _check_level_list(levels: Any) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise LevelsError(
            f"levels must be a non-empty list of codebook sizes, finest first (e.g. [32, 16]), but got {levels!r}."
        )
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 2 for k in levels):
        raise LevelsError(
            f"levels must hold integers >= 2 (codebook sizes, finest first), but got {list(levels)!r}."
        )
    levels = tuple(int(k) for k in levels)
    if any(a <= b for a, b in itertools.pairwise(levels)):
        raise LevelsError(
            f"levels={list(levels)} does not shrink: each level must have fewer symbols than the level below "
            "it (finest first, e.g. [32, 16]), down towards the top level of one symbol per class."
        )
    return levels


def resolve_levels(levels: Sequence[int], n_classes: int, top_symbols: int | None = None) -> tuple[int, ...]:
    """The full list of codebook sizes: ``levels`` followed by the top level.

    Args:
        levels: sizes of the levels below the top, finest first, strictly shrinking.
        n_classes: classes of the explained classifier.
        top_symbols: size of the top level; default ``n_classes`` (one symbol per class).

    Raises:
        LevelsError: ``levels`` is empty or does not shrink strictly towards the top level, or
            ``top_symbols`` exceeds the number of classes.

    Example:
        >>> resolve_levels([32, 16], 6)
        (32, 16, 6)
        >>> resolve_levels([32, 4], 6)
        Traceback (most recent call last):
        ...
        lightning_xai.hyperbolic.config.LevelsError: levels=[32, 4] does not shrink towards the top level of 6 symbols (one per class): every level needs more symbols than the next, and the last one more than 6.
    """
    levels = _check_level_list(levels)
    _check_int("n_classes", n_classes, 2)
    if top_symbols is None:
        top = n_classes
    else:
        _check_int("top_symbols", top_symbols, 1)
        if top_symbols > n_classes:
            raise LevelsError(
                f"top_symbols={top_symbols} is more than the {n_classes} classes: the top level has at most one "
                f"symbol per class. Leave top_symbols=None for exactly one symbol per class."
            )
        top = top_symbols
    if levels[-1] <= top:
        desc = "one per class" if top == n_classes else f"top_symbols={top}"
        raise LevelsError(
            f"levels={list(levels)} does not shrink towards the top level of {top} symbols ({desc}): every level "
            f"needs more symbols than the next, and the last one more than {top}."
        )
    return (*levels, top)


def check_feature_map(activations: Any, name: str = "layer") -> None:
    """Raise :class:`FeatureMapError` unless ``activations`` is a spatial feature map ``[N, C, H, W]``.

    Example:
        >>> import torch
        >>> check_feature_map(torch.zeros(2, 8, 4, 4))
        >>> check_feature_map(torch.zeros(2, 8), "pool")
        Traceback (most recent call last):
        ...
        lightning_xai.feature_maps.FeatureMapError: pool outputs shape [2, 8], not a feature map [N, C, H, W] with H * W > 1: symbols are read from one token per channel of a spatial map. Choose a convolutional layer before the global pooling (e.g. the last conv block).
    """
    shape = list(getattr(activations, "shape", []))
    if len(shape) != 4 or shape[2] * shape[3] <= 1:
        raise FeatureMapError(
            f"{name} outputs shape {shape}, not a feature map [N, C, H, W] with H * W > 1: symbols are read from one "
            "token per channel of a spatial map. Choose a convolutional layer before the global pooling "
            "(e.g. the last conv block)."
        )
