"""The renderer behind the text-to-image generator interface (``generate(captions, seeds)``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .render import RENDERER_VERSION, render_batch

__all__ = ["WorldGenerator"]


class WorldGenerator:
    """Text-to-image generator for world captions: exact, deterministic and fast (CPU).

    Implements the generator interface used by concept-permutation importance (DEPICT):
    ``generate(captions, seeds) -> images``. The same (caption, seed) always gives the same image,
    identical to :func:`~lightning_xai.world.render.render`; changing one slot of the caption with
    the same seed changes only that concept's pixels.

    Args:
        size: Image height and width.

    Example:
        >>> gen = WorldGenerator(size=64)
        >>> gen.generate(["a red circle on a striped background"], seeds=[0]).shape
        torch.Size([1, 3, 64, 64])
        >>> gen.fingerprint
        'lightning_xai.world.WorldGenerator(renderer=1,size=64)'
    """

    def __init__(self, size: int = 64):
        if int(size) < 8:
            raise ValueError(f"size must be >= 8, got {size}")
        self.size = int(size)

    @property
    def fingerprint(self) -> str:
        """Identifies the generator and its settings (use as part of cache keys)."""
        return f"lightning_xai.world.WorldGenerator(renderer={RENDERER_VERSION},size={self.size})"

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """Render one image per caption.

        Args:
            captions: World captions, e.g. ``"a blue square on a dotted background with a marker"``.
            seeds: One non-negative int per caption.

        Returns:
            Float tensor ``[N, 3, size, size]`` in [0, 1].

        Raises:
            ValueError: For a caption outside the vocabulary or mismatched lengths.
        """
        captions = list(captions)
        seeds = [int(s) for s in seeds]
        if len(captions) != len(seeds):
            raise ValueError(
                f"got {len(captions)} captions but {len(seeds)} seeds; pass one seed per caption"
            )
        images, _ = render_batch(captions, seeds, self.size, return_masks=False)
        return images

    __call__ = generate

    def __repr__(self) -> str:
        return f"WorldGenerator(size={self.size})"
