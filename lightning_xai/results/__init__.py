"""Typed results of every method, found by the record's ``method``.

:func:`read_result` turns a stored :class:`~lightning_xai.records.Record` back into its method's
:class:`Result`; the report and the drift monitor read records only through it.

Example:
    >>> from lightning_xai.records import Record
    >>> rec = Record("concept_permutation", "epoch", 2, 40, payload={"metric": "accuracy", "base": 0.9,
    ...              "importance": [{"concept": "shape", "importance": 0.4}]}, schema=2)
    >>> read_result(rec).base
    0.9
    >>> read_result(Record("concept_permutation", "epoch", 2, 40, payload={}, schema=99))
    Traceback (most recent call last):
    ...
    lightning_xai.results.base.SchemaError: concept_permutation record has schema 99, newer than this lightning-xai reads (schemas 1 to 2); upgrade lightning-xai to read it
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lightning_xai.results.base import LEGACY_SCHEMA, Logged, Observation, Result, SchemaError, transient

if TYPE_CHECKING:
    from lightning_xai.records import Record

__all__ = [
    "LEGACY_SCHEMA",
    "Logged",
    "Observation",
    "Result",
    "SchemaError",
    "read_result",
    "register",
    "result_type",
    "result_types",
    "transient",
]

# method -> module that defines (and registers) its result; imported on first use, so reading a report
# needs neither the method's dependencies nor a fixed import order
_MODULES = {
    "logic_rules": "lightning_xai.results.logic_rules",
    "concept_attribution": "lightning_xai.results.concept_attribution",
    "symbolic_tree": "lightning_xai.results.symbolic_tree",
    "concept_permutation": "lightning_xai.results.concept_permutation",
    "diffusion_explainer": "lightning_xai.results.diffusion_explainer",
    "representation_drift": "lightning_xai.results.representation_drift",
    "drift": "lightning_xai.results.drift",
}
_REGISTRY: dict[str, type[Result]] = {}


def register(cls: type[Result]) -> type[Result]:
    """Class decorator: make ``cls`` the result of records whose method is ``cls.method``."""
    if not cls.method:
        raise ValueError(f"{cls.__qualname__} has no method name; set method: ClassVar[str] = '...'")
    other = _REGISTRY.get(cls.method)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.method!r} already has the result {other.__qualname__}")
    _REGISTRY[cls.method] = cls
    return cls


def result_type(method: str) -> type[Result]:
    """The result class of ``method``.

    Raises:
        SchemaError: no result is known for ``method`` (the message lists the known methods).
    """
    if method not in _REGISTRY and method in _MODULES:
        importlib.import_module(_MODULES[method])
    try:
        return _REGISTRY[method]
    except KeyError:
        raise SchemaError(
            f"no result type is known for method {method!r}; known methods: {sorted({*_MODULES, *_REGISTRY})}"
        ) from None


def result_types() -> dict[str, type[Result]]:
    """Every known method's result class, by method."""
    return {m: result_type(m) for m in sorted({*_MODULES, *_REGISTRY})}


def read_result(record: Record) -> Result:
    """The typed result stored in ``record`` (its payload read with the record's schema).

    Raises:
        SchemaError: unknown method, a schema newer than this version reads, or a payload that misses a field.
    """
    return result_type(record.method).from_payload(record.payload, record.schema)
