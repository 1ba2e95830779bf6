"""A run's records hold one epoch each: the records file grows linearly with the explained epochs.

The quickstart's callbacks (``examples/quickstart.py``'s ``build_callbacks``) explain a 30-epoch run every fifth
epoch (DiffExplainer with fewer optimisation steps, the data small), and every record of epoch 29 is compared
with the same record at epoch 4.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer, seed_everything

from lightning_xai.callbacks import ConceptDriftMonitor, DiffusionExplainerCallback
from lightning_xai.world import TinyCNN, WorldDataModule

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
EPOCHS, EVERY = 30, 5


def _quickstart_callbacks() -> list:
    spec = importlib.util.spec_from_file_location("quickstart_for_growth", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    callbacks = module.build_callbacks("renderer")
    for cb in callbacks:
        if not isinstance(cb, ConceptDriftMonitor):
            cb.every_n_epochs = EVERY
        if isinstance(cb, DiffusionExplainerCallback):
            cb.steps = 10
    return callbacks


def _epochs_named(value: Any, key: str = "") -> Iterator[int]:
    """Every integer stored under a key or a table column called ``epoch`` (or ``*_epoch``), anywhere."""
    if isinstance(value, dict):
        if isinstance(value.get("columns"), list) and isinstance(value.get("rows"), list):
            cols = value["columns"]
            for i, col in enumerate(cols):
                if col == "epoch" or str(col).endswith("_epoch"):
                    yield from (row[i] for row in value["rows"] if isinstance(row[i], int))
        for k, v in value.items():
            yield from _epochs_named(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from _epochs_named(v, key)
    elif (
        isinstance(value, int) and not isinstance(value, bool) and (key == "epoch" or key.endswith("_epoch"))
    ):
        yield value


@pytest.mark.slow
def test_a_record_of_epoch_30_carries_no_earlier_epoch(tmp_path: Path) -> None:
    seed_everything(0, workers=True, verbose=False)
    data = WorldDataModule(task="shape_texture", n_train=128, n_val=96, batch_size=32, seed=0)
    trainer = Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=_quickstart_callbacks(),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_train_batches=1,
    )
    trainer.fit(TinyCNN(num_classes=data.num_classes, classes=data.classes), datamodule=data)
    lines = (tmp_path / "xai" / "records.jsonl").read_text().splitlines()
    by_key: dict[tuple[str, str, str], dict[int, int]] = {}
    for line in lines:
        rec = json.loads(line)
        if rec["name"] != "epoch":
            continue
        payload = rec["payload"]
        # a record names no other epoch than the comparison epochs a drift row or a CKA states as given
        allowed = {rec["epoch"], payload.get("reference_epoch"), payload.get("previous_epoch")}
        allowed |= {r.get("base_epoch") for r in payload.get("rows") or []}
        assert set(_epochs_named(payload)) <= allowed, (rec["method"], rec["epoch"])
        assert "history" not in payload, rec["method"]
        if rec["method"] != "representation_drift":  # CKA with the previous epoch is that method's own output
            assert not any(k.endswith("_prev") for k in payload), rec["method"]
        source = str(payload.get("source", "")) if rec["method"] == "drift" else ""
        by_key.setdefault((rec["method"], rec["name"], source), {})[rec["epoch"]] = len(line)
    first, last = EVERY - 1, EPOCHS - 1
    methods = {m for m, _, _ in by_key}
    assert {"logic_rules", "concept_attribution", "symbolic_tree", "concept_permutation", "diffusion_explainer",
            "representation_drift", "drift"} <= methods  # fmt: skip
    for key, sizes in by_key.items():
        if first in sizes and last in sizes:
            # what varies between epochs is the explanation itself, not its past: a model that learns gains rules
            # and symbols (here the symbolic tree's class trees about double from epoch 5 to 30), while a record
            # that carried its five predecessors would be about six times its first; the checks above catch
            # smaller copies of the past by the epochs they name
            assert sizes[last] <= 3 * sizes[first] + 2048, (key, sizes[first], sizes[last])
