"""TCAV and Visual-TCAV (``lightning_xai.tcav``) and ``ConceptAttributionCallback``.

Ground truth is the planted-concept world's *interventional* effect of each concept on each class logit of
the trained TinyCNN (``interventional_effects``), never the label rule alone.

How the comparison is set up, and why:

* Concept sets are **matched**: ``concept_set(c, P, seed=S)`` is exactly the scenes of the random pool
  ``random_set(P, seed=S)`` with the concept's slot forced, so a concept set differs from random
  counter-examples only by the concept. (With independently drawn sets, the CAV of a concept the model
  ignores, e.g. a colour, is dominated by which shapes and textures happen to be in its 200 scenes.)
* A CAV contrasts the concept with *random* scenes, which already show a concept of a slot with ``K``
  values about ``1/K`` of the time; ``interventional_effects`` replaces the concept by *another* value.
  The TCAV estimand is therefore ``(1 - p_c) * effect`` with ``p_c`` the share of the random pool that
  shows the concept; rankings are compared against that.
* A ranking is only defined where the effects are distinguishable: values whose gap is within twice
  their combined standard error are tied, on both sides (standard errors: interventional scene pairs,
  TCAV random runs, Visual-TCAV images).
* The rankings cover, per class, the concepts whose effect on it is resolvable (more than 10% of the
  class's largest effect: the 3 shapes and 5 textures). Colours and the marker have no effect on any
  class (< 3% of the largest), so they have no rank to agree with; the significance test covers them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from scipy import stats
from torch.utils.data import TensorDataset

from lightning_xai.callbacks.concept_attribution import ConceptAttributionCallback
from lightning_xai.capture import LayerNotFoundError
from lightning_xai.concept_drift import DriftTracker, observations
from lightning_xai.records import read_records
from lightning_xai.results import SchemaError, read_result
from lightning_xai.results.concept_attribution import ConceptAttributionResult
from lightning_xai.tcav import (
    ActivationCache,
    ConceptAttribution,
    ConceptDataError,
    bonferroni,
    integrated_gradients,
    last_feature_map_layer,
    layer_activations,
    linear_cavs,
    load_images,
    mean_difference_cavs,
    two_sided_pvalues,
)
from lightning_xai.world import (
    TinyCNN,
    WorldDataModule,
    WorldDataset,
    all_concepts,
    concept_set,
    interventional_effects,
    random_set,
    random_set_slots,
)

POOL = 200  # random pool size = size of every matched concept set
SEED = 11  # scenes of the pool and of the matched concept sets
RUNS = 30  # random runs: enough for the t-test to survive Bonferroni over 13 x 6 hypotheses
PER_CLASS = 15  # images per class for the Visual-TCAV global attribution
DEFAULT_LAYER = "conv5"  # what the callback picks for TinyCNN (test_default_layer_is_the_last_feature_map)
LAYERS = ["conv4", "conv5"]
SHAPES_TEXTURES = [c for c in all_concepts() if c.split(":")[0] in ("shape", "texture")]


# ---------------------------------------------------------------------------------------------- helpers
def tie_ranked(values: list[float], ses: list[float], z: float = 2.0) -> list[float]:
    """``values`` with statistically indistinguishable neighbours (sorted gap <= z * combined SE) tied.

    Each value is replaced by the mean of its group, so Spearman's rho (average ranks for ties) neither
    rewards nor punishes the order inside a group.
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    groups, current = [], [order[0]]
    for a, b in itertools.pairwise(order):
        if values[a] - values[b] > z * math.hypot(ses[a], ses[b]):
            groups.append(current)
            current = [b]
        else:
            current.append(b)
    groups.append(current)
    out = [0.0] * len(values)
    for g in groups:
        for i in g:
            out[i] = sum(values[j] for j in g) / len(g)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return float(stats.spearmanr(a, b).statistic)


class World:
    """The trained model, its interventional effects and the probe data shared by the world tests."""

    def __init__(self, trained_world: Any) -> None:
        self.model, self.dm = trained_world
        self.rule = self.dm.rule
        self.classes = self.rule.classes
        self.effects = interventional_effects(self.model, task=self.rule, n_scenes=128, seed=0)
        self.pool = random_set(POOL, seed=SEED)
        slots = random_set_slots(POOL, seed=SEED)
        self.share = {c: sum(c in s.concepts() for s in slots) / POOL for c in all_concepts()}
        val = self.dm.val_set
        self.x, self.y = val.images, val.labels
        self.global_rows = torch.cat([torch.nonzero(self.y == k).flatten()[:PER_CLASS] for k in range(6)])

    def effect(self, concept: str, k: int) -> float:
        """The interventional effect of adding ``concept`` to a random scene (see the module docstring)."""
        return self.effects.effect(concept, k) * (1.0 - self.share[concept])

    def effect_se(self, concept: str, k: int) -> float:
        return self.effects.stderr(concept, k) * (1.0 - self.share[concept])

    def large(self, concept: str, k: int) -> bool:
        """Effect over 10% of the class's largest effect (the issue's definition of 'large')."""
        return abs(self.effects.effect(concept, k)) > 0.1 * float(self.effects.mean[:, k].abs().max())

    def resolvable(self, k: int) -> list[str]:
        return [c for c in self.effects.concepts if self.large(c, k)]


@pytest.fixture(scope="module")
def world(trained_world: Any) -> World:
    return World(trained_world)


@pytest.fixture(scope="module")
def explained(world: World) -> dict[str, dict[str, Any]]:
    """TCAV on all 600 validation images and Visual-TCAV on 15 per class, for both CAV kinds.

    ``"mean"`` explains all 13 concepts; ``"linear"`` the 8 shape and texture concepts. The two explainers
    share one activation cache, so the integrated gradients (which do not depend on the CAVs) run once.
    """
    cache = ActivationCache()
    out: dict[str, dict[str, Any]] = {}
    for cav, names in (("mean", all_concepts()), ("linear", SHAPES_TEXTURES)):
        concepts = {c: concept_set(c, POOL, seed=SEED) for c in names}
        ex = ConceptAttribution(
            world.model, LAYERS, concepts, world.pool, cav=cav, n_random=RUNS, cache=cache
        )
        rows = world.global_rows
        out[cav] = {
            "explainer": ex,
            "tcav": ex.tcav(world.x, world.y),
            "visual": ex.attribute(world.x[rows], world.y[rows]),
        }
        out[cav]["global"] = out[cav]["visual"].global_explanation()
    return out


