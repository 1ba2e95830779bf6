"""Tests of the planted-concept world (lightning_xai.world)."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
from torch import nn

from lightning_xai.world import (
    COLOURS,
    LINED_TEXTURES,
    SHAPES,
    TEXTURES,
    EffectTable,
    LabelRule,
    Slots,
    TinyCNN,
    WorldDataModule,
    WorldDataset,
    WorldGenerator,
    all_concepts,
    all_slot_combinations,
    concept_set,
    concept_slots,
    get_task,
    interventional_effects,
    make_caption,
    parse_caption,
    parse_concept,
    random_set,
    random_set_slots,
    render,
    render_batch,
    scene_seeds,
    train_tiny_cnn,
)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pixels [H, W] where two images [3, H, W] differ in any channel."""
    return (a != b).any(0)


# ----------------------------------------------------------------------------- rendering
def test_render_is_deterministic_and_seed_dependent():
    cap = "a red circle on a striped background with a marker"
    a, b = render(cap, seed=11), render(cap, seed=11)
    assert torch.equal(a.image, b.image)
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    c = render(cap, seed=12)
    assert changed(a.image, c.image).float().mean() > 0.2


def test_render_output_format_and_sizes():
    scene = render(Slots("triangle", "yellow", "checkered", True), seed=3, size=48)
    assert scene.image.dtype == torch.float32 and scene.image.shape == (3, 48, 48)
    assert 0.0 <= float(scene.image.min()) and float(scene.image.max()) <= 1.0
    assert set(scene.masks) == {"shape:triangle", "colour:yellow", "texture:checkered", "marker:present"}
    for m in scene.masks.values():
        assert m.dtype == torch.bool and m.shape == (48, 48) and m.any()
    assert scene.caption == "a yellow triangle on a checkered background with a marker"


def test_render_batch_matches_single_renders():
    slots = [
        Slots(s, c, t, m)
        for s, c, t, m in [
            ("circle", "red", "plain", False),
            ("square", "blue", "zigzag", True),
            ("triangle", "green", "dotted", False),
            (None, None, "striped", True),
        ]
    ]
    seeds = [0, 5, 99, 2**40]
    images, masks = render_batch(slots, seeds)
    assert images.shape == (4, 3, 64, 64)
    for i, (s, seed) in enumerate(zip(slots, seeds)):
        single = render(s, seed)
        assert torch.equal(images[i], single.image)
        assert masks[i].keys() == single.masks.keys()
        assert all(torch.equal(masks[i][k], single.masks[k]) for k in masks[i])


