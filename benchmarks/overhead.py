"""Overhead of lightning-xai callbacks on the quickstart setup: fit wall time with vs. without.

Runs are interleaved (without, with, without, with, ...) so drifts of the machine hit both sides
alike; the table reports medians and their ratio, plus the model's forward calls per epoch (the
callbacks piggyback on validation, so "with" should add none).

    python benchmarks/overhead.py --runs 3 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402

from lightning_xai.callbacks import (  # noqa: E402
    ConceptAttributionCallback,
    ConceptPermutationCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.permutation import world_concept_table  # noqa: E402
from lightning_xai.world import TinyCNN, WorldDataModule, WorldGenerator, concept_set, random_set  # noqa: E402

CONFIGS: dict[str, Callable[[], list[Callback]]] = {
    "none": lambda: [],
    "representation_drift": lambda: [RepresentationDriftCallback(layers=["conv3"])],
    "logic_rules": lambda: [LogicRulesCallback()],
    "logic_rules (rules only)": lambda: [LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0)],
    "concept_attribution": lambda: [
        ConceptAttributionCallback(
            {c: concept_set(c, 100, seed=11) for c in ("shape:circle", "texture:striped", "texture:dotted", "colour:red")},
            random=random_set(100, seed=11),
            images_per_class=10,
            probe_images=2,
        )
    ],
    "concept_permutation": lambda: [
        ConceptPermutationCallback(WorldGenerator(), world_concept_table(200, seed=0), n_repeats=5, show_progress=False)
    ],
    "symbolic_tree (50 steps)": lambda: [SymbolicTreeCallback(steps_per_epoch=50, warmup_steps=50)],
}


class ForwardCounter(Callback):
    """Counts the model's forward calls (training + validation) per epoch."""

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


def one_run(name: str, epochs: int, n_train: int, seed: int, root: str) -> tuple[float, float]:
    seed_everything(seed, verbose=False)
    dm = WorldDataModule(n_train=n_train, n_val=600, seed=seed)
    model = TinyCNN(num_classes=dm.num_classes)
    counter = ForwardCounter()
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
        callbacks=[*CONFIGS[name](), counter],
    )
    dm.setup("fit")  # rendering the world is not part of what we time
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start, counter.calls / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (median is reported)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="benchmarks/results")
    args = parser.parse_args()

    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    forwards: dict[str, float] = {}
    for run in range(args.runs):
        for name in CONFIGS:  # interleaved
            seconds, calls = one_run(name, args.epochs, args.n_train, args.seed + run, args.root)
            times[name].append(seconds)
            forwards[name] = calls
            print(f"run {run + 1}/{args.runs} {name:<22} {seconds:7.2f} s", flush=True)

    base = statistics.median(times["none"])
    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.epochs} epochs x {args.n_train} scenes, median of {args.runs} runs"
    )
    print(f"| {'callbacks':<22} | {'fit s (median)':>14} | {'ratio':>6} | {'forwards/epoch':>14} |")
    print(f"|{'-' * 24}|{'-' * 16}|{'-' * 8}|{'-' * 16}|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name:<22} | {med:>14.2f} | {med / base:>6.3f} | {forwards[name]:>14.0f} |")


if __name__ == "__main__":
    main()
