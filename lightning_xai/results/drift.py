"""The drift monitor's records: the drift values of one source at one epoch, and one record per alert."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from lightning_xai.records import Table
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Result

__all__ = ["DriftAlert", "DriftResult", "DriftRow"]


def _fmt(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


@dataclass
class DriftRow:
    """One drift value: how far ``source``'s ``kind`` observation of ``key`` moved ``against`` an earlier epoch.

    Attributes:
        source: the callback it is about (its method, ``"<method>#2"`` for a second one).
        kind: the drift kind (:data:`~lightning_xai.concept_drift.DRIFT_KINDS`).
        key: what it is about, e.g. ``"conv5/shape:circle/circle/lined"``.
        against: ``"previous"`` or ``"reference"``.
        base_epoch: the epoch compared with.
        value: the drift distance (0: unchanged).
        threshold: the kind's alert threshold, ``None`` when it does not alert.
        alert: whether this value raised an alert.
    """

    source: str
    kind: str
    key: str
    against: str
    value: float
    base_epoch: int | None = None
    threshold: float | None = None
    alert: bool = False

    @classmethod
    def read(cls, row: Mapping[str, Any]) -> DriftRow:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    def text(self) -> str:
        """``"source · kind · key vs against: value > threshold"``."""
        what = " · ".join(str(v) for v in (self.source, self.kind, self.key) if v is not None)
        cmp = (
            f"{_fmt(self.value)} > {_fmt(self.threshold)}" if self.threshold is not None else _fmt(self.value)
        )
        return f"{what} vs {self.against}: {cmp}"


@register
@dataclass
class DriftResult(Result):
    """The drift of one source at one explained epoch (``method="drift"``, ``name="epoch"``).

    Attributes:
        source: the callback whose explanation is compared (each row names it too).
        source_method: that callback's method (``"method"`` in the payload).
        reference_epoch: the source's reference epoch, ``None`` before it has one.
        rows: every drift value of this epoch, :class:`DriftRow`.
        alerts: the messages of the alerts this epoch raised.
    """

    method: ClassVar[str] = "drift"
    schema: ClassVar[int] = 2

    source: str | None = None
    source_method: str | None = None
    reference_epoch: int | None = None
    rows: list[DriftRow] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "epoch",
        "kind",
        "key",
        "against",
        "base_epoch",
        "value",
        "threshold",
        "alert",
    )

    @classmethod
    def upgrade(cls, payload: dict[str, Any], schema: int) -> dict[str, Any]:
        # the payload's "method" is the source's method; this class's own method is "drift"
        payload["source_method"] = payload.pop("method", None)
        payload["rows"] = [DriftRow.read(r) for r in payload.get("rows") or [] if isinstance(r, Mapping)]
        return payload

    def to_payload(self) -> dict[str, Any]:
        out = super().to_payload()
        out["method"] = out.pop("source_method")
        return out

    def logged(self, epoch: int) -> Logged:
        rows = [[getattr(r, c) if c != "epoch" else epoch for c in self.COLUMNS] for r in self.rows]
        text = {"alerts": "\n".join(f"- {m}" for m in self.alerts)} if self.alerts else {}
        return Logged(tables=[Table(f"{self.source}/rows", list(self.COLUMNS), rows)], text=text)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "method": self.source_method, "reference_epoch": self.reference_epoch}


@register
@dataclass
class DriftAlert(Result):
    """One drift alert (``method="drift"``, ``name="alert"``): a value of a :class:`DriftRow` over its threshold.

    Attributes:
        source, kind, key, against, base_epoch, value, threshold: as in :class:`DriftRow`.
        label: readable name of what drifted, e.g. ``"TCAV score of 'marker' for class 'a' at conv5"``.
        before: its state at ``base_epoch`` in words (``None`` for distances the source computed itself).
        after: its state now.
        message: the alert as logged and warned.
    """

    method: ClassVar[str] = "drift"
    name: ClassVar[str] = "alert"
    schema: ClassVar[int] = 2

    source: str | None = None
    kind: str | None = None
    key: str | None = None
    against: str | None = None
    base_epoch: int | None = None
    value: float | None = None
    threshold: float | None = None
    label: str | None = None
    before: Any = None
    after: Any = None
    message: str = ""

    FIELDS: ClassVar[tuple[str, ...]] = (
        "source", "kind", "key", "against", "base_epoch", "value", "threshold", "label", "before", "after", "message"
    )  # fmt: skip

    def logged(self, epoch: int) -> Logged:
        return Logged(text={"alert": self.message})

    def text(self) -> str:
        """The alert's message, or one built from its values for an alert stored without one."""
        if self.message:
            return self.message
        row = DriftRow(str(self.source), str(self.kind), str(self.key), str(self.against), self.value,
                       self.base_epoch, self.threshold)  # fmt: skip
        return row.text()

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out.pop("message")  # the card's heading
        return out
