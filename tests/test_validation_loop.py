"""Runs that cannot be explained say so once at the start of ``fit``: ``fast_dev_run`` (nothing explained, no
files) and a fit without a validation loop (one warning naming the callbacks and the reason)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch import LightningModule

from lightning_xai.callbacks import ConceptDriftMonitor, LogicRulesCallback, RepresentationDriftCallback
from lightning_xai.records import read_records


def _callbacks() -> list:
    return [
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0),
        RepresentationDriftCallback(),
        ConceptDriftMonitor(),
    ]


def _fit(trainer, model, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, **kwargs)
    return [str(w.message) for w in caught if "lightning-xai" in str(w.message)]


def test_fast_dev_run_explains_nothing_writes_no_file_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = make_trainer(tmp_path, _callbacks(), fast_dev_run=True, logger=True)
    with caplog.at_level(logging.INFO):
        ours = _fit(trainer, SmallNet(), datamodule=BlobData())
    assert ours == []  # no "cannot log explanations to DummyLogger"
    lines = [r.getMessage() for r in caplog.records if "lightning-xai" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "fast_dev_run" in lines[0] and "LogicRulesCallback, RepresentationDriftCallback" in lines[0]
    assert not list(tmp_path.rglob("records.jsonl")) and not list(tmp_path.rglob("xai"))


class TrainOnly(BlobData):
    val_dataloader = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("model", "data", "trainer_args", "reason"),
    [
        (SmallNet, TrainOnly, {}, "there is no val_dataloader"),
        (SmallNet, BlobData, {"limit_val_batches": 0}, "limit_val_batches=0"),
    ],
    ids=["no-val-dataloader", "limit_val_batches-0"],
)
def test_a_fit_without_validation_warns_once_at_its_start_naming_the_callbacks(
    tmp_path: Path, model: type, data: type, trainer_args: dict, reason: str
) -> None:
    trainer = make_trainer(tmp_path, _callbacks(), max_epochs=2, **trainer_args)
    ours = _fit(trainer, model(), datamodule=data())
    assert len(ours) == 1, ours
    assert reason in ours[0] and "LogicRulesCallback, RepresentationDriftCallback" in ours[0]
    assert "nothing will be explained" in ours[0]
    assert not list(tmp_path.rglob("records.jsonl"))


class NoValidationStep(LightningModule):
    """A model that trains but defines no validation_step: Lightning skips validation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = SmallNet()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_a_model_without_validation_step_is_named_in_the_warning(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, _callbacks(), max_epochs=1)
    ours = _fit(trainer, NoValidationStep(), datamodule=BlobData())
    assert len(ours) == 1 and "NoValidationStep has no validation_step" in ours[0], ours
    assert not list(tmp_path.rglob("records.jsonl"))


def test_a_fit_with_validation_says_nothing_and_explains(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, _callbacks(), max_epochs=1)
    assert _fit(trainer, SmallNet(), datamodule=BlobData()) == []
    assert {r.method for r in read_records(trainer.log_dir)} >= {"logic_rules", "representation_drift"}
