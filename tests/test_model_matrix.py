"""Every callback that reads the validation sample, on_error="raise", on the model families users bring: torchvision
ResNet-18, MobileNetV3-Small and ViT, timm ResNet, ConvNeXt, ViT and DeiT (tiny configs, random init, nothing
downloaded), at full precision and under bf16-mixed. Each explains, at the default layer the family calls for."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, blob_data, make_trainer, red_concept
from lightning.pytorch import seed_everything
from torch import nn

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.records import read_records
from lightning_xai.results import read_result
from lightning_xai.token_layout import prefix_tokens

timm = pytest.importorskip("timm")
torchvision_models = pytest.importorskip("torchvision.models")
SIZE = 32


def _torchvision(name: str) -> nn.Module:
    if name == "vit":
        return torchvision_models.VisionTransformer(
            image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
        )
    return getattr(torchvision_models, name)(weights=None, num_classes=3)


def _timm(name: str, **config) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=3, **config)


VIT = {"img_size": SIZE, "patch_size": 8, "depth": 2}
#: family -> (builder, the default layer of TCAV and the symbolic tree, prefix tokens or None). At 32 px the CNNs'
#: last stage is 1x1, so their last spatial map is the one before it; a ViT's is the residual stream into its last
#: block (depth 2: block 0's output)
MODELS = {
    "torchvision-resnet18": (lambda: _torchvision("resnet18"), "net.layer3", None),
    # at 32 px block 9's depthwise convolution (stride 2) leaves 1x1: its expansion is the last 2x2 map
    "torchvision-mobilenet_v3_small": (
        lambda: _torchvision("mobilenet_v3_small"),
        "net.features.9.block.0",
        None,
    ),
    "torchvision-vit": (lambda: _torchvision("vit"), "net.encoder.layers.encoder_layer_0", 1),
    "timm-resnet10t": (lambda: _timm("resnet10t"), "net.layer3", None),
    "timm-convnext_atto": (lambda: _timm("convnext_atto"), "net.stages.3.downsample.0", None),
    "timm-vit_tiny": (lambda: _timm("vit_tiny_patch16_224", **VIT), "net.blocks.0", 1),
    "timm-deit_tiny_distilled": (lambda: _timm("deit_tiny_distilled_patch16_224", **VIT), "net.blocks.0", 2),
}


class Wrapped(SmallNet):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        del self.conv, self.bn, self.pool, self.head
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return (
            out[0] if isinstance(out, tuple) else out
        )  # a distilled DeiT trains with (class, distillation) heads


class Data(BlobData):
    def setup(self, stage: str | None = None) -> None:
        self.train_set = blob_data(self.n_train, 1, 3, size=SIZE)
        self.val_set = blob_data(self.n_val, 2, 3, size=SIZE)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_callback_explains_the_model_family(tmp_path: Path, family: str, precision: str) -> None:
    build, layer, prefix = MODELS[family]
    seed_everything(0, verbose=False)
    net = build()
    assert prefix_tokens(net) == prefix
    red = red_concept(16, size=SIZE)
    callbacks = [
        RepresentationDriftCallback(on_error="raise"),
        LogicRulesCallback(max_grounding_images=2, max_perturbation_images=2, on_error="raise"),
        ConceptAttributionCallback({"red": red}, n_random=3, images_per_class=2, probe_images=1, m_steps=4, on_error="raise"),
        SymbolicTreeCallback(levels=(6, 4), steps_per_epoch=4, warmup_steps=4, semantic_symbols=2, image_trees=1, on_error="raise"),
    ]  # fmt: skip
    trainer = make_trainer(tmp_path, callbacks, max_epochs=1, limit_train_batches=2, precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Wrapped(net), Data(n_train=32, n_val=48))
    assert [cb.explained_epochs for cb in callbacks] == [[0]] * 4
    results = {r.method: read_result(r) for r in read_records(trainer.log_dir) if r.name == "epoch"}
    assert results["concept_attribution"].layers == [layer]
    assert results["symbolic_tree"].layer == layer
    assert len(results["concept_attribution"].scores) == 3 and results["concept_attribution"].probes
    assert results["logic_rules"].grounding is not None and results["logic_rules"].grounding.tests