# ------------------------------------------------------------------------------------- Done when: TCAV
@pytest.mark.slow
@pytest.mark.parametrize("cav", ["mean", "linear"])
@pytest.mark.parametrize("layer", LAYERS)
def test_planted_concepts_score_high_and_are_significant(
    world: World, explained: dict, cav: str, layer: str
) -> None:
    """Every concept the task decides a class by (its shape and its textures) scores >= 0.8 and is significant."""
    result = explained[cav]["tcav"]
    assert result.n_hypotheses == len(result.concepts) * 6 * len(LAYERS)  # Bonferroni over everything tested
    for k, name in enumerate(world.classes):
        planted = world.rule.positive_concepts(name)
        assert len(planted) >= 3
        for concept in planted:
            s = result.score(concept, k, layer)
            assert world.effects.effect(concept, k) > 0  # planted concepts really raise the logit
            assert s.sign_fraction >= 0.8 and s.significant, s


@pytest.mark.slow
@pytest.mark.parametrize("cav", ["mean", "linear"])
@pytest.mark.parametrize("layer", LAYERS)
def test_significant_results_point_the_way_of_large_effects(
    world: World, explained: dict, cav: str, layer: str
) -> None:
    result = explained[cav]["tcav"]
    large = [(c, k) for k in range(6) for c in result.concepts if world.large(c, k)]
    assert len(large) == 48  # 3 shapes + 5 textures per class
    significant = [(c, k) for c, k in large if result.score(c, k, layer).significant]
    assert len(significant) >= 0.9 * len(large)  # not vacuous: nearly every large effect is detected
    for c, k in significant:
        s = result.score(c, k, layer)
        assert (s.sign_fraction > s.null_sign_fraction) == (world.effects.effect(c, k) > 0), s
        assert (s.magnitude > 0) == (world.effects.effect(c, k) > 0), s


@pytest.mark.slow
def test_concepts_without_effect_are_not_significant(world: World, explained: dict) -> None:
    """Colours and the marker move no logit (|effect| < 3% of the largest): TCAV does not flag them."""
    result = explained["mean"]["tcav"]
    irrelevant = [c for c in result.concepts if c.startswith(("colour", "marker"))]
    for c in irrelevant:
        assert max(abs(world.effects.effect(c, k)) for k in range(6)) < 0.03 * float(
            world.effects.mean.abs().max()
        )
    flagged = [(c, k) for c in irrelevant for k in range(6) if result.score(c, k, DEFAULT_LAYER).significant]
    assert len(flagged) <= 3, flagged  # measured: 0 of 30


# ------------------------------------------------------------------------------------ Done when: ranking
def _tcav_agreement(world: World, result: Any, k: int, layer: str, concepts: list[str]) -> float:
    li = result.layers.index(layer)
    mags, ses = [], []
    for c in concepts:
        runs = result.magnitude_runs[li, result.concepts.index(c), result.classes.index(k)]
        mags.append(float(runs.mean()))
        ses.append(float(runs.std()) / math.sqrt(runs.numel()))
    truth = [world.effect(c, k) for c in concepts]
    truth_se = [world.effect_se(c, k) for c in concepts]
    return spearman(tie_ranked(mags, ses), tie_ranked(truth, truth_se))


def _visual_agreement(world: World, glob: Any, k: int, layer: str, concepts: list[str]) -> float:
    li, ci = glob.layers.index(layer), glob.classes.index(k)
    attr = [float(glob.mean[li, glob.concepts.index(c), ci]) for c in concepts]
    se = [float(glob.se[li, glob.concepts.index(c), ci]) for c in concepts]
    # Visual-TCAV attributes only positive logit gain (attr in [0, E_k]): a concept that lowers the
    # class has nothing to attribute, so its comparable ground truth is 0
    truth = [max(world.effect(c, k), 0.0) for c in concepts]
    truth_se = [world.effect_se(c, k) for c in concepts]
    return spearman(tie_ranked(attr, se), tie_ranked(truth, truth_se))


@pytest.mark.slow
@pytest.mark.parametrize("cav", ["mean", "linear"])
def test_tcav_magnitude_ranks_concepts_like_the_interventional_effects(
    world: World, explained: dict, cav: str
) -> None:
    result = explained[cav]["tcav"]
    for k in range(6):
        concepts = world.resolvable(k)
        assert len(concepts) >= 4
        rho = _tcav_agreement(world, result, k, DEFAULT_LAYER, concepts)
        assert rho >= 0.8, (world.classes[k], rho)


@pytest.mark.slow
def test_visual_tcav_global_attribution_ranks_concepts_like_the_effects_mean_cavs(
    world: World, explained: dict
) -> None:
    glob = explained["mean"]["global"]
    assert glob.n.tolist() == [PER_CLASS] * 6
    for k in range(6):
        concepts = world.resolvable(k)
        rho = _visual_agreement(world, glob, k, DEFAULT_LAYER, concepts)
        assert rho >= 0.8, (world.classes[k], rho)
        # intervals are well formed: [max(0, mean - 2 SE), mean + 2 SE]
        li = glob.layers.index(DEFAULT_LAYER)
        assert torch.all(glob.ci_low[li, :, k] <= glob.mean[li, :, k] + 1e-9)
        assert torch.all(glob.ci_high[li, :, k] >= glob.mean[li, :, k] - 1e-9)


@pytest.mark.slow
def test_visual_tcav_with_linear_cavs_cannot_see_an_absence_concept(world: World, explained: dict) -> None:
    """Measured finding, kept as a test: with logistic-regression CAVs, Visual-TCAV's ranking agrees with the
    effects except through ``texture:plain`` (the *absence* of a pattern). Its CAV points away from texture
    features, so ``ReLU(d . A)`` is no larger on plain images than on random ones: the emblem thresholds
    coincide (hi <= lo), the concept map is empty and the attribution is 0 although plain raises the three
    'unlined' classes by ~2 logits. (Mean-difference CAVs keep positive weights for plain and rank it.)"""
    ex, glob = explained["linear"]["explainer"], explained["linear"]["global"]
    cavset = ex.cavs()[DEFAULT_LAYER]
    plain = cavset.index("texture:plain")
    assert float(cavset.hi[plain]) <= float(cavset.lo[plain])  # an empty concept map
    li = glob.layers.index(DEFAULT_LAYER)
    for k, name in enumerate(world.classes):
        if name.endswith("/unlined"):
            assert world.effects.effect("texture:plain", k) > 1.0
            assert float(glob.mean[li, glob.concepts.index("texture:plain"), k]) == 0.0
        concepts = [c for c in world.resolvable(k) if c != "texture:plain"]
        rho = _visual_agreement(world, glob, k, DEFAULT_LAYER, concepts)
        assert rho >= 0.8, (name, rho)


