"""The planted-concept world as an optimisable prompt generator (exact, differentiable, CPU)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai.diffexplainer.prompt import Readout

from .render import RENDERER_VERSION, render_batch
from .vocab import COLOURS, MARKER_VALUES, SHAPES, TEXTURES, Slots

__all__ = ["WorldPromptGenerator"]

_SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shape", SHAPES),
    ("colour", COLOURS),
    ("texture", TEXTURES),
    ("marker", MARKER_VALUES),
)
_SIZES = [len(v) for _, v in _SLOTS]
_WORD_SLOT = {w: (i, j) for i, (_, values) in enumerate(_SLOTS) for j, w in enumerate(values)}
_WORD_SLOT["marker"] = (3, MARKER_VALUES.index("present"))


class WorldPromptGenerator:
    """World captions as a differentiable prompt: logits over each caption slot's words.

    The prompt is one vector of ``3 + 4 + 5 + 2 = 14`` logits: the words of the ``shape``,
    ``colour``, ``texture`` and ``marker`` slots (:attr:`SLOT_WORDS`). Each slot's softmax is a
    distribution over its words, and :meth:`render` draws the softmax-weighted mixture of the slot
    values. The renderer is linear in each slot's one-hot value (background, object colour inside
    the object mask, marker over both), so a mixture is exactly the expected image over captions
    drawn slot by slot from the weights: it is computed from the 120 renders of every caption with
    the same seed, and its gradient with respect to the logits is exact.

    Relaxation. With ``relaxation="softmax"`` the weights are the plain softmax, so the classifier
    sees blended scenes (a 50/50 red-green object is one olive object), which are unlike any training
    scene; optimising them pushes slots the label does not depend on (colour) to one value just to
    make the object look like a real one. The default ``"gumbel"`` draws the weights as a
    Gumbel-softmax (Jang et al. 2017; DEXTER uses it for its prompt words) at temperature
    ``gumbel_tau``: a fresh, nearly one-hot sample per image and step, so the objective becomes the
    expected objective over real scenes. The noise stream restarts at every :meth:`init_prompt`
    call, so a run repeats exactly.

    ``proximity`` (0.01) is the weight of the prior ``||logits - initial||^2`` that
    :func:`~lightning_xai.diffexplainer.optimize_prompt` adds: Adam scales every coordinate's step to
    about ``lr`` however small its gradient, so without a prior, slots the classifier barely uses
    (a tiny but consistent cue) would be driven to a corner as fast as the slots that decide the
    class. With the prior, a slot moves in proportion to how much it matters.

    :meth:`images` shows what a prompt stands for as real scenes: one caption per seed, drawn from
    the slot distributions (sharpened by ``temperature`` < 1).

    Args:
        size: Image side in pixels.
        seeds: Scene seeds (object position, size, texture phase, noise, ...) of the images that
            are optimised together; the objective is their mean.
        init_strength: Logit given to each word of an ``init`` caption by :meth:`init_prompt`.
        temperature: Sampling temperature of :meth:`images` (1: the prompt's own distribution;
            0: always the readout caption).
        relaxation: ``"gumbel"`` or ``"softmax"`` (see above).
        gumbel_tau: Temperature of the Gumbel-softmax (lower: closer to one-hot, noisier gradients).
        noise_seed: Seed of the Gumbel noise stream.
        device: Where the prompt and the images live.

    Example:
        >>> gen = WorldPromptGenerator(size=32, seeds=(0, 1))
        >>> p = gen.init_prompt("a red circle")
        >>> gen.render(p).shape
        torch.Size([2, 3, 32, 32])
        >>> gen.readout(p).caption
        'a red circle on a plain background with a marker'
    """

    proximity: float = 0.01
    default_lr: float = 0.1  # Adam step on the slot logits when optimize_prompt is given none
    SLOT_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = _SLOTS

    def __init__(
        self,
        size: int = 64,
        seeds: Sequence[int] = (0, 1, 2, 3),
        init_strength: float = 2.0,
        temperature: float = 1.0,
        relaxation: str = "gumbel",
        gumbel_tau: float = 0.1,
        noise_seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        seeds = tuple(int(s) for s in seeds)
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty sequence of non-negative ints, got {seeds!r}")
        if not float(init_strength) > 0:
            raise ValueError(f"init_strength must be > 0, got {init_strength!r}")
        if not float(temperature) >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if relaxation not in ("gumbel", "softmax"):
            raise ValueError(f"relaxation={relaxation!r} is not supported; choose 'gumbel' or 'softmax'")
        self.relaxation = relaxation
        if not float(gumbel_tau) > 0:
            raise ValueError(f"gumbel_tau must be > 0, got {gumbel_tau!r}")
        self.gumbel_tau = float(gumbel_tau)
        self.noise_seed = int(noise_seed)
        self._noise = torch.Generator().manual_seed(self.noise_seed)
        self.size = size
        self.temperature = float(temperature)
        self.seeds = seeds
        self.init_strength = float(init_strength)
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._rendered: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # torch.Generator does not pickle (DDP spawn pickles callbacks), and the render table is rebuilt lazily
        state = self.__dict__.copy()
        state["_noise"] = None
        state["_rendered"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._noise = torch.Generator().manual_seed(self.noise_seed)

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        return (
            f"lightning_xai.world.WorldPromptGenerator(renderer={RENDERER_VERSION},size={self.size},seeds={list(self.seeds)},"
            f"relaxation={self.relaxation},gumbel_tau={self.gumbel_tau},noise_seed={self.noise_seed},temperature={self.temperature})"
        )

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def n_logits(self) -> int:
        return sum(_SIZES)

    def __repr__(self) -> str:
        return f"WorldPromptGenerator(size={self.size}, seeds={self.seeds})"

    # ------------------------------------------------------------------ prompt
    def init_prompt(self, init: str | None = None) -> Tensor:
        """Zero logits (every slot uniform), plus ``init_strength`` on each word of ``init``.

        ``init`` is any text made of vocabulary words (``"circle"``, ``"a red circle with a marker"``);
        articles and the words ``on``, ``background``, ``with``, ``a``/``an`` are ignored.

        Raises:
            ValueError: a word that is not in the world's vocabulary (the message lists it).
        """
        self._noise.manual_seed(self.noise_seed)
        logits = torch.zeros(self.n_logits, dtype=torch.float32)
        if init:
            offsets = [sum(_SIZES[:i]) for i in range(len(_SIZES))]
            skip = {"a", "an", "on", "background", "with", "the", "object"}
            for word in re.findall(r"[a-z]+", init.lower()):
                if word in skip:
                    continue
                if word not in _WORD_SLOT:
                    valid = ", ".join(w for _, values in _SLOTS for w in values)
                    raise ValueError(
                        f"init word {word!r} is not in the world's vocabulary; valid words: {valid}, marker"
                    )
                slot, j = _WORD_SLOT[word]
                logits[offsets[slot] + j] = self.init_strength
        return logits.to(self._device)

    def _check_prompt(self, prompt: Tensor) -> None:
        if not isinstance(prompt, Tensor) or prompt.shape != (self.n_logits,):
            got = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
            raise ValueError(f"a world prompt is a tensor of {self.n_logits} logits, got {got}")

    def probabilities(self, prompt: Tensor) -> list[Tensor]:
        """Each slot's word distribution (softmax of its logits), in :data:`SLOT_WORDS` order."""
        self._check_prompt(prompt)
        return [p.softmax(0) for p in torch.split(prompt, _SIZES)]

    # ------------------------------------------------------------------ images
    def _table(self) -> Tensor:
        """Every caption rendered with every optimisation seed: ``[3, 4, 5, 2, S, 3, H, W]`` (built once)."""
        if self._rendered is None:
            slots = [
                Slots(shape, colour, texture, marker == "present")
                for shape in SHAPES
                for colour in COLOURS
                for texture in TEXTURES
                for marker in MARKER_VALUES
            ]
            seeds = self.seeds
            images, _ = render_batch(
                [s for s in slots for _ in seeds],
                [sd for _ in slots for sd in seeds],
                self.size,
                return_masks=False,
            )
            self._rendered = images.view(*_SIZES, len(seeds), 3, self.size, self.size).to(self._device)
        return self._rendered

    def _mix(self, prompt: Tensor, table: Tensor) -> Tensor:
        self._check_prompt(prompt)
        n = table.shape[len(_SIZES)]
        if self.relaxation == "gumbel":
            u = (
                torch.rand((n, self.n_logits), generator=self._noise)
                .clamp_(1e-10, 1 - 1e-7)
                .to(prompt.device)
            )
            logits = (prompt.unsqueeze(0) - torch.log(-torch.log(u))) / self.gumbel_tau  # [S, K]
        else:
            logits = prompt.unsqueeze(0).expand(n, -1)
        weights = [w.softmax(1).to(table.dtype) for w in torch.split(logits, _SIZES, dim=1)]  # per seed
        x = table.movedim(len(_SIZES), 0)  # [S, 3, 4, 5, 2, C, H, W]
        for w in weights:
            x = torch.einsum("sk,sk...->s...", w, x)
        return x

    def render(self, prompt: Tensor) -> Tensor:
        """The mixture images for the optimisation seeds, ``[len(seeds), 3, size, size]``, differentiable."""
        return self._mix(prompt, self._table())

    def images(self, prompt: Tensor, seeds: Sequence[int]) -> Tensor:
        """Scenes the prompt stands for: one caption per seed, drawn from the sharpened slot distributions.

        For seed ``s`` each slot's word is drawn from ``softmax(logits / temperature)`` with a generator
        seeded by ``s``, and the caption is rendered with scene seed ``s``: real world scenes (no blended
        ghosts) whose concept frequencies follow the prompt, so a concept detector and the classifier see
        what the prompt asks for. Deterministic per seed. ``temperature=0`` renders the readout caption.
        """
        seeds = tuple(int(s) for s in seeds)
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty sequence of non-negative ints, got {seeds!r}")
        captions = self.sample_captions(prompt, seeds)
        images, _ = render_batch(captions, list(seeds), self.size, return_masks=False)
        return images

    def sample_captions(self, prompt: Tensor, seeds: Sequence[int]) -> list[str]:
        """The caption :meth:`images` draws for each seed."""
        logits = [p.detach().float().cpu() for p in torch.split(prompt, _SIZES)]
        self._check_prompt(prompt)
        captions = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(int(seed))
            words = []
            for (_, values), lg in zip(_SLOTS, logits):
                if self.temperature == 0:
                    j = int(torch.argsort(lg, descending=True, stable=True)[0])
                else:
                    j = int(torch.multinomial((lg / self.temperature).softmax(0), 1, generator=gen))
                words.append(values[j])
            captions.append(Slots(words[0], words[1], words[2], words[3] == "present").caption)
        return captions

    def ablate(self, prompt: Tensor, concept: str) -> Tensor | None:
        """The prompt with ``concept``'s slot reset to uniform (the concept removed), or None for an
        unknown concept. Used to check that a flagged concept matters to the classifier.

        Example:
            >>> gen = WorldPromptGenerator(size=16)
            >>> gen.probabilities(gen.ablate(gen.init_prompt("red circle"), "colour:red"))[1].tolist()
            [0.25, 0.25, 0.25, 0.25]
        """
        slot, _, value = str(concept).partition(":")
        names = [name for name, _ in _SLOTS]
        if slot not in names or value not in _SLOTS[names.index(slot)][1]:
            return None
        self._check_prompt(prompt)
        i = names.index(slot)
        start = sum(_SIZES[:i])
        out = prompt.detach().clone()
        out[start : start + _SIZES[i]] = 0.0
        return out

    # ------------------------------------------------------------------ words
    def readout(self, prompt: Tensor, k: int = 3) -> Readout:
        """The most probable word of each slot (and the top-k with their probabilities) as a caption."""
        probs = self.probabilities(prompt.detach().float().cpu())
        words, candidates = [], []
        for (_, values), p in zip(_SLOTS, probs):
            order = torch.argsort(p, descending=True, stable=True)[: max(1, int(k))]
            candidates.append([(values[int(i)], float(p[i])) for i in order])
            words.append(values[int(order[0])])
        caption = Slots(words[0], words[1], words[2], words[3] == "present").caption
        return Readout(caption, [name for name, _ in _SLOTS], words, candidates)
