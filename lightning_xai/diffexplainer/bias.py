"""Bias identification: concepts over-represented in class-maximising images that are not the class's core."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from lightning_xai.results.diffusion_explainer import BiasReport

__all__ = ["BiasReport", "ConceptDetector", "bias_report", "suspects"]

ConceptDetector = Callable[[Tensor], Mapping[str, Any]]
"""``images [N, 3, H, W] in [0, 1] -> {concept: N scores in [0, 1]}``: a CLIP-style zero-shot scorer
(image-text similarity turned into a probability), a trained concept classifier, or the world's
:meth:`~lightning_xai.world.WorldColourMarkerDetector.scores`."""


def _scores(detector: ConceptDetector, images: Tensor) -> dict[str, Tensor]:
    out = detector(images)
    if not isinstance(out, Mapping):
        raise TypeError(
            f"the concept detector must return a mapping concept -> scores, got {type(out).__name__}"
        )
    scores = {}
    for concept, value in out.items():
        t = torch.as_tensor(value, dtype=torch.float32).flatten()
        if t.numel() != len(images):
            raise ValueError(
                f"the detector gave {t.numel()} scores for concept {concept!r} on {len(images)} images"
            )
        scores[str(concept)] = t
    return scores


def bias_report(
    images: Tensor,
    detector: ConceptDetector,
    core_concepts: Iterable[str],
    reference: Tensor | Mapping[str, float],
    *,
    target: str = "",
    min_excess: float = 0.3,
    min_score: float = 0.5,
    effects: Mapping[str, float] | None = None,
    min_effect: float = 0.05,
) -> BiasReport:
    """Flag concepts that the class-maximising images show far more often than reference images and that
    are not among the target's declared core concepts (suspected spurious features, DiffExplainer's bias
    identification).

    A concept is flagged when ``mean score on images - mean score on reference >= min_excess``, its mean
    score is at least ``min_score``, it is not a core concept, and, where ``effects`` measures it (see
    :func:`~lightning_xai.diffexplainer.ablation_effects`), removing it from the prompt worsens the
    objective by at least ``min_effect``: a concept the images happen to show but the classifier does not
    use is reported (``effect`` column) without being flagged. The reference says what the generator
    shows without optimisation: images of the initial prompt with the same seeds (what
    :class:`~lightning_xai.callbacks.DiffusionExplainerCallback` uses), or known base rates per concept.

    Args:
        images: The target's maximising images, ``[N, 3, H, W]`` in [0, 1].
        detector: ``images -> {concept: scores}`` (see :data:`ConceptDetector`).
        core_concepts: Concepts that define the target (``"shape:circle"``, ``"padlock"``).
        reference: Reference images, or ``{concept: base rate}``.
        effects: ``{concept: objective rise when the concept is removed}``; concepts missing from it are
            judged on presence alone.
        min_effect: Effect a measured concept needs to be flagged.
        target: Name of the target, for the report.
        min_excess, min_score: Thresholds (see above).

    Example:
        >>> det = lambda x: {"wood": (x[:, 0].mean((1, 2)) > 0.5).float(), "metal": torch.zeros(len(x))}
        >>> imgs, ref = torch.ones(4, 3, 8, 8), torch.zeros(4, 3, 8, 8)
        >>> bias_report(imgs, det, core_concepts=["metal"], reference=ref, target="padlock").flagged
        ['wood']
    """
    if not 0.0 < float(min_excess) <= 1.0:
        raise ValueError(f"min_excess must lie in (0, 1], got {min_excess!r}")
    if not 0.0 <= float(min_score) <= 1.0:
        raise ValueError(f"min_score must lie in [0, 1], got {min_score!r}")
    if not float(min_effect) >= 0.0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect!r}")
    effects = dict(effects or {})
    core = set(core_concepts)
    scores = _scores(detector, images)
    if isinstance(reference, Tensor):
        base = {k: float(v.mean()) for k, v in _scores(detector, reference).items()}
    else:
        base = {str(k): float(v) for k, v in reference.items()}
    rows = []
    for concept in sorted(scores):
        score = float(scores[concept].mean())
        ref = base.get(concept, 0.0)
        excess = score - ref
        is_core = concept in core
        effect = effects.get(concept)
        present = (not is_core) and excess >= float(min_excess) and score >= float(min_score)
        rows.append(
            {
                "concept": concept,
                "score": score,
                "reference": ref,
                "excess": excess,
                "core": is_core,
                "effect": None if effect is None else float(effect),
                "flagged": present and (effect is None or effect >= float(min_effect)),
            }
        )
    return BiasReport(target=target, rows=rows, min_excess=float(min_excess), min_score=float(min_score))


def suspects(
    images: Tensor,
    detector: ConceptDetector,
    core_concepts: Iterable[str],
    reference: Tensor | Mapping[str, float],
    *,
    min_excess: float = 0.3,
    min_score: float = 0.5,
) -> list[str]:
    """Concepts that :func:`bias_report` would flag on presence alone (the ones worth an ablation check)."""
    report = bias_report(
        images, detector, core_concepts, reference, min_excess=min_excess, min_score=min_score
    )
    return report.flagged
