"""Label rules: how a scene's class follows from its slots, and the ground truth that implies.

Built-in tasks (:func:`get_task`):

================  =====================================================  ==============================
task              classes                                                concepts that matter
================  =====================================================  ==============================
``shape``         ``circle``, ``square``, ``triangle``                   every ``shape:*``
``colour``        ``red``, ``green``, ``blue``, ``yellow``               every ``colour:*``
``texture``       the five textures                                      every ``texture:*``
``shape_texture`` ``<shape>/lined`` and ``<shape>/unlined`` (6 classes)  every ``shape:*`` and
(default)         lined = striped or zigzag; unlined = plain, dotted,    ``texture:*``; colour and
                  checkered                                              marker are irrelevant
================  =====================================================  ==============================

The ground truth of a rule is computed by exhaustive enumeration of every slot combination,
so it is available for user-supplied rules too (:meth:`LabelRule.from_function`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from .vocab import (
    COLOURS,
    LINED_TEXTURES,
    SHAPES,
    TEXTURES,
    VOCABULARY,
    Slots,
    all_concepts,
    all_slot_combinations,
    parse_concept,
)

__all__ = ["DEFAULT_TASK", "TASKS", "LabelRule", "get_task", "resolve_rule"]

DEFAULT_TASK = "shape_texture"


class LabelRule:
    """A documented function from :class:`Slots` to a class index, with its ground truth.

    Args:
        name: Short identifier (e.g. ``"shape_texture"``).
        classes: Class names, in index order.
        fn: ``fn(slots) -> int`` (class index) for scenes with an object.
        description: Plain-English statement of the rule.

    Example:
        >>> rule = get_task("shape_texture")
        >>> rule.classes[rule(Slots("circle", "red", "striped"))]
        'circle/lined'
        >>> sorted(rule.irrelevant_concepts())[:2]
        ['colour:blue', 'colour:green']
    """

    def __init__(self, name: str, classes: Sequence[str], fn: Callable[[Slots], int], description: str = ""):
        if len(classes) < 2:
            raise ValueError(f"a label rule needs at least 2 classes, got {list(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"class names must be unique, got {list(classes)}")
        self.name = str(name)
        self.classes: list[str] = [str(c) for c in classes]
        self.fn = fn
        self.description = description or f"user-defined rule {name!r}"

    @classmethod
    def from_function(
        cls,
        fn: Callable[[Slots], int | str],
        classes: Sequence[str],
        name: str = "custom",
        description: str = "",
    ) -> LabelRule:
        """Wrap a user function ``slots -> class index or class name``.

        Example:
            >>> rule = LabelRule.from_function(lambda s: int(s.colour in ("red", "yellow")),
            ...                                ["cool", "warm"], name="warmth")
            >>> rule(Slots("circle", "red", "plain"))
            1
            >>> sorted(rule.relevant_concepts("warm"))
            ['colour:blue', 'colour:green', 'colour:red', 'colour:yellow']
        """
        return cls(name, list(classes), _ClassNameOrIndex(fn, list(classes), name), description)

    # ----------------------------------------------------------------- labels
    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __call__(self, slots: Slots) -> int:
        """The class index of ``slots`` (validated to lie in ``range(num_classes)``)."""
        if slots.shape is None:
            raise ValueError("label rules are defined for scenes with an object; got a scene without one")
        y = int(self.fn(slots))
        if not 0 <= y < self.num_classes:
            raise ValueError(
                f"label rule {self.name!r} returned {y} for {slots}; expected 0..{self.num_classes - 1}"
            )
        return y

    label = __call__

    def class_name(self, slots: Slots) -> str:
        """The class name of ``slots``."""
        return self.classes[self(slots)]

    def class_index(self, class_: int | str) -> int:
        """Index of a class given by name or index (ValueError listing the classes otherwise)."""
        return class_index(self.classes, class_, owner=f"rule {self.name!r}")

    def __repr__(self) -> str:
        return f"LabelRule(name={self.name!r}, classes={self.classes!r})"

    # ----------------------------------------------------------- ground truth
    @functools.cached_property
    def _table(self) -> dict[Slots, int]:
        return {s: self(s) for s in all_slot_combinations()}

    @functools.cached_property
    def _flips(self) -> dict[tuple[str, int], tuple[bool, bool]]:
        """(concept, class) -> (some change *to* the concept makes label == class,
        some change *away from* it makes label == class false)."""
        out: dict[tuple[str, int], list[bool]] = {}
        for concept in all_concepts():
            slot, value = parse_concept(concept)
            for c in range(self.num_classes):
                out[(concept, c)] = [False, False]
            for s, y in self._table.items():
                if s.value(slot) != value:
                    continue
                for other in VOCABULARY[slot]:
                    if other == value:
                        continue
                    y_other = self._table[s.with_value(slot, other)]
                    if y_other == y:
                        continue
                    out[(concept, y)][0] = True  # other -> value makes label == y
                    out[(concept, y_other)][1] = True  # other -> value makes label != y_other
        return {k: (v[0], v[1]) for k, v in out.items()}

    def relevant_concepts(self, class_: int | str) -> set[str]:
        """Concepts that matter for ``class_``: changing a slot to or from the concept's value flips
        ``label == class_`` for at least one slot combination (exhaustive enumeration).

        Example:
            >>> sorted(get_task("shape").relevant_concepts("circle"))
            ['shape:circle', 'shape:square', 'shape:triangle']
        """
        c = self.class_index(class_)
        return {k for k in all_concepts() if any(self._flips[(k, c)])}

    def positive_concepts(self, class_: int | str) -> set[str]:
        """Concepts whose introduction can turn a scene *into* ``class_`` (a TCAV score above 0.5
        is expected). A non-monotone rule may list a concept as both positive and negative.

        Example:
            >>> sorted(get_task("shape_texture").positive_concepts("circle/lined"))
            ['shape:circle', 'texture:striped', 'texture:zigzag']
        """
        c = self.class_index(class_)
        return {k for k in all_concepts() if self._flips[(k, c)][0]}

    def negative_concepts(self, class_: int | str) -> set[str]:
        """Concepts whose introduction can turn a scene of ``class_`` into another class.

        Example:
            >>> sorted(get_task("shape").negative_concepts("circle"))
            ['shape:square', 'shape:triangle']
        """
        c = self.class_index(class_)
        return {k for k in all_concepts() if self._flips[(k, c)][1]}

    def irrelevant_concepts(self) -> set[str]:
        """Concepts that matter for no class.

        Example:
            >>> "marker:present" in get_task("shape_texture").irrelevant_concepts()
            True
        """
        relevant = set().union(*(self.relevant_concepts(c) for c in range(self.num_classes)))
        return set(all_concepts()) - relevant

    def relevant_slots(self) -> set[str]:
        """Slots with at least one relevant concept.

        Example:
            >>> sorted(get_task("shape_texture").relevant_slots())
            ['shape', 'texture']
        """
        rel = set().union(*(self.relevant_concepts(c) for c in range(self.num_classes)))
        return {parse_concept(k)[0] for k in rel}

    def combinations_by_class(self, marker: bool | None = None) -> list[list[Slots]]:
        """All slot combinations grouped by class (optionally only those with the given marker)."""
        out: list[list[Slots]] = [[] for _ in self.classes]
        for s, y in self._table.items():
            if marker is None or s.marker == marker:
                out[y].append(s)
        return out


class _ClassNameOrIndex:
    """Picklable wrapper turning a user function's class name or index into an index."""

    def __init__(self, fn: Callable[[Slots], int | str], classes: list[str], name: str):
        self.fn, self.classes, self.name = fn, classes, name

    def __call__(self, slots: Slots) -> int:
        out = self.fn(slots)
        if isinstance(out, str):
            if out not in self.classes:
                raise ValueError(
                    f"label rule {self.name!r} returned unknown class {out!r}; classes: {self.classes}"
                )
            return self.classes.index(out)
        return int(out)


