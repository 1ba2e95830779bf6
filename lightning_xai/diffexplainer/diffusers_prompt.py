"""DiffExplainer's soft-prompt route: soft tokens in a diffusers pipeline's text-encoder input space.

The optimised parameters are ``n`` vectors in the CLIP text encoder's *token-embedding* space (the
table the tokenizer's ids index), spliced into a caption template. The text encoder, UNet, scheduler
and VAE then run as a hand-written few-step sampler from a fixed initial latent per seed, so the
image is a differentiable function of the soft tokens and of nothing else.

diffusers and transformers are never imported at module level: this module imports without the
``diffusion`` extra and only a pipeline built by the user brings them in.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..capture import autocast_context, check_autocast_device
from ..generators.diffusers import _check_guidance, _check_int, _pipeline_digests
from .prompt import Readout

__all__ = ["DiffusersPromptGenerator"]

_INSTALL_HINT = 'install the diffusion extra: pip install "lightning-xai[diffusion]"'
_REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_DTYPE_CHOICES = (None, torch.float32, torch.bfloat16, torch.float16)
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts [0, 2**64 - 1]


class DiffusersPromptGenerator:
    """Soft tokens in a Stable-Diffusion-style pipeline, rendered by a differentiable few-step sampler.

    Implements :class:`~lightning_xai.diffexplainer.PromptGenerator`. The prompt is a float32 tensor
    ``P`` of shape ``[n, d]`` (``d`` = the text encoder's hidden size) in the text encoder's
    token-embedding space. :meth:`render` builds the token-embedding sequence::

        [BOS, emb(template prefix), P, emb(template suffix), EOS, PAD ... up to model_max_length]

    runs the CLIP text transformer on it (causal mask, final layer norm: the conditioning Stable
    Diffusion uses), then samples ``num_inference_steps`` steps with the pipeline's scheduler from
    one fixed latent per optimisation seed and decodes with the VAE, all inside the autograd graph.
    The pipeline's own ``__call__`` is never used: it runs under ``torch.no_grad``.

    Side effects on the pipeline, by design: ``unet``, ``vae`` and ``text_encoder`` are put in eval
    mode and frozen with ``requires_grad_(False)`` (only ``P`` may receive gradients), and moved to
    ``device`` when one is given. Their dtype is never changed. The scheduler is deep-copied, so
    sampling here never changes the pipeline's scheduler state. Later changes to the pipeline's
    weights show in :attr:`fingerprint`; swapping a component on the pipeline object does not
    affect this generator (it keeps the components it was built with).

    Precision: ``dtype`` None or float32 computes in the pipeline's own dtype (no autocast);
    bfloat16/float16 wrap the text encoder, UNet and VAE in ``torch.autocast``. Latents and the
    scheduler arithmetic stay float32 whatever the precision (few steps amplify rounding there).

    Reproducibility: the initial latent of seed ``s`` is ``torch.randn`` from a CPU
    ``torch.Generator().manual_seed(s)``, the same noise diffusers' pipeline draws for that
    generator, and stochastic schedulers (LCM, DDIM with eta > 0) continue from that generator, as
    in the pipeline. The same prompt and seeds give bit-identical images on the same machine.

    Args:
        pipeline: A diffusers Stable Diffusion 1.x/2.x-style pipeline (any object with ``unet``,
            ``vae``, ``text_encoder`` (a transformers ``CLIPTextModel``), ``tokenizer`` and
            ``scheduler``). UNets that need extra conditioning (SDXL) are not supported.
        n_tokens: Number of soft tokens, or None for one per token of the initial word (then any
            prompt length that fits the text encoder is accepted).
        init_word: Default word (or short phrase) for :meth:`init_prompt`.
        template: Caption with exactly one ``{}`` where the soft tokens go. Prefix and suffix are
            tokenized separately, as whole words.
        num_inference_steps: Sampler steps K (each keeps a UNet call in the graph).
        seeds: The fixed optimisation seeds; :meth:`render` returns one image per seed.
        guidance_scale: Classifier-free guidance weight; guidance (a second, unconditional UNet
            branch on ``negative_prompt``, without gradient) applies when it is > 1.
        negative_prompt: Text of the unconditional branch.
        height: Image height in pixels, or None for the UNet's sample size times the VAE scale.
        width: Image width in pixels, or None likewise.
        gradient_checkpointing: Recompute each UNet call in the backward pass
            (``torch.utils.checkpoint``, non-reentrant) instead of storing its activations: memory
            for K UNet calls drops to about one, for roughly one more forward pass of compute.
        dtype: None, ``torch.float32``, ``torch.bfloat16`` or ``torch.float16`` (autocast; float16
            needs a GPU).
        device: Move ``unet``, ``vae`` and ``text_encoder`` there (in place), or None to leave them.
        readout_words: Words :meth:`readout` may name (the tokens of each word are its candidates), or
            None for every ordinary token of the tokenizer. A model trained on a small caption
            vocabulary (the world's) is read more faithfully among the words it was trained on: the
            embeddings of other tokens never conditioned it and mean nothing to it.

    Raises:
        ValueError: For a pipeline missing a component, or a setting outside its range (the message
            names the value and what is valid).
        TypeError: For ``init_word``/``negative_prompt`` that are not strings, or ``seeds`` that is
            not a sequence.

    Example:
        >>> from lightning_xai.generators import tiny_stable_diffusion_pipeline
        >>> gen = DiffusersPromptGenerator(tiny_stable_diffusion_pipeline(), init_word="cat",
        ...                                num_inference_steps=2, seeds=(0, 1))  # doctest: +SKIP
        >>> prompt = gen.init_prompt().requires_grad_()  # doctest: +SKIP
        >>> images = gen.render(prompt)  # doctest: +SKIP
        >>> images.shape  # doctest: +SKIP
        torch.Size([2, 3, 64, 64])
        >>> images.mean().backward()  # doctest: +SKIP
        >>> prompt.grad.shape  # doctest: +SKIP
        torch.Size([3, 8])
        >>> gen.readout(prompt).caption  # doctest: +SKIP
        'a photo of cat'
    """

    proximity: float = 0.0
    default_lr: float
    """Adam step :func:`~lightning_xai.diffexplainer.optimize_prompt` uses when given none: 3% of the
    median length of a token embedding, so each step moves a soft token by a few percent of a word."""

    def __init__(
        self,
        pipeline: Any,
        *,
        n_tokens: int | None = None,
        init_word: str = "object",
        template: str = "a photo of {}",
        num_inference_steps: int = 4,
        seeds: Sequence[int] = (0,),
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        gradient_checkpointing: bool = False,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        readout_words: Sequence[str] | None = None,
    ):
        missing = [name for name in _REQUIRED_COMPONENTS if getattr(pipeline, name, None) is None]
        if missing:
            raise ValueError(
                f"pipeline is missing the component(s) {missing}; DiffusersPromptGenerator needs "
                f"{list(_REQUIRED_COMPONENTS)} (a Stable Diffusion-style pipeline)"
            )
        unet, vae, text_encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
        self._text_model = _clip_text_transformer(text_encoder)
        # "text" pools the prompt embeddings the UNet already receives; every other kind (SDXL's
        # "text_time", Kandinsky's image embeddings) needs inputs this generator does not produce
        if getattr(unet.config, "addition_embed_type", None) not in (None, "text"):
            raise ValueError(
                f"the UNet needs extra conditioning (addition_embed_type="
                f"{unet.config.addition_embed_type!r}, e.g. SDXL); only UNets conditioned on the prompt "
                f"embeddings alone are supported (addition_embed_type None or 'text')"
            )

        # Settings first, so a bad argument fails before the pipeline is touched.
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(
                f"template must be a str with exactly one '{{}}' (where the soft tokens go), got {template!r}"
            )
        if not isinstance(init_word, str):
            raise TypeError(f"init_word must be a str, got {type(init_word).__name__}")
        if not isinstance(negative_prompt, str):
            raise TypeError(f"negative_prompt must be a str, got {type(negative_prompt).__name__}")
        self.num_inference_steps = _check_int("num_inference_steps", num_inference_steps, 1, 10_000)
        self.seeds = _check_seeds(seeds, allow_empty=False)
        self.guidance_scale = _check_guidance(guidance_scale)
        if gradient_checkpointing not in (True, False):
            raise ValueError(f"gradient_checkpointing must be True or False, got {gradient_checkpointing!r}")
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if not any(dtype is choice for choice in _DTYPE_CHOICES):
            raise ValueError(
                f"dtype must be one of None, torch.float32, torch.bfloat16, torch.float16 "
                f"(autocast precision), got {dtype!r}"
            )
        self.dtype = dtype
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(
                    f"device must be None, a torch.device or a string like 'cpu' or 'cuda:0', got {device!r}"
                ) from err
        self.template = template
        self.init_word = init_word
        self.negative_prompt = negative_prompt

        # Image size: the latent side must be an integer and diffusers' VAE/UNet expect multiples of 8.
        self._vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        multiple = math.lcm(8, self._vae_scale)
        default_side = int(unet.config.sample_size) * self._vae_scale
        self.height = _check_side("height", height, default_side, multiple)
        self.width = _check_side("width", width, default_side, multiple)
        self._latent_shape = (
            1,
            int(unet.config.in_channels),
            self.height // self._vae_scale,
            self.width // self._vae_scale,
        )

        # Token layout of the conditioning sequence.
        tokenizer = pipeline.tokenizer
        self._tokenizer = tokenizer
        max_positions = int(self._text_model.embeddings.position_embedding.num_embeddings)
        model_max = getattr(tokenizer, "model_max_length", None)
        # Some tokenizers report an effectively infinite model_max_length; the position table caps it.
        self._max_length = min(int(model_max), max_positions) if model_max else max_positions
        self._bos_id, self._eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        if self._bos_id is None or self._eos_id is None:
            raise ValueError(
                "the tokenizer must define bos_token_id and eos_token_id (a CLIP tokenizer does)"
            )
        pad_id = tokenizer.pad_token_id
        self._pad_id = self._eos_id if pad_id is None else pad_id
        prefix, suffix = template.split("{}")
        self._prefix_ids = self._word_ids(prefix, "template", allow_empty=True)
        self._suffix_ids = self._word_ids(suffix, "template", allow_empty=True)
        self._capacity = self._max_length - 2 - len(self._prefix_ids) - len(self._suffix_ids)
        if self._capacity < 1:
            raise ValueError(
                f"template {template!r} leaves no room for soft tokens in the text encoder's "
                f"{self._max_length} positions; use a shorter template"
            )
        init_ids = self._word_ids(init_word, "init_word")
        if n_tokens is not None:
            n_tokens = _check_int("n_tokens", n_tokens, 1, self._capacity)
        elif len(init_ids) > self._capacity:
            raise ValueError(
                f"init_word {init_word!r} has {len(init_ids)} tokens but the template leaves room for "
                f"{self._capacity}; pass n_tokens or a shorter word"
            )
        self.n_tokens = n_tokens
        self.readout_words: tuple[str, ...] | None = None
        self._readout_ids: list[int] | None = None
        if readout_words is not None:
            if isinstance(readout_words, str) or not isinstance(readout_words, Sequence) or not readout_words:
                raise TypeError(
                    f"readout_words must be None or a non-empty sequence of words, got {readout_words!r}"
                )
            for word in readout_words:
                if not isinstance(word, str):
                    raise TypeError(f"readout_words must hold strings, got {word!r}")
            self.readout_words = tuple(readout_words)
            self._readout_ids = [
                i for word in self.readout_words for i in self._word_ids(word, "readout word")
            ]

        if device is not None:
            for module in (unet, vae, text_encoder):
                module.to(device)
        devices = {_module_device(m) for m in (unet, vae, text_encoder)}
        if len(devices) != 1:
            raise ValueError(
                f"unet, vae and text_encoder are on different devices {sorted(map(str, devices))}; "
                f"pass device= to move them together (CPU offloading is not supported)"
            )
        check_autocast_device(self.dtype, next(iter(devices)))
        for module in (unet, vae, text_encoder):
            # Frozen components: gradients must reach the soft tokens only, and dropout must not
            # make the images depend on the global RNG.
            module.eval()
            module.requires_grad_(False)
        self._unet, self._vae, self._text_encoder = unet, vae, text_encoder
        self._pipeline_name = type(pipeline).__name__
        # A private scheduler: set_timesteps/step mutate scheduler state (step index, history), which
        # must neither leak into the user's pipeline nor be disturbed by it.
        self._scheduler = copy.deepcopy(pipeline.scheduler)
        self._step_takes_generator = "generator" in inspect.signature(self._scheduler.step).parameters
        self._guidance_embedding = None
        if getattr(unet.config, "time_cond_proj_dim", None) is not None:
            # Guidance-distilled (LCM) UNets take the guidance weight as an embedding instead of CFG.
            embed = getattr(pipeline, "get_guidance_scale_embedding", None)
            if embed is None:
                raise ValueError(
                    "the UNet has time_cond_proj_dim set (a guidance-distilled model) but the pipeline "
                    "has no get_guidance_scale_embedding to build its guidance embedding"
                )
            self._guidance_embedding = embed(
                torch.tensor([self.guidance_scale - 1.0]), embedding_dim=unet.config.time_cond_proj_dim
            )
        self._mask_style = _causal_mask_style(self._text_model)
        norms = self._token_embedding.weight.detach().float().norm(dim=-1)
        # Adam moves every coordinate by about lr per step, whatever the gradient: the step must be small
        # against a token's length, which differs by model (0.16 for the world's encoder, about 0.4 for CLIP)
        self.default_lr = float(0.03 * norms.median())
        self._noise_cache: dict[int, tuple[Tensor, Tensor]] = {}
        self._fixed_noise: dict[str, Tensor] = {}

    # ----------------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        """Where the pipeline's UNet (and so the whole computation) lives."""
        return _module_device(self._unet)

    @property
    def uses_guidance(self) -> bool:
        """Whether sampling runs classifier-free guidance (a second, unconditional UNet branch)."""
        return self.guidance_scale > 1.0 and self._guidance_embedding is None

    @property
    def fingerprint(self) -> str:
        """Identifies the components' weights and configs and every setting that shapes the images.

        Recomputed on each access from the components this generator uses (weights sampled as in
        :class:`~lightning_xai.generators.DiffusersGenerator`, about 0.1 s per GB on CPU), so it
        follows in-place weight edits. The device is not part of it (it changes images only by
        rounding).
        """
        components = {
            "unet": self._unet,
            "vae": self._vae,
            "text_encoder": self._text_encoder,
            "tokenizer": self._tokenizer,
            "scheduler": self._scheduler,
        }
        configs, weights = _pipeline_digests(types.SimpleNamespace(config={}, components=components))
        settings = json.dumps(
            {
                "n_tokens": self.n_tokens,
                "init_word": self.init_word,
                "template": self.template,
                "steps": self.num_inference_steps,
                "seeds": list(self.seeds),
                "guidance": self.guidance_scale,
                "negative_prompt": self.negative_prompt,
                "size": [self.height, self.width],
                "checkpointing": self.gradient_checkpointing,
                "autocast": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            },
            sort_keys=True,
        )
        return (
            f"diffusers-prompt:{self._pipeline_name}({settings},config={configs[:16]},weights={weights[:16]})"
        )

    # ------------------------------------------------------------------------------------ protocol

    def init_prompt(self, init: str | None = None) -> Tensor:
        """The token embeddings of ``init`` (default ``init_word``) as a new soft prompt.

        Args:
            init: A word or short phrase; every token must be known to the tokenizer.

        Returns:
            Float32 ``[n, d]`` on :attr:`device`, not requiring grad: one row per token of ``init``,
            or, with ``n_tokens`` set, those rows cycled or truncated to ``n_tokens``.

        Raises:
            ValueError: If ``init`` has no tokens, an unknown token, or too many tokens.
        """
        word = self.init_word if init is None else init
        if not isinstance(word, str):
            raise TypeError(f"init must be None or a str, got {type(word).__name__}")
        ids = self._word_ids(word, "init")
        if self.n_tokens is not None:
            ids = [ids[i % len(ids)] for i in range(self.n_tokens)]
        elif len(ids) > self._capacity:
            raise ValueError(
                f"init {word!r} has {len(ids)} tokens but the template leaves room for {self._capacity}"
            )
        table = self._token_embedding.weight
        index = torch.tensor(ids, device=table.device)
        return table.detach()[index].to(torch.float32).clone()

    def render(self, prompt: Tensor) -> Tensor:
        """Images of ``prompt`` for the fixed optimisation seeds, differentiable in ``prompt``.

        Args:
            prompt: ``[n, d]`` soft tokens (see :meth:`init_prompt`).

        Returns:
            ``[len(seeds), 3, H, W]`` float32 in [0, 1] on :attr:`device`.

        Raises:
            ValueError: For a prompt of the wrong shape or dtype.
        """
        prompt = self._check_prompt(prompt)
        return self._generate(prompt, self.seeds, self._fixed_latents())

    def images(self, prompt: Tensor, seeds: Sequence[int]) -> Tensor:
        """Images of ``prompt`` for any seeds, without gradients.

        Rendered in batches of ``len(self.seeds)``, so the optimisation seeds give the very images
        :meth:`render` gives.

        Returns:
            Float32 CPU ``[len(seeds), 3, H, W]`` in [0, 1].
        """
        prompt = self._check_prompt(prompt).detach()
        seeds = _check_seeds(seeds, allow_empty=True)
        if not seeds:
            return torch.empty(0, 3, self.height, self.width)
        chunk = len(self.seeds)
        out = []
        with torch.no_grad():
            for start in range(0, len(seeds), chunk):
                part = seeds[start : start + chunk]
                noise = self._fixed_latents() if part == self.seeds else self._latents(part)
                out.append(self._generate(prompt, part, noise).to("cpu", torch.float32))
        return torch.cat(out)

    def readout(self, prompt: Tensor, k: int = 3) -> Readout:
        """Nearest vocabulary tokens of each soft token (cosine similarity of token embeddings).

        Special tokens (start, end, padding) are never candidates. ``words`` holds each position's
        top token decoded to text; the caption is the template filled with the top tokens decoded
        as one sequence, so word pieces join up (``"pad"`` + ``"lock</w>"`` read ``"padlock"``).

        Args:
            prompt: ``[n, d]`` soft tokens.
            k: Candidates per position.

        Returns:
            A :class:`~lightning_xai.diffexplainer.Readout` with positions ``"token 1"`` ...
        """
        prompt = self._check_prompt(prompt).detach()
        k = _check_int("k", k, 1, 1_000_000)
        ids = self._candidate_ids()
        k = min(k, len(ids))
        with torch.no_grad():
            table = self._token_embedding.weight.detach()
            rows = table[ids.to(table.device)].to(torch.float32)
            sims = F.normalize(prompt.to(rows.device), dim=-1) @ F.normalize(rows, dim=-1).T
            scores, index = sims.topk(k, dim=-1)
        scores, token_ids = scores.cpu().tolist(), ids[index.cpu()].tolist()
        candidates = [
            [(self._token_text(tid), float(score)) for tid, score in zip(row_ids, row_scores)]
            for row_ids, row_scores in zip(token_ids, scores)
        ]
        top = [row[0] for row in token_ids]
        text = self._tokenizer.decode(top).replace("</w>", " ").strip()
        return Readout(
            caption=self.template.replace("{}", text),
            positions=[f"token {i + 1}" for i in range(len(top))],
            words=[row[0][0] for row in candidates],
            candidates=candidates,
        )

    def __repr__(self) -> str:
        return (
            f"DiffusersPromptGenerator({self._pipeline_name}, n_tokens={self.n_tokens}, "
            f"template={self.template!r}, steps={self.num_inference_steps}, seeds={list(self.seeds)}, "
            f"guidance_scale={self.guidance_scale}, size={self.height}x{self.width}, dtype={self.dtype}, "
            f"checkpointing={self.gradient_checkpointing})"
        )

    # -------------------------------------------------------------------------------- text encoder

    @property
    def _token_embedding(self) -> nn.Embedding:
        return self._text_model.embeddings.token_embedding

    def _encode(self, token_embeds: Tensor) -> Tensor:
        """CLIP's text transformer on a token-embedding sequence ``[B, L, d]``: last hidden state.

        Mirrors ``CLIPTextModel.forward`` after its id lookup (it has no ``inputs_embeds`` input);
        the causal mask is built the way the installed transformers builds it (see
        :func:`_causal_mask_style`).
        """
        text_model = self._text_model
        hidden = text_model.embeddings(inputs_embeds=token_embeds)
        out = text_model.encoder(
            inputs_embeds=hidden, **_causal_mask_kwargs(text_model, hidden, self._mask_style)
        )
        last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return text_model.final_layer_norm(last)

    def _conditioning(self, prompt: Tensor) -> Tensor:
        """``[1, L, d]`` text conditioning of the soft tokens spliced into the template."""
        table = self._token_embedding
        device = table.weight.device
        head = [self._bos_id, *self._prefix_ids]
        tail = [*self._suffix_ids, self._eos_id]
        tail += [self._pad_id] * (self._max_length - len(head) - prompt.shape[0] - len(tail))
        sequence = torch.cat(
            [
                table(torch.tensor(head, device=device)),
                prompt.to(device=device, dtype=table.weight.dtype),
                table(torch.tensor(tail, device=device)),
            ]
        )
        return self._encode(sequence.unsqueeze(0))

    def _unconditional(self) -> Tensor:
        """``[1, L, d]`` conditioning of the negative prompt, exactly as the pipeline encodes it."""
        ids = self._tokenizer(
            self.negative_prompt,
            padding="max_length",
            max_length=self._max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self._encode(self._token_embedding(ids))

    def _word_ids(self, text: str, what: str, *, allow_empty: bool = False) -> list[int]:
        ids = list(self._tokenizer(text, add_special_tokens=False).input_ids)
        unk = self._tokenizer.unk_token_id
        if not ids and not allow_empty:
            raise ValueError(f"{what} {text!r} gives no tokens; use a non-empty word the tokenizer knows")
        if unk is not None and unk in ids:
            raise ValueError(
                f"{what} {text!r} contains characters the tokenizer cannot encode (they map to the "
                f"unknown token {self._tokenizer.unk_token!r}); use words in the tokenizer's vocabulary"
            )
        return ids

    def _candidate_ids(self) -> Tensor:
        """Vocabulary ids with a row in the embedding table, special tokens excluded."""
        rows = self._token_embedding.num_embeddings
        special = set(self._tokenizer.all_special_ids)
        pool = self._tokenizer.get_vocab().values() if self._readout_ids is None else self._readout_ids
        ids = sorted({i for i in pool if i < rows and i not in special})
        if not ids and self.readout_words is not None:
            raise ValueError(
                f"none of readout_words {list(self.readout_words)} has an ordinary token embedding"
            )
        if not ids:
            raise ValueError("the tokenizer has no ordinary tokens to read the prompt out with")
        return torch.tensor(ids)

    def _token_text(self, token_id: int) -> str:
        text = self._tokenizer.decode([token_id]).replace("</w>", " ").strip()
        return text or self._tokenizer.convert_ids_to_tokens(token_id)

    # -------------------------------------------------------------------------------------- sampler

    def _seed_noise(self, seed: int) -> tuple[Tensor, Tensor]:
        """CPU initial noise ``[1, C, h, w]`` of one seed, and its generator's state after the draw.

        Cached for the optimisation seeds only (any number of other seeds may pass through
        :meth:`images`).
        """
        entry = self._noise_cache.get(seed)
        if entry is None:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(self._latent_shape, generator=generator)
            entry = (noise, generator.get_state())
            if seed in self.seeds:
                self._noise_cache[seed] = entry
        return entry

    def _latents(self, seeds: Sequence[int]) -> Tensor:
        return torch.cat([self._seed_noise(seed)[0] for seed in seeds])

    def _fixed_latents(self) -> Tensor:
        """The optimisation seeds' noise on the device, cached: it is the same at every step."""
        key = str(self.device)
        cached = self._fixed_noise.get(key)
        if cached is None:
            cached = self._latents(self.seeds).to(self.device)
            self._fixed_noise[key] = cached
        return cached

    def _step_generators(self, seeds: Sequence[int]) -> list[torch.Generator]:
        """One CPU generator per row, in the state diffusers' pipeline leaves after the latent draw.

        Stochastic schedulers (LCM, DDIM with eta > 0) draw their step noise from these, so that
        noise is fixed per seed too and never repeats the initial latent.
        """
        generators = []
        for seed in seeds:
            generator = torch.Generator()
            generator.set_state(self._seed_noise(seed)[1])
            generators.append(generator)
        return generators

    def _generate(self, prompt: Tensor, seeds: Sequence[int], noise: Tensor) -> Tensor:
        """The sampler: K UNet calls from ``noise`` and a VAE decode, in the autograd graph."""
        device = self.device
        scheduler = self._scheduler
        unet_dtype = self._unet.dtype
        rows = len(seeds)
        with autocast_context(self.dtype, self.device):
            context = self._conditioning(prompt).expand(rows, -1, -1)
            if self.uses_guidance:
                context = torch.cat([self._unconditional().expand(rows, -1, -1), context])
            context = context.to(unet_dtype)
            timestep_cond = None
            if self._guidance_embedding is not None:
                timestep_cond = self._guidance_embedding.to(device=device, dtype=unet_dtype).expand(rows, -1)
            scheduler.set_timesteps(self.num_inference_steps, device=device)
            # init_noise_sigma depends on the timesteps for sigma-based schedulers (Euler): read it
            # after set_timesteps, as the pipeline does.
            z = noise.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
            step_kwargs: dict[str, Any] = {}
            if self._step_takes_generator:
                step_kwargs["generator"] = self._step_generators(seeds)
            for t in scheduler.timesteps:
                model_input = torch.cat([z, z]) if self.uses_guidance else z
                model_input = scheduler.scale_model_input(model_input, t).to(unet_dtype)
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    eps = checkpoint(
                        self._unet_eps, model_input, t, context, timestep_cond, use_reentrant=False
                    )
                else:
                    eps = self._unet_eps(model_input, t, context, timestep_cond)
                eps = eps.to(torch.float32)
                if self.uses_guidance:
                    eps_uncond, eps_text = eps.chunk(2)
                    eps = eps_uncond + self.guidance_scale * (eps_text - eps_uncond)
                z = scheduler.step(eps, t, z, **step_kwargs, return_dict=False)[0]
            config = self._vae.config
            z = z / config.scaling_factor
            shift = getattr(config, "shift_factor", None)
            if shift is not None:
                z = z + shift
            x = self._vae.decode(z.to(self._vae.dtype), return_dict=False)[0]
        return ((x.to(torch.float32) + 1.0) / 2.0).clamp(0.0, 1.0)

    def _unet_eps(
        self, model_input: Tensor, t: Tensor, context: Tensor, timestep_cond: Tensor | None
    ) -> Tensor:
        kwargs = {} if timestep_cond is None else {"timestep_cond": timestep_cond}
        return self._unet(model_input, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]

    # --------------------------------------------------------------------------------------- checks

    def _check_prompt(self, prompt: object) -> Tensor:
        dim = self._token_embedding.embedding_dim
        expected = f"[{self.n_tokens if self.n_tokens is not None else 'n'}, {dim}]"
        if not isinstance(prompt, Tensor) or not prompt.is_floating_point() or prompt.ndim != 2:
            shape = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
            raise ValueError(f"prompt must be a floating tensor of shape {expected}, got {shape}")
        n = prompt.shape[0]
        if prompt.shape[1] != dim or (self.n_tokens is not None and n != self.n_tokens):
            raise ValueError(f"prompt must have shape {expected}, got {tuple(prompt.shape)}")
        if not 1 <= n <= self._capacity:
            raise ValueError(
                f"prompt has {n} soft tokens; the template leaves room for 1 to {self._capacity}"
            )
        return prompt.to(device=self.device, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ helpers


def _clip_text_transformer(text_encoder: Any) -> Any:
    """The module holding ``embeddings``/``encoder``/``final_layer_norm``.

    transformers 5 flattened ``CLIPTextModel`` (the parts are its own attributes); transformers 4
    keeps them on ``text_encoder.text_model``.
    """
    model = getattr(text_encoder, "text_model", text_encoder)
    parts = ("embeddings", "encoder", "final_layer_norm")
    if not all(hasattr(model, part) for part in parts) or not hasattr(
        getattr(model, "embeddings", None), "token_embedding"
    ):
        raise ValueError(
            f"text_encoder must be a transformers CLIPTextModel (with embeddings.token_embedding, "
            f"encoder and final_layer_norm), got {type(text_encoder).__name__}"
        )
    return model


def _causal_mask_style(text_model: Any) -> tuple[str, bool]:
    """How the installed transformers makes CLIP's text attention causal: (style, needs cache_position).

    Kept as plain data (not a closure) so the generator stays picklable, e.g. for DDP spawn.

    * ``"inputs_embeds"`` / ``"input_embeds"``: transformers 5 (and late 4.x, which named the
      argument ``input_embeds`` and required ``cache_position``) builds the mask with
      ``masking_utils.create_causal_mask``: None under SDPA attention, an additive 4-D mask under
      eager attention; the encoder also gets ``is_causal=True``. That flag matters:
      ``CLIPAttention`` sets ``is_causal = False`` on itself, so a None mask without the flag
      silently gives *bidirectional* attention.
    * ``"legacy"``: transformers 4 up to about 4.53 passes a separate 4-D ``causal_attention_mask``.
    """
    try:
        if "causal_attention_mask" in inspect.signature(text_model.encoder.forward).parameters:
            from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask  # noqa: F401

            return "legacy", False
        from transformers.masking_utils import create_causal_mask
    except ImportError as err:
        raise ImportError(
            f"DiffusersPromptGenerator needs transformers' CLIP text model; {_INSTALL_HINT}"
        ) from err
    params = inspect.signature(create_causal_mask).parameters
    return ("inputs_embeds" if "inputs_embeds" in params else "input_embeds"), "cache_position" in params


def _causal_mask_kwargs(text_model: Any, hidden: Tensor, style: tuple[str, bool]) -> dict[str, Any]:
    """Encoder keyword arguments for a causal mask over ``hidden`` (see :func:`_causal_mask_style`)."""
    name, needs_cache_position = style
    if name == "legacy":
        from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask

        causal = _create_4d_causal_attention_mask(hidden.shape[:2], hidden.dtype, device=hidden.device)
        return {"attention_mask": None, "causal_attention_mask": causal}
    from transformers.masking_utils import create_causal_mask

    kwargs: dict[str, Any] = {
        "config": text_model.config,
        name: hidden,
        "attention_mask": None,
        "past_key_values": None,
    }
    if needs_cache_position:
        kwargs["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return {"attention_mask": create_causal_mask(**kwargs), "is_causal": True}


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def _check_seeds(seeds: object, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(seeds, Tensor):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of ints in [0, {_MAX_SEED}], got {seeds!r}")
    if not seeds and not allow_empty:
        raise ValueError("seeds must not be empty: render needs at least one seed, e.g. seeds=(0,)")
    return tuple(_check_int("seed", seed, 0, _MAX_SEED) for seed in seeds)


def _check_side(name: str, value: object, default: int, multiple: int) -> int:
    if value is None:
        value = default
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < multiple
        or value % multiple
    ):
        raise ValueError(
            f"{name} must be None or a positive multiple of {multiple} pixels (the VAE and UNet need it), "
            f"got {value!r}"
        )
    return int(value)
