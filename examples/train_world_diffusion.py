"""Train a Stable-Diffusion-architecture text-to-image model of the planted-concept world, from nothing.

    python examples/train_world_diffusion.py --out runs/world_diffusion --seed 0

1. Render ``--n-train`` random world captions at 32x32 (a held-out grid of shape/colour/texture combinations
   is never rendered for training).
2. Train the VAE (reconstruction + a small KL term), then set its latent scaling factor to 1/std.
3. Train the UNet and the text encoder together on the latents (epsilon prediction, Stable Diffusion's
   noise schedule, 10% empty captions so classifier-free guidance works).
4. Save the pipeline with ``save_pretrained`` and evaluate it: generate every held-out caption with fixed
   seeds and read each slot back with a :class:`~lightning_xai.world.WorldConceptDetector` trained on 32x32
   renders; prints the accuracy per slot and writes ``training.json``.

Seeded; progress bars on every phase. CPU only is fine (see ``training.json`` for the time it took).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lightning_xai.world import COLOURS, SHAPES, TEXTURES, Slots, render_batch, scene_seeds
from lightning_xai.world.concept_detector import train_world_concept_detector
from lightning_xai.world.diffusion import world_diffusion_pipeline

SIZE = 32


def held_out_grid() -> list[Slots]:
    """Shape x colour x texture combinations never shown in training (one texture per shape-colour pair)."""
    grid = []
    for i, (shape, colour) in enumerate(itertools.product(SHAPES, COLOURS)):
        texture = TEXTURES[i % len(TEXTURES)]
        grid += [Slots(shape, colour, texture, False), Slots(shape, colour, texture, True)]
    return grid


def training_captions(n: int, rng: np.random.Generator, held_out: set[tuple[str, str, str]]) -> list[Slots]:
    out: list[Slots] = []
    while len(out) < n:
        shape, colour = SHAPES[rng.integers(3)], COLOURS[rng.integers(4)]
        texture, marker = TEXTURES[rng.integers(5)], bool(rng.random() < 0.5)
        if (shape, colour, texture) in held_out:
            continue
        out.append(Slots(shape, colour, texture, marker))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/world_diffusion"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--vae-steps", type=int, default=800)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--eval-steps", type=int, default=25, help="DDIM steps when generating for evaluation"
    )
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--eval-seeds", type=int, default=4, help="images per held-out caption")
    parser.add_argument(
        "--resume", type=Path, default=None, help="continue from a saved pipeline: keep its VAE, train the UNet further"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    timings: dict[str, float] = {}

    grid = held_out_grid()
    held = {(s.shape, s.colour, s.texture) for s in grid}
    slots = training_captions(args.n_train, rng, held)
    t0 = time.perf_counter()
    images, _ = render_batch(slots, scene_seeds(args.n_train, args.seed, "train"), SIZE, return_masks=False)
    captions = [s.caption for s in slots]
    timings["render_s"] = time.perf_counter() - t0

    if args.resume is not None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.resume, local_files_only=True)
    else:
        pipe = world_diffusion_pipeline(seed=args.seed, image_size=SIZE)
    vae, unet, text_encoder, tokenizer = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer

    # ---- 1. VAE
    t0 = time.perf_counter()
    vae.train()
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    bar = tqdm(range(0 if args.resume is not None else args.vae_steps), desc="VAE")
    for _ in bar:
        rows = torch.randint(0, args.n_train, (args.batch_size,), generator=gen)
        x = images[rows] * 2 - 1
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{float(loss):.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(images[i : i + 256] * 2 - 1).latent_dist.mean for i in range(0, args.n_train, 256)]
        )
    if args.resume is None:
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    scaling = float(vae.config.scaling_factor)
    latents = latents * scaling
    timings["vae_s"] = time.perf_counter() - t0

    # ---- 2. UNet + text encoder
    t0 = time.perf_counter()
    from diffusers import DDPMScheduler

    noise_schedule = DDPMScheduler.from_config(pipe.scheduler.config)
    ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    empty = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.unet_steps, pct_start=0.05
    )
    bar = tqdm(range(args.unet_steps), desc="UNet + text encoder")
    losses = []
    for _ in bar:
        rows = torch.randint(0, args.n_train, (args.batch_size,), generator=gen)
        z = latents[rows]
        tok = ids[rows].clone()
        drop = torch.rand(len(rows), generator=gen) < 0.1
        tok[drop] = empty
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(rows),), generator=gen)
        noisy = noise_schedule.add_noise(z, noise, t)
        cond = text_encoder(tok).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    timings["unet_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out)

    # ---- 3. evaluation on the held-out grid
    t0 = time.perf_counter()
    detector, det_report = train_world_concept_detector(size=SIZE, seed=args.seed)
    prompts = [s.caption for s in grid for _ in range(args.eval_seeds)]
    seeds = [1_000_000 + i for i in range(len(prompts))]
    generated = []
    pipe.set_progress_bar_config(disable=True)
    for i in tqdm(range(0, len(prompts), 16), desc="evaluate"):
        out = pipe(
            prompts[i : i + 16],
            num_inference_steps=args.eval_steps,
            guidance_scale=args.guidance,
            generator=[torch.Generator().manual_seed(s) for s in seeds[i : i + 16]],
            output_type="pt",
        )
        generated.append(out.images.float())
    generated = torch.cat(generated)
    predicted = detector.predict(generated)
    truth = [s for s in grid for _ in range(args.eval_seeds)]
    accuracy = {
        slot: float(
            np.mean(
                [
                    p[slot]
                    == (getattr(s, slot) if slot != "marker" else ("present" if s.marker else "absent"))
                    for p, s in zip(predicted, truth)
                ]
            )
        )
        for slot in ("shape", "colour", "texture", "marker")
    }
    timings["eval_s"] = time.perf_counter() - t0
    summary = {
        "accuracy": accuracy,
        "detector_accuracy_on_renders": det_report.accuracy,
        "timings_s": timings,
        "threads": torch.get_num_threads(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "final_loss": float(np.mean(losses[-100:])),
        "scaling_factor": scaling,
        "held_out_captions": [s.caption for s in grid],
    }
    (args.out / "training.json").write_text(json.dumps(summary, indent=2))
    torch.save(generated, args.out / "eval_images.pt")
    print(
        json.dumps(
            {"accuracy": accuracy, "timings_s": timings, "final_loss": summary["final_loss"]}, indent=2
        )
    )
    return summary


if __name__ == "__main__":
    main()
