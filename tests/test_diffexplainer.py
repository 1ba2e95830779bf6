"""DiffExplainer on the planted-concept world, where the true reasons of every class are known.

Ground truth: the default task's classes are ``<shape>/lined`` (striped or zigzag background) and
``<shape>/unlined``; colour and the marker are irrelevant, except for the model trained with the marker
tied to class 0, which has learned it.
"""

from __future__ import annotations

import copy
import itertools
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import lightning_xai.diffexplainer.explainer as dx_core
from lightning_xai.callbacks import ConceptDriftMonitor, DiffusionExplainerCallback
from lightning_xai.diffexplainer import (
    ClassifierInput,
    DiffExplainer,
    DiffusionExplainerResult,
    Readout,
    Target,
    ablation_effects,
    bias_report,
    optimize_prompt,
    pixel_activation_maximisation,
    suspects,
)
from lightning_xai.records import Record, read_records
from lightning_xai.results import SchemaError, read_result
from lightning_xai.world import (
    COLOURS,
    MARKER_VALUES,
    SHAPES,
    TEXTURES,
    Slots,
    TinyCNN,
    WorldColourMarkerDetector,
    WorldDataModule,
    WorldPromptGenerator,
    get_task,
    render,
    render_batch,
)

RULE = get_task("shape_texture")
DISPLAY = tuple(range(1000, 1032))  # 32 display images per target
STEPS = 300


# ------------------------------------------------------------------------------------ world generator
def test_softmax_mixture_is_the_expected_image_over_all_captions() -> None:
    gen = WorldPromptGenerator(size=16, seeds=(3,), relaxation="softmax")
    prompt = torch.randn(14, generator=torch.Generator().manual_seed(0))
    ps, pc, pt, pm = gen.probabilities(prompt)
    expected = torch.zeros(3, 16, 16)
    for (a, s), (b, c), (d, t), (e, m) in itertools.product(
        enumerate(SHAPES), enumerate(COLOURS), enumerate(TEXTURES), enumerate(MARKER_VALUES)
    ):
        image = render(Slots(s, c, t, m == "present"), seed=3, size=16).image
        expected += ps[a] * pc[b] * pt[d] * pm[e] * image
    assert torch.allclose(gen.render(prompt)[0], expected, atol=1e-5)


@pytest.mark.parametrize("relaxation", ["softmax", "gumbel"])
def test_a_confident_prompt_renders_exactly_its_caption(relaxation: str) -> None:
    gen = WorldPromptGenerator(size=16, seeds=(0, 5), relaxation=relaxation, init_strength=60.0)
    prompt = gen.init_prompt("a blue triangle on a zigzag background with a marker")
    images, _ = render_batch(
        ["a blue triangle on a zigzag background with a marker"] * 2, [0, 5], 16, return_masks=False
    )
    assert torch.allclose(gen.render(prompt), images, atol=1e-5)
    assert gen.readout(prompt).caption == "a blue triangle on a zigzag background with a marker"


def test_render_gradient_matches_finite_differences() -> None:
    gen = WorldPromptGenerator(size=16, seeds=(1, 2), relaxation="softmax")
    prompt = torch.randn(14, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    direction = torch.randn(14, generator=torch.Generator().manual_seed(3))

    def f(p: torch.Tensor) -> torch.Tensor:
        return (gen.render(p) * weights).sum()

    p = prompt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(p), p)
    eps = 1e-2
    numeric = (f(prompt + eps * direction) - f(prompt - eps * direction)) / (2 * eps)
    assert float(grad @ direction) == pytest.approx(float(numeric), rel=2e-2)


def test_gumbel_noise_restarts_at_init_prompt_so_runs_repeat() -> None:
    gen = WorldPromptGenerator(size=16, seeds=(0,))
    first = gen.render(gen.init_prompt())
    later = gen.render(gen.init_prompt() + 0.0)  # the stream has moved on: a new sample
    again = gen.render(gen.init_prompt())
    assert torch.equal(first, again)
    gen.init_prompt()
    gen.render(torch.zeros(14))
    assert not torch.equal(first, gen.render(torch.zeros(14)))
    del later


