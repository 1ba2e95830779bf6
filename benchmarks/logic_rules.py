"""Cost of LogicRulesCallback per explained epoch, relative to one training epoch (quickstart setup).

A TinyCNN trains on the planted-concept world (2400 training / 600 validation scenes, CPU) with the
callback explaining every epoch. For each configuration the table gives the median wall time of one
explanation (everything the callback does at the end of a validation epoch: rules, fidelity, grounding,
perturbation, records and PNGs), of one training epoch (training batches only), the median of the
per-epoch ratios explanation / training epoch (each explanation against its own epoch, so a machine whose
speed drifts, e.g. shared cores, affects both sides alike), and the model forward passes the explanation
added (rules alone add none). The first explanation also pays one-off costs (imports, layer probe); the
"max s" column shows the worst one.

    python benchmarks/logic_rules.py --epochs 3 --runs 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")

import torch
from _world_bench import EpochTimer, fit_world
from lightning.pytorch import Trainer

from lightning_xai.callbacks.logic_rules import LogicRulesCallback

#: LogicRulesCallback arguments per configuration (on top of the defaults)
CONFIGS: dict[str, dict[str, Any]] = {
    "rules only": {"max_grounding_images": 0, "max_perturbation_images": 0},
    "defaults (grounding + perturbation every 5th explained epoch)": {},
    "rules + grounding (8 images), every epoch": {
        "max_grounding_images": 8,
        "max_perturbation_images": 0,
        "grounding_every": 1,
    },
    "grounding 8 + perturbation 16, every epoch": {"grounding_every": 1},
    "grounding 32 images, no Score-CAM, every epoch": {
        "max_grounding_images": 32,
        "max_perturbation_images": 0,
        "score_cam": False,
        "grounding_every": 1,
    },
    "grounding 32 images + Score-CAM, every epoch": {
        "max_grounding_images": 32,
        "max_perturbation_images": 0,
        "grounding_every": 1,
    },
}


class TimedLogicRules(LogicRulesCallback):
    """Records the wall time of every explained epoch and the forward passes it added."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(on_error="raise", **kwargs)
        self.seconds: list[float] = []
        self.forwards: list[int] = []

    def _run(self, trainer: Trainer, pl_module: Any) -> None:
        calls = [0]
        handle = pl_module.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
        start = time.perf_counter()
        try:
            super()._run(trainer, pl_module)
        finally:
            handle.remove()
        self.seconds.append(time.perf_counter() - start)
        self.forwards.append(calls[0])


def one_run(
    kwargs: dict[str, Any], epochs: int, n_train: int, seed: int, root: str
) -> tuple[list, list, list]:
    cb, timer = TimedLogicRules(**kwargs), EpochTimer(training_only=True)
    fit_world([cb, timer], epochs, n_train, seed, root)
    return cb.seconds, timer.seconds, cb.forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="fits per configuration")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (each one explained)")
    parser.add_argument("--n-train", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, kwargs in CONFIGS.items():
            explain, train, forwards = [], [], []
            for run in range(args.runs):
                e, t, f = one_run(dict(kwargs), args.epochs, args.n_train, args.seed + run, root)
                explain += e
                train += t
                forwards += f
            ratios = [e / t for e, t in zip(explain, train)]
            rows.append(
                (
                    name,
                    statistics.median(explain),
                    max(explain),
                    statistics.median(train),
                    statistics.median(ratios),
                    statistics.median(forwards),
                )
            )
            print(
                f"{name:<42} explain {[round(v, 2) for v in explain]} train {[round(v, 2) for v in train]}",
                flush=True,
            )

    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; TinyCNN, {args.n_train} training / 600 validation scenes, "
        f"{args.epochs} explained epochs x {args.runs} runs (medians; ratio = median of per-epoch ratios)"
    )
    print(
        f"| {'configuration':<42} | {'explain s':>9} | {'max s':>6} | {'train epoch s':>13} | {'ratio':>6} | {'extra forwards':>14} |"
    )
    print(f"|{'-' * 44}|{'-' * 11}|{'-' * 8}|{'-' * 15}|{'-' * 8}|{'-' * 16}|")
    for name, med, worst, train, ratio, fwd in rows:
        print(f"| {name:<42} | {med:>9.2f} | {worst:>6.2f} | {train:>13.2f} | {ratio:>6.3f} | {fwd:>14.0f} |")


if __name__ == "__main__":
    main()
