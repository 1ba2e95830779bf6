"""The optimisable prompt generator interface (:class:`Readout`, a prompt in words, is the record's type:
:mod:`lightning_xai.results.diffusion_explainer`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from lightning_xai.results.diffusion_explainer import Readout

__all__ = ["PromptGenerator", "Readout"]


@runtime_checkable
class PromptGenerator(Protocol):
    """A text-conditioned image generator that is differentiable in its prompt parameters.

    DiffExplainer optimises the prompt so that the generated images maximise a classifier's class
    (or a neuron). Implementations:

    * :class:`~lightning_xai.world.WorldPromptGenerator`: the planted-concept world; the
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
