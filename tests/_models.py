"""Small, fast Lightning models and data for callback tests (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def blob_data(n: int, seed: int, classes: int = 3, size: int = 8) -> TensorDataset:
    """Images whose class shifts the mean of one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), y % 3] += (1.0 + (y // 3).float())[:, None, None]
    return TensorDataset(x, y)


def red_concept(n: int, size: int = 8, seed: int = 5) -> torch.Tensor:
    """``n`` blob images with the first (red) channel raised: a concept set that class 0's images share."""
    images = blob_data(n, seed, size=size).tensors[0]
    images[:, 0] += 1.0
    return images


class BlobData(LightningDataModule):
    def __init__(self, n_train: int = 96, n_val: int = 64, batch_size: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.n_train, self.n_val, self.batch_size, self.classes = n_train, n_val, batch_size, classes

    def setup(self, stage: str | None = None) -> None:
        self.train_set = blob_data(self.n_train, 1, self.classes)
        self.val_set = blob_data(self.n_val, 2, self.classes)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class SmallNet(LightningModule):
    """conv -> bn -> relu -> pool -> head; one parameter frozen on purpose (``frozen=True``)."""

    def __init__(self, classes: int = 3, frozen: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, classes)
        self.lr = lr
        if frozen:
            self.conv.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DictBatchNet(SmallNet):
    """Takes batches as ``{"pixels": x, "cls": y}``: keys the default reader does not know."""

    def training_step(self, batch, batch_idx):
        return super().training_step((batch["pixels"], batch["cls"]), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["pixels"], batch["cls"]), batch_idx)


class DictBatchData(BlobData):
    def val_dataloader(self) -> DataLoader:
        return DataLoader([{"pixels": x, "cls": y} for x, y in self.val_set], batch_size=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return DataLoader([{"pixels": x, "cls": y} for x, y in self.train_set], batch_size=self.batch_size)


class ConvHeadNet(SmallNet):
    """conv -> bn -> relu -> head, the head a 1x1 convolution, global pooling and flatten (no nn.Linear)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__(classes)
        del self.pool
        self.head = nn.Sequential(nn.Conv2d(8, classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


class NoHeadNet(SmallNet):
    """A classifier whose last layer is a 1x1 convolution: no nn.Linear head."""

    def __init__(self) -> None:
        super().__init__()
        del self.head
        self.classifier = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(torch.relu(self.bn(self.conv(x))))).flatten(1)


def make_trainer(root, callbacks: list, max_epochs: int = 2, **kwargs):
    """A quiet CPU Trainer for callback tests: CSV logger under ``root/logs``, no checkpoints, 4 batches."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    defaults = {
        "default_root_dir": root,
        "max_epochs": max_epochs,
        "logger": CSVLogger(root, name="logs"),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "limit_train_batches": 4,
        "num_sanity_val_steps": 0,
    }
    defaults.update(kwargs)
    return Trainer(callbacks=callbacks, **defaults)


def channel_net(pl):
    """conv (a ``Sequential`` of Conv2d and ReLU, so ``"conv.1"`` is a layer) -> pool -> head, as a
    LightningModule of the namespace ``pl`` (``lightning.pytorch`` or ``pytorch_lightning``)."""

    class ChannelNet(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.pool(self.conv(x)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return ChannelNet()
