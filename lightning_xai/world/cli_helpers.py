"""World inputs for callbacks, as classes a config file can name (LightningCLI / jsonargparse).

A YAML config cannot call :func:`~lightning_xai.world.concept_set` or
:func:`~lightning_xai.world.world_concept_table`: jsonargparse builds objects from a
``class_path`` and ``init_args``. These thin classes wrap those functions so that a config can give the
planted-concept world's inputs to the callbacks that need them (``examples/world.yaml``):

* :class:`WorldConceptSet` / :class:`WorldRandomSet`: TCAV concept sets and their random pool
  (``ConceptAttributionCallback(concepts=..., random=...)``), as map-style Datasets of images;
* :class:`WorldConceptTable`: a DEPICT concept table of world scenes
  (``ConceptPermutationCallback(concept_table=...)``);
* :class:`WorldConceptScores` and :class:`WorldCoreConcepts`: the concept detector and the declared core
  concepts of DiffExplainer's bias report (``DiffusionExplainerCallback(concept_detector=...,
  core_concepts=...)``).

Example (YAML)::

    concepts:
      "texture:striped": {class_path: lightning_xai.world.cli_helpers.WorldConceptSet,
                          init_args: {concept: "texture:striped", n: 100}}

Example (Python):
    >>> ds = WorldConceptSet("texture:striped", n=3)
    >>> len(ds), ds[0].shape
    (3, torch.Size([3, 64, 64]))
    >>> WorldConceptTable(4).captions()[0].startswith("a ")
    True
    >>> sorted(WorldCoreConcepts()(0))
    ['shape:circle', 'texture:striped', 'texture:zigzag']
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai.permutation.table import ConceptTable
from lightning_xai.world.concept_table import world_concept_table

from .data import concept_set, random_set
from .detector import WorldColourMarkerDetector
from .rules import DEFAULT_TASK, resolve_rule

__all__ = [
    "WorldConceptScores",
    "WorldConceptSet",
    "WorldConceptTable",
    "WorldCoreConcepts",
    "WorldRandomSet",
]


class _ImageSet(Dataset):
    """Images rendered once at construction; items are ``[3, size, size]`` float tensors in [0, 1]."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


class WorldConceptSet(_ImageSet):
    """The images of :func:`~lightning_xai.world.concept_set` as a Dataset (a TCAV concept set).

    Matched sets (the default) are exactly :class:`WorldRandomSet`'s scenes for the same ``n`` and
    ``seed`` with the concept's slot forced, so a CAV against that pool learns the concept alone.

    Args:
        concept: ``"slot:value"``, e.g. ``"texture:striped"`` (see :func:`~lightning_xai.world.all_concepts`).
        n: Number of images.
        seed: Probe seed; use the random pool's seed for matched sets.
        kind: ``"matched"`` or ``"isolated"`` (confounded, for comparison only).
        size: Image side in pixels (the model's input size).

    Example:
        >>> WorldConceptSet("colour:red", n=2, size=32)[1].shape
        torch.Size([3, 32, 32])
    """

    def __init__(
        self, concept: str, n: int = 100, seed: int = 11, kind: str = "matched", size: int = 64
    ) -> None:
        super().__init__(concept_set(concept, n, seed=seed, kind=kind, size=size))
        self.concept = concept

    def __repr__(self) -> str:
        return f"WorldConceptSet({self.concept!r}, n={len(self)})"


class WorldRandomSet(_ImageSet):
    """The images of :func:`~lightning_xai.world.random_set` as a Dataset (a TCAV random pool).

    Args:
        n: Number of images.
        seed: Probe seed (the concept sets' seed).
        size: Image side in pixels.

    Example:
        >>> len(WorldRandomSet(n=5))
        5
    """

    def __init__(self, n: int = 100, seed: int = 11, size: int = 64) -> None:
        super().__init__(random_set(n, seed=seed, size=size))

    def __repr__(self) -> str:
        return f"WorldRandomSet(n={len(self)})"


class WorldConceptTable(ConceptTable):
    """:func:`~lightning_xai.world.world_concept_table` as a class: ``n`` world scenes for DEPICT.

    Columns ``shape``, ``colour``, ``texture``, ``marker``; template
    ``"a {colour} {shape} on a {texture} background{marker}"``, which
    :class:`~lightning_xai.world.WorldGenerator` renders. ``task`` must be the data's task.

    Args:
        n: Rows (scenes).
        task: Task name whose labels the rows carry (the data module's ``task``).
        seed: Seed of the rows' slots and scene seeds.
        concepts: Columns to permute.
        marker_rate: P(marker) per row.
        spurious_class: Tie the marker to this class (as in a spurious training split).
        spurious_p: P(marker | spurious_class) when tied.

    Example:
        >>> WorldConceptTable(6, concepts=["shape", "texture"]).concepts
        ['shape', 'texture']
    """

    def __init__(
        self,
        n: int = 200,
        task: str = DEFAULT_TASK,
        seed: int = 0,
        concepts: Sequence[str] = ("shape", "colour", "texture", "marker"),
        marker_rate: float = 0.5,
        spurious_class: int | str | None = None,
        spurious_p: float = 1.0,
    ) -> None:
        table = world_concept_table(
            n,
            task,
            seed,
            concepts=concepts,
            marker_rate=marker_rate,
            spurious_class=spurious_class,
            spurious_p=spurious_p,
        )
        super().__init__(
            table.columns,
            table.labels,
            table.caption_template,
            seeds=table.seeds,
            concepts=table.concepts,
            seed=table.seed,
        )


class WorldConceptScores:
    """``images -> {concept: scores}`` of the world's colours and marker, from pixel rules (no training).

    The callable form of :meth:`WorldColourMarkerDetector.scores
    <lightning_xai.world.WorldColourMarkerDetector.scores>` that a config can name as DiffExplainer's
    ``concept_detector``.

    Args:
        saturation, white, min_marker_pixels: see :class:`~lightning_xai.world.WorldColourMarkerDetector`.

    Example:
        >>> from lightning_xai.world import WorldGenerator
        >>> x = WorldGenerator().generate(["a red circle on a plain background"], [0])
        >>> float(WorldConceptScores()(x)["colour:red"][0])
        1.0
    """

    def __init__(self, saturation: float = 0.3, white: float = 0.93, min_marker_pixels: int = 6) -> None:
        self.detector = WorldColourMarkerDetector(saturation, white, min_marker_pixels)

    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        return self.detector.scores(images)

    def __repr__(self) -> str:
        return "WorldConceptScores()"


class WorldCoreConcepts:
    """``class index -> concepts`` that can make a scene that class: a task's declared core concepts.

    The callable form of :meth:`LabelRule.positive_concepts <lightning_xai.world.LabelRule.positive_concepts>`
    that a config can name as DiffExplainer's ``core_concepts``.

    Args:
        task: Task name (the data module's ``task``).

    Example:
        >>> sorted(WorldCoreConcepts("shape")(1))
        ['shape:square']
    """

    def __init__(self, task: str = DEFAULT_TASK) -> None:
        self.rule = resolve_rule(task)

    def __call__(self, class_index: int) -> set[str]:
        return self.rule.positive_concepts(int(class_index))

    def __repr__(self) -> str:
        return f"WorldCoreConcepts({self.rule.name!r})"
