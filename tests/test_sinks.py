"""Sinks: W&B (offline), TensorBoard, CSV, the dispatcher, and read-back of offline W&B runs."""

from __future__ import annotations

import csv
import importlib
import json
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from _wandb_offline import find_offline_runs, logged_images, logged_tables
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from PIL import Image

from lightning_xai.records import Chart, Explanation, LocalStore, Media, Record, Table, read_records
from lightning_xai.sinks import (
    MAX_IMAGES_PER_CALL,
    CSVSink,
    Sink,
    SinkDispatcher,
    WandbSink,
    chart_to_figure,
    table_to_markdown,
)

METHOD = "demo"
ROWS = [["striped", 0.75], ["dotted", 0.25], ["plain", -0.5]]
CURVE = [[0, 1.0, 0.5], [1, 2.0, 0.25], [2, 4.0, 0.125]]
H, W = 20, 28


def _wandb_env(mp: pytest.MonkeyPatch, root: Path) -> None:
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_CONSOLE", "off")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        mp.setenv(var, str(root / var.lower()))


def make_explanation(epoch: int, step: int) -> Explanation:
    rng = np.random.default_rng(epoch)
    image = torch.from_numpy(rng.random((3, H, W), dtype=np.float32))
    mask = np.zeros((H, W), np.uint8)
    mask[5:12, 4:20] = 1
    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=40)  # a pyplot figure: must be closed by Media
    ax.imshow(rng.random((4, 4)))
    scores = Table("scores", ["concept", "score"], [list(r) for r in ROWS])
    curve = Table("curve", ["step", "loss", "lr"], [list(r) for r in CURVE])
    return Explanation(
        record=Record(METHOD, "scores", epoch, step, 0.1, {"best": "striped"}),
        tables=[scores],
        charts=[
            Chart("scores_bar", "bar", scores, x="concept", y="score", title="concept scores"),
            Chart("curve", "line", curve, x="step", y="loss"),
            Chart("curves", "line", curve, x="step", y=["loss", "lr"]),
        ],
        media=[
            Media(
                "saliency",
                image,
                caption="striped region",
                masks={"concept": mask},
                mask_labels={1: "striped"},
                boxes=[{"x0": 4, "y0": 5, "x1": 20, "y1": 12, "label": "striped", "score": 0.9}],
            ),
            Media("heatmap", fig, caption="a figure"),
        ],
        text={"summary": "striped drives class 0"},
    )


class DispatchOnce(Callback):
    """Dispatches one explanation at the end of the (non-sanity) validation epoch."""

    def __init__(self) -> None:
        self.written: list[Record] = []
        self.steps: list[int] = []

    def setup(self, trainer, pl_module, stage):
        self.dispatcher = SinkDispatcher(trainer)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.steps.append(trainer.global_step)
        explanation = make_explanation(trainer.current_epoch, trainer.global_step)
        self.written.append(self.dispatcher.dispatch(explanation, step=trainer.global_step))


# Lightning ships the same classes twice: ``lightning.pytorch`` and the standalone ``pytorch_lightning``
NAMESPACES = ("lightning.pytorch", "pytorch_lightning")


