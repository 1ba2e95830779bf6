"""Records, tables/charts/media validation and the local store."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_xai.records import (
    Chart,
    Explanation,
    LocalStore,
    Media,
    Record,
    Table,
    read_records,
    run_dir_of,
    sanitize_key,
    to_jsonable,
)


def _record(**overrides) -> Record:
    kw = {
        "method": "tcav",
        "name": "scores",
        "epoch": 2,
        "global_step": 40,
        "time_s": 0.25,
        "payload": {"score": 0.5},
    }
    kw.update(overrides)
    return Record(**kw)


# ------------------------------------------------------------------------------------------------ records
def test_record_round_trip_through_json():
    rec = _record(payload={"scores": {"striped": 0.9, "dotted": 0.1}, "layers": ["layer4"], "n": 3})
    line = rec.to_json()
    back = Record.from_dict(json.loads(line))
    assert back == rec
    assert list(json.loads(line)) == ["method", "name", "epoch", "global_step", "time_s", "payload"]


def test_record_coerces_numpy_and_torch_step_counters():
    rec = Record("m", "n", np.int64(3), torch.tensor(7), np.float32(1.5), {})
    assert (rec.epoch, rec.global_step, rec.time_s) == (3, 7, 1.5)
    assert type(rec.epoch) is int and type(rec.global_step) is int


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"method": ""}, "Record.method must be a non-empty str"),
        ({"epoch": "3"}, "Record.epoch must be an int"),
        ({"global_step": 1.5}, "Record.global_step must be an int"),
        ({"epoch": True}, "Record.epoch must be an int"),
        ({"payload": [1, 2]}, "Record.payload must be a dict"),
    ],
)
def test_record_validation(overrides, match):
    with pytest.raises((TypeError, ValueError), match=match):
        _record(**overrides)


def test_record_from_dict_names_missing_keys():
    with pytest.raises(ValueError, match=r"missing \['global_step'\].*needs the keys"):
        Record.from_dict({"method": "m", "name": "n", "epoch": 0})


def test_to_jsonable_numpy_and_torch_values():
    @dataclasses.dataclass
    class Rule:
        predicate: str
        weight: float

    payload = {
        "f32": np.float32(0.5),
        "i64": np.int64(-3),
        "bool": np.bool_(True),
        "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
        "strs": np.array(["a", "b"]),
        "t0": torch.tensor(2.5),
        "t2": torch.ones(2, 2, dtype=torch.bfloat16),
        "ti": torch.tensor([1, 2], dtype=torch.int32),
        "tup": (1, np.float64(2.0)),
        "set": {3, 1, 2},
        "path": Path("a") / "b.png",
        "rule": Rule("p1 & p2", np.float32(0.25)),
        7: "int key",
    }
    out = to_jsonable(payload)
    json.dumps(out)  # must not raise
    assert out["f32"] == 0.5 and type(out["f32"]) is float
    assert out["i64"] == -3 and type(out["i64"]) is int
    assert out["bool"] is True
    assert out["arr"] == [[0, 1, 2], [3, 4, 5]]
    assert out["strs"] == ["a", "b"]
    assert out["t0"] == 2.5 and type(out["t0"]) is float
    assert out["t2"] == [[1.0, 1.0], [1.0, 1.0]]
    assert out["ti"] == [1, 2]
    assert out["tup"] == [1, 2.0]
    assert out["set"] == [1, 2, 3]
    assert out["path"] == "a/b.png"
    assert out["rule"] == {"predicate": "p1 & p2", "weight": 0.25}
    assert out["7"] == "int key"


def test_to_jsonable_error_names_the_key_path():
    with pytest.raises(TypeError, match=r"payload\['rules'\]\[1\]\['model'\] has type Linear"):
        to_jsonable({"rules": [{"ok": 1}, {"model": torch.nn.Linear(2, 2)}]})
    with pytest.raises(TypeError, match=r"payload\['z'\] is a complex tensor"):
        to_jsonable({"z": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(TypeError, match=r"key .* of type tuple"):
        to_jsonable({(1, 2): 3})


def test_record_to_dict_rejects_bad_payload_with_key():
    rec = _record(payload={"cavs": {"striped": object()}})
    with pytest.raises(TypeError, match=r"payload\['cavs'\]\['striped'\] has type object"):
        rec.to_dict()


# ------------------------------------------------------------------------------------- table / chart / media
def test_table_validation_errors():
    with pytest.raises(ValueError, match=r"row 1 has 1 values but there are 2 columns \['a', 'b'\]"):
        Table("t", ["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match=r"duplicate column names \['a'\]"):
        Table("t", ["a", "a"], [])
    with pytest.raises(TypeError, match="row 0 must be a list of 2 values"):
        Table("t", ["a", "b"], ["ab"])
    t = Table("t", ("a", "b"), [(1, 2), np.array([3, 4])])
    assert t.rows == [[1, 2], [3, 4]] and t.columns == ["a", "b"]
    assert t.column("b") == [2, 4]
    with pytest.raises(KeyError, match=r"columns are \['a', 'b'\]"):
        t.column("c")


def test_chart_validation_errors_name_valid_choices():
    t = Table("scores", ["concept", "score", "p"], [["striped", 0.9, 0.01]])
    with pytest.raises(ValueError, match=r"kind must be one of \['bar', 'line'\], got 'pie'"):
        Chart("c", "pie", t, "concept", "score")
    with pytest.raises(ValueError, match=r"x='class' is not a column .* one of \['concept', 'score', 'p'\]"):
        Chart("c", "bar", t, "class", "score")
    with pytest.raises(
        ValueError, match=r"y column\(s\) \['q'\] not in table .* \['concept', 'score', 'p'\]"
    ):
        Chart("c", "line", t, "concept", ["score", "q"])
    chart = Chart("c", "bar", t, "concept", ["score", "p"])
    assert chart.ys == ["score", "p"] and chart.title == "c"


def test_media_from_tensor_numpy_and_errors():
    x = torch.rand(3, 12, 20)
    m = Media("img", x)
    assert m.image.shape == (12, 20, 3) and m.image.dtype == np.uint8
    np.testing.assert_array_equal(m.image, np.round(x.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert Media("grey", np.zeros((5, 6))).image.shape == (5, 6, 3)
    assert Media("u8", np.full((5, 6, 3), 7, np.uint8)).image[0, 0, 0] == 7
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*undo the dataset normalisation"):
        Media("img", torch.randn(3, 8, 8) * 3)
    with pytest.raises(ValueError, match=r"expected an image of shape \[3, H, W\]"):
        Media("img", torch.rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="matplotlib Figure; got list"):
        Media("img", [[0.0]])
    with pytest.raises(ValueError, match=r"mask 'm' has shape \(4, 4\) but the image is \(12, 20\)"):
        Media("img", x, masks={"m": np.zeros((4, 4), int)})
    with pytest.raises(ValueError, match="must hold integer class ids"):
        Media("img", x, masks={"m": np.full((12, 20), 0.5)})
    with pytest.raises(ValueError, match=r"missing \['y1'\].*'x0', 'y0', 'x1', 'y1'"):
        Media("img", x, boxes=[{"x0": 0, "y0": 0, "x1": 1}])


def test_media_from_figure_closes_it():
    plt.close("all")
    fig, ax = plt.subplots(figsize=(3, 2), dpi=50)
    ax.plot([0, 1], [1, 0])
    m = Media("fig", fig)
    assert m.image.shape == (100, 150, 3)
    assert plt.get_fignums() == []


def test_figure_to_array_draws_what_a_saved_png_shows_and_fills_transparency_with_white():
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from lightning_xai.records import figure_to_array

    fig = Figure(figsize=(2, 1), dpi=40, facecolor="none")  # a bare Figure: no canvas of its own, see-through
    fig.add_artist(
        Rectangle(
            (0.25, 0.25),
            0.5,
            0.5,
            transform=fig.transFigure,
            facecolor=(1.0, 0.0, 0.0, 0.5),
            edgecolor="none",
        )
    )  # half-transparent red
    expected = np.asarray(_saved_png(fig))
    image = figure_to_array(fig)
    assert image.shape == (40, 80, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 255).all()  # the see-through page comes out white
    assert (
        abs(int(image[20, 40, 0]) - 255) <= 1 and abs(int(image[20, 40, 1]) - 128) <= 1
    )  # red at 50% on white
    assert (
        np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    )  # as savefig(facecolor="white") shows it


def _saved_png(fig):
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert("RGB").copy()


def test_explanation_rejects_clashing_keys():
    t = Table("scores", ["a", "b"], [[1, 2]])
    img = Media("scores", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"keys \['scores'\] are used by media and by a table or chart"):
        Explanation(_record(), tables=[t], media=[img])
    # a chart may share the key of its own table: it is logged as "<key>_chart"
    e = Explanation(_record(), tables=[t], charts=[Chart("scores", "bar", t, "a", "b")])
    assert e.chart_key(e.charts[0]) == "scores_chart"


# ----------------------------------------------------------------------------------------------- local store
def _explanation(epoch=1, step=10, method="tcav") -> Explanation:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(16, 24, 3), dtype=np.uint8)
    mask = np.zeros((16, 24), np.uint8)
    mask[4:8, 5:15] = 2
    table = Table("scores", ["concept", "score"], [["striped", 0.75], ["dotted", np.float32(0.25)]])
    return Explanation(
        record=_record(method=method, epoch=epoch, global_step=step, payload={"n": 2}),
        tables=[table],
        charts=[Chart("scores_bar", "bar", table, "concept", "score")],
        media=[
            Media("saliency/striped", img, caption="striped", masks={"concept": mask}, mask_labels={2: "s"}),
            Media("saliency/striped", torch.zeros(3, 8, 8)),
        ],
        text={"summary": "striped matters"},
    )


def test_local_store_appends_lines_and_saves_pngs(tmp_path):
    store = LocalStore(tmp_path / "xai")
    e1 = _explanation(epoch=1, step=10)
    w1 = store.write(e1)
    w2 = store.write(_explanation(epoch=2, step=20, method="rules"))
    lines = (tmp_path / "xai" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == w1.to_dict()
    assert json.loads(lines[1])["method"] == "rules"

    media = w1.payload["media"]
    assert [m["path"] for m in media] == [
        "media/tcav/saliency_striped_e1_s10.png",
        "media/tcav/saliency_striped_e1_s10_1.png",
    ]
    with Image.open(store.path_of(media[0]["path"])) as im:
        assert im.size == (24, 16) and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), e1.media[0].image)  # PNG is lossless
    with Image.open(store.path_of(media[1]["path"])) as im:
        assert im.size == (8, 8)
    with Image.open(store.path_of(media[0]["masks"]["concept"])) as im:
        np.testing.assert_array_equal(np.asarray(im), e1.media[0].masks["concept"])
    assert media[0]["mask_labels"] == {"0": "0", "2": "s"}
    assert media[0]["caption"] == "striped" and (media[0]["width"], media[0]["height"]) == (24, 16)
    assert w1.payload["tables"]["scores"] == {
        "columns": ["concept", "score"],
        "rows": [["striped", 0.75], ["dotted", 0.25]],
    }
    assert w1.payload["charts"]["scores_bar"]["kind"] == "bar"
    assert w1.payload["text"] == {"summary": "striped matters"}
    assert w1.payload["n"] == 2
    # the caller's record is untouched; reading back gives what was written
    assert "media" not in e1.record.payload
    assert read_records(tmp_path) == [w1, w2]
    assert read_records(tmp_path / "xai", method="rules") == [w2]
    assert read_records(tmp_path / "xai" / "records.jsonl", name="nope") == []
    # same epoch/step again never overwrites earlier media
    w3 = store.write(_explanation(epoch=1, step=10))
    assert w3.payload["media"][0]["path"] == "media/tcav/saliency_striped_e1_s10_2.png"
    assert all(
        store.path_of(m["path"]).is_file() for r in read_records(tmp_path) for m in r.payload.get("media", [])
    )


def test_local_store_rejects_bad_payload_before_writing(tmp_path):
    store = LocalStore(tmp_path / "xai")
    e = _explanation()
    e.record.payload["bad"] = {"x": object()}
    with pytest.raises(TypeError, match=r"payload\['bad'\]\['x'\]"):
        store.write(e)
    assert not (tmp_path / "xai").exists()
    e = _explanation()
    e.record.payload["tables"] = {}
    with pytest.raises(ValueError, match=r"payload keys \['tables'\] are reserved"):
        store.write(e)


def test_truncated_last_line_is_tolerated(tmp_path):
    store = LocalStore(tmp_path / "xai")
    w1 = store.write(Explanation(_record(epoch=1)))
    store.write(Explanation(_record(epoch=2, payload={"long": "x" * 100})))
    path = store.records_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # crash in the middle of the second line
    with pytest.warns(RuntimeWarning, match=r"skipped 1 unreadable line\(s\) \[2\]"):
        assert read_records(tmp_path) == [w1]
    # the next write starts on a fresh line, so it stays readable
    w3 = store.write(Explanation(_record(epoch=3)))
    with pytest.warns(RuntimeWarning, match=r"\[2\]"):
        assert read_records(tmp_path) == [w1, w3]


def test_read_records_missing_lists_tried_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"xai/records.jsonl"):
        read_records(tmp_path)
    assert LocalStore(tmp_path / "xai").read() == []


def test_sanitize_key():
    assert sanitize_key("saliency/class 3") == "saliency_class_3"
    assert sanitize_key("../..") == "item"


# ------------------------------------------------------------------------------------------------- run dir
def test_run_dir_of_plain_objects(tmp_path):
    assert run_dir_of(SimpleNamespace(log_dir=str(tmp_path / "v0"), default_root_dir="x")) == tmp_path / "v0"
    assert run_dir_of(SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path))) == tmp_path
    assert run_dir_of(SimpleNamespace(default_root_dir=tmp_path)) == tmp_path


def test_run_dir_of_lightning_trainer(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    kw = {"default_root_dir": tmp_path, "enable_progress_bar": False, "enable_model_summary": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_logger = Trainer(logger=False, **kw)
        tb = Trainer(logger=[TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path)], **kw)
    assert run_dir_of(no_logger) == tmp_path
    assert run_dir_of(tb) == Path(tb.log_dir) == tmp_path / "tb" / "version_0"


def test_local_store_raises_when_a_png_cannot_be_written_and_writes_no_record(tmp_path):
    store = LocalStore(tmp_path / "xai")
    (tmp_path / "xai" / "media").mkdir(parents=True)
    (tmp_path / "xai" / "media" / "tcav").write_text("a file where the method's folder should be")
    with pytest.raises(OSError):
        store.write(_explanation(epoch=1, step=10))  # three PNGs, written together
    assert store.read() == []