def test_images_are_scenes_drawn_from_the_prompt() -> None:
    gen = WorldPromptGenerator(size=16)
    prompt = gen.init_prompt("square")  # shape logit 2: p(square) = e^2 / (e^2 + 2)
    seeds = list(range(400))
    captions = gen.sample_captions(prompt, seeds)
    share = sum("square" in c for c in captions) / len(captions)
    p_square = float(gen.probabilities(prompt)[0][1])
    assert abs(share - p_square) < 0.06, (share, p_square)
    colours = {c: sum(f" {c} " in cap for cap in captions) / len(captions) for c in COLOURS}
    assert all(abs(v - 0.25) < 0.07 for v in colours.values()), colours  # untouched slots stay uniform
    images = gen.images(prompt, seeds[:4])
    expected, _ = render_batch(captions[:4], seeds[:4], 16, return_masks=False)
    assert torch.equal(images, expected) and torch.equal(images, gen.images(prompt, seeds[:4]))
    greedy = WorldPromptGenerator(size=16, temperature=0.0)
    assert set(greedy.sample_captions(prompt, seeds[:20])) == {greedy.readout(prompt).caption}


def test_init_prompt_reads_vocabulary_words_and_rejects_others() -> None:
    gen = WorldPromptGenerator(size=16)
    readout = gen.readout(gen.init_prompt("a red circle on a dotted background with a marker"))
    assert readout.caption == "a red circle on a dotted background with a marker"
    assert readout.positions == ["shape", "colour", "texture", "marker"]
    assert readout.candidates[0][0][0] == "circle" and readout.candidates[0][0][1] > 0.7
    with pytest.raises(
        ValueError, match=r"init word 'purple' is not in the world's vocabulary; valid words: circle"
    ):
        gen.init_prompt("a purple circle")
    with pytest.raises(ValueError, match="a world prompt is a tensor of 14 logits, got \\(13,\\)"):
        gen.render(torch.zeros(13))
    for kwargs, match in [
        ({"size": 4}, "size must be an integer >= 8"),
        ({"seeds": ()}, "seeds must be a non-empty sequence"),
        ({"relaxation": "hard"}, "relaxation='hard' is not supported; choose 'gumbel' or 'softmax'"),
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"gumbel_tau": 0.0}, "gumbel_tau must be > 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            WorldPromptGenerator(**kwargs)


def test_ablate_resets_one_slot_to_uniform() -> None:
    gen = WorldPromptGenerator(size=16)
    prompt = gen.init_prompt("a red circle on a dotted background with a marker")
    without = gen.ablate(prompt, "marker:present")
    before, after = gen.probabilities(prompt), gen.probabilities(without)
    assert after[3].tolist() == [0.5, 0.5]
    assert all(torch.equal(a, b) for a, b in zip(before[:3], after[:3]))
    assert gen.ablate(prompt, "sky:blue") is None and gen.ablate(prompt, "colour:purple") is None


def test_readout_drift_names_the_changed_positions() -> None:
    gen = WorldPromptGenerator(size=16)
    before = gen.readout(gen.init_prompt("a red circle on a dotted background"))
    after = Readout.from_dict(gen.readout(gen.init_prompt("a red square on a zigzag background")).to_dict())
    assert after.changed_since(before) == {"shape": ("circle", "square"), "texture": ("dotted", "zigzag")}
    assert after.changed_since(None) == {}


