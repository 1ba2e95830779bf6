"""Any diffusers text-to-image pipeline behind the ``generate(captions, seeds)`` interface."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DiffusersGenerator"]

_INSTALL_HINT = 'install the diffusion extra: pip install "lightning-xai[diffusion]"'
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1] for non-negative seeds
_SAMPLES_PER_TENSOR = 1024  # values hashed per weight tensor by the fingerprint
_TOKENIZER_DIGESTS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Config keys that say where, how or with which library version a component was saved, not what it
# computes, so a pipeline saved and loaded again keeps its fingerprint. ("dtype" is filled in by
# transformers' save_pretrained; the real dtype of every weight is hashed with the weights.)
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "architectures", "dtype", "torch_dtype"})


class DiffusersGenerator:
    """Wraps a diffusers text-to-image pipeline as an :class:`~lightning_xai.generators.ImageGenerator`.

    DEPICT-style permutation importance needs images that depend only on their own caption and seed,
    so that an original and a permuted row share their noise and unchanged rows can reuse their
    image. Diffusers draws the initial latents of row ``i`` from ``generator[i]`` when given one
    generator per row, so this class creates a fresh CPU ``torch.Generator().manual_seed(seeds[i])``
    for every row (CPU generators give the same noise on every device).

    What holds (measured with torch 2.14, diffusers 0.42 on CPU):

    * the same caption and seed give **bit-identical** images in separate calls, whatever the
      global RNG state; with the same ``batch_size`` this was also observed when the row's position
      or its batch neighbours changed;
    * the initial noise never depends on the batch, but the batched UNet/VAE arithmetic rounds
      differently for different batch sizes, so ``batch_size=1`` and ``batch_size=4`` agree only to
      within 1e-5 (max |diff| about 2e-6 on the tiny pipeline; 4 and 8 happened to be identical);
    * results on another device or with another thread count are close but not bit-identical.

    The pipeline is used as is: ``__init__`` moves it to ``device``/``dtype`` once when they are
    given, and ``generate`` turns off its progress bar for the call (restoring it afterwards) unless
    ``show_progress``. Diffusers itself resets the scheduler's timesteps on every call. Components
    should be in eval mode (``from_pretrained`` does that) or dropout would make images random.

    Args:
        pipeline: A diffusers text-to-image pipeline (``StableDiffusionPipeline`` and friends) that
            takes ``prompt``, ``generator``, ``num_inference_steps``, ``guidance_scale`` and
            ``output_type="pt"``.
        num_inference_steps: Denoising steps per image.
        guidance_scale: Classifier-free guidance weight; diffusers applies guidance when it is > 1.
        height: Image height in pixels (multiple of 8), or None for the pipeline's default.
        width: Image width in pixels (multiple of 8), or None for the pipeline's default.
        batch_size: Images per pipeline call; trades memory for speed, not the images (see above).
        dtype: Floating dtype to convert the pipeline to once, or None to keep its dtype.
        device: Device to move the pipeline to once, or None to keep it where it is.
        negative_prompt: Text to steer away from (used by diffusers only when guidance > 1).
        show_progress: Keep the pipeline's own per-step progress bar.

    Example:
        With real weights from a local folder (loading them is the user's business):

        >>> from diffusers import StableDiffusionPipeline
        >>> pipe = StableDiffusionPipeline.from_pretrained("/models/sd-v1-5")  # doctest: +SKIP
        >>> gen = DiffusersGenerator(pipe, num_inference_steps=25, dtype=torch.float16, device="cuda")  # doctest: +SKIP
        >>> gen.generate(["1 person, 1 dining table"], seeds=[7]).shape  # doctest: +SKIP
        torch.Size([1, 3, 512, 512])

        With the tiny offline pipeline used by the tests (64x64 random images):

        >>> from lightning_xai.generators import tiny_stable_diffusion_pipeline
        >>> gen = DiffusersGenerator(tiny_stable_diffusion_pipeline(seed=0), num_inference_steps=2)  # doctest: +SKIP
        >>> images = gen.generate(["a red circle", "a blue square"], seeds=[0, 0])  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        (torch.Size([2, 3, 64, 64]), torch.float32)
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 8,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        negative_prompt: str | None = None,
        show_progress: bool = False,
    ):
        diffusers = _import_diffusers()
        if not isinstance(pipeline, diffusers.DiffusionPipeline):
            raise TypeError(
                f"pipeline must be a diffusers DiffusionPipeline (e.g. StableDiffusionPipeline), "
                f"got {type(pipeline).__name__}"
            )
        self.num_inference_steps = _check_int("num_inference_steps", num_inference_steps, 1, 10_000)
        self.guidance_scale = _check_guidance(guidance_scale)
        self.height = _check_side("height", height)
        self.width = _check_side("width", width)
        self.batch_size = _check_int("batch_size", batch_size, 1, 1_000_000)
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            names = ", ".join(str(d) for d in _FLOAT_DTYPES)
            raise ValueError(f"dtype must be None or one of {names}, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(
                    f"device must be None, a torch.device or a device string like 'cpu' or 'cuda:0', "
                    f"got {device!r}"
                ) from err
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be None or a str, got {type(negative_prompt).__name__}")
        if show_progress not in (True, False):
            raise ValueError(f"show_progress must be True or False, got {show_progress!r}")
        self.negative_prompt = negative_prompt
        self.show_progress = bool(show_progress)
        if device is not None or dtype is not None:
            pipeline = pipeline.to(device=device, dtype=dtype)
        self.pipeline = pipeline
        _warn_if_training(pipeline)

    @property
    def dtype(self) -> torch.dtype:
        """The pipeline's dtype (the one it computes in, not the float32 of the returned images)."""
        return self.pipeline.dtype

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the generated images, or None if the pipeline decides at call time."""
        default = _default_side(self.pipeline)
        height = self.height if self.height is not None else default
        width = self.width if self.width is not None else default
        if height is None or width is None:
            return None
        return height, width

    @property
    def fingerprint(self) -> str:
        """Identifies the pipeline's weights and configs and this generator's settings (a cache key).

        Built from the pipeline class, the JSON of every component's config (minus keys naming the
        save path or library version), each tokenizer's vocabulary and a digest of every weight
        tensor's name, dtype, shape and 1024 evenly spaced values. Recomputed on each access, so it
        follows weights edited after construction (about 0.1 s per GB of weights on CPU; tokenizer
        digests are cached per tokenizer object). A weight edit that spares every sampled value (a
        single element changed in place) goes unnoticed; fine-tuning, LoRA fusing or a different
        checkpoint do not. The device and ``batch_size`` are not part of it: they change images
        only by rounding.
        """
        size = self.image_size
        settings = (
            f"steps={self.num_inference_steps},guidance={self.guidance_scale!r},"
            f"size={'default' if size is None else f'{size[0]}x{size[1]}'},"
            f"dtype={str(self.dtype).removeprefix('torch.')},"
            f"negative_prompt={json.dumps(self.negative_prompt)}"
        )
        configs, weights = _pipeline_digests(self.pipeline)
        name = type(self.pipeline).__name__
        return f"diffusers:{name}({settings},config={configs[:16]},weights={weights[:16]})"

    def generate(self, captions: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """Generate one image per caption, row ``i`` from ``seeds[i]`` only.

        Args:
            captions: Text prompts.
            seeds: One int in [0, 2**64 - 1] per caption (a list, NumPy array or int tensor).

        Returns:
            Float32 CPU tensor ``[N, 3, H, W]`` in [0, 1].

        Raises:
            TypeError: If ``captions`` is a single string or holds a non-string.
            ValueError: For mismatched lengths or a seed that is negative, too large or not an int.
        """
        if isinstance(captions, str):
            raise TypeError("captions must be a sequence of strings, not one string; wrap it in a list")
        captions = list(captions)
        seeds = seeds.tolist() if isinstance(seeds, Tensor) else list(seeds)
        if len(captions) != len(seeds):
            raise ValueError(
                f"got {len(captions)} captions but {len(seeds)} seeds; pass one seed per caption"
            )
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"every caption must be a str, got {type(caption).__name__}: {caption!r}")
        seeds = [_check_int("seed", seed, 0, _MAX_SEED) for seed in seeds]
        if not captions:
            height, width = self.image_size or (0, 0)
            return torch.empty(0, 3, height, width)
        chunks = []
        with torch.no_grad(), _progress_bar(self.pipeline, self.show_progress):
            for start in range(0, len(captions), self.batch_size):
                stop = start + self.batch_size
                chunks.append(self._generate_chunk(captions[start:stop], seeds[start:stop]))
        return torch.cat(chunks)

    __call__ = generate

    def _generate_chunk(self, captions: list[str], seeds: list[int]) -> Tensor:
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "output_type": "pt",
        }
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        if self.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(captions)  # diffusers wants a list
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        output = self.pipeline(prompt=captions, generator=generators, **kwargs)
        images = output.images if hasattr(output, "images") else output[0]
        return _as_image_tensor(images, len(captions))

    def __repr__(self) -> str:
        size = self.image_size
        return (
            f"DiffusersGenerator({type(self.pipeline).__name__}, steps={self.num_inference_steps}, "
            f"guidance_scale={self.guidance_scale}, size={size}, batch_size={self.batch_size}, "
            f"dtype={self.dtype})"
        )


# --------------------------------------------------------------------------------------- checks


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError(f"DiffusersGenerator needs diffusers; {_INSTALL_HINT}") from err
    return diffusers


def _check_int(name: str, value: object, low: int, high: int) -> int:
    """Accept Python and NumPy ints (not bools or floats such as 3.0) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def _check_guidance(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"guidance_scale must be a finite number >= 0 (guidance applies when > 1), got {value!r}"
        )
    return float(value)


