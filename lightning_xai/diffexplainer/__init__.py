"""DiffExplainer: optimised prompts of a generator show what a class (or neuron) has come to look for.

Pennisi et al. (2024) condition a text-to-image diffusion model on *optimised* text prompts, so
that the generated images maximise a classifier's class or a hidden feature, and read biases off
those images. This package holds the method without any Lightning code:

* :class:`PromptGenerator`: ``render(prompt) -> images``, differentiable in the prompt, with a
  :class:`Readout` of the prompt in words. Two implementations:

  - :class:`~lightning_xai.world.WorldPromptGenerator`: the planted-concept world; the prompt is a set of logits over
    each caption slot's words, the image the exact softmax mixture of the slot values (CPU, known
    ground truth).
  - :class:`DiffusersPromptGenerator`: soft tokens in a diffusers pipeline's text-encoder input
    space, a fixed initial latent, a differentiable few-step sampler over ``unet``,
    ``scheduler.step`` and ``vae.decode`` (frozen components; optional checkpointing, bf16/fp16).
  - :class:`~lightning_xai.world.WorldDiffusionPromptGenerator`: soft tokens of the world diffusion model that ships with
    the package, laid out as a world caption and started neutral (readout among the world's words,
    ``ablate`` for the bias report's effect check).

* :class:`DiffExplainer`: the method in one call, configured once; :meth:`DiffExplainer.explain` optimises
  every target's prompt (warm-started), reads it out, renders it and writes the bias report, and returns a
  :class:`DiffusionExplainerResult` (the record's typed result, with :class:`TargetExplanation`,
  :class:`Target`, :class:`Readout` and :class:`BiasReport`: :mod:`lightning_xai.results.diffusion_explainer`).
* :func:`optimize_prompt`: Adam on the prompt for a :class:`Target` (a class, a head-input neuron
  or a layer's channel), early stopping, classifier preprocessing (:class:`ClassifierInput`).
* :func:`pixel_activation_maximisation`: the pixel-space baseline (jitter, total variation,
  optional Fourier parametrisation) on the same objective and budget.
* :func:`bias_report`: concepts over-represented in the class-maximising images that are not the
  class's core concepts are flagged as suspected spurious features.

Example:
    >>> from lightning_xai.world import TinyCNN, WorldPromptGenerator
    >>> gen = WorldPromptGenerator(seeds=(0, 1))
    >>> res = optimize_prompt(TinyCNN(num_classes=6), gen, target=0, steps=3)
    >>> res.readout.positions
    ['shape', 'colour', 'texture', 'marker']
"""

from lightning_xai.results.diffusion_explainer import DiffusionExplainerResult, TargetExplanation

from .bias import BiasReport, ConceptDetector, bias_report, suspects
from .diffusers_prompt import DiffusersPromptGenerator
from .explainer import DiffExplainer
from .optimize import (
    ClassifierInput,
    PromptResult,
    Target,
    TargetObjective,
    ablation_effects,
    optimize_prompt,
)
from .pixel import PixelImage, pixel_activation_maximisation, total_variation
from .prompt import PromptGenerator, Readout

__all__ = [
    "BiasReport",
    "ClassifierInput",
    "ConceptDetector",
    "DiffExplainer",
    "DiffusersPromptGenerator",
    "DiffusionExplainerResult",
    "PixelImage",
    "PromptGenerator",
    "PromptResult",
    "Readout",
    "Target",
    "TargetExplanation",
    "TargetObjective",
    "ablation_effects",
    "bias_report",
    "optimize_prompt",
    "pixel_activation_maximisation",
    "suspects",
    "total_variation",
]