# ------------------------------------------------------------------------------------ targets
def test_targets_parse_and_reject_bad_specs() -> None:
    assert Target.parse(3) == Target("class", 3)
    assert Target.parse("neuron:12") == Target("neuron", 12)
    assert Target.parse("channel:conv3.0:5") == Target("channel", 5, "conv3.0")
    assert Target.parse("channel:conv3.0:5").label == "conv3.0[5]"
    for bad in ["pixel:3", "class:x", "channel:5", "neuron:", True, 2.5]:
        with pytest.raises(ValueError, match="cannot read target|index must be"):
            Target.parse(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative"):
        Target.parse(-1)


@pytest.mark.parametrize(
    ("target", "match"),
    [
        (6, r"target class 6 is out of range: the classifier has 6 classes \(valid: 0..5\)"),
        ("neuron:64", r"target neuron 64 is out of range: there are 64 head input features \(valid: 0..63\)"),
        (
            "channel:conv1:16",
            r"target channel 16 is out of range: there are 16 channels in layer 'conv1' \(valid: 0..15\)",
        ),
        ("channel:conv9:0", r"conv9"),
    ],
)
def test_targets_out_of_range_fail_clearly(target: Any, match: str) -> None:
    net = TinyCNN(num_classes=6)
    with pytest.raises(ValueError, match=match):
        optimize_prompt(net, WorldPromptGenerator(size=64, seeds=(0,)), target, steps=1)


@pytest.mark.slow
def test_neuron_and_channel_targets_raise_their_activation(trained_model_copy: TinyCNN) -> None:
    gen = WorldPromptGenerator(seeds=(0, 1), relaxation="softmax")
    for target in ("neuron:5", "channel:conv2:3"):
        res = optimize_prompt(trained_model_copy, gen, target, steps=60, image_seeds=(9,))
        # the objective is minus the mean activation: it must fall clearly (relative to its start)
        assert res.final_objective < res.initial_objective - 0.1 * abs(res.initial_objective), (
            target,
            res.initial_objective,
            res.final_objective,
        )
        assert res.probabilities is None and res.share_predicted is None


def test_classifier_input_resizes_and_normalises() -> None:
    pre = ClassifierInput(size=(32, 48), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.full((2, 3, 64, 64), 0.75, requires_grad=True)
    y = pre(x)
    assert y.shape == (2, 3, 32, 48) and torch.allclose(y, torch.ones_like(y))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert float(g.abs().sum()) > 0
    with pytest.raises(ValueError, match="give both mean and std"):
        ClassifierInput(mean=(0.5,))


# ------------------------------------------------------------------------------------ ground truth
def _class_textures(c: int) -> set[str]:
    return {k.split(":")[1] for k in RULE.positive_concepts(c) if k.startswith("texture:")}


def _explain_all(model: torch.nn.Module, classes: list[int], detector: Any) -> dict[int, Any]:
    """Optimise each class's prompt; bias report by the learned concept detector, checked by ablation."""
    gen = WorldPromptGenerator()
    reference = gen.images(gen.init_prompt(), DISPLAY)
    out = {}
    for c in classes:
        res = optimize_prompt(model, gen, c, steps=STEPS, early_stop=None, image_seeds=DISPLAY)
        core = RULE.positive_concepts(c)
        presence = bias_report(res.images, detector, core, reference, target=str(c))
        assert presence.flagged == suspects(res.images, detector, core, reference)
        effects = ablation_effects(
            model, gen, res, ["marker:present", *[f"colour:{k}" for k in COLOURS]], image_seeds=DISPLAY
        )
        report = bias_report(res.images, detector, core, reference, target=str(c), effects=effects)
        out[c] = (res, report, presence, effects)
    return out


@pytest.fixture(scope="module")
def clean_explanations(trained_world: Any, world_concept_detector: Any) -> dict[int, Any]:
    return _explain_all(trained_world.model, list(range(6)), world_concept_detector[0].scores)


@pytest.fixture(scope="module")
def spurious_explanations(spurious_world: Any, world_concept_detector: Any) -> dict[int, Any]:
    return _explain_all(spurious_world.model, [0], world_concept_detector[0].scores)


@pytest.mark.slow
def test_readout_names_each_class_defining_concepts_and_images_are_predicted(
    clean_explanations: dict[int, Any], trained_world: Any
) -> None:
    for c, (res, report, *_) in clean_explanations.items():
        shape = trained_world.classes[c].split("/")[0]
        # an independent, learned detector sees the class's shape in its images (far more than in the reference)
        assert f"shape:{shape}" in report.core_found, (c, report.rows)
        words = dict(zip(res.readout.positions, res.readout.words))
        assert words["shape"] == shape, (c, res.readout.caption)
        assert words["texture"] in _class_textures(c), (c, res.readout.caption)
        assert res.mean_probability >= 0.9, (c, res.mean_probability, res.readout.caption)
        assert res.share_predicted >= 0.85, (c, res.share_predicted)
        assert res.final_objective < 0.2 < res.initial_objective, (
            c,
            res.initial_objective,
            res.final_objective,
        )


@pytest.mark.slow
def test_the_planted_marker_is_read_out_and_flagged_only_for_the_model_that_learned_it(
    clean_explanations: dict[int, Any], spurious_explanations: dict[int, Any]
) -> None:
    res, report, presence, effects = spurious_explanations[0]
    assert dict(zip(res.readout.positions, res.readout.words))["marker"] == "present", res.readout.caption
    assert "with a marker" in res.readout.caption
    assert "marker:present" in presence.flagged and "marker:present" in report.flagged, report.rows
    assert effects["marker:present"] > 0.2, effects  # removing the marker costs the class: the model uses it
    for c, (res, report, presence, effects) in clean_explanations.items():
        assert "marker:present" not in presence.flagged, (c, presence.rows)
        marker = res.readout.candidates[3]
        assert max(p for _, p in marker) < 0.7, (c, marker)  # the clean prompt leaves the marker undecided
        # a colour the prompt drifted to is shown but not used: removing it changes nothing, so nothing is flagged
        assert all(abs(v) < 0.05 for v in effects.values()), (c, effects)
        assert report.flagged == [], (c, report.rows)


@pytest.mark.slow
def test_model_state_is_restored_and_nothing_gets_a_grad(trained_model_copy: TinyCNN) -> None:
    model = trained_model_copy.train()
    model.conv1.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    optimize_prompt(model, WorldPromptGenerator(seeds=(0,)), 2, steps=5, image_seeds=(1,))
    pixel_activation_maximisation(model, 2, steps=5)
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics included


@pytest.mark.slow
def test_runs_repeat_exactly(trained_model_copy: TinyCNN) -> None:
    gen = WorldPromptGenerator(seeds=(0, 1))
    a = optimize_prompt(trained_model_copy, gen, 4, steps=25, image_seeds=(3, 4))
    b = optimize_prompt(trained_model_copy, gen, 4, steps=25, image_seeds=(3, 4))
    assert (
        torch.equal(a.prompt, b.prompt) and torch.equal(a.images, b.images) and a.loss_curve == b.loss_curve
    )


@pytest.mark.slow
def test_early_stopping_ends_the_run_after_k_predicted_steps(trained_model_copy: TinyCNN) -> None:
    gen = WorldPromptGenerator(seeds=(0, 1))
    res = optimize_prompt(trained_model_copy, gen, 0, steps=200, early_stop=3, min_prob=0.5)
    assert res.stopped_early and res.steps < 200
    full = optimize_prompt(trained_model_copy, gen, 0, steps=res.steps, early_stop=None)
    assert not full.stopped_early and full.loss_curve == res.loss_curve  # same path until the stop
    for kwargs, match in [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"early_stop": 0}, "early_stop must be None"),
        ({"min_prob": 1.0}, r"min_prob must lie in \[0, 1\)"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"proximity": -1.0}, "proximity must be >= 0"),
        ({"init": torch.zeros(3)}, r"init prompt has shape \(3,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            optimize_prompt(trained_model_copy, gen, 0, **kwargs)


# ------------------------------------------------------------------------------------ pixel baseline
@pytest.mark.slow
@pytest.mark.parametrize("fourier", [False, True])
def test_pixel_activation_maximisation_improves_its_objective(
    trained_model_copy: TinyCNN, fourier: bool
) -> None:
    res = pixel_activation_maximisation(trained_model_copy, 1, steps=60, fourier=fourier, early_stop=None)
    assert (
        res.images.shape == (1, 3, 64, 64)
        and 0.0 <= float(res.images.min()) <= float(res.images.max()) <= 1.0
    )
    assert res.final_objective < res.initial_objective - 0.5, (res.initial_objective, res.final_objective)
    again = pixel_activation_maximisation(trained_model_copy, 1, steps=60, fourier=fourier, early_stop=None)
    assert torch.equal(res.images, again.images)
    with pytest.raises(ValueError, match="jitter must be an integer >= 0"):
        pixel_activation_maximisation(trained_model_copy, 1, jitter=-1)


# ------------------------------------------------------------------------------------ bias report
def test_bias_report_flags_over_represented_concepts_that_are_not_core() -> None:
    def detector(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"wood": x[:, 0, 0, 0], "metal": x[:, 1, 0, 0], "sky": x[:, 2, 0, 0]}

    images = torch.zeros(4, 3, 2, 2)
    images[:, 0] = 1.0  # wood everywhere
    images[:, 1] = 1.0  # metal everywhere (core)
    images[:2, 2] = 1.0  # sky in half
    reference = torch.zeros(4, 3, 2, 2)
    reference[:2, 2] = 1.0
    report = bias_report(images, detector, core_concepts=["metal"], reference=reference, target="padlock")
    assert report.flagged == ["wood"] and report.core_found == ["metal"]
    rows = {r["concept"]: r for r in report.rows}
    assert rows["sky"]["excess"] == 0.0 and not rows["sky"]["flagged"]
    assert bias_report(images, detector, [], {"wood": 0.9, "metal": 0.0, "sky": 0.5}).flagged == ["metal"]
    # an over-represented concept whose removal does not change the objective is reported, not flagged
    checked = bias_report(images, detector, ["metal"], reference, effects={"wood": 0.01}, min_effect=0.05)
    assert checked.flagged == [] and {r["concept"]: r["effect"] for r in checked.rows}["wood"] == 0.01
    assert bias_report(images, detector, ["metal"], reference, effects={"wood": 0.3}).flagged == ["wood"]
    with pytest.raises(ValueError, match="the detector gave 3 scores for concept 'wood' on 4 images"):
        bias_report(images, lambda x: {"wood": [1, 1, 1]}, [], reference)
    with pytest.raises(ValueError, match=r"min_excess must lie in \(0, 1\]"):
        bias_report(images, detector, [], reference, min_excess=0.0)


def test_world_detector_scores_colour_and_marker() -> None:
    images, _ = render_batch(
        ["a red circle on a striped background with a marker", "a blue square on a dotted background"],
        [0, 1],
        64,
        return_masks=False,
    )
    scores = WorldColourMarkerDetector().scores(images)
    assert scores["marker:present"].tolist() == [1.0, 0.0]
    assert scores["colour:red"].tolist() == [1.0, 0.0] and scores["colour:blue"].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------------------ callback
def _fit(
    root: Path, cb: DiffusionExplainerCallback, model: TinyCNN, epochs: int = 2, extra: list | None = None
) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        callbacks=[cb, *(extra or [])],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=WorldDataModule(n_train=128, n_val=64, seed=0))
    return trainer