@pytest.mark.slow
def test_isolated_concept_sets_agree_worse_than_matched_ones(world: World, explained: dict) -> None:
    """The confounding pitfall: a texture shown alone also means 'no object', a shape alone also means 'plain
    background'. Isolated sets' CAVs learn that too, and agree worse with the interventional effects."""

    def agreement(result: Any) -> tuple[float, int]:
        li = result.layers.index(DEFAULT_LAYER)
        r, hits = [], 0
        for k in range(6):
            mags = result.magnitude[li, :, result.classes.index(k)].numpy()
            truth = np.array([world.effect(c, k) for c in result.concepts])
            r.append(float(stats.pearsonr(mags, truth).statistic))
            for c in result.concepts:
                s = result.score(c, k, DEFAULT_LAYER)
                hits += s.significant and (s.sign_fraction > 0.5) == (world.effect(c, k) > 0)
        return float(np.mean(r)), hits

    for cav in ("mean", "linear"):
        isolated = {c: concept_set(c, POOL, seed=SEED, kind="isolated") for c in SHAPES_TEXTURES}
        ex = ConceptAttribution(world.model, [DEFAULT_LAYER], isolated, world.pool, cav=cav, n_random=RUNS)
        iso_r, iso_hits = agreement(ex.tcav(world.x, world.y))
        sub = explained[cav]["tcav"].subset(SHAPES_TEXTURES)
        m_r, m_hits = agreement(sub)
        # measured at conv5: mean r 0.998 vs 0.949 (48 vs 46 hits); linear r 0.974 vs 0.635 (46 vs 24 hits)
        assert m_r > iso_r + 0.03, (cav, m_r, iso_r)
        assert m_hits > iso_hits, (cav, m_hits, iso_hits)


# ------------------------------------------------------------------------------ Done when: maps and IG
def _pointing_game(ex: ConceptAttribution, layer: str) -> dict[str, tuple[float, float, int]]:
    """``{concept: (hit rate, chance, n)}`` over 300 test scenes that contain the concept: a hit when the cell
    where the concept map peaks overlaps the concept's true mask (at the map's own resolution)."""
    probes = WorldDataset(300, split="test", seed=0)
    scenes = [probes.scene(i) for i in range(len(probes))]
    images = torch.stack([s.image for s in scenes])
    # the map is a clipped monotone function of the raw projection: the projection's argmax is an argmax of the
    # map that does not depend on where the map saturates at 1
    peaks = ex.maps(images, raw=True)[layer]
    h, w = peaks.shape[-2:]
    out = {}
    for concept in SHAPES_TEXTURES:
        k = ex.concepts.index(concept)
        hits, chance = [], []
        for i, scene in enumerate(scenes):
            if concept not in scene.masks:
                continue
            covered = (
                torch.nn.functional.adaptive_avg_pool2d(scene.masks[concept][None, None].float(), (h, w))[
                    0, 0
                ]
                > 0
            )
            hits.append(bool(covered.flatten()[int(peaks[k, i].flatten().argmax())]))
            chance.append(float(covered.float().mean()))
        out[concept] = (sum(hits) / len(hits), sum(chance) / len(chance), len(hits))
    return out


@pytest.mark.slow
def test_concept_maps_point_at_the_concept(world: World, explained: dict) -> None:
    """Pointing game on 300 test scenes (conv4 and conv5 are both 4 x 4 cells of 16 px on this model).

    With logistic-regression CAVs at conv4, every shape and texture map peaks on its concept in >= 90% of the
    scenes that contain it (measured: circles and squares 95%, plain 96%, the rest 100%). At the callback's
    default (mean CAVs at conv5) textures reach 100% and circles 99%, but squares 92% and triangles only
    85%: every miss is the cell next to the object (triangle maps peak up-left of the object, where a detector
    of its apex fires), so there the assertion is 80% and twice chance (see the README). Colours and the
    marker, which the model ignores (no effect on any logit), have no localised map and are not scored.
    """
    linear = _pointing_game(explained["linear"]["explainer"], "conv4")
    for concept, (rate, _chance, n) in linear.items():
        assert n >= 30
        assert rate >= 0.9, (concept, rate)
    default = _pointing_game(explained["mean"]["explainer"], DEFAULT_LAYER)
    for concept, (rate, chance, _n) in default.items():
        if concept.startswith("shape"):
            assert rate >= 2 * chance, (concept, rate, chance)
        threshold = 0.8 if concept in ("shape:square", "shape:triangle") else 0.9
        assert rate >= threshold, (concept, rate)


@pytest.mark.slow
def test_integrated_gradients_are_complete(world: World, explained: dict) -> None:
    """Summed attributions equal logit_k(A) - logit_k(0) within 1% at m_steps=50, before E_k scaling."""
    visual = explained["mean"]["visual"]
    li = visual.layers.index(DEFAULT_LAYER)
    rel = (visual.ig_total[li] - visual.ig_delta[li]).abs() / visual.ig_delta[li].abs()
    assert float(rel.max()) < 0.01
    # downstream of conv5 the network is linear (pool + head), so there the rule is exact; conv3 has
    # two non-linear blocks after it and still meets 1% (measured max 0.7%)
    x, y = world.x[:24], world.y[:24]
    acts, _ = layer_activations(world.model, ["conv3"], x)
    ig = integrated_gradients(world.model, "conv3", acts["conv3"], x, y, m_steps=50)
    assert float(((ig.total - ig.delta).abs() / ig.delta.abs()).max()) < 0.01
    # and the batched trapezoid rule is the trapezoid rule: with 1 step it is the mean of the end gradients
    one = integrated_gradients(world.model, "conv3", acts["conv3"][:2], x[:2], y[:2], m_steps=1)
    a = acts["conv3"][:2].clone().requires_grad_(True)
    from lightning_xai.capture import explanation_mode, forward_from_layer

    with explanation_mode(world.model):
        (g1,) = torch.autograd.grad(
            forward_from_layer(world.model, "conv3", a, x[:2]).gather(1, y[:2, None]).sum(), a
        )
        z = torch.zeros_like(a).requires_grad_(True)
        (g0,) = torch.autograd.grad(
            forward_from_layer(world.model, "conv3", z, x[:2]).gather(1, y[:2, None]).sum(), z
        )
    assert torch.allclose(one.attributions, (g0 + g1) / 2 * acts["conv3"][:2], atol=1e-6)


