"""Text-to-image generators behind one interface: ``generate(captions, seeds) -> images``.

Concept-permutation importance (DEPICT) regenerates images from permuted captions; these classes
make that generation reproducible per (caption, seed) and cacheable by ``fingerprint``.

* :class:`ImageGenerator`: the protocol (also met by :class:`lightning_xai.world.WorldGenerator`).
* :class:`DiffusersGenerator`: any diffusers text-to-image pipeline, one CPU seed per image.
* :func:`tiny_stable_diffusion_pipeline`: a tiny random Stable Diffusion built offline (64x64),
  for tests and CPU demos.

diffusers and transformers are imported only when a generator or the tiny pipeline is built, so
this package imports without the ``diffusion`` extra (``pip install "lightning-xai[diffusion]"``).

Example:
    >>> from lightning_xai.generators import DiffusersGenerator, tiny_stable_diffusion_pipeline
    >>> gen = DiffusersGenerator(tiny_stable_diffusion_pipeline(), num_inference_steps=2)  # doctest: +SKIP
    >>> gen.generate(["1 person, 1 cup"], seeds=[0]).shape  # doctest: +SKIP
    torch.Size([1, 3, 64, 64])
"""

from .diffusers import DiffusersGenerator
from .protocol import ImageGenerator
from .tiny import tiny_stable_diffusion_pipeline

__all__ = ["DiffusersGenerator", "ImageGenerator", "tiny_stable_diffusion_pipeline"]
