"""Quickstart: explain a tiny CNN while it trains on the planted-concept world (CPU, W&B offline).

Run with ``make demo`` or::

    WANDB_MODE=offline python examples/quickstart.py --out runs/quickstart --epochs 6 --seed 0

``--generator diffusion`` (``make demo DEMO_ARGS="--generator diffusion"``) runs DEPICT and DiffExplainer
through the world diffusion model that ships with the package instead of the renderer: real text-to-image
generation, offline. The model draws 32x32 scenes, so the classifier then trains on 32x32 renders too; the
run is a few minutes slower on a CPU.

Everything the run writes goes below ``--out``:

* ``<out>/lightning-xai-quickstart/<W&B run id>/xai/records.jsonl``: one JSON record per explanation (method,
  name, epoch, step, run id, payload), in the W&B run's own folder, so two runs never share a file;
* ``.../xai/media/``: the PNGs (charts, maps) the records point to;
* ``<out>/wandb/offline-run-*``: the W&B run (tables as JSON, images as PNG); ``wandb sync`` uploads it;
* ``<out>/csv/``: Lightning's CSV metrics, including the ``xai/...`` scalars (each callback's summary set).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger, WandbLogger

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
from lightning_xai.world import (
    TinyCNN,
    WorldColourMarkerDetector,
    WorldDataModule,
    WorldGenerator,
    WorldPromptGenerator,
    concept_set,
    get_task,
    random_set,
    world_concept_table,
)

# Concepts for TCAV: matched sets (each image is a random scene with the concept planted in it, the random
# pool is the same scenes without it), so a CAV learns the concept and nothing that comes with it.
TCAV_CONCEPTS = ("shape:circle", "texture:striped", "texture:dotted", "colour:red")
IMAGE_SIZE = {"renderer": 64, "diffusion": 32}  # the diffusion model draws 32x32 scenes
GENERATORS = tuple(IMAGE_SIZE)


def _generative_callbacks(generator: str) -> list:
    """DEPICT and DiffExplainer through the world's renderer (exact, fast) or its diffusion model."""
    explainer_args = {
        "concept_detector": WorldColourMarkerDetector().scores,
        "core_concepts": get_task("shape_texture").positive_concepts,
        "show_progress": False,
    }
    if generator == "renderer":
        return [
            # DEPICT: 200 world scenes rendered from their captions (once), re-scored every second epoch
            ConceptPermutationCallback(
                WorldGenerator(), world_concept_table(200, seed=0), n_repeats=5, every_n_epochs=2
            ),
            # DiffExplainer: per class, a world prompt (logits over each caption slot's words) optimised so its
            # scenes maximise the class, warm-started every second epoch; concepts the class's scenes show far
            # more often than an unoptimised prompt's, and that are not the class's own (shape, texture), are
            # flagged as suspected bias
            DiffusionExplainerCallback(WorldPromptGenerator(), steps=100, every_n_epochs=2, **explainer_args),
        ]
    # the shipped diffusion model draws 32x32 scenes, the size main() trains the classifier at in this mode
    from lightning_xai.generators import DiffusersGenerator
    from lightning_xai.world import WorldDiffusionPromptGenerator
    from lightning_xai.world.diffusion import load_world_diffusion

    pipe = load_world_diffusion()
    return [
        # DEPICT: 60 captions drawn by the diffusion model (8 DDIM steps, guidance 4) once, re-scored every
        # second epoch; a permuted row is generated with its original's seed, so only its caption differs
        ConceptPermutationCallback(
            DiffusersGenerator(pipe, num_inference_steps=8, guidance_scale=4.0, batch_size=64),
            world_concept_table(60, seed=0),
            n_repeats=2,
            every_n_epochs=2,
        ),
        # DiffExplainer: soft tokens laid out as a world caption, started neutral, 4 seeds x 4 DDIM steps
        DiffusionExplainerCallback(
            WorldDiffusionPromptGenerator(pipe),
            steps=40,  # Adam lr: the generator's default_lr (0.005 for this model)
            every_n_epochs=2,
            **explainer_args,
        ),
    ]


