"""DEPICT concept permutation importance on the planted-concept world, where the truth is known.

Ground truth of a table's concept importance is the *oracle*: the label rule itself applied to the
permuted rows (tabular permutation importance of the true rule, with the very same permutations). A
model that learned the rule should rank the concepts the same way when it is scored on generated images.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from scipy import stats

from lightning_xai.callbacks import ConceptDriftMonitor, ConceptPermutationCallback
from lightning_xai.permutation import (
    ConceptPermutation,
    ConceptPermutationResult,
    ConceptTable,
    GenerationCache,
    GeneratorOutputError,
    kendall_tau,
)
from lightning_xai.records import Record, read_records
from lightning_xai.results import SchemaError, read_result
from lightning_xai.world import (
    LabelRule,
    Slots,
    TinyCNN,
    WorldDataModule,
    WorldGenerator,
    train_tiny_cnn,
    world_concept_table,
)

# one decisive concept (shape: every circle is positive), one weak one (texture: only a zigzag triangle is
# positive), one irrelevant one (colour)
WEIGHTED = LabelRule.from_function(
    lambda s: int(s.shape == "circle" or (s.shape == "triangle" and s.texture == "zigzag")),
    ["other", "positive"],
    name="weighted",
    description="positive iff a circle, or a triangle on a zigzag background",
)
ROWS = 300
REPEATS = 10


def _slots(table: ConceptTable, override: dict[str, list[Any]] | None = None) -> list[Slots]:
    cols = {**table.columns, **(override or {})}
    return [
        Slots(cols["shape"][i], cols["colour"][i], cols["texture"][i], marker=bool(cols["marker"][i]))
        for i in range(table.n)
    ]


def oracle_importance(
    table: ConceptTable, rule: LabelRule, n_repeats: int, seed: int = 0
) -> dict[str, float]:
    """Accuracy drop of the true rule itself under the table's own permutations (the ground truth)."""
    labels = np.array([rule(s) for s in _slots(table)])
    out = {}
    for c in table.concepts:
        drops = []
        for r in range(n_repeats):
            p = table.permutation(c, r, seed)
            values = [table.columns[c][int(j)] for j in p.order]
            perm = np.array([rule(s) for s in _slots(table, {c: values})])
            drops.append(1.0 - float((perm == labels).mean()))
        out[c] = float(np.mean(drops))
    return out


