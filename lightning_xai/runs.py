"""One run, one directory, one id: which run a record belongs to, and a store that never mixes two runs.

* :func:`logger_run_id`: the run id a Lightning logger gives (W&B's run id, TensorBoard's or CSV's version).
* :func:`wandb_run_dir`: where a W&B run's records go, ``<save_dir>/<project>/<run id>`` (Lightning's own
  checkpoint folder for that run sits beside it).
* :func:`choose_store`: the directory a run writes its records to. A ``records.jsonl`` that already holds
  another run's records is never appended to: the run writes to ``runs/<run id>/`` below it instead, and
  says so, naming both runs.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "LIGHTNING_NAMESPACES",
    "SUPPORTED_LOGGERS",
    "MixedRunsError",
    "choose_store",
    "logger_kind",
    "logger_run_id",
    "new_run_id",
    "run_ids_in",
    "safe_getattr",
    "wandb_run_dir",
]

#: the logger classes lightning-xai writes explanations to (each has a sink in :mod:`lightning_xai.sinks`)
SUPPORTED_LOGGERS = ("WandbLogger", "TensorBoardLogger", "CSVLogger")
#: the packages whose loggers are Lightning's: ``lightning.pytorch`` and its standalone mirror ``pytorch_lightning``
LIGHTNING_NAMESPACES = ("lightning", "pytorch_lightning")


class MixedRunsError(ValueError):
    """A records file holds the records of several runs and no run was chosen."""


def logger_kind(logger: Any) -> str | None:
    """Which supported Lightning logger ``logger`` is (one of :data:`SUPPORTED_LOGGERS`), in either namespace.

    ``pytorch_lightning.loggers.WandbLogger`` is not a subclass of ``lightning.pytorch.loggers.WandbLogger``
    (the two packages hold separate copies), so the class is matched by name and package along its MRO; a
    user's subclass of either counts as its base.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> logger_kind(CSVLogger("runs")), logger_kind(object())
        ('CSVLogger', None)
    """
    for cls in type(logger).__mro__:
        if cls.__name__ in SUPPORTED_LOGGERS and cls.__module__.split(".")[0] in LIGHTNING_NAMESPACES:
            return cls.__name__
    return None


def safe_getattr(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, also ``None`` when the attribute raises (properties of half-configured
    loggers and trainers do)."""
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - any error of a property means "not available"
        return None


def logger_run_id(logger: Any) -> str | None:
    """The id of the run ``logger`` writes: W&B's run id, ``version_<n>`` for TensorBoard and CSV, else ``None``.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> logger_run_id(CSVLogger("runs", version=3)), logger_run_id(object())
        ('version_3', None)
    """
    kind = logger_kind(logger)
    if kind == "WandbLogger":
        # the id of the started run (or of the one it resumes); a run not started yet is not started here
        version = safe_getattr(logger, "version")
        return str(version) if version else None
    if kind in ("TensorBoardLogger", "CSVLogger"):
        version = safe_getattr(logger, "version")
        if version is None:
            return None
        return f"version_{version}" if isinstance(version, int) else str(version)
    return None


def wandb_run_dir(logger: Any) -> Path | None:
    """``<save_dir>/<project>/<run id>`` of a ``WandbLogger`` (either namespace), else ``None``."""
    if logger_kind(logger) != "WandbLogger":
        return None
    run_id = logger_run_id(logger)
    save_dir = safe_getattr(logger, "save_dir")
    if not run_id or not save_dir:
        return None
    return Path(save_dir) / str(safe_getattr(logger, "name") or "lightning_logs") / run_id


def new_run_id() -> str:
    """A fresh run id, for runs whose logger gives none."""
    return uuid.uuid4().hex[:12]


def run_ids_in(records_file: Path) -> list[str | None]:
    """The run ids of the records in ``records_file``, each once, in the order they first appear (``None`` for
    records written before records carried one); ``[]`` for a missing or empty file."""
    if not records_file.is_file():
        return []
    seen: dict[str | None, None] = {}
    with open(records_file, encoding="utf-8") as fh:
        for line in fh:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                seen.setdefault(data.get("run_id"))
    return list(seen)


def choose_store(root: Path, run_id: str | None, resuming: bool) -> tuple[Path, str, str | None]:
    """The store directory and run id a run writes with, and a warning when it had to move.

    Args:
        root: the run's store directory (``<run dir>/xai``).
        run_id: the logger's run id; ``None``: a new id, or, when ``resuming`` a checkpoint, the id of the last
            run in ``root``'s records (the run goes on).
        resuming: the Trainer was started from a checkpoint.

    Returns:
        ``(store dir, run id, warning or None)``: ``root`` itself unless its records file holds another run's
        records; then ``root/runs/<run id>``, and a warning naming both runs.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> choose_store(root, "abc", resuming=False)[:2] == (root, "abc")
        True
    """
    existing = run_ids_in(root / "records.jsonl")
    if run_id is None:
        run_id = existing[-1] if resuming and existing and existing[-1] else new_run_id()
    others = [r for r in existing if r != run_id]
    if not others:
        return root, run_id, None
    moved = root / "runs" / run_id
    named = ", ".join("a run without a run id" if r is None else repr(r) for r in others)
    warning = (
        f"lightning-xai: {root / 'records.jsonl'} holds the records of another run ({named}); this run "
        f"({run_id!r}) writes its records to {moved / 'records.jsonl'} instead, so the two never mix. Give each "
        "run a directory of its own (a logger with a save_dir, or Trainer(default_root_dir=...))."
    )
    return moved, run_id, warning