def _check_side(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 8 or value % 8:
        raise ValueError(f"{name} must be None or a positive multiple of 8 (pixels), got {value!r}")
    return int(value)


def _warn_if_training(pipeline: Any) -> None:
    training = sorted(
        name
        for name, component in pipeline.components.items()
        if isinstance(component, nn.Module) and component.training
    )
    if training:
        warnings.warn(
            f"pipeline components {training} are in training mode, so dropout (if any) would make "
            f"images depend on the global RNG; call .eval() on them",
            UserWarning,
            stacklevel=3,
        )


def _default_side(pipeline: Any) -> int | None:
    """The square side diffusers picks when height/width are None (UNet or transformer sample size)."""
    scale = getattr(pipeline, "vae_scale_factor", None)
    if not isinstance(scale, int):
        return None
    for name in ("unet", "transformer"):
        config = getattr(getattr(pipeline, name, None), "config", None)
        sample_size = getattr(config, "sample_size", None)
        if isinstance(sample_size, int) and not isinstance(sample_size, bool):
            return sample_size * scale
    return None


# ------------------------------------------------------------------------------------ execution


@contextmanager
def _progress_bar(pipeline: Any, show: bool) -> Iterator[None]:
    """Silence diffusers' per-step bar for one call, then restore whatever the user had set."""
    if show:
        yield
        return
    missing = object()
    saved = pipeline.__dict__.get("_progress_bar_config", missing)
    pipeline.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        if saved is missing:
            pipeline.__dict__.pop("_progress_bar_config", None)
        else:
            pipeline._progress_bar_config = saved


def _as_image_tensor(images: Any, count: int) -> Tensor:
    """Pipeline output (``pt`` tensor, or ``np`` array for pipelines that ignore "pt") -> float32 CPU."""
    if isinstance(images, Tensor):
        tensor = images
    else:
        import numpy as np

        if not isinstance(images, np.ndarray):
            raise TypeError(
                f"the pipeline returned {type(images).__name__} for output_type='pt'; "
                f"expected a tensor [N, 3, H, W] or an array [N, H, W, 3]"
            )
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2)
    if tensor.ndim != 4 or tensor.shape[0] != count or tensor.shape[1] != 3:
        raise ValueError(
            f"the pipeline returned images of shape {tuple(tensor.shape)}, expected [{count}, 3, H, W]"
        )
    return tensor.detach().to(device="cpu", dtype=torch.float32).clamp_(0.0, 1.0).contiguous()


