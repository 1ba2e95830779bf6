"""Argument checks shared by the cores and the callbacks.

The cores raise :class:`ValueError` with a message that names the argument, the bad value and what is
valid; the callbacks turn it into Lightning's ``MisconfigurationException`` (see
:func:`lightning_xai.callbacks.base.misconfigured`). No Lightning import here.

Example:
    >>> check_int("n_repeats", 5, 1)
    5
    >>> check_int("n_repeats", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: n_repeats must be an integer >= 1, but got 0.
    >>> check_interval("stop_at", 1.5, 0.0, 1.0, low_open=True, high_open=False)
    Traceback (most recent call last):
    ...
    ValueError: stop_at must lie in (0.0, 1.0], but got 1.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["check_choice", "check_int", "check_interval"]


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``; else a ValueError naming both."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, but got {value!r}.")
    return value


def check_interval(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> float:
    """``float(value)`` if it is a finite number in the interval; else a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, but got {value!r}.")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``; else a ValueError listing them.

    Example:
        >>> check_choice("on", "test", ["validation", "train_epoch_end"])
        Traceback (most recent call last):
        ...
        ValueError: on='test' is not supported; choose one of ['validation', 'train_epoch_end'].
    """
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")
    return value
