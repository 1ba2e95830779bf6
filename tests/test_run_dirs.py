"""One run, one directory, one id: two runs started from one directory never share a records file, every
record names its run, a resumed run goes on in its own file, and a report shows one run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_xai.callbacks import LogicRulesCallback, RepresentationDriftCallback
from lightning_xai.cli import main as lightning_xai_main
from lightning_xai.records import read_records, run_dir_of
from lightning_xai.report import load_run
from lightning_xai.runs import MixedRunsError


def _callbacks() -> list:
    return [
        RepresentationDriftCallback(),
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0),
    ]


def _fit(trainer, **kwargs) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(SmallNet(), datamodule=BlobData(), **kwargs)
    return [str(w.message) for w in caught if "lightning-xai" in str(w.message)]


@pytest.mark.wandb
def test_the_readme_example_run_twice_from_one_directory_gives_two_separate_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.chdir(tmp_path)  # WandbLogger(project=...) saves under "." as in the README
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    run_dirs = []
    for _ in range(2):
        logger = WandbLogger(project="my-classifier", offline=True)
        trainer = make_trainer(tmp_path, _callbacks(), max_epochs=2, logger=logger)
        assert _fit(trainer) == []
        run_dirs.append(run_dir_of(trainer))
        wandb.finish()
    first, second = run_dirs
    # each run in its W&B run's own folder, <save_dir>/<project>/<run id>, beside the other
    assert first != second and first.parent == second.parent and first.parent.name == "my-classifier"
    assert not (tmp_path / "xai").exists()  # nothing in the shared save_dir itself
    for run_dir in run_dirs:
        run = load_run(run_dir)  # a report of one run: its own epochs only, once each
        assert {r.run_id for r in run.records} == {run_dir.name}
        assert sorted((r.method, r.epoch) for r in run.records if r.name == "epoch") == [
            ("logic_rules", 0), ("logic_rules", 1), ("representation_drift", 0), ("representation_drift", 1),
        ]  # fmt: skip
        assert lightning_xai_main(["report", str(run_dir), "-o", str(run_dir / "report.html")]) == 0


def test_a_second_run_into_the_same_directory_is_separated_and_says_so(tmp_path: Path) -> None:
    first = make_trainer(tmp_path, _callbacks(), max_epochs=1, logger=False)
    assert _fit(first) == []
    (first_id,) = {r.run_id for r in read_records(tmp_path)}
    second = make_trainer(tmp_path, _callbacks(), max_epochs=1, logger=False)
    ours = _fit(second)
    assert len(ours) == 1 and repr(first_id) in ours[0], ours
    (moved,) = (tmp_path / "xai" / "runs").iterdir()
    assert moved.name != first_id and moved.name in ours[0] and str(moved / "records.jsonl") in ours[0]
    assert {r.run_id for r in read_records(tmp_path)} == {first_id}  # the first run's file is untouched
    assert {r.run_id for r in read_records(moved)} == {moved.name}


def test_a_resumed_run_goes_on_in_its_own_file_with_its_own_id(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(
        tmp_path, [*_callbacks(), ckpt], max_epochs=1, logger=False, enable_checkpointing=True
    )
    assert _fit(first) == []
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    resumed = make_trainer(
        tmp_path, [*_callbacks(), ckpt], max_epochs=2, logger=False, enable_checkpointing=True
    )
    assert _fit(resumed, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")) == []
    records = read_records(tmp_path)
    assert len({r.run_id for r in records}) == 1
    assert sorted(r.epoch for r in records if r.method == "logic_rules") == [0, 1]
    assert not (tmp_path / "xai" / "runs").exists()


def test_a_report_of_a_file_holding_two_runs_asks_for_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = make_trainer(tmp_path, _callbacks(), max_epochs=1, logger=False)
    _fit(first)
    second = make_trainer(tmp_path, _callbacks(), max_epochs=1, logger=False)
    _fit(second)
    (moved,) = (tmp_path / "xai" / "runs").iterdir()
    merged = tmp_path / "merged" / "xai"  # what appending by hand would make
    merged.mkdir(parents=True)
    lines = (tmp_path / "xai" / "records.jsonl").read_text() + (moved / "records.jsonl").read_text()
    (merged / "records.jsonl").write_text(lines)
    ids = list(dict.fromkeys(json.loads(line)["run_id"] for line in lines.splitlines()))
    assert len(ids) == 2
    with pytest.raises(MixedRunsError, match=rf"2 runs \({ids[0]!r}, {ids[1]!r}\).*--run ID"):
        load_run(merged)
    assert lightning_xai_main(["report", str(merged.parent)]) == 2
    assert "--run ID" in capsys.readouterr().err
    assert {r.run_id for r in load_run(merged, run_id=ids[1]).records} == {ids[1]}
    out = tmp_path / "one.html"
    assert lightning_xai_main(["report", str(merged.parent), "--run", ids[1], "-o", str(out)]) == 0
    assert out.is_file()
