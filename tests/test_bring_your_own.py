"""``examples/bring_your_own.py``: a torchvision ResNet-18 trained on image folders, concept folders and a captions
CSV, with every callback attached; its training code never imports the planted world."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import pytest

from lightning_xai.records import read_records

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "bring_your_own.py"
STAND_INS = {"write_example_data", "example_pipeline"}


def _module():
    spec = importlib.util.spec_from_file_location("bring_your_own", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_stand_ins_for_the_users_data_import_the_world() -> None:
    tree = ast.parse(SCRIPT.read_text())
    importers = set()
    for fn in tree.body:
        names = [n.module for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(fn) if isinstance(n, ast.Import) for a in n.names]
        if any(name.startswith("lightning_xai.world") for name in names):
            importers.add(getattr(fn, "name", type(fn).__name__))
    assert importers == STAND_INS


@pytest.mark.slow
def test_every_callback_explains_the_users_model(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    byo = _module()
    byo.write_example_data(tmp_path / "data", n_train=192, n_val=96, n_captions=24)
    assert sorted(p.name for p in (tmp_path / "data" / "concepts").iterdir()) == [
        "colour_red", "shape_circle", "texture_striped",
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = byo.main(["--out", str(tmp_path / "run"), "--data", str(tmp_path / "data"), "--epochs", "1"])
    records = read_records(out["run_dir"])
    assert not [r.payload for r in records if r.name == "error"]
    explained = {r.method for r in records if r.name == "epoch" and r.epoch == 0}
    assert explained == {
        "representation_drift", "logic_rules", "concept_attribution", "symbolic_tree", "concept_permutation",
        "diffusion_explainer",
    }  # fmt: skip
