"""DiffExplainer's soft tokens in the world diffusion model that ships with the package.

The shipped model (:func:`~lightning_xai.world.diffusion.load_world_diffusion`) was trained on
captions ``"a <colour> <shape> on a <texture> background[ with a marker]"``. This generator lays its
nine soft tokens out as such a caption after the word ``"a"`` and starts each slot *neutral*: the
colour, shape and texture tokens at the mean embedding of their slot's words, the marker tail
(``"with a marker"``) halfway between those words and padding, and the fixed words ``on a ...
background`` at their own embeddings. No slot value is favoured at the start, so what the optimised
prompt reads out is what the classifier asked for, and :meth:`ablate` can put one slot back to
neutral (the marker: to absent) to measure whether the classifier uses it (the check :func:`~lightning_xai.diffexplainer.bias_report`
takes as ``effects``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai.diffexplainer.diffusers_prompt import DiffusersPromptGenerator
from lightning_xai.diffexplainer.prompt import Readout

from .vocab import COLOURS, SHAPES, TEXTURES

__all__ = ["WORLD_PROMPT_POSITIONS", "WorldDiffusionPromptGenerator"]

WORLD_PROMPT_POSITIONS: tuple[str, ...] = (
    "colour", "shape", "on", "a", "texture", "background", "with", "a (marker)", "marker",
)  # fmt: skip
"""What each of the nine soft tokens stands for, in caption order (after the template's ``"a"``)."""

# Which positions a concept's slot occupies (what ablate() resets to neutral).
_SLOT_POSITIONS = {"colour": (0,), "shape": (1,), "texture": (4,), "marker": (6, 7, 8)}
_SLOT_VALUES = {"colour": COLOURS, "shape": SHAPES, "texture": TEXTURES, "marker": ("present",)}


class WorldDiffusionPromptGenerator(DiffusersPromptGenerator):
    """Soft tokens of the shipped world diffusion model, laid out as a caption and started neutral.

    A :class:`~lightning_xai.diffexplainer.DiffusersPromptGenerator` with the template ``"a {}"``,
    nine soft tokens (:data:`WORLD_PROMPT_POSITIONS`), a readout among the world's words only, and
    :meth:`init_prompt` returning the neutral prompt (see the module docstring). Images are 32x32;
    pass :class:`~lightning_xai.diffexplainer.ClassifierInput` as ``preprocess`` for a classifier of
    another size.

    Measured on the default task (``shape_texture``) with a TinyCNN trained on 32x32 renders, 4 seeds,
    4 DDIM steps, Adam lr 0.005 (:attr:`default_lr`): the optimised images of circle/lined, square/unlined and
    triangle/lined were classified as their class with mean probability 0.94, 0.92 and 0.95, and the
    readout named the class's shape for the first two and a lined texture for the third
    (``tests/test_world_diffusion_model.py``).

    Args:
        pipeline: The world pipeline, or None to load the shipped one.
        num_inference_steps, seeds, guidance_scale, **kwargs: As for
            :class:`~lightning_xai.diffexplainer.DiffusersPromptGenerator` (``template``, ``n_tokens``,
            ``init_word`` and ``readout_words`` are fixed here).

    Example:
        >>> gen = WorldDiffusionPromptGenerator(seeds=(0, 1))  # doctest: +SKIP
        >>> gen.readout(gen.init_prompt()).positions[:2]  # doctest: +SKIP
        ['colour', 'shape']
        >>> gen.render(gen.init_prompt()).shape  # doctest: +SKIP
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        pipeline: Any = None,
        *,
        num_inference_steps: int = 4,
        seeds: Sequence[int] = (0, 1, 2, 3),
        guidance_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        fixed = {"template", "n_tokens", "init_word", "readout_words"} & set(kwargs)
        if fixed:
            raise TypeError(
                f"WorldDiffusionPromptGenerator sets {sorted(fixed)} itself; use DiffusersPromptGenerator "
                "for another layout"
            )
        if pipeline is None:
            from .diffusion import load_world_diffusion

            pipeline = load_world_diffusion()
        from .diffusion import WORLD_WORDS

        super().__init__(
            pipeline,
            n_tokens=len(WORLD_PROMPT_POSITIONS),
            init_word="neutral",
            template="a {}",
            num_inference_steps=num_inference_steps,
            seeds=seeds,
            guidance_scale=guidance_scale,
            readout_words=WORLD_WORDS,
            **kwargs,
        )
        self._neutral = self._neutral_prompt()
        self.default_lr = 0.005  # measured (the class docstring); 3% of a token's length would be 0.0048
        # "marker" removed is the caption without it, whose tail is padding (neutral still draws it half the time)
        self._absent = {"marker": self._pad_embedding().expand(len(_SLOT_POSITIONS["marker"]), -1)}

    def _pad_embedding(self) -> Tensor:
        return self._token_embedding.weight.detach()[self._pad_id].to(torch.float32)

    def _word_embedding(self, word: str) -> Tensor:
        ids = self._word_ids(word, "world word")
        if len(ids) != 1:
            raise ValueError(
                f"the pipeline's tokenizer splits the world word {word!r} into {len(ids)} tokens; "
                "WorldDiffusionPromptGenerator needs the world tokenizer (one token per world word)"
            )
        return self._token_embedding.weight.detach()[ids[0]].to(torch.float32)

    def _neutral_prompt(self) -> Tensor:
        def mean(words: Sequence[str]) -> Tensor:
            return torch.stack([self._word_embedding(w) for w in words]).mean(0)

        pad = self._pad_embedding()
        rows = [
            mean(COLOURS),
            mean(SHAPES),
            self._word_embedding("on"),
            self._word_embedding("a"),
            mean(TEXTURES),
            self._word_embedding("background"),
            # a caption without the marker ends in padding there: halfway leaves the marker undecided
            (self._word_embedding("with") + pad) / 2,
            (self._word_embedding("a") + pad) / 2,
            (self._word_embedding("marker") + pad) / 2,
        ]
        return torch.stack(rows)

    def init_prompt(self, init: str | None = None) -> Tensor:
        """The neutral prompt (``init`` None), or the token embeddings of a caption's words.

        Args:
            init: None, or a phrase whose tokens are cycled to nine soft tokens (see
                :meth:`DiffusersPromptGenerator.init_prompt`).
        """
        if init is None:
            return self._neutral.clone()
        return super().init_prompt(init)

    def ablate(self, prompt: Tensor, concept: str) -> Tensor | None:
        """The prompt with ``concept`` removed, or None for an unknown concept.

        ``concept`` is ``"<slot>:<value>"``. A colour, shape or texture slot is put back to neutral
        (every object has some colour, shape and texture), whatever value it had drifted to;
        ``"marker:present"`` turns the marker tail into padding, the caption without a marker.

        Example:
            >>> gen = WorldDiffusionPromptGenerator(seeds=(0,))  # doctest: +SKIP
            >>> p = gen.init_prompt() + 1.0  # doctest: +SKIP
            >>> torch.equal(gen.ablate(p, "colour:red")[0], gen.init_prompt()[0])  # doctest: +SKIP
            True
        """
        slot, _, value = str(concept).partition(":")
        if slot not in _SLOT_POSITIONS or value not in _SLOT_VALUES[slot]:
            return None
        prompt = self._check_prompt(prompt).detach()
        out = prompt.clone()
        index = list(_SLOT_POSITIONS[slot])
        out[index] = (self._absent[slot] if slot in self._absent else self._neutral[index]).to(out)
        return out

    def readout(self, prompt: Tensor, k: int = 3) -> Readout:
        """Nearest world words of each soft token, with positions named by what they stand for."""
        base = super().readout(prompt, k)
        return Readout(base.caption, list(WORLD_PROMPT_POSITIONS), base.words, base.candidates)

    def __repr__(self) -> str:
        return "World" + super().__repr__()