def _callback(**kwargs: Any) -> DiffusionExplainerCallback:
    args: dict[str, Any] = {
        "generator": WorldPromptGenerator(seeds=(0, 1)),
        "targets": [0, "class:3"],
        "steps": 30,
        "concept_detector": WorldColourMarkerDetector().scores,
        "core_concepts": RULE.positive_concepts,
        "n_images": 6,
        "show_progress": False,
        "on_error": "raise",
    }
    args.update(kwargs)
    return DiffusionExplainerCallback(**args)


def _layout(value: Any) -> Any:
    """``value`` with every leaf replaced by its type and every list by its first item's layout: what stays the
    same however the numbers change and however many steps an optimisation took."""
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_layout(value[0])] if value else []
    return type(value).__name__


@pytest.mark.slow
def test_callback_logs_readouts_images_bias_reports_and_drift(
    tmp_path: Path, trained_model_copy: TinyCNN
) -> None:
    cb = _callback()
    monitor = ConceptDriftMonitor()
    # continue at a tenth of the training learning rate: a fresh Adam under one-cycle at 3e-3 for six steps can
    # undo the trained model (on one host the DEPICT table's accuracy fell from 1.00 to 0.22), and these tests
    # are about explaining a model that keeps its reasons while it trains on
    trained_model_copy.hparams.lr = 3e-4
    trainer = _fit(tmp_path, cb, trained_model_copy, extra=[monitor])
    records = read_records(tmp_path, method="diffusion_explainer")
    assert [r.epoch for r in records] == [0, 1]
    first, second = (r.payload for r in records)
    assert [t["label"] for t in first["targets"]] == ["class 0", "class 3"]
    drift = {
        r["key"]: r["value"]
        for r in monitor.tracker.history
        if (r["source"], r["kind"], r["against"], r["epoch"])
        == ("diffusion_explainer", "readout", "previous", 1)
    }
    for entry in second["targets"]:
        assert entry["readout"]["positions"] == ["shape", "colour", "texture", "marker"]
        assert 1 <= entry["steps"] <= 30 and len(entry["loss_curve"]) == entry["steps"]
        assert len(entry["probabilities"]) == 6
        assert {r["concept"] for r in entry["bias"]["rows"]} >= {"marker:present", "colour:red"}
        assert all("effect" in r for r in entry["bias"]["rows"])
        # drift is relative to the previous epoch's readout of the same target: the drift monitor's share of
        # the positions whose word changed
        prev = next(t for t in first["targets"] if t["label"] == entry["label"])
        changed = {
            p
            for p, (a, b) in zip(
                entry["readout"]["positions"], zip(prev["readout"]["words"], entry["readout"]["words"])
            )
            if a != b
        }
        assert drift[entry["label"]] == len(changed) / 4
    assert "a" in second["targets"][0]["readout"]["caption"]
    assert first["targets"][0]["readout"]["words"][0] == "circle"  # class 0 is circle/lined
    # the summary set: over the targets, not per target (log_scalars="all" adds those)
    mean_probability = sum(t["mean_probability"] for t in second["targets"]) / len(second["targets"])
    assert float(trainer.callback_metrics["xai/diffusion_explainer/probability"]) == pytest.approx(
        mean_probability
    )
    assert "xai/diffusion_explainer/probability/class_0" not in trainer.callback_metrics
    assert float(trainer.callback_metrics["xai/drift/diffusion_explainer/readout/max_prev"]) == pytest.approx(
        max(drift.values())
    )
    assert "xai/drift/diffusion_explainer/readout/prev/class 0" not in trainer.callback_metrics
    media = [m["path"] for m in second["media"]]
    assert len(media) == 2 and all((tmp_path / "xai" / p).is_file() for p in media)
    assert set(second["tables"]) == {"readout", "bias_report", "loss_curves"}
    # one epoch per record: nothing about other epochs, and every record laid out like the first
    for payload in (first, second):
        assert not {"previous_epoch", "history"} & set(payload)
        assert all("readout_changes" not in t for t in payload["targets"])
    assert _layout(first) == _layout(second)
    # the record reads back as the result the callback logged
    result = read_result(records[1])
    assert isinstance(result, DiffusionExplainerResult) and result.images == {}
    assert [t.label for t in result.targets] == ["class 0", "class 3"]
    assert result.logged(1).tables[0].rows == second["tables"]["readout"]["rows"]


