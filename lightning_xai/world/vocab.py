"""Vocabulary, slot descriptions, captions and concept names of the planted-concept world.

A scene is described by four *slots*:

========  ==========================================================  ===================
slot      values                                                      carried by
========  ==========================================================  ===================
shape     ``circle``, ``square``, ``triangle`` (or ``None``: no object) the object
colour    ``red``, ``green``, ``blue``, ``yellow`` (``None``: no object) the object
texture   ``plain``, ``striped``, ``dotted``, ``checkered``, ``zigzag``  the background
marker    present / absent                                            a small white cross
========  ==========================================================  ===================

A *concept* is one value of one slot, written ``"slot:value"``: ``"shape:circle"``,
``"colour:red"``, ``"texture:striped"``, ``"marker:present"``.

Captions are plain English and round-trip through :func:`make_caption` / :func:`parse_caption`::

    a red circle on a striped background
    a blue square on a plain background with a marker
    an empty dotted background                      (no object; used by isolated probe sets)
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "COLOURS",
    "LINED_TEXTURES",
    "MARKER_VALUES",
    "SHAPES",
    "SLOT_NAMES",
    "TEXTURES",
    "VOCABULARY",
    "Slots",
    "all_concepts",
    "all_slot_combinations",
    "concept_name",
    "make_caption",
    "parse_caption",
    "parse_concept",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Object shapes, in index order."""

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""Object colours, in index order."""

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag")
"""Background textures, in index order. All are drawn in neutral greys."""

MARKER_VALUES: tuple[str, ...] = ("present", "absent")
"""Values of the ``marker`` slot as they appear in concept names."""

SLOT_NAMES: tuple[str, ...] = ("shape", "colour", "texture", "marker")
"""The slots, in caption/concept order."""

VOCABULARY: Mapping[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "texture": TEXTURES,
    "marker": MARKER_VALUES,
}
"""Slot name -> allowed values."""

LINED_TEXTURES: frozenset[str] = frozenset({"striped", "zigzag"})
"""Textures made of lines; the default task ``shape_texture`` splits each shape by these."""

_SLOT_ALIASES = {"color": "colour"}


def _vocabulary_text() -> str:
    return (
        f"shape: {', '.join(SHAPES)}; colour: {', '.join(COLOURS)}; "
        f"texture: {', '.join(TEXTURES)}; marker: 'with a marker' / 'without a marker' "
        "(write 'an empty <texture> background' for a scene without an object)"
    )


@dataclass(frozen=True)
class Slots:
    """The slot values of one scene.

    Args:
        shape: One of :data:`SHAPES`, or ``None`` for a scene without an object.
        colour: One of :data:`COLOURS`; ``None`` exactly when ``shape`` is ``None``.
        texture: One of :data:`TEXTURES`.
        marker: Whether the small spurious marker (a white cross in a corner) is drawn
            (``"present"``/``"absent"`` are accepted too).

    Raises:
        ValueError: If a value is not in the vocabulary, or only one of shape/colour is ``None``.

    Example:
        >>> s = Slots("circle", "red", "striped")
        >>> s.caption
        'a red circle on a striped background'
        >>> s.with_value("marker", "present").concepts()
        ['shape:circle', 'colour:red', 'texture:striped', 'marker:present']
    """

    shape: str | None
    colour: str | None
    texture: str
    marker: bool = False

    def __post_init__(self) -> None:
        if self.shape is not None and self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; valid shapes: {', '.join(SHAPES)}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; valid colours: {', '.join(COLOURS)}")
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}; valid textures: {', '.join(TEXTURES)}")
        if (self.shape is None) != (self.colour is None):
            raise ValueError(
                "shape and colour must both be given (a coloured object) or both be None (no object); "
                f"got shape={self.shape!r}, colour={self.colour!r}"
            )
        if isinstance(self.marker, str):
            if self.marker not in MARKER_VALUES:
                raise ValueError(
                    f"unknown marker value {self.marker!r}; use a bool or one of {MARKER_VALUES}"
                )
            object.__setattr__(self, "marker", self.marker == "present")
        elif not isinstance(self.marker, bool):
            object.__setattr__(self, "marker", bool(self.marker))

    @property
    def has_object(self) -> bool:
        """Whether the scene contains an object (``shape`` is not ``None``)."""
        return self.shape is not None

    @property
    def caption(self) -> str:
        """The plain-English caption, see :func:`make_caption`."""
        return make_caption(self)

    def value(self, slot: str) -> str | None:
        """The value of ``slot`` as written in concept names (marker: ``"present"``/``"absent"``).

        Example:
            >>> Slots("square", "blue", "plain", marker=True).value("marker")
            'present'
        """
        slot = _canonical_slot(slot)
        if slot == "marker":
            return "present" if self.marker else "absent"
        return getattr(self, slot)

    def with_value(self, slot: str, value: str | bool | None) -> Slots:
        """A copy with one slot changed; ``slot`` may also be a concept name's slot part.

        For ``marker`` the value may be ``"present"``/``"absent"`` or a bool.

        Example:
            >>> Slots("square", "blue", "plain").with_value("texture", "dotted").caption
            'a blue square on a dotted background'
        """
        slot = _canonical_slot(slot)
        if slot == "marker":
            if isinstance(value, str):
                if value not in MARKER_VALUES:
                    raise ValueError(f"unknown marker value {value!r}; valid: {', '.join(MARKER_VALUES)}")
                value = value == "present"
            return dataclasses.replace(self, marker=bool(value))
        return dataclasses.replace(self, **{slot: value})

    def with_concept(self, concept: str) -> Slots:
        """A copy with the slot of ``concept`` (``"slot:value"``) set to its value.

        Example:
            >>> Slots("square", "blue", "plain").with_concept("shape:circle").shape
            'circle'
        """
        slot, value = parse_concept(concept)
        return self.with_value(slot, value)

    def concepts(self) -> list[str]:
        """Concept names present in this scene (``marker:present`` only when the marker is drawn).

        Example:
            >>> Slots(None, None, "dotted").concepts()
            ['texture:dotted']
        """
        out = []
        if self.shape is not None:
            out += [f"shape:{self.shape}", f"colour:{self.colour}"]
        out.append(f"texture:{self.texture}")
        if self.marker:
            out.append("marker:present")
        return out


def _canonical_slot(slot: str) -> str:
    s = _SLOT_ALIASES.get(slot.strip().lower(), slot.strip().lower())
    if s not in VOCABULARY:
        raise ValueError(f"unknown slot {slot!r}; valid slots: {', '.join(SLOT_NAMES)}")
    return s


def make_caption(slots: Slots) -> str:
    """The plain-English caption of ``slots``.

    Example:
        >>> make_caption(Slots("circle", "red", "striped"))
        'a red circle on a striped background'
        >>> make_caption(Slots("square", "blue", "plain", marker=True))
        'a blue square on a plain background with a marker'
        >>> make_caption(Slots(None, None, "dotted"))
        'an empty dotted background'
    """
    if slots.shape is None:
        text = f"an empty {slots.texture} background"
    else:
        text = f"a {slots.colour} {slots.shape} on a {slots.texture} background"
    if slots.marker:
        text += " with a marker"
    return text


_FILLER = frozenset({"a", "an", "on", "the", "background", "with", "and", "of", "in"})
_NEGATIONS = frozenset({"no", "without"})
_WORD_TO_SLOT = {w: slot for slot in ("shape", "colour", "texture") for w in VOCABULARY[slot]}


def parse_caption(caption: str) -> Slots:
    """Parse a caption into :class:`Slots` (inverse of :func:`make_caption`).

    Words may come in any order; articles and ``on``/``background``/``with`` are ignored;
    ``marker`` sets the marker, ``no marker``/``without a marker`` clears it, and ``empty``
    means no object.

    Raises:
        ValueError: For an unknown word (the message names it and lists the vocabulary per
            slot), a slot given twice, or a missing slot (texture always; shape and colour
            unless the caption says ``empty``).

    Example:
        >>> parse_caption("a red circle on a striped background")
        Slots(shape='circle', colour='red', texture='striped', marker=False)
        >>> parse_caption("a blue square on a plain background with a marker").marker
        True
        >>> parse_caption("a red circle on a furry background")
        Traceback (most recent call last):
        ...
        ValueError: unknown word 'furry' in caption 'a red circle on a furry background'; ...
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    words = [w for w in re.split(r"[\s,.;:!?]+", caption.strip().lower()) if w]
    found: dict[str, list[str]] = {"shape": [], "colour": [], "texture": []}
    marker_words = 0
    negated = False
    empty = False
    for w in words:
        if w in _WORD_TO_SLOT:
            found[_WORD_TO_SLOT[w]].append(w)
        elif w == "marker":
            marker_words += 1
        elif w in _NEGATIONS:
            negated = True
        elif w == "empty":
            empty = True
        elif w in _FILLER:
            continue
        else:
            raise ValueError(
                f"unknown word {w!r} in caption {caption!r}; the vocabulary is: {_vocabulary_text()}"
            )
    for slot, values in found.items():
        if len(values) > 1:
            raise ValueError(f"caption {caption!r} names more than one {slot}: {', '.join(values)}")
    if negated and marker_words == 0:
        raise ValueError(
            f"caption {caption!r} says 'no'/'without' but not what; only the marker can be negated "
            "('without a marker')"
        )
    if marker_words > 1:
        raise ValueError(f"caption {caption!r} mentions the marker more than once")
    if not found["texture"]:
        raise ValueError(
            f"caption {caption!r} names no texture; add one of: {', '.join(TEXTURES)} "
            "(e.g. 'a red circle on a striped background')"
        )
    shape = found["shape"][0] if found["shape"] else None
    colour = found["colour"][0] if found["colour"] else None
    if empty:
        if shape is not None or colour is not None:
            raise ValueError(f"caption {caption!r} says 'empty' but also names an object")
    else:
        missing = [s for s, v in (("shape", shape), ("colour", colour)) if v is None]
        if missing:
            hints = "; ".join(f"{m}: one of {', '.join(VOCABULARY[m])}" for m in missing)
            raise ValueError(
                f"caption {caption!r} names no {' and no '.join(missing)} ({hints}); "
                "write 'an empty <texture> background' for a scene without an object"
            )
    return Slots(shape, colour, found["texture"][0], marker=marker_words == 1 and not negated)


