"""The text-to-image generator interface shared by concept permutation and its checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["ImageGenerator"]


@runtime_checkable
class ImageGenerator(Protocol):
    """Anything that turns (caption, seed) pairs into images.

    Concept-permutation importance (DEPICT) compares a classifier on images generated from original
    and permuted captions. That comparison is only paired, and rows whose caption did not change can
    only reuse their base image, if the generator honours this contract:

    * ``generate(captions, seeds)`` returns a float32 CPU tensor ``[N, 3, H, W]`` with values in
      [0, 1], one image per (caption, seed) pair, in order.
    * An image depends only on its own caption and seed: not on the other rows, the batch size or
      the global RNG (up to floating-point rounding of batched arithmetic). Calling twice with the
      same pair and the same batch layout gives a bit-identical image.
    * ``fingerprint`` changes whenever the images could change (weights, sampler settings, image
      size), so callers can use it as part of a cache key for generated images.

    Implementations: :class:`lightning_xai.world.WorldGenerator` (exact shape renderer) and
    :class:`lightning_xai.generators.DiffusersGenerator` (any diffusers text-to-image pipeline).
    ``isinstance(obj, ImageGenerator)`` only checks that both members exist.

    Example:
        >>> from lightning_xai.world import WorldGenerator
        >>> isinstance(WorldGenerator(size=32), ImageGenerator)
        True
    """

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and settings: equal fingerprints mean the same images."""
        ...

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """One image per caption, ``[N, 3, H, W]`` float32 in [0, 1] on CPU; ``seeds[i]`` drives row i."""
        ...
