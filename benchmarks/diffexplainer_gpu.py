"""DiffExplainer soft-prompt optimisation cost at Stable Diffusion 1.5 size: seconds per step, peak memory.

Builds SD-1.5-architecture components from configs with random weights (no download: the UNet,
VAE and CLIP ViT-L/14 text encoder have SD-1.5's shapes, so compute and memory are those of the
real model; the images are meaningless), then times optimisation steps of
:class:`~lightning_xai.diffexplainer.DiffusersPromptGenerator`: render (text encoder, K UNet calls,
VAE decode) + a random ResNet-18 classifier at 224x224 (a 2-layer CNN in the smoke test) + backward to the soft tokens + an Adam step.
Configurations: K = 4 and 8 sampler steps, with and without UNet gradient checkpointing, bf16
autocast by default. Each configuration reports the median seconds per step after warm-up and the
peak GPU memory (``torch.cuda.max_memory_allocated``, reset between configurations); a
configuration that runs out of memory is reported as OOM and the next one still runs.

    python benchmarks/diffexplainer_gpu.py                       # CUDA, 512x512, K in (4, 8)
    python benchmarks/diffexplainer_gpu.py --device cpu --tiny   # smoke test: tiny pipeline on CPU

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from lightning_xai.diffexplainer.diffusers_prompt import DiffusersPromptGenerator

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def sd15_pipeline(device: torch.device):
    """A StableDiffusionPipeline with SD-1.5's architecture and random weights, built on ``device``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lightning_xai.generators.tiny import _assemble_pipeline, _char_clip_tokenizer

    torch.manual_seed(0)
    # Parameters are created (and randomly initialised) directly on the device: initialising 1B
    # parameters on the CPU takes minutes.
    with device:
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(  # openai/clip-vit-large-patch14's text tower
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=0,  # ids of the offline character tokenizer below
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    return _assemble_pipeline(vae, text_encoder, _char_clip_tokenizer(77), unet)


def classifier(kind: str, device: torch.device) -> torch.nn.Module:
    """A frozen random classifier on 224x224 inputs: ResNet-18, or a 2-layer CNN for smoke tests."""
    torch.manual_seed(0)
    with device:
        if kind == "resnet18":
            from torchvision.models import resnet18

            model = resnet18(weights=None, num_classes=1000)
        else:
            model = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 5, stride=4),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
                torch.nn.Flatten(),
                torch.nn.Linear(32, 10),
            )
    return model.eval().requires_grad_(False)


