"""The grounding figure: an image next to its counterfactual, accepted regions in green, random ones in red.

The right panel is what the grounding test ran (:func:`~lightning_xai.logic.ground_predicates`): the image
with its accepted regions replaced by the same Gaussian blur. The boxes are drawn into the pixels, so every
logger shows them, and kept as box metadata for the loggers that draw boxes (W&B, TensorBoard).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_xai.logic.grounding import GroundingTest
from lightning_xai.logic.regions import Box, gaussian_blur
from lightning_xai.panels import display_image
from lightning_xai.records import Media

__all__ = ["GUIDED_RGB", "RANDOM_RGB", "grounding_panel"]

#: colour of accepted (guided) regions
GUIDED_RGB = (0.1, 0.85, 0.2)
#: colour of the area-matched random rectangles
RANDOM_RGB = (0.95, 0.2, 0.2)


def _draw_rect(img: Tensor, box: Box, rgb: tuple[float, float, float], scale: int, dx: int) -> None:
    x0, y0, x1, y1 = (int(v) * scale for v in box)
    x0, x1 = x0 + dx, x1 + dx
    h, w = img.shape[1:]
    t = max(1, scale // 2)
    colour = torch.tensor(rgb)[:, None, None]
    x1, y1 = min(x1, w), min(y1, h)
    img[:, y0 : min(y0 + t, y1), x0:x1] = colour
    img[:, max(y1 - t, y0) : y1, x0:x1] = colour
    img[:, y0:y1, x0 : min(x0 + t, x1)] = colour
    img[:, y0:y1, max(x1 - t, x0) : x1] = colour


def _box(scale: int, b: Box, **extra: Any) -> dict[str, Any]:
    return {"x0": b[0] * scale, "y0": b[1] * scale, "x1": b[2] * scale, "y1": b[3] * scale, **extra}


def grounding_panel(image: Tensor, tests: Sequence[GroundingTest], title: str) -> Media | None:
    """The media ``grounding_images`` of one image and its grounding tests, or ``None`` for an image that is
    not grey or RGB ``[C, H, W]``.

    The image is upscaled to about 192 px; the caption is ``title`` followed by each test's outcome.

    Example:
        >>> from lightning_xai.logic import Predicate
        >>> t = GroundingTest(0, Predicate(0, 3, 1, 0.5, 1, 1.0, 8), 0.9, accepted=True, stage="gradcam",
        ...                   cutoff=0.6, boxes=[(2, 2, 6, 6)], area=0.25)
        >>> t.region = np.zeros((8, 8), bool); t.region[2:6, 2:6] = True
        >>> media = grounding_panel(torch.rand(3, 8, 8), [t], "id 7")
        >>> media.image.shape, media.caption
        ((192, 388, 3), 'id 7 | f3 >= 0.5: removed by gradcam region at cutoff 0.60 (25% of image); random did not')
    """
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        return None
    image = display_image(image)
    scale = max(1, 192 // max(image.shape[1:]))
    removed = np.zeros(image.shape[1:], dtype=bool)
    for t in tests:
        if t.accepted and t.region is not None:
            removed |= t.region
    # the right panel is the counterfactual the test ran: accepted regions replaced by the same blur
    blurred = gaussian_blur(image[None], 20.0 * min(image.shape[1:]) / 224.0)[0]
    after = torch.where(torch.from_numpy(removed)[None], blurred, image)

    def up(x: Tensor) -> Tensor:
        return x.repeat_interleave(scale, 1).repeat_interleave(scale, 2)

    big = up(image)
    _, h, w = big.shape
    gap = 4
    panel = torch.ones(3, h, 2 * w + gap)
    panel[:, :, :w] = big
    panel[:, :, w + gap :] = up(after)
    boxes: list[dict[str, Any]] = []
    lines = []
    for t in tests:
        pred = t.predicate.text()
        if t.skipped:
            lines.append(f"{pred}: skipped ({t.skipped})")
            continue
        if t.accepted:
            for b in t.boxes:
                _draw_rect(panel, b, GUIDED_RGB, scale, w + gap)
                boxes.append(_box(scale, b, label=pred, group="guided", score=float(t.area or 0.0)))
            if t.matched_random_region is not None:
                ys, xs = np.nonzero(t.matched_random_region)
                rb = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                _draw_rect(panel, rb, RANDOM_RGB, scale, w + gap)
                boxes.append(_box(scale, rb, label=f"random ({pred})", group="random"))
        guided = (
            f"removed by {t.stage} region at cutoff {t.cutoff:.2f} ({t.area:.0%} of image)"
            if t.accepted
            else "no region removed it"
        )
        rnd = "random removed it" if t.random_accepted else "random did not"
        lines.append(f"{pred}: {guided}; {rnd}")
    caption = title + (" | " + " | ".join(lines) if lines else "")
    return Media("grounding_images", panel.clamp(0, 1), caption=caption, boxes=boxes or None)
