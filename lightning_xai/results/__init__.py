"""Typed results of every method, found by the record's ``method``.

:func:`read_result` turns a stored :class:`~lightning_xai.records.Record` back into its method's
:class:`Result`; the report and the drift monitor read records only through it.

Example:
    >>> from lightning_xai.records import Record
    >>> payload = {"reference_epoch": 0, "previous_epoch": 1, "n_samples": 64, "cka_prev": {"features": 0.97}}
    >>> read_result(Record("representation_drift", "epoch", 2, 40, payload=payload, schema=2)).cka_prev
    {'features': 0.97}
    >>> read_result(Record("representation_drift", "epoch", 2, 40, payload=payload, schema=99))
    Traceback (most recent call last):
    ...
    lightning_xai.results.base.SchemaError: representation_drift record has schema 99, newer than this lightning-xai reads (schemas 1 to 2); upgrade lightning-xai to read it
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
_REGISTRY: dict[tuple[str, str], type[Result]] = {}
#: every method's ``"error"`` records (see :class:`~lightning_xai.results.errors.ExplainerError`)
ERROR = "error"


def register(cls: type[Result]) -> type[Result]:
    """Class decorator: make ``cls`` the result of records with ``cls.method`` and ``cls.name``."""
    if not cls.method:
        raise ValueError(f"{cls.__qualname__} has no method name; set method: ClassVar[str] = '...'")
    key = (cls.method, cls.name)
    other = _REGISTRY.get(key)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"records {key} already have the result {other.__qualname__}")
    _REGISTRY[key] = cls
    return cls


def _known() -> list[str]:
    return sorted({*_MODULES, *(m for m, _ in _REGISTRY)})


def result_type(method: str, name: str = "epoch") -> type[Result]:
    """The result class of ``method``'s records called ``name`` (every method's ``"error"`` records share one).

    Raises:
        SchemaError: no result is known for them (the message lists the known methods).
    """
    if name == ERROR:
        from lightning_xai.results.errors import ExplainerError

        return ExplainerError
    if (method, name) not in _REGISTRY and method in _MODULES:
        try:
            importlib.import_module(_MODULES[method])
        except ModuleNotFoundError as exc:  # a module that is not there, not one that fails to import
            if exc.name != _MODULES[method]:
                raise
    try:
        return _REGISTRY[(method, name)]
    except KeyError:
        names = sorted(n for m, n in _REGISTRY if m == method)
        known = f"{method} records are named {names}" if names else f"known methods: {_known()}"
        raise SchemaError(f"no result type is known for {method!r} records named {name!r}; {known}") from None


def result_types() -> dict[tuple[str, str], type[Result]]:
    """Every known result class, by ``(method, record name)``."""
    for method in _MODULES:
        try:
            result_type(method)
        except SchemaError:
            pass
    return dict(sorted(_REGISTRY.items()))


def read_result(record: Record) -> Result:
    """The typed result stored in ``record`` (its payload read with the record's schema).

    Raises:
        SchemaError: unknown method, a schema newer than this version reads, or a payload that misses a field.
    """
    return result_type(record.method, record.name).from_payload(record.payload, record.schema)