@pytest.fixture(scope="module", params=NAMESPACES)
def trained(request, tmp_path_factory):
    """One real fit with W&B (offline), TensorBoard and CSV loggers of one namespace (its Trainer, model and
    loggers); shared by the end-to-end tests."""
    import wandb

    pl = importlib.import_module(request.param)
    pl_loggers = importlib.import_module(f"{request.param}.loggers")
    boring = importlib.import_module(f"{request.param}.demos.boring_classes").BoringModel
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, root)
        loggers = [
            pl_loggers.WandbLogger(offline=True, save_dir=str(root / "wb"), project="xai-test"),
            pl_loggers.TensorBoardLogger(str(root), name="tb"),
            pl_loggers.CSVLogger(str(root), name="csv"),
        ]
        assert type(loggers[0]).__module__.startswith(request.param)
        (root / "wb").mkdir()
        cb = DispatchOnce()
        trainer = pl.Trainer(
            default_root_dir=root,
            logger=loggers,
            callbacks=[cb],
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(boring())
        wandb.finish()
    return {"root": root, "trainer": trainer, "cb": cb, "loggers": loggers, "warnings": caught}


# -------------------------------------------------------------------------------------------- end to end
@pytest.mark.wandb
def test_fit_writes_local_records(trained):
    cb = trained["cb"]
    assert len(cb.written) == 1 and cb.steps == [2]
    # the first logger is W&B: the records go to that run's own folder, <save_dir>/<project>/<run id>
    run_id = trained["loggers"][0].version
    run_dir = trained["root"] / "wb" / "xai-test" / run_id
    assert cb.dispatcher.store.root == run_dir / "xai"
    (rec,) = read_records(run_dir, method=METHOD)
    assert rec == cb.written[0] and rec.run_id == run_id
    assert (rec.epoch, rec.global_step, rec.payload["best"]) == (0, 2, "striped")
    assert rec.payload["tables"]["scores"]["rows"] == ROWS
    assert rec.payload["tables"]["curve"]["rows"] == CURVE
    for entry in rec.payload["media"]:
        assert (run_dir / "xai" / entry["path"]).is_file()
    with Image.open(run_dir / "xai" / rec.payload["media"][0]["path"]) as im:
        assert im.size == (W, H)
    assert not [w for w in trained["warnings"] if "lightning-xai" in str(w.message)]


@pytest.mark.wandb
def test_fit_writes_wandb_tables_and_images(trained):
    (run,) = find_offline_runs(trained["root"] / "wb")
    tables = logged_tables(run)
    assert tables[f"xai/{METHOD}/scores"]["columns"] == ["concept", "score"]
    assert tables[f"xai/{METHOD}/scores"]["data"] == ROWS
    assert tables[f"xai/{METHOD}/scores_bar_table"]["data"] == ROWS  # the bar chart's table
    assert tables[f"xai/{METHOD}/curve_table"]["columns"] == ["step", "loss", "lr"]
    assert tables[f"xai/{METHOD}/curve_table"]["data"] == CURVE
    series = tables[f"xai/{METHOD}/curves_table"]["data"]  # line_series: long format
    assert sorted((r[1], r[0], r[2]) for r in series) == sorted(
        [("loss", s, loss) for s, loss, _ in CURVE] + [("lr", s, lr) for s, _, lr in CURVE]
    )
    assert tables[f"xai/{METHOD}/text"]["data"] == [["summary", "striped drives class 0"]]

    sal = logged_images(run, key=f"xai/{METHOD}/saliency")
    assert len(sal) == 1
    with Image.open(sal[0]) as im:
        assert im.size == (W, H)
    assert len(logged_images(run, key=f"xai/{METHOD}/heatmap")) == 1
    masks = [p for p in logged_images(run, include_masks=True) if p.name.endswith(".mask.png")]
    assert len(masks) == 1
    with Image.open(masks[0]) as im:
        assert int(np.asarray(im).max()) == 1 and im.size == (W, H)
    (boxes,) = (run / "files" / "media" / "metadata" / "boxes2D").rglob("*.boxes2D.json")
    (box,) = json.loads(boxes.read_text())["box_data"]
    assert box["position"] == {"minX": 4.0, "minY": 5.0, "maxX": 20.0, "maxY": 12.0}
    assert (box["domain"], box["box_caption"], box["scores"]) == ("pixel", "striped", {"score": 0.9})


@pytest.mark.wandb
def test_fit_writes_tensorboard_text_and_images(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb_dir = trained["root"] / "tb" / "version_0"
    acc = EventAccumulator(str(tb_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    images = acc.Tags()["images"]
    for tag in ("saliency", "saliency/mask_concept", "heatmap", "scores_bar", "curve", "curves"):
        assert f"xai/{METHOD}/{tag}" in images, images
    (event,) = acc.Images(f"xai/{METHOD}/saliency")
    assert (event.step, event.width, event.height) == (2, W, H)
    texts = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]}
    scores_md = texts[f"xai/{METHOD}/scores/text_summary"]
    assert "| concept | score |" in scores_md and "| striped | 0.75 |" in scores_md
    assert texts[f"xai/{METHOD}/summary/text_summary"] == "striped drives class 0"
    assert "striped region" in texts[f"xai/{METHOD}/captions/text_summary"]


@pytest.mark.wandb
def test_fit_writes_csv_tables(trained):
    csv_logger = trained["loggers"][2]
    path = Path(csv_logger.log_dir) / "xai_tables" / METHOD / "scores_e0_s2.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["concept", "score"]
    assert [[r[0], float(r[1])] for r in rows[1:]] == ROWS
    assert (path.parent / "curve_e0_s2.csv").is_file()


@pytest.mark.wandb
def test_fit_leaves_no_open_figures(trained):
    assert plt.get_fignums() == []


# -------------------------------------------------------------------------------------------- dispatcher
class MemoryLogger(Logger):
    """A logger type lightning-xai has no sink for."""

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


def _trainer(tmp_path, loggers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(
            default_root_dir=tmp_path, logger=loggers, enable_progress_bar=False, enable_model_summary=False
        )


def _xai_warnings(caught):
    return [w for w in caught if "lightning-xai" in str(w.message)]


def test_unknown_logger_warns_once_and_keeps_local_store(tmp_path):
    trainer = _trainer(tmp_path, [MemoryLogger(), CSVLogger(tmp_path / "csv")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dispatcher = SinkDispatcher(trainer)
        dispatcher.dispatch(make_explanation(0, 5))
        dispatcher.dispatch(make_explanation(1, 9))
    (warning,) = _xai_warnings(caught)
    assert "MemoryLogger" in str(warning.message) and "WandbLogger" in str(warning.message)
    assert [type(s) for s in dispatcher.sinks] == [CSVSink]
    assert dispatcher.store.root == tmp_path / "xai"  # MemoryLogger has no save_dir: default_root_dir
    assert [r.global_step for r in read_records(tmp_path)] == [5, 9]


def test_failing_wandb_sink_keeps_local_store_and_warns_once(tmp_path, monkeypatch):
    _wandb_env(monkeypatch, tmp_path)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wb"), project="xai-test")

    def broken(*args, **kwargs):
        raise PermissionError("wandb dir is not writable")

    monkeypatch.setattr(logger, "log_metrics", broken)
    trainer = _trainer(tmp_path, [logger])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dispatcher = SinkDispatcher(trainer)
        dispatcher.dispatch(make_explanation(0, 3))
        dispatcher.dispatch(make_explanation(1, 6))
    (warning,) = _xai_warnings(caught)
    assert "WandbSink" in str(warning.message) and "PermissionError" in str(warning.message)
    assert dispatcher.failures == {"WandbSink(WandbLogger)": 2}
    assert [r.global_step for r in read_records(tmp_path / "wb")] == [3, 6]
    assert logger._experiment is None  # no W&B run was started


class OrderCheckingSink(Sink):
    def __init__(self, store: LocalStore) -> None:
        self.store, self.seen = store, []

    def write(self, explanation, step):
        # the local store already holds this record when a sink is called
        self.seen.append((step, len(self.store.read())))


def test_local_store_written_before_sinks(tmp_path):
    trainer = _trainer(tmp_path, False)
    dispatcher = SinkDispatcher(trainer)
    sink = OrderCheckingSink(dispatcher.store)
    dispatcher.sinks.append(sink)
    dispatcher.dispatch(make_explanation(0, 4))
    dispatcher.dispatch(make_explanation(0, 8), step=100)
    assert sink.seen == [(4, 1), (100, 2)]


def test_write_error_record(tmp_path):
    trainer = _trainer(tmp_path, [CSVLogger(tmp_path / "csv")])
    dispatcher = SinkDispatcher(trainer)

    def explain():
        raise ValueError("layer 'layer9' not found")

    try:
        explain()
    except ValueError as exc:
        rec = dispatcher.write_error("tcav", epoch=3, global_step=30, exc=exc)
    (stored,) = read_records(dispatcher.store.root, name="error")
    assert stored == rec
    assert (rec.method, rec.epoch, rec.global_step) == ("tcav", 3, 30)
    assert rec.payload["type"] == "ValueError"
    assert rec.payload["qualified_type"] == "builtins.ValueError"
    assert rec.payload["message"] == "layer 'layer9' not found"
    assert "in explain" in rec.payload["traceback"]
    assert "ValueError" in rec.payload["text"]["error"]
    csv_dir = Path(trainer.loggers[0].log_dir) / "xai_tables" / "tcav"
    assert (csv_dir / "text_e3_s30.csv").is_file()


def test_write_error_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    dispatcher = SinkDispatcher(_trainer(tmp_path, False), root=blocker / "xai")
    with pytest.warns(UserWarning, match="could not store the error record of 'tcav'"):
        rec = dispatcher.write_error("tcav", 0, 0, RuntimeError("boom"))
    assert rec.name == "error" and rec.payload["message"] == "boom"
    with pytest.raises(OSError):  # dispatch itself does raise when the local store fails
        dispatcher.dispatch(make_explanation(0, 0))


# ------------------------------------------------------------------------------------------------ sinks
class _Capture:
    def __init__(self) -> None:
        self.calls: list[tuple[dict, int]] = []

    def log_metrics(self, metrics, step=None):
        self.calls.append((metrics, step))


def test_wandb_sink_chunks_images(tmp_path):
    import wandb

    logger = _Capture()
    images = [Media("many", np.full((4, 4, 3), i, np.uint8)) for i in range(MAX_IMAGES_PER_CALL + 10)]
    images.append(Media("one", np.zeros((4, 4, 3), np.uint8)))
    table = Table("t", ["a"], [[1]])
    expl = Explanation(Record("m", "n", 0, 7), tables=[table], media=images)
    WandbSink(logger).write(expl, step=7)
    assert [step for _, step in logger.calls] == [7, 7]
    counts = [sum(len(v) for v in m.values() if isinstance(v, list)) for m, _ in logger.calls]
    assert counts == [MAX_IMAGES_PER_CALL, 11]
    first, second = (m for m, _ in logger.calls)
    assert set(first) == {"xai/m/t", "xai/m/many/part0"}
    assert set(second) == {"xai/m/many/part1", "xai/m/one"}
    assert isinstance(first["xai/m/t"], wandb.Table)
    assert all(isinstance(im, wandb.Image) for im in first["xai/m/many/part0"])


def test_wandb_sink_image_caption_masks_and_boxes(monkeypatch):
    import wandb

    made = []
    monkeypatch.setattr(wandb, "Image", lambda image, **kwargs: made.append((image, kwargs)) or "img")
    logger = _Capture()
    expl = make_explanation(0, 1)
    WandbSink(logger).write(expl, step=1)
    ((metrics, step),) = logger.calls
    assert step == 1 and metrics[f"xai/{METHOD}/saliency"] == ["img"]
    (image, kwargs), (_, fig_kwargs) = made
    np.testing.assert_array_equal(image, expl.media[0].image)
    assert kwargs["caption"] == "striped region" and fig_kwargs == {"caption": "a figure"}
    mask = kwargs["masks"]["concept"]
    np.testing.assert_array_equal(mask["mask_data"], expl.media[0].masks["concept"])
    assert mask["class_labels"] == {0: "0", 1: "striped"}
    assert kwargs["boxes"]["regions"]["class_labels"] == {0: "striped"}
    assert kwargs["boxes"]["regions"]["box_data"][0]["position"] == {
        "minX": 4.0,
        "minY": 5.0,
        "maxX": 20.0,
        "maxY": 12.0,
    }


def test_chart_to_figure_bar_and_line():
    from lightning_xai.charts import TAB10
    from lightning_xai.records import figure_to_array
    from lightning_xai.sinks import chart_image

    def mask(img, colour):
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return np.abs(img.astype(int) - rgb).sum(-1) <= 3

    t = Table("t", ["c", "a", "b"], [["x", 1.0, 2.0], ["y", 3.0, None]])
    chart = Chart("k", "bar", t, "c", ["a", "b"], title="T")
    img = chart_image(chart)
    assert np.array_equal(figure_to_array(chart_to_figure(chart)), img)  # the figure shows the image 1:1
    a_cols = np.nonzero(mask(img, TAB10[0]).any(0))[0]
    b_cols = np.nonzero(mask(img, TAB10[1]).any(0))[0]
    # series a: two bars (x, y) and a legend patch; series b: one bar (its y cell is empty) and a legend patch
    assert (np.diff(a_cols) > 1).sum() == 2 and (np.diff(b_cols) > 1).sum() == 1
    heights = [
        int(mask(img, TAB10[0])[:, c].sum()) for c in (a_cols[0], a_cols[np.argmax(np.diff(a_cols) > 1) + 1])
    ]
    assert abs(heights[1] / heights[0] - 3.0) < 0.1  # a's bars are 1 and 3
    line = chart_image(Chart("k", "line", Table("u", ["s", "v"], [[0, 1.0], [5, 2.0]]), "s", "v"))
    m = mask(line, TAB10[0])
    cols = np.nonzero(m.any(0))[0]
    left_row, right_row = np.nonzero(m[:, cols[0]])[0].mean(), np.nonzero(m[:, cols[-1]])[0].mean()
    assert right_row < left_row  # it rises from 1 to 2
    assert plt.get_fignums() == []


def test_table_to_markdown_escapes_and_truncates():
    md = table_to_markdown(Table("t", ["a|b", "n"], [["x|y", 1.23456], ["z", [1, 2]]] * 3), max_rows=4)
    lines = md.splitlines()
    assert lines[0] == "| a\\|b | n |" and lines[2] == "| x\\|y | 1.235 |" and lines[3] == "| z | [1, 2] |"
    assert "2 more rows not shown" in md


class _EpochSink(Sink):
    def __init__(self) -> None:
        self.completed: list[tuple[int, int]] = []  # (epoch, lines in the records file then)

    def write(self, explanation: Explanation, step: int) -> None:
        pass

    def epoch_complete(self, records_path: Path, epoch: int) -> None:
        self.completed.append((epoch, len(Path(records_path).read_text().splitlines())))


class _FakeRun:
    """What WandbSink needs of an online ``wandb`` run: an id, its mode and ``log_artifact``."""

    def __init__(self, offline: bool) -> None:
        self.id, self.offline, self.logged = "run123", offline, []

    def log_artifact(self, artifact, aliases):
        self.logged.append(
            (
                artifact.name,
                artifact.type,
                dict(artifact.metadata),
                list(aliases),
                sorted(artifact.manifest.entries),
            )
        )


class _FakeWandbLogger:
    def __init__(self, run: _FakeRun) -> None:
        self.experiment = run

    def log_metrics(self, metrics, step=None) -> None:
        pass


def test_each_epoch_is_announced_complete_once_with_all_its_records(tmp_path):
    dispatcher = SinkDispatcher(_trainer(tmp_path, False))
    sink = _EpochSink()
    dispatcher.sinks.append(sink)
    for epoch in (0, 0, 1, 1, 1):
        dispatcher.dispatch(make_explanation(epoch, 4))
    assert sink.completed == [(0, 2)]  # epoch 0 is complete when epoch 1's first record arrives
    dispatcher.finish_epoch()
    dispatcher.finish_epoch()  # every callback's teardown calls it: once is enough
    assert sink.completed == [(0, 2), (1, 5)]


@pytest.mark.parametrize("offline", [False, True])
def test_online_wandb_runs_get_the_records_as_a_versioned_artifact_per_epoch(tmp_path, offline):
    run = _FakeRun(offline)
    dispatcher = SinkDispatcher(_trainer(tmp_path, False), extra_sinks=[WandbSink(_FakeWandbLogger(run))])
    for epoch in (0, 1):
        dispatcher.dispatch(Explanation(Record("m", "epoch", epoch, 10 * epoch, 0.0, {"a": epoch})))
    dispatcher.finish_epoch()
    if offline:
        assert run.logged == []  # offline: the local store has them, `wandb sync` uploads the run
    else:
        assert run.logged == [
            ("xai-records-run123", "xai-records", {"epoch": 0}, ["epoch-0", "latest"], ["records.jsonl"]),
            ("xai-records-run123", "xai-records", {"epoch": 1}, ["epoch-1", "latest"], ["records.jsonl"]),
        ]
