"""A learned concept detector for the world: one small CNN with a head per caption slot.

Reads every slot back from an image: shape (or no object), colour (or no object), background texture and
the marker. Trained on renders in about a minute on a CPU; used to score concepts in generated images
(DiffExplainer's bias report, the generation quality of a diffusion model of the world).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import scene_seeds
from .render import render_batch
from .vocab import COLOURS, SHAPES, TEXTURES, Slots

__all__ = ["DETECTOR_SLOTS", "DetectorReport", "WorldConceptDetector", "train_world_concept_detector"]

NO_OBJECT = "none"
DETECTOR_SLOTS: dict[str, tuple[str, ...]] = {
    "shape": (*SHAPES, NO_OBJECT),
    "colour": (*COLOURS, NO_OBJECT),
    "texture": TEXTURES,
    "marker": ("absent", "present"),
}
"""The values each head predicts (``"none"``: the scene has no object)."""


class WorldConceptDetector(nn.Module):
    """``images [N, 3, H, W] in [0, 1]`` -> one set of logits per slot (:data:`DETECTOR_SLOTS`).

    :meth:`scores` gives ``{concept: probability}`` for every world concept (``"shape:circle"``,
    ``"colour:red"``, ``"texture:striped"``, ``"marker:present"``), the form DiffExplainer's bias report
    takes; :meth:`predict` gives each image's most probable value per slot.

    Args:
        width: Channels of the first convolution (later blocks use 2x and 4x).
        size: Image side the detector works at; other sizes are resized (bilinear) first.

    Example:
        >>> det = WorldConceptDetector()
        >>> sorted(det(torch.rand(2, 3, 64, 64)))
        ['colour', 'marker', 'shape', 'texture']
    """

    def __init__(self, width: int = 16, size: int = 64) -> None:
        super().__init__()
        if int(width) < 1 or int(size) < 8:
            raise ValueError(f"width must be >= 1 and size >= 8, got width={width!r}, size={size!r}")
        self.width, self.size = int(width), int(size)
        w = self.width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w))
        # the marker is a few pixels in a corner: keep where things are (4x4 grid) as well as what
        self.heads = nn.ModuleDict(
            {slot: nn.Linear(4 * w * 2 + 4 * w * 16, len(values)) for slot, values in DETECTOR_SLOTS.items()}
        )

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = images.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )
        f = self.features(x)
        grid = F.adaptive_avg_pool2d(f, 4).flatten(1)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        h = torch.cat([pooled, grid], 1)
        return {slot: head(h) for slot, head in self.heads.items()}

    @torch.no_grad()
    def probabilities(self, images: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Softmax per slot, ``{slot: [N, values]}``, in eval mode (the module's mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            parts = [self(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)]
        finally:
            self.train(was_training)
        return {slot: torch.cat([p[slot] for p in parts]).softmax(1).cpu() for slot in DETECTOR_SLOTS}

    def scores(self, images: Tensor) -> dict[str, Tensor]:
        """``{concept: [N] probability}`` for every world concept (a DiffExplainer concept detector)."""
        probs = self.probabilities(images)
        out: dict[str, Tensor] = {}
        for slot in ("shape", "colour", "texture"):
            for j, value in enumerate(DETECTOR_SLOTS[slot]):
                if value != NO_OBJECT:
                    out[f"{slot}:{value}"] = probs[slot][:, j]
        out["marker:present"] = probs["marker"][:, 1]
        return out

    def predict(self, images: Tensor) -> list[dict[str, str]]:
        """Each image's most probable value per slot (``"none"`` for shape/colour: no object)."""
        probs = self.probabilities(images)
        index = {slot: p.argmax(1).tolist() for slot, p in probs.items()}
        return [
            {slot: DETECTOR_SLOTS[slot][index[slot][i]] for slot in DETECTOR_SLOTS}
            for i in range(len(images))
        ]

    def correct(self, images: Tensor, slots: Sequence[Slots]) -> dict[str, Tensor]:
        """Per slot, a bool ``[N]``: whether the detector reads image ``i`` as ``slots[i]`` says.

        ``slots[i]`` describes what image ``i`` should show (a caption it was rendered or generated
        from); a missing shape or colour (``None``) is read correctly as ``"none"``. One forward pass
        for all images; ``torch.stack(list(out.values())).all(0)`` marks the images right in every slot.

        Raises:
            ValueError: If ``images`` and ``slots`` differ in length.
        """
        if len(images) != len(slots):
            raise ValueError(f"got {len(images)} images but {len(slots)} slots; give one Slots per image")
        probs = self.probabilities(images)
        truth = _labels(slots)
        return {slot: probs[slot].argmax(1) == truth[slot] for slot in DETECTOR_SLOTS}

    def accuracy(self, images: Tensor, slots: Sequence[Slots]) -> dict[str, float]:
        """Share of ``images`` whose value the detector reads as ``slots`` says, per slot (see :meth:`correct`).

        Example:
            >>> det, _ = train_world_concept_detector(n_train=64, n_test=32, epochs=1)  # doctest: +SKIP
            >>> scenes = [Slots("circle", "red", "plain", False)]
            >>> det.accuracy(render_batch(scenes, [0], 64)[0], scenes)  # doctest: +SKIP
            {'shape': 1.0, 'colour': 1.0, 'texture': 1.0, 'marker': 1.0}
        """
        return {slot: float(ok.float().mean()) for slot, ok in self.correct(images, slots).items()}