@pytest.mark.slow
def test_explainer_result_round_trips_and_shares_merge(trained_model_copy: TinyCNN) -> None:
    detector = WorldColourMarkerDetector().scores
    options = {
        "steps": 8,
        "n_images": 3,
        "concept_detector": detector,
        "core_concepts": RULE.positive_concepts,
    }
    whole = DiffExplainer(WorldPromptGenerator(seeds=(0, 1)), targets=[0, 2, 3], **options)
    result = whole.explain(trained_model_copy)
    assert (
        sorted(result.images)
        == sorted(result.prompts)
        == sorted(whole.prompts)
        == ["class 0", "class 2", "class 3"]
    )
    payload = json.loads(json.dumps(result.to_payload()))  # as a record stores it
    back = DiffusionExplainerResult.from_payload(payload, schema=2)
    assert back == result and back.images == {}
    assert back.logged(0).tables[1].rows == result.logged(0).tables[1].rows  # the bias report
    assert [o.value for o in back.observations()] == [o.value for o in result.observations()]
    with pytest.raises(SchemaError, match=r"lacks \['generator'\]"):
        DiffusionExplainerResult.from_payload({"targets": payload["targets"]}, schema=2)
    broken = {k: v for k, v in payload["targets"][0].items() if k != "loss_curve"}
    with pytest.raises(SchemaError, match="unreadable target.*loss_curve"):
        DiffusionExplainerResult.from_payload({**payload, "targets": [broken]}, schema=2)
    # what the callback does under DDP: each rank explains a share of the targets, the shares are merged
    parts = []
    for share in ([0, 3], [2], None):
        dx = DiffExplainer(WorldPromptGenerator(seeds=(0, 1)), **options)
        parts.append(dx.explain(trained_model_copy, targets=share) if share else None)
    merger = DiffExplainer(WorldPromptGenerator(seeds=(0, 1)), **options)
    merged = merger.merge(parts, [Target.parse(t) for t in (0, 2, 3)])
    assert merged.to_payload() == result.to_payload()
    assert all(torch.equal(merged.images[k], v) for k, v in result.images.items())
    assert sorted(merger.prompts) == ["class 0", "class 2", "class 3"]


