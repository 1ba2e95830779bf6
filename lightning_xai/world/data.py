"""Datasets, a Lightning data module and probe sets (matched / isolated concept sets) of the world.

Seeds. Every scene has its own render seed, derived from the user's ``seed`` and the split so
that splits never share a scene seed::

    scene_seed = (seed * 16 + split_id) * 2**28 + index      # split ids: train 0, val 1, test 2,
                                                              # probe sets 3, interventions 4

Slot values are drawn from a separate generator (seeded by ``seed`` and the split), so the same
scene seed can be rendered with different slots (that is what matched sets and interventions do).

Marker policy (the spurious correlation):

* ``spurious_p=None`` (default): every split draws the marker independently of everything with
  probability ``marker_rate`` (default 0.5).
* ``spurious_class=c, spurious_p=p``: in the **training** split, scenes of class ``c`` carry the
  marker with probability ``p`` and scenes of other classes with probability
  ``marker_rate_other`` (default 0). Validation and test splits still draw the marker
  independently of the label with probability ``marker_rate``, so a model that relies on the
  marker loses accuracy there.
"""

from __future__ import annotations

from collections import OrderedDict

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .render import Scene, _render_uint8, _to_float, render
from .rules import DEFAULT_TASK, LabelRule, resolve_rule
from .vocab import COLOURS, SHAPES, TEXTURES, Slots, parse_concept

__all__ = [
    "CONCEPT_SET_KINDS",
    "SPLITS",
    "WorldDataModule",
    "WorldDataset",
    "concept_set",
    "concept_slots",
    "random_set",
    "random_set_slots",
    "random_slots",
    "sample_slots",
    "scene_seeds",
]

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2, "probe": 3, "effects": 4, "depict": 5}
"""Split name -> split id used in seed derivation."""

CONCEPT_SET_KINDS = ("matched", "isolated")
"""Valid ``kind`` values of :func:`concept_set`."""

_SEED_STRIDE = 2**28


