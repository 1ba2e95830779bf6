"""ConceptDriftMonitor and its core (``lightning_xai.concept_drift``): series, alerts, resume, and a scripted
concept shift on the planted-concept world."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    ConceptDriftMonitor,
    LogicRulesCallback,
    RepresentationDriftCallback,
)
from lightning_xai.concept_drift import DRIFT_KINDS, DriftTracker, Observation, observations
from lightning_xai.records import read_records
from lightning_xai.world import (
    WorldDataModule,
    concept_set,
    interventional_effects,
    random_set,
    train_tiny_cnn,
)


def _obs(kind: str, key: str, value, **meta) -> dict:
    return {(kind, key): Observation(kind, key, f"{kind} {key}", value, meta=meta)}


# ------------------------------------------------------------------------------------------ the core
@pytest.mark.parametrize(
    ("kind", "before", "after", "expected"),
    [
        ("cav_cosine", torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 1.0),
        ("cav_cosine", torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), 0.0),
        ("tcav_score", 0.9, 0.4, 0.5),
        ("tcav_magnitude", 0.64, 0.14, 0.5 / 0.64),  # shares of the layer's largest: relative change
        ("tcav_magnitude", 0.05, -0.05, 0.1 / 0.25),  # small shares count as 25%
        ("rule_jaccard", frozenset({1, 2, 3}), frozenset({2, 3, 4}), 0.5),  # |{2,3}| / |{1,2,3,4}|
        ("rule_fidelity", 0.95, 0.70, 0.25),
        ("rule_fidelity", 0.70, 0.95, -0.25),  # a rise is negative drift
        ("symbol_js", [1.0, 0.0], [0.0, 1.0], 1.0),
        ("permutation_tau", {"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}, 1.0),  # reversed
        (
            "permutation_tau",
            {"a": 3.0, "b": 2.0, "c": 1.0},
            {"a": 3.0, "b": 1.0, "c": 2.0},
            1 / 3,
        ),  # 1 of 3 pairs swapped
        ("readout", {"shape": "circle", "marker": "a marker"}, {"shape": "circle", "marker": ""}, 0.5),
    ],
)
def test_each_kind_measures_its_distance(kind: str, before, after, expected: float) -> None:
    tracker = DriftTracker(thresholds={kind: 10.0})
    tracker.update("src", 0, _obs(kind, "k", before, relevant=True))
    rows, alerts = tracker.update("src", 1, _obs(kind, "k", after, relevant=True))
    (prev,) = [r for r in rows if r["against"] == "previous"]
    assert prev["value"] == pytest.approx(expected) and prev["base_epoch"] == 0 and not alerts


def test_alerts_name_what_drifted_and_reference_alerts_fire_once_per_crossing() -> None:
    tracker = DriftTracker(alert_on=("previous", "reference"))  # tcav_score threshold 0.3
    key = "conv5/marker:present/circle/lined"

    def tcav(score: float, significant: bool) -> dict:
        label = "TCAV score of 'marker:present' for class 'circle/lined' at conv5"
        meta = {"significant": significant, "relevant": significant, "magnitude": 2.0 * score - 1.0}
        return {("tcav_score", key): Observation("tcav_score", key, label, score, meta=meta)}

    assert tracker.update("concept_attribution", 0, tcav(0.95, True)) == (
        [],
        [],
    )  # nothing to compare with yet
    _, alerts = tracker.update("concept_attribution", 1, tcav(0.90, True))
    assert alerts == []
    _, alerts = tracker.update("concept_attribution", 2, tcav(0.40, False))
    assert [a["against"] for a in alerts] == ["previous", "reference"]
    assert alerts[0]["message"] == (
        "concept_attribution: TCAV score of 'marker:present' for class 'circle/lined' at conv5 drifted since epoch 1 "
        "(previous): 0.90 (significant, magnitude +0.80) -> 0.40 (not significant, magnitude -0.20) (tcav_score 0.500 > 0.3)"
    )
    # still far from the reference, steady since: no new alert; back near it, then away again: alerts again
    assert tracker.update("concept_attribution", 3, tcav(0.42, False))[1] == []
    assert tracker.update("concept_attribution", 4, tcav(0.93, True))[1][0]["against"] == "previous"
    _, alerts = tracker.update("concept_attribution", 5, tcav(0.41, False))
    assert sorted(a["against"] for a in alerts) == ["previous", "reference"]
    # changes of a concept that matters on neither side never alert (sign fractions of ignored concepts
    # wander): the row is still kept
    rows, alerts = tracker.update("concept_attribution", 6, tcav(0.99, False))
    assert alerts == [] and {r["against"]: r["value"] for r in rows}["previous"] == pytest.approx(0.58)


def test_repeated_epochs_are_ignored_and_state_round_trips() -> None:
    tracker = DriftTracker(reference=1, thresholds={"rule_fidelity": 0.1})
    tracker.update("s", 0, _obs("rule_fidelity", "a", 0.9))
    assert tracker.sources["s"]["reference"] is None  # the pinned reference is epoch 1
    tracker.update("s", 1, _obs("rule_fidelity", "a", 0.8))
    assert tracker.update("s", 1, _obs("rule_fidelity", "a", 0.1)) == (
        [],
        [],
    )  # e.g. trainer.validate after fit
    restored = DriftTracker(reference=1)
    restored.load_state_dict(tracker.state_dict())
    rows, _ = restored.update("s", 2, _obs("rule_fidelity", "a", 0.7))
    assert {r["against"]: (r["base_epoch"], round(r["value"], 6)) for r in rows} == {
        "previous": (1, 0.1),
        "reference": (1, 0.1),
    }
    assert [r["epoch"] for r in restored.history] == [1, 2, 2]


def test_unknown_methods_give_no_observations_and_every_method_has_kinds() -> None:
    from lightning_xai.records import Record
    from lightning_xai.report.load import typed

    unknown, _ = typed(Record("not_a_method", "epoch", 0, 0, payload={"x": 1}))
    assert observations(unknown) == {}
    assert {k.method for k in DRIFT_KINDS.values()} == {
        "representation_drift",
        "concept_attribution",
        "logic_rules",
        "symbolic_tree",
        "concept_permutation",
        "diffusion_explainer",
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds": {"tcav": 0.3}}, r"Unknown drift kind\(s\) \['tcav'\].*valid kinds: \['cav_cosine'"),
        (
            {"thresholds": {"tcav_score": 0}},
            r"thresholds\['tcav_score'\] must be a positive number \(or None: no alerts\), but got 0",
        ),
        ({"thresholds": {"tcav_score": float("nan")}}, "must be a positive number"),
        ({"reference": "last"}, r"reference='last' is not supported; choose 'first' or an epoch number"),
        ({"reference": -1}, "choose 'first' or an epoch number >= 0"),
        ({"start_epoch": -2}, "start_epoch must be an integer >= 0, but got -2"),
        (
            {"alert_on": ["next"]},
            r"alert_on=\['next'\] is not supported; choose one or both of \['previous', 'reference'\]",
        ),
        ({"alert_on": []}, "choose one or both of"),
        ({"on_error": "ignore"}, r"on_error='ignore' is not supported; choose one of \['warn', 'raise'\]"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        ConceptDriftMonitor(**kwargs)


# ------------------------------------------------------------------------------------- with a Trainer
def _rules(**kwargs) -> LogicRulesCallback:
    return LogicRulesCallback(on_error="raise", max_grounding_images=0, max_perturbation_images=0, **kwargs)


def test_two_instances_of_a_callback_are_tracked_apart_and_logged(tmp_path: Path) -> None:
    seed_everything(0)
    monitor = ConceptDriftMonitor(on_error="raise", log_scalars="all")
    callbacks = [
        _rules(),
        _rules(max_samples=256, crossfit_folds=0),
        RepresentationDriftCallback(on_error="raise"),
        monitor,
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3)
    trainer.fit(SmallNet(), BlobData())
    sources = {r["source"] for r in monitor.tracker.history}
    assert sources == {"logic_rules", "logic_rules#2", "representation_drift"}
    # one row per (epoch, series): nothing counted twice, epochs 1 and 2 (epoch 0 has nothing to compare with)
    keys = [(r["epoch"], r["source"], r["kind"], r["key"], r["against"]) for r in monitor.tracker.history]
    assert len(keys) == len(set(keys))
    assert {(r["source"], r["kind"]) for r in monitor.tracker.history} == {
        ("logic_rules", "rule_jaccard"),
        ("logic_rules", "rule_fidelity"),
        ("logic_rules#2", "rule_jaccard"),
        ("logic_rules#2", "rule_fidelity"),
        ("representation_drift", "cka"),
    }
    assert {r["epoch"] for r in monitor.tracker.history} == {1, 2}
    # the CKA series is the source's own: 1 - its CKA with the previous epoch
    drift = read_records(tmp_path / "logs" / "version_0", method="representation_drift")
    cka_rows = [r for r in monitor.tracker.history if r["kind"] == "cka" and r["against"] == "previous"]
    expected = {(rec.epoch, rep): 1 - v for rec in drift[1:] for rep, v in rec.payload["cka_prev"].items()}
    assert {(r["epoch"], r["key"]): r["value"] for r in cka_rows} == pytest.approx(expected)
    # every value is monitorable, and records say the same as the scalars
    metrics = trainer.callback_metrics
    jac = [
        r
        for r in monitor.tracker.history
        if r["epoch"] == 2
        and r["source"] == "logic_rules#2"
        and r["kind"] == "rule_jaccard"
        and r["against"] == "previous"
    ]
    for r in jac:
        assert float(metrics[f"xai/drift/logic_rules#2/rule_jaccard/prev/{r['key']}"]) == pytest.approx(
            r["value"]
        )
    assert float(metrics["xai/drift/logic_rules#2/rule_jaccard/max_prev"]) == pytest.approx(
        max(r["value"] for r in jac)
    )
    records = read_records(tmp_path / "logs" / "version_0", method="drift")
    assert sorted((r.epoch, r.payload["source"]) for r in records if r.name == "epoch") == sorted(
        (e, s) for e in (1, 2) for s in sources
    )
    last = next(
        r for r in records if r.name == "epoch" and r.epoch == 2 and r.payload["source"] == "logic_rules"
    )
    assert {(row["kind"], row["key"], row["against"]) for row in last.payload["rows"]} == {
        (r["kind"], r["key"], r["against"])
        for r in monitor.tracker.history
        if r["epoch"] == 2 and r["source"] == "logic_rules"
    }
    # one epoch per record: the report and W&B draw the series from the records of all epochs
    assert set(last.payload["tables"]) == {"logic_rules/rows"}
    assert {row[0] for row in last.payload["tables"]["logic_rules/rows"]["rows"]} == {2}


def test_resume_keeps_the_series_continuous(tmp_path: Path) -> None:
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = ConceptDriftMonitor(on_error="raise")
    make_trainer(tmp_path, [_rules(), first, ckpt], max_epochs=3, enable_checkpointing=True).fit(
        SmallNet(), BlobData()
    )
    resumed = ConceptDriftMonitor(on_error="raise")
    trainer = make_trainer(
        tmp_path, [_rules(), resumed], max_epochs=6, logger=CSVLogger(tmp_path, name="resumed")
    )
    trainer.fit(SmallNet(), BlobData(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    history = resumed.tracker.history
    per_epoch = {}
    for r in history:
        per_epoch.setdefault((r["kind"], r["key"], r["against"]), []).append((r["epoch"], r["base_epoch"]))
    prev = [v for (kind, key, against), v in per_epoch.items() if against == "previous"]
    # no gap, no duplicate, across the resume (a class without correct samples at first joins later)
    assert prev and all([e for e, _ in v] == list(range(v[0][0], 6)) and v[0][0] <= 2 for v in prev)
    assert sum(v[0][0] == 1 for v in prev) >= len(prev) - 2
    assert all(
        base == e - 1 for v in prev for e, base in v
    )  # epoch 3 compares with epoch 2 from the checkpoint
    ref = [v for (kind, key, against), v in per_epoch.items() if against == "reference"]
    assert ref and all(base == 0 for v in ref for _, base in v)  # the reference epoch survives the resume too
    # the resumed run's records continue the series: epochs 3..5 only
    drift = read_records(tmp_path / "resumed" / "version_0", method="drift")
    assert sorted({r.epoch for r in drift}) == [3, 4, 5]


def test_a_failing_monitor_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_xai.callbacks.drift_monitor as dm

    def broken(*args, **kwargs):
        raise RuntimeError("extractor exploded")

    monkeypatch.setattr(dm, "observations", broken)
    monitor = ConceptDriftMonitor()
    trainer = make_trainer(tmp_path, [_rules(), monitor], max_epochs=2)
    with pytest.warns(
        UserWarning, match="ConceptDriftMonitor failed on logic_rules at epoch 0 and training goes on"
    ):
        trainer.fit(SmallNet(), BlobData())
    assert trainer.state.finished
    errors = [r for r in read_records(tmp_path / "logs" / "version_0") if r.name == "error"]
    assert [(r.method, r.epoch) for r in errors] == [("drift", 0), ("drift", 1)]
    assert "extractor exploded" in errors[0].payload["message"]
    with pytest.raises(
        RuntimeError, match="ConceptDriftMonitor failed on logic_rules at epoch 0: extractor exploded"
    ):
        make_trainer(tmp_path / "raise", [_rules(), ConceptDriftMonitor(on_error="raise")], max_epochs=1).fit(
            SmallNet(), BlobData()
        )


# ------------------------------------------------------------------ Done when: a scripted concept shift
class _ShiftingWorld(WorldDataModule):
    """The world with the marker tied to class 0 until ``shift_epoch``, then independent of the label."""

    def __init__(self, shift_epoch: int, **kwargs) -> None:
        super().__init__(spurious_class=0, spurious_p=1.0, **kwargs)
        self.shift_epoch = shift_epoch
        self.after = WorldDataModule(
            n_train=self.n_train, n_val=self.n_val, batch_size=self.batch_size, seed=self.seed + 1000
        )

    def train_dataloader(self):
        if self.trainer is not None and self.trainer.current_epoch >= self.shift_epoch:
            return self.after.train_dataloader()
        return super().train_dataloader()


STABLE, AFTER = 5, 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_concept_shift_alerts_on_the_marker_and_stable_epochs_do_not(tmp_path: Path, seed: int) -> None:
    """A TinyCNN trained with the spurious marker tied to class 0 goes on training on the same kind of data for
    5 explained epochs, then on data where the marker is independent of the label. The monitor (defaults) stays
    silent in the stable epochs and names the marker within 2 explained epochs of the shift.

    Seeds: the shift only exists in a model that uses the marker, which the test checks against the world's
    interventional ground truth. The width-8 model of seed 0 learns shape and texture alone (the marker's TCAV
    magnitude for class 0 is about -0.1 logit), so it has no concept to lose and is not used here. Two seeds
    (about 25 s each on 2 CPU cores) keep the suite within its time; seed 3 passes too.
    """
    world = train_tiny_cnn(
        epochs=6, n_train=1200, n_val=300, width=8, seed=seed, spurious_class=0, spurious_p=1.0
    )
    model = world.model
    before = interventional_effects(model, ["marker:present"], task=world.rule, n_scenes=64, seed=0)
    assert before.effect("marker:present", 0) > 1.0  # the model uses the shortcut
    # training goes on at a constant rate (a fresh one-cycle schedule would restart its warm-up)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=3e-4)
    concepts = {
        c: concept_set(c, 60, seed=seed + 7)
        for c in ("marker:present", "shape:circle", "texture:striped", "colour:red")
    }
    attribution = ConceptAttributionCallback(
        concepts,
        random=random_set(60, seed=seed + 7),
        probe_images=0,
        images_per_class=5,
        m_steps=8,
        seed=seed,
        on_error="raise",
    )
    monitor = ConceptDriftMonitor(on_error="raise")
    callbacks = [attribution, RepresentationDriftCallback(on_error="raise"), monitor]
    trainer = make_trainer(
        tmp_path,
        callbacks,
        max_epochs=STABLE + AFTER,
        limit_train_batches=None,
        reload_dataloaders_every_n_epochs=1,
    )
    trainer.fit(model, _ShiftingWorld(STABLE, n_train=1200, n_val=300, seed=seed + 1))
    # ground truth: the shift really took the marker away from class 0
    after = interventional_effects(model, ["marker:present"], task=world.rule, n_scenes=64, seed=0)
    assert after.effect("marker:present", 0) < 0.5 * before.effect("marker:present", 0)
    early = [a["message"] for a in monitor.alerts if a["epoch"] < STABLE]
    assert early == []
    late = [a for a in monitor.alerts if a["epoch"] < STABLE + AFTER]
    assert any("marker:present" in a["key"] and "'marker:present'" in a["message"] for a in late), [
        a["message"] for a in late
    ]
    # silence is not for lack of comparisons: every stable epoch after the first was compared
    tcav_prev = [
        r for r in monitor.tracker.history if r["kind"] == "tcav_magnitude" and r["against"] == "previous"
    ]
    assert {r["epoch"] for r in tcav_prev} == set(range(1, STABLE + AFTER))
    alerts = [r for r in read_records(tmp_path / "logs" / "version_0", method="drift") if r.name == "alert"]
    assert [r.payload["message"] for r in alerts] == [a["message"] for a in monitor.alerts]


def test_stop_on_alert_stops_training_at_the_alerting_epoch(tmp_path: Path) -> None:
    seed_everything(0)
    monitor = ConceptDriftMonitor(thresholds={"cka": 1e-9}, stop_on_alert=True, on_error="raise")
    trainer = make_trainer(tmp_path, [RepresentationDriftCallback(on_error="raise"), monitor], max_epochs=5)
    with pytest.warns(
        UserWarning, match=r"ConceptDriftMonitor alert at epoch 1: representation_drift: representation"
    ):
        trainer.fit(SmallNet(), BlobData())
    assert monitor.alerts and {a["epoch"] for a in monitor.alerts} == {1}  # any change of CKA alerts
    assert trainer.current_epoch == 2 and trainer.should_stop  # epochs 0 and 1 ran, not 5
