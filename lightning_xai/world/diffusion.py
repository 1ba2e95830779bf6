"""A Stable-Diffusion-architecture text-to-image model of the world: components, tokenizer, loading.

The architecture is Stable Diffusion's (``UNet2DConditionModel`` + ``AutoencoderKL`` + ``CLIPTextModel`` +
``CLIPTokenizer`` + a DDIM scheduler), scaled down to the world: 32x32 images (the world's 64x64 scenes
rendered at half size), a 16x16x4 latent (or a 32x32x4 one), a 2-layer text encoder and a tokenizer
whose vocabulary holds every caption word as one token. :func:`world_diffusion_pipeline` builds it with random weights;
``examples/train_world_diffusion.py`` trains it on captions rendered by the world, and
:func:`load_world_diffusion` loads the trained model that ships in ``lightning_xai/assets/world_diffusion``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from .vocab import COLOURS, SHAPES, TEXTURES, Slots

__all__ = [
    "WORLD_DIFFUSION_DIR",
    "WORLD_WORDS",
    "load_world_diffusion",
    "world_diffusion_held_out",
    "world_diffusion_pipeline",
    "world_tokenizer",
]

WORLD_DIFFUSION_DIR = Path(__file__).resolve().parent.parent / "assets" / "world_diffusion"
"""Where the trained world pipeline ships inside the package (``save_pretrained`` layout)."""

WORLD_WORDS: tuple[str, ...] = (
    "a", "an", "on", "with", "background", "marker", "empty", *SHAPES, *COLOURS, *TEXTURES,
)  # fmt: skip
"""Every word of the world's captions; each is one token of :func:`world_tokenizer`."""

_INSTALL_HINT = 'install the diffusion extra: pip install "lightning-xai[diffusion]"'


def world_diffusion_held_out() -> list[Slots]:
    """The 24 captions the shipped model never saw in training: one texture per shape-colour pair.

    Every (shape, colour) pair appears once, with texture ``TEXTURES[i % 5]`` for the ``i``-th pair,
    with and without the marker; training drew no scene with such a (shape, colour, texture) triple,
    so generating them tests whether the model composes concepts rather than recalls scenes.

    Example:
        >>> [s.caption for s in world_diffusion_held_out()[:2]]
        ['a red circle on a plain background', 'a red circle on a plain background with a marker']
    """
    grid = []
    for i, (shape, colour) in enumerate(itertools.product(SHAPES, COLOURS)):
        texture = TEXTURES[i % len(TEXTURES)]
        grid += [Slots(shape, colour, texture, False), Slots(shape, colour, texture, True)]
    return grid


