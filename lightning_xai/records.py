"""Explanation records and the local store.

Every result of an explainer is a :class:`Record`::

    {"method": "tcav", "name": "scores", "epoch": 3, "global_step": 120, "time_s": 0.8, "payload": {...}}

An explainer run produces one :class:`Explanation`: the record plus the things that loggers can show
(:class:`Table`, :class:`Chart`, :class:`Media`, free text). :class:`LocalStore` keeps every explanation
on disk, whatever loggers the trainer has:

* ``<root>/records.jsonl``: one JSON line per record, append-only, flushed and fsync'ed per write;
* ``<root>/media/<method>/<key>_e<epoch>_s<step>[_<i>].png``: the images (and their masks).

``root`` is ``<run dir>/xai`` where the run dir is :func:`run_dir_of` the trainer.

This module imports nothing from Lightning (and imports torch only if the caller already has).
"""

from __future__ import annotations

import json
import operator
import os
import re
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lightning_xai.images import _to_box, _to_mask, _to_rgb_uint8, figure_to_array
from lightning_xai.jsonable import _is_torch_tensor, to_jsonable
from lightning_xai.runs import safe_getattr, wandb_run_dir

__all__ = [
    "Chart",
    "Explanation",
    "LocalStore",
    "Media",
    "Record",
    "Table",
    "figure_to_array",
    "read_records",
    "run_dir_of",
    "sanitize_key",
    "to_jsonable",
]

RECORDS_FILE = "records.jsonl"
MEDIA_DIR = "media"
#: payload keys that :meth:`LocalStore.write` fills from the explanation's tables, charts, media and text.
RESERVED_PAYLOAD_KEYS = ("tables", "charts", "media", "text")
CHART_KINDS = ("bar", "line")


# ----------------------------------------------------------------------------------------------------------
# Record
# ----------------------------------------------------------------------------------------------------------
_RECORD_FIELDS = ("method", "name", "epoch", "global_step", "time_s", "payload")


