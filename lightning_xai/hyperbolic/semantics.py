"""Visual semantics without a decoder: where in the input a symbol is evidenced.

A token is one channel of the modulated feature map, and its symbol path (level 0 up to the top) is
fixed by its level-0 symbol. A symbol's **level-0 channels** in an image are the channels whose path
passes through the symbol. Its evidence map is the sum of those channels' spatial maps (absolute
values: a channel is evidence wherever it responds), upsampled bilinearly to the image and scaled to
[0, 1]; it is shown on the ``top_k`` images that put the most tokens on the symbol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import Encoding
from .tree import symbol_name

__all__ = ["SymbolSemantics", "visual_semantics"]


@dataclass
class SymbolSemantics:
    """Evidence maps of one symbol.

    Attributes:
        level: the symbol's level.
        symbol: the symbol's index.
        images: indices of the images that use the symbol most (most tokens first).
        tokens: tokens each of those images puts on the symbol.
        maps: evidence maps ``[len(images), H, W]`` in [0, 1] at the image size.
    """

    level: int
    symbol: int
    images: list[int]
    tokens: list[int]
    maps: Tensor

    @property
    def name(self) -> str:
        return symbol_name(self.level, self.symbol)

    def to_dict(self) -> dict[str, object]:
        """The JSON part (no maps)."""
        return {
            "level": self.level,
            "symbol": self.symbol,
            "name": self.name,
            "images": self.images,
            "tokens": self.tokens,
        }


def visual_semantics(
    encoding: Encoding,
    symbols: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    top_k: int = 4,
) -> list[SymbolSemantics]:
    """Evidence maps of ``symbols`` (``(level, symbol)`` pairs) on the images that use them most.

    Args:
        encoding: ``model.encode(features)`` of the images (holds the modulated maps and every token's path).
        symbols: the symbols to explain; a symbol no image uses is skipped.
        image_size: ``(H, W)`` of the input images the maps are upsampled to.
        top_k: images per symbol.

    Example:
        >>> enc = Encoding([torch.tensor([[0, 1], [1, 1]])], torch.zeros(2, 2), torch.rand(2, 2, 4, 4))
        >>> sem = visual_semantics(enc, [(0, 1)], (8, 8), top_k=2)[0]
        >>> sem.images, sem.tokens, tuple(sem.maps.shape)
        ([1, 0], [2, 1], (2, 8, 8))
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, but got {top_k!r}.")
    out: list[SymbolSemantics] = []
    for level, symbol in symbols:
        hits = encoding.codes[level] == symbol  # [N, C]: channels whose path passes through the symbol
        counts = hits.sum(1)
        used = torch.nonzero(counts > 0).flatten()
        if used.numel() == 0:
            continue
        # most tokens first, lower index first on ties (stable and deterministic)
        order = sorted(used.tolist(), key=lambda i: (-int(counts[i]), i))[:top_k]
        rows = torch.tensor(order)
        maps = (encoding.maps[rows].abs() * hits[rows][:, :, None, None]).sum(1, keepdim=True)
        maps = F.interpolate(maps, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
        lo = maps.amin((1, 2), keepdim=True)
        hi = maps.amax((1, 2), keepdim=True)
        maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
        out.append(SymbolSemantics(level, symbol, order, [int(counts[i]) for i in order], maps))
    return out
