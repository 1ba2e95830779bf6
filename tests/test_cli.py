"""Every LightningCLI preset in ``callbacks/`` parses with ``examples/cli.py`` and trains one short epoch.

Each preset runs on a small planted-concept world (64 + 64 scenes, 2 + 2 batches) through the CLI's
``main(args=[...])``: the trainer must hold the preset's callbacks with the preset's arguments, finish, and
leave a record of every preset callback in ``<run dir>/xai/records.jsonl``: a real explanation, or (for a
callback whose inputs a preset leaves null) an ``"error"`` record naming the missing input. With the world
overlay ``examples/world.yaml`` those callbacks explain too. New presets are picked up by the glob below.

Per-callback costs are cut by one more config with the CLI's own ``callback_args`` (fewer optimisation
steps, random runs, repeats; merged key by key over the world overlay), so the file stays under a minute
on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml

from lightning_xai.records import Record, read_records, run_dir_of

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))
WORLD = ROOT / "examples" / "world.yaml"

# What each callback that needs inputs says is missing when a preset runs it without them.
MISSING_INPUTS: dict[str, tuple[str, ...]] = {
    "ConceptAttributionCallback": ("concepts=",),
    "ConceptPermutationCallback": ("generator=", "concept_table="),
    "DiffusionExplainerCallback": ("generator=",),
}

# The record method of callbacks that are not XAICallbacks (those have a ``method`` attribute).
RECORD_METHODS: dict[str, str] = {"ConceptDriftMonitor": "drift"}

# Seconds, not minutes, per callback on 64 validation scenes; every other argument is the preset's.
FAST: dict[str, dict[str, Any]] = {
    "LogicRulesCallback": {"max_grounding_images": 2, "max_perturbation_images": 2},
    "ConceptAttributionCallback": {
        "n_random": 4,
        "m_steps": 4,
        "images_per_class": 2,
        "probe_images": 1,
        "max_concept_images": 20,
    },
    "ConceptPermutationCallback": {
        "concepts": ["shape", "texture"],
        "n_repeats": 2,
        "n_bootstrap": 20,
        "show_progress": False,
    },
    "DiffusionExplainerCallback": {"targets": [0], "steps": 5, "n_images": 4, "show_progress": False},
    "SymbolicTreeCallback": {
        "steps_per_epoch": 5,
        "warmup_steps": 5,
        "image_trees": 1,
        "semantic_symbols": 0,
    },
}


def _preset_specs(preset: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(preset.read_text())["trainer"]["callbacks"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # small batches of 64x64 scenes: a second intra-op thread mostly adds synchronisation, and on a busy
    # 2-core machine its spin-waits make every run several times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    """``examples/cli.py`` imported as a module (``examples/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("lightning_xai_examples_cli", ROOT / "examples" / "cli.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _epochs(preset: Path) -> int:
    """Two epochs where the preset has the drift monitor: it compares an epoch with the one before."""
    return 2 if any(s["class_path"].endswith(".ConceptDriftMonitor") for s in _preset_specs(preset)) else 1


def _fit(cli: ModuleType, tmp_path: Path, preset: Path, world: bool) -> tuple[Any, list[Record]]:
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump({"callback_args": FAST}))
    configs = [preset, WORLD, fast] if world else [preset, fast]  # callback_args merge key by key
    args = ["fit", *(a for c in configs for a in ("--config", str(c)))]
    args += [
        "--data.n_train", "64", "--data.n_val", "64", "--data.batch_size", "32",
        "--trainer.max_epochs", str(_epochs(preset)),
        "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path),
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    run = cli.main(args)
    return run, read_records(run_dir_of(run.trainer))


def _method(callback: Any) -> str:
    return getattr(callback, "method", None) or RECORD_METHODS[type(callback).__name__]


def _plain(value: Any) -> bool:
    scalars = (bool, int, float, str)
    return isinstance(value, scalars) or (
        isinstance(value, list) and all(isinstance(v, scalars) for v in value)
    )


def _check_callbacks(
    trainer: Any, specs: list[dict[str, Any]], overrides: dict[str, dict[str, Any]]
) -> list[Any]:
    """The trainer holds the preset's callbacks, in order, with the preset's (and the overrides') arguments."""
    classes = []
    for spec in specs:
        module, _, name = spec["class_path"].rpartition(".")
        classes.append(getattr(importlib.import_module(module), name))
    ours = [cb for cb in trainer.callbacks if type(cb) in classes]
    assert [type(cb) for cb in ours] == classes
    for cb, spec in zip(ours, specs):
        name = type(cb).__name__
        expected = {**(spec.get("init_args") or {}), **overrides.get(name, {})}
        for key, value in expected.items():
            got = getattr(cb, key, None)
            got = list(got) if isinstance(got, tuple) else got
            if value is None or not (_plain(value) and _plain(got)):
                continue  # some arguments are kept parsed (targets, tables, images) or under another name
            assert got == value, f"{name}.{key}: callback has {got!r}, the config says {value!r}"
    return ours


def _runs() -> list[Any]:
    """Every preset as it is; with the world overlay too where it holds a callback that needs inputs
    (``all.yaml`` with the overlay has a test of its own below)."""
    runs = [pytest.param(p, False, id=p.stem) for p in PRESETS]
    for p in PRESETS:
        needs = {s["class_path"].rsplit(".", 1)[1] for s in _preset_specs(p)} & set(MISSING_INPUTS)
        if needs and p.stem != "all":
            runs.append(pytest.param(p, True, id=f"{p.stem}+world"))
    return runs


@pytest.mark.parametrize(("preset", "world"), _runs())
def test_preset_runs_with_lightning_cli(cli: ModuleType, tmp_path: Path, preset: Path, world: bool) -> None:
    run, records = _fit(cli, tmp_path, preset, world=world)
    trainer = run.trainer
    assert trainer.state.finished, trainer.state
    assert trainer.current_epoch == _epochs(preset)
    callbacks = _check_callbacks(trainer, _preset_specs(preset), FAST)

    # the config LightningCLI saved is the preset's, with callback_args folded into the callbacks and cleared
    saved = yaml.safe_load((run_dir_of(trainer) / "config.yaml").read_text())
    assert all(v is None for section in saved["callback_args"].values() for v in section.values())
    assert [c["class_path"] for c in saved["trainer"]["callbacks"]] == [
        s["class_path"] for s in _preset_specs(preset)
    ]

    for cb in callbacks:
        name, mine = type(cb).__name__, [r for r in records if r.method == _method(cb)]
        assert mine, f"{name} wrote no record; records: {[(r.method, r.name) for r in records]}"
        errors = [r for r in mine if r.name == "error"]
        if name in MISSING_INPUTS and not world:  # no inputs: training went on, the error says what to pass
            assert errors and [r.epoch for r in errors] == list(range(_epochs(preset)))
            for needed in MISSING_INPUTS[name]:
                assert needed in errors[0].payload["message"], errors[0].payload["message"]
        elif name == "ConceptDriftMonitor":  # the series starts at the second explained epoch
            assert not errors, errors[0].payload["message"]
            assert any(r.name == "epoch" and r.epoch == 1 for r in mine)
        else:
            assert not errors, errors[0].payload["message"]
            assert any(r.name == "epoch" and r.epoch == 0 for r in mine)


def test_world_overlay_gives_the_world_inputs(cli: ModuleType) -> None:
    """``--config callbacks/all.yaml --config examples/world.yaml`` as a user types it (parsed, not run)."""
    from lightning_xai.world import WorldGenerator, WorldPromptGenerator
    from lightning_xai.world.cli_helpers import (
        WorldConceptScores,
        WorldConceptSet,
        WorldConceptTable,
        WorldCoreConcepts,
        WorldRandomSet,
    )

    preset = ROOT / "callbacks" / "all.yaml"
    run = cli.main(["--config", str(preset), "--config", str(WORLD)], run=False)
    # the overlay adds inputs only: every other argument is still the preset's
    callbacks = {type(cb).__name__: cb for cb in _check_callbacks(run.trainer, _preset_specs(preset), {})}

    tcav = callbacks["ConceptAttributionCallback"]
    assert sorted(tcav.concepts) == ["colour:red", "shape:circle", "texture:dotted", "texture:striped"]
    assert all(isinstance(v, WorldConceptSet) and len(v) == 100 for v in tcav.concepts.values())
    assert isinstance(tcav.random, WorldRandomSet)
    depict = callbacks["ConceptPermutationCallback"]
    assert isinstance(depict.generator, WorldGenerator)
    assert isinstance(depict.concept_table, WorldConceptTable) and depict.concept_table.n == 200
    diffx = callbacks["DiffusionExplainerCallback"]
    assert isinstance(diffx.generator, WorldPromptGenerator)
    assert isinstance(diffx.concept_detector, WorldConceptScores)
    assert isinstance(diffx.core_concepts, WorldCoreConcepts)


def test_all_with_world_overlay_explains_with_every_callback(cli: ModuleType, tmp_path: Path) -> None:
    preset = ROOT / "callbacks" / "all.yaml"
    run, records = _fit(cli, tmp_path, preset, world=True)
    assert run.trainer.state.finished
    callbacks = _check_callbacks(run.trainer, _preset_specs(preset), FAST)

    for cb in callbacks:
        name, mine = type(cb).__name__, [r for r in records if r.method == _method(cb)]
        errors = [r.payload["message"] for r in mine if r.name == "error"]
        assert not errors, f"{name}: {errors[0]}"
        epochs = list(range(_epochs(preset)))
        expected = epochs[1:] if name == "ConceptDriftMonitor" else epochs  # drift needs a previous epoch
        assert sorted({r.epoch for r in mine if r.name == "epoch"}) == expected, (
            f"{name}: {[(r.name, r.epoch) for r in mine]}"
        )

    # the explanations are of the world's inputs
    by_method = {r.method: r.payload for r in records if r.name == "epoch"}
    assert sorted(by_method["concept_attribution"]["concepts"]) == [
        "colour:red", "shape:circle", "texture:dotted", "texture:striped"
    ]  # fmt: skip
    assert {row["concept"] for row in by_method["concept_permutation"]["importance"]} == {"shape", "texture"}
    targets = by_method["diffusion_explainer"]["targets"]
    assert [t["target"]["index"] for t in targets] == [0]
    assert targets[0]["readout"]["caption"].startswith(
        "a "
    )  # a world caption read out of the optimised prompt


def test_world_data_sets_the_model_head(cli: ModuleType) -> None:
    run = cli.main(
        ["--config", str(ROOT / "callbacks" / "logic_rules.yaml"), "--data.task", "shape"], run=False
    )
    assert run.model.hparams.num_classes == 3
    assert run.model.classes == run.datamodule.classes == ["circle", "square", "triangle"]


def test_callback_args_errors_name_the_problem(cli: ModuleType) -> None:
    from jsonargparse import Namespace

    preset = str(ROOT / "callbacks" / "logic_rules.yaml")
    with pytest.raises(SystemExit):  # jsonargparse's usage error: no such argument
        cli.main(["--config", preset, "--callback_args.LogicRulesCallback.stepz", "1"], run=False)
    with pytest.raises(SystemExit):  # typed like the callback's own argument
        cli.main(
            ["--config", preset, "--callback_args.LogicRulesCallback.every_n_epochs", "often"], run=False
        )

    spec = Namespace(class_path="lightning_xai.callbacks.LogicRulesCallback", init_args=Namespace(seed=0))
    with pytest.raises(ValueError, match="no arguments \\['stepz'\\]"):
        cli.apply_callback_args([spec], {"LogicRulesCallback": {"stepz": 3}})
    with pytest.raises(ValueError, match="'NoSuchCallback' is not a callback class"):
        cli.apply_callback_args([spec], {"NoSuchCallback": {}})
    # a class the preset does not use is skipped: one overlay serves every preset
    assert cli.apply_callback_args([spec], {"SymbolicTreeCallback": {"steps_per_epoch": 1}}) == []
    assert cli.apply_callback_args([spec], {"lightning_xai.callbacks.LogicRulesCallback": {"seed": 5}}) == [
        spec.class_path
    ]
    assert spec.init_args.seed == 5


def test_callback_args_merge_across_configs_and_flags(cli: ModuleType) -> None:
    """A flag changes one argument of the world overlay's callback without dropping the overlay's inputs."""
    run = cli.main(
        [
            "--config", str(ROOT / "callbacks" / "diffusion_explainer.yaml"),
            "--config", str(WORLD),
            "--callback_args.DiffusionExplainerCallback.steps", "7",
        ],
        run=False,
    )  # fmt: skip
    (diffx,) = [cb for cb in run.trainer.callbacks if type(cb).__name__ == "DiffusionExplainerCallback"]
    assert diffx.steps == 7 and diffx.generator is not None and diffx.core_concepts is not None


def test_the_package_cli_runs_a_preset_and_the_world_overlay_on_a_model_given_by_class_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lightning-xai fit`` is the same CLI, shipped in the package: any model and data by class path, the
    presets and the ``callback_args`` overlay as ``examples/cli.py`` takes them."""
    from lightning_xai.cli import main as lightning_xai_main

    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump({"callback_args": FAST}))
    preset = ROOT / "callbacks" / "concept_attribution.yaml"
    args = ["fit", "--config", str(preset), "--config", str(WORLD), "--config", str(fast)]
    args += [
        "--model.class_path", "lightning_xai.world.TinyCNN", "--model.init_args.width", "8",
        "--data.class_path", "lightning_xai.world.WorldDataModule",
        "--data.init_args.n_train", "64", "--data.init_args.n_val", "64", "--data.init_args.batch_size", "32",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(tmp_path),
    ]  # fmt: skip
    assert lightning_xai_main(args) == 0
    (records_file,) = tmp_path.rglob("records.jsonl")
    records = read_records(records_file)
    # the overlay gave the callback its world concept sets: a real explanation, not a missing-input error
    assert [(r.method, r.name, r.epoch) for r in records] == [("concept_attribution", "epoch", 0)]
    assert sorted(records[0].payload["concepts"]) == [
        "colour:red",
        "shape:circle",
        "texture:dotted",
        "texture:striped",
    ]
    # a bad overlay key is a usage error naming the valid classes, as in examples/cli.py
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"callback_args": {"NoSuchCallback": {"seed": 1}}}))
    assert lightning_xai_main(["fit", "--config", str(preset), "--config", str(bad)]) == 2
    assert "NoSuchCallback" in capsys.readouterr().err
