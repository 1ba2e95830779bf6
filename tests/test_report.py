"""`lightning-xai report` / `compare`: the static HTML review of a run, read back as HTML and rendered in
headless Chromium.

Fast tests build small runs with :class:`LocalStore`; the ``slow`` ones run the quickstart once (2 epochs),
add synthetic drift, alert, error and unknown-method records to a copy of it (run A), and edit a second copy
(run B: one epoch dropped, rules reworded) for ``compare``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightning_xai.cli import main
from lightning_xai.records import Chart, Explanation, LocalStore, Media, Record, Table, read_records
from lightning_xai.report import (
    LineSeries,
    RecordsNotFoundError,
    bar_chart_svg,
    build_report,
    compare,
    line_chart_svg,
    load_run,
)

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
RUN_B_MARK = "(run B)"


# ----------------------------------------------------------------------------------------------------------
# Reading the page back
# ----------------------------------------------------------------------------------------------------------
class Page(HTMLParser):
    """What the tests look at in a page: ids, sections, epoch links, tables (by record), images, plots."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.sections: dict[str, str] = {}  # id -> data-section
        self.epoch_links: list[dict[str, str]] = []
        self.tables: list[dict] = []  # attrs, rows (tbody tr count), record (method, epoch, name), run
        self.images: list[dict[str, str]] = []
        self.plots: list[dict[str, str]] = []
        self.classes: dict[str, int] = {}
        self.records: list[dict[str, str]] = []
        self._divs = 0
        self._record_stack: list[tuple[int, dict[str, str]]] = []
        self._col_stack: list[tuple[int, str]] = []
        self._table: dict | None = None
        self._tbody = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])
        for c in a.get("class", "").split():
            self.classes[c] = self.classes.get(c, 0) + 1
        if tag == "section" and "data-section" in a:
            self.sections[a["id"]] = a["data-section"]
        if tag == "a" and "data-epoch" in a:
            self.epoch_links.append(a)
        if tag == "div":
            self._divs += 1
            if "record" in a.get("class", "").split():
                self._record_stack.append((self._divs, a))
                self.records.append({**a, "run": self._col_stack[-1][1] if self._col_stack else ""})
            if "col" in a.get("class", "").split():
                self._col_stack.append((self._divs, a.get("data-run", "")))
        if tag == "table":
            rec = self._record_stack[-1][1] if self._record_stack else {}
            self._table = {
                "attrs": a,
                "rows": 0,
                "record": (rec.get("data-method"), int(rec.get("data-epoch", -1)), rec.get("data-name")),
                "run": self._col_stack[-1][1] if self._col_stack else "",
            }
        if tag == "tbody":
            self._tbody = True
        if tag == "tr" and self._table is not None and self._tbody:
            self._table["rows"] += 1
        if tag == "img":
            self.images.append(a)
        if tag == "svg" and "data-plot" in a:
            self.plots.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self._record_stack and self._record_stack[-1][0] == self._divs:
                self._record_stack.pop()
            if self._col_stack and self._col_stack[-1][0] == self._divs:
                self._col_stack.pop()
            self._divs -= 1
        if tag == "tbody":
            self._tbody = False
        if tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None


def _decode(src: str) -> Image.Image:
    m = re.fullmatch(r"data:image/png;base64,([A-Za-z0-9+/=]+)", src)
    assert m, f"not an embedded PNG: {src[:60]}"
    img = Image.open(io.BytesIO(base64.b64decode(m.group(1))))
    img.load()
    return img


