"""Train a Stable-Diffusion-architecture text-to-image model of the planted-concept world, from nothing.

    python examples/train_world_diffusion.py --out runs/world_diffusion --seed 0

1. Render ``--n-train`` random world captions at 32x32 (the 24 captions of ``world_diffusion_held_out()``
   are never rendered for training).
2. Train the VAE (reconstruction of the posterior mean + a small KL term), set its latent scaling factor to
   1/std, and read the held-out captions' renders back through it with a
   :class:`~lightning_xai.world.WorldConceptDetector` trained on 32x32 renders (the VAE bounds what the
   UNet can draw).
3. Train the UNet on the latents, conditioned on the frozen, randomly initialised text encoder
   (``--text-encoder train`` trains it too): epsilon prediction under the pipeline's noise schedule, 10% empty
   captions so classifier-free guidance works; optionally the pixels on or next to the object and the marker
   weigh ``--object-weight`` times as much in the loss (default 1: no weighting).
4. Save the pipeline with ``save_pretrained`` and evaluate it: generate every held-out caption with fixed
   seeds and read each slot back with the detector; prints the accuracy per slot and writes
   ``training.json`` and ``held_out.png`` (one generated image per held-out caption above its render).

The shipped model (``lightning_xai/assets/world_diffusion``) came from two runs, the first with the text
encoder trained (docs/world.md says why it is now frozen)::

    python examples/train_world_diffusion.py --out runs/wd_joint --text-encoder train --unet-steps 4000 --stop-after 2000
    python examples/train_world_diffusion.py --out runs/wd --resume runs/wd_joint --new-text-encoder --unet-steps 2500

Seeded; progress bars on every phase. CPU only is fine (see ``training.json`` for the time it took).
"""

from __future__ import annotations

import argparse
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
from lightning_xai.world.diffusion import world_diffusion_held_out, world_diffusion_pipeline

SIZE = 32


def training_captions(n: int, rng: np.random.Generator, held_out: set[tuple[str, str, str]]) -> list[Slots]:
    out: list[Slots] = []
    while len(out) < n:
        shape, colour = SHAPES[rng.integers(3)], COLOURS[rng.integers(4)]
        texture, marker = TEXTURES[rng.integers(5)], bool(rng.random() < 0.5)
        if (shape, colour, texture) in held_out:
            continue
        out.append(Slots(shape, colour, texture, marker))
    return out


