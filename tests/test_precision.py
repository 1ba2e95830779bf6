"""Mixed precision: under ``bf16-mixed`` (and ``16-mixed`` on a GPU) every callback explains in float32, and its
results agree with the same model's explanation at full precision."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, make_trainer, red_concept
from lightning.pytorch import seed_everything

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.capture import ValidationSample
from lightning_xai.logic import HeadMismatchError, LinearHead
from lightning_xai.records import read_records
from lightning_xai.results import read_result


def _callbacks() -> list:
    red = red_concept(32)
    return [
        LogicRulesCallback(max_grounding_images=2, max_perturbation_images=2, on_error="raise"),
        ConceptAttributionCallback(
            {"red": red}, n_random=4, images_per_class=4, probe_images=2, m_steps=4, on_error="raise"
        ),
        RepresentationDriftCallback(on_error="raise"),
        SymbolicTreeCallback(
            levels=(6, 4),
            steps_per_epoch=20,
            warmup_steps=20,
            semantic_symbols=2,
            image_trees=1,
            on_error="raise",
        ),
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> SmallNet:
    seed_everything(0, verbose=False)
    model = SmallNet()
    make_trainer(tmp_path_factory.mktemp("train"), [], max_epochs=4, logger=False).fit(model, BlobData())
    return model


def _explain(root: Path, model: SmallNet, precision: str, accelerator: str = "cpu") -> dict:
    seed_everything(0, verbose=False)
    trainer = make_trainer(root, _callbacks(), precision=precision, accelerator=accelerator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.validate(model, datamodule=BlobData(), verbose=False)
    records = read_records(trainer.log_dir)
    assert not [r for r in records if r.name == "error"], [r.payload for r in records if r.name == "error"]
    return {r.method: read_result(r) for r in records if r.name == "epoch"}


@pytest.mark.slow
def test_bf16_mixed_explains_like_full_precision(tmp_path: Path, trained: SmallNet) -> None:
    full = _explain(tmp_path / "32", trained, "32-true")
    mixed = _explain(tmp_path / "bf16", trained, "bf16-mixed")
    assert (
        set(full)
        == set(mixed)
        == {"logic_rules", "concept_attribution", "representation_drift", "symbolic_tree"}
    )
    # rules: the same vocabulary sizes within one predicate, fidelity within 0.05
    a, b = full["logic_rules"], mixed["logic_rules"]
    assert abs(a.evaluation[a.scoring].fidelity - b.evaluation[b.scoring].fidelity) <= 0.05
    for ca, cb in zip(a.vocabulary.classes, b.vocabulary.classes):
        assert abs(ca.size - cb.size) <= 1
    assert b.grounding is not None and len(b.grounding.tests) == len(a.grounding.tests)
    # TCAV: every score within 0.1, the same significance calls
    sa, sb = full["concept_attribution"].scores, mixed["concept_attribution"].scores
    assert len(sa) == len(sb)
    for x, y in zip(sa, sb):
        assert abs(x.tcav - y.tcav) <= 0.1, (x, y)
        assert x.significant == y.significant, (x, y)
        assert math.copysign(1, x.magnitude) == math.copysign(1, y.magnitude) or abs(x.magnitude) < 0.05
    # the symbolic tree fits as well on either
    assert (
        abs(full["symbolic_tree"].fidelity["accuracy"] - mixed["symbolic_tree"].fidelity["accuracy"]) <= 0.1
    )
    assert mixed["symbolic_tree"].fidelity["accuracy"] >= 0.8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: 16-mixed runs on a GPU")
def test_16_mixed_explains_like_full_precision_on_a_gpu(tmp_path: Path, trained: SmallNet) -> None:
    full = _explain(tmp_path / "32", trained, "32-true", accelerator="gpu")
    mixed = _explain(tmp_path / "16", trained, "16-mixed", accelerator="gpu")
    a, b = full["logic_rules"], mixed["logic_rules"]
    assert abs(a.evaluation[a.scoring].fidelity - b.evaluation[b.scoring].fidelity) <= 0.05
    for x, y in zip(full["concept_attribution"].scores, mixed["concept_attribution"].scores):
        assert abs(x.tcav - y.tcav) <= 0.1, (x, y)


def test_the_sample_is_float32_and_remembers_the_precision_it_was_computed_in() -> None:
    tensors = {
        "ids": torch.tensor([1, 0]),
        "features": torch.randn(2, 4).bfloat16(),
        "logits": torch.randn(2, 3).bfloat16(),
        "labels": torch.tensor([0, 2]),
    }
    sample = ValidationSample.from_tensors(tensors)
    assert sample.computed_in == torch.bfloat16
    assert (
        sample.features.dtype == sample.logits.dtype == torch.float32 and sample.labels.dtype == torch.int64
    )
    assert torch.equal(sample.features, tensors["features"][[1, 0]].float())


def test_the_head_check_allows_for_bf16_rounding_and_still_catches_a_temperature() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 10)
    z = torch.randn(64, 256).abs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = linear(z.bfloat16()).detach()
    head = LinearHead.from_module(linear)
    features = z.bfloat16().float()
    with pytest.raises(HeadMismatchError, match="computed in float32"):
        head.check(features, logits.float())  # at full precision's tolerance, the rounding is a mismatch
    head.check(features, logits.float(), computed_in=torch.bfloat16)
    with pytest.raises(HeadMismatchError, match="a temperature"):
        head.check(features, logits.float() / 1.5, computed_in=torch.bfloat16)