def _slug(method: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", method).strip("_")


def _no_network(text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert not re.search(
        r"""(?:src|href)\s*=\s*["']?(?!data:|#)[a-z]+:""", text
    )  # only data: URIs and anchors
    assert "Content-Security-Policy" in text


# ----------------------------------------------------------------------------------------------------------
# Headless Chromium
# ----------------------------------------------------------------------------------------------------------
def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        f"no headless browser found (looked for {', '.join(BROWSERS)} on PATH); .ci/run installs chromium"
    )


def _chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def _rendered(page: Path, tmp_path: Path) -> tuple[np.ndarray, str]:
    """A 1280x2000 screenshot (RGB array) and the DOM after the page's script ran."""
    shot = tmp_path / "shot.png"
    proc = _chromium(page, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    assert shot.is_file(), f"chromium wrote no screenshot: {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    proc = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return pixels, proc.stdout


def _assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 25  # header, boxes, charts, images: far from a blank canvas
    colours = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 200


# ----------------------------------------------------------------------------------------------------------
# Synthetic records
# ----------------------------------------------------------------------------------------------------------
DRIFT_KEYS = [
    ("concept_attribution", "tcav_score", "conv5/shape:circle/circle/lined"),
    ("logic_rules", "rule_jaccard", "class_3"),
]


def _drift_record(epoch: int, alert_at: int) -> Record:
    rows = []
    for j, (source, kind, key) in enumerate(DRIFT_KEYS):
        for against in ("previous", "reference"):
            value = 0.05 * (epoch + 1) * (j + 1) * (2 if against == "reference" else 1)
            alert = epoch == alert_at and (source, against) == ("logic_rules", "reference")
            rows.append(
                {"source": source, "kind": kind, "key": key, "against": against, "value": value,
                 "threshold": 0.25 if kind == "rule_jaccard" else None, "alert": alert}
            )  # fmt: skip
    return Record("drift", "epoch", epoch, 10 * (epoch + 1), 0.01, {"reference_epoch": 0, "rows": rows})


def _add_synthetic(root: Path, epochs: tuple[int, ...] = (0, 1), alert_at: int = 1) -> None:
    """Drift rows per epoch, one drift alert, one explainer error and a method the report does not know."""
    store = LocalStore(root / "xai")
    for epoch in epochs:
        store.write(Explanation(_drift_record(epoch, alert_at)))
    store.write(
        Explanation(
            Record(
                "drift",
                "alert",
                alert_at,
                10 * (alert_at + 1),
                0.0,
                {
                    "source": "logic_rules",
                    "kind": "rule_jaccard",
                    "key": "class_3",
                    "against": "reference",
                    "value": 0.4,
                    "threshold": 0.25,
                    "before": ["f58 >= 0.9"],
                    "after": ["f12 >= 0.4", "f58 >= 0.9"],
                    "message": "logic_rules: vocabulary of class 3 drifted since epoch 0 (reference): 0.400 > 0.25",
                },
            )
        )
    )
    store.write(
        Explanation(
            Record(
                "symbolic_tree",
                "error",
                alert_at,
                10 * (alert_at + 1),
                0.0,
                {
                    "type": "FloatingPointError",
                    "qualified_type": "builtins.FloatingPointError",
                    "message": "Poincare ball projection produced NaN <norm>",
                    "traceback": 'Traceback (most recent call last):\n  File "tree.py", line 1\n'
                    "FloatingPointError: Poincare ball projection produced NaN <norm>\n",
                },
            )
        )
    )
    rng = np.random.default_rng(0)
    image = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
    table = Table("scores", ["item", "score"], [["a", 0.5], ["b", -0.25], ["c", 0.75]])
    store.write(
        Explanation(
            Record(
                "my_probe", "epoch", alert_at, 10 * (alert_at + 1), 0.2, {"alpha": 0.5, "note": "<b>raw</b>"}
            ),
            tables=[table],
            charts=[Chart("score_bars", "bar", table, "item", "score", title="probe scores")],
            media=[
                Media(
                    "probe_image",
                    image,
                    caption="a <script>alert(1)</script> caption",
                    masks={"region": (image[..., 0] > 128).astype(np.uint8)},
                    mask_labels={1: "bright"},
                    boxes=[{"x0": 4, "y0": 5, "x1": 30, "y1": 25, "label": "box", "score": 0.9}],
                )
            ],
            text={"summary": "probe text"},
        )
    )


@pytest.fixture()
def synthetic_run(tmp_path: Path) -> Path:
    """A run with logic_rules records at epochs 0-2, drift for 0-2 (alert at 2), an error and an unknown method."""
    run = tmp_path / "synthetic_run"
    store = LocalStore(run / "xai")
    for epoch in (0, 1, 2):
        store.write(
            Explanation(
                Record(
                    "logic_rules",
                    "epoch",
                    epoch,
                    10 * (epoch + 1),
                    0.1,
                    {
                        "global_rules": [f"class 0 <- f{epoch} >= 0.5", "class 1 <- f9 >= 0.2"],
                        "scoring": "share",
                        "evaluation": {"share": {"fidelity": 0.9, "accuracy": 0.8, "coverage": 1.0}},
                    },
                )
            )
        )
    _add_synthetic(run, epochs=(0, 1, 2), alert_at=2)
    return run


# ----------------------------------------------------------------------------------------------------------
# Fast tests: synthetic runs
# ----------------------------------------------------------------------------------------------------------
def test_drift_timelines_alerts_and_errors(synthetic_run: Path) -> None:
    out = build_report(synthetic_run)
    assert out == synthetic_run / "xai" / "report.html"
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == {
        "method-logic_rules": "logic_rules",
        "method-symbolic_tree": "symbolic_tree",
        "method-drift": "drift",
        "method-my_probe": "my_probe",
    }
    # one timeline per (source, kind, key, against), each with one point per epoch
    timelines = {p["data-series"]: p for p in page.plots if p["data-plot"] == "drift-timeline"}
    expected = {f"{s}|{k}|{key}|{a}" for s, k, key in DRIFT_KEYS for a in ("previous", "reference")}
    assert set(timelines) == expected
    svgs = dict(re.findall(r'data-series="([^"]+)">(.*?)</svg>', text))
    alerted = "logic_rules|rule_jaccard|class_3|reference"
    assert svgs[alerted].count('class="alert-point"') == 1
    assert all(svgs[s].count('class="alert-point"') == 0 for s in expected - {alerted})
    assert 'stroke-dasharray="6 4"' in svgs[alerted]  # the threshold
    assert svgs[alerted].count("<circle") == 3 + 1  # 3 epochs + the alert ring
    # drift rows: the flagged row is highlighted
    drift_tables = [t for t in page.tables if t["attrs"].get("data-view") == "drift-rows"]
    assert [t["record"][1] for t in drift_tables] == [0, 1, 2]
    assert all(t["rows"] == 4 for t in drift_tables)
    assert text.count('<tr class="alert">') == 1
    # the alert box on top links to the epoch; the source method's epoch repeats the alert inline
    assert text.index('class="alert-box"') < text.index("<section")
    assert 'href="#epoch-drift-2"' in text.split("<section")[0]
    assert "vocabulary of class 3 drifted" in text.split("<section")[0]
    rules_epoch2 = text.split('id="epoch-logic_rules-2"')[1].split("</article>")[0]
    assert 'class="inline-alert"' in rules_epoch2
    drift_links = [a for a in page.epoch_links if a["href"].startswith("#epoch-drift-")]
    assert [a["data-epoch"] for a in drift_links] == ["0", "1", "2"]
    assert [a.get("class", "") for a in drift_links] == ["", "", "has-alert"]
    assert page.classes["record"] >= 8 and page.classes.get("alert", 0) >= 2
    # the error: listed on top, its record highlighted with the traceback, text escaped
    top = text.split("<section")[0]
    assert 'class="error-box"' in top and "FloatingPointError" in top
    assert 'href="#epoch-symbolic_tree-2"' in top
    error_records = [r for r in page.records if r.get("data-name") == "error"]
    assert len(error_records) == 1 and "error" in error_records[0]["class"].split()
    assert "Poincare ball projection produced NaN &lt;norm&gt;" in text
    assert "Traceback (most recent call last)" in text
    assert '<span class="badge error" data-count="errors">1</span>' in text
    assert '<span class="badge alert" data-count="alerts">1</span>' in text
    _no_network(text)


def test_unknown_method_gets_tables_charts_media_and_text(synthetic_run: Path) -> None:
    text = build_report(synthetic_run, synthetic_run / "page.html").read_text(encoding="utf-8")
    page = Page(text)
    scores = [t for t in page.tables if t["attrs"].get("data-table") == "scores"]
    assert len(scores) == 1 and scores[0]["rows"] == 3 and scores[0]["record"] == ("my_probe", 2, "epoch")
    assert re.search(r'<svg class="chart"[^>]*data-chart="score_bars"', text)
    chart = text.split('data-chart="score_bars"')[1].split("</svg>")[0]
    assert chart.count('class="bar"') == 3
    assert len(page.images) == 2  # the image and its mask overlay
    record = read_records(synthetic_run, method="my_probe")[0]
    entry = record.payload["media"][0]
    image, overlay = (_decode(img["src"]) for img in page.images)
    assert image.size == overlay.size == (entry["width"], entry["height"])
    with Image.open(synthetic_run / "xai" / entry["path"]) as original:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(original.convert("RGB")))
    assert not np.array_equal(
        np.asarray(image), np.asarray(overlay.convert("RGB"))
    )  # the mask is coloured in
    assert '<svg class="boxes"' in text and "<title>box (0.9)</title>" in text
    assert "<script>alert(1)" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "probe text" in text and "&lt;b&gt;raw&lt;/b&gt;" in text


def test_media_over_the_size_cap_are_left_out_with_a_note(synthetic_run: Path) -> None:
    text = build_report(synthetic_run, synthetic_run / "small.html", max_media_bytes=100).read_text()
    assert "data:image/png" not in text
    assert "image not embedded" in text and "per-image limit" in text


def test_svg_plotters() -> None:
    svg = line_chart_svg(
        [LineSeries("a", [0, 1, 2, 3], [0.5, None, 0.7, float("nan")], marks=[False, False, True, False]),
         LineSeries("limit", [0, 3], [0.6, 0.6], dashed=True)],
        title="t", attrs={"data-plot": "x"},
    )  # fmt: skip
    assert svg.startswith('<svg class="chart"') and svg.endswith("</svg>") and 'data-plot="x"' in svg
    first = re.search(r'<path class="series" d="([^"]+)"', svg).group(1)
    assert first.count("M") == 2 and "L" not in first  # the gap at epoch 1 splits the line
    assert svg.count('class="alert-point"') == 1
    bars = bar_chart_svg(
        ["x", "y", "z"], {"v": [1.0, -2.0, None]}, reference=0.0, annotations={"v": ["*", "", ""]}
    )
    assert bars.count('class="bar"') == 2 and '<text class="note"' in bars
    categorical = line_chart_svg([LineSeries("s", ["lo", "mid", "hi"], [1, 2, 3])])
    assert ">mid</text>" in categorical


def test_cli_errors_name_the_path_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty / "xai" / "records.jsonl") in err
    assert "callbacks write" in err and "log_dir" in err
    assert main(["compare", str(empty), str(tmp_path / "missing")]) == 2
    assert "records.jsonl" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["report"]) == 2
    assert main(["explain", str(empty)]) == 2
    assert main(["--help"]) == 0
    with pytest.raises(RecordsNotFoundError, match=re.escape(str(empty / "xai" / "records.jsonl"))):
        load_run(empty)