def measure(
    pipe: Any,
    model: torch.nn.Module,
    steps: int,
    checkpointing: bool,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    cuda = device.type == "cuda"
    row: dict[str, Any] = {"steps": steps, "checkpointing": checkpointing}
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        row["resident_gib"] = torch.cuda.memory_allocated(device) / 2**30
    try:
        gen = DiffusersPromptGenerator(
            pipe,
            n_tokens=args.tokens,
            init_word="object",
            num_inference_steps=steps,
            seeds=tuple(range(args.seeds)),
            gradient_checkpointing=checkpointing,
            dtype=_DTYPES[args.dtype],
            height=args.size,
            width=args.size,
        )
        prompt = gen.init_prompt().requires_grad_()
        optimiser = torch.optim.Adam([prompt], lr=0.05)
        times = []
        for i in range(args.warmup + args.timed):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            images = gen.render(prompt)
            with torch.autocast(
                device.type,
                dtype=_DTYPES[args.dtype] or torch.float32,
                enabled=_DTYPES[args.dtype] is not None,
            ):
                logits = model(F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False))
            loss = -torch.log_softmax(logits.float(), dim=-1)[:, 0].mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
            del images, logits, loss
        row["s_per_step"] = statistics.median(times)
        row["s_min"], row["s_max"] = min(times), max(times)
        row["grad_finite"] = bool(torch.isfinite(prompt.grad).all())
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
    finally:
        gen = prompt = optimiser = None  # drop the graph before the next configuration
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (cpu needs --tiny)")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="use the tiny offline pipeline (64x64) instead of SD-1.5 size: a smoke test",
    )
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 64 with --tiny)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8], help="sampler steps K")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="autocast precision")
    parser.add_argument("--tokens", type=int, default=4, help="soft tokens")
    parser.add_argument("--seeds", type=int, default=1, help="images per step (fixed seeds)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    parser.add_argument("--timed", type=int, default=5, help="timed steps per configuration (median)")
    parser.add_argument(
        "--classifier",
        choices=["resnet18", "cnn"],
        default=None,
        help="classifier on the images (default resnet18; cnn, a 2-layer CNN, with --tiny so "
        "that the smoke timings are not all classifier)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "CUDA is not available. For a smoke test of the same code path on CPU run:\n"
            "    python benchmarks/diffexplainer_gpu.py --device cpu --tiny"
        )
    if device.type == "cpu" and not args.tiny:
        sys.exit(
            "the SD-1.5-size benchmark needs a GPU (on CPU one step takes minutes); add --tiny for a "
            "smoke test"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())

    try:
        import diffusers
        import transformers
    except ImportError:
        sys.exit('needs diffusers and transformers: pip install "lightning-xai[diffusion]"')

    start = time.perf_counter()
    if args.tiny:
        from lightning_xai.generators import tiny_stable_diffusion_pipeline

        pipe = tiny_stable_diffusion_pipeline(seed=0)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.to(device)
        args.size = args.size or 64
        model_name = "tiny random SD (UNet 4/8 ch, CLIP d=8)"
    else:
        pipe = sd15_pipeline(device)
        args.size = args.size or 512
        model_name = "SD-1.5 architecture, random weights"
    args.classifier = args.classifier or ("cnn" if args.tiny else "resnet18")
    model = classifier(args.classifier, device)
    build_s = time.perf_counter() - start

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    print(f"device: {name}")
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"model: {model_name}, {args.size}x{args.size}, autocast {args.dtype}, {args.tokens} soft tokens, "
        f"{args.seeds} image(s)/step, classifier {args.classifier} @224 (random), built in {build_s:.1f} s"
    )
    print(
        f"timing: median of {args.timed} steps after {args.warmup} warm-up steps "
        f"(render + classifier + backward to the soft tokens + Adam)\n"
    )

    rows = []
    for steps in args.steps:
        for checkpointing in (False, True):
            rows.append(measure(pipe, model, steps, checkpointing, args, device))
            print(f"  done: K={steps} checkpointing={checkpointing}", file=sys.stderr, flush=True)

    header = (
        f"| {'K':>2} | {'checkpointing':<13} | {'s/step (median)':>15} | {'min..max s':>13} "
        f"| {'peak GPU GiB':>12} | {'grad finite':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    for row in rows:
        finite = "-" if row.get("oom") else ("yes" if row["grad_finite"] else "NO")
        if row.get("oom"):
            timing, spread, peak = "OOM", "-", "OOM"
        else:
            timing = f"{row['s_per_step']:.3f}"
            spread = f"{row['s_min']:.3f}..{row['s_max']:.3f}"
            peak = f"{row['peak_gib']:.2f}" if "peak_gib" in row else "n/a (CPU)"
        ckpt = "yes" if row["checkpointing"] else "no"
        print(f"| {row['steps']:>2} | {ckpt:<13} | {timing:>15} | {spread:>13} | {peak:>12} | {finite:>11} |")
    if device.type == "cuda" and rows and "resident_gib" in rows[0]:
        print(
            f"\n(weights resident before each configuration: {rows[0]['resident_gib']:.2f} GiB, included in peak)"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"device": name, "size": args.size, "dtype": args.dtype, "rows": rows}, handle, indent=2
            )


if __name__ == "__main__":
    main()