# Module-level functions (not lambdas) so that built-in rules pickle (ddp_spawn, dataloader workers).
def _by_shape(s: Slots) -> int:
    return SHAPES.index(s.shape)


def _by_colour(s: Slots) -> int:
    return COLOURS.index(s.colour)


def _by_texture(s: Slots) -> int:
    return TEXTURES.index(s.texture)


def _shape_texture(s: Slots) -> int:
    return 2 * SHAPES.index(s.shape) + (0 if s.texture in LINED_TEXTURES else 1)


TASKS: dict[str, LabelRule] = {
    "shape": LabelRule(
        "shape", SHAPES, _by_shape, "class = the object's shape; colour, texture and marker are irrelevant"
    ),
    "colour": LabelRule(
        "colour", COLOURS, _by_colour, "class = the object's colour; shape, texture and marker are irrelevant"
    ),
    "texture": LabelRule(
        "texture",
        TEXTURES,
        _by_texture,
        "class = the background texture; shape, colour and marker are irrelevant",
    ),
    "shape_texture": LabelRule(
        "shape_texture",
        [f"{shape}/{kind}" for shape in SHAPES for kind in ("lined", "unlined")],
        _shape_texture,
        "class = '<shape>/lined' if the background is striped or zigzag, else '<shape>/unlined' "
        "(plain, dotted, checkered); colour and marker are irrelevant",
    ),
}
"""Built-in tasks by name."""


def get_task(name: str) -> LabelRule:
    """A built-in label rule by name.

    Raises:
        ValueError: For an unknown name, listing the valid names.

    Example:
        >>> get_task("shape_texture").classes[:3]
        ['circle/lined', 'circle/unlined', 'square/lined']
    """
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; valid tasks: {', '.join(TASKS)} "
            "(or pass a LabelRule, e.g. LabelRule.from_function(fn, classes, name))"
        )
    return TASKS[name]


def resolve_rule(task: str | LabelRule) -> LabelRule:
    """Return ``task`` if it is a :class:`LabelRule`, else :func:`get_task` of it."""
    if isinstance(task, LabelRule):
        return task
    if isinstance(task, str):
        return get_task(task)
    raise TypeError(f"task must be a task name or a LabelRule, got {type(task).__name__}")


def class_index(classes: Sequence[str], class_: int | str, owner: str = "this table") -> int:
    """Index of ``class_`` (a name or an index) in ``classes``; a ValueError lists the classes otherwise."""
    if isinstance(class_, str):
        if class_ not in classes:
            raise ValueError(f"unknown class {class_!r} for {owner}; classes: {list(classes)}")
        return list(classes).index(class_)
    i = int(class_)
    if not 0 <= i < len(classes):
        raise ValueError(f"class index {i} out of range for {owner} ({len(classes)} classes)")
    return i