def world_tokenizer(max_length: int = 16) -> Any:
    """A ``CLIPTokenizer`` with one token per world word (and single characters for anything else).

    The BPE merges spell each word of :data:`WORLD_WORDS` letter by letter, so CLIP's tokenizer turns
    ``"a red circle"`` into the three tokens ``a</w> red</w> circle</w>``; unknown words fall back to
    characters, like a real CLIP tokenizer with a word it has never seen. Built offline.

    Example:
        >>> tok = world_tokenizer()  # doctest: +SKIP
        >>> tok.convert_ids_to_tokens(tok("a red circle").input_ids)  # doctest: +SKIP
        ['<|startoftext|>', 'a</w>', 'red</w>', 'circle</w>', '<|endoftext|>']
    """
    try:
        import transformers  # noqa: F401  (a clear error before any tokenizer work)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"world_tokenizer needs transformers; {_INSTALL_HINT}") from err
    # BPE applies the lowest-ranked pair first anywhere in a word, so one word's merge can fire inside
    # another word and break its chain ("t r" of "triangle" inside "striped"): words whose chain breaks
    # move to the front (earlier ranks) until every world word is a single token
    order = sorted(WORLD_WORDS, key=lambda w: (-len(w), w))
    for _ in range(4 * len(order)):
        tokenizer = _bpe_tokenizer(order, max_length)
        broken = [w for w in order if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
        if not broken:
            return tokenizer
        order.remove(broken[0])
        order.insert(0, broken[0])
    raise RuntimeError(f"world_tokenizer: the words {broken} do not map to single tokens")  # pragma: no cover


def _bpe_tokenizer(words: list[str], max_length: int) -> Any:
    from lightning_xai.generators.tiny import _char_vocab, _clip_tokenizer

    vocab = _char_vocab()
    merges: list[str] = []
    for word in words:
        pieces = [*word[:-1], f"{word[-1]}</w>"]
        while len(pieces) > 1:  # merge left to right: "r e" -> "re", "re d</w>" -> "red</w>"
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    return _clip_tokenizer(vocab, merges, max_length)


def world_diffusion_pipeline(
    seed: int = 0, image_size: int = 32, max_length: int = 16, latent_scale: int = 2
) -> Any:
    """A randomly initialised world text-to-image pipeline (``StableDiffusionPipeline``), built offline.

    Two sizes of latent (``torch.manual_seed(seed)`` before each component; the global RNG is restored):

    * ``latent_scale=2`` (default): ``AutoencoderKL`` with channels (32, 64), a latent of
      4 x image_size/2 x image_size/2; ``UNet2DConditionModel`` with channels (48, 96),
      cross-attention (in place of self-attention) at both resolutions, and the caption's
      attention-pooled embedding added to the timestep embedding (``addition_embed_type="text"``,
      scale-and-shift conditioning of every ResNet block); a DDIM scheduler with Stable Diffusion's
      scaled-linear noise schedule.
    * ``latent_scale=1``: the UNet denoises at the image's own resolution. ``AutoencoderKL`` with one
      block of 32 channels and no mid-block attention (latent 4 x image_size x image_size);
      ``UNet2DConditionModel`` with channels (32, 64, 64) and cross-attention only at the lowest
      resolution (attention over 16x16 tokens doubled a CPU training step); DDPM's linear noise
      schedule (made for 32x32 pixel-space models).

    Both: cross-attention dim 64, ``CLIPTextModel`` with hidden size 64, 2 layers, 4 heads, and
    :func:`world_tokenizer`. Train it with ``examples/train_world_diffusion.py``.

    Example:
        >>> pipe = world_diffusion_pipeline()  # doctest: +SKIP
        >>> pipe("a red circle on a striped background", num_inference_steps=2, output_type="pt").images.shape  # doctest: +SKIP
        torch.Size([1, 3, 32, 32])
    """
    try:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from lightning_xai.generators.tiny import _assemble_pipeline
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"world_diffusion_pipeline needs diffusers and transformers; {_INSTALL_HINT}"
        ) from err
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
    if latent_scale not in (1, 2):
        raise ValueError(f"latent_scale={latent_scale!r} is not supported; choose one of [1, 2]")
    pixel = latent_scale == 1
    tokenizer = world_tokenizer(max_length)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        blocks = (32,) if pixel else (32, 64)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=blocks,
            down_block_types=("DownEncoderBlock2D",) * len(blocks),
            up_block_types=("UpDecoderBlock2D",) * len(blocks),
            latent_channels=4,
            norm_num_groups=16,
            sample_size=image_size,
            # attention over every pixel of a 32x32 latent is costly; the keyword only where it is needed,
            # so the default architecture builds with diffusers releases that predate it
            **({"mid_block_add_attention": False} if pixel else {}),
        )
        torch.manual_seed(seed)
        if pixel:
            unet_blocks: dict[str, Any] = {
                "block_out_channels": (32, 64, 64),
                "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            }
        else:
            unet_blocks = {
                "block_out_channels": (48, 96),
                "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                # the caption also reaches every ResNet block: its attention-pooled embedding joins the
                # timestep's and scales and shifts the features (FiLM), so global facts (colour, marker)
                # need not pass through attention maps; after 1000 CPU steps colour read 0.98 and the
                # marker 1.00 (0.94 and 0.98 with cross-attention alone)
                "addition_embed_type": "text",
                "addition_embed_type_num_heads": 4,
                "resnet_time_scale_shift": "scale_shift",
                # cross-attention replaces self-attention over the 16x16 latent: the objects span a few
                # latent pixels, which the convolutions already see, and a CPU training step at batch 64
                # takes 1.0 s instead of 1.6 s
                "only_cross_attention": True,
            }
        unet = UNet2DConditionModel(
            sample_size=image_size // latent_scale,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            cross_attention_dim=64,
            attention_head_dim=8,
            norm_num_groups=16,
            **unet_blocks,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=max(tokenizer.vocab_size, len(tokenizer)),
                hidden_size=64,
                intermediate_size=128,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=max_length,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    pipe = _assemble_pipeline(vae, text_encoder, tokenizer, unet)
    if pixel:
        pipe.scheduler = DDIMScheduler.from_config(
            pipe.scheduler.config, beta_schedule="linear", beta_start=1e-4, beta_end=0.02
        )
    return pipe


def load_world_diffusion(device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """The trained text-to-image model of the world that ships with the package, loaded offline.

    A ``StableDiffusionPipeline`` (:func:`world_diffusion_pipeline`'s default architecture, 13 MB of
    float32 weights, trained by ``examples/train_world_diffusion.py``) that draws 32x32 world scenes from
    captions such as ``"a red circle on a striped background with a marker"``. On the 24 captions of
    :func:`world_diffusion_held_out`, which it never saw, a concept detector read back shape 0.99 and
    colour, texture and marker 1.00 (4 seeds each, 25 DDIM steps, guidance 4; the figures use those
    settings). Never touches the network. The progress bar is off; turn it on with
    ``pipe.set_progress_bar_config(disable=False)``.

    Args:
        device: Where to put the pipeline (default: the CPU).
        dtype: Weight dtype (default: float32, as stored).

    Example:
        >>> pipe = load_world_diffusion()  # doctest: +SKIP
        >>> pipe("a blue square on a dotted background", output_type="pt").images.shape  # doctest: +SKIP
        torch.Size([1, 3, 32, 32])
    """
    try:
        from diffusers import StableDiffusionPipeline
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"load_world_diffusion needs diffusers and transformers; {_INSTALL_HINT}") from err
    if not (WORLD_DIFFUSION_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no trained world diffusion model at {WORLD_DIFFUSION_DIR}; this installation lacks the package "
            "data (reinstall lightning-xai) or train one: python examples/train_world_diffusion.py"
        )
    pipe = StableDiffusionPipeline.from_pretrained(WORLD_DIFFUSION_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # .to rather than from_pretrained's dtype keyword, which diffusers renamed (torch_dtype -> dtype)
    if device is not None or dtype is not None:
        pipe = pipe.to(device=device, dtype=dtype)
    return pipe
