"""The planted-concept world as a DEPICT concept table: random scenes and their caption slots."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_xai.permutation.table import ConceptTable

from .data import random_slots, scene_seeds
from .rules import resolve_rule

__all__ = ["world_concept_table"]


def world_concept_table(
    n: int,
    task: Any = "shape_texture",
    seed: int = 0,
    concepts: Sequence[str] = ("shape", "colour", "texture", "marker"),
    marker_rate: float = 0.5,
    spurious_class: int | str | None = None,
    spurious_p: float = 1.0,
) -> ConceptTable:
    """A concept table of ``n`` random world scenes, labelled by ``task`` (a name or a ``LabelRule``).

    Columns ``shape``, ``colour``, ``texture`` and ``marker`` (``" with a marker"`` or ``""``), template
    ``"a {colour} {shape} on a {texture} background{marker}"``: exactly the world's captions, so the
    :class:`~lightning_xai.world.WorldGenerator` renders them. Scenes come from a split of their own
    (``"depict"``), disjoint from training and validation scenes.

    With ``spurious_class``, the marker follows the training split's spurious policy instead: present
    with probability ``spurious_p`` in rows of that class and never elsewhere, so the table carries the
    correlation a model may have learned (permuting the marker then breaks it).

    Example:
        >>> table = world_concept_table(4, seed=0)
        >>> table.captions()[0].startswith("a ")
        True
    """
    rule = resolve_rule(task)
    slots = random_slots(n, seed=seed, split="depict", marker_rate=marker_rate)
    if spurious_class is not None:
        target = (
            rule.classes.index(spurious_class) if isinstance(spurious_class, str) else int(spurious_class)
        )
        if not 0 <= target < len(rule.classes):
            raise ValueError(
                f"spurious_class={spurious_class!r} is not a class of {rule.name!r}: {rule.classes}."
            )
        if not 0.0 <= float(spurious_p) <= 1.0:
            raise ValueError(f"spurious_p must lie in [0, 1], got {spurious_p!r}.")
        draws = np.random.default_rng(np.random.SeedSequence([int(seed), 7717])).random(n)
        slots = [
            dataclasses.replace(s, marker=bool(rule(s) == target and u < spurious_p))
            for s, u in zip(slots, draws)
        ]
    columns = {
        "shape": [s.shape for s in slots],
        "colour": [s.colour for s in slots],
        "texture": [s.texture for s in slots],
        "marker": [" with a marker" if s.marker else "" for s in slots],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = [rule(s) for s in slots]
    return ConceptTable(
        columns,
        labels,
        "a {colour} {shape} on a {texture} background{marker}",
        concepts=list(concepts),
        seeds=scene_seeds(n, seed, "depict"),
        seed=seed,
    )