# ---------------------------------------------------------------------------------- fingerprint


def _pipeline_digests(pipeline: Any) -> tuple[str, str]:
    """(config digest, weights digest) of a pipeline, as sha1 hex strings."""
    configs = hashlib.sha1()
    weights = hashlib.sha1()
    configs.update(_config_json(getattr(pipeline, "config", {})).encode())
    for name, component in sorted(pipeline.components.items()):
        configs.update(f"\0{name}:{type(component).__module__}.{type(component).__qualname__}\0".encode())
        if component is None:
            continue
        if isinstance(component, nn.Module):
            weights.update(f"\0{name}\0".encode())
            _update_weights_digest(weights, component)
        if hasattr(component, "get_vocab"):
            configs.update(f"tokenizer={_tokenizer_digest(component)}".encode())
        config = getattr(component, "config", None)
        if config is not None:
            configs.update(_config_json(config).encode())
        elif hasattr(component, "to_dict"):  # image processors / feature extractors
            configs.update(_config_json(component.to_dict()).encode())
    return configs.hexdigest(), weights.hexdigest()


def _config_json(config: Any) -> str:
    """Canonical JSON of a diffusers FrozenDict or a transformers PretrainedConfig."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.dumps(_drop_volatile(data), sort_keys=True, default=str)


def _drop_volatile(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {
            str(key): _drop_volatile(value)
            for key, value in data.items()
            if not str(key).startswith("_") and key not in _VOLATILE_CONFIG_KEYS
        }
    if isinstance(data, (list, tuple)):
        return [_drop_volatile(value) for value in data]
    return data


def _tokenizer_digest(tokenizer: Any) -> str:
    """sha1 of a tokenizer's vocabulary, merges and normalisation, cached per tokenizer object.

    Serialising a real CLIP tokenizer takes about 0.3 s, too slow for a property that may be read on
    every cache lookup. A tokenizer's vocabulary only changes through ``add_tokens``, which changes
    its length, so the cached digest is reused while length and ``model_max_length`` stay the same.
    """
    signature = (len(tokenizer), getattr(tokenizer, "model_max_length", None))
    try:
        cached = _TOKENIZER_DIGESTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        return _tokenizer_sha1(tokenizer, signature)
    if cached is not None and cached[0] == signature:
        return cached[1]
    digest = _tokenizer_sha1(tokenizer, signature)
    _TOKENIZER_DIGESTS[tokenizer] = (signature, digest)
    return digest


def _tokenizer_sha1(tokenizer: Any, signature: tuple[Any, ...]) -> str:
    state: dict[str, Any] = {"signature": list(signature)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizer: its serialisation minus the per-call truncation/padding
        serialised = json.loads(backend.to_str())
        state.update({k: v for k, v in serialised.items() if k not in ("truncation", "padding")})
    else:  # slow tokenizer
        state["vocab"] = tokenizer.get_vocab()
        ranks = getattr(tokenizer, "bpe_ranks", None)
        if isinstance(ranks, Mapping):
            state["merges"] = [" ".join(pair) for pair, _ in sorted(ranks.items(), key=lambda item: item[1])]
    return hashlib.sha1(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _update_weights_digest(digest: Any, module: nn.Module) -> None:
    """Hash every parameter and buffer's name, dtype, shape and evenly spaced values.

    Sampled values are moved to CPU and widened exactly (float64 / int64) before hashing, so the
    digest is the same on every device; full sums would not be (their rounding depends on the
    device and thread count).
    """
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        digest.update(f"\0{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue  # offloaded weights have no values here; names and shapes still count
        digest.update(_sample_values(tensor.detach()))


def _sample_values(tensor: Tensor) -> bytes:
    flat = tensor.reshape(-1)
    count = flat.numel()
    stride = max(1, count // _SAMPLES_PER_TENSOR)
    sample = torch.cat([flat[::stride][:_SAMPLES_PER_TENSOR], flat[-1:]]).to("cpu")
    if sample.is_complex():
        sample = torch.view_as_real(sample)
    wide = torch.float64 if sample.is_floating_point() else torch.int64
    return sample.to(wide).numpy().tobytes()
