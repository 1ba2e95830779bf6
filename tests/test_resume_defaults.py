"""Resume at defaults: callbacks whose layers are resolved at setup (no layers given) find their state in the
checkpoint and go on where they stopped, under ``lightning.pytorch`` and under ``pytorch_lightning``."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
from _models import blob_data, channel_net, red_concept
from torch.utils.data import DataLoader

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
    XAICallback,
)
from lightning_xai.records import read_records
from lightning_xai.results import read_result

NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


def _callbacks() -> list[XAICallback]:
    concept = red_concept(24)
    return [
        RepresentationDriftCallback(),
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0),
        ConceptAttributionCallback(
            {"red": concept}, n_random=3, images_per_class=2, probe_images=0, m_steps=4
        ),
        SymbolicTreeCallback(
            levels=(6, 4), steps_per_epoch=4, warmup_steps=4, semantic_symbols=0, image_trees=0
        ),
    ]


def _fit(pl, root: Path, epochs: int, ckpt_path: str | None = None):
    trainer = pl.Trainer(
        default_root_dir=root,
        max_epochs=epochs,
        logger=importlib.import_module(f"{pl.__name__}.loggers").CSVLogger(str(root), name="csv", version=0),
        callbacks=[*_callbacks(), pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_train_batches=3,
    )
    train = DataLoader(blob_data(48, seed=1), batch_size=16)
    val = DataLoader(blob_data(48, seed=2), batch_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(channel_net(pl), train, val, ckpt_path=ckpt_path)
    return trainer, [str(w.message) for w in caught]


@pytest.mark.slow
@pytest.mark.parametrize("namespace", NAMESPACES)
def test_resume_at_defaults_restores_every_callback(tmp_path: Path, namespace: str) -> None:
    pl = pytest.importorskip(namespace)
    _fit(pl, tmp_path, epochs=2)
    trainer, messages = _fit(pl, tmp_path, epochs=3, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    # Lightning warns when a checkpoint holds the state of a callback it was not given (a state key that changed)
    assert not [m for m in messages if "callbacks used to create the checkpoint" in m], messages
    explainers = [c for c in trainer.callbacks if isinstance(c, XAICallback)]
    assert [c.explained_epochs for c in explainers] == [[0, 1, 2]] * 4
    records = read_records(tmp_path / "csv" / "version_0")
    at = {(r.method, r.epoch): read_result(r) for r in records if r.name == "epoch"}
    assert {m for m, e in at if e == 2} == {c.method for c in explainers}
    # each went on where it stopped: the resolved layers and warm starts came back from the checkpoint
    drift = at[("representation_drift", 2)]
    assert (drift.reference_epoch, drift.previous_epoch) == (0, 1)
    assert at[("concept_attribution", 2)].layers == at[("concept_attribution", 0)].layers == ["conv"]
    assert at[("symbolic_tree", 2)].fit.initialised is False  # warm-started from the checkpointed tree
