"""Spatial views of a layer's activations: convolutional maps as they are, transformer tokens on their patch grid.

A vision transformer's block outputs tokens ``[N, T, C]``: ``p`` prefix tokens (the class token, register and
distillation tokens) followed by ``h * w`` patch tokens in row-major order of the patch grid. Methods that read
a spatial map (Visual-TCAV's concept maps, the symbolic tree's tokens per channel, grounding) see the patch
tokens as a map ``[N, C, h, w]``. The number of prefix tokens is read from the model where it says
(timm's ``num_prefix_tokens``, torchvision's ``class_token``), else it is the fewest (at most 8) that leave a
square grid. Layouts neither covers (channels-last ``[N, H, W, C]`` maps such as Swin's, non-square grids) take a
``reshape_transform``: activations -> ``[N, C, H, W]``, as in pytorch-grad-cam.

This module imports nothing from Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["MAX_PREFIX_TOKENS", "SpatialLayout", "prefix_tokens", "spatial_layout"]

#: the most prefix tokens inferred from a square grid (a class token, a distillation token and registers)
MAX_PREFIX_TOKENS = 8

ReshapeTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class SpatialLayout:
    """How one layer's activations ``[N, *shape]`` become a map ``[N, C, H, W]``.

    Attributes:
        kind: ``"map"`` (``[C, H, W]``), ``"vector"`` (``[C]``, a 1x1 map), ``"tokens"`` (``[T, C]``) or
            ``"custom"`` (a ``reshape_transform``).
        prefix: leading tokens that are not patches (tokens only).
        grid: the patch grid ``(h, w)`` (tokens only).
        transform: the ``reshape_transform`` (custom only).

    Example:
        >>> import torch
        >>> layout = SpatialLayout("tokens", prefix=1, grid=(2, 2))
        >>> layout.to_map(torch.arange(10.0).reshape(1, 5, 2)).shape  # [N, T=1+4, C=2] -> [N, C, 2, 2]
        torch.Size([1, 2, 2, 2])
    """

    kind: str
    prefix: int = 0
    grid: tuple[int, int] | None = None
    transform: ReshapeTransform | None = None

    def to_map(self, acts: Tensor) -> Tensor:
        """``[N, *shape]`` -> ``[N, C, H, W]`` (for tokens: the patch tokens on their grid, prefix tokens left out)."""
        if self.kind == "map":
            return acts
        if self.kind == "vector":
            return acts[:, :, None, None]
        if self.kind == "custom":
            assert self.transform is not None
            out = self.transform(acts)
            if not isinstance(out, Tensor) or out.dim() != 4 or out.shape[0] != acts.shape[0]:
                shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"reshape_transform must map activations {list(acts.shape)} to [N, C, H, W], but returned {shape}."
                )
            return out
        assert self.grid is not None
        h, w = self.grid
        patches = acts[:, self.prefix :, :]
        return patches.transpose(1, 2).reshape(acts.shape[0], acts.shape[2], h, w)

    def cav_space(self, acts: Tensor, pooling: str) -> Tensor:
        """Activations ``[N, *shape]`` in the space CAVs are learned in: flat, or for tokens pooled to ``[N, C]``
        (``"mean"`` over the patch tokens, ``"cls"`` the first token; ``"none"`` keeps them flat)."""
        if self.kind != "tokens" or pooling == "none":
            return acts.flatten(1)
        return acts[:, self.prefix :].mean(1) if pooling == "mean" else acts[:, 0]

    def cav_gradient(self, grads: Tensor, pooling: str) -> Tensor:
        """Gradients with respect to the activations, as gradients along a CAV of :meth:`cav_space`: for pooled
        tokens the derivative of adding the CAV to every patch token (``"mean"``: their gradients summed) or to
        the first token (``"cls"``)."""
        if self.kind != "tokens" or pooling == "none":
            return grads.flatten(1)
        return grads[:, self.prefix :].sum(1) if pooling == "mean" else grads[:, 0]

    def pool(self, vectors: Tensor, shape: tuple[int, ...]) -> Tensor:
        """Flat vectors ``[K, prod(shape)]`` in this layer's activation space pooled to channels ``[K, C]``: the
        mean over the map's positions (for tokens, over the patch tokens)."""
        return self.to_map(vectors.reshape(vectors.shape[0], *shape)).flatten(2).mean(-1)


def prefix_tokens(model: nn.Module) -> int | None:
    """The prefix tokens the model declares: timm's ``num_prefix_tokens`` (class, distillation and register
    tokens), or 1 for torchvision's ``VisionTransformer`` (its ``class_token``); ``None`` if it declares none."""
    for module in model.modules():
        n = getattr(module, "num_prefix_tokens", None)
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            return n
        if isinstance(getattr(module, "class_token", None), nn.Parameter) and hasattr(module, "encoder"):
            return 1
    return None


def _square_prefix(tokens: int, declared: int | None) -> int | None:
    candidates = [declared] if declared is not None else range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1)
    for p in candidates:
        side = math.isqrt(tokens - p) if tokens - p > 0 else 0
        if side > 1 and side * side == tokens - p:
            return p
    return None


def spatial_layout(
    model: nn.Module | None, shape: tuple[int, ...], reshape_transform: ReshapeTransform | None = None
) -> SpatialLayout | None:
    """The layout of one sample's activation ``shape`` at a layer of ``model``, or ``None`` when it has no
    spatial view (a token sequence that leaves no square grid: pass ``reshape_transform``).

    Example:
        >>> spatial_layout(None, (8, 4, 4)).kind, spatial_layout(None, (17, 32)).grid
        ('map', (4, 4))
        >>> spatial_layout(None, (17, 32)).prefix, spatial_layout(None, (16,)).kind
        (1, 'vector')
    """
    if reshape_transform is not None:
        return SpatialLayout("custom", transform=reshape_transform)
    if len(shape) == 3:
        return SpatialLayout("map")
    if len(shape) == 1:
        return SpatialLayout("vector")
    if len(shape) == 2:
        prefix = _square_prefix(shape[0], prefix_tokens(model) if model is not None else None)
        if prefix is None:
            return None
        side = math.isqrt(shape[0] - prefix)
        return SpatialLayout("tokens", prefix=prefix, grid=(side, side))
    return None
