"""The typed results: one per method, registered, documented field by field, strict about schemas."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

from lightning_xai.records import Record
from lightning_xai.results import (
    LEGACY_SCHEMA,
    Result,
    SchemaError,
    read_result,
    register,
    result_type,
    result_types,
    transient,
)
from lightning_xai.results.drift import DriftResult
from lightning_xai.results.errors import ExplainerError
from lightning_xai.results.representation_drift import RepresentationDriftResult

METHODS = (
    "logic_rules", "concept_attribution", "symbolic_tree", "concept_permutation", "diffusion_explainer",
    "representation_drift", "drift",
)  # fmt: skip


def _fields(cls: type[Result]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("transient")]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_registered_result_whose_fields_are_documented(method: str) -> None:
    cls = result_type(method)
    assert cls.method == method and issubclass(cls, Result)
    assert cls.schema >= 2 > LEGACY_SCHEMA  # schema 1: the payloads before the typed results
    assert (method, cls.name) in result_types()
    doc = cls.__doc__ or ""
    documented = set(re.findall(r"^\s{8}(\w+(?:, \w+)*):", doc, flags=re.MULTILINE))
    names = {n for entry in documented for n in entry.split(", ")}
    missing = [f for f in _fields(cls) if f not in names]
    assert not missing, f"{cls.__qualname__} does not document {missing} in its Attributes"


def test_a_newer_or_broken_schema_and_a_missing_field_are_named() -> None:
    payload = {"reference_epoch": 0, "previous_epoch": 0, "n_samples": 8}
    assert (
        read_result(Record("representation_drift", "epoch", 0, 0, payload=payload, schema=2)).n_samples == 8
    )
    with pytest.raises(SchemaError, match="schema 3, newer than this lightning-xai reads .schemas 1 to 2."):
        read_result(Record("representation_drift", "epoch", 0, 0, payload=payload, schema=3))
    with pytest.raises(SchemaError, match="schema 0, older than this lightning-xai reads"):
        RepresentationDriftResult.from_payload(payload, 0)
    with pytest.raises(SchemaError, match=r"representation_drift record payload lacks \['n_samples'\]"):
        read_result(
            Record("representation_drift", "epoch", 0, 0, payload={"reference_epoch": 0, "previous_epoch": 0})
        )
    with pytest.raises(
        SchemaError, match="no result type is known for 'nobody' records named 'epoch'; known methods"
    ):
        result_type("nobody")
    with pytest.raises(SchemaError, match=r"drift records are named \['alert', 'epoch'\]"):
        result_type("drift", "summary")


def test_legacy_cross_epoch_keys_are_kept_as_recorded_but_never_written_again() -> None:
    old = {
        "reference_epoch": 0,
        "previous_epoch": 1,
        "n_samples": 8,
        "history": [{"epoch": 0}],
        "cka_prev": {},
    }
    result = RepresentationDriftResult.from_payload(old, None)
    assert result.recorded == {"history": [{"epoch": 0}]}
    assert result.summary()["history"] == [{"epoch": 0}]  # shown as the old version recorded it
    assert "history" not in result.to_payload()


def test_transient_fields_stay_in_memory_and_results_round_trip() -> None:
    @register
    @dataclass
    class Probe(Result):
        method: ClassVar[str] = "test_probe"
        schema: ClassVar[int] = 2
        score: float = 0.0
        vectors: dict = transient(default_factory=dict)

    r = Probe(score=0.25, vectors={"a": [1.0, 2.0]})
    assert r.to_payload() == {"score": 0.25}
    rec = r.record(epoch=3, global_step=30)
    assert (rec.method, rec.name, rec.epoch, rec.schema) == ("test_probe", "epoch", 3, 2)
    back = read_result(Record.from_dict(rec.to_dict()))
    assert back == Probe(score=0.25) and back.vectors == {}
    drift = DriftResult(source="s", source_method="m", reference_epoch=0, rows=[], alerts=["x"])
    assert DriftResult.from_payload(drift.to_payload(), DriftResult.schema) == drift


def test_errors_of_every_method_read_as_explainer_errors() -> None:
    try:
        raise FloatingPointError("loss is nan")
    except FloatingPointError as exc:
        err = ExplainerError.from_exception(exc, hint="lower the learning rate")
    rec = Record("symbolic_tree", "error", 1, 10, payload=err.to_payload(), schema=err.schema)
    back = read_result(rec)
    assert isinstance(back, ExplainerError)
    assert (back.type, back.message, back.hint) == (
        "FloatingPointError",
        "loss is nan",
        "lower the learning rate",
    )
    assert "raise FloatingPointError" in back.traceback
