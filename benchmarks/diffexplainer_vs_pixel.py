"""DiffExplainer's prompt route vs pixel-space activation maximisation on the world model, same budget.

For every class of a TinyCNN trained on the default world task, both routes maximise ``log p(class)``
with Adam for the same number of steps (each step: one forward and backward pass of the classifier on
a batch of 4 images for the prompt route, on 1 jittered image for pixel AM). Printed per budget:

* ``own``: ``-log p(class)`` of the explained model on each route's final images (for the prompt
  route: 32 new scenes drawn from the optimised prompt; for pixel AM: its one image, un-jittered);
* ``other``: the same on a second TinyCNN trained on the same task with another seed: does the
  image show the class's concepts, or a pattern only the explained model responds to?
* ``p``: mean probability of the class (explained model), and the wall time per step.

    python benchmarks/diffexplainer_vs_pixel.py --budgets 30 100 300

Not part of the test suite (about 4 minutes on 2 CPU cores, training included).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from lightning_xai.diffexplainer import optimize_prompt, pixel_activation_maximisation
from lightning_xai.world import WorldPromptGenerator, train_tiny_cnn


def nll(model: torch.nn.Module, images: torch.Tensor, c: int) -> float:
    with torch.no_grad():
        return float(-model(images).log_softmax(1)[:, c].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[30, 100, 300])
    parser.add_argument("--images", type=int, default=32, help="new scenes drawn from each optimised prompt")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    explained = train_tiny_cnn(task="shape_texture", seed=0)
    other = train_tiny_cnn(task="shape_texture", seed=1)
    model, second = explained.model.eval(), other.model.eval()
    classes = explained.classes
    seeds = list(range(1000, 1000 + args.images))
    print(f"explained model val acc {explained.val_acc:.3f}, second model val acc {other.val_acc:.3f}")
    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )

    header = (
        f"{'budget':>6} {'class':<16} | {'own: prompt':>11} {'pixel':>7} {'fourier':>7} | "
        f"{'other: prompt':>13} {'pixel':>7} {'fourier':>7} | {'p: prompt':>9} {'pixel':>6} | {'ms/step prompt':>14} {'pixel':>6}"
    )
    summary = []
    for budget in args.budgets:
        print(header)
        rows = []
        for c, name in enumerate(classes):
            gen = WorldPromptGenerator()
            t0 = time.perf_counter()
            prompt = optimize_prompt(model, gen, c, steps=budget, early_stop=None, image_seeds=seeds)
            t1 = time.perf_counter()
            pixel = pixel_activation_maximisation(model, c, steps=budget, early_stop=None)
            t2 = time.perf_counter()
            fourier = pixel_activation_maximisation(model, c, steps=budget, early_stop=None, fourier=True)
            row = {
                "own_prompt": prompt.image_objective,
                "own_pixel": pixel.final_objective,
                "own_fourier": fourier.final_objective,
                "other_prompt": nll(second, prompt.images, c),
                "other_pixel": nll(second, pixel.images, c),
                "other_fourier": nll(second, fourier.images, c),
                "p_prompt": prompt.mean_probability,
                "p_pixel": pixel.mean_probability,
                "ms_prompt": 1000 * (t1 - t0) / budget,
                "ms_pixel": 1000 * (t2 - t1) / budget,
            }
            rows.append(row)
            print(
                f"{budget:>6} {name:<16} | {row['own_prompt']:>11.3f} {row['own_pixel']:>7.4f} {row['own_fourier']:>7.4f} | "
                f"{row['other_prompt']:>13.3f} {row['other_pixel']:>7.3f} {row['other_fourier']:>7.3f} | "
                f"{row['p_prompt']:>9.3f} {row['p_pixel']:>6.3f} | {row['ms_prompt']:>14.1f} {row['ms_pixel']:>6.1f}"
                f"   readout: {prompt.readout.caption}"
            )
        mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
        summary.append((budget, mean))
        print()
    print("Means over classes (-log p; lower is better):")
    print(
        f"{'budget':>6} | {'own: prompt':>11} {'pixel':>7} {'fourier':>7} | {'other: prompt':>13} {'pixel':>7} {'fourier':>7}"
    )
    for budget, m in summary:
        print(
            f"{budget:>6} | {m['own_prompt']:>11.3f} {m['own_pixel']:>7.4f} {m['own_fourier']:>7.4f} | "
            f"{m['other_prompt']:>13.3f} {m['other_pixel']:>7.3f} {m['other_fourier']:>7.3f}"
        )


if __name__ == "__main__":
    main()