class CountingGenerator:
    """Wraps a generator and counts its calls and the images it made."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0
        self.images = 0
        self.requests: list[tuple[str, int]] = []

    @property
    def fingerprint(self) -> str:
        return "counting:" + self.inner.fingerprint

    def generate(self, captions: list[str], seeds: list[int]) -> torch.Tensor:
        self.calls += 1
        self.images += len(captions)
        self.requests += list(zip(captions, seeds))
        return self.inner.generate(captions, seeds)


# ----------------------------------------------------------------------------------- tables
def test_permutation_shuffles_one_column_and_keeps_each_rows_seed() -> None:
    table = world_concept_table(50, seed=3)
    p = table.permutation("texture", repeat=2)
    assert sorted(p.order.tolist()) == list(range(50))
    for i in range(50):
        base, perm = table.row(i), dict(table.row(i))
        perm["texture"] = table.columns["texture"][int(p.order[i])]
        assert p.captions[i] == table.caption_template.format(**perm)
        assert p.changed[i] == (perm["texture"] != base["texture"])
    # seeded and keyed by the concept's name: the same shuffle again, another one for another repeat
    assert np.array_equal(table.permutation("texture", 2).order, p.order)
    assert not np.array_equal(table.permutation("texture", 3).order, p.order)
    assert 0 < p.changed.sum() < 50
    # the world's captions round-trip through the template
    assert WorldGenerator().generate(table.captions()[:2], table.seeds[:2]).shape == (2, 3, 64, 64)


@pytest.mark.slow
def test_only_changed_rows_are_generated_and_the_second_epoch_hits_the_cache(
    trained_model_copy: TinyCNN,
) -> None:
    gen = CountingGenerator(WorldGenerator())
    table = world_concept_table(40, seed=1)
    depict = ConceptPermutation(gen, table, n_repeats=3, show_progress=False)
    depict.explain(trained_model_copy)
    expected = set(zip(table.captions(), table.seeds))
    for c in table.concepts:
        for r in range(3):
            p = table.permutation(c, r, 0)
            expected |= {(p.captions[i], table.seeds[i]) for i in np.flatnonzero(p.changed)}
    assert gen.images == len(expected) == len(set(gen.requests))  # each needed image once, nothing else
    assert set(gen.requests) == expected
    calls, images = gen.calls, gen.images
    second = depict.explain(trained_model_copy)
    assert (gen.calls, gen.images) == (calls, images)  # re-scoring only
    assert depict.cache.hits > 0
    assert second.drops.shape == (4, 3)


def test_disk_cache_is_reused_by_a_new_run(tmp_path: Path) -> None:
    table = world_concept_table(10, seed=0)
    first = CountingGenerator(WorldGenerator())
    a = GenerationCache(first, directory=tmp_path, show_progress=False).get(table.captions(), table.seeds)
    second = CountingGenerator(WorldGenerator())
    b = GenerationCache(second, directory=tmp_path, show_progress=False).get(table.captions(), table.seeds)
    assert first.images == 10 and second.images == 0
    assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_cached_images_share_a_few_large_blocks_and_each_file_holds_one_image(tmp_path: Path) -> None:
    # thousands of separately allocated images fragment the process heap and slowed every later training step
    table = world_concept_table(130, seed=0)
    cache = GenerationCache(WorldGenerator(), directory=tmp_path, show_progress=False)
    got = cache.get(table.captions(), table.seeds)
    assert torch.equal(got, WorldGenerator().generate(table.captions(), table.seeds))
    stored = list(cache._images.values())
    assert len(stored) == len(set(zip(table.captions(), table.seeds)))
    assert len({img.untyped_storage().data_ptr() for img in stored}) == 1  # one block for all 130
    one_image = stored[0].numel() * stored[0].element_size()
    for path in tmp_path.glob("*.pt"):
        saved = torch.load(path, weights_only=True)
        assert saved.untyped_storage().nbytes() == one_image  # a view of the block would save the whole block
    # images read back from disk go into blocks too, and equal what was generated
    again = GenerationCache(WorldGenerator(), directory=tmp_path, show_progress=False)
    assert torch.equal(again.get(table.captions(), table.seeds), got)
    assert len({img.untyped_storage().data_ptr() for img in again._images.values()}) == 1


# ----------------------------------------------------------------------------------- ground truth
@pytest.fixture(scope="module")
def weighted_models() -> list[Any]:
    return [train_tiny_cnn(WEIGHTED, epochs=6, n_train=2000, n_val=300, width=8, seed=s) for s in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_matches_the_ground_truth(weighted_models: list[Any], seed: int) -> None:
    """Decisive shape > weak texture > irrelevant colour, as the oracle says, on a model per seed."""
    trained = weighted_models[seed]
    assert trained.val_acc > 0.9
    table = world_concept_table(ROWS, task=WEIGHTED, seed=seed, concepts=("shape", "texture", "colour"))
    truth = oracle_importance(table, WEIGHTED, REPEATS, seed=seed)
    assert truth["shape"] > truth["texture"] > 0.05 and truth["colour"] == 0.0
    result = ConceptPermutation(
        WorldGenerator(), table, n_repeats=REPEATS, seed=seed, show_progress=False
    ).explain(trained.model)
    rho = float(stats.spearmanr([truth[c] for c in result.concepts], result.mean).statistic)
    assert rho >= 0.9, (seed, dict(zip(result.concepts, result.mean)), truth)
    assert result.ranking() == ["shape", "texture", "colour"]
    colour = result.concepts.index("colour")
    assert result.ci_low[colour] <= 0.0 <= result.ci_high[colour], (
        result.ci_low[colour],
        result.ci_high[colour],
    )
    # and the sizes are close to the truth's, not just their order
    for c in ("shape", "texture"):
        assert abs(result.importance_of(c) - truth[c]) < 0.1, (c, result.importance_of(c), truth[c])


@pytest.mark.slow
def test_bfloat16_scoring_keeps_the_ground_truth_and_leaves_the_model_in_float32(
    weighted_models: list[Any],
) -> None:
    trained = weighted_models[0]
    table = world_concept_table(ROWS, task=WEIGHTED, seed=0, concepts=("shape", "texture", "colour"))
    full = ConceptPermutation(WorldGenerator(), table, n_repeats=REPEATS, show_progress=False)
    half = ConceptPermutation(
        WorldGenerator(),
        table,
        n_repeats=REPEATS,
        show_progress=False,
        cache=full.cache,
        autocast_dtype="bfloat16",
    )
    seen: list[torch.dtype] = []
    hook = trained.model.head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        a = full.explain(trained.model)
        dtypes_full, seen[:] = set(seen), []
        b = half.explain(trained.model)
    finally:
        hook.remove()
    assert dtypes_full == {torch.float32} and set(seen) == {torch.bfloat16}
    assert b.ranking() == ["shape", "texture", "colour"]
    # the accuracy of the same predictions, bar a few near ties
    np.testing.assert_allclose(b.mean, a.mean, atol=0.01)
    assert abs(b.base - a.base) <= 0.01
    assert all(p.dtype == torch.float32 for p in trained.model.parameters())
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(
        ValueError, match=r"autocast_dtype='fp8' is not supported; choose None \(float32\) or one of"
    ):
        ConceptPermutation(WorldGenerator(), table, autocast_dtype="fp8")
    # float16 needs a GPU, as for DiffExplainer's dtype (the shared check in lightning_xai.capture)
    cpu_half = ConceptPermutation(WorldGenerator(), table, cache=full.cache, autocast_dtype="float16")
    with pytest.raises(ValueError, match=r"autocast_dtype=torch.float16 needs a GPU"):
        cpu_half.explain(trained.model, device="cpu")


@pytest.mark.slow
def test_spurious_marker_is_important_only_for_the_model_that_learned_it(
    spurious_world: Any, trained_world: Any
) -> None:
    """The table carries the training split's correlation (marker iff class 0); permuting the marker breaks
    it. A model trained with the correlation loses accuracy, one trained without it does not."""
    table = world_concept_table(ROWS, seed=5, spurious_class=0)
    spurious = ConceptPermutation(WorldGenerator(), table, n_repeats=REPEATS, show_progress=False).explain(
        spurious_world.model
    )
    clean = ConceptPermutation(WorldGenerator(), table, n_repeats=REPEATS, show_progress=False).explain(
        trained_world.model
    )
    m = table.concepts.index("marker")
    assert spurious.ci_low[m] > 0.0 and spurious.mean[m] > 0.02, (spurious.ci_low[m], spurious.mean[m])
    assert clean.ci_low[m] <= 0.0 <= clean.ci_high[m], (clean.ci_low[m], clean.ci_high[m])
    assert spurious.ci_low[m] > clean.ci_high[m]  # interval-separated from the clean model's


# ----------------------------------------------------------------------------------- metrics
@pytest.mark.slow
def test_metrics_accuracy_auroc_torchmetrics_and_callables(trained_world: Any) -> None:
    from torchmetrics.classification import MulticlassF1Score

    table = world_concept_table(60, seed=2)
    model = trained_world.model
    results = {}
    for metric in (
        "accuracy",
        "auroc",
        MulticlassF1Score(num_classes=6),
        lambda logits, y: float((logits.argmax(1) == y).float().mean()),
    ):
        # few bootstrap resamples: every non-accuracy metric is recomputed per resample, and the intervals are not
        # what this test checks
        r = ConceptPermutation(
            WorldGenerator(), table, metric=metric, n_repeats=2, n_bootstrap=20, show_progress=False
        ).explain(model)
        results[r.metric] = r
        assert np.isfinite(r.drops).all()
    assert set(results) == {"accuracy", "auroc", "MulticlassF1Score", "<lambda>"}
    assert np.allclose(results["accuracy"].drops, results["<lambda>"].drops)
    assert results["auroc"].base > 0.9


def test_kendall_tau() -> None:
    assert kendall_tau([3, 2, 1], [30, 20, 10]) == pytest.approx(1.0)
    assert kendall_tau([3, 2, 1], [10, 20, 30]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0], [2.0]))


# ----------------------------------------------------------------------------------- bad input
def test_bad_tables_fail_clearly() -> None:
    cols = {"shape": ["circle", "square"], "colour": ["red", "blue"]}
    with pytest.raises(
        ValueError, match=r"unknown column\(s\) \['texture'\]; the columns are \['colour', 'shape'\]"
    ):
        ConceptTable(cols, [0, 1], "a {colour} {shape} on a {texture} background")
    with pytest.raises(ValueError, match="got 3 labels for 2 rows"):
        ConceptTable(cols, [0, 1, 1], "a {colour} {shape}")
    with pytest.raises(ValueError, match="got 1 seeds for 2 rows"):
        ConceptTable(cols, [0, 1], "a {colour} {shape}", seeds=[0])
    with pytest.raises(ValueError, match="non-negative integers, got -1"):
        ConceptTable(cols, [0, 1], "a {colour} {shape}", seeds=[0, -1])
    with pytest.raises(ValueError, match="one value per row"):
        ConceptTable({"shape": ["circle"], "colour": ["red", "blue"]}, [0, 1], "a {colour} {shape}")
    with pytest.raises(ValueError, match=r"concepts \['size'\] are not columns"):
        ConceptTable(cols, [0, 1], "a {colour} {shape}", concepts=["size"])
    with pytest.raises(ValueError, match="named fields"):
        ConceptTable(cols, [0, 1], "a {} {shape}")
    with pytest.raises(ValueError, match="label_column='y' is not a column"):
        ConceptTable.from_columns({**cols, "label": [0, 1]}, "a {shape}", label_column="y")
    with pytest.raises(ValueError, match="does not exist"):
        ConceptTable.from_csv("/nonexistent/rows.csv", "a {shape}")
    with pytest.raises(
        ValueError, match="metric='f1' is not supported; choose one of \\['accuracy', 'auroc'\\]"
    ):
        ConceptPermutation(WorldGenerator(), ConceptTable(cols, [0, 1], "a {colour} {shape}"), metric="f1")


def test_mismatched_generator_lengths_fail_clearly() -> None:
    with pytest.raises(ValueError, match="got 2 captions but 1 seeds"):
        GenerationCache(WorldGenerator(), show_progress=False).get(
            ["a red circle on a plain background"] * 2, [0]
        )


class _BadGenerator:
    fingerprint = "bad"

    def __init__(self, out: Any) -> None:
        self.out = out

    def generate(self, captions: list[str], seeds: list[int]) -> Any:
        return self.out(len(captions))


@pytest.mark.parametrize(
    ("out", "match"),
    [
        (
            lambda n: torch.zeros(n, 3, 8),
            r"returned shape \[\d+, 3, 8\] for \d+ captions; expected \[\d+, 3, H, W\]",
        ),
        (lambda n: torch.zeros(n + 1, 3, 8, 8), r"returned shape \[\d+, 3, 8, 8\] for \d+ captions"),
        (
            lambda n: torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
            r"returned dtype torch.uint8; expected float images",
        ),
        (lambda n: np.zeros((n, 3, 8, 8)), r"returned ndarray; expected a Tensor"),
    ],
)
def test_a_generator_returning_the_wrong_thing_fails_clearly(out: Any, match: str) -> None:
    table = world_concept_table(6, seed=0)
    depict = ConceptPermutation(_BadGenerator(out), table, n_repeats=1, show_progress=False)
    with pytest.raises(GeneratorOutputError, match=match):
        depict.explain(TinyCNN(num_classes=6))


@pytest.mark.slow
def test_a_constant_concept_warns_and_scores_zero(trained_model_copy: TinyCNN) -> None:
    table = world_concept_table(30, seed=0)
    cols = dict(table.columns)
    cols["marker"] = [""] * 30
    constant = ConceptTable(cols, table.labels, table.caption_template, seeds=table.seeds)
    gen = CountingGenerator(WorldGenerator())
    depict = ConceptPermutation(gen, constant, n_repeats=3, show_progress=False)
    with pytest.warns(UserWarning, match="'marker' has one distinct value"):
        result = depict.explain(trained_model_copy)
    m = result.concepts.index("marker")
    assert result.constant_concepts == ["marker"] and result.importance[m].constant
    assert np.all(result.drops[m] == 0.0) and np.all(result.changed[m] == 0.0)
    assert not any("with a marker" in c for c, _ in gen.requests)


@pytest.mark.slow
def test_seeded_results_repeat(trained_model_copy: TinyCNN) -> None:
    table = world_concept_table(40, seed=4)
    a = ConceptPermutation(WorldGenerator(), table, n_repeats=3, seed=7, show_progress=False).explain(
        trained_model_copy
    )
    b = ConceptPermutation(WorldGenerator(), table, n_repeats=3, seed=7, show_progress=False).explain(
        trained_model_copy
    )
    assert np.array_equal(a.drops, b.drops)


@pytest.mark.slow
def test_model_state_is_restored(trained_model_copy: TinyCNN) -> None:
    model = trained_model_copy.train()
    model.head.requires_grad_(False)
    ConceptPermutation(WorldGenerator(), world_concept_table(12), n_repeats=1, show_progress=False).explain(
        model
    )
    assert model.training and all(m.training for m in model.modules())
    assert not model.head.weight.requires_grad and model.conv1[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------- callback
def _fit(
    root: Path, cb: ConceptPermutationCallback, model: TinyCNN, epochs: int = 2, extra: list | None = None
) -> Trainer:
    trainer = Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        num_sanity_val_steps=0,
        limit_train_batches=2,
        callbacks=[cb, *(extra or [])],
    )
    trainer.fit(model, datamodule=WorldDataModule(n_train=128, n_val=64, seed=0))
    return trainer


def _layout(value: Any) -> Any:
    """``value`` with every leaf replaced by its type: what stays the same however the numbers change."""
    if isinstance(value, dict):
        return {k: _layout(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_layout(v) for v in value]
    return type(value).__name__


@pytest.mark.slow
def test_callback_generates_once_and_rescores_every_epoch(
    tmp_path: Path, trained_model_copy: TinyCNN
) -> None:
    gen = CountingGenerator(WorldGenerator())
    cb = ConceptPermutationCallback(gen, world_concept_table(120, seed=0), n_repeats=4, show_progress=False)
    # continue at a tenth of the training learning rate: a fresh Adam under one-cycle at 3e-3 for six steps can
    # undo the trained model (on one host the DEPICT table's accuracy fell from 1.00 to 0.22), and these tests
    # are about explaining a model that keeps its reasons while it trains on
    trained_model_copy.hparams.lr = 3e-4
    monitor = ConceptDriftMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _fit(tmp_path, cb, trained_model_copy, epochs=3, extra=[monitor])
    records = read_records(tmp_path, method="concept_permutation")
    assert [r.epoch for r in records] == [0, 1, 2]
    first, second, third = (r.payload for r in records)
    assert first["generation"]["generated_now"] == gen.images > 120
    assert second["generation"]["generated_now"] == third["generation"]["generated_now"] == 0
    # the ranking's agreement with the previous explained epoch is the drift monitor's: (1 - tau) / 2
    tau = {
        r["epoch"]: r["value"]
        for r in monitor.tracker.history
        if (r["source"], r["kind"], r["against"]) == ("concept_permutation", "permutation_tau", "previous")
    }
    assert sorted(tau) == [1, 2] and all(0.0 <= v <= 1.0 for v in tau.values()), tau
    assert float(trainer.callback_metrics["xai/drift/concept_permutation/permutation_tau/max_prev"]) == (
        pytest.approx(tau[2])
    )
    rows = {r["concept"]: r for r in third["importance"]}
    assert set(rows) == {"shape", "colour", "texture", "marker"}
    # a few more batches move the trained model, but shape and texture still decide its classes
    ignored = max(rows["colour"]["importance"], rows["marker"]["importance"])
    assert min(rows["shape"]["importance"], rows["texture"]["importance"]) > ignored + 0.05, rows
    assert rows["shape"]["low"] <= rows["shape"]["importance"] <= rows["shape"]["high"]
    ranking = read_result(records[2]).ranking()
    assert ranking[:2] == sorted(["shape", "texture"], key=lambda c: -rows[c]["importance"])
    assert float(trainer.callback_metrics["xai/concept_permutation/max_importance"]) == pytest.approx(
        max(r["importance"] for r in rows.values())
    )
    assert (
        "xai/concept_permutation/importance/shape" not in trainer.callback_metrics
    )  # log_scalars="all" only
    media = [m["path"] for m in third["media"]]
    assert media and all((tmp_path / "xai" / p).is_file() for p in media)
    # one epoch per record: nothing about other epochs, and every record laid out like the first
    for rec in records:
        assert not {"kendall_tau_prev", "previous_epoch", "history", "ranking"} & set(rec.payload)
    assert _layout(first) == _layout(second) == _layout(third)


@pytest.mark.slow
def test_result_round_trips_and_a_record_without_a_field_is_refused(trained_model_copy: TinyCNN) -> None:
    depict = ConceptPermutation(
        WorldGenerator(), world_concept_table(30, seed=0), n_repeats=3, show_progress=False
    )
    result = depict.explain(trained_model_copy)
    payload = json.loads(json.dumps(result.to_payload()))  # as a record stores it
    back = ConceptPermutationResult.from_payload(payload, schema=2)
    assert back == result and back.ranking() == result.ranking()
    assert np.allclose(back.ci_low, result.ci_low) and back.drops is None  # the repeats stay in memory
    assert back.logged(0).tables[0].rows == result.logged(0).tables[0].rows
    for key in ("base", "importance", "n_repeats"):
        broken = {k: v for k, v in payload.items() if k != key}
        with pytest.raises(SchemaError, match=f"lacks \\['{key}'\\]"):
            ConceptPermutationResult.from_payload(broken, schema=2)
    row = {k: v for k, v in payload["importance"][0].items() if k != "ci_low"}
    with pytest.raises(SchemaError, match=r"importance row without \['ci_low'\]"):
        ConceptPermutationResult.from_payload({**payload, "importance": [row]}, schema=2)


@pytest.mark.slow
def test_shares_of_the_concepts_merge_into_the_whole_result(trained_model_copy: TinyCNN) -> None:
    """What the callback does under DDP: each rank explains a share of the concepts, the shares are merged."""
    table = world_concept_table(40, seed=2)
    whole = ConceptPermutation(WorldGenerator(), table, n_repeats=3, n_bootstrap=30, show_progress=False)
    expected = whole.explain(trained_model_copy)
    parts = []
    for share in (["shape", "colour"], ["texture", "marker"], None):
        depict = ConceptPermutation(WorldGenerator(), table, n_repeats=3, n_bootstrap=30, show_progress=False)
        parts.append(depict.explain(trained_model_copy, concepts=share) if share else None)
    merged = ConceptPermutation.merge(parts)
    assert merged.to_payload()["importance"] == expected.to_payload()["importance"]
    assert merged.ranking() == expected.ranking() and merged.base == expected.base
    assert np.array_equal(merged.drops, expected.drops) and np.array_equal(
        merged.bootstrap, expected.bootstrap
    )
    assert merged.generation.generated_now == sum(p.generation.generated_now for p in parts if p)
    assert (
        merged.generation.generated_now > expected.generation.generated_now
    )  # both shares made the base rows
    with pytest.raises(ValueError, match="no share of the concepts"):
        ConceptPermutation.merge([None, None])


def test_old_records_read_with_their_ranking_agreement_kept_as_recorded() -> None:
    payload = {
        "metric": "accuracy", "base": 1.0, "n_rows": 200, "n_repeats": 5, "interval": 0.95,
        "importance": [
            {"concept": c, "rank": r, "importance": v, "sd": 0.0, "low": v, "high": v, "ci_low": v, "ci_high": v,
             "base": 1.0, "permuted": 1.0 - v, "changed_rows": 0.5, "constant": False}
            for c, r, v in (("shape", 1, 0.6), ("colour", 2, 0.0))
        ],
        "ranking": ["shape", "colour"], "constant_concepts": [], "kendall_tau_prev": 0.5, "previous_epoch": 1,
        "generation": {"generated_now": 0, "generator_calls_now": 0, "cached_images": 10, "fingerprint": "w"},
    }  # fmt: skip
    result = read_result(Record("concept_permutation", "epoch", 3, 40, payload=payload))
    assert isinstance(result, ConceptPermutationResult) and result.ranking() == ["shape", "colour"]
    assert result.recorded == {"kendall_tau_prev": 0.5, "previous_epoch": 1}
    assert "kendall_tau_prev" not in result.to_payload() and "ranking" not in result.to_payload()
    assert result.summary()["kendall_tau_prev"] == 0.5 and result.generation.cached_images == 10
    (obs,) = result.observations()
    assert (obs.kind, obs.key, obs.value) == ("permutation_tau", "ranking", {"shape": 0.6, "colour": 0.0})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_repeats": 0}, "n_repeats must be an integer >= 1"),
        ({"interval": 1.5}, r"interval must lie in \(0, 1\)"),
        ({"metric": "f1"}, r"metric='f1' is not supported; choose one of \['accuracy', 'auroc'\]"),
        ({"generator": object()}, "generator must have a generate"),
        ({"concept_table": {"shape": ["a", "b"], "label": [0, 1]}}, "caption_template is needed"),
        (
            {"concept_table": {"shape": ["a", "b"], "label": [0, 1]}, "caption_template": "{size}"},
            r"unknown column\(s\) \['size'\]",
        ),
        ({"on": "test"}, r"choose one of \['validation', 'train_epoch_end'\]"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"generator": WorldGenerator(), "concept_table": world_concept_table(10)}
    args.update(kwargs)
    with pytest.raises(MisconfigurationException, match=match):
        ConceptPermutationCallback(**args)


def test_callback_state_round_trips_and_reads_old_checkpoints(tmp_path: Path) -> None:
    cb = ConceptPermutationCallback(WorldGenerator(), world_concept_table(10))
    cb.explained_epochs = [3]
    other = ConceptPermutationCallback(WorldGenerator(), world_concept_table(10))
    other.load_state_dict(cb.state_dict())
    assert other.explained_epochs == [3] and other.state_dict() == cb.state_dict()
    assert "previous" not in cb.state_dict()["explainer"] and "history" not in cb.state_dict()["explainer"]
    # a checkpoint of the callback before the typed results: its previous epoch and history are ignored
    old = {
        "explained_epochs": [3],
        "explainer": {"previous": {"epoch": 3, "importance": {"shape": 0.4}}, "history": [{"epoch": 3}]},
    }
    other.load_state_dict(old)
    assert other.explained_epochs == [3]
    assert cb.state_key == other.state_key
    assert ConceptPermutationCallback(WorldGenerator(), world_concept_table(11)).state_key != cb.state_key
    # the key is the one the callback had before it asked for no validation sample, so old checkpoints find it
    fields = {
        "every_n_epochs": 1,
        "on": "validation",
        "layers": [],
        "head": None,
        "max_samples": 2,
        "seed": 0,
    }
    fields.update(table=cb.concept_table.fingerprint(), metric="accuracy", n_repeats=10)
    assert cb.state_key == cb._generate_state_key(**fields)


def test_state_key_hashes_the_table_once_and_follows_a_new_table(monkeypatch) -> None:
    # Lightning reads state_key at every hook call; the table is hashed once per table object
    hashed: list[int] = []
    real = ConceptTable.fingerprint
    monkeypatch.setattr(ConceptTable, "fingerprint", lambda self: hashed.append(self.n) or real(self))
    cb = ConceptPermutationCallback(WorldGenerator(), world_concept_table(10))
    key = cb.state_key
    assert all(cb.state_key == key for _ in range(50)) and hashed == [10]
    cb.concept_table = world_concept_table(12)
    assert cb.state_key != key and hashed == [10, 12]


def test_callback_reads_a_csv_table(tmp_path: Path) -> None:
    table = world_concept_table(8, seed=0)
    lines = ["shape,colour,texture,marker,label"] + [
        f"{r['shape']},{r['colour']},{r['texture']},{r['marker']},{int(table.labels[i])}"
        for i, r in enumerate(table.row(i) for i in range(8))
    ]
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    cb = ConceptPermutationCallback(
        WorldGenerator(), str(path), "a {colour} {shape} on a {texture} background{marker}"
    )
    assert cb.concept_table.captions() == table.captions()
    assert cb.concept_table.labels.tolist() == table.labels.tolist()


# ----------------------------------------------------------------------------------- tiny diffusers
@pytest.mark.slow
def test_tiny_diffusers_generation_is_paired_cached_and_only_changed_rows_regenerate(
    trained_model_copy: TinyCNN,
) -> None:
    """The DEPICT loop through a real diffusers pipeline (tiny random components, offline)."""
    pytest.importorskip("diffusers")
    from lightning_xai.generators import DiffusersGenerator, tiny_stable_diffusion_pipeline

    inner = DiffusersGenerator(
        tiny_stable_diffusion_pipeline(seed=0), num_inference_steps=2, guidance_scale=1.0
    )
    gen = CountingGenerator(inner)
    table = world_concept_table(12, seed=0)
    # the same caption and seed give bit-identical images, call after call
    a = inner.generate(table.captions()[:2], table.seeds[:2])
    b = inner.generate(table.captions()[:2], table.seeds[:2])
    assert torch.equal(a, b) and a.shape == (2, 3, 64, 64)
    depict = ConceptPermutation(gen, table, n_repeats=2, show_progress=False)
    first = depict.explain(trained_model_copy)
    needed = set(zip(table.captions(), table.seeds))
    for c in table.concepts:
        for r in range(2):
            p = table.permutation(c, r, 0)
            needed |= {(p.captions[i], table.seeds[i]) for i in np.flatnonzero(p.changed)}
            # rows whose caption is unchanged are never sent to the generator again
            unchanged = {(p.captions[i], table.seeds[i]) for i in np.flatnonzero(~p.changed)}
            assert unchanged <= set(zip(table.captions(), table.seeds))
    assert gen.images == len(needed) == len(set(gen.requests))
    calls = gen.calls
    second = depict.explain(trained_model_copy)  # the "second epoch": every image from the cache
    assert gen.calls == calls
    assert np.array_equal(first.drops, second.drops)


def test_a_changed_generator_never_reuses_stale_images() -> None:
    gen = CountingGenerator(WorldGenerator(size=64))
    cache = GenerationCache(gen, show_progress=False)
    a = cache.get(["a red circle on a plain background"], [0])
    gen.inner = WorldGenerator(size=32)  # new settings, new fingerprint
    b = cache.get(["a red circle on a plain background"], [0])
    assert gen.images == 2 and a.shape[-1] == 64 and b.shape[-1] == 32


def test_checks_effective_generation_and_independence() -> None:
    """The paper's checks with the world's pixel detector: the renderer shows what the captions say, and
    permuting colour changes the detected colour only (likewise the marker); shape and texture change neither."""
    from lightning_xai.permutation import effective_generation, independence_matrix
    from lightning_xai.world import WorldDataset
    from lightning_xai.world.detector import WorldColourMarkerDetector

    table = world_concept_table(120, seed=3)
    depict = ConceptPermutation(WorldGenerator(), table, n_repeats=1, show_progress=False)
    depict.generate()
    detector = WorldColourMarkerDetector()
    real = WorldDataset(120, split="test", seed=1)
    slots = [real.scene(i).slots for i in range(len(real))]
    values = {
        "colour": [s.colour for s in slots],
        "marker": [" with a marker" if s.marker else "" for s in slots],
    }
    eff = effective_generation(depict, detector, real.images, values)
    assert eff == {"colour": {"real": 1.0, "generated": 1.0}, "marker": {"real": 1.0, "generated": 1.0}}
    rows, cols, m = independence_matrix(depict, detector)
    assert rows == ["shape", "colour", "texture", "marker"] and cols == ["colour", "marker"]
    diag = {("colour", "colour"), ("marker", "marker")}
    for i, k in enumerate(rows):
        for j, c in enumerate(cols):
            if (k, c) in diag:
                assert m[i, j] > 0.3, (
                    k,
                    c,
                    m[i, j],
                )  # shuffling changes about 3/4 (colour) or 1/2 (marker) of rows
            else:
                assert abs(m[i, j]) < 0.02, (k, c, m[i, j])
