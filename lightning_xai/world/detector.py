"""A pixel-rule concept detector for the world's colour and marker slots (for DEPICT's checks).

The world draws backgrounds in greys (at most 0.62 bright), objects in one saturated colour, and the
marker as a pure white cross, so two concepts can be read straight off the pixels: the object's colour
(the mean of the saturated pixels, nearest base colour) and the marker (enough near-white pixels).
Shape and texture need a learned detector; this one does not claim them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .render import _RGB

__all__ = ["WorldColourMarkerDetector"]


class WorldColourMarkerDetector:
    """``images [N, 3, H, W] in [0, 1] -> {"colour": [...], "marker": [...]}`` from pixel rules.

    ``marker`` values are ``" with a marker"`` / ``""``, as in :func:`~lightning_xai.world.world_concept_table`.

    Example:
        >>> from lightning_xai.world import WorldGenerator
        >>> x = WorldGenerator().generate(["a blue square on a plain background with a marker"], [3])
        >>> WorldColourMarkerDetector()(x)
        {'colour': ['blue'], 'marker': [' with a marker']}
    """

    columns: Sequence[str] = ("colour", "marker")

    def __init__(self, saturation: float = 0.3, white: float = 0.93, min_marker_pixels: int = 6) -> None:
        self.saturation = saturation
        self.white = white
        self.min_marker_pixels = min_marker_pixels
        self._names = list(_RGB)
        self._rgb = torch.tensor([_RGB[c] for c in self._names])

    def __call__(self, images: Tensor) -> dict[str, list[str]]:
        x = images.detach().float().cpu()
        sat = x.max(1).values - x.min(1).values  # [N, H, W]
        coloured = sat > self.saturation
        counts = coloured.sum((1, 2)).clamp_min(1)
        mean = (x * coloured[:, None]).sum((2, 3)) / counts[:, None]  # [N, 3]
        nearest = torch.cdist(mean, self._rgb).argmin(1)
        colours = [
            self._names[int(i)] if int(n) > 0 else "none" for i, n in zip(nearest, coloured.sum((1, 2)))
        ]
        white = (x.min(1).values > self.white).sum((1, 2))
        markers = [" with a marker" if int(w) >= self.min_marker_pixels else "" for w in white]
        return {"colour": colours, "marker": markers}

    def scores(self, images: Tensor) -> dict[str, Tensor]:
        """Per-concept presence scores (0 or 1) for ``colour:<c>`` and ``marker:present``.

        The concept-detector form that DiffExplainer's bias report takes
        (:func:`~lightning_xai.diffexplainer.bias_report`).

        Example:
            >>> from lightning_xai.world import WorldGenerator
            >>> x = WorldGenerator().generate(["a blue square on a plain background with a marker"], [3])
            >>> {k: float(v[0]) for k, v in WorldColourMarkerDetector().scores(x).items() if v[0] > 0}
            {'colour:blue': 1.0, 'marker:present': 1.0}
        """
        found = self(images)
        out = {f"colour:{c}": torch.tensor([float(v == c) for v in found["colour"]]) for c in self._names}
        out["marker:present"] = torch.tensor([float(bool(m)) for m in found["marker"]])
        return out
