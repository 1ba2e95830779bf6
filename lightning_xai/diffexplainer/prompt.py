"""The optimisable prompt generator interface and the read-out of an optimised prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["PromptGenerator", "Readout"]


@dataclass
class Readout:
    """What an optimised prompt says in words.

    Attributes:
        caption: A readable caption: the generator's template filled with the top word of each
            position (``"a green circle on a striped background"``, ``"a photo of padlock wood"``).
        positions: Name of each optimised position: a caption slot (``"shape"``) or a soft token
            (``"token 1"``).
        words: The top word of each position.
        candidates: Per position, the top-k ``(word, score)`` pairs, best first. Scores are slot
            probabilities for the world, cosine similarities to the vocabulary for soft tokens.

    Example:
        >>> r = Readout("a red circle", ["colour", "shape"], ["red", "circle"], [[("red", 0.9)], [("circle", 0.8)]])
        >>> r.changed_since(Readout("a blue circle", ["colour", "shape"], ["blue", "circle"], [[], []]))
        {'colour': ('blue', 'red')}
    """

    caption: str
    positions: list[str]
    words: list[str]
    candidates: list[list[tuple[str, float]]] = field(default_factory=list)

    def changed_since(self, previous: Readout | None) -> dict[str, tuple[str, str]]:
        """``{position: (previous word, word)}`` for every position whose top word changed."""
        if previous is None:
            return {}
        old = dict(zip(previous.positions, previous.words))
        return {p: (old[p], w) for p, w in zip(self.positions, self.words) if p in old and old[p] != w}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what :meth:`from_dict` reads)."""
        return {
            "caption": self.caption,
            "positions": list(self.positions),
            "words": list(self.words),
            "candidates": [[[w, float(s)] for w, s in c] for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Readout:
        return cls(
            data["caption"],
            list(data["positions"]),
            list(data["words"]),
            [[(str(w), float(s)) for w, s in c] for c in data.get("candidates", [])],
        )


@runtime_checkable
class PromptGenerator(Protocol):
    """A text-conditioned image generator that is differentiable in its prompt parameters.

    DiffExplainer optimises the prompt so that the generated images maximise a classifier's class
    (or a neuron). Implementations:

    * :class:`~lightning_xai.diffexplainer.WorldPromptGenerator`: the planted-concept world; the
      prompt is a set of logits over each caption slot's words and the image is the
      softmax-weighted mixture of the slot values (exact ground truth, CPU).
    * :class:`~lightning_xai.diffexplainer.DiffusersPromptGenerator`: soft tokens in a diffusers
      pipeline's text-encoder input space, a fixed initial latent and a differentiable few-step
      sampler.

    Contract:

    * ``init_prompt(init)`` returns a new float32 tensor on ``device`` (not requiring grad), from
      a word or caption ``init`` or the generator's default.
    * ``render(prompt)`` returns ``[B, 3, H, W]`` images in [0, 1] for the generator's fixed
      optimisation seeds, differentiable in ``prompt``; nothing else gets a gradient.
    * ``images(prompt, seeds)`` renders the same prompt with other seeds, without gradients:
      float32 CPU ``[len(seeds), 3, H, W]``.
    * ``readout(prompt, k)`` says in words what the prompt holds (:class:`Readout`).
    * ``fingerprint`` changes whenever the images for a given prompt could change.
    * ``proximity`` is the default weight of the prior ``||prompt - initial prompt||^2``.
    * Optional: ``default_lr``, the Adam step :func:`~lightning_xai.diffexplainer.optimize_prompt` uses
      when given none (0.1 otherwise).
    * Optional: ``ablate(prompt, concept)`` returns the prompt with one concept removed (or None when it
      cannot say); the bias report uses it to check that a flagged concept matters to the classifier.
    """

    proximity: float

    @property
    def fingerprint(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    def init_prompt(self, init: str | None = None) -> Tensor: ...

    def render(self, prompt: Tensor) -> Tensor: ...

    def images(self, prompt: Tensor, seeds: Sequence[int]) -> Tensor: ...

    def readout(self, prompt: Tensor, k: int = 3) -> Readout: ...
