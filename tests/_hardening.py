"""Every lightning-xai callback at once, on small budgets, and the world model they explain (for the hardening tests).

Module level, so ``ddp_spawn`` children can unpickle what it defines; ``tests/_hardening_run.py`` runs it as a
script (the subprocess ``ddp`` launcher starts that script once per rank).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    ConceptDriftMonitor,
    ConceptPermutationCallback,
    DiffusionExplainerCallback,
    ExplainResult,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
    XAICallback,
)
from lightning_xai.world import (
    TinyCNN,
    WorldColourMarkerDetector,
    WorldDataModule,
    WorldGenerator,
    WorldPromptGenerator,
    concept_set,
    get_task,
    random_set,
    world_concept_table,
)

#: every method the set below explains with (the drift monitor's records are ``drift``)
METHODS = (
    "representation_drift",
    "logic_rules",
    "concept_attribution",
    "concept_permutation",
    "symbolic_tree",
    "diffusion_explainer",
)
N_VAL = 64


def all_callbacks(
    layer_of: dict[str, str] | None = None, core: bool = True, every: int = 1, cache_dir: str | None = None
) -> list[Callback]:
    """Every callback, on budgets small enough for a test; ``layer_of`` names layers of other models.

    Keys of ``layer_of``: ``drift`` (RepresentationDrift), ``tcav`` (ConceptAttribution), ``tree`` (SymbolicTree).
    ``every``: ``every_n_epochs`` of each; ``cache_dir``: DEPICT's generation cache on disk.
    """
    layer_of = layer_of or {"drift": "conv3", "tcav": "conv5", "tree": "conv5"}
    concepts = {c: concept_set(c, 24, seed=11) for c in ("shape:circle", "texture:striped")}
    return [
        RepresentationDriftCallback(layers=[layer_of["drift"]], max_samples=N_VAL, every_n_epochs=every),
        LogicRulesCallback(
            max_samples=N_VAL, max_grounding_images=2, max_perturbation_images=2, every_n_epochs=every
        ),
        ConceptAttributionCallback(
            concepts,
            layers=[layer_of["tcav"]],
            random=random_set(24, seed=11),
            n_random=4,
            images_per_class=2,
            probe_images=1,
            m_steps=8,
            random_pool_size=48,
            max_samples=N_VAL,
            every_n_epochs=every,
        ),
        ConceptPermutationCallback(
            WorldGenerator(),
            world_concept_table(36, seed=0),
            n_repeats=2,
            n_bootstrap=20,
            show_progress=False,
            every_n_epochs=every,
            cache_dir=cache_dir,
        ),
        SymbolicTreeCallback(
            layer=layer_of["tree"],
            levels=(12, 8),
            steps_per_epoch=4,
            warmup_steps=4,
            semantic_symbols=1,
            semantic_images=2,
            image_trees=1,
            max_samples=N_VAL,
            every_n_epochs=every,
        ),
        DiffusionExplainerCallback(
            WorldPromptGenerator(),
            steps=4,
            n_images=4,
            every_n_epochs=every,
            concept_detector=WorldColourMarkerDetector().scores,
            core_concepts=get_task("shape_texture").positive_concepts if core else None,
            show_progress=False,
        ),
        ConceptDriftMonitor(),
    ]


class FrozenTinyCNN(TinyCNN):
    """A TinyCNN whose weights and BatchNorm statistics stay put while it "trains" (lr 0, BN momentum 0).

    Under DDP each rank trains on its half of the data, so a learning model would differ from the
    single-process one; a frozen model lets the explanations of both runs be compared exactly.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(lr=0.0, **kwargs)
        for m in self.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.0

    def configure_optimizers(self) -> Any:
        # no schedule: a resumed run may go on past the stopped run's max_epochs
        return torch.optim.SGD(self.parameters(), lr=0.0)


