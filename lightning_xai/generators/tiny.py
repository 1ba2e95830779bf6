"""A tiny random Stable Diffusion pipeline that is built offline, for tests and CPU demos.

Real Stable Diffusion weights cannot be downloaded at run time (tests and CI have no network), and
the tokenizer that diffusers' own tests use is fetched from the Hub. Everything here is built from
configs: the images are meaningless noise-like textures, but the pipeline exercises the full
diffusers code path (tokenizer, text encoder, UNet, scheduler, VAE) in well under a second.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .diffusers import _check_int

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = ["tiny_stable_diffusion_pipeline"]

_INSTALL_HINT = 'install the diffusion extra: pip install "lightning-xai[diffusion]"'

# Characters that get their own token. CLIP lower-cases its input, so upper case is not needed;
# any other character maps to the unknown token (<|endoftext|>), like a word CLIP has never seen.
_TOKEN_CHARS = string.ascii_lowercase + string.digits + string.punctuation

# The VAE built below halves the resolution once: image side = 2 * UNet sample_size.
_VAE_SCALE_FACTOR = 2


def tiny_stable_diffusion_pipeline(
    seed: int = 0,
    sample_size: int = 32,
    num_train_timesteps: int = 1000,
    *,
    max_length: int = 77,
) -> StableDiffusionPipeline:
    """Build a tiny, randomly initialised :class:`~diffusers.StableDiffusionPipeline` without network.

    Images are ``2 * sample_size`` pixels square (64x64 by default). With ``num_inference_steps=2``
    eight images take about 0.2 s on two CPU cores, classifier-free guidance included. The same
    ``seed`` always gives the same weights, so two builds have the same fingerprint under
    :class:`~lightning_xai.generators.DiffusersGenerator`; a different seed gives different weights.
    The global torch RNG is left as it was.

    The tokenizer is a character-level :class:`~transformers.CLIPTokenizer`: one token per letter,
    digit or ASCII punctuation mark, in a word-final variant at the end of each word; spaces only
    mark word ends and other characters map to the unknown token. Captions that differ within their
    first ``max_length - 2`` tokens therefore get different ids and (slightly, mean |diff| about
    0.01 with guidance 7.5) different images. Longer captions are truncated, as CLIP truncates at
    77 BPE tokens: raise ``max_length`` for long slot captions such as ``"1 person, 1 cup, ..."``.

    Args:
        seed: Seed for the random weights; ``torch.manual_seed(seed)`` runs before each component.
        sample_size: Latent side of the UNet; a multiple of 4 (the image side must be a multiple
            of 8 for diffusers), at least 4.
        num_train_timesteps: Length of the DDIM noise schedule.
        max_length: Tokens per caption, start and end tokens included (CLIP uses 77).

    Returns:
        A pipeline in eval mode on CPU (float32) with no safety checker, ready for
        :class:`~lightning_xai.generators.DiffusersGenerator`. It can be saved with
        ``save_pretrained`` and loaded back offline with ``StableDiffusionPipeline.from_pretrained``.

    Raises:
        ImportError: Without diffusers and transformers (the ``diffusion`` extra).
        ValueError: For an argument outside its range.

    Example:
        >>> from lightning_xai.generators import DiffusersGenerator, tiny_stable_diffusion_pipeline
        >>> pipe = tiny_stable_diffusion_pipeline(seed=0)  # doctest: +SKIP
        >>> gen = DiffusersGenerator(pipe, num_inference_steps=2)  # doctest: +SKIP
        >>> gen.generate(["a red circle", "a blue square"], seeds=[0, 1]).shape  # doctest: +SKIP
        torch.Size([2, 3, 64, 64])
    """
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    sample_size = _check_int("sample_size", sample_size, 4, 4096)
    if sample_size % 4:
        raise ValueError(
            f"sample_size must be a multiple of 4 (image side 2 * sample_size), got {sample_size}"
        )
    num_train_timesteps = _check_int("num_train_timesteps", num_train_timesteps, 2, 100_000)
    max_length = _check_int("max_length", max_length, 3, 4096)

    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError as err:
        raise ImportError(
            f"tiny_stable_diffusion_pipeline needs diffusers and transformers; {_INSTALL_HINT}"
        ) from err

    # fork_rng restores the caller's global RNG: building a test pipeline must not shift the random
    # numbers of whatever runs next.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            block_out_channels=(4, 8),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=8,
            norm_num_groups=2,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=2,
            sample_size=sample_size * _VAE_SCALE_FACTOR,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=1000,
                hidden_size=8,
                intermediate_size=16,
                num_attention_heads=2,
                num_hidden_layers=2,
                max_position_embeddings=max_length,
                # Match the tokenizer below, so the pooled output reads the real end token.
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    return _assemble_pipeline(vae, text_encoder, _char_clip_tokenizer(max_length), unet, num_train_timesteps)


def _assemble_pipeline(vae, text_encoder, tokenizer, unet, num_train_timesteps: int = 1000):
    """A ``StableDiffusionPipeline`` of these components in eval mode, with Stable Diffusion's DDIM schedule."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # what StableDiffusionPipeline would otherwise rewrite, with a FutureWarning
    )
    for module in (unet, vae, text_encoder):
        module.eval()  # built modules start in training mode; dropout must never touch the images
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _char_clip_tokenizer(max_length: int):
    """A CLIPTokenizer whose vocabulary is single characters and whose merge list is empty.

    With no merges, CLIP's BPE leaves every word as its characters, the last one in its word-final
    ``x</w>`` form, so distinct captions give distinct ids. The files are passed positionally:
    transformers 5 renamed the constructor's ``vocab_file``/``merges_file`` to ``vocab``/``merges``
    and silently ignores the old keywords, while positions mean the same in both versions.
    """
    return _clip_tokenizer(_char_vocab(), [], max_length)


def _char_vocab() -> dict[str, int]:
    """Start and end tokens, then each character and its word-final ``x</w>`` form."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _TOKEN_CHARS:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(f"{char}</w>", len(vocab))
    return vocab


def _clip_tokenizer(vocab: dict[str, int], merges: list[str], max_length: int):
    """A ``CLIPTokenizer`` from a vocabulary and BPE merges, through temporary files (offline)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="lightning_xai_tokenizer_") as folder:
        vocab_file = Path(folder) / "vocab.json"
        merges_file = Path(folder) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)
