"""The typed result of an explained epoch: what a method found, its record schema, what it logs and tracks.

Every method's core returns a :class:`Result` subclass. The result owns its serialised form: the
callback stores :meth:`Result.to_payload` as the record's payload (with :attr:`Result.schema`), and the
report and the drift monitor read records back through :func:`~lightning_xai.results.read_result`,
which finds the class by the record's ``method`` and calls :meth:`Result.from_payload`. Nothing else
parses payload keys, so renaming a field is one change that the round-trip tests check.

A result holds one epoch. Comparisons across epochs are the drift monitor's (it compares
:meth:`Result.observations`) and the report's (it reads the series from the record file); no result
carries a previous epoch or a history.

This module imports nothing from Lightning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from typing_extensions import Self

from lightning_xai.records import Chart, Explanation, Media, Record, Table, to_jsonable

__all__ = ["Logged", "Observation", "Result", "SchemaError", "transient"]

R = TypeVar("R", bound="Result")

#: schema of records written before records carried a ``schema`` (lightning-xai 0.1 up to the typed results)
LEGACY_SCHEMA = 1


class SchemaError(ValueError):
    """A record whose payload this version cannot read: an unknown method, or a newer or broken schema."""


@dataclass
class Observation:
    """What one method says about one thing at one epoch, for the drift monitor.

    Attributes:
        kind: a key of :data:`~lightning_xai.concept_drift.DRIFT_KINDS`.
        key: what it is about, e.g. ``"conv5/marker:present/circle/lined"``.
        label: readable name for messages, e.g. ``"TCAV score of 'marker:present' for 'circle/lined' at conv5"``.
        value: what is compared (a number, a vector, a set, a histogram, a mapping).
        meta: extra facts (e.g. ``significant``).
        given: distances the source computed itself, by ``"previous"``/``"reference"``, with the epochs
            they refer to under ``"<against>_epoch"`` (CKA needs the activations, which only the source has).
    """

    kind: str
    key: str
    label: str
    value: Any
    meta: dict[str, Any] = field(default_factory=dict)
    given: dict[str, Any] | None = None


@dataclass
class Logged:
    """What a result sends to the loggers besides its record.

    Attributes:
        scalars: logged with ``pl_module.log`` as ``xai/<method>/<key>`` (monitorable).
        tables, charts, media, text: sent to every logger and kept in the local store.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)


def transient(default: Any = None, *, default_factory: Any = None) -> Any:
    """A result field kept in memory only (for example CAV vectors for the drift monitor): not in the payload.

    Example:
        >>> @dataclass
        ... class R(Result):
        ...     method: ClassVar[str] = "doc_example"
        ...     score: float = 0.0
        ...     vectors: dict = transient(default_factory=dict)
        >>> R(score=0.5, vectors={"a": [1.0]}).to_payload()
        {'score': 0.5}
    """
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"transient": True}, compare=False, repr=False)
    return field(default=default, metadata={"transient": True}, compare=False, repr=False)


