"""VisionLogic's entry point (lightning_xai.logic.LogicRules) and its typed result (LogicRulesResult): the schema
it owns, the records it writes (one epoch each), what it logs and what the drift monitor tracks of it."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch import seed_everything
from test_logic_rules import W_HAND, Y_HAND, Z_HAND, hand_head
from torch import nn

from lightning_xai.callbacks.logic_rules import LogicRulesCallback
from lightning_xai.logic import LinearHead, LogicRules, extract_pathways, fit_vocabulary, head_inputs
from lightning_xai.records import RESERVED_PAYLOAD_KEYS, Record, read_records
from lightning_xai.results import SchemaError, read_result
from lightning_xai.results.logic_rules import LogicRulesResult

FIXTURE = Path(__file__).parent / "fixtures" / "quickstart_schema1"
CROSS_EPOCH_KEYS = {"previous_epoch", "jaccard_prev", "history"}


def _tree(value: Any) -> Any:
    """``value`` as nested builtins with NaN as a string, for equality: transient fields left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _tree(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("transient")
        }
    if isinstance(value, (list, tuple)):
        return type(value)(_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: _tree(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


# ------------------------------------------------------------------------------------------ the core
def test_logic_rules_explains_the_hand_built_head_in_one_call() -> None:
    logits = hand_head().logits(Z_HAND)
    result = LogicRules(crossfit_folds=0, scoring="share").explain(Z_HAND, logits, Y_HAND, hand_head())
    # the same vocabularies as the pipeline's steps (see test_logic_rules's hand-computed values)
    expected = fit_vocabulary(Z_HAND, extract_pathways(Z_HAND, hand_head()), 3, labels=Y_HAND)
    assert result.vocabulary.to_dict() == expected.to_dict()
    assert result.global_rules[1] == "class 1 <- (f2 >= 1.5) [50%] OR (f1 >= 2 AND f2 >= 1.5) [50%]"
    assert (result.n_source, result.n80, result.empty_classes) == ([2, 2, 1], [1, 2, 1], [])
    assert result.scoring == "share" and set(result.evaluation) == {"restricted_logit", "share"}
    assert result.evaluation["share"].fidelity == 1.0 and result.evaluation["share"].n == 6
    # z6 (label 1, predicted 0): its pathway f0+ is in class 0's vocabulary but 0.8 < 1, so nothing is eligible
    last = result.local_rules[-1]
    assert (last.id, last.label, last.class_index, last.rule) == (
        5,
        1,
        0,
        "class 0 <- (no eligible predicate)",
    )
    assert result.fidelity_per_class == [1.0, 1.0, 1.0]
    # no model, no images: the model never runs
    assert result.grounding is None and result.perturbation is None


def test_logic_rules_takes_an_nn_linear_the_model_and_no_labels() -> None:
    linear = nn.Linear(3, 3)
    with torch.no_grad():
        linear.weight.copy_(W_HAND)
        linear.bias.zero_()
    model = nn.Sequential(nn.Identity(), linear)
    logits = hand_head().logits(Z_HAND)
    by_module = LogicRules(crossfit_folds=0).explain(
        Z_HAND, logits, Y_HAND, linear, class_names=["a", "b", "c"]
    )
    by_model = LogicRules(crossfit_folds=0).explain(Z_HAND, logits, Y_HAND, model=model)
    assert by_model.head == "1" and by_module.head is None
    assert by_module.vocabulary.to_dict() == by_model.vocabulary.to_dict()
    assert by_module.classes == ["a", "b", "c"]
    assert by_module.global_rules[0] == "class 0 (a) <- (f0 >= 1) [100%]"
    # without labels the vocabularies come from every image by prediction: z6 lowers class 0's threshold to .8
    unlabelled = LogicRules(crossfit_folds=0).explain(Z_HAND, logits, None, linear)
    assert unlabelled.source == "predicted" and unlabelled.vocabulary[0].predicates[0].threshold == 0.8
    assert math.isnan(unlabelled.evaluation["share"].accuracy)
    with pytest.raises(ValueError, match="head must be a LinearHead or the classifier's nn.Linear"):
        LogicRules().explain(Z_HAND, logits, Y_HAND)
    with pytest.raises(ValueError, match="got 2 class names for a head of 3 classes"):
        LogicRules().explain(Z_HAND, logits, Y_HAND, linear, class_names=["a", "b"])
    with pytest.raises(ValueError, match="got 5 ids for 6 rows"):
        LogicRules().explain(Z_HAND, logits, Y_HAND, linear, ids=[0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"scoring": "vote"},
            r"scoring='vote' is not supported; choose one of \['auto', 'restricted_logit', 'share'\]",
        ),
        ({"source": "all"}, r"source='all' is not supported; choose one of \['correct', 'predicted'\]"),
        ({"crossfit_folds": 1}, "crossfit_folds must be 0"),
        ({"max_grounding_images": -1}, "max_grounding_images must be an integer >= 0"),
        ({"perturbation_levels": [1.5]}, r"strengths in \(0, 1\]"),
        ({"grounding_layer": ""}, "grounding_layer must be a dotted layer name"),
    ],
)
def test_logic_rules_rejects_bad_options_with_a_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LogicRules(**kwargs)


