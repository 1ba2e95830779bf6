"""DEPICT's two assumption checks, with any concept detector.

* **Effective generation**: generated images show the captioned concepts. Per concept, a detector's
  accuracy on real images against their true values, next to its accuracy on the generated images
  against the captions' values.
* **Independent permutation**: permuting concept ``k`` changes concept ``k`` in the images and nothing
  else. Matrix ``[permuted concept, detected concept]`` of the drop in the detector's accuracy (against
  the *unpermuted* values) between base and permuted images: the diagonal large, the rest near 0.

A detector is any callable ``images [N, 3, H, W] -> {column: [value per image]}`` returning values in the
table's vocabulary (e.g. :class:`~lightning_xai.world.detector.WorldColourMarkerDetector`, or a CLIP
zero-shot scorer mapped to the table's values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from lightning_xai.permutation.importance import ConceptPermutation

__all__ = ["effective_generation", "independence_matrix"]

Detector = Callable[[Tensor], Mapping[str, Sequence[Any]]]


def _accuracy(
    detector: Detector, images: Tensor, truth: Mapping[str, Sequence[Any]], columns: Sequence[str]
) -> dict[str, float]:
    found = detector(images)
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"the detector returned no values for {missing}; it returned {sorted(found)}.")
    return {c: float(np.mean([a == b for a, b in zip(found[c], truth[c])])) for c in columns}


def effective_generation(
    depict: ConceptPermutation,
    detector: Detector,
    real_images: Tensor,
    real_values: Mapping[str, Sequence[Any]],
    columns: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """``{column: {"real": accuracy, "generated": accuracy}}`` of the detector on real and generated images.

    ``real_values`` holds the true value of each column for each real image; the generated images are the
    table's base images (from the cache; generated if missing).
    """
    columns = list(columns) if columns is not None else list(getattr(detector, "columns", real_values))
    table = depict.table
    generated = depict.cache.get(table.captions(), table.seeds)
    real = _accuracy(detector, real_images, real_values, columns)
    gen = _accuracy(detector, generated, {c: table.columns[c] for c in columns}, columns)
    return {c: {"real": real[c], "generated": gen[c]} for c in columns}


def independence_matrix(
    depict: ConceptPermutation,
    detector: Detector,
    columns: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
    repeats: int = 1,
) -> tuple[list[str], list[str], np.ndarray]:
    """``(permuted concepts, detected columns, [K, J] matrix)`` of detector accuracy drops.

    Entry ``[k, j]``: the detector's accuracy for column ``j`` on the base images minus its accuracy on the
    images of permutation ``k`` (both against the unpermuted values), averaged over the first ``repeats``
    permutations. Only the permuted rows' images differ, so this uses images the importance run generated.
    """
    table = depict.table
    columns = list(columns) if columns is not None else list(getattr(detector, "columns", table.concepts))
    concepts = list(concepts) if concepts is not None else list(table.concepts)
    truth = {c: table.columns[c] for c in columns}
    base = _accuracy(detector, depict.cache.get(table.captions(), table.seeds), truth, columns)
    out = np.zeros((len(concepts), len(columns)))
    for ki, k in enumerate(concepts):
        drops = []
        for p in depict.permutations(k)[:repeats]:
            images = depict.cache.get(p.captions, table.seeds)
            acc = _accuracy(detector, images, truth, columns)
            drops.append([base[c] - acc[c] for c in columns])
        out[ki] = np.mean(drops, axis=0)
    return concepts, columns, out