def save_held_out_figure(
    generated: torch.Tensor,
    renders: torch.Tensor,
    truth: list[Slots],
    correct: list[bool],
    path: Path,
    settings: str = "25 DDIM steps, guidance 4",
) -> None:
    """One generated image per held-out caption above the world's render of the same caption.

    Rows: the three shapes; columns: the four colours without and with the marker. A caption the detector
    reads back wrongly in any slot is titled in red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first: dict[str, int] = {}
    for i, s in enumerate(truth):
        first.setdefault(s.caption, i)
    cols = [(c, m) for c in COLOURS for m in (False, True)]
    fig, axes = plt.subplots(2 * len(SHAPES), len(cols), figsize=(1.3 * len(cols), 2.6 * len(SHAPES)))
    for r, shape in enumerate(SHAPES):
        for c, (colour, marker) in enumerate(cols):
            i = next(
                first[s.caption] for s in truth if (s.shape, s.colour, s.marker) == (shape, colour, marker)
            )
            ok = correct[i]
            for k, (img, label) in enumerate(((generated[i], "generated"), (renders[i], "rendered"))):
                ax = axes[2 * r + k, c]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if k == 0:
                    words = f"{colour} {shape}\n{truth[i].texture}" + (" +marker" if marker else "")
                    ax.set_title(words, fontsize=7, color="black" if ok else "red")
                if c == 0:
                    ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"Held-out captions: generated ({settings}) above rendered", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        "--min-snr-gamma",
        type=float,
        default=0.0,
        help="Min-SNR loss weighting (Hang et al. 2023): weight min(SNR, gamma)/SNR; 0 (default) turns it off",
    )
    parser.add_argument(
        "--eval-steps", type=int, default=25, help="DDIM steps when generating for evaluation"
    )
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--eval-seeds", type=int, default=4, help="images per held-out caption")
    parser.add_argument(
        "--latent-scale",
        type=int,
        choices=(1, 2),
        default=2,
        help="image side / latent side: 2 (default) a 16x16 latent, 1 the UNet works at 32x32",
    )
    parser.add_argument(
        "--object-weight",
        type=float,
        default=1.0,
        help="loss weight of pixels on or next to the object and the marker (1 weighs every pixel alike)",
    )
    parser.add_argument(
        "--text-encoder",
        choices=("frozen", "train"),
        default="frozen",
        help="keep the text encoder's random initial weights frozen (default; Stable Diffusion keeps CLIP "
        "frozen too), or train it with the UNet",
    )
    parser.add_argument(
        "--save-every", type=int, default=500, help="save the pipeline to --out every this many UNet steps"
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a saved pipeline: keep its VAE, train the UNet further",
    )
    parser.add_argument(
        "--new-text-encoder",
        action="store_true",
        help="with --resume: replace the saved text encoder by a fresh random one (seeded by --seed), the way "
        "the shipped model moved from a jointly trained encoder to a frozen one",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (save and evaluate) after this many UNet steps, with the learning-rate schedule still "
        "laid out for --unet-steps",
    )
    args = parser.parse_args(argv)
    if args.new_text_encoder and args.resume is None:
        parser.error("--new-text-encoder needs --resume (a new pipeline's text encoder is new already)")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.unet_steps:
        parser.error(f"--stop-after must lie in [1, --unet-steps={args.unet_steps}], got {args.stop_after}")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    timings: dict[str, float] = {}

    grid = world_diffusion_held_out()
    held = {(s.shape, s.colour, s.texture) for s in grid}
    slots = training_captions(args.n_train, rng, held)
    t0 = time.perf_counter()
    weighted = args.object_weight != 1
    images, masks = render_batch(
        slots, scene_seeds(args.n_train, args.seed, "train"), SIZE, return_masks=weighted
    )
    pixel_weight = None
    if weighted:
        # shape and the marker live in a few pixels; an unweighted loss is mostly background texture, and
        # the model learned texture and colour long before it drew corners
        small = torch.stack(
            [
                torch.stack([v for k, v in m.items() if k.startswith(("shape:", "marker:"))]).any(0)
                if any(k.startswith(("shape:", "marker:")) for k in m)
                else torch.zeros(SIZE, SIZE, dtype=torch.bool)
                for m in masks
            ]
        )
        near = F.max_pool2d(small[:, None].float(), 3, stride=1, padding=1)  # the outline's outside too
        pixel_weight = 1 + (args.object_weight - 1) * near
    del masks
    captions = [s.caption for s in slots]
    timings["render_s"] = time.perf_counter() - t0

    if args.resume is not None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.resume, local_files_only=True)
        if args.new_text_encoder:
            pipe.text_encoder = world_diffusion_pipeline(seed=args.seed, image_size=SIZE).text_encoder
    else:
        pipe = world_diffusion_pipeline(seed=args.seed, image_size=SIZE, latent_scale=args.latent_scale)
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
        # decode the mean: the UNet is trained on posterior means, so the decoder must render those well
        recon = vae.decode(posterior.mode()).sample
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
    # a VAE that downsamples gives a coarser latent: a latent pixel counts as near the object if any of its
    # image pixels does
    if pixel_weight is not None:
        pixel_weight = F.adaptive_max_pool2d(pixel_weight, latents.shape[-2:])
    timings["vae_s"] = time.perf_counter() - t0

    # the VAE bounds what the UNet can draw: read the held-out grid back through it
    t0 = time.perf_counter()
    detector, det_report = train_world_concept_detector(size=SIZE, seed=args.seed)
    truth = [s for s in grid for _ in range(args.eval_seeds)]
    renders, _ = render_batch(truth, scene_seeds(len(truth), args.seed, "test"), SIZE, return_masks=False)
    with torch.no_grad():
        recon = (vae.decode(vae.encode(renders * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    vae_accuracy = detector.accuracy(recon, truth)
    print("detector on VAE reconstructions of held-out renders:", json.dumps(vae_accuracy))
    timings["detector_s"] = time.perf_counter() - t0

    # ---- 2. UNet (and the text encoder with --text-encoder train)
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
    alphas = noise_schedule.alphas_cumprod
    snr = alphas / (1 - alphas)
    # epsilon prediction weighs each step's image error by its SNR; Min-SNR caps that weight so the
    # nearly clean steps (fine texture) do not crowd out the noisy ones, where shape and layout form
    snr_weight = (
        torch.clamp(snr, max=args.min_snr_gamma) / snr if args.min_snr_gamma > 0 else torch.ones_like(snr)
    )
    unet.train()
    # trained jointly from scratch, the encoder learned to all but erase the shape word (its hidden states
    # moved 0.65 between "circle" and "square" against 4.0 between two colours) while the UNet drew a random
    # shape; a frozen random encoder keeps every word's difference (about 2.5 to 3.4 at norm 8)
    train_text = args.text_encoder == "train"
    text_encoder.train(train_text).requires_grad_(train_text)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.unet_steps, pct_start=0.05
    )
    bar = tqdm(range(args.unet_steps), desc="UNet" if not train_text else "UNet + text encoder")
    losses = []
    for step in bar:
        rows = torch.randint(0, args.n_train, (args.batch_size,), generator=gen)
        z = latents[rows]
        tok = ids[rows].clone()
        drop = torch.rand(len(rows), generator=gen) < 0.1
        tok[drop] = empty
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (len(rows),), generator=gen)
        noisy = noise_schedule.add_noise(z, noise, t)
        # encoding every step costs little: precomputing the frozen encoder's states saved 2% (22.1 -> 21.7 s
        # for 30 steps, bit-identical losses), not worth a second code path
        with torch.set_grad_enabled(train_text):
            cond = text_encoder(tok).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        error = F.mse_loss(pred, noise, reduction="none")
        per_image = (error if pixel_weight is None else error * pixel_weight[rows]).mean(dim=(1, 2, 3))
        loss = (per_image * snr_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step + 1 == args.stop_after:
            break
        if args.save_every and (step + 1) % args.save_every == 0 and step + 1 < args.unet_steps:
            pipe.save_pretrained(args.out)  # a long run interrupted later keeps its progress
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    timings["unet_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out)

    # ---- 3. evaluation on the held-out grid
    t0 = time.perf_counter()
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
    accuracy = detector.accuracy(generated, truth)
    correct = torch.stack(list(detector.correct(generated, truth).values())).all(0).tolist()
    settings = f"{args.eval_steps} DDIM steps, guidance {args.guidance:g}"
    save_held_out_figure(generated, renders, truth, correct, args.out / "held_out.png", settings)
    timings["eval_s"] = time.perf_counter() - t0
    summary = {
        "accuracy": accuracy,
        "detector_accuracy_on_renders": det_report.accuracy,
        "detector_accuracy_on_vae_reconstructions": vae_accuracy,
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