def test_logic_rules_grounds_with_a_model_and_images_and_pickles_without_its_layer_cache() -> None:
    torch.manual_seed(0)
    model = SmallNet().eval()
    images = torch.rand(12, 3, 8, 8)
    z = head_inputs(model, images).float()
    with torch.no_grad():
        logits = model.head(z)
    core = LogicRules(crossfit_folds=0, max_grounding_images=2, max_perturbation_images=2)
    result = core.explain(z, logits, None, model=model, images=images, ids=torch.arange(100, 112))
    assert result.grounding is not None and result.grounding.layer == "bn" and len(result.grounding.ids) <= 2
    assert all(i >= 100 for i in result.grounding.ids) and result.perturbation is not None
    assert result.grounded_images is not None and result.grounded_images.shape[0] == result.grounding.n_images
    assert {m.key for m in result.logged(0).media} <= {"grounding_images", "survival_plot"}
    assert list(core._layers.values()) == ["bn"]  # found once per model
    copy = pickle.loads(pickle.dumps(core))  # a callback's core travels to spawned processes
    assert copy.max_grounding_images == 2 and not copy._layers
    assert copy.explain(z, logits, None, model=model, images=images).grounding.layer == "bn"


# ------------------------------------------------------------------------------- a real explained run
@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> dict[str, Any]:
    """Three explained epochs of SmallNet, grounding and the perturbation study on each, with their results."""
    root = tmp_path_factory.mktemp("logic_result")
    seed_everything(0)
    cb = LogicRulesCallback(
        on_error="raise", max_grounding_images=3, max_perturbation_images=3, grounding_every=1
    )
    results: list[LogicRulesResult] = []
    explain = cb.explain

    def keep(trainer, pl_module, sample):
        results.append(explain(trainer, pl_module, sample))
        return results[-1]

    cb.explain = keep
    make_trainer(root, [cb], max_epochs=3).fit(SmallNet(), BlobData())
    records = read_records(root / "logs" / "version_0", method="logic_rules")
    return {"records": records, "results": results}


def test_a_result_round_trips_through_its_record(explained) -> None:
    records, results = explained["records"], explained["results"]
    assert [r.epoch for r in records] == [0, 1, 2] and len(results) == 3
    for rec, result in zip(records, results):
        assert rec.schema == LogicRulesResult.schema == 2
        assert result.grounding is not None and result.perturbation is not None and result.local_rules
        back = read_result(rec)
        assert isinstance(back, LogicRulesResult) and back.recorded == {}
        assert _tree(back) == _tree(result)
        assert _tree(LogicRulesResult.from_payload(result.to_payload(), 2)) == _tree(result)
        # what a result read back logs is what the explained one logged, less the figures of images no record holds
        logged, again = result.logged(rec.epoch), back.logged(rec.epoch)
        assert again.scalars.keys() == logged.scalars.keys()
        assert [(t.key, t.columns, t.rows) for t in again.tables] == [
            (t.key, t.columns, t.rows) for t in logged.tables
        ]
        assert {m.key for m in logged.media} == {"grounding_images", "survival_plot"}
        assert {m.key for m in again.media} == {"survival_plot"}