def test_old_records_keep_their_readout_changes_as_recorded() -> None:
    entry = {
        "target": {"kind": "class", "index": 0, "layer": None}, "label": "class 0",
        "readout": {"caption": "a red circle", "positions": ["colour", "shape"], "words": ["red", "circle"],
                    "candidates": [[["red", 0.9]], [["circle", 0.8]]]},
        "readout_changes": {"colour": ["blue", "red"]}, "steps": 3, "stopped_early": False,
        "initial_objective": 2.0, "final_objective": 0.5, "image_objective": 0.6, "mean_probability": 0.7,
        "share_predicted": 1.0, "probabilities": [0.7], "loss_curve": [2.0, 1.0, 0.5], "bias": None,
    }  # fmt: skip
    payload = {"targets": [entry], "previous_epoch": 1, "generator": "world"}
    result = read_result(Record("diffusion_explainer", "epoch", 3, 40, payload=payload))
    assert isinstance(result, DiffusionExplainerResult)
    assert result.recorded == {
        "previous_epoch": 1,
        "readout_changes": {"class 0": {"colour": ["blue", "red"]}},
    }
    assert result.targets[0].readout.candidates == [[("red", 0.9)], [("circle", 0.8)]]
    assert "readout_changes" not in result.to_payload()["targets"][0]
    (obs,) = result.observations()
    assert (obs.kind, obs.key, obs.value, obs.meta) == (
        "readout", "class 0", {"colour": "red", "shape": "circle"}, {"caption": "a red circle"}
    )  # fmt: skip


