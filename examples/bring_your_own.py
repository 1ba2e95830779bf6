"""Bring your own model and data: a torchvision ResNet-18 trained on image folders, explained by every callback.

Run (CPU, W&B offline, a few minutes)::

    python examples/bring_your_own.py --out runs/byo --epochs 3

Nothing in the training part below knows the planted-concept world. It reads what a user has:

* ``<data>/train/<class>/*.png`` and ``<data>/val/<class>/*.png`` (``torchvision.datasets.ImageFolder``);
* ``<data>/concepts/<concept>/*.png``: example images per concept, and ``<data>/random/*.png``: counter-examples;
* ``<data>/captions.csv``: one row per image to generate for DEPICT, a column per concept and the class
  index as ``label`` (in ``ImageFolder``'s order), with the caption template ``CAPTION``;
* a diffusers text-to-image pipeline in a local folder (``--pipeline``), for DEPICT and DiffExplainer.

Here ``write_example_data`` and ``example_pipeline`` (the only functions that import :mod:`lightning_xai.world`)
stand in for them: they render such folders from the world so the script runs anywhere, and ``--pipeline``
defaults to the world diffusion model that ships with the package (it draws 32x32 scenes, so the images are
32x32).
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    ConceptDriftMonitor,
    ConceptPermutationCallback,
    DiffusionExplainerCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.records import read_records, run_dir_of

SIZE = 32
CAPTION = "a {colour} {shape} on a {texture} background{marker}"
CONCEPTS = ("shape:circle", "texture:striped", "colour:red")


# ------------------------------------------------------------------------------------ your data, here rendered
def write_example_data(root: Path, n_train: int = 600, n_val: int = 200, n_captions: int = 60) -> None:
    """Folders in ImageFolder layout, concept folders and a captions CSV, rendered from the planted world."""
    from torchvision.utils import save_image

    from lightning_xai.world import WorldDataModule, concept_set, random_set, world_concept_table

    dm = WorldDataModule(task="shape_texture", n_train=n_train, n_val=n_val, size=SIZE, seed=0)
    dm.setup()
    order = {name: k for k, name in enumerate(sorted(dm.classes))}  # ImageFolder's class indices
    for split, dataset in (("train", dm.train_set), ("val", dm.val_set)):
        for i in range(len(dataset)):
            image, label = dataset[i][:2]
            folder = root / split / dm.classes[int(label)].replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            save_image(image, folder / f"{i:05d}.png")
    for concept in CONCEPTS:
        folder = root / "concepts" / concept.replace(":", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(concept_set(concept, 40, seed=11, size=SIZE)):
            save_image(image, folder / f"{i:03d}.png")
    (root / "random").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(random_set(80, seed=12, size=SIZE)):
        save_image(image, root / "random" / f"{i:03d}.png")
    table = world_concept_table(n_captions, seed=0)
    with (root / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*table.columns, "label"])
        for i in range(table.n):
            label = order[dm.classes[int(table.labels[i])]]
            writer.writerow([*(table.columns[c][i] for c in table.columns), label])


def example_pipeline() -> Path:
    """The folder of the world diffusion model that ships with the package (a StableDiffusionPipeline)."""
    from lightning_xai.world.diffusion import WORLD_DIFFUSION_DIR

    return WORLD_DIFFUSION_DIR


# ------------------------------------------------------------------------------------------ your training code
class Classifier(LightningModule):
    """Any backbone whose output is the logits; here a torchvision ResNet-18, trained from scratch."""

    def __init__(self, num_classes: int, classes: list[str], lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = models.resnet18(weights=None, num_classes=num_classes)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def build_callbacks(data: Path, pipeline_dir: Path) -> list:
    """Every lightning-xai callback, reading the folders and the pipeline."""
    from diffusers import StableDiffusionPipeline

    from lightning_xai.diffexplainer import DiffusersPromptGenerator
    from lightning_xai.generators import DiffusersGenerator

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    concepts = {p.name: p for p in sorted((data / "concepts").iterdir())}  # folders of PNGs
    return [
        RepresentationDriftCallback(layers=["net.layer3"]),
        LogicRulesCallback(max_grounding_images=4),
        ConceptAttributionCallback(concepts, random=data / "random", images_per_class=8, probe_images=2),
        SymbolicTreeCallback(steps_per_epoch=50, warmup_steps=50),
        ConceptPermutationCallback(
            DiffusersGenerator(pipe, num_inference_steps=8, guidance_scale=4.0),
            data / "captions.csv",
            CAPTION,
            n_repeats=2,
            show_progress=False,
        ),
        DiffusionExplainerCallback(
            DiffusersPromptGenerator(pipe, num_inference_steps=4, seeds=(0, 1)),
            targets=[0, 1],
            steps=10,
            show_progress=False,
        ),
        ConceptDriftMonitor(),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bring_your_own"), help="where the run writes")
    parser.add_argument("--data", type=Path, default=None, help="your folders (default: rendered into --out)")
    parser.add_argument("--pipeline", type=Path, default=None, help="a local diffusers pipeline folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    args = parser.parse_args(argv)
    seed_everything(0, workers=True, verbose=False)
    data = args.data or args.out / "data"
    if args.data is None and not (data / "captions.csv").is_file():
        write_example_data(data)
    pipeline_dir = args.pipeline or example_pipeline()

    tf = transforms.ToTensor()
    train = datasets.ImageFolder(data / "train", transform=tf)
    val = datasets.ImageFolder(data / "val", transform=tf)
    model = Classifier(len(train.classes), train.classes)
    wandb_logger = WandbLogger(project="lightning-xai-byo", save_dir=str(args.out), offline=True)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=[wandb_logger, CSVLogger(args.out, name="csv")],
        callbacks=build_callbacks(data, Path(pipeline_dir)),
        enable_checkpointing=False,
        limit_train_batches=args.limit_train_batches,
        log_every_n_steps=5,
    )
    trainer.fit(model, DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64))
    wandb_logger.experiment.finish()
    run_dir = run_dir_of(trainer)
    records = read_records(run_dir)
    print(
        f"validation accuracy {float(trainer.callback_metrics['val_acc']):.3f}; {len(records)} records in {run_dir}"
    )
    return {
        "run_dir": str(run_dir),
        "records": records,
        "val_acc": float(trainer.callback_metrics["val_acc"]),
    }


if __name__ == "__main__":
    main()