def test_cli_report_writes_next_to_the_records_by_default(
    synthetic_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(synthetic_run)]) == 0
    out = synthetic_run / "xai" / "report.html"
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert (
        main(["report", str(synthetic_run / "xai" / "records.jsonl"), "-o", str(synthetic_run / "r.html")])
        == 0
    )
    assert 'data-section="drift"' in (synthetic_run / "r.html").read_text()


def test_empty_records_file_gives_a_page_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "xai").mkdir()
    (tmp_path / "xai" / "records.jsonl").write_text("")
    text = build_report(tmp_path).read_text()
    assert "holds no records yet" in text and "<section" not in text


def test_a_truncated_last_line_is_counted_not_fatal(synthetic_run: Path) -> None:
    n = len(read_records(synthetic_run))
    with open(synthetic_run / "xai" / "records.jsonl", "a") as fh:
        fh.write('{"method": "logic_rules", "name": "ep')  # a run killed mid-write
    run = load_run(synthetic_run)
    assert run.skipped_lines == 1 and len(run.records) == n == 9
    assert "1 unreadable line(s)" in build_report(run).read_text()


# ----------------------------------------------------------------------------------------------------------
# Slow tests: a real quickstart run
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart_dir(quickstart_run: tuple[Path, dict]) -> Path:
    return Path(quickstart_run[1]["run_dir"])  # shared (conftest): copied before any edit