@pytest.mark.slow
def test_callback_warm_starts_each_target_from_its_previous_prompt(
    tmp_path: Path, trained_model_copy: TinyCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, Any]] = []
    real = dx_core.optimize_prompt

    def spy(model: Any, generator: Any, target: Any, **kwargs: Any) -> Any:
        seen.append((Target.parse(target).label, kwargs["init"]))
        return real(model, generator, target, **kwargs)

    monkeypatch.setattr(dx_core, "optimize_prompt", spy)
    cb = _callback(targets=[1], concept_detector=None, core_concepts=None)
    _fit(tmp_path, cb, trained_model_copy, epochs=1)
    after_first = cb.prompts["class 1"].clone()
    _fit(tmp_path / "more", cb, trained_model_copy, epochs=1)
    assert seen[0] == ("class 1", None)
    assert seen[1][0] == "class 1" and torch.equal(seen[1][1], after_first)


@pytest.mark.slow
def test_callback_with_default_targets_explains_every_class(
    tmp_path: Path, trained_model_copy: TinyCNN
) -> None:
    cb = _callback(targets=None, steps=2, concept_detector=None, core_concepts=None, n_images=2)
    _fit(tmp_path, cb, trained_model_copy, epochs=1)
    (record,) = read_records(tmp_path, method="diffusion_explainer")
    assert [t["label"] for t in record.payload["targets"]] == [f"class {c}" for c in range(6)]


