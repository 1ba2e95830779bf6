"""A generation cache: every (generator, caption, seed) image is generated once per run.

DEPICT's cost is generation; scoring a classifier on the images is cheap. While a model trains, the
images do not change (only the classifier does), so they are generated on the first explained epoch
and re-scored every later one. Keys include the generator's fingerprint (weights and settings), so a
changed generator never reuses stale images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["GenerationCache", "GeneratorOutputError"]


class GeneratorOutputError(ValueError):
    """A generator returned something other than float images ``[N, 3, H, W]``."""


# Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit): a block is mapped on its own, outside the heap.
_BLOCK_BYTES = 64 << 20


class _ImageBlocks:
    """Copies images into a few large blocks instead of one allocation each.

    Thousands of long-lived 48 KB images, allocated one by one between a training step's transient buffers,
    left glibc's heap in a state where every later training step page-faults: with DEPICT's 2083 world
    scenes kept that way, the TinyCNN's training epochs took 0.4 to 0.9 million minor page faults each
    (none without the callback) and their steps about 25% longer, and the same runs with fixed malloc
    thresholds (``MALLOC_MMAP_THRESHOLD_``) neither faulted nor slowed down. Blocks of 64 MiB are mapped
    outside the heap; rows never written stay unbacked, so a block's unused tail costs no resident memory.
    """

    def __init__(self) -> None:
        self._free: Tensor | None = None  # the unused rows of the current block

    def add(self, image: Tensor) -> Tensor:
        """A copy of ``image`` in a block (a view that keeps its block alive)."""
        free = self._free
        if free is None or free.shape[0] == 0 or free.shape[1:] != image.shape or free.dtype != image.dtype:
            rows = max(1, _BLOCK_BYTES // max(1, image.numel() * image.element_size()))
            free = torch.empty((rows, *image.shape), dtype=image.dtype)
        slot, self._free = free[0], free[1:]
        return slot.copy_(image)


class GenerationCache:
    """Images keyed by ``(generator fingerprint, caption, seed)``, in memory and optionally on disk.

    Args:
        generator: anything with ``generate(captions, seeds) -> Tensor[N, 3, H, W]`` and a ``fingerprint``
            string (:class:`~lightning_xai.world.WorldGenerator`,
            :class:`~lightning_xai.generators.DiffusersGenerator`).
        directory: optional folder; images are also stored there (one ``.pt`` file per image, named by
            its key) and read back by later runs with the same generator.
        batch_size: captions per ``generate`` call.
        show_progress: a progress bar over generation.

    Attributes:
        calls: ``generate`` calls made; generated: images generated; hits: images served from the cache.

    Example:
        >>> from lightning_xai.world import WorldGenerator
        >>> cache = GenerationCache(WorldGenerator(), show_progress=False)
        >>> cache.get(["a red circle on a plain background"] * 2, [0, 0]).shape, cache.generated
        (torch.Size([2, 3, 64, 64]), 1)
    """

    def __init__(
        self,
        generator: object,
        directory: str | os.PathLike | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> None:
        if not callable(getattr(generator, "generate", None)):
            raise TypeError(
                f"generator must have a generate(captions, seeds) method, got {type(generator).__name__}."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        self.generator = generator
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._images: dict[str, Tensor] = {}
        self._blocks = _ImageBlocks()
        self.calls = 0
        self.generated = 0
        self.hits = 0
        self.shape: tuple[int, ...] | None = None
        self._fingerprint: str | None = None
        self._keys: dict[str, dict[tuple[str, int], str]] = {}

    def _current_fingerprint(self) -> str:
        fp = getattr(self.generator, "fingerprint", None)
        if callable(fp):
            fp = fp()
        return (
            str(fp)
            if fp is not None
            else f"{type(self.generator).__module__}.{type(self.generator).__qualname__}"
        )

    @property
    def fingerprint(self) -> str:
        """The generator's fingerprint, read once per :meth:`prefetch` (a diffusers one hashes weights)."""
        if self._fingerprint is None:
            self._fingerprint = self._current_fingerprint()
        return self._fingerprint

    def key(self, caption: str, seed: int) -> str:
        fp = self.fingerprint
        memo = self._keys.get(fp)
        if memo is None:  # keys of another generator state are of no use again: keep one state's
            memo = {}
            self._keys = {fp: memo}
        # scoring looks up every permuted row of every repeat (about 20,000 per epoch for 200 rows): hash each once
        k = memo.get((caption, seed))
        if k is None:
            k = memo[(caption, seed)] = hashlib.sha256(
                f"{fp}\x00{caption}\x00{int(seed)}".encode()
            ).hexdigest()[:32]
        return k

    def __contains__(self, item: tuple[str, int]) -> bool:
        return self.key(*item) in self._images

    def __len__(self) -> int:
        return len(self._images)

    def _check(self, images: object, n: int) -> Tensor:
        name = type(self.generator).__name__
        if not isinstance(images, Tensor):
            raise GeneratorOutputError(
                f"{name}.generate returned {type(images).__name__}; expected a Tensor [N, 3, H, W]."
            )
        if images.dim() != 4 or images.shape[0] != n or images.shape[1] not in (1, 3):
            raise GeneratorOutputError(
                f"{name}.generate returned shape {list(images.shape)} for {n} captions; expected [{n}, 3, H, W]."
            )
        if not images.is_floating_point():
            raise GeneratorOutputError(
                f"{name}.generate returned dtype {images.dtype}; expected float images in [0, 1] (e.g. float32)."
            )
        if self.shape is not None and tuple(images.shape[1:]) != self.shape:
            raise GeneratorOutputError(
                f"{name}.generate returned images of shape {list(images.shape[1:])} after earlier ones of {list(self.shape)}."
            )
        self.shape = tuple(images.shape[1:])
        return images.detach().float().cpu()

    def prefetch(self, captions: Sequence[str], seeds: Sequence[int], desc: str = "generating") -> int:
        """Generate every (caption, seed) not cached yet; returns how many were generated."""
        if len(captions) != len(seeds):
            raise ValueError(
                f"got {len(captions)} captions but {len(seeds)} seeds; pass one seed per caption."
            )
        self.refresh_fingerprint()
        todo: dict[str, tuple[str, int]] = {}
        for c, s in zip(captions, seeds):
            k = self.key(c, s)
            if k in self._images or k in todo:
                continue
            if self.directory is not None and (self.directory / f"{k}.pt").exists():
                self._images[k] = self._blocks.add(torch.load(self.directory / f"{k}.pt", weights_only=True))
                continue
            todo[k] = (c, int(s))
        if not todo:
            return 0
        items = list(todo.items())
        bar = tqdm(total=len(items), desc=desc, unit="img", disable=not self.show_progress, leave=False)
        try:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                self.calls += 1
                with torch.no_grad():
                    out = self.generator.generate([c for _, (c, _) in chunk], [s for _, (_, s) in chunk])
                out = self._check(out, len(chunk))
                for (k, _), img in zip(chunk, out):
                    self._images[k] = self._blocks.add(img)
                    if self.directory is not None:
                        tmp = self.directory / f"{k}.pt.tmp"
                        torch.save(img.clone(), tmp)  # a view would save its whole batch
                        # atomic: a crash never leaves half a file
                        os.replace(tmp, self.directory / f"{k}.pt")
                self.generated += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        return len(items)

    def refresh_fingerprint(self) -> str:
        """Re-read the generator's fingerprint (once per :meth:`prefetch`): a generator whose weights or settings
        changed gets new keys, never stale images. Returns it."""
        current = self._current_fingerprint()
        if current != self._fingerprint:
            self.shape = None  # a new generator may make another image size
        self._fingerprint = current
        return current

    def images(self, keys: Sequence[str]) -> Tensor:
        """The cached images of ``keys`` (from :meth:`key`, all generated already), ``[N, 3, H, W]``.

        Raises:
            KeyError: a key that is not cached (call :meth:`prefetch` first).
        """
        self.hits += len(keys)
        return torch.stack([self._images[k] for k in keys])

    def get(self, captions: Sequence[str], seeds: Sequence[int]) -> Tensor:
        """The images of ``(captions[i], seeds[i])``, generating those not cached yet. ``[N, 3, H, W]``."""
        before = self.generated
        self.prefetch(captions, seeds)
        self.hits += len(captions) - (self.generated - before)
        return torch.stack([self._images[self.key(c, s)] for c, s in zip(captions, seeds)])