@pytest.mark.slow
def test_default_layer_is_the_last_feature_map(world: World) -> None:
    assert last_feature_map_layer(world.model, world.x[:1]) == DEFAULT_LAYER
    import torchvision

    assert (
        last_feature_map_layer(torchvision.models.resnet18(weights=None, num_classes=6), world.x[:1])
        == "layer4"
    )


# ------------------------------------------------------------------------- Done when: determinism etc.
def _small_explainer(
    model: torch.nn.Module, cav: str, seed: int = 0, layers: Any = ("conv4", "conv5")
) -> ConceptAttribution:
    concepts = {c: concept_set(c, 24, seed=3) for c in ("shape:circle", "texture:striped")}
    return ConceptAttribution(
        model, list(layers), concepts, random_set(24, seed=3), cav=cav, n_random=4, m_steps=8, seed=seed
    )


@pytest.mark.slow
@pytest.mark.parametrize("cav", ["mean", "linear"])
def test_deterministic_for_a_seed(trained_model_copy: TinyCNN, cav: str) -> None:
    x, y = random_set(12, seed=5), torch.arange(12) % 6
    a, b = _small_explainer(trained_model_copy, cav), _small_explainer(trained_model_copy, cav)
    ra, rb = a.tcav(x, y), b.tcav(x, y)
    assert torch.equal(ra.sign_runs, rb.sign_runs) and torch.equal(ra.magnitude_runs, rb.magnitude_runs)
    assert torch.equal(ra.null_sign_runs, rb.null_sign_runs) and torch.equal(ra.p_values, rb.p_values)
    for layer in ("conv4", "conv5"):
        assert torch.equal(a.cavs()[layer].vectors, b.cavs()[layer].vectors)
    va, vb = a.local(x[0]), b.local(x[0])
    assert torch.equal(va.attributions, vb.attributions) and torch.equal(va.maps(), vb.maps())
    # another seed draws other random sets
    c = _small_explainer(trained_model_copy, cav, seed=1)
    assert not torch.equal(c.cavs()["conv5"].null, a.cavs()["conv5"].null)


@pytest.mark.slow
def test_live_model_gets_no_grad_and_keeps_its_modes(trained_model_copy: TinyCNN) -> None:
    model = trained_model_copy.train()
    model.conv1[0].weight.requires_grad_(False)  # a frozen parameter must stay frozen
    ex = _small_explainer(model, "linear")
    x, y = random_set(6, seed=5), torch.arange(6)
    ex.tcav(x, y)
    ex.local(x[0])
    ex.global_explanation(x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["conv1.0.weight"]


@pytest.mark.slow
def test_resnet18_layer4(world: World) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    concepts = {c: concept_set(c, 16, seed=2) for c in ("shape:circle", "texture:striped")}
    ex = ConceptAttribution(net, None, concepts, random_set(40, seed=2), cav="linear", n_random=3, m_steps=50)
    x, y = world.x[:4], world.y[:4]
    result = ex.tcav(x, y)
    assert result.layers == ["layer4"]
    assert result.sign_runs.shape == (1, 2, len(result.classes), 3)
    assert ex.cavs()["layer4"].vectors.shape == (2, 3, 512 * 2 * 2)  # 64 x 64 inputs: layer4 is 512 x 2 x 2
    local = ex.local(x[0], n_classes=3)
    assert local.maps("layer4").shape == (2, 1, 2, 2) and local.attributions.shape == (1, 2, 1, 3)
    assert local.maps("layer4", upsample=True).shape == (2, 1, 64, 64)
    # attributions lie in [0, E_k] and the integrated gradients are complete (avgpool + fc follow layer4)
    assert torch.all(local.attributions >= 0) and torch.all(
        local.attributions <= local.scaling[:, None] + 1e-6
    )
    assert torch.allclose(local.ig_total, local.ig_delta, rtol=1e-3, atol=1e-5)
    assert all(p.grad is None for p in net.parameters())


# ------------------------------------------------------------------------------------ concept data
def test_concept_sets_from_tensor_dataset_and_folder(tmp_path: Path) -> None:
    from PIL import Image

    images = random_set(5, seed=1)
    folder = tmp_path / "striped"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"{i}.png"
        )
    (folder / "notes.txt").write_text("not an image")
    from_folder = load_images("striped", folder)
    assert from_folder.shape == (5, 3, 64, 64) and torch.allclose(from_folder, images, atol=1 / 255)
    resized = load_images(
        "striped", folder, input_shape=(3, 32, 32)
    )  # default transform resizes to the model
    assert resized.shape == (5, 3, 32, 32)
    dataset = TensorDataset(images, torch.zeros(5))
    assert torch.equal(load_images("d", dataset), images)  # (image, label) items
    assert load_images("t", images, max_images=3).shape == (3, 3, 64, 64)


