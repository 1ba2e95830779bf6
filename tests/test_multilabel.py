"""Multi-label models: told from multi-hot labels or declared (``task="multilabel"``). The methods that explain one
class per image step aside for them (one warning, an error record, training goes on; under ``on_error="raise"``
the error names the model's kind and what to do); RepresentationDriftCallback explains them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _models import SmallNet, blob_data, make_trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    ConceptPermutationCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.callbacks.model_checks import MultiLabelError
from lightning_xai.records import read_records


class MultiLabelNet(SmallNet):
    """SmallNet with a sigmoid/BCE loss on multi-hot labels [N, 3]."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(self(x), y))


def _multi_hot(n: int, seed: int) -> TensorDataset:
    x, y = blob_data(n, seed).tensors
    labels = nn.functional.one_hot(y, 3).float()
    labels[torch.arange(n) % 4 == 0, 2] = 1.0  # every fourth image has a second label
    return TensorDataset(x, labels)


def _loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(_multi_hot(64, 1), batch_size=16), DataLoader(_multi_hot(48, 2), batch_size=16)


def test_single_label_methods_step_aside_for_a_multi_label_model_and_drift_explains_it(
    tmp_path: Path,
) -> None:
    red = blob_data(16, seed=5).tensors[0]
    single = [
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0),
        ConceptAttributionCallback({"red": red}, n_random=3, images_per_class=2, probe_images=0, m_steps=4),
        SymbolicTreeCallback(
            levels=(6, 4), steps_per_epoch=4, warmup_steps=4, semantic_symbols=0, image_trees=0
        ),
    ]
    drift = RepresentationDriftCallback(on_error="raise")
    trainer = make_trainer(tmp_path, [*single, drift], max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(MultiLabelNet(), *_loaders())
    said = [str(w.message) for w in caught if "multi-label" in str(w.message)]
    assert len(said) == len(single) and all("multi-hot [N, classes]" in m for m in said), said
    assert all(cb.disabled and cb.explained_epochs == [] for cb in single)
    assert drift.explained_epochs == [0, 1] and trainer.current_epoch == 2
    errors = read_records(trainer.log_dir, name="error")
    assert sorted(e.method for e in errors) == sorted(cb.method for cb in single)
    assert all(e.payload["type"] == "MultiLabelError" for e in errors)


def test_a_declared_multi_label_model_is_refused_at_setup(tmp_path: Path) -> None:
    cb = LogicRulesCallback(task="multilabel", on_error="raise")
    with pytest.raises(
        MultiLabelError, match="LogicRulesCallback explains single-label.*declared task='multilabel'"
    ):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(MultiLabelNet(), *_loaders())
    # a method without a validation sample (DEPICT generates its images) refuses a declared one all the same
    with pytest.raises(MultiLabelError, match="ConceptPermutationCallback explains single-label"):
        make_trainer(
            tmp_path, [ConceptPermutationCallback(task="multilabel", on_error="raise")], max_epochs=1
        ).fit(MultiLabelNet(), *_loaders())
    assert RepresentationDriftCallback(task="multilabel").explains_multilabel


def test_task_names_its_choices() -> None:
    with pytest.raises(
        MisconfigurationException, match=r"task='binary' is not supported; choose one of \['auto'"
    ):
        RepresentationDriftCallback(task="binary")
