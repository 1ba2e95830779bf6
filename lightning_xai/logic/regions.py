"""Image regions of the grounding test: Gaussian blur, regions from a map's cutoff, random rectangles.

:func:`region_from_map` turns a class-activation map into the region that the grounding test blurs (the
union of the tight boxes of the connected components above a cutoff), :func:`random_rectangle` places the
area-matched control, and :func:`gaussian_blur` makes the replacement (see :mod:`lightning_xai.logic.grounding`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

__all__ = ["Box", "gaussian_blur", "random_rectangle", "region_from_map"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` images, edge pixels replicated (any image size).

    Example:
        >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1.0
        >>> y = gaussian_blur(x, 1.0)
        >>> round(float(y.sum()), 4), float(y.max()) < 1.0
        (1.0, True)
    """
    if sigma <= 0:
        return images.clone()
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float64) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(images.dtype).to(images.device)
    c = images.shape[1]
    x = F.pad(images, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


Box = tuple[int, int, int, int]


def region_from_map(heat: np.ndarray, cutoff: float) -> tuple[np.ndarray, list[Box]]:
    """Union of the tight boxes of the 8-connected components of ``{heat >= cutoff * max(heat)}``.

    Args:
        heat: ``[H, W]`` non-negative map.
        cutoff: fraction of the maximum.

    Returns:
        ``(mask [H, W] bool, boxes)`` with boxes ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive.
        An all-zero map gives an empty region.

    Example:
        >>> h = np.zeros((6, 6)); h[1, 1] = 1.0; h[4, 3:5] = 0.8
        >>> mask, boxes = region_from_map(h, 0.5)
        >>> boxes, int(mask.sum())
        ([(1, 1, 2, 2), (3, 4, 5, 5)], 3)
    """
    top = float(heat.max()) if heat.size else 0.0
    mask = np.zeros(heat.shape, dtype=bool)
    if top <= 0:
        return mask, []
    labels, _ = ndimage.label(heat >= cutoff * top, structure=_EIGHT)
    boxes: list[Box] = []
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        ys, xs = sl
        mask[ys, xs] = True
        boxes.append((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)))
    return mask, boxes


def random_rectangle(
    area: int, aspect: float, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, Box]:
    """A uniformly placed rectangle of about ``area`` pixels with width/height ratio ``aspect``.

    Example:
        >>> mask, box = random_rectangle(12, 3.0, 10, 10, np.random.default_rng(0))
        >>> int(mask.sum()), box[2] - box[0], box[3] - box[1]
        (12, 6, 2)
    """
    area = int(max(1, min(area, height * width)))
    aspect = float(aspect) if aspect > 0 and math.isfinite(aspect) else 1.0
    h = int(min(height, max(1, round(math.sqrt(area / aspect)))))
    w = int(min(width, max(1, round(area / h))))
    if w == width:  # clipped in width: grow the height to keep the area
        h = int(min(height, max(1, round(area / w))))
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask, (x0, y0, x0 + w, y0 + h)


def _aspect(mask: np.ndarray) -> float:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    if ys.size == 0:
        return 1.0
    return (xs[-1] - xs[0] + 1) / (ys[-1] - ys[0] + 1)
