"""Runs that cannot be explained say so once at the start of ``fit``: ``fast_dev_run`` (nothing explained, no
files) and a fit without a validation loop (one warning naming the callbacks and the reason)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, blob_data, make_trainer
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from lightning_xai.callbacks import ConceptDriftMonitor, LogicRulesCallback, RepresentationDriftCallback
from lightning_xai.records import read_records
from lightning_xai.results import read_result


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


class TwoLoaderNet(SmallNet):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))


def _two_loaders() -> list[DataLoader]:
    return [
        DataLoader(blob_data(64, seed=2), batch_size=16),
        DataLoader(blob_data(32, seed=3), batch_size=16),
    ]


def test_each_callback_explains_the_validation_dataloader_it_names_and_never_mixes_them(
    tmp_path: Path,
) -> None:
    first, second = RepresentationDriftCallback(), RepresentationDriftCallback(dataloader_idx=1)
    trainer = make_trainer(tmp_path, [first, second], max_epochs=1)
    data = blob_data(64, seed=1)
    assert _fit(trainer, TwoLoaderNet(), train_dataloaders=DataLoader(data, batch_size=16),
                val_dataloaders=_two_loaders()) == []  # fmt: skip
    records = read_records(trainer.log_dir, method="representation_drift")
    by_loader = {r.dataloader_idx: read_result(r) for r in records}
    # 64 and 32 samples: each loader's own (they used to be merged into one sample of 96)
    assert {k: v.n_samples for k, v in by_loader.items()} == {0: 64, 1: 32}
    raw = (Path(trainer.log_dir) / "xai" / "records.jsonl").read_text().splitlines()
    assert sum('"dataloader_idx":1' in line for line in raw) == 1  # recorded for the second loader


def test_a_dataloader_idx_beyond_the_loaders_is_an_error_naming_the_valid_ones(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [RepresentationDriftCallback(dataloader_idx=2)], max_epochs=1)
    with pytest.warns(
        UserWarning, match=r"dataloader_idx=2 does not exist: .* 2 dataloaders; choose one of \[0, 1\]"
    ):
        trainer.fit(TwoLoaderNet(), DataLoader(blob_data(32, seed=1), batch_size=16), _two_loaders())
    (error,) = read_records(trainer.log_dir, method="representation_drift")
    assert error.name == "error" and "choose one of [0, 1]" in error.payload["message"]


def test_with_several_validation_runs_an_epoch_only_the_first_is_explained(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path, _callbacks(), max_epochs=2, val_check_interval=0.5, limit_train_batches=4
    )
    assert _fit(trainer, SmallNet(), datamodule=BlobData()) == []
    records = [r for r in read_records(trainer.log_dir) if r.name == "epoch" and r.method != "drift"]
    for method in ("logic_rules", "representation_drift"):
        runs = [(r.epoch, r.global_step) for r in records if r.method == method]
        assert runs == [(0, 2), (1, 6)], (method, runs)  # the mid-epoch validation of each epoch


def test_fewer_validation_samples_than_classes_are_named_in_one_warning(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [RepresentationDriftCallback()], max_epochs=2, limit_val_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SmallNet(classes=6), datamodule=BlobData(batch_size=4, classes=6))
    ours = [str(w.message) for w in caught if "validation samples" in str(w.message)]
    assert len(ours) == 1 and "from 4 validation samples, fewer than the model's 6 classes" in ours[0], ours
    assert len(read_records(trainer.log_dir, method="representation_drift")) == 2  # warned, still explained


@pytest.mark.parametrize("on", ["validation", "train_epoch_end"])
def test_with_check_val_every_n_epoch_the_epochs_that_validate_are_explained(tmp_path: Path, on: str) -> None:
    callbacks = [
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0, on=on),
        RepresentationDriftCallback(on=on),
        ConceptDriftMonitor(),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=4, check_val_every_n_epoch=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SmallNet(), datamodule=BlobData())
    skipped = [str(w.message) for w in caught if "no validation ran" in str(w.message)]
    records = read_records(trainer.log_dir)
    for method in ("logic_rules", "representation_drift"):
        assert [r.epoch for r in records if r.method == method and r.name == "epoch"] == [1, 3], method
    assert not [r for r in records if r.name == "error"]
    # the drift monitor compares epoch 3 with epoch 1, the previous explained one
    drift = [r for r in records if r.method == "drift" and r.name == "epoch"]
    assert {(r.epoch, row["base_epoch"]) for r in drift for row in r.payload["rows"]} >= {(3, 1)}
    cka = read_result(next(r for r in records if r.method == "representation_drift" and r.epoch == 3))
    assert cka.previous_epoch == 1
    if on == "validation":
        assert skipped == []
    else:  # epochs 0 and 2 end without a validation run: said once per callback, with the way out
        assert len(skipped) == 2 and all(
            "from epoch 0 on" in m and "check_val_every_n_epoch" in m for m in skipped
        )
