"""Cost of SymbolicTreeCallback per explained epoch, relative to one training epoch (quickstart setup).

A TinyCNN trains on the planted-concept world (2400 training / 600 validation scenes, CPU) with the
callback explaining every epoch. For each configuration the table gives the median wall time of one
explanation (everything the callback does at the end of a validation epoch: fitting the symbolic model on
the captured conv5 maps, reading out trees and rules, fidelity, drift, records and PNGs), the part of it
spent fitting, one training epoch (training batches only), the median of the per-epoch ratios
explanation / training epoch (each explanation against its own epoch, so a machine whose speed drifts, e.g.
shared cores, affects both sides alike), the model forward passes the explanation added (none: the symbolic
model trains on the captured activations; the one-image probe that finds the default layer runs inside the
first validation batch, not in the explanation), the held-out fidelity of the last explanation and the share
of its tokens that go from level to level along a hard edge (the lowest of its level pairs: a path off the
edges is missing from the trees). The first explanation also fits ``warmup_steps`` extra steps and pays
one-off costs (imports); "max s" shows it.

    python benchmarks/symbolic_tree.py --epochs 3 --runs 1
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

from lightning_xai.callbacks.symbolic_tree import SymbolicTreeCallback

#: SymbolicTreeCallback arguments per configuration (on top of the defaults)
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults (100 steps/epoch, +100 warm-up)": {},
    "defaults, no early stop (stop_at=None)": {"stop_at": None},
    "quickstart (50 steps/epoch, +50 warm-up)": {"steps_per_epoch": 50, "warmup_steps": 50},
    "defaults, no visual semantics": {"semantic_symbols": 0},
    "200 steps/epoch": {"steps_per_epoch": 200},
}


class TimedSymbolicTree(SymbolicTreeCallback):
    """Records the wall time of every explained epoch, its fitting part and the forward passes it added."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(on_error="raise", **kwargs)
        self.seconds: list[float] = []
        self.fit_seconds: list[float] = []
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
        assert self.last_result is not None
        self.fit_seconds.append(self.last_result.fit.seconds)


def one_run(
    kwargs: dict[str, Any], epochs: int, n_train: int, seed: int, root: str
) -> tuple[TimedSymbolicTree, list[float]]:
    cb, timer = TimedSymbolicTree(**kwargs), EpochTimer(training_only=True)
    fit_world([cb, timer], epochs, n_train, seed, root)
    return cb, timer.seconds


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
            explain, fit, train, forwards, fidelity, edges = [], [], [], [], [], []
            for run in range(args.runs):
                cb, t = one_run(dict(kwargs), args.epochs, args.n_train, args.seed + run, root)
                explain += cb.seconds
                fit += cb.fit_seconds
                train += t
                forwards += cb.forwards
                assert cb.last_result is not None
                fidelity.append(cb.last_result.fidelity["accuracy"])
                edges.append(min(a for a in cb.last_result.edge_agreement if a is not None))
            ratios = [e / t for e, t in zip(explain, train)]
            rows.append(
                (
                    name,
                    statistics.median(explain),
                    max(explain),
                    statistics.median(fit),
                    statistics.median(train),
                    statistics.median(ratios),
                    statistics.median(forwards),
                    statistics.median(fidelity),
                    statistics.median(edges),
                )
            )
            print(
                f"{name:<42} explain {[round(v, 2) for v in explain]} fit {[round(v, 2) for v in fit]} "
                f"train {[round(v, 2) for v in train]}",
                flush=True,
            )

    print()
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads (the symbolic fit uses 1); TinyCNN, {args.n_train} training / 600 validation "
        f"scenes, {args.epochs} explained epochs x {args.runs} runs (medians; ratio = median of per-epoch ratios)"
    )
    print(
        f"| {'configuration':<42} | {'explain s':>9} | {'max s':>6} | {'fit s':>6} | {'train epoch s':>13} | "
        f"{'ratio':>6} | {'extra forwards':>14} | {'fidelity':>8} | {'tokens on edges':>15} |"
    )
    print(
        f"|{'-' * 44}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 15}|{'-' * 8}|{'-' * 16}|{'-' * 10}|{'-' * 17}|"
    )
    for name, med, worst, fit_s, train_s, ratio, fwd, fid, on_edges in rows:
        print(
            f"| {name:<42} | {med:>9.2f} | {worst:>6.2f} | {fit_s:>6.2f} | {train_s:>13.2f} | {ratio:>6.3f} | "
            f"{fwd:>14.0f} | {fid:>8.3f} | {on_edges:>15.3f} |"
        )


if __name__ == "__main__":
    main()