class FailsOnRank(XAICallback):
    """Fails on one rank only (a one-rank fault: out of memory on one GPU, a bad file on one node)."""

    method = "fails_on_rank"

    def __init__(self, rank: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rank = rank

    def explain(self, trainer: Trainer, pl_module: LightningModule, sample: Any) -> ExplainResult:
        if trainer.global_rank == self.rank:
            raise torch.cuda.OutOfMemoryError(f"simulated: rank {self.rank} ran out of memory")
        return ExplainResult(payload={"n": len(sample)})


class MemoryProbe(Callback):
    """After each training epoch (explanations done): resident memory, hooks on the model, open pyplot figures;
    after the epochs in ``tensor_epochs``, a garbage collection first, and live tensors (count and bytes)."""

    def __init__(self, tensor_epochs: tuple[int, ...] | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.tensor_epochs = (
            tensor_epochs  # scanning every object is slow: only after these epochs (None: all)
        )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import gc
        import sys

        scan = self.tensor_epochs is None or trainer.current_epoch in self.tensor_epochs
        tensors = []
        if scan:  # a full collection takes about 0.3 s in a test session's heap: only where it is read
            gc.collect()
            tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
        hooks = sum(
            len(m._forward_hooks)
            + len(m._forward_pre_hooks)
            + len(m._backward_hooks)
            + len(getattr(m, "_backward_pre_hooks", {}))
            for m in pl_module.modules()
        )
        plt = sys.modules.get("matplotlib.pyplot")
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "rss_mib": _rss_mib(),
                "hooks": hooks,
                "figures": len(plt.get_fignums()) if plt is not None else 0,
                "metric_keys": len(trainer.callback_metrics),
            }
        )
        if scan:
            self.rows[-1].update(
                {
                    "tensors": len(tensors),
                    "array_tensors": sum(t.dim() > 0 for t in tensors),
                    "tensor_mib": sum(t.nelement() * t.element_size() for t in tensors if not t.is_meta)
                    / 2**20,
                }
            )


def _rss_mib() -> float:
    """Resident set size of this process (Linux ``/proc``; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class RankReport(Callback):
    """Each rank writes what it logged and which callbacks it disabled to ``rank<k>.json`` (spawned ranks return little)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        report = {
            "keys": sorted(k for k in trainer.callback_metrics if k.startswith("xai/")),
            "disabled": sorted(type(c).__name__ for c in trainer.callbacks if getattr(c, "disabled", False)),
            "epoch": trainer.current_epoch,
        }
        (Path(self.out) / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def world_data(seed: int = 0) -> WorldDataModule:
    return WorldDataModule(n_train=128, n_val=N_VAL, n_test=8, batch_size=32, seed=seed)


def pretrained_state(path: Path) -> dict[str, torch.Tensor]:
    """A TinyCNN (width 8) trained for 2 epochs, saved at ``path`` on first use and loaded after that."""
    if path.exists():
        return torch.load(path, weights_only=True)
    seed_everything(0, verbose=False)
    dm = WorldDataModule(n_train=600, n_val=N_VAL, n_test=8, batch_size=32, seed=0)
    model = TinyCNN(num_classes=dm.num_classes, width=8, classes=dm.classes)
    Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(model, datamodule=dm)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def run(
    out: Path,
    strategy: str = "auto",
    devices: int = 1,
    epochs: int = 2,
    init: Path | None = None,
    loggers: list[Any] | None = None,
    extra: list[Callback] | None = None,
    ckpt_path: str | None = None,
    checkpoint: bool = False,
    frozen: bool = True,
    every: int = 1,
    cache_dir: str | None = None,
) -> Trainer:
    """Fit the (frozen) world model with :func:`all_callbacks` (plus ``extra``) and a CSV logger below ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0, verbose=False)
    dm = world_data()
    model = (FrozenTinyCNN if frozen else TinyCNN)(num_classes=dm.num_classes, width=8, classes=dm.classes)
    if init is not None:
        model.load_state_dict(pretrained_state(init))
    callbacks = [*all_callbacks(every=every, cache_dir=cache_dir), *(extra or []), RankReport(str(out))]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=out / "ckpt", save_last=True, save_top_k=0))
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        default_root_dir=out,
        logger=loggers if loggers is not None else CSVLogger(out, name="csv", version=0),
        callbacks=callbacks,
        enable_checkpointing=checkpoint,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


class TorchvisionClassifier(LightningModule):
    """A torchvision classifier (random init) trained on world scenes: ``resnet18`` or ``mobilenet_v3_small``."""

    def __init__(self, arch: str, classes: list[str]) -> None:
        super().__init__()
        import torchvision

        self.net = getattr(torchvision.models, arch)(weights=None, num_classes=len(classes))
        self.classes = list(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


#: layers chosen by name in each torchvision model: (RepresentationDrift, ConceptAttribution, SymbolicTree)
TORCHVISION_LAYERS = {
    "resnet18": {"drift": "net.layer3", "tcav": "net.layer4", "tree": "net.layer4"},
    "mobilenet_v3_small": {"drift": "net.features.8", "tcav": "net.features.12", "tree": "net.features.12"},
}


def fit_torchvision(arch: str, out: Path, epochs: int = 2) -> Trainer:
    """Every callback on a torchvision model trained briefly on world scenes (64x64)."""
    seed_everything(0, verbose=False)
    dm = world_data()
    model = TorchvisionClassifier(arch, dm.classes)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=out,
        logger=CSVLogger(out, name="csv", version=0),
        callbacks=all_callbacks(TORCHVISION_LAYERS[arch]),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    return trainer
