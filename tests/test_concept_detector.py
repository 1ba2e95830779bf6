"""The learned world concept detector reads every caption slot back from rendered scenes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_xai.world import (
    DETECTOR_SLOTS,
    Slots,
    WorldConceptDetector,
    all_concepts,
    render_batch,
    scene_seeds,
    train_world_concept_detector,
)


@pytest.mark.slow
def test_held_out_accuracy_of_every_slot(world_concept_detector: Any) -> None:
    _, report = world_concept_detector
    assert set(report.accuracy) == set(DETECTOR_SLOTS)
    assert all(acc >= 0.98 for acc in report.accuracy.values()), report.accuracy
    assert report.losses[-1] < report.losses[0] / 10


@pytest.mark.slow
def test_predicts_each_slot_of_fresh_captions_and_empty_scenes(world_concept_detector: Any) -> None:
    detector, _ = world_concept_detector
    captions = [
        "a red circle on a striped background with a marker",
        "a blue triangle on a zigzag background",
        "a yellow square on a checkered background with a marker",
        "an empty dotted background",
    ]
    seeds = scene_seeds(len(captions), 7, "probe")
    images, _ = render_batch(captions, seeds, 64, return_masks=False)
    predicted = detector.predict(images)
    assert predicted[0] == {"shape": "circle", "colour": "red", "texture": "striped", "marker": "present"}
    assert predicted[1] == {"shape": "triangle", "colour": "blue", "texture": "zigzag", "marker": "absent"}
    assert predicted[2] == {
        "shape": "square",
        "colour": "yellow",
        "texture": "checkered",
        "marker": "present",
    }
    assert predicted[3] == {"shape": "none", "colour": "none", "texture": "dotted", "marker": "absent"}
    scores = detector.scores(images)
    assert set(scores) == set(all_concepts())
    assert float(scores["shape:circle"][0]) > 0.8 and float(scores["marker:present"][1]) < 0.1


@pytest.mark.slow
def test_accuracy_scores_each_slot_against_what_the_images_should_show(world_concept_detector: Any) -> None:
    detector, _ = world_concept_detector
    scenes = [
        Slots(s, c, "dotted", m)
        for s in ("circle", "square", "triangle")
        for c, m in (("red", True), ("blue", False))
    ]
    images, _ = render_batch(scenes, scene_seeds(len(scenes), 4, "probe"), 64, return_masks=False)
    assert detector.accuracy(images, scenes) == {"shape": 1.0, "colour": 1.0, "texture": 1.0, "marker": 1.0}
    # claim the next shape and the opposite marker for every image: only those two slots are wrong
    shifted = [
        Slots(
            {"circle": "square", "square": "triangle", "triangle": "circle"}[s.shape],
            s.colour,
            s.texture,
            not s.marker,
        )
        for s in scenes
    ]
    assert detector.accuracy(images, shifted) == {"shape": 0.0, "colour": 1.0, "texture": 1.0, "marker": 0.0}
    # per image: half the claims shifted, so exactly those images are wrong, and only in shape and marker
    mixed = [shifted[i] if i % 2 else scenes[i] for i in range(len(scenes))]
    ok = detector.correct(images, mixed)
    assert ok["shape"].tolist() == ok["marker"].tolist() == [i % 2 == 0 for i in range(len(scenes))]
    assert ok["colour"].all() and ok["texture"].all()
    with pytest.raises(ValueError, match="got 6 images but 5 slots"):
        detector.accuracy(images, scenes[:5])
    with pytest.raises(ValueError, match="got 6 images but 5 slots"):
        detector.correct(images, scenes[:5])


@pytest.mark.slow
def test_scores_follow_a_single_slot_intervention(world_concept_detector: Any) -> None:
    """Same seeds, only the marker changed: only the marker score moves."""
    detector, _ = world_concept_detector
    seeds = scene_seeds(50, 3, "probe")
    without, _ = render_batch([Slots("square", "green", "plain", False)] * 50, seeds, 64, return_masks=False)
    with_marker, _ = render_batch(
        [Slots("square", "green", "plain", True)] * 50, seeds, 64, return_masks=False
    )
    a, b = detector.scores(without), detector.scores(with_marker)
    assert float(b["marker:present"].mean()) > 0.95
    assert float(a["marker:present"].mean()) < 0.05
    for concept in ("shape:square", "colour:green", "texture:plain"):
        assert abs(float(a[concept].mean()) - float(b[concept].mean())) < 0.05, concept


def test_training_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, ra = train_world_concept_detector(n_train=64, n_test=16, epochs=1, size=32, width=4, seed=5)
    after = torch.rand(1)
    b, rb = train_world_concept_detector(n_train=64, n_test=16, epochs=1, size=32, width=4, seed=5)
    assert torch.equal(after, expected)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra.losses == rb.losses


def test_probabilities_restore_the_mode_and_resize_other_sizes() -> None:
    det = WorldConceptDetector(width=4, size=32).train()
    probs = det.probabilities(torch.rand(3, 3, 64, 64))
    assert det.training
    assert {k: tuple(v.shape) for k, v in probs.items()} == {
        k: (3, len(v)) for k, v in DETECTOR_SLOTS.items()
    }
    assert all(torch.allclose(v.sum(1), torch.ones(3)) for v in probs.values())
    with pytest.raises(ValueError, match="width must be >= 1 and size >= 8"):
        WorldConceptDetector(size=4)
