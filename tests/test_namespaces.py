"""The callbacks under ``pytorch_lightning`` (the standalone mirror of ``lightning.pytorch``): its Trainer runs
them, its loggers get the tables, and nothing is refused. The logger sinks are checked in both namespaces,
read back, in ``tests/test_sinks.py``."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
import torch
from _models import channel_net
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import ConceptDriftMonitor, LogicRulesCallback, RepresentationDriftCallback
from lightning_xai.records import read_records
from lightning_xai.results import read_result

pl = pytest.importorskip("pytorch_lightning")


def _blobs(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    x[torch.arange(n), y] += 0.5
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_a_pytorch_lightning_trainer_runs_the_callbacks_and_its_loggers_get_the_explanations(
    tmp_path: Path,
) -> None:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv_logger = CSVLogger(str(tmp_path), name="csv")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=[csv_logger, TensorBoardLogger(str(tmp_path), name="tb")],
        callbacks=[
            LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0),
            RepresentationDriftCallback(layers=["conv.1"]),
            ConceptDriftMonitor(),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(channel_net(pl), _blobs(96, 0), _blobs(64, 1))
    ours = [str(w.message) for w in caught if "lightning-xai" in str(w.message) or "xai" in str(w.message)]
    assert not ours, ours
    run_dir = Path(csv_logger.log_dir)
    records = read_records(run_dir)
    epochs = {(r.method, r.name): [] for r in records}
    for r in records:
        epochs[(r.method, r.name)].append(r.epoch)
    assert epochs[("logic_rules", "epoch")] == [0, 1]
    assert epochs[("representation_drift", "epoch")] == [0, 1]
    assert epochs[("drift", "epoch")]  # the monitor compared epoch 1 with epoch 0
    drift = read_result([r for r in records if r.method == "representation_drift"][-1])
    assert set(drift.cka_prev) == {"features", "conv.1"} and 0.0 <= drift.cka_prev["features"] <= 1.0
    assert float(trainer.callback_metrics["xai/representation_drift/cka_prev/features"]) == pytest.approx(
        drift.cka_prev["features"], abs=1e-6
    )
    # the pytorch_lightning CSVLogger received the tables (it used to be refused as an unsupported logger)
    tables = sorted((run_dir / "xai_tables" / "logic_rules").glob("*.csv"))
    assert tables, sorted(run_dir.rglob("*"))
    with open(tables[0], newline="") as fh:
        assert len(list(csv.reader(fh))) >= 2  # a header and at least one row
