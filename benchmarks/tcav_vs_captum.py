"""TCAV side by side: ``lightning_xai.tcav`` vs Captum's ``TCAV``, same model, layers, concept and random sets.

One process, one trained TinyCNN of the planted-concept world. Both tools get exactly the same data:
the concept sets (matched: the random pool's scenes with the concept's slot forced), the same ``R + 1``
random sets drawn from the pool, the same layers and the same per-class inputs. Captum runs as its
tutorial recommends for significance: experimental sets ``[concept, random_r]`` and, for the null,
``[random_{r-1}, random_r]`` (the pairs our null uses), then the same Welch t-test and Bonferroni
correction over every (layer, concept, class) as ours.

What one "epoch" costs is timed for each tool, because CAVs must be retrained every epoch while the model
trains: activations of the concept and random sets, CAV training, gradients of the class images, scores.
Captum gets a fresh ``save_path`` each epoch (its caches are keyed by ids, not data or weights). Peak memory
is the peak resident-set increase during the run (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

    python benchmarks/tcav_vs_captum.py --runs 10 --repeats 3

Ours runs twice: with ``cav="linear"`` (logistic regression, like Captum's SGD classifier) and with the
default ``cav="mean"`` (centroid difference, FastCAV). Prints the timing table, then per (layer, concept, class) both tools' TCAV scores and p-values next to the
interventional effect, and how many cells each tool gets right: a large effect (> 10% of the class's largest)
must be significant and point its way, a small one must not be significant. Needs ``captum`` and
``scikit-learn`` (Captum's default classifier); not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")

import torch
from torch.utils.data import DataLoader

from lightning_xai.tcav import ConceptAttribution, random_set_indices, two_sided_pvalues
from lightning_xai.tcav.stats import bonferroni
from lightning_xai.world import (
    concept_set,
    interventional_effects,
    random_set,
    train_tiny_cnn,
)


class PeakMemory:
    """Peak memory increase during a block: CUDA allocator peak, or resident set size sampled every 2 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 - a plain class, not subclassed
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base = self._rss()
        self._max = self._base

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._max, self._rss()) - self._base


def ours(
    model: torch.nn.Module,
    layers: list[str],
    concepts: dict[str, torch.Tensor],
    pool: torch.Tensor,
    set_size: int,
    runs: int,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cav: str,
    seed: int,
) -> dict[str, Any]:
    """One epoch of ours: CAVs for all runs at once, one gradient pass for every class."""
    explainer = ConceptAttribution(
        model, layers, concepts, pool, cav=cav, n_random=runs, random_set_size=set_size, seed=seed
    )
    result = explainer.tcav(inputs, targets)
    return {"sign": result.sign_runs, "null": result.null_sign_runs, "classes": result.classes}


def captum(
    model: torch.nn.Module,
    layers: list[str],
    concepts: dict[str, torch.Tensor],
    pool: torch.Tensor,
    idx: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    save_path: str,
) -> dict[str, Any]:
    """One epoch of Captum's TCAV: the same sets as Concepts, [concept, random_r] and [random_{r-1}, random_r]."""
    from captum.concept import TCAV, Concept

    def concept(cid: int, name: str, images: torch.Tensor) -> Concept:
        return Concept(cid, name, DataLoader(images, batch_size=64))

    randoms = [concept(100 + r, f"random_{r}", pool[idx[r]]) for r in range(idx.shape[0])]
    named = [concept(i, name.replace(":", "_"), x) for i, (name, x) in enumerate(concepts.items())]
    runs = idx.shape[0] - 1
    sets = [[c, randoms[r]] for c in named for r in range(1, runs + 1)]
    sets += [[randoms[r - 1], randoms[r]] for r in range(1, runs + 1)]
    tcav = TCAV(model, layers, model_id="bench", save_path=save_path)
    classes = sorted(int(c) for c in targets.unique())
    K, L, C = len(named), len(layers), len(classes)
    sign = torch.zeros(L, K, C, runs)
    null = torch.zeros(L, C, runs)
    for ci, k in enumerate(classes):
        x = inputs[targets == k]
        scores = tcav.interpret(x, sets, target=k)
        for li, layer in enumerate(layers):
            for ki, c in enumerate(named):
                for r in range(1, runs + 1):
                    sign[li, ki, ci, r - 1] = scores[f"{c.id}-{randoms[r].id}"][layer]["sign_count"][0]
            for r in range(1, runs + 1):
                null[li, ci, r - 1] = scores[f"{randoms[r - 1].id}-{randoms[r].id}"][layer]["sign_count"][0]
    return {"sign": sign, "null": null, "classes": classes}


