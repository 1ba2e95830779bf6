"""Every callback together: DDP (both launchers), a one-rank fault, loggers that cannot write, out of memory.

The runs explain a frozen TinyCNN (``tests/_hardening.py``): weights and BatchNorm statistics do not move, so a
single-process run and a 2-process run explain the same model on the same gathered sample and must agree.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _hardening import (
    METHODS,
    TORCHVISION_LAYERS,
    FailsOnRank,
    MemoryProbe,
    fit_torchvision,
    pretrained_state,
    run,
)
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from lightning_xai.callbacks import ExplainResult, XAICallback
from lightning_xai.records import read_records

HERE = Path(__file__).resolve().parent
# values that may differ between launchers: the step in media file names (a DDP epoch has half the steps of a
# single-process one), wall-clock seconds, and generation counts (summed over ranks, which share the base scenes)
VOLATILE = ("path", "masks", "seconds", "generation")


def _diff(a: Any, b: Any, where: str, out: list[str], tol: float = 1e-4) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            out.append(f"{where}: keys {sorted(set(a) ^ set(b))}")
        for k in set(a) & set(b):
            if k not in VOLATILE:
                _diff(a[k], b[k], f"{where}.{k}", out, tol)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{where}[{i}]", out, tol)
    elif isinstance(a, float) and isinstance(b, float):
        if not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, rel_tol=tol, abs_tol=tol):
            out.append(f"{where}: {a} vs {b}")
    elif a != b:
        out.append(f"{where}: {a!r} vs {b!r}")


def _by_key(records: list) -> dict[tuple[str, str, int], list]:
    out: dict[tuple[str, str, int], list] = {}
    for r in records:
        out.setdefault((r.method, r.name, r.epoch), []).append(r)
    return out


# ----------------------------------------------------------------------------- loggers that cannot write


class UnwritableWandbLogger(WandbLogger):
    """W&B whose run folder cannot take files: scalars go through, tables and images fail like a read-only disk."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if any(not isinstance(v, (int, float, torch.Tensor)) for v in metrics.values()):
            raise PermissionError(13, "Permission denied", str(Path(self.save_dir) / "wandb" / "media"))
        super().log_metrics(metrics, step)


class _ReadOnlyWriter:
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def __getattr__(self, name: str) -> Any:
        if name in ("add_text", "add_image", "add_images", "add_figure", "add_image_with_boxes"):

            def fail(*args: Any, **kwargs: Any) -> None:
                raise OSError(28, "No space left on device")

            return fail
        return getattr(self._writer, name)