def scene_seeds(n: int, seed: int, split: str) -> list[int]:
    """The render seeds of ``n`` scenes of ``split`` (disjoint across splits and across ``seed``).

    Example:
        >>> set(scene_seeds(5, 0, "train")).isdisjoint(scene_seeds(5, 0, "val"))
        True
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if n >= _SEED_STRIDE:
        raise ValueError(f"at most {_SEED_STRIDE - 1} scenes per split")
    base = (int(seed) * 16 + SPLITS[split]) * _SEED_STRIDE
    return [base + i for i in range(int(n))]


def _slot_rng(seed: int, split: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], 7919, salt]))


def random_slots(n: int, seed: int, split: str = "probe", marker_rate: float = 0.5) -> list[Slots]:
    """``n`` slot descriptions drawn uniformly (shape, colour, texture) with a Bernoulli marker.

    Example:
        >>> from lightning_xai.world import SHAPES
        >>> random_slots(2, seed=0)[0].shape in SHAPES
        True
    """
    rng = _slot_rng(seed, split)
    shapes = rng.integers(0, len(SHAPES), n)
    colours = rng.integers(0, len(COLOURS), n)
    textures = rng.integers(0, len(TEXTURES), n)
    markers = rng.random(n) < marker_rate
    return [
        Slots(SHAPES[a], COLOURS[b], TEXTURES[c], bool(m))
        for a, b, c, m in zip(shapes, colours, textures, markers)
    ]


def sample_slots(
    n: int,
    rule: LabelRule,
    seed: int,
    split: str = "train",
    spurious_class: int | str | None = None,
    spurious_p: float | None = None,
    marker_rate: float = 0.5,
    marker_rate_other: float = 0.0,
) -> tuple[list[Slots], list[int]]:
    """Class-balanced slot descriptions and labels for one split.

    Each scene first gets a class uniformly at random, then its marker (see the module docstring
    for the marker policy), then a slot combination drawn uniformly among those with that class
    and marker. (If a user rule has no combination of that class with that marker, the other
    marker value is used.)

    Example:
        >>> from lightning_xai.world import get_task
        >>> slots, labels = sample_slots(6, get_task("shape"), seed=0)
        >>> all(get_task("shape")(s) == y for s, y in zip(slots, labels))
        True
    """
    _check_spurious(rule, spurious_class, spurious_p, marker_rate, marker_rate_other)
    rng = _slot_rng(seed, split)
    classes = rng.integers(0, rule.num_classes, n)
    u_marker = rng.random(n)
    u_combo = rng.random(n)
    by_marker = {m: rule.combinations_by_class(marker=m) for m in (False, True)}
    sc = rule.class_index(spurious_class) if spurious_class is not None else None
    slots: list[Slots] = []
    labels: list[int] = []
    for y, um, uc in zip(classes, u_marker, u_combo):
        y = int(y)
        if split == "train" and sc is not None:
            p = spurious_p if y == sc else marker_rate_other
        else:
            p = marker_rate
        m = bool(um < p)
        pool = by_marker[m][y] or by_marker[not m][y]
        if not pool:
            raise ValueError(f"label rule {rule.name!r} never produces class {rule.classes[y]!r}")
        s = pool[min(int(uc * len(pool)), len(pool) - 1)]
        slots.append(s)
        labels.append(y)
    return slots, labels


def _check_spurious(rule: LabelRule, spurious_class, spurious_p, marker_rate, marker_rate_other) -> None:
    if (spurious_class is None) != (spurious_p is None):
        raise ValueError(
            "pass both spurious_class (the class the marker co-occurs with in training) and spurious_p "
            f"(P(marker | that class) in training), or neither; got spurious_class={spurious_class!r}, "
            f"spurious_p={spurious_p!r}"
        )
    if spurious_class is not None:
        rule.class_index(spurious_class)
    for name, v in (
        ("spurious_p", spurious_p),
        ("marker_rate", marker_rate),
        ("marker_rate_other", marker_rate_other),
    ):
        if v is not None and not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")


# A small cache of rendered splits so that repeated construction (tests, several callbacks) is cheap.
_CACHE: OrderedDict[tuple, tuple[torch.Tensor, list[Slots], list[int], list[int]]] = OrderedDict()
_CACHE_MAX = 8


class WorldDataset(Dataset):
    """A pre-rendered split of the planted-concept world; items are ``(image, label)``.

    Args:
        n: Number of scenes.
        task: Task name (see :func:`~lightning_xai.world.rules.get_task`) or a :class:`LabelRule`.
        split: ``"train"``, ``"val"`` or ``"test"`` (decides scene seeds and the marker policy).
        seed: Base seed; scenes of different splits never share a render seed.
        size: Image size in pixels.
        spurious_class: Class (name or index) the marker co-occurs with in the training split.
        spurious_p: P(marker | spurious_class) in the training split.
        marker_rate: P(marker) wherever the marker is independent of the label (val/test always;
            train when ``spurious_p`` is None).
        marker_rate_other: P(marker | other class) in the training split when spurious.
        cache: Reuse a previously rendered identical split (images are shared, read-only).

    Attributes:
        slots: the scenes' slot values, one per item.
        seeds: the scenes' render seeds.
        captions: the scenes' captions.
        labels: the class indices (``LongTensor``).
        classes: the class names of the task.
        rule: the task's :class:`LabelRule`.
        size: the image side in pixels.
        split: the split name.

    Example:
        >>> ds = WorldDataset(12, task="shape_texture", split="val", seed=0)
        >>> image, label = ds[0]
        >>> image.shape, ds.classes[label] == ds.rule.class_name(ds.slots[0])
        (torch.Size([3, 64, 64]), True)
    """

    def __init__(
        self,
        n: int,
        task: str | LabelRule = DEFAULT_TASK,
        split: str = "train",
        seed: int = 0,
        size: int = 64,
        spurious_class: int | str | None = None,
        spurious_p: float | None = None,
        marker_rate: float = 0.5,
        marker_rate_other: float = 0.0,
        cache: bool = True,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; valid splits: train, val, test")
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.rule = resolve_rule(task)
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.spurious_class = self.rule.class_index(spurious_class) if spurious_class is not None else None
        self.spurious_p = spurious_p
        key = (
            int(n),
            self.rule,
            split,
            int(seed),
            self.size,
            self.spurious_class,
            spurious_p,
            float(marker_rate),
            float(marker_rate_other),
        )
        if cache and key in _CACHE:
            _CACHE.move_to_end(key)
            images, slots, labels, seeds = _CACHE[key]
        else:
            slots, labels = sample_slots(
                int(n),
                self.rule,
                int(seed),
                split,
                spurious_class,
                spurious_p,
                marker_rate,
                marker_rate_other,
            )
            seeds = scene_seeds(int(n), int(seed), split)
            images, _ = _render_uint8(slots, seeds, self.size, with_masks=False)
            if cache:
                _CACHE[key] = (images, slots, labels, seeds)
                while len(_CACHE) > _CACHE_MAX:
                    _CACHE.popitem(last=False)
        self.images_uint8: torch.Tensor = images
        self.slots: list[Slots] = list(slots)
        self.seeds: list[int] = list(seeds)
        self.labels: torch.Tensor = torch.tensor(labels, dtype=torch.long)

    @property
    def classes(self) -> list[str]:
        """Class names of the task."""
        return self.rule.classes

    @property
    def captions(self) -> list[str]:
        """The caption of every scene."""
        return [s.caption for s in self.slots]

    @property
    def images(self) -> torch.Tensor:
        """All images as a float tensor ``[N, 3, H, W]`` in [0, 1] (a new tensor on each access)."""
        return _to_float(self.images_uint8)

    @property
    def markers(self) -> torch.Tensor:
        """Bool tensor: which scenes carry the marker."""
        return torch.tensor([s.marker for s in self.slots], dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_float(self.images_uint8[i]), self.labels[i]

    def scene(self, i: int) -> Scene:
        """Re-render scene ``i`` with its concept masks (identical image)."""
        return render(self.slots[i], self.seeds[i], self.size)


class WorldDataModule(pl.LightningDataModule):
    """Train/val/test splits of the planted-concept world as a Lightning data module.

    Args:
        task: Task name or :class:`LabelRule` (default ``"shape_texture"``).
        n_train, n_val, n_test: Split sizes.
        batch_size: Batch size of every loader.
        seed: Base seed (scene seeds of the splits are disjoint; the training loader shuffles with
            a generator seeded from it).
        size: Image size.
        spurious_class, spurious_p, marker_rate, marker_rate_other: Marker policy, see
            :class:`WorldDataset`.
        num_workers: DataLoader workers.

    Example:
        >>> dm = WorldDataModule(n_train=32, n_val=16, n_test=16, batch_size=8)
        >>> dm.setup("fit")
        >>> next(iter(dm.train_dataloader()))[0].shape
        torch.Size([8, 3, 64, 64])
    """

    def __init__(
        self,
        task: str | LabelRule = DEFAULT_TASK,
        n_train: int = 2400,
        n_val: int = 600,
        n_test: int = 600,
        batch_size: int = 64,
        seed: int = 0,
        size: int = 64,
        spurious_class: int | str | None = None,
        spurious_p: float | None = None,
        marker_rate: float = 0.5,
        marker_rate_other: float = 0.0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.rule = resolve_rule(task)
        _check_spurious(self.rule, spurious_class, spurious_p, marker_rate, marker_rate_other)
        self.task = self.rule.name
        self.n_train, self.n_val, self.n_test = int(n_train), int(n_val), int(n_test)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.size = int(size)
        self.spurious_class = spurious_class
        self.spurious_p = spurious_p
        self.marker_rate = float(marker_rate)
        self.marker_rate_other = float(marker_rate_other)
        self.num_workers = int(num_workers)
        self.train_set: WorldDataset | None = None
        self.val_set: WorldDataset | None = None
        self.test_set: WorldDataset | None = None

    @property
    def classes(self) -> list[str]:
        """Class names."""
        return self.rule.classes

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.rule.num_classes

    def _make(self, split: str, n: int) -> WorldDataset:
        return WorldDataset(
            n,
            self.rule,
            split,
            self.seed,
            self.size,
            self.spurious_class,
            self.spurious_p,
            self.marker_rate,
            self.marker_rate_other,
        )

    def setup(self, stage: str | None = None) -> None:
        """Render the splits needed for ``stage`` (idempotent)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._make("train", self.n_train)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._make("val", self.n_val)
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._make("test", self.n_test)

    def _loader(self, ds: WorldDataset | None, shuffle: bool, name: str) -> DataLoader:
        if ds is None:
            self.setup(None)
            ds = getattr(self, name)
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, "train_set")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, "val_set")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, "test_set")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, "test_set")


