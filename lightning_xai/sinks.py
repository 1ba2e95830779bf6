"""Send explanations to the trainer's loggers, and always to the local store.

:class:`SinkDispatcher` is what callbacks use::

    dispatcher = SinkDispatcher(trainer)          # local store at run_dir_of(trainer) / "xai"
    record = dispatcher.dispatch(explanation, step=trainer.global_step)

One sink is made per logger in ``trainer.loggers``:

=====================  =================================================================================
logger                 what is written
=====================  =================================================================================
``WandbLogger``        tables as ``wandb.Table``, media as ``wandb.Image`` (caption, masks, boxes), charts
                       as ``wandb.plot.bar`` / ``wandb.plot.line`` (``line_series`` for several y), text as
                       one ``wandb.Table`` (``key``, ``text``); keys ``xai/<method>/<key>``; logged through
                       ``logger.log_metrics(..., step)`` so ``trainer/global_step`` is the x axis.
``TensorBoardLogger``  tables as markdown (``add_text``), media with ``add_image`` (masks as colour
                       overlays, boxes with ``add_image_with_boxes``), charts via ``add_figure``, text via
                       ``add_text``.
``CSVLogger``          each table as ``<log_dir>/xai_tables/<method>/<key>_e<epoch>_s<step>.csv`` (scalars
                       reach the CSV through ``pl_module.log``; media are in the local store).
anything else          the local store only, and one warning.
=====================  =================================================================================

Rank handling is the caller's job: under DDP only global rank 0 may call :meth:`SinkDispatcher.dispatch`
or :meth:`SinkDispatcher.write_error` (logger methods are ``rank_zero_only`` and the local store expects
one writer). Building a :class:`SinkDispatcher` runs no collective, so it may happen on rank 0 alone.
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_xai.colours import TAB10, rgb
from lightning_xai.records import (
    Chart,
    Explanation,
    LocalStore,
    Media,
    Record,
    Table,
    run_dir_of,
    sanitize_key,
    to_jsonable,
)
from lightning_xai.results.errors import ExplainerError
from lightning_xai.runs import SUPPORTED_LOGGERS, choose_store, logger_kind, logger_run_id, safe_getattr

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "CSVSink",
    "Sink",
    "SinkDispatcher",
    "TensorBoardSink",
    "WandbSink",
    "chart_image",
    "chart_to_figure",
    "log_key",
    "mask_overlay",
    "sink_for_logger",
    "table_to_markdown",
]

#: Most images sent to W&B in one ``log`` call.
MAX_IMAGES_PER_CALL = 50
_PALETTE = np.array([rgb(c) for c in TAB10], dtype=np.float32)  # mask overlays: class id k gets colour k - 1


def _warn(message: str) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(message, category=UserWarning)


def log_key(method: str, key: str) -> str:
    """Logger key of an item: ``xai/<method>/<key>``."""
    return f"xai/{method}/{key}"


# ----------------------------------------------------------------------------------------------------------
# Rendering helpers
# ----------------------------------------------------------------------------------------------------------
def _as_number(v: Any) -> float:
    try:
        return float(to_jsonable(v, "value"))
    except (TypeError, ValueError):
        return float("nan")


def chart_image(chart: Chart) -> np.ndarray:
    """Draw a :class:`~lightning_xai.records.Chart` as a ``uint8`` RGB array ``[H, W, 3]`` (see
    :mod:`lightning_xai.charts`: a few milliseconds, where a matplotlib chart costs about 50).

    ``"bar"`` draws one bar per row (grouped when ``y`` names several columns); ``"line"`` draws one line per
    ``y`` column over ``x`` (numeric x if every value is a number, else evenly spaced labelled points). Cells
    that are not numbers draw nothing.

    Example:
        >>> from lightning_xai.records import Table
        >>> chart_image(Chart("k", "bar", Table("t", ["c", "a"], [["x", 1.0], ["y", 2.0]]), "c", "a")).shape[2]
        3
    """
    from lightning_xai.charts import bar_chart, line_chart

    table = chart.table
    xs = [to_jsonable(x, "x") for x in table.column(chart.x)]
    ys = chart.ys
    values = [[_as_number(v) for v in table.column(col)] for col in ys]
    n = len(xs)
    common = {
        "series": ys,
        "title": chart.title,
        "xlabel": chart.x,
        "ylabel": ys[0] if len(ys) == 1 else "value",
    }
    if chart.kind == "bar":
        width = round(100 * min(16.0, max(4.5, 0.35 * n * len(ys) + 2.0)))
        return bar_chart([str(x) for x in xs], values, hline=0.0, size=(width, 360), **common)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    width = round(100 * min(16.0, max(4.5, 0.35 * n * 0.5 + 2.0)))
    return line_chart(xs if numeric else [str(x) for x in xs], values, size=(width, 360), **common)


def chart_to_figure(chart: Chart) -> Figure:
    """:func:`chart_image` as a bare ``matplotlib.figure.Figure`` that shows it 1:1 (what TensorBoard's
    ``add_figure`` takes).

    The figure is not registered with pyplot, so it never shows up in ``plt.get_fignums()`` and needs no
    ``plt.close``; it is freed when no longer referenced.
    """
    from lightning_xai.panels import image_figure

    return image_figure(chart_image(chart))


def table_to_markdown(table: Table, max_rows: int = 200) -> str:
    """A markdown table (as TensorBoard's text plugin renders it); at most ``max_rows`` rows."""

    def cell(v: Any) -> str:
        v = to_jsonable(v, "cell")
        if isinstance(v, float):
            text = f"{v:.4g}"
        elif isinstance(v, (list, dict)):
            text = json.dumps(v)
        else:
            text = "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows[:max_rows]]
    if len(table.rows) > max_rows:
        lines.append(f"\n({len(table.rows) - max_rows} more rows not shown; all rows are in the local store)")
    return "\n".join(lines)


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Colour the non-zero class ids of ``mask`` over ``image`` (both ``[H, W(, 3)]``, uint8)."""
    out = image.astype(np.float32)
    for cid in np.unique(mask):
        if cid == 0:
            continue
        sel = mask == cid
        out[sel] = (1 - alpha) * out[sel] + alpha * _PALETTE[(int(cid) - 1) % 10]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _media_tags(method: str, media: Sequence[Media]) -> list[str]:
    """``xai/<method>/<key>``, or ``.../<key>/<i>`` for keys used by several media."""
    counts: dict[str, int] = {}
    for m in media:
        counts[m.key] = counts.get(m.key, 0) + 1
    seen: dict[str, int] = {}
    tags = []
    for m in media:
        if counts[m.key] == 1:
            tags.append(log_key(method, m.key))
        else:
            tags.append(log_key(method, f"{m.key}/{seen.get(m.key, 0)}"))
            seen[m.key] = seen.get(m.key, 0) + 1
    return tags


# ----------------------------------------------------------------------------------------------------------
# Sinks
# ----------------------------------------------------------------------------------------------------------
class Sink(ABC):
    """Writes explanations to one destination. Subclass and pass instances to
    ``SinkDispatcher(extra_sinks=...)`` to add destinations."""

    @abstractmethod
    def write(self, explanation: Explanation, step: int) -> None:
        """Write ``explanation`` at logger step ``step`` (usually ``trainer.global_step``)."""

    def epoch_complete(self, records_path: Path, epoch: int) -> None:
        """Called once every record of ``epoch`` is in ``records_path`` (default: nothing to do)."""

    def __repr__(self) -> str:
        return type(self).__name__


class WandbSink(Sink):
    """Writes to a Lightning ``WandbLogger`` (see the module docstring for the mapping).

    Everything of one explanation goes into as few ``logger.log_metrics`` calls as possible (one, unless it
    has more than :data:`MAX_IMAGES_PER_CALL` images). A key with more than that many images is split into
    ``<key>/part<j>``.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __repr__(self) -> str:
        return f"WandbSink({type(self.logger).__name__})"

    def _online_run(self) -> Any:
        """The W&B run if it syncs to a server as it goes; ``None`` offline, disabled or not started (reading
        ``WandbLogger.experiment`` would start a run, so only one that exists is used)."""
        if getattr(self.logger, "_offline", False):
            return None
        if hasattr(self.logger, "_experiment"):
            run = self.logger._experiment
        else:
            run = getattr(self.logger, "experiment", None)
        if run is None or getattr(run, "offline", False) or getattr(run, "disabled", False):
            return None
        mode = getattr(getattr(run, "settings", None), "mode", None)
        return None if mode in ("offline", "disabled", "dryrun") else run

    def epoch_complete(self, records_path: Path, epoch: int) -> None:
        """Online runs get the records so far as a new version of the ``xai-records-<run id>`` artifact,
        aliased ``epoch-<epoch>`` (offline runs keep them in the local store; ``wandb sync`` uploads media)."""
        run = self._online_run()
        if run is None or not Path(records_path).is_file():
            return
        import wandb

        artifact = wandb.Artifact(f"xai-records-{run.id}", type="xai-records", metadata={"epoch": int(epoch)})
        artifact.add_file(str(records_path), name="records.jsonl")
        run.log_artifact(artifact, aliases=[f"epoch-{int(epoch)}", "latest"])

    def write(self, explanation: Explanation, step: int) -> None:
        import wandb

        method = explanation.method
        first: dict[str, Any] = {}
        for table in explanation.tables:
            first[log_key(method, table.key)] = wandb.Table(
                columns=list(table.columns), data=to_jsonable(table.rows, f"tables[{table.key!r}].rows")
            )
        for chart in explanation.charts:
            first.update(self._charts(explanation, chart))
        if explanation.text:
            first[log_key(method, "text")] = wandb.Table(
                columns=["key", "text"], data=[[k, v] for k, v in explanation.text.items()]
            )
        calls = self._image_calls(explanation)
        if not calls:
            calls = [{}]
        calls[0] = {**first, **calls[0]}
        for metrics in calls:
            if metrics:
                self.logger.log_metrics(metrics, step=step)

    def _charts(self, explanation: Explanation, chart: Chart) -> dict[str, Any]:
        import wandb

        key = log_key(explanation.method, explanation.chart_key(chart))
        table = chart.table
        rows = to_jsonable(table.rows, f"charts[{chart.key!r}].rows")
        if chart.kind == "bar":
            if isinstance(chart.y, str):
                wt = wandb.Table(columns=list(table.columns), data=rows)
                return {key: wandb.plot.bar(wt, chart.x, chart.y, title=chart.title)}
            out = {}
            for col in chart.ys:
                wt = wandb.Table(columns=list(table.columns), data=rows)
                out[f"{key}/{col}"] = wandb.plot.bar(wt, chart.x, col, title=f"{chart.title}: {col}")
            return out
        if isinstance(chart.y, str):
            wt = wandb.Table(columns=list(table.columns), data=rows)
            return {key: wandb.plot.line(wt, chart.x, chart.y, title=chart.title)}
        xs = to_jsonable(table.column(chart.x), "x")
        ys = [to_jsonable(table.column(c), c) for c in chart.ys]
        return {key: wandb.plot.line_series(xs=xs, ys=ys, keys=chart.ys, title=chart.title, xname=chart.x)}

    def _image(self, m: Media) -> Any:
        import wandb

        kwargs: dict[str, Any] = {}
        if m.caption:
            kwargs["caption"] = m.caption
        if m.masks:
            kwargs["masks"] = {
                name: {"mask_data": mask, "class_labels": m.labels_for(mask)}
                for name, mask in m.masks.items()
            }
        if m.boxes:
            label_ids: dict[str, int] = {}
            groups: dict[str, dict[str, Any]] = {}
            for box in m.boxes:
                label = str(box.get("label", box.get("class_id", "region")))
                cid = box.get("class_id")
                if cid is None:
                    cid = label_ids.setdefault(label, len(label_ids))
                group = groups.setdefault(
                    str(box.get("group", "regions")), {"box_data": [], "class_labels": {}}
                )
                entry: dict[str, Any] = {
                    "position": {"minX": box["x0"], "minY": box["y0"], "maxX": box["x1"], "maxY": box["y1"]},
                    "domain": "pixel",
                    "class_id": int(cid),
                    "box_caption": label,
                }
                if box.get("score") is not None:
                    entry["scores"] = {"score": float(box["score"])}
                group["box_data"].append(entry)
                group["class_labels"][int(cid)] = label
            kwargs["boxes"] = groups
        return wandb.Image(m.image, **kwargs)

    def _image_calls(self, explanation: Explanation) -> list[dict[str, Any]]:
        by_key: dict[str, list[Any]] = {}
        for m in explanation.media:
            by_key.setdefault(log_key(explanation.method, m.key), []).append(self._image(m))
        chunks: list[tuple[str, list[Any]]] = []
        for key, images in by_key.items():
            if len(images) <= MAX_IMAGES_PER_CALL:
                chunks.append((key, images))
            else:
                for j in range(0, len(images), MAX_IMAGES_PER_CALL):
                    part = f"{key}/part{j // MAX_IMAGES_PER_CALL}"
                    chunks.append((part, images[j : j + MAX_IMAGES_PER_CALL]))
        calls: list[dict[str, Any]] = []
        count = MAX_IMAGES_PER_CALL + 1
        for key, images in chunks:
            if count + len(images) > MAX_IMAGES_PER_CALL:
                calls.append({})
                count = 0
            calls[-1][key] = images
            count += len(images)
        return calls


class TensorBoardSink(Sink):
    """Writes to a Lightning ``TensorBoardLogger`` (its ``experiment`` is a ``SummaryWriter``)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __repr__(self) -> str:
        return f"TensorBoardSink({type(self.logger).__name__})"

    def write(self, explanation: Explanation, step: int) -> None:
        writer = self.logger.experiment
        method = explanation.method
        for table in explanation.tables:
            writer.add_text(log_key(method, table.key), table_to_markdown(table), global_step=step)
        for chart in explanation.charts:
            fig = chart_to_figure(chart)
            writer.add_figure(
                log_key(method, explanation.chart_key(chart)), fig, global_step=step, close=True
            )
        captions = []
        for tag, m in zip(_media_tags(method, explanation.media), explanation.media, strict=True):
            if m.boxes:
                import torch

                boxes = torch.tensor(
                    [[b["x0"], b["y0"], b["x1"], b["y1"]] for b in m.boxes], dtype=torch.float32
                )
                labels = [str(b.get("label", "")) for b in m.boxes]
                writer.add_image_with_boxes(
                    tag, m.image, boxes, global_step=step, dataformats="HWC", labels=labels
                )
            else:
                writer.add_image(tag, m.image, global_step=step, dataformats="HWC")
            for name, mask in (m.masks or {}).items():
                writer.add_image(
                    f"{tag}/mask_{sanitize_key(name)}",
                    mask_overlay(m.image, mask),
                    global_step=step,
                    dataformats="HWC",
                )
            if m.caption:
                captions.append(f"- **{tag}**: {m.caption}")
        if captions:
            writer.add_text(log_key(method, "captions"), "\n".join(captions), global_step=step)
        for key, text in explanation.text.items():
            writer.add_text(log_key(method, key), text, global_step=step)
        flush = getattr(writer, "flush", None)
        if callable(flush):
            flush()


class CSVSink(Sink):
    """Writes each table of an explanation as a CSV file under ``<logger.log_dir>/xai_tables/<method>/``.

    File names are ``<key>_e<epoch>_s<step>.csv`` (``_<i>`` appended if taken); list/dict cells are written
    as JSON. Text is written as ``text_e<epoch>_s<step>.csv`` with columns ``key, text``.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def __repr__(self) -> str:
        return f"CSVSink({type(self.logger).__name__})"

    @property
    def root(self) -> Path:
        log_dir = getattr(self.logger, "log_dir", None) or getattr(self.logger, "save_dir", None)
        if not log_dir:
            raise RuntimeError(f"{type(self.logger).__name__} has no log_dir to write tables to")
        return Path(log_dir) / "xai_tables"

    def write(self, explanation: Explanation, step: int) -> None:
        rec = explanation.record
        directory = self.root / sanitize_key(rec.method)
        tables = explanation.all_tables()
        if explanation.text:
            tables.append(Table("text", ["key", "text"], [[k, v] for k, v in explanation.text.items()]))
        for table in tables:
            directory.mkdir(parents=True, exist_ok=True)
            stem = f"{sanitize_key(table.key)}_e{rec.epoch}_s{step}"
            path, i = directory / f"{stem}.csv", 0
            while path.exists():
                i += 1
                path = directory / f"{stem}_{i}.csv"
            rows = to_jsonable(table.rows, f"tables[{table.key!r}].rows")
            with open(path, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(table.columns)
                for row in rows:
                    w.writerow([json.dumps(v) if isinstance(v, (list, dict)) else v for v in row])


def sink_for_logger(logger: Any) -> Sink | None:
    """The sink for a Lightning logger (``lightning.pytorch`` or ``pytorch_lightning``), or ``None`` if its type
    is not supported."""
    sinks: dict[str, type[Sink]] = {
        "WandbLogger": WandbSink,
        "TensorBoardLogger": TensorBoardSink,
        "CSVLogger": CSVSink,
    }
    kind = logger_kind(logger)
    return sinks[kind](logger) if kind is not None else None


# ----------------------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------------------
class SinkDispatcher:
    """Writes every explanation to the local store first, then to one sink per logger of ``trainer``.

    Args:
        trainer: a ``lightning.pytorch.Trainer`` (or anything with ``loggers`` and ``log_dir`` /
            ``default_root_dir``). Its loggers are read once, here.
        extra_sinks: further :class:`Sink` objects to write to after the logger sinks.
        root: store directory; default ``run_dir_of(trainer) / "xai"``.

    A logger type without a sink (anything but W&B, TensorBoard, CSV) gets one warning, here, naming its
    class; its explanations are still kept in the local store. A sink that raises gets one warning (the
    first time) and the record stays in the local store; :attr:`failures` counts failures per sink.

    Only global rank 0 may call :meth:`dispatch` / :meth:`write_error` (see the module docstring).
    """

    def __init__(
        self, trainer: Any, extra_sinks: Iterable[Sink] = (), root: str | Path | None = None
    ) -> None:
        if root is not None:
            self.store = LocalStore(Path(root))
        else:
            first = (list(getattr(trainer, "loggers", None) or []) or [None])[0]
            resuming = safe_getattr(trainer, "ckpt_path") is not None
            store_root, run_id, moved = choose_store(
                run_dir_of(trainer) / "xai", logger_run_id(first), resuming
            )
            self.store = LocalStore(store_root, run_id=run_id)
            if moved is not None:
                _warn(moved)
        self.sinks: list[Sink] = []
        unsupported = []
        for logger in list(getattr(trainer, "loggers", None) or []):
            sink = sink_for_logger(logger)
            if sink is None:
                unsupported.append(type(logger).__name__)
            else:
                self.sinks.append(sink)
        self.sinks.extend(extra_sinks)
        self.unsupported_loggers: list[str] = unsupported
        self.failures: dict[str, int] = {}
        self._warned: set[int] = set()
        self._open_epoch: int | None = None  # the epoch whose records are still coming
        if unsupported:
            _warn(
                f"lightning-xai cannot log explanations to {', '.join(unsupported)}; supported loggers are "
                f"{', '.join(SUPPORTED_LOGGERS)}. Explanations are still kept in {self.store.root}."
            )

    def __repr__(self) -> str:
        return f"SinkDispatcher(store={str(self.store.root)!r}, sinks={self.sinks})"

    def dispatch(self, explanation: Explanation, step: int | None = None) -> Record:
        """Write ``explanation`` to the local store, then to every sink.

        Args:
            explanation: what to write.
            step: logger step; default ``explanation.record.global_step``.

        Returns:
            The record as written to the local store (payload with ``tables``/``media``/... filled in).

        Raises:
            Exception: only if the local store cannot be written (e.g. a payload that is not
                JSON-convertible, or a full disk). Sink failures are warned about, never raised.
        """
        epoch = explanation.record.epoch
        if self._open_epoch is not None and epoch > self._open_epoch:
            self.finish_epoch()  # a later epoch's first record: the earlier epoch is complete
        self._open_epoch = epoch if self._open_epoch is None else max(self._open_epoch, epoch)
        record = self.store.write(explanation)
        self._to_sinks(explanation, explanation.record.global_step if step is None else step)
        return record

    def finish_epoch(self) -> None:
        """Tell every sink that the open epoch's records are complete (once per epoch; at the end of training
        the callbacks call it for the last epoch). A sink that fails is warned about, never raised."""
        if self._open_epoch is None:
            return
        epoch, self._open_epoch = self._open_epoch, None
        for i, sink in enumerate(self.sinks):
            try:
                sink.epoch_complete(self.store.records_path, epoch)
            except Exception as exc:  # noqa: BLE001 - a logger must never break training
                self.failures[repr(sink)] = self.failures.get(repr(sink), 0) + 1
                if i not in self._warned:
                    self._warned.add(i)
                    _warn(
                        f"lightning-xai: {sink!r} failed at the end of epoch {epoch} ({type(exc).__name__}: {exc})."
                    )

    def _to_sinks(self, explanation: Explanation, step: int) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.write(explanation, step)
            except Exception as exc:  # noqa: BLE001 - a logger must never break training or lose the record
                self.failures[repr(sink)] = self.failures.get(repr(sink), 0) + 1
                if i not in self._warned:
                    self._warned.add(i)
                    _warn(
                        f"lightning-xai: {sink!r} failed to write {explanation.record.method}/"
                        f"{explanation.record.name} ({type(exc).__name__}: {exc}). The record is kept in "
                        f"{self.store.records_path}; further failures of this sink are not reported."
                    )

    def write_error(
        self,
        method: str,
        epoch: int,
        global_step: int,
        exc: BaseException,
        step: int | None = None,
        hint: str | None = None,
    ) -> Record:
        """Record that ``method`` failed: an ``"error"`` record to the local store and to every sink.

        The payload is an :class:`~lightning_xai.results.errors.ExplainerError` (the exception's type, message,
        traceback and a hint of what to do about it, e.g. after running out of memory).
        Never raises: if even the local store fails, a warning says so and the record is returned anyway.
        """
        error = ExplainerError.from_exception(exc, hint=hint)
        record = Record(method, "error", epoch, global_step, 0.0, error.to_payload(), schema=error.schema)
        explanation = error.explanation(record)
        written = record
        try:
            written = self.store.write(explanation)
        except Exception as store_exc:  # noqa: BLE001 - reporting an error must not raise another
            _warn(
                f"lightning-xai could not store the error record of {method!r} in {self.store.root} "
                f"({type(store_exc).__name__}: {store_exc}); the original error was {error.type}: {exc}"
            )
        self._to_sinks(explanation, global_step if step is None else step)
        return written