@dataclass
class Result:
    """Base of every method's typed result.

    Subclasses are dataclasses that set :attr:`method` (the record's ``method``) and :attr:`schema` (raise it
    whenever the payload's meaning changes; :meth:`from_payload` must still read every schema from
    :attr:`oldest_schema` on). The default :meth:`to_payload` writes every non-transient field through
    :func:`~lightning_xai.records.to_jsonable`; the default :meth:`from_payload` reads them back by name and
    refuses payloads that miss a field without a default.

    Example:
        >>> @dataclass
        ... class Scores(Result):
        ...     method: ClassVar[str] = "doc_scores"
        ...     scores: dict = dataclasses.field(default_factory=dict)
        >>> Scores.from_payload(Scores(scores={"a": 1.0}).to_payload(), schema=1)
        Scores(scores={'a': 1.0})
    """

    method: ClassVar[str] = ""
    schema: ClassVar[int] = 1
    oldest_schema: ClassVar[int] = LEGACY_SCHEMA
    #: the record's ``name``
    name: ClassVar[str] = "epoch"
    #: key patterns (``fnmatch``) of the scalars logged by default (``log_scalars="summary"``): the keys whose
    #: number does not grow with the classes, concepts or targets; ``time_s`` is always among them
    summary_scalars: ClassVar[tuple[str, ...]] = ("*",)
    #: values an older schema stored about *other* epochs (e.g. ``kendall_tau_prev``): read from old records so
    #: the report still shows them as recorded, never written again (comparisons across epochs are the drift
    #: monitor's)
    recorded: dict[str, Any] = field(
        default_factory=dict, kw_only=True, metadata={"transient": True}, repr=False
    )

    # ------------------------------------------------------------------------------------ serialised form
    def to_payload(self) -> dict[str, Any]:
        """The record payload: every field not marked :func:`transient`, as plain JSON types."""
        return {
            f.name: to_jsonable(getattr(self, f.name), f"payload[{f.name!r}]")
            for f in dataclasses.fields(self)
            if not f.metadata.get("transient")
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], schema: int | None = None) -> Self:
        """Read a payload written with ``schema`` (``None``: records from before schemas, :data:`LEGACY_SCHEMA`).

        Raises:
            SchemaError: the schema is newer than this version reads, older than :attr:`oldest_schema`, or
                the payload misses a required field (the message names it).
        """
        schema = cls.check_schema(schema)
        payload = dict(payload)
        recorded = {k: payload.pop(k) for k in cls.recorded_keys(schema) if k in payload}
        result = cls._from_fields(cls.upgrade(payload, schema))
        result.recorded = recorded
        return result

    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        """Payload keys of ``schema`` that hold values about other epochs (read into :attr:`recorded`)."""
        return ()

    @classmethod
    def check_schema(cls, schema: int | None) -> int:
        """``schema`` as an int this class reads (``None`` is :data:`LEGACY_SCHEMA`), else :class:`SchemaError`."""
        schema = LEGACY_SCHEMA if schema is None else schema
        if isinstance(schema, bool) or not isinstance(schema, int):
            raise SchemaError(f"{cls.method} record has schema {schema!r}; a schema is an int")
        if schema > cls.schema:
            raise SchemaError(
                f"{cls.method} record has schema {schema}, newer than this lightning-xai reads "
                f"(schemas {cls.oldest_schema} to {cls.schema}); upgrade lightning-xai to read it"
            )
        if schema < cls.oldest_schema:
            raise SchemaError(
                f"{cls.method} record has schema {schema}, older than this lightning-xai reads "
                f"(schemas {cls.oldest_schema} to {cls.schema})"
            )
        return schema

    @classmethod
    def upgrade(cls, payload: dict[str, Any], schema: int) -> dict[str, Any]:
        """Rewrite a payload of an older ``schema`` into the current one's fields (default: as it is)."""
        return payload

    @classmethod
    def _from_fields(cls, payload: Mapping[str, Any]) -> Self:
        kwargs: dict[str, Any] = {}
        missing = []
        for f in dataclasses.fields(cls):
            if f.metadata.get("transient") or not f.init:
                continue
            if f.name in payload:
                kwargs[f.name] = payload[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                missing.append(f.name)
        if missing:
            raise SchemaError(f"{cls.method} record payload lacks {missing}; its keys are {sorted(payload)}")
        return cls(**kwargs)

    def record(self, epoch: int, global_step: int, time_s: float = 0.0) -> Record:
        """This result as the record of ``epoch`` (its payload and schema)."""
        return Record(
            self.method, self.name, epoch, global_step, time_s, self.to_payload(), schema=self.schema
        )

    def explanation(self, record: Record, logged: Logged | None = None) -> Explanation:
        """``record`` with what this result logs (:meth:`logged` of the record's epoch unless given)."""
        out = self.logged(record.epoch) if logged is None else logged
        return Explanation(record, out.tables, out.charts, out.media, out.text)

    # ------------------------------------------------------------------------------------ what it logs
    def logged(self, epoch: int) -> Logged:
        """Scalars, tables, charts and media to log for this result at ``epoch`` (default: none)."""
        return Logged()

    def observations(self) -> list[Observation]:
        """What the drift monitor tracks of this result (default: nothing)."""
        return []

    def summary(self) -> dict[str, Any]:
        """Facts the report lists for this result, by name (default: its fields, then :attr:`recorded`).

        The report shows the numbers and short strings among them, and mappings of up to 12 such values.
        """
        out = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("transient")
        }
        return {**out, **self.recorded}