def test_callback_state_round_trips_and_reads_old_checkpoints() -> None:
    cb = _callback()
    cb.prompts["class 0"] = torch.arange(14.0)
    other = _callback()
    other.load_state_dict(copy.deepcopy(cb.state_dict()))
    assert torch.equal(other.prompts["class 0"], cb.prompts["class 0"])
    assert set(cb.state_dict()["explainer"]) == {"prompts"}
    # a checkpoint of the callback before the typed results: its readouts, previous epoch and history are ignored
    old = {
        "prompts": {"class 3": torch.ones(14)},
        "readouts": {
            "class 3": {"caption": "x", "positions": ["shape"], "words": ["circle"], "candidates": []}
        },
        "previous_epoch": 4,
        "history": [{"epoch": 4, "captions": {"class 3": "x"}, "flagged": {"class 3": []}}],
    }
    other.load_state_dict({"explained_epochs": [4], "explainer": old})
    assert list(other.prompts) == ["class 3"] and other.explained_epochs == [4]
    assert other.state_key == cb.state_key != _callback(targets=[1]).state_key
    # the key is the one the callback had before it asked for no validation sample, so old checkpoints find it
    fields = {
        "every_n_epochs": 1,
        "on": "validation",
        "layers": [],
        "head": None,
        "max_samples": 2,
        "seed": 0,
    }
    assert cb.state_key == cb._generate_state_key(**fields, targets=["class 0", "class 3"], steps=30)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"targets": ["pixel:3"]}, "cannot read target 'pixel:3'"),
        ({"targets": []}, "targets must name at least one target"),
        ({"generator": object()}, "generator must be a prompt generator"),
        ({"core_concepts": None}, "a concept_detector needs core_concepts"),
        ({"min_prob": 1.0}, r"min_prob must lie in \[0, 1\)"),
        ({"early_stop": 0}, "early_stop must be an integer >= 1"),
        ({"n_images": 0}, "n_images must be an integer >= 1"),
        ({"min_excess": 0.0}, r"min_excess must lie in \(0, 1\]"),
        ({"on": "test"}, r"choose one of \['validation', 'train_epoch_end'\]"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        _callback(**kwargs)


def test_explainer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="generator must be a prompt generator"):
        DiffExplainer(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_images must be an integer >= 1"):
        DiffExplainer(WorldPromptGenerator(), n_images=0)
    with pytest.raises(ValueError, match="a concept_detector needs core_concepts"):
        DiffExplainer(WorldPromptGenerator(), concept_detector=WorldColourMarkerDetector().scores)
    with pytest.raises(ValueError, match="no classifier to explain"):
        DiffExplainer(WorldPromptGenerator()).explain()


# ------------------------------------------------------------------------------------ tiny diffusers, end to end
@pytest.fixture(scope="module")
def tiny_prompt_generator() -> Any:
    pytest.importorskip("diffusers")
    from lightning_xai.diffexplainer import DiffusersPromptGenerator
    from lightning_xai.generators import tiny_stable_diffusion_pipeline

    pipe = tiny_stable_diffusion_pipeline(seed=0)
    return pipe, DiffusersPromptGenerator(pipe, init_word="cat", num_inference_steps=2, seeds=(0, 1))


def test_optimize_prompt_through_tiny_diffusers_changes_only_the_soft_tokens(
    tiny_prompt_generator: Any,
) -> None:
    pipe, gen = tiny_prompt_generator
    classifier = TinyCNN(num_classes=6, width=8).eval()
    modules = {
        "classifier": classifier,
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
    }
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    kwargs = {"steps": 12, "lr": 0.5, "early_stop": None, "image_seeds": (5, 6)}
    res = optimize_prompt(classifier, gen, 2, **kwargs)
    assert res.final_objective < res.initial_objective, (res.initial_objective, res.final_objective)
    assert min(res.loss_curve[1:]) < res.loss_curve[0]
    assert not torch.equal(res.prompt, gen.init_prompt().cpu())  # the gradient reached the soft tokens
    for name, module in modules.items():
        assert all(p.grad is None for p in module.parameters()), name
        after = module.state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in after), name
    again = optimize_prompt(classifier, gen, 2, **kwargs)
    assert torch.equal(res.prompt, again.prompt) and torch.equal(res.images, again.images)
    assert res.images.shape == (2, 3, 64, 64)
    assert res.readout.positions == ["token 1", "token 2", "token 3"] and res.readout.caption.startswith(
        "a photo of "
    )


def test_callback_runs_with_a_diffusers_prompt_generator(tmp_path: Path, tiny_prompt_generator: Any) -> None:
    _, gen = tiny_prompt_generator
    cb = DiffusionExplainerCallback(
        gen, targets=[1], steps=2, n_images=2, show_progress=False, on_error="raise"
    )
    _fit(tmp_path, cb, TinyCNN(num_classes=6, width=8), epochs=1)
    (record,) = read_records(tmp_path, method="diffusion_explainer")
    (entry,) = record.payload["targets"]
    assert entry["readout"]["positions"] == ["token 1", "token 2", "token 3"] and entry["steps"] == 2
    assert record.payload["generator"].startswith("diffusers-prompt:StableDiffusionPipeline")


def test_world_prompt_generator_pickles_and_repeats() -> None:
    import pickle

    gen = WorldPromptGenerator(size=16, seeds=(0, 1))
    gen.render(gen.init_prompt())
    copy_ = pickle.loads(pickle.dumps(gen))
    assert copy_.fingerprint == gen.fingerprint
    assert torch.equal(copy_.render(copy_.init_prompt("circle")), gen.render(gen.init_prompt("circle")))


@pytest.mark.gpu
def test_a_classifier_on_cuda_works_with_the_cpu_world_generator() -> None:
    net = TinyCNN(num_classes=6).cuda().eval()
    res = optimize_prompt(net, WorldPromptGenerator(seeds=(0, 1)), 1, steps=3, image_seeds=(2,))
    assert len(res.loss_curve) == 3 and res.images.device.type == "cpu" and res.prompt.device.type == "cpu"
    assert all(p.grad is None for p in net.parameters())
