"""Figures of a concept-attribution epoch: TCAV scores and global attributions as bar charts, concept maps
over the probe images (rasters through :mod:`lightning_xai.charts` and :mod:`lightning_xai.panels`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from lightning_xai.charts import bar_chart
from lightning_xai.panels import display_image, heat_overlay, panel_image
from lightning_xai.records import Media
from lightning_xai.tcav.scores import VisualTCAVResult

__all__ = ["bars_width", "global_figure", "maps_figure", "probe_media", "tcav_figure"]


def bars_width(n_concepts: int, n_classes: int) -> int:
    """Pixels: room for ``n_concepts`` groups of ``n_classes`` bars.

    Example:
        >>> bars_width(4, 6)
        1280
    """
    return round(100 * min(16.0, 2.0 + 0.9 * n_concepts * max(1, n_classes) / 2))


def _grid(
    rows: Sequence[Any], layer: str, concepts: Sequence[str], classes: Sequence[str], attr: str
) -> np.ndarray:
    """``[classes, concepts]`` float32 values of attribute ``attr`` of the rows at ``layer`` (NaN: none)."""
    cell = {(r.class_name, r.concept): getattr(r, attr) for r in rows if r.layer == layer}
    values = [[cell.get((c, k), float("nan")) for k in concepts] for c in classes]
    return np.asarray(values, dtype=np.float32).reshape(len(classes), len(concepts))


def tcav_figure(
    scores: Sequence[Any], layer: str, concepts: Sequence[str], classes: Sequence[str], n_hypotheses: int
) -> np.ndarray:
    """TCAV scores per (concept, class) with the run-to-run standard deviation; ``*`` where significant.

    ``scores``: :class:`~lightning_xai.results.concept_attribution.TCAVEntry` rows (any layers).
    """
    marks = _grid(scores, layer, concepts, classes, "significant") > 0
    return bar_chart(
        list(concepts),
        _grid(scores, layer, concepts, classes, "tcav"),
        series=list(classes),
        errors=_grid(scores, layer, concepts, classes, "tcav_sd"),
        marks=marks,
        ylim=(0.0, 1.1),
        hline=0.5,
        ylabel="TCAV score (sign fraction)",
        title=f"TCAV at {layer} (* significant after Bonferroni, m={n_hypotheses})",
        size=(bars_width(len(concepts), len(classes)), 380),
    )


def global_figure(
    attributions: Sequence[Any], layer: str, concepts: Sequence[str], classes: Sequence[str]
) -> np.ndarray:
    """Visual-TCAV global attribution per (concept, class): mean and 2-SE interval.

    ``attributions``: :class:`~lightning_xai.results.concept_attribution.GlobalAttribution` rows (any layers).
    """
    means, errors = [], []
    for row_mean, row_low, row_high in zip(
        _grid(attributions, layer, concepts, classes, "mean"),
        _grid(attributions, layer, concepts, classes, "ci_low"),
        _grid(attributions, layer, concepts, classes, "ci_high"),
    ):
        mean = np.nan_to_num(row_mean)
        means.append(mean)
        errors.append(np.stack([mean - np.nan_to_num(row_low), np.nan_to_num(row_high) - mean]))
    return bar_chart(
        list(concepts),
        np.stack(means) if means else np.zeros((0, len(concepts)), dtype=np.float32),
        series=list(classes),
        errors=errors,
        ylabel="attribution (share of logit gain)",
        title=f"Visual-TCAV global attribution at {layer} (2-SE intervals)",
        size=(bars_width(len(concepts), len(classes)), 380),
    )


def maps_figure(
    image: Tensor, maps: np.ndarray, concepts: Sequence[str], attr: dict[str, float], top: str, layer: str
) -> np.ndarray:
    """The probe, then each concept's map over it (jet, 45% opacity) titled with its attribution."""
    panels = [image] + [heat_overlay(image, maps[j]) for j in range(len(concepts))]
    titles = [f"pred: {top}"] + [f"{concept}\nattr {attr[concept]:.3f}" for concept in concepts]
    return panel_image(panels, titles, f"Visual-TCAV concept maps at {layer}", cols=5)


def probe_media(local: VisualTCAVResult, probes: Tensor) -> list[Media]:
    """Per probe image: ``concept_maps`` (its concept maps at the first layer over it, titled with the top
    class's attributions) and ``concept_masks`` (the image with the maps thresholded at 0.5 as masks)."""
    layer = local.layers[0]
    maps = local.maps(layer, upsample=True)  # [K, N, H, W]
    out = []
    for i in range(probes.shape[0]):
        image = display_image(probes[i])
        top = local.class_names[int(local.targets[i, 0])]
        attr = {k: float(local.attributions[0, j, i, 0]) for j, k in enumerate(local.concepts)}
        masks = {k: (maps[j, i].numpy() >= 0.5).astype(np.uint8) for j, k in enumerate(local.concepts)}
        figure = maps_figure(image, maps[:, i].numpy(), local.concepts, attr, top, layer)
        out.append(
            Media("concept_maps", figure, caption=f"probe {i}: predicted {top}; concept maps at {layer}")
        )
        out.append(
            Media(
                "concept_masks",
                image,
                caption=f"probe {i}: concept maps at {layer} thresholded at 0.5",
                masks=masks,
                mask_labels={1: "concept"},
            )
        )
    return out
