"""Records written before the typed results (schema 1, no ``schema`` key) stay readable.

``tests/fixtures/quickstart_schema1`` holds the ``records.jsonl`` of a quickstart run (6 epochs, seed 0) made
with the code before the typed results, and ``report_content.json``: what that code's report showed of it
(the sections, and per record card its views and the numbers in its text), taken before the change.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
from _report_content import report_content

from lightning_xai.concept_drift import DriftTracker, observations
from lightning_xai.records import LocalStore, Record, read_records
from lightning_xai.report import compare, render_report
from lightning_xai.results import SchemaError, read_result, result_type

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart_schema1"
BEFORE = json.loads((FIXTURE / "report_content.json").read_text())
EXPLAINED = (
    "logic_rules",
    "concept_attribution",
    "symbolic_tree",
    "concept_permutation",
    "diffusion_explainer",
)


@pytest.fixture(scope="module")
def old_records() -> list[Record]:
    return read_records(FIXTURE)


def test_every_old_record_reads_as_its_typed_result(old_records):
    methods = Counter(r.method for r in old_records)
    assert set(EXPLAINED) <= set(methods)
    for rec in old_records:
        assert rec.schema is None  # written before records carried a schema
        result = read_result(rec)
        assert type(result) is result_type(rec.method, rec.name)
        assert result.name == rec.name


def test_old_records_render_the_same_sections_views_and_numbers():
    after = report_content(render_report(FIXTURE))
    assert after["sections"] == BEFORE["sections"]
    assert list(after["cards"]) == list(BEFORE["cards"])
    for key, before in BEFORE["cards"].items():
        now = after["cards"][key]
        assert now["views"] == before["views"], key
        lost = Counter(before["numbers"]) - Counter(now["numbers"])
        assert not lost, f"{key}: numbers no longer shown: {dict(lost)}"


def test_old_records_compare_side_by_side(tmp_path):
    out = compare(FIXTURE, FIXTURE, out=tmp_path / "compare.html")
    page = out.read_text()
    for method in EXPLAINED:
        assert f'data-section="{method}"' in page
    shown = report_content(page)["cards"]

    def by_base(cards: dict) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for key, card in cards.items():
            out.setdefault(key.rsplit("#", 1)[0], Counter()).update(card["numbers"])
        return out

    # every old card appears once per run, with at least the numbers the old report showed in it
    before, now = by_base(BEFORE["cards"]), by_base(shown)
    assert before.keys() == now.keys()
    for base, numbers in before.items():
        twice = Counter({n: 2 * c for n, c in numbers.items()})
        assert not twice - now[base], base


def _drift_rows(records: list[Record]) -> dict[tuple, float]:
    out = {}
    for rec in records:
        if rec.method == "drift" and rec.name == "epoch":
            for row in read_result(rec).rows:
                if row.kind != "cav_cosine":  # CAV vectors are in memory only, never in a record
                    out[(rec.epoch, row.source, row.kind, row.key, row.against)] = row.value
    return out


def test_drift_monitor_recomputes_the_old_drift_rows_from_typed_results(old_records):
    """The tracker fed with the typed results of the old records gives the drift rows the old run recorded."""
    tracker = DriftTracker()
    mine: dict[tuple, float] = {}
    for rec in old_records:
        if rec.name != "epoch" or rec.method == "drift":
            continue
        rows, _ = tracker.update(rec.method, rec.epoch, observations(read_result(rec)))
        for row in rows:
            if row["kind"] != "cav_cosine":
                mine[(row["epoch"], row["source"], row["kind"], row["key"], row["against"])] = row["value"]
    recorded = _drift_rows(old_records)
    assert len(recorded) > 100
    assert mine.keys() == recorded.keys()
    for key, value in recorded.items():
        assert math.isclose(mine[key], value, rel_tol=1e-9, abs_tol=1e-12), key


def test_newer_schema_is_named_in_the_report_not_an_empty_section(tmp_path):
    shutil.copytree(FIXTURE / "xai", tmp_path / "xai")
    lines = (tmp_path / "xai" / "records.jsonl").read_text().splitlines()
    future = []
    for line in lines:
        data = json.loads(line)
        if data["method"] == "concept_permutation":
            data["schema"] = 99
        future.append(json.dumps(data))
    (tmp_path / "xai" / "records.jsonl").write_text("\n".join(future) + "\n")
    page = render_report(tmp_path)
    assert "schema 99, newer than this lightning-xai reads" in page
    with pytest.raises(SchemaError, match="upgrade lightning-xai"):
        read_result(next(r for r in read_records(tmp_path) if r.method == "concept_permutation"))


def test_record_schema_round_trips(tmp_path):
    store = LocalStore(tmp_path / "xai")
    from lightning_xai.records import Explanation

    store.write(Explanation(Record("concept_permutation", "epoch", 1, 2, payload={"base": 1.0}, schema=2)))
    (rec,) = read_records(tmp_path)
    assert rec.schema == 2
    with pytest.raises(TypeError, match="schema must be an int"):
        Record("m", "epoch", 1, 2, schema="2")
