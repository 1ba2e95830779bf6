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
from collections.abc import Callable

os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402
from _world_bench import ForwardCounter, fit_world  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from lightning_xai.callbacks import (  # noqa: E402
    ConceptAttributionCallback,
    ConceptPermutationCallback,
    DiffusionExplainerCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.diffexplainer import WorldPromptGenerator  # noqa: E402
from lightning_xai.permutation import world_concept_table  # noqa: E402
from lightning_xai.world import WorldGenerator, concept_set, random_set  # noqa: E402

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
    # the classifier runs on generated images: 4 per step, up to 100 steps per class (6 classes)
    "diffusion_explainer": lambda: [DiffusionExplainerCallback(WorldPromptGenerator(), steps=100, show_progress=False)],
}


def one_run(name: str, epochs: int, n_train: int, seed: int, root: str) -> tuple[float, float]:
    counter = ForwardCounter()
    seconds = fit_world([*CONFIGS[name](), counter], epochs, n_train, seed, root, classes=False)
    return seconds, counter.calls / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration (median is reported)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="benchmarks/results")
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="configurations to run ('none' always runs)"
    )
    args = parser.parse_args()

    names = ["none", *[n for n in args.configs if n != "none"]]
    times: dict[str, list[float]] = {name: [] for name in names}
    forwards: dict[str, float] = {}
    for run in range(args.runs):
        for name in names:  # interleaved
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