def test_render_rejects_bad_input():
    with pytest.raises(ValueError):
        render("a red circle on a striped background", seed=-1)
    with pytest.raises(ValueError, match="one seed per scene"):
        render_batch(["a red circle on a plain background"], [1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_colour_change_changes_exactly_the_object_pixels(seed):
    for marker in (False, True):
        base = Slots("circle", "red", "striped", marker)
        a = render(base, seed)
        obj = a.masks["shape:circle"]
        assert torch.equal(obj, a.masks["colour:red"])
        for colour in COLOURS[1:]:
            b = render(base.with_value("colour", colour), seed)
            assert torch.equal(changed(a.image, b.image), obj)
            assert torch.equal(b.masks[f"colour:{colour}"], obj)


@pytest.mark.parametrize("seed", [0, 7, 21])
def test_texture_change_changes_only_texture_pixels(seed):
    for texture in TEXTURES[1:]:
        plain = render(Slots("square", "green", "plain", True), seed)
        textured = render(Slots("square", "green", texture, True), seed)
        diff = changed(plain.image, textured.image)
        # plain -> t changes exactly the visible pattern of t
        assert torch.equal(diff, textured.masks[f"texture:{texture}"])
        # the pattern is visible background only
        assert not (textured.masks[f"texture:{texture}"] & textured.object_mask).any()
        assert not (textured.masks[f"texture:{texture}"] & textured.masks["marker:present"]).any()
    for t1, t2 in itertools.combinations(TEXTURES[1:], 2):
        a = render(Slots("circle", "blue", t1), seed)
        b = render(Slots("circle", "blue", t2), seed)
        diff = changed(a.image, b.image)
        assert diff.any()
        assert not (diff & ~(a.masks[f"texture:{t1}"] | b.masks[f"texture:{t2}"])).any()


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_shape_change_changes_only_object_pixels(seed):
    for s1, s2 in itertools.combinations(SHAPES, 2):
        a = render(Slots(s1, "yellow", "dotted"), seed)
        b = render(Slots(s2, "yellow", "dotted"), seed)
        diff = changed(a.image, b.image)
        assert diff.any()
        assert not (diff & ~(a.masks[f"shape:{s1}"] | b.masks[f"shape:{s2}"])).any()
        # the object stays put: the two objects overlap substantially
        assert (a.object_mask & b.object_mask).sum() > 0.5 * a.object_mask.sum()


@pytest.mark.parametrize("seed", [0, 4, 9])
def test_object_mask_equals_difference_to_empty_scene(seed):
    for shape, colour, texture in [
        ("circle", "red", "checkered"),
        ("triangle", "blue", "plain"),
        ("square", "green", "zigzag"),
    ]:
        full = render(Slots(shape, colour, texture), seed)
        empty = render(Slots(None, None, texture), seed)
        assert torch.equal(changed(full.image, empty.image), full.masks[f"shape:{shape}"])
        assert set(empty.masks) == {f"texture:{texture}"}


@pytest.mark.parametrize("seed", range(8))
def test_marker_mask_equals_difference_and_sits_in_a_corner(seed):
    without = render(Slots("circle", "red", "striped", False), seed)
    with_marker = render(Slots("circle", "red", "striped", True), seed)
    mask = with_marker.masks["marker:present"]
    assert torch.equal(changed(without.image, with_marker.image), mask)
    assert "marker:present" not in without.masks
    # a small white cross in one corner quadrant
    h, w = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert 0 < mask.sum() < 0.03 * h * w
    assert (ys < h // 4).all() or (ys >= 3 * h // 4).all()
    assert (xs < w // 4).all() or (xs >= 3 * w // 4).all()
    assert with_marker.image[:, mask].min() > 0.85


def test_masks_partition_the_image():
    for seed, texture in zip(range(5), TEXTURES):
        scene = render(Slots("triangle", "red", texture, True), seed)
        obj, marker = scene.object_mask, scene.masks["marker:present"]
        tex = scene.masks[f"texture:{texture}"]
        assert not (obj & marker).any() and not (obj & tex).any() and not (tex & marker).any()
        if texture == "plain":
            assert (obj | marker | tex).all()


def test_texture_is_grey_and_colour_is_carried_by_the_object():
    for seed, texture in zip(range(10), itertools.cycle(TEXTURES[1:])):
        scene = render(Slots("circle", "red", texture), seed)
        bg = ~scene.object_mask
        r, g, b = scene.image[:, bg]
        # neutral greys: channels agree up to pixel noise
        assert (r - g).abs().mean() < 0.05 and (g - b).abs().mean() < 0.05
        ro, go, bo = scene.image[:, scene.object_mask]
        assert ro.mean() > go.mean() + 0.4 and ro.mean() > bo.mean() + 0.4
        ink = scene.masks[f"texture:{texture}"]
        assert scene.image[:, ink].mean() < scene.image[:, bg & ~ink].mean() - 0.15


def test_seed_randomness_does_not_depend_on_slots():
    # the same seed puts object, texture and marker at the same places whatever the other slots are
    seed = 31
    ref = render(Slots("square", "red", "plain"), seed)
    ref_marker = render(Slots("circle", "blue", "dotted", True), seed).masks["marker:present"]
    none = torch.zeros_like(ref.object_mask)
    for colour, texture, marker in itertools.product(COLOURS, TEXTURES, (False, True)):
        scene = render(Slots("square", colour, texture, marker), seed)
        marker_mask = scene.masks.get("marker:present", none)
        assert torch.equal(marker_mask, ref_marker if marker else none)
        assert torch.equal(scene.object_mask, ref.object_mask & ~marker_mask)
        empty = render(Slots(None, None, texture), seed)
        visible = ~scene.object_mask & ~marker_mask
        assert torch.equal(scene.masks[f"texture:{texture}"], empty.masks[f"texture:{texture}"] & visible)


# ----------------------------------------------------------------------------- captions
def test_captions_round_trip_over_all_combinations():
    combos = list(all_slot_combinations())
    assert len(combos) == len(SHAPES) * len(COLOURS) * len(TEXTURES) * 2
    for s in combos:
        assert parse_caption(make_caption(s)) == s
    for texture, marker in itertools.product(TEXTURES, (False, True)):
        empty = Slots(None, None, texture, marker)
        assert parse_caption(make_caption(empty)) == empty


def test_caption_examples_and_lenient_forms():
    assert make_caption(Slots("circle", "red", "striped")) == "a red circle on a striped background"
    assert (
        make_caption(Slots("square", "blue", "plain", True))
        == "a blue square on a plain background with a marker"
    )
    assert parse_caption("A Red circle, on a STRIPED background.") == Slots("circle", "red", "striped", False)
    assert parse_caption("a green triangle on a dotted background without a marker").marker is False
    assert parse_caption("a green triangle on a dotted background with no marker").marker is False


def test_unknown_word_error_names_word_and_vocabulary():
    with pytest.raises(ValueError) as err:
        parse_caption("a purple circle on a striped background")
    msg = str(err.value)
    assert "'purple'" in msg
    for word in (*SHAPES, *COLOURS, *TEXTURES):
        assert word in msg
    for slot in ("shape", "colour", "texture", "marker"):
        assert f"{slot}:" in msg


def test_missing_or_duplicate_slot_errors():
    with pytest.raises(ValueError, match="no texture"):
        parse_caption("a red circle")
    with pytest.raises(ValueError, match="no shape"):
        parse_caption("a red on a plain background")
    with pytest.raises(ValueError, match="no colour"):
        parse_caption("a circle on a plain background")
    with pytest.raises(ValueError, match="more than one shape"):
        parse_caption("a red circle square on a plain background")
    with pytest.raises(ValueError):
        Slots("circle", None, "plain")
    with pytest.raises(ValueError, match="valid textures"):
        Slots("circle", "red", "furry")
    assert Slots("circle", "red", "plain", "absent").marker is False
    assert Slots("circle", "red", "plain", "present").marker is True


def test_concept_names():
    concepts = all_concepts()
    assert len(concepts) == len(set(concepts)) == len(SHAPES) + len(COLOURS) + len(TEXTURES) + 1
    assert {"texture:striped", "shape:circle", "colour:red", "marker:present"} <= set(concepts)
    for c in concepts:
        slot, value = parse_concept(c)
        assert f"{slot}:{value}" == c
    assert parse_concept("color:red") == ("colour", "red")
    with pytest.raises(ValueError, match="texture:striped"):
        parse_concept("striped")
    with pytest.raises(ValueError, match="valid slots"):
        parse_concept("size:large")
    with pytest.raises(ValueError, match="valid texture values"):
        parse_concept("texture:furry")
    assert Slots("circle", "red", "plain", True).concepts() == [
        "shape:circle",
        "colour:red",
        "texture:plain",
        "marker:present",
    ]


# ----------------------------------------------------------------------------- label rules
def test_builtin_labels_follow_the_documentation():
    rule = get_task("shape_texture")
    assert rule.num_classes == 6
    cases = {
        "a red circle on a striped background": "circle/lined",
        "a blue circle on a zigzag background with a marker": "circle/lined",
        "a green circle on a dotted background": "circle/unlined",
        "a yellow square on a checkered background": "square/unlined",
        "a red square on a zigzag background": "square/lined",
        "a blue triangle on a plain background with a marker": "triangle/unlined",
        "a green triangle on a striped background": "triangle/lined",
    }
    for caption, expected in cases.items():
        assert rule.class_name(parse_caption(caption)) == expected
    assert LINED_TEXTURES == {"striped", "zigzag"}
    for s in all_slot_combinations():
        assert get_task("shape").class_name(s) == s.shape
        assert get_task("texture").class_name(s) == s.texture
        assert get_task("colour").class_name(s) == s.colour
        # colour and marker never change the default task's label
        assert rule(s) == rule(Slots(s.shape, "red", s.texture, False))


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_task("nope")
    for name in ("shape", "texture", "shape_texture"):
        assert name in str(err.value)


def test_ground_truth_of_builtin_rules():
    shapes = {f"shape:{s}" for s in SHAPES}
    colours = {f"colour:{c}" for c in COLOURS}
    textures = {f"texture:{t}" for t in TEXTURES}
    rule = get_task("shape_texture")
    for c in rule.classes:
        assert rule.relevant_concepts(c) == shapes | textures
    assert rule.irrelevant_concepts() == colours | {"marker:present"}
    assert rule.positive_concepts("circle/lined") == {"shape:circle", "texture:striped", "texture:zigzag"}
    assert rule.positive_concepts("square/unlined") == {
        "shape:square",
        "texture:plain",
        "texture:dotted",
        "texture:checkered",
    }
    assert rule.negative_concepts("circle/lined") == {
        "shape:square",
        "shape:triangle",
        "texture:plain",
        "texture:dotted",
        "texture:checkered",
    }
    assert rule.relevant_slots() == {"shape", "texture"}
    shape_rule = get_task("shape")
    assert shape_rule.relevant_concepts("square") == shapes
    assert shape_rule.irrelevant_concepts() == colours | textures | {"marker:present"}
    assert get_task("texture").irrelevant_concepts() == shapes | colours | {"marker:present"}


def test_custom_rule_ground_truth_by_enumeration():
    def fn(s: Slots) -> str:
        if s.colour != "red":
            return "not-red"
        return "red-striped" if s.texture == "striped" else "red-other"

    rule = LabelRule.from_function(fn, ["not-red", "red-striped", "red-other"], name="redness")
    assert rule(Slots("circle", "red", "striped")) == 1
    assert rule.class_name(Slots("square", "blue", "striped")) == "not-red"
    colours = {f"colour:{c}" for c in COLOURS}
    textures = {f"texture:{t}" for t in TEXTURES}
    # texture only matters among red objects: it can never flip "not-red"
    assert rule.relevant_concepts("not-red") == colours
    assert rule.relevant_concepts("red-striped") == colours | textures
    assert rule.positive_concepts("red-striped") == {"colour:red", "texture:striped"}
    assert rule.irrelevant_concepts() == {f"shape:{s}" for s in SHAPES} | {"marker:present"}

    marker_rule = LabelRule.from_function(lambda s: int(s.marker), ["clean", "marked"], name="marked")
    assert marker_rule.relevant_concepts("marked") == {"marker:present"}
    assert marker_rule.positive_concepts("marked") == {"marker:present"}
    with pytest.raises(ValueError, match="unknown class"):
        marker_rule.relevant_concepts("nope")

    bad = LabelRule.from_function(lambda s: 5, ["a", "b"], name="bad")
    with pytest.raises(ValueError, match="expected 0..1"):
        bad(Slots("circle", "red", "plain"))


# ----------------------------------------------------------------------------- datasets
def _binomial_ok(k: int, n: int, p: float, n_se: float = 4.0) -> bool:
    se = math.sqrt(max(p * (1 - p), 1e-12) / n)
    return abs(k / n - p) <= n_se * se + 1e-12


def test_spurious_marker_in_training_split_only():
    kw = {"task": "shape_texture", "seed": 3, "size": 16, "spurious_class": "circle/lined", "spurious_p": 0.8}
    train = WorldDataset(3000, split="train", **kw)
    sc = train.rule.class_index("circle/lined")
    in_class = train.labels == sc
    k = int(train.markers[in_class].sum())
    assert _binomial_ok(k, int(in_class.sum()), 0.8)
    assert not train.markers[~in_class].any()  # marker_rate_other defaults to 0
    # images really carry the marker exactly when the slots say so
    for i in range(6):
        scene = train.scene(i)
        assert torch.equal(scene.image, train[i][0])
        assert ("marker:present" in scene.masks) == bool(train.markers[i])

    other = WorldDataset(3000, split="train", marker_rate_other=0.1, **kw)
    oc = other.labels != sc
    assert _binomial_ok(int(other.markers[oc].sum()), int(oc.sum()), 0.1)

    val = WorldDataset(3000, split="val", **kw)
    vin = val.labels == sc
    p_in = float(val.markers[vin].float().mean())
    p_out = float(val.markers[~vin].float().mean())
    se = math.sqrt(0.25 / int(vin.sum()) + 0.25 / int((~vin).sum()))
    assert abs(p_in - p_out) < 4 * se
    assert _binomial_ok(int(val.markers.sum()), len(val), 0.5)


def test_marker_is_independent_without_spurious_setting():
    ds = WorldDataset(3000, split="train", seed=5, size=16)
    for c in range(ds.rule.num_classes):
        sel = ds.labels == c
        assert _binomial_ok(int(ds.markers[sel].sum()), int(sel.sum()), 0.5)


def test_spurious_arguments_are_validated():
    with pytest.raises(ValueError, match="spurious_class"):
        WorldDataset(10, spurious_p=0.9, size=16)
    with pytest.raises(ValueError, match="probability"):
        WorldDataset(10, spurious_class=0, spurious_p=1.5, size=16)
    with pytest.raises(ValueError, match="unknown class"):
        WorldDataset(10, spurious_class="circle/furry", spurious_p=0.5, size=16)
    with pytest.raises(ValueError, match="valid splits"):
        WorldDataset(10, split="holdout", size=16)


def test_dataset_contents_balance_and_determinism():
    ds = WorldDataset(1200, task="shape_texture", split="train", seed=1, size=16)
    assert len(ds) == 1200 and ds.classes == get_task("shape_texture").classes
    counts = torch.bincount(ds.labels, minlength=6)
    expected = len(ds) / 6
    assert (counts - expected).abs().max() < 4 * math.sqrt(expected * (1 - 1 / 6))
    assert all(ds.rule(s) == int(y) for s, y in zip(ds.slots, ds.labels))
    assert ds.captions[0] == ds.slots[0].caption
    # colour is not tied to the label: every class shows every colour
    for c in range(6):
        assert {s.colour for s, y in zip(ds.slots, ds.labels) if y == c} == set(COLOURS)
    image, label = ds[7]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and int(label) == int(ds.labels[7])
    assert torch.equal(image, render(ds.slots[7], ds.seeds[7], size=16).image)
    again = WorldDataset(1200, task="shape_texture", split="train", seed=1, size=16, cache=False)
    assert torch.equal(again.images, ds.images) and again.slots == ds.slots
    other_seed = WorldDataset(1200, task="shape_texture", split="train", seed=2, size=16)
    assert not set(other_seed.seeds) & set(ds.seeds)


def _warm(s: Slots) -> int:
    return int(s.colour in ("red", "yellow"))


def test_datasets_and_rules_pickle():
    # needed by dataloader workers and ddp_spawn
    rule = LabelRule.from_function(_warm, ["cool", "warm"], name="warmth")
    for task in ("shape_texture", rule):
        ds = WorldDataset(20, task=task, size=16, seed=9)
        clone = pickle.loads(pickle.dumps(ds))
        assert torch.equal(clone.images, ds.images) and torch.equal(clone.labels, ds.labels)
        assert clone.rule.classes == ds.rule.classes
        assert [clone.rule(s) for s in clone.slots] == ds.labels.tolist()
    dm = pickle.loads(pickle.dumps(WorldDataModule(n_train=8, n_val=8, n_test=8, size=16)))
    dm.setup("fit")
    assert len(dm.train_set) == 8


def test_splits_have_disjoint_seeds():
    seeds = {split: set(scene_seeds(500, 0, split)) for split in ("train", "val", "test", "probe", "effects")}
    for a, b in itertools.combinations(seeds, 2):
        assert not seeds[a] & seeds[b]
    dm = WorldDataModule(n_train=40, n_val=20, n_test=20, size=16)
    dm.setup()
    assert not set(dm.train_set.seeds) & set(dm.val_set.seeds)
    assert not set(dm.val_set.seeds) & set(dm.test_set.seeds)
    assert not set(dm.train_set.seeds) & set(dm.test_set.seeds)


def test_datamodule_trains_with_a_trainer(tmp_path):
    import lightning.pytorch as pl

    dm = WorldDataModule(task="shape", n_train=64, n_val=32, n_test=32, batch_size=16, size=32)
    model = TinyCNN(num_classes=dm.num_classes, width=4)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    for key in ("train_loss", "val_loss", "val_acc"):
        assert key in trainer.callback_metrics
    assert 0.0 <= float(trainer.callback_metrics["val_acc"]) <= 1.0
    result = trainer.test(model, datamodule=dm, verbose=False)
    assert "test_acc" in result[0]


def test_tiny_cnn_layout():
    model = TinyCNN(num_classes=5, width=8)
    names = dict(model.named_modules())
    for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "pool", "head", "conv1.0"):
        assert n in names
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1] is model.head and model.head.in_features == 32 and model.head.out_features == 5
    out = model(torch.rand(3, 3, 64, 64))
    assert out.shape == (3, 5)
    assert torch.allclose(
        model.head(model.head_input(torch.zeros(1, 3, 64, 64))), model(torch.zeros(1, 3, 64, 64))
    )


# ----------------------------------------------------------------------------- probe sets
@pytest.mark.parametrize("concept", ["texture:striped", "shape:circle", "colour:blue", "marker:present"])
def test_matched_concept_set_differs_from_random_set_only_by_the_concept(concept):
    n, seed = 12, 4
    slot, value = parse_concept(concept)
    base = random_set_slots(n, seed)
    forced = concept_slots(concept, n, seed)
    for a, b in zip(base, forced):
        assert b.value(slot) == value
        assert b == a.with_value(slot, value)  # every other slot unchanged
    images = concept_set(concept, n, seed)
    randoms = random_set(n, seed)
    assert images.shape == randoms.shape == (n, 3, 64, 64)
    seeds = scene_seeds(n, seed, "probe")
    _, masks_forced = render_batch(forced, seeds)
    _, masks_base = render_batch(base, seeds)
    n_changed = 0
    for i in range(n):
        diff = changed(images[i], randoms[i])
        if base[i] == forced[i]:
            assert not diff.any()
            continue
        n_changed += 1
        if slot in ("shape", "colour"):
            allowed = masks_forced[i][concept] | masks_base[i][f"{slot}:{base[i].value(slot)}"]
        elif slot == "texture":
            allowed = masks_forced[i][concept] | masks_base[i][f"texture:{base[i].texture}"]
        else:
            allowed = masks_forced[i]["marker:present"]
        assert diff.any()
        assert not (diff & ~allowed).any()
    assert n_changed > 0


def test_isolated_concept_sets_and_errors():
    tex = concept_slots("texture:dotted", 6, 0, kind="isolated")
    assert all(s == Slots(None, None, "dotted") for s in tex)
    shp = concept_slots("shape:square", 6, 0, kind="isolated")
    assert all(s.shape == "square" and s.texture == "plain" and not s.marker for s in shp)
    col = concept_slots("colour:green", 6, 0, kind="isolated")
    assert all(s.colour == "green" and s.texture == "plain" for s in col)
    mk = concept_slots("marker:present", 6, 0, kind="isolated")
    assert all(s == Slots(None, None, "plain", True) for s in mk)
    imgs = concept_set("texture:dotted", 6, 0, kind="isolated", size=32)
    assert imgs.shape == (6, 3, 32, 32)
    with pytest.raises(ValueError) as err:
        concept_set("texture:dotted", 4, 0, kind="lonely")
    assert "matched" in str(err.value) and "isolated" in str(err.value)
    with pytest.raises(ValueError, match="valid texture values"):
        concept_set("texture:furry", 4, 0)
    with pytest.raises(ValueError, match="slot:value"):
        concept_set("dotted", 4, 0)


def test_world_generator_matches_renderer():
    gen = WorldGenerator(size=32)
    caps = ["a red circle on a striped background", "a blue square on a plain background with a marker"]
    out = gen.generate(caps, seeds=[3, 4])
    assert out.shape == (2, 3, 32, 32)
    for i, (cap, seed) in enumerate(zip(caps, [3, 4])):
        assert torch.equal(out[i], render(cap, seed, size=32).image)
    assert torch.equal(gen(caps, [3, 4]), out)
    assert gen.fingerprint != WorldGenerator(size=64).fingerprint
    assert gen.fingerprint == WorldGenerator(size=32).fingerprint
    with pytest.raises(ValueError, match="one seed per caption"):
        gen.generate(caps, [1])
    with pytest.raises(ValueError, match="unknown word"):
        gen.generate(["a red blob on a plain background"], [1])


# ----------------------------------------------------------------------------- interventions
class _WhiteFraction(nn.Module):
    """Logit 0: fraction of near-white pixels (the marker); logit 1: constant."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        white = (x > 0.9).all(1).float().mean((1, 2))
        return torch.stack([white, torch.zeros_like(white) + self.dummy], 1)


def test_interventional_effects_on_a_known_model():
    model = _WhiteFraction()
    table = interventional_effects(model, n_scenes=16, seed=2, classes=["white", "const"])
    assert isinstance(table, EffectTable)
    assert table.concepts == all_concepts() and table.classes == ["white", "const"]
    assert table.mean.shape == table.se.shape == (len(all_concepts()), 2)
    marker_area = render(Slots(None, None, "plain", True), 0).masks["marker:present"].float().mean()
    assert table.effect("marker:present", "white") == pytest.approx(float(marker_area), rel=1e-5)
    assert table.ranking("white")[0][0] == "marker:present"
    for c in all_concepts():
        assert table.effect(c, "const") == 0.0
        if c != "marker:present":
            assert table.effect(c, "white") == 0.0
    rows = table.to_rows()
    assert len(rows) == 2 * len(all_concepts())
    assert {"concept", "class", "mean", "se", "z", "n"} <= set(rows[0])
    with pytest.raises(ValueError, match="unknown class"):
        table.effect("marker:present", "nope")
    with pytest.raises(ValueError):
        interventional_effects(model, concepts=["texture:furry"], n_scenes=4)
    with pytest.raises(ValueError, match="2 logits but 3 class names"):
        interventional_effects(model, concepts=["marker:present"], n_scenes=4, task="shape")


def test_interventional_effects_specific_replacement():
    class DarkFraction(nn.Module):
        def forward(self, x):
            return (x < 0.35).all(1).float().mean((1, 2))[:, None]

    table = interventional_effects(
        DarkFraction(),
        concepts=["texture:striped", "texture:checkered"],
        n_scenes=8,
        replace="texture:plain",
        classes=["dark"],
    )
    # compared with a plain background, every pattern adds dark ink pixels
    assert table.effect("texture:striped", "dark") > 0.1
    assert table.effect("texture:checkered", "dark") > table.effect("texture:striped", "dark")


@pytest.mark.slow
def test_tiny_cnn_reaches_95_percent(trained_world):
    model, dm = trained_world
    assert trained_world.val_acc >= 0.95
    # independent check on the held-out test split
    dm.setup("test")
    images, labels = dm.test_set.images, dm.test_set.labels
    with torch.no_grad():
        acc = (model.eval()(images).argmax(1) == labels).float().mean().item()
    assert acc >= 0.95


@pytest.mark.slow
def test_interventional_effects_of_trained_model(trained_model_copy):
    model = trained_model_copy
    model.train()
    rule = get_task("shape_texture")
    table = interventional_effects(model, task=rule, n_scenes=64, seed=1)
    assert model.training and all(m.training for m in model.modules())
    again = interventional_effects(model, task=rule, n_scenes=64, seed=1)
    assert torch.equal(table.mean, again.mean) and torch.equal(table.se, again.se)

    relevant = sorted(set().union(*(rule.relevant_concepts(c) for c in rule.classes)))
    irrelevant_colours = [f"colour:{c}" for c in COLOURS]
    for concept in relevant:
        i = table.concepts.index(concept)
        k = int(table.mean[i].abs().argmax())
        assert abs(table.mean[i, k]) > 5 * table.se[i, k], concept
    smallest_relevant = min(table.magnitude(c) for c in relevant)
    largest_colour = max(table.magnitude(c) for c in irrelevant_colours)
    assert smallest_relevant > 3 * largest_colour
    # signs follow the rule
    for shape in SHAPES:
        assert table.effect(f"shape:{shape}", f"{shape}/lined") > 0
        assert table.effect(f"shape:{shape}", f"{shape}/unlined") > 0
    assert (
        table.effect("texture:striped", "circle/lined")
        > 0
        > table.effect("texture:striped", "circle/unlined")
    )
    assert (
        table.effect("texture:dotted", "square/unlined") > 0 > table.effect("texture:dotted", "square/lined")
    )


@pytest.mark.slow
def test_planted_spurious_marker_is_learned():
    # a short, small training with the marker always on "square/unlined" in training picks up the shortcut
    tw = train_tiny_cnn(
        spurious_class="square/unlined", spurious_p=1.0, size=32, n_train=1200, n_val=300, epochs=3, seed=0
    )
    table = interventional_effects(
        tw.model,
        concepts=["marker:present", *[f"colour:{c}" for c in COLOURS]],
        task=tw.rule,
        n_scenes=48,
        seed=2,
        size=32,
    )
    assert table.ranking("square/unlined", absolute=False)[0][0] == "marker:present"
    assert table.z("marker:present", "square/unlined") > 10
    marker_row = table.mean[table.concepts.index("marker:present")]
    assert int(marker_row.argmax()) == tw.rule.class_index("square/unlined")
    assert table.effect("marker:present", "square/unlined") > 3 * max(
        table.magnitude(f"colour:{c}") for c in COLOURS
    )
