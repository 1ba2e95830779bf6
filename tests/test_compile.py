"""Compiled models: layer names resolve with or without ``_orig_mod``, the capture adds no recompiles (a
compiled model keeps no hooks; its sampled batches run again eagerly), and explanations of a compiled model are
those of the same model uncompiled."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, make_trainer, red_concept
from lightning.pytorch import seed_everything
from torch import nn

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.capture import is_compiled, resolve_layer
from lightning_xai.records import read_records
from lightning_xai.results import read_result

dynamo = pytest.importorskip("torch._dynamo")
# dynamo traces, guards and recompiles alike with any backend; inductor's generated kernels give NaN after a
# few training steps on this suite's CPU setting (conftest's ATEN_CPU_CAPABILITY=avx2), with or without callbacks
BACKEND = "aot_eager"


class Backboned(SmallNet):
    """SmallNet with its convolutional part in one ``backbone`` module, the part users compile."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(self.conv, self.bn, nn.ReLU())
        del self.conv, self.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(x)).flatten(1))


def _callbacks(layer: str = "backbone.1", **kwargs) -> list:
    red = red_concept(24)
    return [
        LogicRulesCallback(max_grounding_images=2, max_perturbation_images=2, on_error="raise", **kwargs),
        RepresentationDriftCallback(layers=[layer], on_error="raise", **kwargs),
        ConceptAttributionCallback(
            {"red": red},
            layers=[layer],
            n_random=3,
            images_per_class=2,
            probe_images=1,
            m_steps=4,
            on_error="raise",
            **kwargs,
        ),
        SymbolicTreeCallback(
            layer=layer,
            levels=(6, 4),
            steps_per_epoch=4,
            warmup_steps=4,
            semantic_symbols=2,
            image_trees=1,
            on_error="raise",
            **kwargs,
        ),
    ]


def _compiled_frames(root: Path, model: nn.Module, callbacks: list) -> int:
    """How many frames dynamo compiled (first compilations and recompiles) in a 3-epoch fit."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(root, callbacks, max_epochs=3).fit(model, BlobData())
    return int(dynamo.utils.counters["frames"]["total"])


def test_layer_names_resolve_with_or_without_orig_mod() -> None:
    model = Backboned()
    model.backbone = torch.compile(model.backbone, backend=BACKEND)
    assert is_compiled(model) and not is_compiled(Backboned())
    assert resolve_layer(model, "backbone.1") is resolve_layer(model, "backbone._orig_mod.1")
    assert isinstance(resolve_layer(model, "backbone.1"), nn.BatchNorm2d)
    with pytest.raises(ValueError, match=r"Closest valid names: \[.*'backbone.1'.*Valid names \(6\)") as info:
        resolve_layer(model, "backbone.l")
    assert "_orig_mod" not in str(info.value)  # the names a user writes


@pytest.mark.slow
def test_a_compiled_backbone_compiles_no_more_with_every_callback_attached(tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    model = Backboned()
    alone, explained = copy.deepcopy(model), copy.deepcopy(model)
    alone.backbone = torch.compile(alone.backbone, backend=BACKEND)
    explained.backbone = torch.compile(explained.backbone, backend=BACKEND)
    baseline = _compiled_frames(tmp_path / "alone", alone, [])
    callbacks = _callbacks()
    with_callbacks = _compiled_frames(tmp_path / "explained", explained, callbacks)
    assert [cb.explained_epochs for cb in callbacks] == [[0, 1, 2]] * 4
    assert baseline >= 1 and with_callbacks == baseline, (baseline, with_callbacks)


@pytest.mark.slow
def test_a_module_compiled_whole_compiles_no_more_when_the_callbacks_log_nothing(tmp_path: Path) -> None:
    # pl_module.log from a callback changes Lightning's logging state, on which the compiled training_step's
    # own self.log() is guarded: one recompile of that frame, documented; the model's graphs are unchanged
    seed_everything(0, verbose=False)
    model = Backboned()
    baseline = _compiled_frames(tmp_path / "alone", torch.compile(copy.deepcopy(model), backend=BACKEND), [])
    quiet = _callbacks(log_scalars="none")
    assert (
        _compiled_frames(tmp_path / "quiet", torch.compile(copy.deepcopy(model), backend=BACKEND), quiet)
        == baseline
    )
    assert [cb.explained_epochs for cb in quiet] == [[0, 1, 2]] * 4
    logging = _callbacks()
    assert (
        _compiled_frames(tmp_path / "logging", torch.compile(copy.deepcopy(model), backend=BACKEND), logging)
        <= baseline + 1
    )


@pytest.mark.slow
def test_a_compiled_model_is_explained_as_the_same_model_uncompiled(tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    model = Backboned()
    make_trainer(tmp_path / "train", [], max_epochs=3, logger=False).fit(model, BlobData())
    compiled = copy.deepcopy(model)
    compiled.backbone = torch.compile(compiled.backbone, backend=BACKEND)
    results = {}
    for name, net in (("eager", model), ("compiled", compiled)):
        seed_everything(0, verbose=False)
        trainer = make_trainer(tmp_path / name, _callbacks())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.validate(net, datamodule=BlobData(), verbose=False)
        results[name] = {r.method: read_result(r) for r in read_records(trainer.log_dir) if r.name == "epoch"}
    eager, comp = results["eager"], results["compiled"]
    assert set(eager) == set(comp) and len(eager) == 4
    assert eager["logic_rules"].global_rules == comp["logic_rules"].global_rules
    assert eager["logic_rules"].vocabulary == comp["logic_rules"].vocabulary
    for a, b in zip(eager["concept_attribution"].scores, comp["concept_attribution"].scores):
        assert a.tcav == pytest.approx(b.tcav, abs=1e-6) and a.magnitude == pytest.approx(
            b.magnitude, rel=1e-4
        )
    assert eager["symbolic_tree"].fidelity == comp["symbolic_tree"].fidelity