@dataclass
class Record:
    """One explanation result, as stored in ``records.jsonl`` and sent to loggers.

    Args:
        method: the explainer, e.g. ``"tcav"``, ``"logic_rules"`` (also the first part of logger keys).
        name: what this record is within the method, e.g. ``"scores"``, ``"rules"``, ``"error"``.
        epoch: ``trainer.current_epoch`` when the record was made.
        global_step: ``trainer.global_step`` when the record was made.
        time_s: wall-clock seconds the explainer spent producing this record (0.0 if unknown).
        payload: method-specific content; must be convertible by :func:`to_jsonable`.
        schema: version of the payload's layout, set by the method's typed result
            (:mod:`lightning_xai.results`); ``None`` for records written before records carried one.
        dataloader_idx: the validation dataloader the explained sample came from (written to the file only
            when it is not the first, 0).
        run_id: the run that wrote the record (set by the store; ``None`` in records written before records
            carried one).
    """

    method: str
    name: str
    epoch: int
    global_step: int
    time_s: float = 0.0
    payload: dict = field(default_factory=dict)
    schema: int | None = None
    dataloader_idx: int = 0
    run_id: str | None = None

    def __post_init__(self) -> None:
        for attr in ("method", "name"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Record.{attr} must be a non-empty str, got {value!r}")
        for attr in ("epoch", "global_step"):
            value = getattr(self, attr)
            try:
                if isinstance(value, bool):
                    raise TypeError
                setattr(self, attr, operator.index(value))
            except TypeError:
                raise TypeError(
                    f"Record.{attr} must be an int, got {value!r} ({type(value).__qualname__})"
                ) from None
        try:
            self.time_s = float(self.time_s)
        except (TypeError, ValueError):
            raise TypeError(f"Record.time_s must be a number of seconds, got {self.time_s!r}") from None
        if not isinstance(self.payload, Mapping):
            raise TypeError(f"Record.payload must be a dict, got {type(self.payload).__qualname__}")
        if self.schema is not None and (isinstance(self.schema, bool) or not isinstance(self.schema, int)):
            raise TypeError(f"Record.schema must be an int or None, got {self.schema!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dict (the payload converted by :func:`to_jsonable`)."""
        out = {
            "method": self.method,
            "name": self.name,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "time_s": self.time_s,
        }
        if self.schema is not None:
            out["schema"] = self.schema
        if self.dataloader_idx:
            out["dataloader_idx"] = self.dataloader_idx
        if self.run_id is not None:
            out["run_id"] = self.run_id
        out["payload"] = to_jsonable(self.payload, "payload")
        return out

    def to_json(self) -> str:
        """Return the record as one JSON line (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Build a record from :meth:`to_dict` output. Unknown keys are ignored.

        Raises:
            ValueError: if a required key is missing (the message lists the required keys).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"Record.from_dict expects a dict, got {type(data).__qualname__}")
        missing = [k for k in _RECORD_FIELDS if k not in data and k not in ("time_s", "payload")]
        if missing:
            raise ValueError(
                f"record dict is missing {missing}; a record needs the keys {list(_RECORD_FIELDS)}"
            )
        return cls(
            method=data["method"],
            name=data["name"],
            epoch=data["epoch"],
            global_step=data["global_step"],
            time_s=data.get("time_s", 0.0),
            payload=dict(data.get("payload") or {}),
            schema=data.get("schema"),
            dataloader_idx=int(data.get("dataloader_idx", 0)),
            run_id=data.get("run_id"),
        )


# ----------------------------------------------------------------------------------------------------------
# Tables, charts, media
# ----------------------------------------------------------------------------------------------------------
def _check_key(owner: str, key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"{owner}.key must be a non-empty str, got {key!r}")
    return key


@dataclass
class Table:
    """A table of results, e.g. one row per class. Logged as a ``wandb.Table``, a markdown table
    in TensorBoard, a CSV file, and stored in the record's payload under ``"tables"``.

    Args:
        key: name of the table within its method (logger key ``xai/<method>/<key>``).
        columns: column names (unique strings).
        rows: one list per row, each as long as ``columns``. Cells should be JSON-convertible.

    Raises:
        ValueError: for duplicate columns or a row of the wrong length (naming the row and the columns).
    """

    key: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_key("Table", self.key)
        if isinstance(self.columns, str) or not isinstance(self.columns, Sequence):
            raise TypeError(f"Table {self.key!r}: columns must be a list of str, got {self.columns!r}")
        self.columns = list(self.columns)
        bad = [c for c in self.columns if not isinstance(c, str)]
        if bad:
            raise TypeError(f"Table {self.key!r}: column names must be str, got {bad!r}")
        dupes = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dupes:
            raise ValueError(f"Table {self.key!r}: duplicate column names {dupes} in {self.columns}")
        if isinstance(self.rows, np.ndarray) or _is_torch_tensor(self.rows):
            self.rows = self.rows.tolist()
        rows = []
        for i, row in enumerate(self.rows):
            if isinstance(row, np.ndarray) or _is_torch_tensor(row):
                row = row.tolist()
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
                raise TypeError(
                    f"Table {self.key!r}: row {i} must be a list of {len(self.columns)} values "
                    f"(one per column {self.columns}), got {type(row).__qualname__}"
                )
            if len(row) != len(self.columns):
                raise ValueError(
                    f"Table {self.key!r}: row {i} has {len(row)} values but there are "
                    f"{len(self.columns)} columns {self.columns}"
                )
            rows.append(list(row))
        self.rows = rows

    def column(self, name: str) -> list:
        """Return the values of one column."""
        if name not in self.columns:
            raise KeyError(f"Table {self.key!r} has no column {name!r}; columns are {self.columns}")
        j = self.columns.index(name)
        return [row[j] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """``{"columns": [...], "rows": [[...], ...]}`` with JSON-convertible cells."""
        return {
            "columns": list(self.columns),
            "rows": to_jsonable(self.rows, f"tables[{self.key!r}].rows"),
        }

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any]) -> Table:
        """Inverse of :meth:`to_dict`."""
        return cls(key=key, columns=list(data["columns"]), rows=[list(r) for r in data["rows"]])


@dataclass
class Chart:
    """A bar or line chart over the columns of a :class:`Table`.

    Logged as ``wandb.plot.bar`` / ``wandb.plot.line`` (``line_series`` for several ``y``), as a figure in
    TensorBoard drawn by :mod:`lightning_xai.charts` (see :func:`lightning_xai.sinks.chart_to_figure`).

    Args:
        key: name of the chart within its method.
        kind: ``"bar"`` or ``"line"``.
        table: the data.
        x: column for the x axis (bar labels for ``"bar"``).
        y: one column name, or several for grouped bars / several lines.
        title: chart title; defaults to ``key``.

    Raises:
        ValueError: for an unknown ``kind`` or a column not in ``table`` (naming the valid choices).
    """

    key: str
    kind: Literal["bar", "line"]
    table: Table
    x: str
    y: str | list[str]
    title: str = ""

    def __post_init__(self) -> None:
        _check_key("Chart", self.key)
        if self.kind not in CHART_KINDS:
            raise ValueError(
                f"Chart {self.key!r}: kind must be one of {list(CHART_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.table, Table):
            raise TypeError(f"Chart {self.key!r}: table must be a Table, got {type(self.table).__qualname__}")
        if self.x not in self.table.columns:
            raise ValueError(
                f"Chart {self.key!r}: x={self.x!r} is not a column of table {self.table.key!r}; "
                f"choose one of {self.table.columns}"
            )
        ys = [self.y] if isinstance(self.y, str) else list(self.y)
        if not ys:
            raise ValueError(f"Chart {self.key!r}: y is empty; choose one or more of {self.table.columns}")
        bad = [c for c in ys if c not in self.table.columns]
        if bad:
            raise ValueError(
                f"Chart {self.key!r}: y column(s) {bad} not in table {self.table.key!r}; "
                f"choose from {self.table.columns}"
            )
        if not isinstance(self.y, str):
            self.y = ys
        if not self.title:
            self.title = self.key

    @property
    def ys(self) -> list[str]:
        """``y`` as a list."""
        return [self.y] if isinstance(self.y, str) else list(self.y)

    def to_dict(self) -> dict[str, Any]:
        """Chart spec for the payload; the data is under ``payload["tables"][table_key]``."""
        return {"kind": self.kind, "table": self.table.key, "x": self.x, "y": self.y, "title": self.title}


@dataclass
class Media:
    """An image to log, optionally with segmentation masks and boxes.

    The image is converted at construction to a ``uint8`` ``[H, W, 3]`` numpy array (``self.image``);
    a matplotlib figure is rendered and closed right away, so none leak.

    Args:
        key: name within its method (logger key ``xai/<method>/<key>``; several media may share a key).
        image: a float tensor ``[3, H, W]`` in ``[0, 1]`` (``[1, H, W]`` and ``[H, W]`` are grey), a numpy
            array ``[H, W, 3]`` (``uint8``, or float in ``[0, 1]``), a PIL image or a matplotlib ``Figure``.
        caption: shown under the image.
        masks: ``{name: [H, W] integer class-id array}`` (ids 0..255, bool allowed), e.g.
            ``{"concept": region_mask}``.
        mask_labels: ``{class_id: label}`` for all masks (default: the ids themselves).
        boxes: ``[{"x0", "y0", "x1", "y1"}]`` in pixels, each with optional ``"label"``, ``"class_id"``,
            ``"score"`` and ``"group"``.
    """

    key: str
    image: Any
    caption: str = ""
    masks: dict[str, np.ndarray] | None = None
    mask_labels: dict[int, str] | None = None
    boxes: list[dict] | None = None

    def __post_init__(self) -> None:
        _check_key("Media", self.key)
        self.image = _to_rgb_uint8(self.image, self.key)
        self.caption = "" if self.caption is None else str(self.caption)
        hw = self.image.shape[:2]
        if self.masks:
            if not isinstance(self.masks, Mapping):
                raise TypeError(f"Media {self.key!r}: masks must be a dict {{name: [H, W] int array}}")
            self.masks = {str(n): _to_mask(m, str(n), self.key, hw) for n, m in self.masks.items()}
        else:
            self.masks = None
        if self.mask_labels:
            try:
                self.mask_labels = {int(k): str(v) for k, v in self.mask_labels.items()}
            except (TypeError, ValueError, AttributeError):
                raise TypeError(
                    f"Media {self.key!r}: mask_labels must be a dict {{class_id (int): label (str)}}, "
                    f"got {self.mask_labels!r}"
                ) from None
        else:
            self.mask_labels = None
        if self.boxes:
            self.boxes = [_to_box(b, i, self.key) for i, b in enumerate(self.boxes)]
        else:
            self.boxes = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def labels_for(self, mask: np.ndarray) -> dict[int, str]:
        """Class labels for ``mask``: ``mask_labels`` completed with the ids present in the mask."""
        labels = {int(v): str(int(v)) for v in np.unique(mask)}
        labels.update(self.mask_labels or {})
        return labels


@dataclass
class Explanation:
    """What one explainer run produces: a :class:`Record` plus the things loggers show.

    Keys of tables, charts, media and text are relative to the method; sinks prefix them with
    ``xai/<method>/``.
    """

    record: Record
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.record, Record):
            raise TypeError(f"Explanation.record must be a Record, got {type(self.record).__qualname__}")
        for attr, cls in (("tables", Table), ("charts", Chart), ("media", Media)):
            items = list(getattr(self, attr) or [])
            bad = [type(x).__qualname__ for x in items if not isinstance(x, cls)]
            if bad:
                raise TypeError(f"Explanation.{attr} must hold {cls.__name__} objects, got {bad}")
            setattr(self, attr, items)
        for attr in ("tables", "charts"):
            keys = [x.key for x in getattr(self, attr)]
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            if dupes:
                raise ValueError(f"Explanation of {self.record.method!r}: duplicate {attr[:-1]} keys {dupes}")
        # tables, charts and media share the logger namespace xai/<method>/<key>; a chart whose key is
        # also a table's is logged as "<key>_chart" (see chart_key), media must not clash with either
        logged = {*(t.key for t in self.tables), *map(self.chart_key, self.charts)}
        clash = sorted({m.key for m in self.media} & logged)
        if clash:
            raise ValueError(
                f"Explanation of {self.record.method!r}: keys {clash} are used by media and by a table or "
                "chart; loggers show them under xai/<method>/<key>, so give them distinct keys"
            )
        if not isinstance(self.text, Mapping):
            raise TypeError(
                f"Explanation.text must be a dict {{key: str}}, got {type(self.text).__qualname__}"
            )
        self.text = {str(k): str(v) for k, v in self.text.items()}

    @property
    def method(self) -> str:
        return self.record.method

    def chart_key(self, chart: Chart) -> str:
        """Logger key of ``chart``: its key, or ``"<key>_chart"`` if one of :attr:`tables` has that key."""
        if any(t.key == chart.key for t in self.tables):
            return f"{chart.key}_chart"
        return chart.key

    def all_tables(self) -> list[Table]:
        """The explanation's tables followed by the charts' tables not already among them."""
        tables = list(self.tables)
        seen = {t.key for t in tables}
        for chart in self.charts:
            if chart.table.key not in seen:
                tables.append(chart.table)
                seen.add(chart.table.key)
        return tables


# ----------------------------------------------------------------------------------------------------------
# Local store
# ----------------------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_key(key: str) -> str:
    """Turn a key like ``"saliency/class 3"`` into a file-name part (``"saliency_class_3"``)."""
    out = _UNSAFE.sub("_", str(key)).strip("._")
    return out or "item"


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    # uint8 RGB image or uint8 L mask. zlib level 1: a third of the default level's (6) time on our figures,
    # for files about 10% larger; the store writes every explained epoch, a person reads few of them.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _save_pngs(pngs: list[tuple[np.ndarray, Path]]) -> None:
    """Write the PNGs of one record, several at a time: Pillow's encoder releases the GIL, and the cores are
    otherwise idle while a callback explains (training waits for it). 16 grounding panels: half the time on
    2 cores. An error in any file is raised once all are done."""
    if len(pngs) <= 1:
        for array, path in pngs:
            _save_png(array, path)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(pngs), os.cpu_count() or 1, 4)) as pool:
        for future in [pool.submit(_save_png, array, path) for array, path in pngs]:
            future.result()


class LocalStore:
    """Append-only store of records (``records.jsonl``) and their media (PNG) under ``root``.

    ``root`` is normally ``<run dir>/xai``. The store is meant for one writing process (rank 0 under
    DDP); writes from several threads of that process are serialised.

    Args:
        root: directory of the store; created on first write.
        run_id: the run every written record is stamped with (see :mod:`lightning_xai.runs`).
    """

    def __init__(self, root: str | os.PathLike, run_id: str | None = None) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self._lock = threading.Lock()

    @property
    def records_path(self) -> Path:
        return self.root / RECORDS_FILE

    @property
    def media_dir(self) -> Path:
        return self.root / MEDIA_DIR

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def path_of(self, relative: str) -> Path:
        """Absolute path of a media path stored in a payload (relative to :attr:`root`)."""
        return self.root / relative

    def write(self, explanation: Explanation) -> Record:
        """Store ``explanation``: media as PNG files, then one JSON line. Returns the record as written.

        The written record's payload is the explanation's payload plus (when present):

        * ``"tables"``: ``{key: {"columns": [...], "rows": [[...]]}}`` for tables and charts' tables;
        * ``"charts"``: ``{key: {"kind", "table", "x", "y", "title"}}``;
        * ``"media"``: ``[{"key", "path", "caption", "width", "height", "masks": {name: path},
          "mask_labels": {id: label}, "boxes": [...]}]`` with paths relative to :attr:`root`;
        * ``"text"``: ``{key: text}``.

        Raises:
            ValueError: if the payload already uses one of those keys and the explanation fills it.
            TypeError: if the payload or a table cell is not JSON-convertible (naming the key path).
        """
        if not isinstance(explanation, Explanation):
            raise TypeError(f"LocalStore.write expects an Explanation, got {type(explanation).__qualname__}")
        rec = explanation.record
        payload = to_jsonable(rec.payload, "payload")  # fail before touching the disk
        extra: dict[str, Any] = {}
        tables = explanation.all_tables()
        if tables:
            extra["tables"] = {t.key: t.to_dict() for t in tables}
        if explanation.charts:
            extra["charts"] = {c.key: c.to_dict() for c in explanation.charts}
        if explanation.text:
            extra["text"] = dict(explanation.text)
        clash = sorted(k for k in (*extra, *(["media"] if explanation.media else [])) if k in payload)
        if clash:
            raise ValueError(
                f"record {rec.method}/{rec.name}: payload keys {clash} are reserved for the explanation's "
                f"{clash} (reserved: {list(RESERVED_PAYLOAD_KEYS)}); rename them in the payload"
            )
        with self._lock:
            if explanation.media:
                extra["media"] = self._save_media(explanation.media, rec)
            payload.update(extra)
            written = Record(
                method=rec.method,
                name=rec.name,
                epoch=rec.epoch,
                global_step=rec.global_step,
                time_s=rec.time_s,
                payload=payload,
                schema=rec.schema,
                dataloader_idx=rec.dataloader_idx,
                run_id=self.run_id if self.run_id is not None else rec.run_id,
            )
            self._append_line(written.to_json())
        return written

    def _append_line(self, line: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.records_path
        with open(path, "ab") as fh:
            # a crash may have left a partial last line: start on a fresh line so ours stays readable
            if fh.tell() > 0:
                with open(path, "rb") as rfh:
                    rfh.seek(-1, os.SEEK_END)
                    if rfh.read(1) != b"\n":
                        fh.write(b"\n")
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _unique_png(self, directory: Path, stem: str, used: set[str]) -> Path:
        i = 0
        while True:
            name = f"{stem}.png" if i == 0 else f"{stem}_{i}.png"
            if name not in used and not (directory / name).exists():
                used.add(name)
                return directory / name
            i += 1

    def _save_media(self, media: list[Media], rec: Record) -> list[dict[str, Any]]:
        directory = self.media_dir / sanitize_key(rec.method)
        used: set[str] = set()
        entries = []
        pngs: list[tuple[np.ndarray, Path]] = []
        for m in media:
            path = self._unique_png(directory, f"{sanitize_key(m.key)}_e{rec.epoch}_s{rec.global_step}", used)
            pngs.append((m.image, path))
            entry: dict[str, Any] = {
                "key": m.key,
                "path": path.relative_to(self.root).as_posix(),
                "caption": m.caption,
                "width": m.width,
                "height": m.height,
            }
            if m.masks:
                entry["masks"] = {}
                for name, mask in m.masks.items():
                    mpath = path.with_name(f"{path.stem}_mask_{sanitize_key(name)}.png")
                    pngs.append((mask, mpath))
                    used.add(mpath.name)
                    entry["masks"][name] = mpath.relative_to(self.root).as_posix()
                labels: dict[int, str] = {}
                for mask in m.masks.values():
                    labels.update(m.labels_for(mask))
                entry["mask_labels"] = {str(k): v for k, v in sorted(labels.items())}
            if m.boxes:
                entry["boxes"] = m.boxes
            entries.append(entry)
        _save_pngs(pngs)  # every file is written before the record that names it
        return entries

    def read(self, method: str | None = None, name: str | None = None) -> list[Record]:
        """:func:`read_records` of this store (empty list if nothing was written yet)."""
        if not self.records_path.exists():
            return []
        return read_records(self.records_path, method=method, name=name)


def _records_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    candidates = [p] if p.is_file() else [p / RECORDS_FILE, p / "xai" / RECORDS_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no records found at {str(p)!r}; tried {[str(c) for c in candidates]}. Pass a run dir "
        f"(containing xai/{RECORDS_FILE}), an xai dir, or the {RECORDS_FILE} file itself"
    )


def read_records(
    path_or_run_dir: str | os.PathLike, method: str | None = None, name: str | None = None
) -> list[Record]:
    """Read records in the order they were written.

    Args:
        path_or_run_dir: a run dir (with ``xai/records.jsonl``), an ``xai`` store dir, or the file.
        method: keep only records of this method.
        name: keep only records with this name.

    Lines that cannot be parsed (e.g. the last line of a run that crashed mid-write) are skipped with
    one warning giving their line numbers.

    Raises:
        FileNotFoundError: when no ``records.jsonl`` is found (the message lists the paths tried).
    """
    path = _records_file(path_or_run_dir)
    records: list[Record] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = Record.from_dict(json.loads(line))
            except (ValueError, TypeError, KeyError):
                bad.append(lineno)
                continue
            if (method is None or rec.method == method) and (name is None or rec.name == name):
                records.append(rec)
    if bad:
        warnings.warn(
            f"{path}: skipped {len(bad)} unreadable line(s) {bad[:20]} (a run interrupted while writing "
            "leaves a truncated last line)",
            RuntimeWarning,
            stacklevel=2,
        )
    return records


# ----------------------------------------------------------------------------------------------------------
# Run directory
# ----------------------------------------------------------------------------------------------------------
def _as_dir(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    try:
        return Path(os.fspath(value))
    except TypeError:
        return None


def run_dir_of(trainer: Any) -> Path:
    """The run directory of ``trainer``: its log dir, else its ``default_root_dir`` (else the cwd).

    For a Lightning ``Trainer`` this mirrors ``Trainer.log_dir`` (the first logger's ``log_dir`` for
    TensorBoard/CSV loggers, ``<save_dir>/<project>/<run id>`` for a ``WandbLogger`` (where Lightning keeps
    that run's checkpoints), the ``save_dir`` of others, ``default_root_dir`` without loggers) but
    *without* the ``strategy.broadcast`` that ``Trainer.log_dir`` performs, so it is safe to call on
    rank 0 alone under DDP. Objects without ``loggers`` are read through their ``log_dir`` attribute.
    """
    loggers = safe_getattr(trainer, "loggers")
    if isinstance(loggers, Sequence) and not isinstance(loggers, str):
        if loggers:
            first = loggers[0]
            own = wandb_run_dir(first)  # a W&B run's own folder, not the save_dir that every run shares
            if own is not None:
                return own
            # Lightning uses log_dir only for TensorBoard/CSV loggers (whose log_dir includes the version)
            names = {c.__name__ for c in type(first).__mro__}
            attrs = ("log_dir", "save_dir") if names & {"TensorBoardLogger", "CSVLogger"} else ("save_dir",)
            for attr in attrs:
                d = _as_dir(safe_getattr(first, attr))
                if d is not None:
                    return d
    else:
        d = _as_dir(safe_getattr(trainer, "log_dir"))
        if d is not None:
            return d
    d = _as_dir(safe_getattr(trainer, "default_root_dir"))
    return d if d is not None else Path.cwd()