def _labels(slots: Sequence[Slots]) -> dict[str, Tensor]:
    def idx(slot: str, value: str) -> int:
        return DETECTOR_SLOTS[slot].index(value)

    return {
        "shape": torch.tensor([idx("shape", s.shape or NO_OBJECT) for s in slots]),
        "colour": torch.tensor([idx("colour", s.colour or NO_OBJECT) for s in slots]),
        "texture": torch.tensor([idx("texture", s.texture) for s in slots]),
        "marker": torch.tensor([int(s.marker) for s in slots]),
    }


def _random_scenes(n: int, rng: np.random.Generator, empty_rate: float) -> list[Slots]:
    out = []
    for _ in range(n):
        texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
        marker = bool(rng.random() < 0.5)
        if rng.random() < empty_rate:
            out.append(Slots(None, None, texture, marker))
        else:
            out.append(
                Slots(
                    SHAPES[int(rng.integers(len(SHAPES)))],
                    COLOURS[int(rng.integers(len(COLOURS)))],
                    texture,
                    marker,
                )
            )
    return out


@dataclass
class DetectorReport:
    """Held-out accuracy of a trained :class:`WorldConceptDetector` per slot, and the training time."""

    accuracy: dict[str, float]
    n_train: int
    n_test: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def train_world_concept_detector(
    n_train: int = 6000,
    n_test: int = 1000,
    epochs: int = 4,
    size: int = 64,
    width: int = 16,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    noise: float = 0.03,
    empty_rate: float = 0.1,
) -> tuple[WorldConceptDetector, DetectorReport]:
    """Train a :class:`WorldConceptDetector` on renders of random captions (CPU, about a minute).

    Scenes: uniform shape, colour and texture, marker with probability 0.5, and a share ``empty_rate``
    without an object; pixel noise of standard deviation ``noise`` is added during training so the
    detector tolerates the grain of generated images. Seeded (weights, scenes, batches, noise); the
    global RNG is left as it was. Test scenes use the world's ``"test"`` split seeds.

    Returns:
        ``(detector in eval mode, DetectorReport)`` with the held-out accuracy per slot.

    Example:
        >>> det, report = train_world_concept_detector(n_train=64, n_test=32, epochs=1)  # doctest: +SKIP
        >>> sorted(report.accuracy)  # doctest: +SKIP
        ['colour', 'marker', 'shape', 'texture']
    """
    start = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 104729]))
    train_slots = _random_scenes(n_train, rng, empty_rate)
    test_slots = _random_scenes(n_test, rng, empty_rate)
    x_train, _ = render_batch(train_slots, scene_seeds(n_train, seed, "train"), size, return_masks=False)
    x_test, _ = render_batch(test_slots, scene_seeds(n_test, seed, "test"), size, return_masks=False)
    y_train, y_test = _labels(train_slots), _labels(test_slots)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WorldConceptDetector(width=width, size=size)
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((n_train + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=gen)
        for i in range(0, n_train, batch_size):
            rows = order[i : i + batch_size]
            x = x_train[rows]
            if noise > 0:
                x = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
            out = model(x)
            loss = sum(F.cross_entropy(out[slot], y_train[slot][rows]) for slot in DETECTOR_SLOTS)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
    model.eval()
    probs = model.probabilities(x_test)
    accuracy = {
        slot: float((probs[slot].argmax(1) == y_test[slot]).float().mean()) for slot in DETECTOR_SLOTS
    }
    return model, DetectorReport(accuracy, n_train, n_test, time.perf_counter() - start, losses)