# ----------------------------------------------------------------------------- probe sets
def concept_slots(concept: str, n: int, seed: int, kind: str = "matched") -> list[Slots]:
    """The slot descriptions behind :func:`concept_set` (same arguments).

    Example:
        >>> {s.texture for s in concept_slots("texture:dotted", 5, seed=0)}
        {'dotted'}
    """
    slot, value = parse_concept(concept)
    if kind not in CONCEPT_SET_KINDS:
        raise ValueError(f"unknown concept set kind {kind!r}; valid kinds: {', '.join(CONCEPT_SET_KINDS)}")
    base = random_slots(n, seed, "probe")
    if kind == "matched":
        return [s.with_value(slot, value) for s in base]
    # isolated: the concept alone on neutral ground
    out = []
    for s in base:
        if slot == "texture":
            out.append(Slots(None, None, value, False))
        elif slot == "shape":
            out.append(Slots(value, s.colour, "plain", False))
        elif slot == "colour":
            out.append(Slots(s.shape, value, "plain", False))
        else:  # marker
            out.append(Slots(None, None, "plain", value == "present"))
    return out


def concept_set(concept: str, n: int, seed: int = 0, kind: str = "matched", size: int = 64) -> torch.Tensor:
    """Images showing ``concept`` (``"slot:value"``), for TCAV-style probes.

    Args:
        concept: Concept name, e.g. ``"texture:striped"``.
        n: Number of images.
        seed: Seed. With ``kind="matched"`` the scenes are exactly ``random_set(n, seed)``'s scenes
            (same render seeds, same other slots) with the concept's slot forced to its value.
        kind: ``"matched"`` (default): random scenes with the slot forced, so the set differs from
            random scenes *only* by the concept. ``"isolated"``: the concept alone (a texture with
            no object; an object of that shape/colour with random colour/shape on a plain
            background; the marker on a plain background without object). Isolated sets are
            **confounded** (a texture alone also means "no object") and are provided for
            comparison only.
        size: Image size.

    Returns:
        Float tensor ``[n, 3, size, size]``.

    Raises:
        ValueError: For an unknown concept or kind.

    Example:
        >>> concept_set("texture:striped", 4, seed=1).shape
        torch.Size([4, 3, 64, 64])
    """
    slots = concept_slots(concept, n, seed, kind)
    imgs, _ = _render_uint8(slots, scene_seeds(n, seed, "probe"), size, with_masks=False)
    return _to_float(imgs)


def random_set(n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    """``n`` random scenes (uniform slots, marker with probability 0.5), the counterpart of
    :func:`concept_set`.

    Example:
        >>> random_set(3, seed=0).shape
        torch.Size([3, 3, 64, 64])
    """
    slots = random_slots(n, seed, "probe")
    imgs, _ = _render_uint8(slots, scene_seeds(n, seed, "probe"), size, with_masks=False)
    return _to_float(imgs)


def random_set_slots(n: int, seed: int = 0) -> list[Slots]:
    """The slot descriptions behind :func:`random_set`."""
    return random_slots(n, seed, "probe")
