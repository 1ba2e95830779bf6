"""Concept attribution: TCAV (Kim et al., 2018) and Visual-TCAV (De Santis et al., 2024) in plain PyTorch.

No Lightning import: use it in a notebook on any ``nn.Module``.

Example:
    >>> from lightning_xai.tcav import ConceptAttribution
    >>> explainer = ConceptAttribution(model, layers=["layer4"], concepts={"striped": striped_images},
    ...                                random=random_images, cav="mean", n_random=10)  # doctest: +SKIP
    >>> epoch = explainer.explain(val_images, val_labels)             # what a callback records  # doctest: +SKIP
    >>> scores = explainer.tcav(val_images, target=val_labels)        # TCAV scores, p-values  # doctest: +SKIP
    >>> scores.score("striped", "zebra").significant                   # doctest: +SKIP
    >>> local = explainer.local(image, n_classes=3)                     # concept maps + attributions  # doctest: +SKIP
    >>> table = explainer.global_explanation(val_images, val_labels)   # mean, SE, 2-SE interval  # doctest: +SKIP

Modules: :mod:`~lightning_xai.tcav.data` (concept sets, random pools, fingerprints),
:mod:`~lightning_xai.tcav.activations` (batched activations/gradients, cache, default layer),
:mod:`~lightning_xai.tcav.cav` (mean-difference and batched logistic-regression CAVs),
:mod:`~lightning_xai.tcav.stats` (t-tests, Bonferroni, SE intervals), :mod:`~lightning_xai.tcav.visual` (emblems,
concept maps, integrated gradients, attributions), :mod:`~lightning_xai.tcav.scores` (the typed results of
the explainer's methods), :mod:`~lightning_xai.tcav.epoch` (the parts of one explained epoch, shared among
processes), :mod:`~lightning_xai.tcav.figures` (its figures), :mod:`~lightning_xai.tcav.explainer` (the API).
:meth:`ConceptAttribution.explain` returns the record's typed result,
:class:`~lightning_xai.results.concept_attribution.ConceptAttributionResult`.
"""

from lightning_xai.tcav.activations import (
    ActivationCache,
    last_feature_map_layer,
    layer_activations,
    layer_gradients,
    model_version,
)
from lightning_xai.tcav.cav import CAV_KINDS, CAVSet, linear_cavs, mean_difference_cavs, train_cavs
from lightning_xai.tcav.data import ConceptDataError, fingerprint, load_images, random_set_indices
from lightning_xai.tcav.epoch import Split
from lightning_xai.tcav.explainer import ConceptAttribution
from lightning_xai.tcav.scores import GlobalExplanation, TCAVResult, TCAVScore, VisualTCAVResult
from lightning_xai.tcav.stats import bonferroni, two_se_interval, two_sided_pvalues
from lightning_xai.tcav.visual import (
    IntegratedGradients,
    concept_attributions,
    concept_maps,
    emblems,
    integrated_gradients,
    upsample_maps,
)

__all__ = [
    "CAV_KINDS",
    "ActivationCache",
    "CAVSet",
    "ConceptAttribution",
    "ConceptDataError",
    "GlobalExplanation",
    "IntegratedGradients",
    "Split",
    "TCAVResult",
    "TCAVScore",
    "VisualTCAVResult",
    "bonferroni",
    "concept_attributions",
    "concept_maps",
    "emblems",
    "fingerprint",
    "integrated_gradients",
    "last_feature_map_layer",
    "layer_activations",
    "layer_gradients",
    "linear_cavs",
    "load_images",
    "mean_difference_cavs",
    "model_version",
    "random_set_indices",
    "train_cavs",
    "two_se_interval",
    "two_sided_pvalues",
    "upsample_maps",
]
