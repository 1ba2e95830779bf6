"""Read back what an *offline* W&B run wrote, from its files (``wandb.Api`` cannot read offline runs).

Layout written by wandb 0.31 (checked with a real offline run through ``WandbLogger(offline=True)``)::

    <save_dir>/wandb/offline-run-<YYYYMMDD_HHMMSS>-<run id>/
        run-<run id>.wandb                                   protobuf log (history, config, ...)
        files/media/table/<key>_<n>_<hash>.table.json        wandb.Table: {"columns": [...], "data": [[...]]}
        files/media/table/<key>_table_<n>_<hash>.table.json  the table behind a wandb.plot.* chart <key>
        files/media/images/<key>_<n>_<hash>.png              wandb.Image
        files/media/images/mask/<key>_<n>_<hash>.mask.png    its masks (one file per mask)
        files/media/metadata/boxes2D/<key>_<n>_<hash>.boxes2D.json   its boxes
        files/media/html/<key>_<n>_<hash>.html               wandb.Html

Slashes in keys become sub-folders (``xai/tcav/scores`` -> ``media/table/xai/tcav/scores_0_<hash>...``).
``<n>`` is W&B's internal ``_step`` (one per ``log`` call of the run), **not** ``trainer/global_step``.
Identical images logged under the same key and step share one file (the name holds a content hash).
Files are written at ``log`` time by the logging process, so they exist before ``wandb.finish()``.
``wandb-summary.json`` is not written offline.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["find_offline_runs", "logged_images", "logged_table_history", "logged_tables"]

_MEDIA_FILE = re.compile(r"^(?P<name>.+)_(?P<step>\d+)_(?P<hash>[0-9a-fA-F]+)(?P<ext>(?:\.[A-Za-z0-9]+)+)$")


def find_offline_runs(save_dir: str | os.PathLike) -> list[Path]:
    """Offline run directories ``<save_dir>/wandb/offline-run-*``, oldest first.

    ``save_dir`` may also be the ``wandb`` directory itself.
    """
    base = Path(save_dir)
    if base.name != "wandb" and (base / "wandb").is_dir():
        base = base / "wandb"
    return sorted(p for p in base.glob("offline-run-*") if p.is_dir())


def _parse(root: Path, path: Path) -> tuple[str, int] | None:
    """(key, step) of a media file, from its path relative to ``root``."""
    m = _MEDIA_FILE.match(path.name)
    if m is None:
        return None
    parent = path.parent.relative_to(root).as_posix()
    key = m["name"] if parent == "." else f"{parent}/{m['name']}"
    return key, int(m["step"])


def _run_files(run_path: str | os.PathLike) -> Path:
    run = Path(run_path)
    files = run / "files" if (run / "files").is_dir() else run
    return files


def logged_table_history(run_path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Every table a run logged: ``{key: [{"columns", "data", "step", "path"}, ...]}`` by W&B step.

    Chart tables appear as ``<chart key>_table``.
    """
    root = _run_files(run_path) / "media" / "table"
    out: dict[str, list[dict[str, Any]]] = {}
    if not root.is_dir():
        return out
    for path in root.rglob("*.table.json"):
        parsed = _parse(root, path)
        if parsed is None:
            continue
        key, step = parsed
        data = json.loads(path.read_text(encoding="utf-8"))
        out.setdefault(key, []).append(
            {"columns": data.get("columns", []), "data": data.get("data", []), "step": step, "path": path}
        )
    for entries in out.values():
        entries.sort(key=lambda e: e["step"])
    return out


def logged_tables(run_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The last logged version of each table: ``{key: {"columns", "data", "step", "path"}}``.

    ``run_path`` is an ``offline-run-*`` directory (see :func:`find_offline_runs`) or its ``files`` dir.
    """
    return {key: entries[-1] for key, entries in logged_table_history(run_path).items()}


def logged_images(
    run_path: str | os.PathLike, key: str | None = None, include_masks: bool = False
) -> list[Path]:
    """PNG files of the images a run logged, sorted by path.

    Args:
        run_path: an ``offline-run-*`` directory or its ``files`` dir.
        key: only images logged under this key (e.g. ``"xai/tcav/saliency"``).
        include_masks: also return mask PNGs (``media/images/mask/*.mask.png``).
    """
    root = _run_files(run_path) / "media" / "images"
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*.png"):
        is_mask = path.name.endswith(".mask.png")
        if is_mask and not include_masks:
            continue
        if key is not None:
            base = root / "mask" if is_mask else root
            try:
                parsed = _parse(base, path)
            except ValueError:
                parsed = None
            if parsed is None or parsed[0] != key:
                continue
        found.append(path)
    return sorted(found)