def build_callbacks(generator: str = "renderer") -> list:
    """Every lightning-xai callback, at its defaults; DEPICT and DiffExplainer use ``generator``
    (``"renderer"``: the world's exact renderer; ``"diffusion"``: the shipped world diffusion model)."""
    if generator not in GENERATORS:
        raise ValueError(f"generator must be one of {list(GENERATORS)}, got {generator!r}")
    size = IMAGE_SIZE[generator]
    concepts = {c: concept_set(c, 100, seed=11, size=size) for c in TCAV_CONCEPTS}
    depict, diffexplainer = _generative_callbacks(generator)
    return [
        RepresentationDriftCallback(layers=["conv3"]),
        LogicRulesCallback(),
        ConceptAttributionCallback(
            concepts,
            random=random_set(100, seed=11, size=size),
            every_n_epochs=2,
            images_per_class=10,
            probe_images=2,
        ),
        depict,
        # hyperbolic symbol trees on conv5, warm-started each epoch (0.1 to 1.3 s per explained epoch on a 2-core CPU)
        SymbolicTreeCallback(steps_per_epoch=50, warmup_steps=50),
        diffexplainer,
        # concept drift: every callback above, compared with its previous explained epoch; alerts are warnings
        # and "alert" records; the largest drift of each kind is logged as xai/drift/... (monitorable)
        ConceptDriftMonitor(),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/quickstart"), help="where the run writes everything"
    )
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of data, weights and explainers (default: 0)"
    )
    parser.add_argument("--n-train", type=int, default=2400, help="training scenes (default: 2400)")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="renderer",
        help="what DEPICT and DiffExplainer generate images with: the world's renderer (default, fast) or the "
        "world diffusion model that ships with the package (needs the diffusion extra; minutes slower)",
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    datamodule = WorldDataModule(
        task="shape_texture", n_train=args.n_train, n_val=600, seed=args.seed, size=IMAGE_SIZE[args.generator]
    )
    model = TinyCNN(num_classes=datamodule.num_classes, classes=datamodule.classes)
    wandb_logger = WandbLogger(project="lightning-xai-quickstart", save_dir=str(out), offline=True)
    trainer = Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=out,
        logger=[wandb_logger, CSVLogger(out, name="csv")],
        callbacks=build_callbacks(args.generator),
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    wandb_logger.experiment.finish()
    elapsed = time.perf_counter() - start

    run_dir = run_dir_of(trainer)  # the W&B run's own folder: <out>/lightning-xai-quickstart/<run id>
    records = read_records(run_dir)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    summary = {
        "run_dir": str(run_dir),
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "fit_seconds": elapsed,
        "records": len(records),
        "wandb_run": str(runs[0]) if runs else None,
    }
    print()
    print(f"Trained {args.epochs} epochs in {elapsed:.0f} s: validation accuracy {summary['val_acc']:.3f}")
    print(f"Explanations (local store): {run_dir / 'xai' / 'records.jsonl'} ({len(records)} records)")
    print(f"Media:                      {run_dir / 'xai' / 'media'}")
    print(f"W&B offline run:            {summary['wandb_run']}")
    print(f"CSV metrics:                {out / 'csv'}")
    print()
    print("Representation drift (linear CKA; 1 = unchanged):")
    print(f"  {'epoch':>5}  {'vs previous':>11}  {'vs first':>8}  {'conv3 vs prev':>13}")
    for rec in records:
        if rec.method == "representation_drift" and rec.name == "epoch":
            p = rec.payload
            print(
                f"  {rec.epoch:>5}  {p['cka_prev']['features']:>11.3f}  {p['cka_ref']['features']:>8.3f}"
                f"  {p['cka_prev']['conv3']:>13.3f}"
            )
    logic = [r for r in records if r.method == "logic_rules" and r.name == "epoch"]
    if logic:
        print(
            "\nLogic rules (held-out fidelity of the rules to the model; grounding: guided vs random success):"
        )
        for rec in logic:
            p = rec.payload
            ev = p["evaluation"][p["scoring"]]
            g = p["grounding"] or {}
            print(
                f"  epoch {rec.epoch}: {p['scoring']} fidelity {ev['fidelity']:.3f}, "
                f"guided {g.get('guided_success', float('nan')):.2f} vs random {g.get('random_success', float('nan')):.2f}"
            )
        for rule in logic[-1].payload["global_rules"]:
            print(f"    {rule}")
    tcav = [r for r in records if r.method == "concept_attribution" and r.name == "epoch"]
    if tcav:
        p = tcav[-1].payload
        print(
            f"\nTCAV at epoch {tcav[-1].epoch} (sign fraction, * = significant after Bonferroni; layer {p['layers'][0]}):"
        )
        print(f"  {'class':<18}" + "".join(f"{c:>17}" for c in p["concepts"]))
        for cname in p["classes"]:
            cells = {
                r["concept"]: r for r in p["scores"] if r["class"] == cname and r["layer"] == p["layers"][0]
            }
            print(
                f"  {cname:<18}"
                + "".join(
                    f"{cells[c]['tcav']:>16.2f}{'*' if cells[c]['significant'] else ' '}"
                    for c in p["concepts"]
                )
            )
    depict = [r for r in records if r.method == "concept_permutation" and r.name == "epoch"]
    if depict:
        print("\nConcept permutation importance (accuracy drop when a concept is shuffled across captions):")
        for rec in depict:
            p = rec.payload
            cells = ", ".join(
                f"{r['concept']} {r['importance']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                for r in sorted(p["importance"], key=lambda r: r["rank"])
            )
            print(f"  epoch {rec.epoch}: {cells}")
    trees = [r for r in records if r.method == "symbolic_tree" and r.name == "epoch"]
    if trees:
        print(
            "\nSymbolic trees (held-out fidelity of the symbolic surrogate; mean code norm per level, fine to coarse):"
        )
        for rec in trees:
            p = rec.payload
            norms = " > ".join(f"{n:.2f}" for n in p["norms"])
            print(f"  epoch {rec.epoch}: fidelity {p['fidelity']['accuracy']:.3f}, norms {norms}")
        for rule in [r["text"] for r in trees[-1].payload["rules"] if r["text"].startswith("class")][:3]:
            print(f"    {rule}")
    prompts = [r for r in records if r.method == "diffusion_explainer" and r.name == "epoch"]
    if prompts:
        print(
            f"\nDiffExplainer at epoch {prompts[-1].epoch} (optimised prompt read out; p = mean class probability of its scenes):"
        )
        classes = datamodule.classes
        for t in prompts[-1].payload["targets"]:
            flagged = (t["bias"] or {}).get("flagged", [])
            name = classes[t["target"]["index"]]
            print(
                f'  {name:<18} p={t["mean_probability"]:.2f}  "{t["readout"]["caption"]}"'
                + (f"  flagged: {', '.join(flagged)}" if flagged else "")
            )
    drift = [r for r in records if r.method == "drift" and r.name == "epoch"]
    if drift:
        last = max(r.epoch for r in drift)
        rows = [
            row for r in drift if r.epoch == last for row in r.payload["rows"] if row["against"] == "previous"
        ]
        print(
            f"\nConcept drift at epoch {last} (largest change since the previous explained epoch, per kind):"
        )
        largest: dict[tuple[str, str], dict] = {}
        for row in rows:
            k = (row["source"], row["kind"])
            if k not in largest or row["value"] > largest[k]["value"]:
                largest[k] = row
        for (source, kind), row in sorted(largest.items()):
            limit = "no alert" if row["threshold"] is None else f"alert above {row['threshold']:g}"
            print(f"  {source:<22} {kind:<15} {row['value']:.3f}  ({row['key']}; {limit})")
    alerts = [r for r in records if r.method == "drift" and r.name == "alert"]
    for r in alerts:
        print(f"  ALERT epoch {r.epoch}: {r.payload['message']}")
    errors = [r for r in records if r.name == "error"]
    if errors:
        print(f"\n{len(errors)} explainer errors were recorded; see the records with name 'error'.")
    return summary


if __name__ == "__main__":
    main()
