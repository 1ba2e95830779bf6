"""DEPICT: concept permutation importance through a text-to-image generator (no Lightning imports).

* :class:`ConceptTable` holds rows of concept values, labels, per-row seeds and a caption template, and
  builds seeded column permutations (:func:`~lightning_xai.world.world_concept_table` for the planted-concept world).
* :class:`GenerationCache` generates every (generator, caption, seed) image once.
* :class:`ConceptPermutation` scores a classifier: metric on unpermuted minus permuted images; its
  :meth:`~ConceptPermutation.explain` returns a :class:`ConceptPermutationResult` (the record's typed result,
  defined in :mod:`lightning_xai.results.concept_permutation`).
* :func:`effective_generation` and :func:`independence_matrix`: the paper's checks, with any detector.
"""

from lightning_xai.permutation.cache import GenerationCache, GeneratorOutputError
from lightning_xai.permutation.checks import effective_generation, independence_matrix
from lightning_xai.permutation.importance import (
    AUTOCAST_DTYPES,
    METRICS,
    ConceptPermutation,
    kendall_tau,
    resolve_autocast_dtype,
    resolve_metric,
    summarise,
)
from lightning_xai.permutation.table import ConceptTable, Permutation
from lightning_xai.results.concept_permutation import (
    ConceptImportance,
    ConceptPermutationResult,
    GenerationStats,
)

__all__ = [
    "AUTOCAST_DTYPES",
    "METRICS",
    "ConceptImportance",
    "ConceptPermutation",
    "ConceptPermutationResult",
    "ConceptTable",
    "GenerationCache",
    "GenerationStats",
    "GeneratorOutputError",
    "Permutation",
    "effective_generation",
    "independence_matrix",
    "kendall_tau",
    "resolve_autocast_dtype",
    "resolve_metric",
    "summarise",
]
