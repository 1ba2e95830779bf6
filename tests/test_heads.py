"""Heads that are not an ``nn.Linear``: a 1x1 convolution with global pooling, a head returning a dict. Named by
``head=``, they are explained by every callback that needs only the logits and feature maps; VisionLogic, which
reads a linear head's weights, says so at setup and, under ``on_error="warn"``, leaves training alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, ConvHeadNet, SmallNet, blob_data, make_trainer
from lightning.pytorch import seed_everything
from torch import nn

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.capture import ActivationCapture, HeadNotFoundError
from lightning_xai.records import read_records
from lightning_xai.results import read_result


class DictHead(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(8, classes)

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(z)
        return {"probabilities": logits.softmax(1), "logits": logits}


class DictHeadNet(SmallNet):
    def __init__(self, classes: int = 3) -> None:
        super().__init__(classes)
        self.head = DictHead(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))["logits"]


def _red() -> torch.Tensor:
    images = blob_data(40, seed=5).tensors[0]
    images[:, 0] += 1.5  # class 0 raises channel 0: "red" is class 0's concept
    return images


def _explainers(**kwargs) -> list:
    return [
        RepresentationDriftCallback(**kwargs),
        ConceptAttributionCallback(
            {"red": _red()}, n_random=10, images_per_class=4, probe_images=2, m_steps=4, **kwargs
        ),
        SymbolicTreeCallback(
            levels=(6, 4), steps_per_epoch=30, warmup_steps=30, semantic_symbols=2, image_trees=1, **kwargs
        ),
    ]


@pytest.mark.slow
def test_a_pooled_1x1_convolution_head_is_explained_when_named(tmp_path: Path) -> None:
    seed_everything(0, verbose=False)
    explainers = _explainers(head="head", on_error="raise", every_n_epochs=4)
    trainer = make_trainer(tmp_path, explainers, max_epochs=8, limit_train_batches=6)
    model = ConvHeadNet()
    trainer.fit(model, BlobData(n_val=96))
    # the ground truth, by intervention: adding red raises class 0's logit and lowers the others'
    x = blob_data(200, seed=9).tensors[0]
    with torch.no_grad():
        effect = (model.eval()(x + torch.tensor([1.5, 0.0, 0.0])[:, None, None]) - model(x)).mean(0)
    assert effect[0] > 0.3 and (effect[1:] < 0).all(), effect
    results = {r.method: read_result(r) for r in read_records(trainer.log_dir) if r.epoch == 7}
    assert set(results) == {"representation_drift", "concept_attribution", "symbolic_tree"}
    # the features are the head's input, the [8, 8, 8] map
    assert results["representation_drift"].representations == {"features": 8 * 8 * 8}
    # TCAV on the feature map before the head: red raises class 0 (its own concept) and not classes 1 and 2
    scores = {s.class_name: s for s in results["concept_attribution"].scores}
    assert results["concept_attribution"].layers == ["bn"]
    assert scores["class_0"].significant and scores["class_0"].tcav >= 0.9 and scores["class_0"].magnitude > 0
    assert all(scores[c].tcav <= 0.5 for c in ("class_1", "class_2")), scores
    assert results["symbolic_tree"].fidelity["accuracy"] >= 0.8


def test_without_head_the_model_without_linear_layer_is_refused_and_training_goes_on(tmp_path: Path) -> None:
    explainers = [*_explainers(), LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0)]
    trainer = make_trainer(tmp_path, explainers, max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ConvHeadNet(), BlobData())
    said = [str(w.message) for w in caught if "is disabled for this run" in str(w.message)]
    assert len(said) == len(explainers) and all("head='<name>'" in m for m in said), said
    assert trainer.current_epoch == 1 and all(cb.disabled for cb in explainers)
    errors = read_records(trainer.log_dir, name="error")
    assert sorted(e.method for e in errors) == sorted(cb.method for cb in explainers)


def test_logic_rules_needs_a_linear_head_and_steps_aside_under_warn(tmp_path: Path) -> None:
    rules = LogicRulesCallback(head="head", max_grounding_images=0, max_perturbation_images=0)
    drift = RepresentationDriftCallback(head="head", on_error="raise")
    trainer = make_trainer(tmp_path, [rules, drift], max_epochs=2)
    with pytest.warns(
        UserWarning, match=r"LogicRulesCallback needs a linear head.*head='head' is a Sequential"
    ):
        trainer.fit(ConvHeadNet(), BlobData())
    assert rules.disabled and rules.explained_epochs == [] and drift.explained_epochs == [0, 1]
    with pytest.raises(HeadNotFoundError, match="needs a linear head"):
        make_trainer(
            tmp_path / "raise", [LogicRulesCallback(head="head", on_error="raise")], max_epochs=1
        ).fit(ConvHeadNet(), BlobData())


def test_a_head_that_returns_a_dict_gives_its_logits() -> None:
    model = DictHeadNet().eval()
    cap = ActivationCapture.acquire(model, owner="t", max_samples=16, head="head")
    try:
        cap.begin_epoch("e0")
        cap.arm("t")
        x = blob_data(8, seed=3).tensors[0]
        with torch.no_grad():
            logits = model(x)
        cap.collect(None, None, 0)
        sample = cap.sample()
    finally:
        ActivationCapture.release(model, owner="t")
    # the dict's "logits", not its first entry (the probabilities); the features are the head's input
    assert sample is not None and torch.allclose(sample.logits, logits)
    assert sample.features.shape == (8, 8)


def test_a_head_whose_output_is_not_logits_is_named_with_its_shape(tmp_path: Path) -> None:
    cb = RepresentationDriftCallback(
        head="head.0", on_error="raise"
    )  # the 1x1 convolution before the pooling
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(HeadNotFoundError, match=r"'head.0' outputs shape \[16, 3, 8, 8\], not logits"):
        trainer.fit(ConvHeadNet(), BlobData())
