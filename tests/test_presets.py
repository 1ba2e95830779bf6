"""The LightningCLI YAML presets name real classes and arguments, and build working callbacks."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

PRESETS = sorted((Path(__file__).resolve().parents[1] / "callbacks").glob("*.yaml"))


def _instantiate(spec: dict):
    """Build a preset's callback, checking its arguments against what LightningCLI sees (jsonargparse follows
    ``**base`` into :class:`XAICallback`)."""
    from jsonargparse import ArgumentParser

    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    args = spec.get("init_args", {})
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "cb")
    defaults = vars(parser.get_defaults().cb)
    unknown = sorted(set(args) - set(defaults))
    assert not unknown, f"{spec['class_path']} has no arguments {unknown}"
    for key, value in args.items():  # presets show the defaults: keep them true
        default = defaults[key]
        if not (isinstance(default, tuple) and value == list(default)):
            assert value == default, f"{spec['class_path']}.{key}: preset {value!r} != default {default!r}"
    return cls(**args)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_preset_builds_its_callbacks(preset: Path) -> None:
    config = yaml.safe_load(preset.read_text())
    callbacks = [_instantiate(spec) for spec in config["trainer"]["callbacks"]]
    assert callbacks


def test_every_callback_has_a_preset_and_is_in_all() -> None:
    import lightning_xai.callbacks as cbs

    public = {n for n in cbs.__all__ if (n.endswith(("Callback", "Monitor"))) and n != "XAICallback"}
    assert "ConceptDriftMonitor" in public
    in_all = {
        s["class_path"].rsplit(".", 1)[1]
        for s in yaml.safe_load((PRESETS[0].parent / "all.yaml").read_text())["trainer"]["callbacks"]
    }
    assert public == in_all
    assert len(PRESETS) - 1 == len(public)
