"""What the benchmark scripts share: fitting a TinyCNN on the world with callbacks, and two probes.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder on the path).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_xai.world import TinyCNN, WorldDataModule


class EpochTimer(Callback):
    """Wall time of each epoch: the whole epoch (training, validation and the explanations that follow it), or
    with ``training_only`` the training part alone (the clock stops when validation starts)."""

    def __init__(self, training_only: bool = False) -> None:
        self.training_only = training_only
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):  # validation runs inside the epoch
        if self.training_only and not trainer.sanity_checking:
            self._stop()

    def on_train_epoch_end(self, trainer, pl_module):
        self._stop()

    def _stop(self) -> None:
        if self._start:
            self.seconds.append(time.perf_counter() - self._start)
            self._start = 0.0


class TrainingFaults(EpochTimer):
    """Minor page faults of each epoch's training part (the span ``EpochTimer(training_only=True)`` times).

    Work that only explains should add none there, but what a callback keeps can leave the allocator returning
    memory to the system between training steps (see ``lightning_xai.permutation.cache``)."""

    def __init__(self) -> None:
        super().__init__(training_only=True)
        self.faults: list[int] = []
        self._faults_at_start = 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._faults_at_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        super().on_train_epoch_start(trainer, pl_module)

    def _stop(self) -> None:
        if self._start:
            self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self._faults_at_start)
        super()._stop()


class ForwardCounter(Callback):
    """Counts the model's forward calls (training + validation)."""

    def __init__(self) -> None:
        self.calls = 0
        self._handle = None

    def setup(self, trainer, pl_module, stage):
        def count(module, args):
            self.calls += 1

        self._handle = pl_module.register_forward_pre_hook(count)

    def teardown(self, trainer, pl_module, stage):
        if self._handle is not None:
            self._handle.remove()


def fit_world(
    callbacks: Sequence[Callback], epochs: int, n_train: int, seed: int, root: str, classes: bool = True
) -> float:
    """Fit a fresh TinyCNN on ``n_train`` world scenes (600 validation) with ``callbacks``; returns fit seconds.

    Rendering the world happens before the clock starts; no logger, checkpoint, progress bar or sanity check.
    """
    seed_everything(seed, verbose=False)
    dm = WorldDataModule(n_train=n_train, n_val=600, seed=seed)
    dm.setup("fit")
    model = TinyCNN(num_classes=dm.num_classes, classes=dm.classes if classes else None)
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start
