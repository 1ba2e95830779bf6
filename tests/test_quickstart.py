"""The quickstart (what `make demo` runs) end to end: local store, W&B offline run and CSV metrics agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _wandb_offline import find_offline_runs, logged_images, logged_tables
from PIL import Image

from lightning_xai.records import read_records

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


def _records_dir(quickstart_run: tuple[Path, dict]) -> Path:
    """The run dir of the quickstart's records: its W&B run's own folder."""
    return Path(quickstart_run[1]["run_dir"])


@pytest.mark.slow
@pytest.mark.wandb
def test_quickstart_writes_one_record_per_explained_epoch(quickstart_run: tuple[Path, dict]) -> None:
    out, summary = quickstart_run
    lines = (_records_dir(quickstart_run) / "xai" / "records.jsonl").read_text().splitlines()
    # representation drift, logic rules and symbol trees explain both epochs; concept attribution, permutation and
    # DiffExplainer every second; the drift monitor compares epoch 1 of the first three with their epoch 0
    records = read_records(_records_dir(quickstart_run))
    alerts = [r for r in records if r.method == "drift" and r.name == "alert"]
    assert len(lines) == 12 + len(alerts) == summary["records"]
    # the records are in the W&B run's own folder, <save_dir>/<project>/<run id>, and carry that run id
    (wandb_run,) = find_offline_runs(out)
    run_id = wandb_run.name.rsplit("-", 1)[-1]
    assert _records_dir(quickstart_run) == out / "lightning-xai-quickstart" / run_id
    assert {r.run_id for r in records} == {run_id}
    assert sorted((r.method, r.epoch) for r in records if r.name == "epoch") == [
        ("concept_attribution", 1),
        ("concept_permutation", 1),
        ("diffusion_explainer", 1),
        ("drift", 1),
        ("drift", 1),
        ("drift", 1),
        ("logic_rules", 0),
        ("logic_rules", 1),
        ("representation_drift", 0),
        ("representation_drift", 1),
        ("symbolic_tree", 0),
        ("symbolic_tree", 1),
    ]
    drift = {r.payload["source"]: r.payload for r in records if r.method == "drift" and r.name == "epoch"}
    assert set(drift) == {"representation_drift", "logic_rules", "symbolic_tree"}
    assert {row["kind"] for row in drift["symbolic_tree"]["rows"]} == {"symbol_js"}
    assert {row["kind"] for row in drift["logic_rules"]["rows"]} == {"rule_jaccard", "rule_fidelity"}
    # the CKA drift is the source's own CKA with the previous epoch, as a distance
    cka = next(r for r in records if r.method == "representation_drift" and r.epoch == 1).payload["cka_prev"]
    assert {
        row["key"]: row["value"]
        for row in drift["representation_drift"]["rows"]
        if row["against"] == "previous"
    } == pytest.approx({rep: 1 - v for rep, v in cka.items()})
    records = read_records(_records_dir(quickstart_run), method="representation_drift")
    assert [(r.method, r.name, r.epoch) for r in records] == [
        ("representation_drift", "epoch", 0),
        ("representation_drift", "epoch", 1),
    ]
    first, second = records
    assert first.payload["cka_prev"] == {"features": 1.0, "conv3": 1.0}
    assert 0.0 < second.payload["cka_prev"]["features"] < 1.0
    assert second.payload["n_samples"] == 512
    assert second.global_step > first.global_step > 0
    # the media a record points to exist and are real images
    permutation = read_records(_records_dir(quickstart_run), method="concept_permutation", name="epoch")[-1]
    assert permutation.payload["media"]
    for rel in [m["path"] for m in permutation.payload["media"]]:
        with Image.open(_records_dir(quickstart_run) / "xai" / rel) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    # each line holds its own epoch only (no history copied forward) and says which schema wrote it
    drift_lines = [json.loads(line) for line in lines if json.loads(line)["method"] == "representation_drift"]
    assert [line["schema"] for line in drift_lines] == [2, 2]
    assert set(drift_lines[-1]["payload"]) == set(drift_lines[0]["payload"])


@pytest.mark.slow
@pytest.mark.wandb
def test_wandb_offline_run_holds_the_logged_tables_and_images(quickstart_run: tuple[Path, dict]) -> None:
    out, _ = quickstart_run
    runs = find_offline_runs(out)
    assert len(runs) == 1
    tables = logged_tables(runs[0])
    # the last logged CKA table is the last record's CKA
    table = tables["xai/representation_drift/cka"]
    record = read_records(_records_dir(quickstart_run), method="representation_drift")[-1]
    rows = {row[0]: row for row in table["data"]}
    col = table["columns"].index("cka_prev")
    assert {rep: row[col] for rep, row in rows.items()} == pytest.approx(record.payload["cka_prev"])
    images = logged_images(runs[0])
    assert images
    with Image.open(images[-1]) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 5  # a drawn chart, not a blank canvas


@pytest.mark.slow
def test_scalars_reach_the_csv_logger(quickstart_run: tuple[Path, dict]) -> None:
    out, summary = quickstart_run
    metrics = next((out / "csv").glob("version_*/metrics.csv"))
    rows = list(csv.DictReader(metrics.open()))
    logged = [
        float(r["xai/representation_drift/cka_ref/features"])
        for r in rows
        if r.get("xai/representation_drift/cka_ref/features")
    ]
    expected = [
        r.payload["cka_ref"]["features"]
        for r in read_records(_records_dir(quickstart_run), method="representation_drift")
    ]
    assert logged == pytest.approx(expected)
    assert 0.0 <= summary["val_acc"] <= 1.0


@pytest.mark.slow
@pytest.mark.wandb
def test_wandb_tables_keep_their_keys_and_columns_across_epochs(quickstart_run: tuple[Path, dict]) -> None:
    """Runs compare in the W&B UI: a method that explains two epochs logs the same table keys, with the same
    columns, at both (the local records say which methods ran when)."""
    from _wandb_offline import logged_table_history

    out, _ = quickstart_run
    (run,) = find_offline_runs(out)
    history = logged_table_history(run)
    records = read_records(_records_dir(quickstart_run))
    twice = {r.method for r in records if r.name == "epoch" and r.epoch == 0} & {
        r.method for r in records if r.name == "epoch" and r.epoch == 1
    }
    assert twice >= {"representation_drift", "logic_rules", "symbolic_tree"}
    for method in twice:
        keys = {k for k in history if k.startswith(f"xai/{method}/")}
        assert keys, method
        # its tables come back under the same keys with the same columns
        repeated = [k for k in keys if len(history[k]) >= 2]
        assert len(repeated) >= len(keys) / 2, (method, sorted(keys))
        for k in repeated:
            assert all(e["columns"] == history[k][0]["columns"] for e in history[k]), k


def test_quickstart_diffusion_mode_explains_through_the_shipped_model() -> None:
    """``--generator diffusion``: DEPICT and DiffExplainer use the shipped world diffusion model, and every
    concept set is drawn at its 32x32 (the size the classifier then trains at). A bad choice is refused."""
    pytest.importorskip("diffusers")
    import importlib.util

    from lightning_xai.callbacks import (
        ConceptAttributionCallback,
        ConceptPermutationCallback,
        DiffusionExplainerCallback,
    )
    from lightning_xai.generators import DiffusersGenerator
    from lightning_xai.world import WorldDiffusionPromptGenerator

    spec = importlib.util.spec_from_file_location("quickstart_module", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    callbacks = {type(cb): cb for cb in module.build_callbacks("diffusion")}
    assert isinstance(callbacks[ConceptPermutationCallback].generator, DiffusersGenerator)
    assert isinstance(callbacks[DiffusionExplainerCallback].generator, WorldDiffusionPromptGenerator)
    concepts = callbacks[ConceptAttributionCallback]
    assert all(tuple(x.shape[-2:]) == (32, 32) for x in concepts.concepts.values())
    with pytest.raises(ValueError, match=r"generator must be one of \['renderer', 'diffusion'\], got 'gan'"):
        module.build_callbacks("gan")
    with pytest.raises(SystemExit):
        module.main(["--generator", "gan"])
