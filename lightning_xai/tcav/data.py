"""Concept sets and random counter-example pools: loading, checking and fingerprinting.

A concept is given by example images, in any of three forms:

* a tensor ``[N, C, H, W]`` (already preprocessed the way the model expects);
* any :class:`torch.utils.data.Dataset` whose items are an image tensor, an ``(image, label, ...)``
  sequence or a dict with an ``"image"``/``"input"``/``"x"`` key;
* a folder of image files (``.png``, ``.jpg``, ...; sorted by name), read with PIL and turned into
  tensors by ``transform`` (default: :func:`torchvision.transforms.functional.to_tensor`, optionally
  resized to the model's input size).

:func:`load_images` turns each form into one tensor and raises a clear error for a concept with fewer
than 2 images or images whose shape does not fit the model. :func:`fingerprint` hashes a tensor's
bytes, shape and dtype, so caches keyed by it never serve activations of images that changed.
:func:`random_set_indices` draws the ``R + 1`` random sets of a significance test from one pool.

Nothing here imports Lightning.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai.capture import default_batch_to_input

__all__ = [
    "IMAGE_EXTENSIONS",
    "ConceptDataError",
    "ConceptSource",
    "check_folder",
    "check_images",
    "describe_source",
    "fingerprint",
    "load_images",
    "random_set_indices",
    "sample_pool",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ConceptSource = Union[Tensor, Dataset, str, "os.PathLike[str]"]
"""What a concept (or the random pool) can be given as: a tensor, a Dataset or a folder path."""

Transform = Callable[[Any], Tensor]


class ConceptDataError(ValueError):
    """A concept set or random pool that cannot be used (too few images, wrong shape, unreadable)."""


def check_folder(name: str, source: Any) -> None:
    """For a folder source: that it exists and holds at least 2 image files (cheap: nothing is read).

    Raises:
        ConceptDataError: the folder does not exist or holds fewer than 2 image files.

    Example:
        >>> check_folder("striped", "no/such/folder")
        Traceback (most recent call last):
        ...
        lightning_xai.tcav.data.ConceptDataError: Concept 'striped': the folder 'no/such/folder' does not exist.
    """
    if not isinstance(source, (str, os.PathLike)):
        return
    folder = Path(source)
    if not folder.is_dir():
        raise ConceptDataError(f"Concept {name!r}: the folder {os.fspath(folder)!r} does not exist.")
    n = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if n < 2:
        raise ConceptDataError(
            f"Concept {name!r}: the folder {os.fspath(folder)!r} holds {n} image file(s); at least 2 are needed "
            f"(extensions {list(IMAGE_EXTENSIONS)})."
        )


def describe_source(source: Any) -> str:
    """A short human description of a concept source, for error messages and records.

    Example:
        >>> describe_source(torch.zeros(5, 3, 8, 8))
        'tensor [5, 3, 8, 8]'
    """
    if isinstance(source, Tensor):
        return f"tensor {list(source.shape)}"
    if isinstance(source, (str, os.PathLike)):
        return f"folder {os.fspath(source)!r}"
    if isinstance(source, Dataset):
        try:
            return f"{type(source).__name__} of {len(source)} items"  # type: ignore[arg-type]
        except TypeError:
            return type(source).__name__
    return type(source).__name__


def _dataset_images(name: str, dataset: Dataset, max_images: int | None) -> list[Tensor]:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConceptDataError(
            f"Concept {name!r}: the Dataset {type(dataset).__name__} has no len(); pass a map-style Dataset, "
            "a tensor [N, C, H, W] or a folder of images."
        ) from None
    if max_images is not None:
        n = min(n, max_images)
    out = []
    for i in range(n):
        item = dataset[i]
        try:
            x, _ = default_batch_to_input(item)
        except TypeError as exc:
            raise ConceptDataError(
                f"Concept {name!r}: cannot read an image from item {i} of the Dataset: {exc}"
            ) from None
        out.append(x)
    return out


def _folder_images(
    name: str,
    folder: Path,
    transform: Transform | None,
    size: tuple[int, int] | None,
    max_images: int | None,
    channels: int | None = None,
) -> list[Tensor]:
    from PIL import Image
    from torchvision.transforms import functional as TF

    if not folder.exists():
        raise ConceptDataError(f"Concept {name!r}: the folder {os.fspath(folder)!r} does not exist.")
    if not folder.is_dir():
        raise ConceptDataError(f"Concept {name!r}: {os.fspath(folder)!r} is not a folder of images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if max_images is not None:
        files = files[:max_images]
    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                # the model's channels: a grayscale model reads mode-L images, any other RGB
                im = im.convert("L" if channels == 1 else "RGB")
                if transform is not None:
                    x = transform(im)
                else:
                    if size is not None and (im.height, im.width) != tuple(size):
                        # bilinear resize to the model's input size, as the Visual-TCAV reference does
                        im = im.resize((size[1], size[0]), Image.BILINEAR)
                    x = TF.to_tensor(im)
        except OSError as exc:
            raise ConceptDataError(
                f"Concept {name!r}: cannot read image {os.fspath(path)!r}: {exc}"
            ) from None
        if not isinstance(x, Tensor):
            raise ConceptDataError(
                f"Concept {name!r}: the transform returned {type(x).__name__} for {path.name}; it must return a "
                "tensor [C, H, W] (end it with torchvision.transforms.ToTensor())."
            )
        out.append(x)
    return out


def load_images(
    name: str,
    source: ConceptSource,
    transform: Transform | None = None,
    input_shape: Sequence[int] | None = None,
    max_images: int | None = None,
    min_images: int = 2,
) -> Tensor:
    """Load a concept set (or random pool) as one float tensor ``[N, C, H, W]``.

    Args:
        name: The concept's name (used in error messages).
        source: A tensor ``[N, C, H, W]``, a map-style Dataset, or a folder path.
        transform: For folders: PIL image -> tensor ``[C, H, W]``. Default: ``to_tensor`` of the image in
            the model's channels (grayscale for ``input_shape[0] == 1``, else RGB), after a bilinear resize to
            ``input_shape[-2:]`` when that is given. Ignored for other sources.
        input_shape: The model's input shape ``[C, H, W]`` (e.g. of the validation images). When
            given, every image must have exactly this shape.
        max_images: Keep at most this many images (the first ones; folders are sorted by name).
        min_images: The fewest images accepted (2: a mean and a classifier need two examples).

    Returns:
        A float tensor ``[N, C, H, W]`` on the CPU (or the source tensor's device).

    Raises:
        ConceptDataError: fewer than ``min_images`` images, images of different shapes or of a shape
            that does not fit ``input_shape``, an unreadable file or a missing folder.

    Example:
        >>> load_images("dots", torch.rand(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8])
        >>> load_images("one", torch.rand(1, 3, 8, 8))
        Traceback (most recent call last):
        ...
        lightning_xai.tcav.data.ConceptDataError: Concept 'one' has 1 image (tensor [1, 3, 8, 8]); at least 2 are needed ...
    """
    size = tuple(int(s) for s in input_shape[-2:]) if input_shape is not None else None
    if isinstance(source, Tensor):
        if (
            source.dim() == 3
            and input_shape is not None
            and len(input_shape) == 3
            and tuple(source.shape) == tuple(input_shape)
        ):
            source = source[None]
        images = source[:max_images] if max_images is not None else source
        images = images.detach()
        if images.dim() != 4:
            raise ConceptDataError(
                f"Concept {name!r}: a tensor of images must be [N, C, H, W], got shape {list(source.shape)}."
            )
    elif isinstance(source, (str, os.PathLike)):
        channels = int(input_shape[0]) if input_shape is not None and len(input_shape) == 3 else None
        listed = _folder_images(name, Path(source), transform, size, max_images, channels)
        images = _stack(name, listed, source)
    elif isinstance(source, Dataset):
        images = _stack(name, _dataset_images(name, source, max_images), source)
    else:
        raise ConceptDataError(
            f"Concept {name!r} is a {type(source).__name__}; give a tensor [N, C, H, W], a Dataset of images or "
            "the path of a folder of images."
        )
    if not images.is_floating_point():
        images = images.float()
    check_images(name, images, input_shape, min_images, source)
    return images


def _stack(name: str, listed: list[Tensor], source: Any) -> Tensor:
    if not listed:
        return torch.empty(0, 0, 0, 0)
    shapes = sorted({tuple(x.shape) for x in listed})
    if len(shapes) > 1:
        raise ConceptDataError(
            f"Concept {name!r} ({describe_source(source)}) has images of different shapes {shapes[:4]}; pass a "
            "transform that resizes them to the model's input size."
        )
    return torch.stack([x.detach() for x in listed])


def check_images(
    name: str,
    images: Tensor,
    input_shape: Sequence[int] | None = None,
    min_images: int = 2,
    source: Any = None,
) -> None:
    """Raise :class:`ConceptDataError` unless ``images`` is ``[N >= min_images, *input_shape]``.

    Example:
        >>> check_images("ok", torch.zeros(3, 3, 8, 8), input_shape=(3, 8, 8))
        >>> check_images("small", torch.zeros(3, 3, 4, 4), input_shape=(3, 8, 8))
        Traceback (most recent call last):
        ...
        lightning_xai.tcav.data.ConceptDataError: Concept 'small' has images of shape [3, 4, 4] but the model's inputs are [3, 8, 8]; ...
    """
    what = describe_source(source if source is not None else images)
    n = int(images.shape[0]) if images.dim() > 0 else 0
    if n < min_images:
        raise ConceptDataError(
            f"Concept {name!r} has {n} image{'s' if n != 1 else ''} ({what}); at least {min_images} are needed to "
            "learn a concept activation vector. Add example images of the concept."
        )
    if input_shape is not None and tuple(images.shape[1:]) != tuple(int(s) for s in input_shape):
        raise ConceptDataError(
            f"Concept {name!r} has images of shape {list(images.shape[1:])} but the model's inputs are "
            f"{[int(s) for s in input_shape]}; preprocess the concept images like the training images (for a "
            "folder, pass a transform that resizes and normalises them: concept_transform= of "
            "ConceptAttributionCallback)."
        )
    if images.is_floating_point() and not bool(torch.isfinite(images).all()):
        raise ConceptDataError(f"Concept {name!r} ({what}) contains NaN or infinite values.")


def fingerprint(tensor: Tensor) -> str:
    """A hash of a tensor's values, shape and dtype (hex, 32 characters).

    Caches keyed by it notice any change of a concept's images, in place or not.

    Example:
        >>> x = torch.zeros(2, 3)
        >>> a = fingerprint(x); x[0, 0] = 1.0
        >>> a == fingerprint(x)
        False
    """
    t = tensor.detach().to("cpu").contiguous().reshape(-1)
    # SHA-256 has hardware support on current CPUs (about twice blake2b's speed here); hashing the array's
    # buffer directly avoids a copy of the images
    h = hashlib.sha256()
    h.update(f"{t.dtype}|{list(tensor.shape)}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def random_set_indices(pool_size: int, n_sets: int, set_size: int, seed: int) -> Tensor:
    """Indices of ``n_sets`` random sets of ``set_size`` images drawn from a pool, ``[n_sets, set_size]``.

    The sets are disjoint when the pool is large enough (``n_sets * set_size <= pool_size``); otherwise each
    set is an independent seeded sample without replacement, so sets overlap but still differ.
    Deterministic for a seed.

    Raises:
        ConceptDataError: the pool has fewer than ``set_size + 1`` images, so the sets could not differ.

    Example:
        >>> random_set_indices(10, 3, 3, seed=0).shape
        torch.Size([3, 3])
    """
    if set_size < 2:
        raise ConceptDataError(f"random sets need at least 2 images each, got set_size={set_size}")
    if pool_size < set_size + 1:
        raise ConceptDataError(
            f"The random pool has {pool_size} images; random sets of {set_size} images need a pool of at least "
            f"{set_size + 1} so that the {n_sets} sets differ. Give more random images or a smaller set size."
        )
    g = torch.Generator().manual_seed(int(seed))
    if n_sets * set_size <= pool_size:
        return torch.randperm(pool_size, generator=g)[: n_sets * set_size].reshape(n_sets, set_size)
    return torch.stack([torch.randperm(pool_size, generator=g)[:set_size] for _ in range(n_sets)])


def sample_pool(images: Tensor, size: int, seed: int) -> Tensor:
    """A seeded random pool of at most ``size`` of ``images`` (e.g. of a validation sample), at least 3.

    Example:
        >>> sample_pool(torch.arange(10.0)[:, None], 4, seed=0).shape
        torch.Size([4, 1])
    """
    n = min(size, images.shape[0])
    if n < 3:
        raise ConceptDataError(
            f"The validation sample has {images.shape[0]} images; the default random pool needs at least 3. "
            "Pass random=<images> or raise max_samples."
        )
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(images.shape[0], generator=g)[:n]]
