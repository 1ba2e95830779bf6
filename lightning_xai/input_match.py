"""Generated images made to fit the classifier's inputs: its size and its number of channels.

DEPICT and DiffExplainer score images a generator draws (RGB in [0, 1], at the generator's size). Without a
``transform`` / ``preprocess`` of the user's, the callbacks pass them through :class:`MatchInput`, built from
the shape of the validation inputs: a bilinear resize to the model's ``H x W`` and, for a grayscale model, the
channel mean (a 1-channel image repeated for a 3-channel model). Both are differentiable, so DiffExplainer's
gradients still reach the prompt. A model trained on normalised inputs needs its normalisation passed as the
callback's ``transform`` / ``preprocess``: it cannot be read off the inputs.

This module imports nothing from Lightning.
"""

from __future__ import annotations

import warnings

import torch.nn.functional as F
from torch import Tensor

__all__ = ["MatchInput", "fitted_to"]


def fitted_to(shape: tuple[int, ...] | None, argument: str = "transform") -> MatchInput | None:
    """A :class:`MatchInput` for an image input ``shape`` ``[C, H, W]``, else ``None`` (not known, not an image)."""
    return MatchInput(shape, argument) if shape is not None and len(shape) == 3 else None


class MatchInput:
    """Images ``[N, C, H, W]`` to the model's input shape ``[C', H', W']``.

    Attributes:
        shape: the model's input shape.
        adapted: the shape of the first images it changed (``None`` while all already fitted).

    Example:
        >>> import torch, warnings
        >>> match = MatchInput((1, 16, 16))
        >>> with warnings.catch_warnings(record=True):
        ...     out = match(torch.rand(2, 3, 32, 32))
        >>> out.shape, match.adapted
        (torch.Size([2, 1, 16, 16]), (3, 32, 32))
    """

    def __init__(self, shape: tuple[int, ...], argument: str = "transform") -> None:
        if len(shape) != 3:
            raise ValueError(f"MatchInput needs an image input shape [C, H, W], got {list(shape)}.")
        self.shape = tuple(int(s) for s in shape)
        self.argument = argument
        self.adapted: tuple[int, ...] | None = None

    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or tuple(images.shape[1:]) == self.shape:
            return images
        c, h, w = self.shape
        if self.adapted is None:
            self.adapted = tuple(int(s) for s in images.shape[1:])
            warnings.warn(
                f"generated images {list(self.adapted)} are resized and converted to the model's inputs "
                f"{list(self.shape)}; a model trained on normalised inputs needs {self.argument}= with its "
                "normalisation as well.",
                stacklevel=2,
            )
        if tuple(images.shape[-2:]) != (h, w):
            images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if images.shape[1] != c:
            if c == 1:
                images = images.mean(1, keepdim=True)
            elif images.shape[1] == 1:
                images = images.expand(-1, c, -1, -1)
        return images

    def __repr__(self) -> str:
        return f"MatchInput({list(self.shape)})"
