"""Loading a run's records for the report: where they are, in which order, which alerts they hold."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_xai.records import MEDIA_DIR, RECORDS_FILE, Record, read_records
from lightning_xai.results import Result, SchemaError, result_type
from lightning_xai.results.drift import DriftAlert, DriftResult
from lightning_xai.results.untyped import UntypedResult
from lightning_xai.runs import MixedRunsError

__all__ = ["KNOWN_METHODS", "METHOD_TITLES", "RecordsNotFoundError", "RunRecords", "load_run"]

#: Section order of the methods this package ships; other methods follow in alphabetical order.
KNOWN_METHODS = (
    "representation_drift",
    "logic_rules",
    "concept_attribution",
    "symbolic_tree",
    "concept_permutation",
    "diffusion_explainer",
    "drift",
)
METHOD_TITLES = {
    "representation_drift": "Representation drift (linear CKA)",
    "logic_rules": "Logic rules (VisionLogic)",
    "concept_attribution": "Concept attribution (TCAV / Visual-TCAV)",
    "symbolic_tree": "Symbolic trees (hyperbolic)",
    "concept_permutation": "Concept permutation importance (DEPICT)",
    "diffusion_explainer": "Diffusion explanations (DiffExplainer)",
    "drift": "Concept drift monitor",
}


def typed(rec: Record) -> tuple[Result | None, str | None]:
    """``(typed result, None)`` for a readable record, ``(None, why)`` for one this version cannot read.

    A record of a method (or a record name) that has no result type, e.g. another package's callback, is
    read as an :class:`~lightning_xai.results.untyped.UntypedResult`.
    """
    try:
        cls = result_type(rec.method, rec.name)
    except SchemaError:
        return UntypedResult.from_payload(rec.payload), None
    try:
        return cls.from_payload(rec.payload, rec.schema), None
    except (SchemaError, TypeError, ValueError, KeyError, AttributeError) as exc:
        return None, f"{rec.method} record ({rec.name}, epoch {rec.epoch}) cannot be read: {exc}"


class RecordsNotFoundError(FileNotFoundError):
    """A run directory without ``xai/records.jsonl``; the message names the path looked at."""


# ----------------------------------------------------------------------------------------------------------
# Loading a run
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RunRecords:
    """The records of one run and where they live.

    Attributes:
        run_dir: the run directory (the parent of the ``xai`` store, or the store itself if it has another
            name).
        root: the store directory holding ``records.jsonl``; media paths in payloads are relative to it.
        records: the records in the order they were written.
        skipped_lines: unreadable lines of ``records.jsonl`` (e.g. the last line of a crashed run).
        label: a short name for the run (its directory name), used in headings.
    """

    run_dir: Path
    root: Path
    records: list[Record]
    skipped_lines: int = 0
    label: str = ""

    @property
    def records_path(self) -> Path:
        return self.root / RECORDS_FILE

    @property
    def methods(self) -> list[str]:
        """Methods present, known ones in :data:`KNOWN_METHODS` order, then the others alphabetically."""
        return _order_methods({r.method for r in self.records})

    @property
    def epochs(self) -> list[int]:
        return sorted({r.epoch for r in self.records})

    @property
    def errors(self) -> list[Record]:
        return [r for r in self.records if r.name == "error"]

    def by_method(self) -> dict[str, dict[int, list[Record]]]:
        """``{method: {epoch: [records in written order]}}`` with epochs sorted."""
        out: dict[str, dict[int, list[Record]]] = {}
        for rec in self.records:
            out.setdefault(rec.method, {}).setdefault(rec.epoch, []).append(rec)
        return {m: dict(sorted(out[m].items())) for m in self.methods}

    def alerts(self) -> list[_Alert]:
        """Alert records (``name == "alert"``) plus flagged drift rows that no alert record reports."""
        found: list[_Alert] = []
        seen: set[tuple] = set()
        for rec in self.records:
            alert, _ = typed(rec) if rec.name == "alert" else (None, None)
            if isinstance(alert, DriftAlert):
                found.append(_Alert(rec.method, rec.epoch, alert.text(), alert.source))
                seen.add((rec.epoch, alert.source, alert.kind, alert.key, alert.against))
        for rec in self.records:
            drift, _ = typed(rec) if rec.method == "drift" and rec.name != "alert" else (None, None)
            if not isinstance(drift, DriftResult):
                continue
            for row in drift.rows:
                tag = (rec.epoch, row.source, row.kind, row.key, row.against)
                if row.alert and tag not in seen:
                    seen.add(tag)
                    found.append(_Alert(rec.method, rec.epoch, row.text(), row.source))
        return found


@dataclass
class _Alert:
    method: str  # the section it is shown in
    epoch: int
    message: str
    source: Any = None  # the method whose explanation drifted, when the alert says


def _order_methods(methods: Iterable[str]) -> list[str]:
    methods = set(methods)
    return [m for m in KNOWN_METHODS if m in methods] + sorted(methods - set(KNOWN_METHODS))


def _locate(path: Path) -> tuple[Path, Path]:
    """``(run_dir, store root)`` for a run dir, an ``xai`` store dir or a ``records.jsonl`` file."""
    if path.is_file():
        root = path.parent
    elif (path / "xai" / RECORDS_FILE).is_file():
        root = path / "xai"
    elif (path / RECORDS_FILE).is_file():
        root = path
    else:
        looked = path / "xai" / RECORDS_FILE
        where = "does not exist" if not path.exists() else "has no xai/records.jsonl"
        raise RecordsNotFoundError(
            f"no explanation records at {looked} ({path} {where}). lightning-xai callbacks write "
            f"xai/{RECORDS_FILE} (and xai/{MEDIA_DIR}/) into the trainer's run directory while it trains "
            "(its log_dir, e.g. lightning_logs/version_0, or default_root_dir without a logger); pass that "
            "directory, an xai directory, or the records.jsonl file"
        )
    run_dir = root.parent if root.name == "xai" else root
    return run_dir, root


def load_run(path: str | os.PathLike, label: str | None = None, run_id: str | None = None) -> RunRecords:
    """Read a run's records for the report.

    Args:
        path: a run directory (holding ``xai/records.jsonl``), an ``xai`` store dir or the records file.
        label: name shown for the run; default the run directory's name.
        run_id: the run to read, when the file holds the records of several (older files, or one written
            into by hand); default: the file's only run.

    Raises:
        RecordsNotFoundError: if there is no ``records.jsonl`` (the message names the path looked at and
            says how records get there).
        lightning_xai.runs.MixedRunsError: the file holds several runs and ``run_id`` names none of them (the
            message lists them).

    Example:
        >>> run = load_run("runs/quickstart")  # doctest: +SKIP
        >>> run.methods, run.epochs  # doctest: +SKIP
        (['representation_drift', 'logic_rules', ...], [0, 1])
    """
    run_dir, root = _locate(Path(path).expanduser().resolve())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = read_records(root / RECORDS_FILE)
    skipped = 0
    for w in caught:
        m = re.search(r"skipped (\d+) unreadable", str(w.message))
        if m:
            skipped += int(m.group(1))
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    # records without a run id come from writers that stamp none (older files, a LocalStore used directly):
    # they are not a run of their own
    runs = [r for r in dict.fromkeys(r.run_id for r in records) if r is not None]
    named = ", ".join(repr(r) for r in runs) or "none with a run id"
    if run_id is not None:
        records = [r for r in records if r.run_id == run_id]
        if not records:
            raise MixedRunsError(
                f"{root / RECORDS_FILE} holds no records of run {run_id!r}; its runs: {named}"
            )
    elif len(runs) > 1:
        raise MixedRunsError(
            f"{root / RECORDS_FILE} holds the records of {len(runs)} runs ({named}); a report shows one: "
            "choose it with `lightning-xai report --run ID` (load_run(..., run_id=ID))"
        )
    return RunRecords(run_dir, root, records, skipped, label or run_dir.name or str(run_dir))