class FullDiskTensorBoardLogger(TensorBoardLogger):
    """TensorBoard whose event file takes scalars but fails on text, images and figures."""

    @property
    def experiment(self) -> Any:
        return _ReadOnlyWriter(super().experiment)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list]:
    """Every callback in one process, with three loggers that cannot write what the callbacks send them."""
    root = tmp_path_factory.mktemp("hardening")
    init = root / "init.pt"
    pretrained_state(init)
    out = root / "single"
    out.mkdir()
    csv = CSVLogger(out, name="csv", version=0)
    Path(csv.log_dir).mkdir(parents=True)
    (Path(csv.log_dir) / "xai_tables").write_text("a file where the CSV sink's folder should be")
    loggers = [
        csv,
        UnwritableWandbLogger(save_dir=str(out), offline=True, project="hardening"),
        FullDiskTensorBoardLogger(out, name="tb", version=0),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = run(
            out,
            init=init,
            loggers=loggers,
            extra=[FailsOnRank(1, max_failures=1)],
            checkpoint=True,
            cache_dir=str(root / "generation_cache"),
        )
        loggers[1].experiment.finish()
    assert trainer.current_epoch == 2
    return init, out, [str(w.message) for w in caught]


def test_loggers_that_cannot_write_lose_no_local_record(single_run: tuple[Path, Path, list]) -> None:
    _, out, messages = single_run
    records = read_records(out / "csv" / "version_0")
    keys = _by_key(records)
    for method in METHODS:  # every callback's explanation of every epoch is in the local store, no error
        for epoch in (0, 1):
            assert len(keys.get((method, "epoch", epoch), [])) == 1, (method, epoch)
    assert not [r for r in records if r.name == "error"]
    # the drift monitor compared epoch 1 with epoch 0 for every method
    assert {r.payload["method"] for r in records if r.method == "drift" and r.name == "epoch"} >= set(METHODS)
    # each broken sink was reported once, naming itself and where the record is kept
    for sink in ("CSVSink", "WandbSink", "TensorBoardSink"):
        hits = [m for m in messages if f"lightning-xai: {sink}" in m and "The record is kept in" in m]
        assert len(hits) == 1, (sink, [m for m in messages if "lightning-xai:" in m])
    # the scalars still reached the loggers that take them
    metrics = (out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "xai/concept_permutation/base_accuracy" in metrics


def test_resume_restores_every_callback_and_neither_loses_nor_repeats_a_record(
    single_run: tuple[Path, Path, list], tmp_path: Path
) -> None:
    init, single_out, _ = single_run
    out = tmp_path / "resumed"
    shutil.copytree(single_out, out)  # the stopped run: epochs 0 and 1, and its last checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = run(
            out,
            epochs=3,
            init=init,
            extra=[FailsOnRank(1, max_failures=1)],
            checkpoint=True,
            cache_dir=str(single_out.parent / "generation_cache"),
            ckpt_path=str(out / "ckpt" / "last.ckpt"),
        )
    explainers = [c for c in trainer.callbacks if isinstance(c, XAICallback)]
    assert len(explainers) == len(METHODS) + 1
    assert all(c.explained_epochs == [0, 1, 2] for c in explainers), [
        (c.method, c.explained_epochs) for c in explainers
    ]
    keys = _by_key(read_records(out / "csv" / "version_0"))
    for method in METHODS:  # one record per epoch: the stopped run's two, then the resumed run's one
        assert [len(keys.get((method, "epoch", e), [])) for e in (0, 1, 2)] == [1, 1, 1], method
    # each picked up where it stopped: previous results and warm starts came back from the checkpoint
    at2 = {m: keys[(m, "epoch", 2)][0].payload for m in METHODS}
    assert (
        at2["representation_drift"]["previous_epoch"] == 1
        and at2["representation_drift"]["reference_epoch"] == 0
    )
    assert at2["symbolic_tree"]["fit"]["initialised"] is False
    # the drift series continue: epoch 2 is compared with epoch 1 (from the checkpoint), the reference stays epoch 0
    drift = [r.payload for r in keys[("drift", "epoch", 2)]]
    assert {p["method"] for p in drift} >= set(METHODS)
    assert all(p["reference_epoch"] == 0 for p in drift)
    # a record holds its own epoch; the comparison with the checkpointed epoch 1 is the drift monitor's
    for p in drift:
        previous = [row["base_epoch"] for row in p["rows"] if row["against"] == "previous"]
        assert previous and set(previous) == {1}, p["method"]
    # the generation cache on disk is reused: the resumed run renders nothing again
    assert at2["concept_permutation"]["generation"]["generated_now"] == 0


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP on Linux/macOS only")
@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp"])
def test_every_callback_under_ddp_matches_the_single_process_run(
    strategy: str, single_run: tuple[Path, Path, list], tmp_path: Path
) -> None:
    init, single_out, _ = single_run
    out = tmp_path / strategy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        str(HERE / "_hardening_run.py"),
        str(out),
        "--strategy",
        strategy,
        "--devices",
        "2",
        "--init",
        str(init),
        "--fails-on-rank",
        "1",
    ]
    # a hang (a rank waiting alone in a collective) becomes a failure instead of a stuck test session
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # only rank 0 wrote records: one store, every record once
    stores = sorted(p.relative_to(out) for p in out.rglob("records.jsonl"))
    assert stores == [Path("csv/version_0/xai/records.jsonl")]
    ddp = _by_key(read_records(out / "csv" / "version_0"))
    single = _by_key(read_records(single_out / "csv" / "version_0"))
    assert all(len(v) == 1 for k, v in ddp.items() if k[0] != "drift"), {k: len(v) for k, v in ddp.items()}

    # the one-rank fault: both ranks agreed, rank 0 recorded it, both backed off, and the run did not hang
    assert ("fails_on_rank", "epoch", 1) not in ddp
    (error,) = ddp[("fails_on_rank", "error", 0)]
    assert error.payload["message"].startswith("rank 1 of 2 failed: OutOfMemoryError: simulated")
    assert "lower max_samples" in error.payload["hint"]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["disabled"] for r in reports] == [["FailsOnRank"], ["FailsOnRank"]]
    assert [r["epoch"] for r in reports] == [2, 2]
    assert reports[0]["keys"] == reports[1]["keys"]  # every rank logged the same monitorable scalars

    # every other record equals the single-process run's: split work (concepts, classes, targets) is complete
    assert {k for k in ddp if k[0] != "fails_on_rank"} == {k for k in single if k[0] != "fails_on_rank"}
    problems: list[str] = []
    for key, recs in ddp.items():
        if key[0] == "fails_on_rank":
            continue
        for a, b in zip(recs, single[key]):
            _diff(a.payload, b.payload, f"{key}", problems)
    assert not problems, problems[:20]
    permutation = ddp[("concept_permutation", "epoch", 0)][0].payload
    assert sorted(r["concept"] for r in permutation["importance"]) == ["colour", "marker", "shape", "texture"]
    assert (
        permutation["generation"]["generated_now"]
        >= single[("concept_permutation", "epoch", 0)][0].payload["generation"]["generated_now"]
    )
    attribution = ddp[("concept_attribution", "epoch", 0)][0].payload
    assert len(attribution["scores"]) == 6 * 2  # every class x concept at the one layer
    assert len(ddp[("diffusion_explainer", "epoch", 0)][0].payload["targets"]) == 6


# ----------------------------------------------------------------------------- out of memory