def timed(fn: Callable[[], dict[str, Any]], device: torch.device) -> tuple[float, int, dict[str, Any]]:
    with PeakMemory(device) as mem:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, mem.peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="random runs R (default: 10)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed epochs per tool, interleaved (median reported)"
    )
    parser.add_argument("--concepts", nargs="+", default=["texture:striped", "shape:circle"])
    parser.add_argument("--layers", nargs="+", default=["conv4", "conv5"])
    parser.add_argument(
        "--pool", type=int, default=100, help="random pool = size of each matched concept set"
    )
    parser.add_argument("--set-size", type=int, default=50, help="images per random set")
    parser.add_argument("--per-class", type=int, default=50, help="validation images per class")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    print("Training the world's TinyCNN (not timed) ...", flush=True)
    world = train_tiny_cnn(seed=args.seed)
    model = world.model.to(device).eval()
    for p in model.parameters():  # both tools take gradients w.r.t. activations only
        p.requires_grad_(False)
    pool_seed = 11
    pool = random_set(args.pool, seed=pool_seed).to(device)
    concepts = {c: concept_set(c, args.pool, seed=pool_seed).to(device) for c in args.concepts}
    idx = random_set_indices(args.pool, args.runs + 1, args.set_size, args.seed)
    val = world.datamodule.val_set
    rows = torch.cat(
        [torch.nonzero(val.labels == k).flatten()[: args.per_class] for k in range(len(world.classes))]
    )
    inputs, targets = val.images[rows].to(device), val.labels[rows]

    # ours twice: "linear" (logistic regression, like Captum's classifier) and "mean" (the default, FastCAV)
    tools = ("ours-linear", "ours-mean", "captum")
    times: dict[str, list[float]] = {t: [] for t in tools}
    peaks: dict[str, list[int]] = {t: [] for t in tools}
    results: dict[str, dict[str, Any]] = {}
    for rep in range(args.repeats):  # interleaved, so drifts of the machine hit every tool alike
        for tool in tools:
            if tool == "captum":
                with (
                    tempfile.TemporaryDirectory() as save_path
                ):  # a fresh cache: CAVs are retrained every epoch
                    t, m, results[tool] = timed(
                        lambda: captum(model, args.layers, concepts, pool, idx, inputs, targets, save_path),
                        device,
                    )
            else:
                kind = tool.split("-")[1]
                t, m, results[tool] = timed(
                    lambda kind=kind: ours(
                        model,
                        args.layers,
                        concepts,
                        pool,
                        args.set_size,
                        args.runs,
                        inputs,
                        targets,
                        kind,
                        args.seed,
                    ),
                    device,
                )
            times[tool].append(t)
            peaks[tool].append(m)
        print(
            "  repeat " + str(rep + 1) + ": " + ", ".join(f"{t} {times[t][-1]:.2f} s" for t in tools),
            flush=True,
        )

    print()
    print(
        f"TCAV, one epoch: R={args.runs} random runs, {len(args.concepts)} concepts, {len(args.layers)} layers "
        f"({', '.join(args.layers)}), {inputs.shape[0]} inputs in {len(world.classes)} classes, device {device}"
    )
    print(f"{'tool':<12} {'median s':>9} {'peak MiB':>9} {'captum / tool':>14}")
    t_captum = statistics.median(times["captum"])
    for tool in tools:
        t = statistics.median(times[tool])
        print(f"{tool:<12} {t:>9.3f} {max(peaks[tool]) / 2**20:>9.1f} {t_captum / t:>13.1f}x")

    effects = interventional_effects(
        model, task=world.rule, n_scenes=128, seed=0
    )  # every concept: "large" is
    # relative to the class's largest effect over all concepts
    stats = {}
    for tool, res in results.items():
        p = two_sided_pvalues(res["sign"], res["null"][:, None])
        adjusted, significant, m = bonferroni(p)
        stats[tool] = (res["sign"].mean(-1), adjusted, significant)
    print()
    print(
        f"Per cell: TCAV score (mean over {args.runs} runs), Bonferroni-adjusted p (m={m}), interventional effect"
    )
    header = f"{'layer':<6} {'concept':<16} {'class':<17} {'effect':>7}" + "".join(
        f" | {t:>11} {'p':>7} {'ok':>3}" for t in tools
    )
    print(header)
    print("-" * len(header))
    correct = {t: 0 for t in tools}
    cells = 0
    classes = results["captum"]["classes"]
    for li, layer in enumerate(args.layers):
        for ki, concept in enumerate(args.concepts):
            for ci, k in enumerate(classes):
                eff = effects.effect(concept, k)
                large = abs(eff) > 0.1 * float(effects.mean[:, k].abs().max())
                line = f"{layer:<6} {concept:<16} {world.classes[k]:<17} {eff:>7.2f}"
                for tool in tools:
                    score, adjusted, significant = stats[tool]
                    s, sig = float(score[li, ki, ci]), bool(significant[li, ki, ci])
                    ok = (sig and (s > 0.5) == (eff > 0)) if large else not sig
                    correct[tool] += ok
                    line += f" | {s:>11.2f} {float(adjusted[li, ki, ci]):>7.2g} {'yes' if ok else 'no':>3}"
                cells += 1
                print(line)
    print()
    print(
        "cells agreeing with the interventional ground truth (large effect: significant and the same way; "
        "small effect: not significant): " + ", ".join(f"{t} {correct[t]}/{cells}" for t in tools)
    )


if __name__ == "__main__":
    main()
