"""What the local store adds to every record's payload: the logged tables, charts, media and text.

:meth:`lightning_xai.records.LocalStore.write` fills the reserved payload keys
(:data:`~lightning_xai.records.RESERVED_PAYLOAD_KEYS`); :meth:`StoredOutputs.from_payload` reads them back
for the report. Entries that a damaged or hand-edited record holds in another shape are kept as
``None`` (a table or chart) or skipped (media), so the report can say which one it could not read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StoredChart", "StoredMedia", "StoredOutputs", "StoredTable"]


@dataclass
class StoredTable:
    """A logged table: column names and rows (entries that are not lists are dropped)."""

    columns: list[Any]
    rows: list[list[Any]]

    @classmethod
    def read(cls, value: Any) -> StoredTable | None:
        if not isinstance(value, Mapping) or not isinstance(value.get("columns"), list):
            return None
        return cls(list(value["columns"]), [r for r in value.get("rows") or [] if isinstance(r, list)])


@dataclass
class StoredChart:
    """A logged chart: ``kind`` (``"bar"`` or ``"line"``), the key of its ``table``, ``x`` and ``y`` columns."""

    kind: str | None
    table: Any
    x: Any
    y: list[Any]
    title: str | None

    @classmethod
    def read(cls, value: Any) -> StoredChart | None:
        if not isinstance(value, Mapping):
            return None
        ys = value.get("y")
        ys = [ys] if isinstance(ys, str) else list(ys or [])
        title = value.get("title")
        return cls(value.get("kind"), value.get("table"), value.get("x"), ys, str(title) if title else None)


@dataclass
class StoredMedia:
    """A logged image: its PNG ``path`` relative to the store, caption, size, mask PNGs, labels and boxes."""

    path: str
    key: str = ""
    caption: str = ""
    width: Any = None
    height: Any = None
    masks: dict[str, str] = field(default_factory=dict)
    mask_labels: dict[str, Any] = field(default_factory=dict)
    boxes: list[Any] = field(default_factory=list)

    @classmethod
    def read(cls, value: Any) -> StoredMedia | None:
        if not isinstance(value, Mapping):
            return None
        masks = value.get("masks") if isinstance(value.get("masks"), Mapping) else {}
        labels = value.get("mask_labels") if isinstance(value.get("mask_labels"), Mapping) else {}
        boxes = value.get("boxes") if isinstance(value.get("boxes"), list) else []
        return cls(
            path=str(value.get("path", "")),
            key=str(value.get("key") or ""),
            caption=str(value.get("caption") or ""),
            width=value.get("width"),
            height=value.get("height"),
            masks={str(k): str(v) for k, v in masks.items()},
            mask_labels=dict(labels),
            boxes=list(boxes),
        )


@dataclass
class StoredOutputs:
    """The tables, charts, media and text stored with one record (see :meth:`LocalStore.write`)."""

    tables: dict[str, StoredTable | None] = field(default_factory=dict)
    charts: dict[str, StoredChart | None] = field(default_factory=dict)
    media: list[StoredMedia] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> StoredOutputs:
        """Read the reserved keys of a stored payload (absent or unreadable ones give empty parts).

        Example:
            >>> out = StoredOutputs.from_payload({"tables": {"t": {"columns": ["a"], "rows": [[1], "x"]}}, "text": {}})
            >>> out.tables["t"].rows, out.charts, out.media
            ([[1]], {}, [])
        """
        tables = payload.get("tables")
        charts = payload.get("charts")
        media = payload.get("media")
        text = payload.get("text")
        return cls(
            tables={str(k): StoredTable.read(v) for k, v in tables.items()}
            if isinstance(tables, Mapping)
            else {},
            charts={str(k): StoredChart.read(v) for k, v in charts.items()}
            if isinstance(charts, Mapping)
            else {},
            media=[m for m in map(StoredMedia.read, media) if m is not None]
            if isinstance(media, list)
            else [],
            text={str(k): str(v) for k, v in text.items()} if isinstance(text, Mapping) else {},
        )