def test_concept_set_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConceptDataError, match="'one' has 1 image .*at least 2 are needed"):
        load_images("one", torch.rand(1, 3, 8, 8))
    with pytest.raises(
        ConceptDataError, match=r"shape \[3, 32, 32\] but the model's inputs are \[3, 64, 64\]"
    ):
        load_images("small", torch.rand(4, 3, 32, 32), input_shape=(3, 64, 64))
    with pytest.raises(ConceptDataError, match="does not exist"):
        load_images("gone", tmp_path / "missing")
    with pytest.raises(ConceptDataError, match="has 0 images"):
        load_images("empty", tmp_path)
    with pytest.raises(ConceptDataError, match="Dataset, or the path|a tensor \\[N, C, H, W\\], a Dataset"):
        load_images("list", [1, 2, 3])  # type: ignore[arg-type]
    model = TinyCNN(num_classes=6).eval()
    # images that do not fit the model: caught against the model's input shape when the explainer runs
    ex = ConceptAttribution(
        model, ["conv5"], {"tiny": torch.rand(4, 3, 32, 32)}, random_set(8, seed=0), n_random=2
    )
    with pytest.raises(
        ConceptDataError,
        match="'tiny' has images of shape \\[3, 32, 32\\] but the model's inputs are \\[3, 64, 64\\]",
    ):
        ex.tcav(random_set(2, seed=1), 0)
    ex = ConceptAttribution(
        model, ["conv5"], {"grey": torch.rand(4, 1, 64, 64)}, torch.rand(8, 1, 64, 64), n_random=2
    )
    with pytest.raises(
        ValueError, match="The model cannot run on the sets 'grey'.*shape, channels and preprocessing"
    ):
        ex.cavs()
    with pytest.raises(ValueError, match="No concepts given"):
        ConceptAttribution(model, ["conv5"], {}, random_set(8, seed=0))
    with pytest.raises(ValueError, match=r"cav='svm' is not supported; choose one of \['mean', 'linear'\]"):
        ConceptAttribution(model, ["conv5"], {"a": random_set(4, seed=0)}, random_set(8, seed=0), cav="svm")
    with pytest.raises(LayerNotFoundError, match="Closest valid names"):
        ConceptAttribution(model, ["conv9"], {"a": random_set(4, seed=0)}, random_set(8, seed=0))


def test_each_set_is_loaded_and_hashed_once_per_model_state_unless_edited(monkeypatch) -> None:
    import lightning_xai.tcav.explainer as explainer_module

    hashed: list[tuple[int, ...]] = []
    real = explainer_module.fingerprint
    monkeypatch.setattr(explainer_module, "fingerprint", lambda x: hashed.append(tuple(x.shape)) or real(x))
    model = TinyCNN(num_classes=6).eval()
    striped = concept_set("texture:striped", 8, seed=1)
    ex = ConceptAttribution(model, ["conv5"], {"striped": striped}, random_set(16, seed=1), n_random=2)
    ex.begin(("epoch", 0))
    first = ex.cavs()["conv5"].vectors.clone()
    assert sorted(hashed) == [(8, 3, 64, 64), (16, 3, 64, 64)]  # the concept set and the pool, once each
    for _ in range(3):
        ex.cavs()
    assert len(hashed) == 2  # the same epoch asks again: nothing is hashed again
    striped[:4] = concept_set("texture:dotted", 4, seed=1)  # edited in place: read and hashed anew
    assert not torch.allclose(first, ex.cavs()["conv5"].vectors) and hashed[2:] == [(8, 3, 64, 64)]
    ex.begin(("epoch", 1))  # a new model state hashes each set once more
    ex.cavs()
    assert len(hashed) == 5
    # a set cached before the model's input shape was known is still checked against it
    small = ConceptAttribution(
        model, ["conv5"], {"small": torch.rand(4, 3, 32, 32)}, random_set(8, seed=0), n_random=2
    )
    small.begin(("epoch", 0))
    small._images("small")
    small.input_shape = (3, 64, 64)
    with pytest.raises(
        ConceptDataError, match=r"'small' has images of shape \[3, 32, 32\] but the model's inputs"
    ):
        small._images("small")


def test_activation_cache_is_keyed_by_the_data_and_the_model_state() -> None:
    torch.manual_seed(0)
    model = TinyCNN(num_classes=6).eval()
    striped = concept_set("texture:striped", 8, seed=1)
    ex = ConceptAttribution(model, ["conv5"], {"striped": striped}, random_set(16, seed=1), n_random=2)
    first = ex.cavs()["conv5"].vectors.clone()
    assert ex.cavs()["conv5"].vectors is ex.cavs()["conv5"].vectors  # cached
    hits = ex.cache.hits
    ex.cavs()
    assert ex.cache.hits == hits  # CAVs came from their own cache; no activation lookup
    # changing the concept's images in place changes its fingerprint: new activations, new CAVs
    striped[:4] = concept_set("texture:dotted", 4, seed=1)
    second = ex.cavs()["conv5"].vectors
    assert not torch.allclose(first, second)
    # a training step changes the model's version counters: nothing of the old state is reused
    with torch.no_grad():
        model.conv5[0].weight.mul_(1.5)
    third = ex.cavs()["conv5"].vectors
    assert not torch.allclose(second, third)
    # the callback's per-epoch token: the same epoch reuses, the next epoch recomputes
    ex.begin(("epoch", 3))
    a = ex.cavs()["conv5"]
    ex.begin(("epoch", 3))
    assert ex.cavs()["conv5"] is a
    ex.begin(("epoch", 4))
    assert ex.cavs()["conv5"] is not a