class OutOfMemoryExplainer(XAICallback):
    """Runs out of memory in its first ``fail`` explained epochs, holding a large tensor when it does."""

    method = "oom"

    def __init__(self, fail: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = fail
        self.calls = 0

    def explain(self, trainer: Any, pl_module: Any, sample: Any) -> ExplainResult:
        self.calls += 1
        if self.calls <= self.fail:
            workspace = torch.empty(4_000_000)  # noqa: F841 - held by the frame when the error is raised
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ExplainResult(payload={"n": len(sample)})


def test_out_of_memory_is_recorded_with_a_hint_and_backs_off(tmp_path: Path) -> None:
    cb = OutOfMemoryExplainer(fail=10, max_failures=2)
    trainer = make_trainer(tmp_path, [cb], max_epochs=4)
    with pytest.warns(UserWarning, match=r"OutOfMemoryExplainer \(oom\) failed 2 explained epochs in a row"):
        trainer.fit(SmallNet(), BlobData())
    assert trainer.current_epoch == 4 and cb.calls == 2 and cb.disabled
    errors = read_records(tmp_path / "logs" / "version_0", method="oom")
    assert [(r.name, r.epoch) for r in errors] == [("error", 0), ("error", 1)]
    assert errors[0].payload["type"] == "OutOfMemoryError"
    assert errors[0].payload["message"] == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "lower max_samples" in errors[0].payload["hint"]


def test_out_of_memory_under_raise_propagates_with_method_epoch_and_hint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [OutOfMemoryExplainer(fail=1, on_error="raise")], max_epochs=2)
    with pytest.raises(
        RuntimeError,
        match=r"OutOfMemoryExplainer \(oom\) failed at epoch 0: CUDA out of memory.*"
        r"lower max_samples",
    ) as err:
        trainer.fit(SmallNet(), BlobData())
    assert isinstance(err.value.__cause__, torch.cuda.OutOfMemoryError)


# ----------------------------------------------------------------------------- memory over a long run


@pytest.mark.slow
def test_thirty_epochs_with_every_callback_hold_memory_hooks_figures_and_tensors_steady(
    tmp_path: Path,
) -> None:
    # every callback explains after epochs 10, 20 and 30 (0-based 9, 19, 29); live tensors are counted after
    # epochs 5, 10, 20, 21 and 30
    probe = MemoryProbe(tensor_epochs=(4, 9, 19, 20, 29))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = run(tmp_path, epochs=30, frozen=False, every=10, extra=[probe])
    assert trainer.current_epoch == 30
    records = read_records(tmp_path / "csv" / "version_0")
    assert not [r for r in records if r.name == "error"]
    assert {r.epoch for r in records if r.method in METHODS} == {9, 19, 29}
    rows = {r["epoch"]: r for r in probe.rows}
    at5, at20, at30 = rows[4], rows[19], rows[29]
    assert at30["rss_mib"] <= 1.10 * at5["rss_mib"], (at5, at30)
    # hooks and figures: the same after every epoch (hooks are registered once, figures are never left open)
    assert {r["hooks"] for r in probe.rows} == {probe.rows[0]["hooks"]}
    assert {r["figures"] for r in probe.rows} == {0}
    # live tensors: after epoch 20 every callback has explained twice, so it holds its warm start and previous
    # result; a third explanation later nothing more is held. Lightning keeps a few scalar tensors per logged
    # key, and keys may still appear (a drift value that was NaN at first), so scalars may only grow with keys.
    assert abs(at30["tensor_mib"] - at20["tensor_mib"]) < 0.01, (at20, at30)
    assert at30["array_tensors"] == at20["array_tensors"], (at20, rows[20], at30)
    scalars20, scalars30 = at20["tensors"] - at20["array_tensors"], at30["tensors"] - at30["array_tensors"]
    assert scalars30 - scalars20 <= 6 * (at30["metric_keys"] - at20["metric_keys"]), (at20, at30)


# ----------------------------------------------------------------------------- models beyond the demo


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_every_callback_explains_torchvision_models_at_layers_chosen_by_name(
    arch: str, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_torchvision(
            arch, tmp_path, epochs=1
        )  # the drift monitor reads results only: covered by the runs above
    records = read_records(tmp_path / "csv" / "version_0")
    errors = [(r.method, r.epoch, r.payload["message"][:200]) for r in records if r.name == "error"]
    assert not errors
    keys = _by_key(records)
    assert all((method, "epoch", 0) in keys for method in METHODS), sorted(keys)
    layers = TORCHVISION_LAYERS[arch]
    assert layers["drift"] in keys[("representation_drift", "epoch", 0)][0].payload["representations"]
    assert keys[("concept_attribution", "epoch", 0)][0].payload["layers"] == [layers["tcav"]]
    assert keys[("symbolic_tree", "epoch", 0)][0].payload["layer"] == layers["tree"]
    head = "net.fc" if arch == "resnet18" else "net.classifier.3"
    assert keys[("logic_rules", "epoch", 0)][0].payload["head"] == head
