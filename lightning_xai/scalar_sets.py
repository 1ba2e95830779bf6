"""Which scalars a callback logs: its summary set (the default), all of them, none, or key patterns.

Every callback logs its scalars with ``pl_module.log`` under ``xai/<method>/<key>`` (the drift monitor under
``xai/drift/<source>/...``). The *summary* set holds the keys whose number does not grow with the classes,
concepts or targets (fidelity, ``n_significant``, the drift maxima...), so a run with many classes keeps a
readable W&B workspace; ``"all"`` adds the per-class, per-concept and per-target keys. Tables, charts and
media are sent whatever the choice. Each result class names its summary set in
:attr:`~lightning_xai.results.Result.summary_scalars`.

This module imports nothing from Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

__all__ = [
    "SCALAR_SETS",
    "ScalarSet",
    "check_scalar_set",
    "select_scalars",
    "unmatched_message",
    "unmatched_patterns",
]

#: the named key sets ``log_scalars`` accepts (besides a list of key patterns)
SCALAR_SETS = ("summary", "all", "none")

ScalarSet = str | tuple[str, ...]


def check_scalar_set(value: object, name: str = "log_scalars") -> ScalarSet:
    """``value`` as a key set: one of :data:`SCALAR_SETS`, or a non-empty list of key patterns (as a tuple).

    Patterns are shell-style (``fnmatch``) and match the key after the ``xai/<method>/`` prefix, e.g.
    ``["fidelity", "importance/*"]``.

    Raises:
        ValueError: an unknown set name, an empty list, or a pattern that is not a non-empty string.

    Example:
        >>> check_scalar_set("summary"), check_scalar_set(["fidelity", "importance/*"])
        ('summary', ('fidelity', 'importance/*'))
        >>> check_scalar_set("everything")
        Traceback (most recent call last):
        ...
        ValueError: log_scalars='everything' is not a key set; choose one of 'summary', 'all', 'none', or a list of key patterns such as ['fidelity', 'importance/*'].
    """
    choices = (
        f"choose one of {', '.join(repr(s) for s in SCALAR_SETS)}, or a list of key patterns such as "
        "['fidelity', 'importance/*']."
    )
    if isinstance(value, str):
        if value in SCALAR_SETS:
            return value
        raise ValueError(f"{name}={value!r} is not a key set; {choices}")
    if isinstance(value, Sequence) and value and all(isinstance(p, str) and p for p in value):
        return tuple(value)
    raise ValueError(f"{name}={value!r} is not a key set; {choices}")


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(key, p) for p in patterns)


def select_scalars(
    scalars: Mapping[str, float], choice: ScalarSet, summary: Sequence[str] = ("*",)
) -> dict[str, float]:
    """The entries of ``scalars`` that ``choice`` logs; ``summary`` holds the patterns of the summary set.

    Example:
        >>> values = {"fidelity": 0.9, "fidelity/train": 0.8, "time_s": 1.0}
        >>> select_scalars(values, "summary", ("fidelity", "time_s"))
        {'fidelity': 0.9, 'time_s': 1.0}
        >>> select_scalars(values, ("fidelity*",))
        {'fidelity': 0.9, 'fidelity/train': 0.8}
        >>> select_scalars(values, "none")
        {}
    """
    if choice == "all":
        return dict(scalars)
    if choice == "none":
        return {}
    patterns = summary if choice == "summary" else choice
    return {k: v for k, v in scalars.items() if _matches(k, patterns)}


def unmatched_patterns(choice: ScalarSet, keys: Iterable[str]) -> list[str]:
    """The patterns of a pattern list ``choice`` that match none of ``keys`` (``[]`` for a named set)."""
    if isinstance(choice, str):
        return []
    keys = list(keys)
    return [p for p in choice if not any(fnmatchcase(k, p) for k in keys)]


def unmatched_message(owner: str, choice: ScalarSet, keys: Iterable[str], prefix: str) -> str | None:
    """What to say at the end of a run about the patterns of ``choice`` that matched none of its ``keys`` (the
    keys under ``prefix``), or ``None`` when there is nothing to say.

    Example:
        >>> unmatched_message("Rules", ("fidelity", "fidelty/*"), ["fidelity", "accuracy"], "xai/rules/")
        "Rules(log_scalars=...): the pattern(s) ['fidelty/*'] matched none of the keys this run had under xai/rules/: ['accuracy', 'fidelity']."
    """
    keys = sorted(keys)
    unmatched = unmatched_patterns(choice, keys) if keys else []
    if not unmatched:
        return None
    shown = keys if len(keys) <= 30 else [*keys[:30], "..."]
    return (
        f"{owner}(log_scalars=...): the pattern(s) {unmatched} matched none of the keys this run had under "
        f"{prefix}: {shown}."
    )