class _FlattensWithView(torch.nn.Module):
    """A classic CNN that flattens with ``.view()``, which fails on a channels-last feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=True)  # writes into the hooked layer's output
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.act(self.conv(x)))
        return self.fc(h.view(h.shape[0], -1))


def test_layer_gradients_are_exact_and_survive_in_place_ops_and_view() -> None:
    """The graph starts at the hooked layer (the input needs no grad): an in-place ReLU right after it is
    allowed, the gradient equals the hand-derived one, and a model that cannot take channels-last images
    (``.view`` on a conv output) falls back to contiguous ones with the same values."""
    from lightning_xai.running import _CONTIGUOUS_ONLY
    from lightning_xai.tcav.activations import layer_gradients

    torch.manual_seed(0)
    model = _FlattensWithView().eval()
    x, t = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    acts, grads, logits = layer_gradients(model, ["conv"], x, t)
    assert model in _CONTIGUOUS_ONLY
    assert torch.allclose(logits, model(x), atol=1e-6)
    a = model.conv(x).detach().requires_grad_(True)
    out = model.fc(model.pool(torch.relu(a)).flatten(1))
    (expected,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), a)
    assert torch.allclose(acts["conv"], a.detach()) and torch.allclose(grads["conv"], expected, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_channels_last_images_give_the_same_activations_and_gradients(trained_model_copy: TinyCNN) -> None:
    from lightning_xai.running import _CONTIGUOUS_ONLY
    from lightning_xai.tcav.activations import layer_gradients

    model = trained_model_copy.eval()
    x, t = random_set(12, seed=3), torch.arange(12) % 6
    fast = layer_gradients(model, ["conv3", "conv5"], x, t)
    assert model not in _CONTIGUOUS_ONLY
    _CONTIGUOUS_ONLY.add(model)
    try:
        plain = layer_gradients(model, ["conv3", "conv5"], x, t)
        plain_acts, _ = layer_activations(model, ["conv4"], x)
    finally:
        _CONTIGUOUS_ONLY.discard(model)
    fast_acts, _ = layer_activations(model, ["conv4"], x)
    for f, p in zip(fast[:2], plain[:2]):
        for layer in ("conv3", "conv5"):
            assert torch.allclose(f[layer], p[layer], atol=1e-5), layer
    assert torch.allclose(fast[2], plain[2], atol=1e-5)
    assert torch.allclose(fast_acts["conv4"], plain_acts["conv4"], atol=1e-5)


# ------------------------------------------------------------------------------------ CAVs and stats
def test_linear_cavs_batched_equal_one_at_a_time() -> None:
    """All runs of all concepts are one batched model; batching changes nothing in the solution."""
    g = torch.Generator().manual_seed(0)
    direction = torch.zeros(40)
    direction[3] = 1.0
    positives = [
        torch.randn(30, 40, generator=g) + 3 * direction,
        torch.randn(25, 40, generator=g) - 3 * direction,
    ]
    negatives = torch.randn(5, 20, 40, generator=g)
    null = torch.stack([positives[0][:20]] * 5)
    batched = linear_cavs(positives, negatives, paired=null, max_iter=2000, tol=1e-5)
    assert batched.shape == (3, 5, 40)  # 2 concepts x 5 runs, plus the paired null row
    assert torch.allclose(batched.norm(dim=-1), torch.ones(3, 5), atol=1e-5)
    assert float(batched[0, :, 3].min()) > 0.5 and float(batched[1, :, 3].max()) < -0.5  # towards the concept
    for p in range(2):
        for r in range(5):
            alone = linear_cavs([positives[p]], negatives[r : r + 1], max_iter=2000, tol=1e-5)[0, 0]
            assert float(alone @ batched[p, r]) > 0.999
        # the null is paired: run r contrasts its own positive set with negatives[r] only
        alone = linear_cavs([null[r]], negatives[r : r + 1], max_iter=2000, tol=1e-5)[0, 0]
        assert float(alone @ batched[2, r]) > 0.999
    means = mean_difference_cavs(positives, negatives, paired=null)
    assert means.shape == (3, 5, 40)
    assert torch.allclose(means[1, 2], positives[1].mean(0) - negatives[2].mean(0))
    assert torch.allclose(means[2, 4], null[4].mean(0) - negatives[4].mean(0))


def _primal_logistic_direction(xp: torch.Tensor, xn: torch.Tensor, l2: float) -> torch.Tensor:
    """Unit normal of ``0.5 mean_pos softplus(-z) + 0.5 mean_neg softplus(z) + l2/2 |w|^2`` by primal L-BFGS."""
    w = torch.zeros(xp.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (
            0.5 * torch.nn.functional.softplus(-(xp.double() @ w + b)).mean()
            + 0.5 * torch.nn.functional.softplus(xn.double() @ w + b).mean()
            + 0.5 * l2 * w.pow(2).sum()
        )
        loss.backward()
        return loss

    opt.step(closure)
    return (w / w.norm()).detach().float()


def test_linear_cavs_reach_the_primal_optimum() -> None:
    """The dual Newton solver finds the minimiser of the documented objective: compared with a plain primal
    L-BFGS on ``0.5 mean_pos softplus(-z) + 0.5 mean_neg softplus(z) + l2/2 |w|^2`` (centred, RMS-scaled
    features), in a regime with more features than images (m > n), like real layers."""
    g = torch.Generator().manual_seed(1)
    m = 300
    direction = torch.randn(m, generator=g)
    pos = torch.randn(40, m, generator=g) + 0.3 * direction
    neg = torch.randn(1, 60, m, generator=g)
    for l2 in (0.1, 1.0):
        ours = linear_cavs([pos], neg, l2=l2)[0, 0]
        center = neg[0].mean(0)
        scale = (neg[0] - center).pow(2).mean().sqrt()
        xp, xn = (pos - center) / scale, (neg[0] - center) / scale
        reference = _primal_logistic_direction(xp, xn, l2)
        assert float(ours @ reference) > 0.9999, (l2, float(ours @ reference))
        assert float(ours @ direction / direction.norm()) > 0.5  # and it found the planted direction


def test_pvalues_match_scipy_and_bonferroni_counts_every_hypothesis() -> None:
    g = torch.Generator().manual_seed(0)
    concept = torch.rand(3, 10, generator=g) * 0.2 + torch.tensor([[0.8], [0.5], [0.2]])
    null = torch.rand(10, generator=g)
    p = two_sided_pvalues(concept, null)
    for i in range(3):
        ref = stats.ttest_ind(concept[i].double().numpy(), null.double().numpy(), equal_var=False).pvalue
        assert p[i].item() == pytest.approx(ref, rel=1e-9)
    adjusted, significant, m = bonferroni(p)
    assert m == 3 and torch.allclose(adjusted, (p * 3).clamp(max=1))
    assert significant.tolist() == (p * 3 < 0.05).tolist()
    # constant runs: undefined t-test, decided by the means
    assert two_sided_pvalues(torch.ones(1, 4), torch.ones(4)).item() == 1.0
    assert two_sided_pvalues(torch.ones(1, 4), torch.zeros(4)).item() == 0.0


# ---------------------------------------------------------------------------------------- callback
def _trainer(root: Path, callbacks: list, **kwargs: Any) -> Trainer:
    """The shared quiet Trainer, one epoch over every training batch unless told otherwise."""
    from _models import make_trainer

    return make_trainer(root, callbacks, **{"max_epochs": 1, "limit_train_batches": None, **kwargs})


def _folder(root: Path, images: torch.Tensor) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            root / f"{i:03d}.png"
        )
    return root


class _Results(Callback):
    """Keeps every typed result the explainer callbacks hand to their listeners."""

    def __init__(self) -> None:
        self.results: list[Any] = []

    def on_xai_result(self, trainer, pl_module, source, record, result) -> None:
        self.results.append(result)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


@pytest.mark.slow
def test_callback_explains_a_trained_model_and_logs_everything(
    tmp_path: Path, trained_model_copy: TinyCNN
) -> None:
    """Inside a real Trainer (validate on the trained model, then one epoch of fit): records read back."""
    concepts = {
        "shape:circle": concept_set("shape:circle", 60, seed=SEED),  # tensor
        "texture:striped": _folder(
            tmp_path / "striped", concept_set("texture:striped", 60, seed=SEED)
        ),  # folder
        "colour:red": TensorDataset(concept_set("colour:red", 60, seed=SEED), torch.zeros(60)),  # Dataset
    }
    cb = ConceptAttributionCallback(
        concepts,
        random=random_set(60, seed=SEED),
        n_random=20,
        probe_images=2,
        images_per_class=4,
        m_steps=20,
        on_error="raise",
    )
    dm = WorldDataModule(n_train=128, n_val=240, batch_size=60, seed=0)
    listener = _Results()
    trainer = _trainer(
        tmp_path,
        [cb, listener, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_checkpointing=True,
        limit_train_batches=1,
    )
    trainer.validate(trained_model_copy, dm, verbose=False)
    trainer.fit(trained_model_copy, dm)
    records = read_records(tmp_path / "logs" / "version_0", method="concept_attribution")
    assert [r.epoch for r in records] == [0, 0] and len(cb.explained_epochs) == 2
    assert all(r.schema == ConceptAttributionResult.schema for r in records)
    first, second = records[0].payload, records[1].payload
    assert first["layers"] == [DEFAULT_LAYER] and first["concepts"] == list(concepts)
    assert first["classes"] == trained_model_copy.classes and first["n_hypotheses"] == 3 * 6
    scores = {(s["concept"], s["class"]): s for s in first["scores"]}
    assert len(scores) == 18
    # the trained model through the callback: planted concepts significant, the colour not
    rule = trained_model_copy.classes
    for name in rule:
        if name.startswith("circle/"):
            assert (
                scores[("shape:circle", name)]["significant"]
                and scores[("shape:circle", name)]["tcav"] >= 0.8
            )
        else:
            assert scores[("shape:circle", name)]["tcav"] <= 0.2
        lined = name.endswith("/lined")
        assert scores[("texture:striped", name)]["significant"]
        assert (scores[("texture:striped", name)]["tcav"] >= 0.8) == lined
        assert not scores[("colour:red", name)]["significant"]
    glob = {(g["concept"], g["class"]): g for g in first["global_attribution"]}
    assert all(g["n"] == 4 and 0 <= g["ci_low"] <= g["mean"] <= g["ci_high"] for g in glob.values())
    assert glob[("shape:circle", "circle/lined")]["mean"] > glob[("shape:circle", "square/lined")]["mean"]
    # the typed results: what the records hold, read back equal; the CAVs stay in memory for the drift monitor
    live = listener.results
    assert [type(r) for r in live] == [ConceptAttributionResult] * 2
    for rec, result in zip(records, live):
        assert read_result(rec) == result
        assert ConceptAttributionResult.from_payload(result.to_payload(), result.schema) == result
    assert trainer.callback_metrics["xai/concept_attribution/n_significant"] == live[1].n_significant
    # drift: a record holds no comparison with the previous epoch; the CAVs of both epochs are comparable
    assert not {"cav_similarity", "previous_epoch", "history"} & (set(first) | set(second))
    assert set(live[0].cavs[DEFAULT_LAYER]) == set(live[1].cavs[DEFAULT_LAYER]) == set(concepts)
    sims = {k: _cosine(v, live[0].cavs[DEFAULT_LAYER][k]) for k, v in live[1].cavs[DEFAULT_LAYER].items()}
    assert all(-1.0 <= v <= 1.0 + 1e-9 for v in sims.values())
    tracker = DriftTracker()
    tracker.update("concept_attribution", 0, observations(live[0]))
    rows, _ = tracker.update("concept_attribution", 1, observations(live[1]))
    cav_rows = {
        r["key"]: r["value"] for r in rows if r["kind"] == "cav_cosine" and r["against"] == "previous"
    }
    assert cav_rows == pytest.approx({f"{DEFAULT_LAYER}/{k}": 1.0 - v for k, v in sims.items()})
    # tables, charts and media are in the record and on disk
    tables = second["tables"]
    assert {"tcav_scores", "global_attribution", "local_attribution"} <= set(tables)
    assert "cav_similarity" not in tables
    assert len(tables["tcav_scores"]["rows"]) == 18
    assert any(label.endswith(" *") for label, *_ in tables[f"tcav_{DEFAULT_LAYER}_circle/lined"]["rows"])
    assert len(second["probes"]) == 2 * 3 * 3  # probes x top classes x concepts
    keys = [m["key"] for m in second["media"]]
    assert keys.count("concept_maps") == 2 and keys.count("concept_masks") == 2 and "tcav_plot" in keys
    store = tmp_path / "logs" / "version_0" / "xai"
    assert all((store / m["path"]).is_file() for m in second["media"])
    # state: the layers found on the first explained epoch survive a checkpoint, under the key a fresh
    # callback of the same arguments looks for
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    restored = ConceptAttributionCallback(concepts, random=random_set(60, seed=SEED), n_random=20)
    assert restored.state_key == cb.state_key and saved[cb.state_key]["explainer"] == {
        "layers": [DEFAULT_LAYER]
    }
    restored.load_state_dict(saved[cb.state_key])
    assert restored.concept_layers == [DEFAULT_LAYER]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concepts": ["striped"]}, "concepts must be a dict"),
        ({"concepts": {"one": torch.rand(1, 3, 8, 8)}}, "'one' has 1 image"),
        ({"concepts": {"x": 3}}, "give a tensor"),
        ({"cav": "svm"}, r"choose one of \['mean', 'linear'\]"),
        ({"n_random": 1}, "n_random must be an integer >= 2"),
        ({"probe_images": -1}, "probe_images must be"),
        ({"layers": []}, "layers must be None"),
        ({"classes": [1.5]}, "classes must be None"),
        ({"alpha": 1.5}, r"alpha must lie in \(0, 1\)"),
        ({"m_steps": 0}, "m_steps must be an integer >= 1"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        ConceptAttributionCallback(**kwargs)


def test_callback_checks_folders_and_layers_at_setup(tmp_path: Path) -> None:
    from _models import BlobData, SmallNet

    cb = ConceptAttributionCallback({"striped": tmp_path / "missing"}, on_error="raise")
    with pytest.raises(MisconfigurationException, match="does not exist"):
        _trainer(tmp_path, [cb]).fit(SmallNet(), BlobData())
    cb = ConceptAttributionCallback({"a": torch.rand(4, 3, 8, 8)}, layers=["cnv"], on_error="raise")
    with pytest.raises(LayerNotFoundError, match="Closest valid names"):
        _trainer(tmp_path, [cb]).fit(SmallNet(), BlobData())
    # under on_error="warn" the same folder is said once and training goes on without the callback
    cb = ConceptAttributionCallback({"striped": tmp_path / "missing"})
    trainer = _trainer(tmp_path / "warn", [cb], max_epochs=2)
    with pytest.warns(UserWarning, match="is disabled for this run; training goes on.*does not exist"):
        trainer.fit(SmallNet(), BlobData())
    assert cb.disabled and trainer.current_epoch == 2


def test_callback_without_concepts_warns_and_training_goes_on(tmp_path: Path) -> None:
    from _models import BlobData, SmallNet

    trainer = _trainer(tmp_path, [ConceptAttributionCallback()], max_epochs=2, limit_train_batches=2)
    with pytest.warns(UserWarning, match="has no concepts"):
        trainer.fit(SmallNet(), BlobData())
    errors = read_records(tmp_path / "logs" / "version_0", name="error")
    assert [e.epoch for e in errors] == [0, 1] and "pass concepts=" in str(errors[0].payload)


def test_records_hold_one_epoch_each_and_read_back_as_the_results(tmp_path: Path) -> None:
    """Three explained epochs: each record is its epoch's typed result, read back equal, no larger than the
    first; the drift monitor compares the CAVs the results keep in memory; the found layers are the state."""
    from _models import BlobData, SmallNet

    from lightning_xai.callbacks import ConceptDriftMonitor

    cb = ConceptAttributionCallback(
        _blob_concepts(), n_random=3, m_steps=2, images_per_class=2, probe_images=1, on_error="raise"
    )
    listener = _Results()
    trainer = _trainer(tmp_path, [cb, listener, ConceptDriftMonitor(on_error="raise")], max_epochs=3)
    trainer.fit(SmallNet(), BlobData())
    run = tmp_path / "logs" / "version_0"
    records = read_records(run, method="concept_attribution")
    results = [r for r in listener.results if isinstance(r, ConceptAttributionResult)]
    assert [r.epoch for r in records] == [0, 1, 2] and len(results) == 3
    sizes = []
    for rec, result in zip(records, results):
        assert rec.schema == 2 and read_result(rec) == result
        assert ConceptAttributionResult.from_payload(result.to_payload(), result.schema) == result
        payload = result.to_payload()
        assert not {"history", "previous_epoch", "cav_similarity"} & set(rec.payload)
        assert not any(k.endswith("_prev") for k in rec.payload)
        assert len(payload["scores"]) == len(payload["global_attribution"]) == 3 * 3  # classes x concepts
        sizes.append(len(json.dumps(payload)))
    assert max(sizes) <= 1.1 * sizes[0]  # an epoch's record does not carry the epochs before it
    # the drift monitor's CAV drift is 1 - cosine of the in-memory CAVs of consecutive epochs
    layer = records[0].payload["layers"][0]
    drift = {r.epoch: r.payload["rows"] for r in read_records(run, method="drift", name="epoch")}
    for e in (1, 2):
        got = {
            row["key"]: row["value"]
            for row in drift[e]
            if (row["kind"], row["against"], row["base_epoch"]) == ("cav_cosine", "previous", e - 1)
        }
        before, after = results[e - 1].cavs[layer], results[e].cavs[layer]
        assert got == pytest.approx({f"{layer}/{k}": 1.0 - _cosine(v, before[k]) for k, v in after.items()})
    # state: the found layers only; a checkpoint of earlier versions (with the previous CAVs) still loads
    assert cb.state_dict()["explainer"] == {"layers": [layer]}
    fresh = ConceptAttributionCallback(
        _blob_concepts(), n_random=3, m_steps=2, images_per_class=2, probe_images=1
    )
    assert fresh.state_key == cb.state_key
    old = {
        "explained_epochs": [0, 1],
        "explainer": {"previous": {"epoch": 1, "cavs": {}}, "history": [{}], "layers": [layer]},
    }
    fresh.load_state_dict(old)
    assert fresh.concept_layers == [layer] and fresh.explained_epochs == [0, 1]


def test_schema1_records_read_and_a_broken_payload_is_named() -> None:
    fixture = Path(__file__).parent / "fixtures" / "quickstart_schema1"
    old = [r for r in read_records(fixture) if r.method == "concept_attribution"]
    result = read_result(old[1])
    assert isinstance(result, ConceptAttributionResult) and result.layers == ["conv5"]
    # the schema-1 values about the previous epoch are shown as recorded, never written again
    assert result.recorded == {"cav_similarity": old[1].payload["cav_similarity"], "previous_epoch": 1}
    assert result.summary()["previous_epoch"] == 1
    payload = result.to_payload()
    assert not {"cav_similarity", "previous_epoch"} & set(payload)
    assert {k: old[1].payload[k] for k in payload} == payload  # everything else as it was recorded
    assert ConceptAttributionResult.from_payload(payload, 2) == dataclasses.replace(result, recorded={})
    with pytest.raises(SchemaError, match=r"concept_attribution record payload lacks \['scores'\]"):
        ConceptAttributionResult.from_payload({k: v for k, v in payload.items() if k != "scores"}, 2)
    with pytest.raises(SchemaError, match=r"unreadable 'scores' \(KeyError: 'concept'\)"):
        ConceptAttributionResult.from_payload({**payload, "scores": [{"layer": "conv5"}]}, 2)
    with pytest.raises(SchemaError, match="schema 3, newer than this lightning-xai reads"):
        ConceptAttributionResult.from_payload(payload, 3)


# ---------------------------------------------------------------------------------------------- DDP
def _blob_concepts() -> dict[str, torch.Tensor]:
    from _models import blob_data

    data = blob_data(120, seed=7)
    x, y = data.tensors
    return {f"blob{k}": x[y == k][:20] for k in range(3)}