def all_concepts() -> list[str]:
    """All concept names: every shape, colour and texture value, and ``marker:present``.

    ``marker:absent`` is a valid concept name (see :func:`parse_concept`) but is not listed:
    it is the complement of ``marker:present``.

    Example:
        >>> all_concepts()[:4]
        ['shape:circle', 'shape:square', 'shape:triangle', 'colour:red']
        >>> len(all_concepts())
        13
    """
    out = [f"{slot}:{v}" for slot in ("shape", "colour", "texture") for v in VOCABULARY[slot]]
    out.append("marker:present")
    return out


def concept_name(slot: str, value: str | bool) -> str:
    """The concept name ``"slot:value"`` (validated).

    Example:
        >>> concept_name("marker", True)
        'marker:present'
    """
    if _canonical_slot(slot) == "marker" and isinstance(value, bool):
        value = "present" if value else "absent"
    s, v = parse_concept(f"{slot}:{value}")
    return f"{s}:{v}"


def parse_concept(concept: str) -> tuple[str, str]:
    """Split a concept name ``"slot:value"`` into ``(slot, value)`` and validate it.

    ``color`` is accepted as an alias of ``colour``.

    Raises:
        ValueError: If the name has no ``:``, or the slot or value is unknown; the message lists
            the valid names (and suggests ``slot:value`` for a bare value).

    Example:
        >>> parse_concept("texture:striped")
        ('texture', 'striped')
        >>> parse_concept("striped")
        Traceback (most recent call last):
        ...
        ValueError: concept name 'striped' must look like 'slot:value'; did you mean 'texture:striped'? ...
    """
    if not isinstance(concept, str):
        raise TypeError(f"concept name must be a str, got {type(concept).__name__}")
    valid = ", ".join(all_concepts()) + ", marker:absent"
    if ":" not in concept:
        bare = concept.strip().lower()
        guess = [f"{s}:{bare}" for s, vals in VOCABULARY.items() if bare in vals]
        hint = f"; did you mean {guess[0]!r}?" if guess else ""
        raise ValueError(
            f"concept name {concept!r} must look like 'slot:value'{hint} Valid concepts: {valid}"
        )
    slot, value = (p.strip().lower() for p in concept.split(":", 1))
    slot = _SLOT_ALIASES.get(slot, slot)
    if slot not in VOCABULARY:
        raise ValueError(
            f"unknown slot {slot!r} in concept {concept!r}; valid slots: {', '.join(SLOT_NAMES)}. "
            f"Valid concepts: {valid}"
        )
    if value not in VOCABULARY[slot]:
        raise ValueError(
            f"unknown {slot} value {value!r} in concept {concept!r}; valid {slot} values: "
            f"{', '.join(VOCABULARY[slot])}"
        )
    return slot, value


def all_slot_combinations(include_marker: bool = True) -> Iterator[Slots]:
    """Every scene description with an object (shape x colour x texture [x marker]).

    Example:
        >>> len(list(all_slot_combinations()))
        120
    """
    markers = (False, True) if include_marker else (False,)
    for shape, colour, texture, marker in itertools.product(SHAPES, COLOURS, TEXTURES, markers):
        yield Slots(shape, colour, texture, marker)
