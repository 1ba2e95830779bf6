"""DEPICT cost: the first explained epoch (generation + scoring) vs a later one (re-scoring cached images).

ConceptPermutationCallback generates every image its permutations need once, on the first explained
epoch, and afterwards only runs the classifier on the cached images. This prints, for the world's
renderer and for a tiny diffusers pipeline (random weights, offline), the wall time of both kinds of
epoch and their ratio (goal: later epochs >= 20x cheaper), with the images generated and classified.

    python benchmarks/depict_cost.py --rows 100 --repeats 5 --steps 2

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from lightning_xai.permutation import ConceptPermutation
from lightning_xai.world import TinyCNN, WorldGenerator, world_concept_table


def one(name: str, generator: Any, rows: int, repeats: int, later: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = TinyCNN(num_classes=6).eval()
    table = world_concept_table(rows, seed=0)
    depict = ConceptPermutation(generator, table, n_repeats=repeats, show_progress=False)
    start = time.perf_counter()
    depict.explain(model)
    first = time.perf_counter() - start
    generated = depict.cache.generated
    times = []
    for _ in range(later):
        start = time.perf_counter()
        depict.explain(model)
        times.append(time.perf_counter() - start)
    assert depict.cache.generated == generated  # later epochs generate nothing
    return {"name": name, "first": first, "later": statistics.median(times), "images": generated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100, help="rows of the concept table")
    parser.add_argument("--repeats", type=int, default=5, help="permutations per concept")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps of the tiny pipeline")
    parser.add_argument("--later", type=int, default=3, help="later epochs timed (median reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy 2-core machine more threads made the tiny "
        "pipeline up to 20x slower)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("timing the world renderer ...", flush=True)
    results = [one("world renderer", WorldGenerator(), args.rows, args.repeats, args.later)]
    try:
        from lightning_xai.generators import DiffusersGenerator, tiny_stable_diffusion_pipeline

        pipe = tiny_stable_diffusion_pipeline(seed=0)
        gen = DiffusersGenerator(pipe, num_inference_steps=args.steps, guidance_scale=1.0, batch_size=32)
        print("timing the tiny diffusers pipeline ...", flush=True)
        results.append(one(f"tiny diffusers ({args.steps} steps)", gen, args.rows, args.repeats, args.later))
    except ImportError as exc:
        print(f"(tiny diffusers skipped: {exc})")

    print()
    print(
        f"DEPICT epochs: {args.rows} rows, 4 concepts x {args.repeats} repeats, TinyCNN classifier, "
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"{'generator':<26} {'images':>7} {'first epoch s':>14} {'later epoch s':>14} {'first / later':>14}"
    )
    for r in results:
        print(
            f"{r['name']:<26} {r['images']:>7} {r['first']:>14.2f} {r['later']:>14.2f} {r['first'] / r['later']:>13.1f}x"
        )


if __name__ == "__main__":
    main()