@pytest.fixture(scope="module")
def run_a(quickstart_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's records plus drift rows (epochs 0, 1), a drift alert, an error and an unknown method."""
    run = tmp_path_factory.mktemp("runs") / "run_a"
    shutil.copytree(quickstart_dir / "xai", run / "xai")
    _add_synthetic(run)
    return run


@pytest.fixture(scope="module")
def run_b(run_a: Path) -> Path:
    """Run A with symbolic_tree's epoch 0 removed and logic rules reworded (marked "(run B)")."""
    run = run_a.parent / "run_b"
    shutil.copytree(run_a / "xai", run / "xai", ignore=shutil.ignore_patterns("*.html"))
    lines = []
    for line in (run / "xai" / "records.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["method"] == "symbolic_tree" and rec["epoch"] == 0:
            continue
        if rec["method"] == "logic_rules":
            rec["payload"]["global_rules"] = [f"{r} {RUN_B_MARK}" for r in rec["payload"]["global_rules"]]
        lines.append(json.dumps(rec))
    (run / "xai" / "records.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture(scope="module")
def report_a(run_a: Path) -> tuple[Path, str, Page]:
    out = build_report(run_a)
    text = out.read_text(encoding="utf-8")
    return out, text, Page(text)


@pytest.mark.slow
@pytest.mark.wandb
def test_every_method_has_a_section_with_epoch_navigation(
    run_a: Path, report_a: tuple[Path, str, Page]
) -> None:
    _, text, page = report_a
    records = read_records(run_a)
    methods = {r.method for r in records}
    assert {"representation_drift", "logic_rules", "concept_attribution", "symbolic_tree",
            "concept_permutation", "diffusion_explainer", "drift", "my_probe"} <= methods  # fmt: skip
    assert page.sections == {f"method-{_slug(m)}": m for m in methods}
    for method in methods:
        epochs = sorted({r.epoch for r in records if r.method == method})
        links = [a for a in page.epoch_links if a["href"].startswith(f"#epoch-{_slug(method)}-")]
        assert [int(a["data-epoch"]) for a in links] == epochs
        assert {f"epoch-{_slug(method)}-{e}" for e in epochs} <= page.ids
        assert f'href="#method-{_slug(method)}" data-epoch="all"' in text
    header = text.split("<section")[0]
    assert str(run_a) in header and f"{len(records)} in" in header and "0–1 (2 epochs: 0, 1)" in header
    # one card per record
    assert len(page.records) == len(records)


@pytest.mark.slow
@pytest.mark.wandb
def test_tables_have_the_records_row_counts(run_a: Path, report_a: tuple[Path, str, Page]) -> None:
    _, _, page = report_a
    rendered = {
        (t["record"], t["attrs"]["data-table"]): t["rows"] for t in page.tables if "data-table" in t["attrs"]
    }
    expected = {}
    for rec in read_records(run_a):
        for key, table in (rec.payload.get("tables") or {}).items():
            expected[((rec.method, rec.epoch, rec.name), key)] = len(table["rows"])
    assert expected and rendered == expected
    assert rendered[(("logic_rules", 1, "epoch"), "local_rules")] > 0


@pytest.mark.slow
@pytest.mark.wandb
def test_images_are_embedded_and_decodable(run_a: Path, report_a: tuple[Path, str, Page]) -> None:
    _, _, page = report_a
    entries = [m for r in read_records(run_a) for m in r.payload.get("media") or []]
    n_masks = sum(len(m.get("masks") or {}) for m in entries)
    assert len(entries) > 30 and len(page.images) == len(entries) + n_masks
    sizes = sorted(_decode(img["src"]).size for img in page.images)
    assert sizes == sorted(
        [(m["width"], m["height"]) for m in entries]
        + [(m["width"], m["height"]) for m in entries for _ in m.get("masks") or {}]
    )
    captions = [img["alt"] for img in page.images]
    assert any(c.startswith("class 0:") for c in captions)  # DiffExplainer's generated images
    assert any("concept maps" in c for c in captions)  # TCAV concept maps


@pytest.mark.slow
@pytest.mark.wandb
def test_method_views(run_a: Path, report_a: tuple[Path, str, Page]) -> None:
    _, text, page = report_a
    plots = [p["data-plot"] for p in page.plots]
    cka = text.split('data-plot="cka-timeline"')[1].split("</svg>")[0]
    reps = read_records(run_a, method="representation_drift")[-1].payload["cka_prev"]
    assert cka.count("<circle") == 2 * len(reps) * 2  # (prev, ref) x representations x 2 epochs
    assert plots.count("tcav") == len(read_records(run_a, method="concept_attribution")[-1].payload["layers"])
    assert plots.count("importance") == 1
    series = {p["data-series"] for p in page.plots if p["data-plot"] == "drift-timeline"}
    assert {f"{s}|{k}|{key}|{a}" for s, k, key in DRIFT_KEYS for a in ("previous", "reference")} <= series
    rules = read_records(run_a, method="logic_rules")[-1].payload["global_rules"]
    block = text.split('id="epoch-logic_rules-1"')[1].split("</article>")[0]
    ol = block.split('<ol class="rules">')[1].split("</ol>")[0]
    assert ol.count("<li>") == len(rules)
    tree = read_records(run_a, method="symbolic_tree", name="epoch")[-1].payload
    tree_block = text.split('id="epoch-symbolic_tree-1"')[1].split("</article>")[0]
    assert all(f"<code>{html.escape(r['text'])}</code>" in tree_block for r in tree["rules"])
    assert tree_block.count('<ul class="tree root">') == len(tree["class_trees"])
    targets = read_records(run_a, method="diffusion_explainer")[-1].payload["targets"]
    assert text.count('<div class="target"') == len(targets)
    for t in targets:
        assert f"“{html.escape(t['readout']['caption'])}”" in text
    # epoch 1 of symbolic_tree holds the explanation and the synthetic error
    assert [
        r["data-name"] for r in page.records if r["data-method"] == "symbolic_tree" and r["data-epoch"] == "1"
    ] == [
        "epoch",
        "error",
    ]
    _no_network(text)


@pytest.mark.slow
@pytest.mark.wandb
def test_report_renders_in_headless_chromium(report_a: tuple[Path, str, Page], tmp_path: Path) -> None:
    out, _, page = report_a
    pixels, dom = _rendered(out, tmp_path)
    _assert_not_blank(pixels)
    assert 'data-js="ready"' in dom  # the inline script ran to the end
    for section_id in page.sections:
        assert f'id="{section_id}"' in dom
    # the tabs show one epoch per section: the last one
    assert re.search(r'<a href="#epoch-logic_rules-1" data-epoch="1"[^>]*class="[^"]*active', dom)
    assert re.search(r'<article id="epoch-logic_rules-0"[^>]*hidden', dom)


@pytest.mark.slow
@pytest.mark.wandb
def test_compare_shows_both_runs_side_by_side(run_a: Path, run_b: Path, tmp_path: Path) -> None:
    out = compare(run_a, run_b, tmp_path / "compare.html")
    text = out.read_text(encoding="utf-8")
    page = Page(text)
    assert str(run_a) in text and str(run_b) in text
    assert "A · run_a" in text and "B · run_b" in text
    methods = {r.method for r in read_records(run_a)} | {r.method for r in read_records(run_b)}
    assert set(page.sections.values()) == methods
    for method in methods:
        cards = {
            run
            for run in ("a", "b")
            if any(r["data-method"] == method and r["run"] == run for r in page.records)
        }
        assert cards == {"a", "b"}, method
    assert len([r for r in page.records if r["run"] == "a"]) == len(read_records(run_a))
    assert len([r for r in page.records if r["run"] == "b"]) == len(read_records(run_b))
    # symbolic_tree epoch 0 exists only in run A: B's column says so
    only = text.split('id="epoch-symbolic_tree-0"')[1].split("</article>")[0]
    assert 'data-only-in="a"' in only and "only run A has this epoch" in only
    assert RUN_B_MARK in text.split('id="method-logic_rules"')[1]
    assert text.count('class="alert-box"') == 2 and text.count('class="error-box"') == 2
    _no_network(text)
    pixels, dom = _rendered(out, tmp_path)
    _assert_not_blank(pixels)
    assert 'data-js="ready"' in dom and all(f'id="{s}"' in dom for s in page.sections)


@pytest.mark.slow
@pytest.mark.wandb
def test_cli_report_and_compare(
    run_a: Path, run_b: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nested" / "report.html"
    assert main(["report", str(run_a), "-o", str(out)]) == 0
    assert out.is_file() and 'data-section="concept_attribution"' in out.read_text()
    run = load_run(run_a)
    assert len(run.errors) >= 1 and len(run.alerts()) >= 1
    assert f"{len(run.errors)} error" in capsys.readouterr().out
    both = tmp_path / "compare.html"
    assert main(["compare", str(run_a), str(run_b), "-o", str(both)]) == 0
    assert 'data-run="b"' in both.read_text()
