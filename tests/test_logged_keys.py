"""Logged keys under control: ``log_scalars`` on every callback picks the scalars that reach ``pl_module.log``
(the summary set by default, whose size does not grow with the classes); tables and media do not change."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import BlobData, SmallNet, blob_data
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_xai import callbacks
from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    ConceptDriftMonitor,
    LogicRulesCallback,
    RepresentationDriftCallback,
    SymbolicTreeCallback,
)
from lightning_xai.records import read_records
from lightning_xai.results import result_type, result_types

PUBLIC = sorted(n for n in callbacks.__all__ if n.endswith(("Callback", "Monitor")) and n != "XAICallback")


def _fit(root: Path, classes: int, log_scalars: Any = "summary", monitor: Any = "summary"):
    """Two epochs of four explainers and the drift monitor; ``log_scalars``: one choice for all, or by method."""
    seed_everything(0, verbose=False)
    if not isinstance(log_scalars, dict):
        log_scalars = dict.fromkeys(
            ("logic_rules", "concept_attribution", "representation_drift", "symbolic_tree"), log_scalars
        )
    concepts = {}
    for name, channel in (("red", 0), ("green", 1)):
        images = blob_data(24, seed=5 + channel).tensors[0]
        images[:, channel] += 1.0
        concepts[name] = images
    explainers = [
        LogicRulesCallback(
            max_grounding_images=0, max_perturbation_images=0, log_scalars=log_scalars["logic_rules"]
        ),
        ConceptAttributionCallback(
            concepts,
            n_random=3,
            images_per_class=2,
            probe_images=0,
            m_steps=4,
            log_scalars=log_scalars["concept_attribution"],
        ),
        RepresentationDriftCallback(log_scalars=log_scalars["representation_drift"]),
        SymbolicTreeCallback(
            levels=(24, 12),
            steps_per_epoch=4,
            warmup_steps=4,
            semantic_symbols=0,
            image_trees=0,
            log_scalars=log_scalars["symbolic_tree"],
        ),
    ]
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=2,
        logger=CSVLogger(str(root), name="csv", version=0),
        callbacks=[*explainers, ConceptDriftMonitor(log_scalars=monitor)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_train_batches=3,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SmallNet(classes=classes), BlobData(n_train=48, n_val=96, classes=classes))
    keys = sorted(k for k in trainer.callback_metrics if k.startswith("xai/"))
    return trainer, keys, [str(w.message) for w in caught]


def _tables(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in (root / "csv" / "version_0" / "xai_tables").rglob("*.csv")
    )


@pytest.mark.slow
def test_the_summary_set_does_not_grow_with_the_classes_and_all_logs_every_series(tmp_path: Path) -> None:
    _, few, _ = _fit(tmp_path / "few", classes=3)
    trainer, many, _ = _fit(tmp_path / "many", classes=10)
    everything_trainer, everything, _ = _fit(tmp_path / "all", classes=10, log_scalars="all", monitor="all")
    print(f"\nlogged keys at 10 classes x 2 concepts: summary {len(many)}, all {len(everything)}")
    # the summary keys name no class, so 3 and 10 classes log the same keys
    assert many == few
    assert not [k for k in many if re.search(r"class[ _]\d", k)], many
    assert set(many) < set(everything) and len(everything) > 3 * len(many)
    # everything on request: a TCAV score per (layer, concept, class), the drift monitor's series per class
    tcav = [k for k in everything if k.startswith("xai/concept_attribution/tcav/")]
    assert len(tcav) == 2 * 10  # one layer (the feature map), 2 concepts, 10 classes
    (record,) = [
        r
        for r in read_records(tmp_path / "all" / "csv" / "version_0", method="concept_attribution")
        if r.epoch == 1
    ]
    for entry in record.payload["scores"]:
        key = f"xai/concept_attribution/tcav/{entry['layer']}/{entry['concept']}/{entry['class']}"
        assert float(everything_trainer.callback_metrics[key]) == pytest.approx(entry["tcav"])
    jaccard = [k for k in everything if k.startswith("xai/drift/logic_rules/rule_jaccard/prev/")]
    assert len(jaccard) == 10
    # the summary holds what a user watches, and the maxima say the same as the series
    metrics = trainer.callback_metrics
    for key in ("logic_rules/fidelity", "concept_attribution/n_significant", "symbolic_tree/fidelity"):
        assert f"xai/{key}" in metrics, key
    assert "xai/drift/logic_rules/rule_jaccard/max_prev" in metrics
    series = [float(everything_trainer.callback_metrics[k]) for k in jaccard]
    assert float(everything_trainer.callback_metrics["xai/drift/logic_rules/rule_jaccard/max_prev"]) == (
        pytest.approx(max(series))
    )
    # tables and media do not depend on log_scalars: the same table files, the same media in the records
    assert [p.split("/", 1)[1] for p in _tables(tmp_path / "many")] == [
        p.split("/", 1)[1] for p in _tables(tmp_path / "all")
    ]
    media = {
        name: sorted(
            m["key"]
            for r in read_records(tmp_path / name / "csv" / "version_0")
            for m in r.payload.get("media", [])
        )
        for name in ("many", "all")
    }
    assert media["many"] == media["all"] and media["many"]


@pytest.mark.slow
def test_key_patterns_and_none(tmp_path: Path) -> None:
    choices = {
        "logic_rules": ["fidelity", "fidelity/*"],
        "concept_attribution": ["tcav/*/red/*"],
        "representation_drift": ["cka_prev/*", "cka_previous/*"],  # the second one is a typo
        "symbolic_tree": "none",
    }
    _, keys, messages = _fit(tmp_path, classes=3, log_scalars=choices, monitor=["*/max_prev"])
    scorings = [k for k in keys if k.startswith("xai/logic_rules/fidelity/")]
    assert "xai/logic_rules/fidelity" in keys and scorings
    assert [k for k in keys if k.startswith("xai/logic_rules/")] == sorted(
        ["xai/logic_rules/fidelity", *scorings]
    )
    assert [k for k in keys if k.startswith("xai/concept_attribution/")] == [
        f"xai/concept_attribution/tcav/bn/red/class_{k}" for k in range(3)
    ]
    assert [k for k in keys if k.startswith("xai/representation_drift/")] == [
        "xai/representation_drift/cka_prev/features"
    ]
    assert not [k for k in keys if k.startswith("xai/symbolic_tree/")]
    drift = [k for k in keys if k.startswith("xai/drift/")]
    assert drift and all(k.endswith("/max_prev") for k in drift)
    # a pattern that matches none of a callback's keys in the run is said once, at the end, with the keys it had
    unmatched = [m for m in messages if "matched none of the keys" in m]
    assert len(unmatched) == 1 and unmatched[0].startswith("RepresentationDriftCallback"), unmatched
    assert "['cka_previous/*']" in unmatched[0] and "cka_prev/features" in unmatched[0]
    # what is not logged is still recorded
    assert [r.epoch for r in read_records(tmp_path / "csv" / "version_0", method="symbolic_tree")] == [0, 1]


@pytest.mark.parametrize("name", PUBLIC)
def test_every_callback_takes_log_scalars_and_names_the_choices(name: str) -> None:
    cls = getattr(callbacks, name)
    needs = {"ConceptAttributionCallback": {"concepts": {"red": torch.zeros(2, 3, 8, 8)}}}
    for bad in ("everything", [], [""], 3):
        with pytest.raises(MisconfigurationException) as info:
            cls(**needs.get(name, {}), log_scalars=bad)
        text = str(info.value)
        assert f"log_scalars={bad!r}" in text and "'summary', 'all', 'none'" in text, text
    cb = cls(**needs.get(name, {}), log_scalars=["fidelity"])
    assert cb.log_scalars == ("fidelity",)


def test_the_drift_monitors_log_keys_is_deprecated_for_log_scalars() -> None:
    with pytest.deprecated_call(match="log_scalars='all'"):
        monitor = ConceptDriftMonitor(log_keys=True)
    assert monitor.log_scalars == "all"


def test_the_documented_summary_sets_are_the_results_own() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "records.md").read_text()
    block = page.split("<!-- summary-scalars:start -->")[1].split("<!-- summary-scalars:end -->")[0]
    documented = {}
    for line in block.strip().splitlines()[2:]:
        method, keys = (c.strip() for c in line.strip().strip("|").split(" | "))
        documented[method.split()[0].strip("`")] = re.findall(r"`([^`]+)`", keys)
    methods = {m for m, name in result_types() if name == "epoch" and m != "drift"}
    assert set(documented) == methods | {"drift"}
    for method in methods:
        declared = [k for k in result_type(method).summary_scalars if k != "time_s"]
        assert documented[method] == declared, method
        assert "time_s" in result_type(method).summary_scalars, method