def test_a_record_holds_its_own_epoch_only(explained) -> None:
    sizes = []
    for rec in explained["records"]:
        payload = {k: v for k, v in rec.payload.items() if k not in RESERVED_PAYLOAD_KEYS}
        assert set(payload) == {
            f.name for f in dataclasses.fields(LogicRulesResult) if not f.metadata.get("transient")
        }
        assert not CROSS_EPOCH_KEYS & set(payload) and not any(k.endswith("_prev") for k in payload)
        assert set(rec.payload["tables"]) == {"rules", "fidelity", "local_rules", "grounding", "survival"}
        assert set(rec.payload["charts"]) == {"predicate_survival"}
        assert "jaccard_prev" not in rec.payload["tables"]["rules"]["columns"]
        sizes.append(len(json.dumps(payload)))
    # the size varies with the rules found, not with the number of epochs before
    assert max(sizes) <= 1.5 * min(sizes) + 2048, sizes


def test_a_payload_without_a_required_field_or_with_a_broken_part_is_refused(explained) -> None:
    payload = dict(explained["records"][0].payload)
    del payload["vocabulary"]
    with pytest.raises(SchemaError, match=r"logic_rules record payload lacks \['vocabulary'\]"):
        read_result(Record("logic_rules", "epoch", 0, 0, payload=payload, schema=2))
    broken = dict(explained["records"][0].payload, grounding={"layer": "conv"})
    with pytest.raises(SchemaError, match="logic_rules record payload has an unreadable 'grounding'"):
        LogicRulesResult.from_payload(broken, 2)
    with pytest.raises(SchemaError, match="schema 3, newer than this lightning-xai reads"):
        LogicRulesResult.from_payload(explained["records"][0].payload, 3)


def test_observations_track_each_class_vocabulary_and_fidelity(explained) -> None:
    result = explained["results"][-1]
    obs = {(o.kind, o.key): o for o in result.observations()}
    n = result.vocabulary.num_classes
    assert {k for k, _ in obs} == {"rule_jaccard", "rule_fidelity"}
    assert {key for kind, key in obs if kind == "rule_jaccard"} == {f"class_{k}" for k in range(n)}
    for cv in result.vocabulary.classes:
        o = obs[("rule_jaccard", f"class_{cv.class_index}")]
        assert o.value == frozenset(cv.signed_ids) and o.meta["texts"] == {
            p.signed_id: p.text() for p in cv.predicates
        }
    for k, f in enumerate(result.fidelity_per_class):
        assert (("rule_fidelity", f"class_{k}") in obs) == (f is not None)


# ------------------------------------------------------------------------------------- schema 1 records
def test_schema_1_records_read_without_loss_and_keep_what_they_said_of_other_epochs() -> None:
    old = [r for r in read_records(FIXTURE, method="logic_rules") if r.name == "epoch"]
    assert len(old) == 6 and all(r.schema is None for r in old)
    for rec in old:
        result = read_result(rec)
        assert isinstance(result, LogicRulesResult)
        assert set(result.recorded) == CROSS_EPOCH_KEYS and "history" not in result.to_payload()
        stored = {
            k: v
            for k, v in rec.payload.items()
            if k not in RESERVED_PAYLOAD_KEYS and k not in CROSS_EPOCH_KEYS
        }
        written = result.to_payload()
        assert all(r.pop("label") is None for r in written["local_rules"])  # schema 1 kept no labels
        assert json.dumps(written) == json.dumps(stored)  # every value, in the same order
        assert result.summary()["previous_epoch"] == rec.payload["previous_epoch"]


def test_logic_rules_cross_fits_without_labels_and_keeps_16_local_rules() -> None:
    head = LinearHead.from_module(nn.Linear(3, 3))
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    result = LogicRules(crossfit_folds=2).explain(z, head.logits(z).float(), None, head)
    assert result.source == "predicted" and result.crossfit_folds == 2 and result.n_samples == 40
    assert [r.index for r in result.local_rules] == list(range(16))  # no grounded images: the first 16
    assert all(r.label is None for r in result.local_rules)
    assert 0.0 <= result.evaluation[result.scoring].fidelity <= 1.0
