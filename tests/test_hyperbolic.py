"""Hierarchical symbolic explanations in hyperbolic space (lightning_xai.hyperbolic) and SymbolicTreeCallback.

Ground truth used here: the classifier's own predictions on images the symbolic model never saw (fidelity), on
the planted-concept world's TinyCNN and on a small CNN trained here on scikit-learn's handwritten digits;
geoopt's own Poincaré-ball operations (the closed forms used on the hot path); hand-built hierarchies whose
trees, pruning and rules are worked out by hand; and hand-built channel maps (visual semantics).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import geoopt
import networkx as nx
import numpy as np
import pytest
import torch
import yaml
from _models import BlobData, SmallNet, make_trainer
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_xai.callbacks import ConceptDriftMonitor
from lightning_xai.callbacks.symbolic_tree import SymbolicTreeCallback
from lightning_xai.capture import LayerNotFoundError, ValidationSample
from lightning_xai.hyperbolic import (
    Encoding,
    FeatureMapError,
    Hierarchy,
    LevelsError,
    LossWeights,
    SymbolicConfig,
    SymbolicFitter,
    SymbolicModel,
    TreeNode,
    check_feature_map,
    explain_symbols,
    fidelity,
    find_feature_layer,
    js_divergence,
    level_norms,
    make_ball,
    pairwise_dist,
    perplexity,
    render_tree,
    resolve_levels,
    rowwise_dist,
    rules_jaccard,
    semantics_grid,
    tree_graph,
    tree_image,
    tree_to_dot,
    visual_semantics,
)
from lightning_xai.hyperbolic.geometry import (
    dist0,
    expmap0,
    gyromidpoints,
    logmap0,
    mobius_matvec,
    nearest,
    soft_clip,
    straight_through,
)
from lightning_xai.records import read_records
from lightning_xai.results import SchemaError, read_result
from lightning_xai.results.symbolic_tree import SymbolicTreeResult
from lightning_xai.world import WorldDataModule

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "quickstart_schema1" / "xai"

# ------------------------------------------------------------------------------------------------ helpers


#: a small, fast configuration for SmallNet (8 channels) on BlobData (3 classes)
SMALL = {
    "levels": (8, 4),
    "latent_channels": 8,
    "steps_per_epoch": 20,
    "warmup_steps": 20,
    "semantic_symbols": 2,
    "semantic_images": 2,
}


def capture(
    model: nn.Module, layer: str, images: torch.Tensor, batch: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations and the model's logits for ``images`` (eval mode, no grad)."""
    module = dict(model.named_modules())[layer]
    acts: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: acts.append(o.detach()))
    logits = []
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch):
                logits.append(model(images[i : i + batch]))
    finally:
        handle.remove()
    return torch.cat(acts), torch.cat(logits)


def assert_structure(model: SymbolicModel, trees: dict[int, TreeNode]) -> list[float]:
    """>= 3 levels, strictly decreasing mean norm fine -> coarse, every class tree connected to level 0."""
    assert model.num_levels >= 3
    norms = level_norms(model)
    assert all(a > b for a, b in itertools.pairwise(norms)), norms
    assert trees
    for c, tree in trees.items():
        assert tree.symbol is None and tree.level == model.num_levels, c
        assert tree.is_connected_to(0), (c, tree.to_dict())
        # every path steps down exactly one level at a time, from the class to level 0
        for parent, node in tree.walk():
            if parent is not None:
                assert node.level == parent.level - 1
    return norms


# ------------------------------------------------------------------------------------------------ geometry


def test_closed_forms_match_geoopt() -> None:
    ball = make_ball()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 16, generator=g) * 0.8
    x, y = ball.expmap0(v), ball.expmap0(torch.randn(30, 16, generator=g) * 0.5)
    m = torch.randn(16, 16, generator=g) * 0.3
    assert torch.allclose(expmap0(v), ball.expmap0(v), atol=1e-5)
    assert torch.allclose(logmap0(x), ball.logmap0(x), atol=1e-4)
    assert torch.allclose(mobius_matvec(m, x), ball.mobius_matvec(m, x), atol=1e-5)
    assert torch.allclose(dist0(x), ball.dist0(x), atol=1e-4)
    assert torch.allclose(pairwise_dist(x, y), ball.dist(x[:, None], y[None]), rtol=1e-3, atol=1e-3)
    assert torch.allclose(rowwise_dist(x, y[:1].expand_as(x)), ball.dist(x, y[:1]), rtol=1e-3, atol=1e-3)
    # soft weights (the adjacency) and one-hot weights with an empty row's neighbours (k-means)
    w = torch.rand(7, 50, generator=g)
    assert torch.allclose(
        gyromidpoints(x, w), ball.weighted_midpoint(x.expand(7, 50, 16), w, reducedim=[1]), atol=1e-5
    )
    hard = torch.nn.functional.one_hot(torch.randint(0, 4, (50,), generator=g), 4).T.float()
    assert torch.allclose(
        gyromidpoints(x, hard), ball.weighted_midpoint(x.expand(4, 50, 16), hard, reducedim=[1]), atol=1e-5
    )
    # gradients agree too (the composition loss trains codes and adjacency through it)
    xs, ws = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ours = torch.autograd.grad(gyromidpoints(xs, ws).sum(), (xs, ws))
    theirs = torch.autograd.grad(
        ball.weighted_midpoint(xs.expand(7, 50, 16), ws, reducedim=[1]).sum(), (xs, ws)
    )
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)


def test_straight_through_forward_is_the_code_and_gradient_reaches_the_token() -> None:
    ball = make_ball()
    u = ball.expmap0(torch.randn(4, 16) * 0.5).requires_grad_(True)
    code = ball.expmap0(torch.randn(4, 16) * 0.5)
    q = straight_through(u, code)
    assert torch.allclose(q, code, atol=1e-5)
    (g,) = torch.autograd.grad(logmap0(q).sum(), u)
    assert g.abs().sum() > 0


def test_nearest_code_is_the_argmin_of_the_poincare_distance() -> None:
    ball = make_ball()
    g = torch.Generator().manual_seed(3)
    x, y = (
        ball.expmap0(torch.randn(400, 16, generator=g)),
        ball.expmap0(torch.randn(32, 16, generator=g) * 0.7),
    )
    assert torch.equal(nearest(x, y), ball.dist(x[:, None], y[None]).argmin(1))


# ------------------------------------------------------------------------------------------------ model


def _forward_on_the_ball(
    model: SymbolicModel, feats: torch.Tensor, teacher: torch.Tensor
) -> dict[str, object]:
    """The model's forward and its ``ce`` and ``vq`` terms as defined on the ball, with geoopt's operations:
    Möbius products of quantised points, straight-through on logmap0 of each token, the surrogate on logmap0
    of the top-level point, the commitment loss from two distances."""
    ball, beta = make_ball(), model.config.weights.beta
    maps = model.modulator(feats)
    u = ball.expmap0(soft_clip(maps.flatten(2), model.config.max_token_norm))
    codes, points, vq = [], [], torch.zeros((), dtype=feats.dtype)
    q = u
    for level, book in enumerate(model.codebooks):
        if level > 0:
            u = ball.mobius_matvec(model.level_maps[level - 1], q)
        k = ball.dist(u[:, :, None], book).argmin(-1)
        tu, tc = ball.logmap0(u), ball.logmap0(book[k])
        q = ball.expmap0(tu + (tc - tu).detach())
        vq = (
            vq
            + (ball.dist(u.detach(), book[k]) ** 2).mean()
            + beta * (ball.dist(u, book[k].detach()) ** 2).mean()
        )
        codes.append(k)
        points.append(u)
    logits = model.surrogate(ball.logmap0(q).flatten(1))
    return {
        "codes": codes,
        "points": points,
        "logits": logits,
        "ce": torch.nn.functional.cross_entropy(logits, teacher),
        "vq": vq,
    }


@pytest.mark.parametrize("level_map_scale", [1.0, 50.0])
def test_the_tangent_space_forward_equals_the_definition_on_the_ball(level_map_scale: float) -> None:
    # the model quantises and composes in the tangent space at the origin (fewer passes over the tokens); its
    # codes, points, logits and every gradient of the surrogate and commitment losses must be those of the
    # definition; a large level map drives points to the ball's margin, where both must project alike
    cfg = SymbolicConfig(levels=(8, 4), latent_channels=6)
    fitter = SymbolicFitter(5, 3, cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    feats, teacher = torch.randn(32, 5, 4, 4, generator=g), torch.arange(32) % 3
    fitter.fit(feats, teacher, steps=10)
    model = fitter.model.double().eval()
    with torch.no_grad():
        for m in model.level_maps:
            m.mul_(level_map_scale)
    feats = feats.double()
    ours = model(feats)
    terms = model.losses(ours, teacher)
    ref = _forward_on_the_ball(model, feats, teacher)
    if level_map_scale > 1:  # the margin really was reached
        assert float(ours.points[-1].norm(dim=-1).max()) > 0.9999
    for a, b in zip(ours.codes, ref["codes"]):
        assert torch.equal(a, b)
    for a, b in zip(ours.points, ref["points"]):
        assert torch.allclose(a, b, atol=1e-9)
    assert torch.allclose(ours.logits, ref["logits"], atol=1e-9)
    params = [p for p in model.parameters() if p.requires_grad]
    # at the margin geoopt's own clamps (inside tanh and artanh) move the projected point's tangent vector by
    # ~1e-4 relative (6.1025 instead of artanh(1 - 1e-5) = 6.1030 in float64), and gradients with it
    rtol = 1e-6 if level_map_scale == 1 else 1e-3
    for name in ("ce", "vq"):
        assert torch.allclose(terms[name], ref[name], rtol=rtol, atol=1e-10), name
        mine = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
        theirs = torch.autograd.grad(ref[name], params, retain_graph=True, allow_unused=True)
        for p, a, b in zip(params, mine, theirs):
            assert (a is None) == (b is None), name
            if a is not None:
                assert float((a - b).norm()) <= rtol * float(b.norm()) + 1e-12, (name, tuple(p.shape))


def test_adjacency_is_really_used_by_every_term() -> None:
    cfg = SymbolicConfig(levels=(8, 4), latent_channels=6)
    fitter = SymbolicFitter(5, 3, cfg, seed=0)
    feats = torch.randn(32, 5, 4, 4)
    teacher = torch.arange(32) % 3
    fitter.fit(feats, teacher, steps=2)
    model = fitter.model
    terms = model.losses(model(feats), teacher)
    for name in ("composition", "edge", "path", "norm", "sparsity"):
        grads = torch.autograd.grad(
            terms[name], list(model.adjacency_logits), retain_graph=True, allow_unused=True
        )
        assert all(g is not None and g.abs().sum() > 0 for g in grads), name
    # every level has a commitment term: the codebook of every level receives a gradient from "vq"
    grads = torch.autograd.grad(terms["vq"], list(model.codebooks), retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)
    # the surrogate's loss reaches the modulator through every level's straight-through estimator
    (g,) = torch.autograd.grad(terms["ce"], [model.modulator[1].weight], retain_graph=True)
    assert g.abs().sum() > 0
    # a token's level-(l+1) symbol is the parent its level-l symbol routes to (symbols form paths)
    out = model(feats)
    for level in range(model.num_levels - 1):
        assert torch.equal(model.parent_of(level)[out.codes[level]], out.codes[level + 1])


def test_composition_pulls_parents_to_the_midpoint_of_their_children() -> None:
    cfg = SymbolicConfig(levels=(8, 4), latent_channels=6, weights=LossWeights(composition=5.0))
    fitter = SymbolicFitter(5, 3, cfg, seed=1)
    feats, teacher = torch.randn(64, 5, 4, 4), torch.arange(64) % 3
    model = fitter.model
    fitter.fit(feats, teacher, steps=1)
    before = float(model.losses(model(feats), teacher)["composition"])
    fitter.fit(feats, teacher, steps=40)
    after = float(model.losses(model(feats), teacher)["composition"])
    assert after < before


@pytest.mark.parametrize(
    ("levels", "classes", "top", "match"),
    [
        ((16, 32), 4, None, r"levels=\[16, 32\] does not shrink"),
        ((8, 8), 4, None, "does not shrink"),
        (
            (32, 4),
            6,
            None,
            r"levels=\[32, 4\] does not shrink towards the top level of 6 symbols \(one per class\)",
        ),
        ((32, 16), 6, 10, "top_symbols=10 is more than the 6 classes"),
        ((), 6, None, "non-empty list"),
        ((32, 1), 6, None, "integers >= 2"),
    ],
)
def test_bad_levels_are_rejected_with_clear_errors(levels, classes, top, match) -> None:
    with pytest.raises(LevelsError, match=match):
        resolve_levels(levels, classes, top)


def test_fewer_top_symbols_than_classes_are_allowed_and_the_model_checks_levels() -> None:
    assert resolve_levels((16, 8), 6, top_symbols=4) == (16, 8, 4)
    with pytest.raises(LevelsError, match="more than the 3 classes"):
        SymbolicModel(8, 3, SymbolicConfig(levels=(8, 4), top_symbols=5))


def test_activations_that_are_not_a_feature_map_are_rejected() -> None:
    with pytest.raises(FeatureMapError, match=r"pool outputs shape \[4, 8\], not a feature map"):
        check_feature_map(torch.zeros(4, 8), "pool")
    with pytest.raises(FeatureMapError, match="H \\* W > 1"):
        check_feature_map(torch.zeros(4, 8, 1, 1))
    fitter = SymbolicFitter(8, 3, SymbolicConfig(levels=(8, 4), latent_channels=4))
    with pytest.raises(FeatureMapError, match="not a feature map"):
        fitter.fit(torch.zeros(10, 8), torch.zeros(10, dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match="built for 8"):
        fitter.fit(torch.zeros(10, 5, 4, 4), torch.zeros(10, dtype=torch.long), steps=1)
    with pytest.raises(ValueError, match=r"teacher classes must lie in \[0, 3\)"):
        fitter.fit(torch.zeros(10, 8, 4, 4), torch.full((10,), 7), steps=1)
    with pytest.raises(FeatureMapError, match="no layer that outputs a spatial feature map"):
        find_feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.zeros(1, 3, 2, 2))


# ------------------------------------------------------------------------------------------------ trees


def hand_hierarchy() -> Hierarchy:
    """3 levels (4, 2, 2 symbols), 2 images of 4 tokens each, classifier predictions [0, 1], prune 0.5.

    Adjacency: level 0 -> 1: S0_0, S0_1 -> S1_0; S0_2 -> S1_1 (S0_3 has no hard edge); level 1 -> 2: S1_0 -> S2_0,
    S1_1 -> S2_1. Image 0 codes: level 0 [0, 0, 0, 1], level 1 [0, 0, 0, 0], level 2 [0, 0, 0, 0].
    Image 1 codes: level 0 [2, 2, 3, 3], level 1 [1, 1, 1, 1], level 2 [1, 1, 1, 0].
    """
    a0 = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.3]])
    a1 = torch.tensor([[0.95, 0.05], [0.1, 0.7]])
    codes = [
        torch.tensor([[0, 0, 0, 1], [2, 2, 3, 3]]),
        torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]),
        torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0]]),
    ]
    return Hierarchy(
        (4, 2, 2), [a0, a1], codes, torch.tensor([0, 1]), ["zero", "one"], prune=0.5, class_share=0.5
    )


def test_class_trees_pruning_routing_and_rules_by_hand() -> None:
    h = hand_hierarchy()
    t0 = h.class_tree(0)
    # class 0: top symbol S2_0 (4 tokens) <- S1_0 (4) <- S0_0 (3 tokens); S0_1 (1 token < 0.5 * 3) is pruned
    assert t0.to_dict() == {
        "name": "class 0 (zero)", "level": 3, "symbol": None, "tokens": 4, "edge": None, "routed": False,
        "children": [{
            "name": "S2_0", "level": 2, "symbol": 0, "tokens": 4, "edge": None, "routed": False,
            "children": [{
                "name": "S1_0", "level": 1, "symbol": 0, "tokens": 4, "edge": pytest.approx(0.95), "routed": False,
                "children": [{"name": "S0_0", "level": 0, "symbol": 0, "tokens": 3, "edge": pytest.approx(0.9),
                              "routed": False, "children": []}],
            }],
        }],
    }  # fmt: skip
    # class 1: S2_1 (3 tokens; S2_0 has 1 < 0.5 * 3, not a class symbol) <- S1_1 <- S0_2 (hard edge); S0_3 also
    # routes 2 tokens to S1_1 but has no hard edge, so it is not in the tree
    t1 = h.class_tree(1)
    assert [c.name for c in t1.children] == ["S2_1"]
    assert t1.children[0].children[0].name == "S1_1"
    assert [c.name for c in t1.children[0].children[0].children] == ["S0_2"]
    assert t0.is_connected_to(0) and t1.is_connected_to(0) and t0.routed_edges == t1.routed_edges == 0
    assert [r.text for r in h.rules()] == [
        "class 0 (zero) <- S2_0", "S2_0 <- S1_0", "S1_0 <- S0_0",
        "class 1 (one) <- S2_1", "S2_1 <- S1_1", "S1_1 <- S0_2",
    ]  # fmt: skip
    assert h.edge_agreement(0) == pytest.approx(6 / 8)  # the 2 tokens S0_3 -> S1_1 follow no hard edge
    # without the hard edge S0_2 -> S1_1 the tree keeps its connection through the route, marked as routed
    h.adjacency[0][2, 1] = 0.2
    t1 = h.class_tree(1)
    leaf = t1.children[0].children[0].children
    assert [(n.name, n.routed) for n in leaf] == [("S0_2", True)] and t1.routed_edges == 1
    assert t1.is_connected_to(0)
    # exports: dict round trip, DOT (shared nodes once, routed edges dashed), networkx graph, PNG figure
    assert TreeNode.from_dict(t1.to_dict()).to_dict() == t1.to_dict()
    dot = tree_to_dot(t1, "class 1")
    assert dot.startswith('digraph "class 1" {') and dot.rstrip().endswith("}")
    assert '"S1_1" -> "S0_2" [label="0.20", style=dashed];' in dot
    g = tree_graph(t1)
    assert nx.is_tree(g.to_undirected()) and nx.has_path(g, "root", "S0_2")
    fig = render_tree(t1)
    assert type(fig).__name__ == "Figure"
    img = tree_image(t1).astype(int)

    def near(colour: str) -> np.ndarray:
        return np.abs(img - np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])).sum(-1) <= 6

    rows = {
        name: np.nonzero(near(c).any(1))[0]
        for name, c in (
            ("root", "#dddddd"),
            ("level 1", "#a1d99b"),
            ("level 0", "#9ecae1"),
            ("routed", "#cc3333"),
        )
    }
    assert all(r.size for r in rows.values())  # each level in its colour, and the routed edge in red
    assert (
        rows["root"].mean() < rows["level 1"].mean() < rows["level 0"].mean()
    )  # root on top, level 0 at the bottom
    red = near("#cc3333").any(1)
    span = red[rows["routed"].min() : rows["routed"].max() + 1]
    assert not span.all()  # dashed: gaps along the routed edge
    # an image tree uses only that image's symbols
    it = h.image_tree(0)
    assert it.symbols(0) == [0] and it.symbols(2) == [0]


def test_visual_semantics_marks_the_symbols_own_channels() -> None:
    # 2 images, 3 channels on 4x4 maps; channel k is hot at pixel (k, k); symbol S0_1 holds channel 1 of image 0
    # and channels 1, 2 of image 1
    maps = torch.zeros(2, 3, 4, 4)
    for k in range(3):
        maps[:, k, k, k] = 1.0
    enc = Encoding([torch.tensor([[0, 1, 0], [0, 1, 1]])], torch.zeros(2, 2), maps)
    (sem,) = visual_semantics(enc, [(0, 1)], image_size=(4, 4), top_k=2)
    assert sem.images == [1, 0] and sem.tokens == [2, 1] and sem.name == "S0_1"
    assert float(sem.maps.min()) >= 0 and float(sem.maps.max()) == pytest.approx(1.0)
    assert sem.maps[1].argmax() == 1 * 4 + 1  # image 0: only channel 1's hot spot
    assert {int(sem.maps[0].flatten().topk(2).indices[i]) for i in range(2)} == {
        5,
        10,
    }  # image 1: channels 1 and 2
    assert visual_semantics(enc, [(0, 2)], (4, 4)) == []  # nobody uses S0_2
    grid = semantics_grid([sem], torch.rand(2, 3, 4, 4))
    assert grid.shape == (3, 8, 8 + 4 + 8) and float(grid.min()) >= 0 and float(grid.max()) <= 1


def test_metrics_by_hand() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 1], [3, 1]) == pytest.approx(0.0)
    # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4); JS = 0.5 * KL(p||m) + 0.5 * KL(q||m) in bits
    expected = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert js_divergence([1, 1], [1, 0]) == pytest.approx(expected)
    assert rules_jaccard(["a", "b", "c"], ["b", "c", "d"]) == pytest.approx(0.5)
    assert perplexity(torch.tensor([2, 2, 2, 2])) == pytest.approx(4.0)
    fid = fidelity(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2]), 3)
    assert fid["accuracy"] == pytest.approx(0.75)
    assert fid["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


# ------------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """A small CNN trained here on scikit-learn's bundled handwritten digits (8x8, 10 classes, CPU, seconds);
    the last conv block's maps (32 x 4 x 4) and the logits of the 597 images it was not trained on."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    labels = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)
    train, rest = perm[:1200], perm[1200:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation
    try:
        _train(model, opt, images, labels, train, g)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    assert find_feature_layer(model, images[:1]) == "6"
    feats, logits = capture(model, "6", images[rest])
    accuracy = float((logits.argmax(1) == labels[rest]).float().mean())
    assert accuracy > 0.9  # a real classifier, so fidelity to it means something
    # 400 images to explain (the callback's sample), the other 197 never seen by the symbolic model
    return {"features": feats[:400], "logits": logits[:400], "test_features": feats[400:], "test_logits": logits[400:],
            "accuracy": torch.tensor(accuracy)}  # fmt: skip


def _train(model: nn.Module, opt: torch.optim.Optimizer, images, labels, train, g) -> None:
    for _ in range(15):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(images[b]), labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()


@pytest.fixture(scope="module")
def digits_explained(digits):
    fitter = SymbolicFitter(32, 10, SymbolicConfig(), seed=0)
    result = explain_symbols(fitter, digits["features"], digits["logits"], steps=150, holdout=0.25, seed=0)
    return fitter, result


@pytest.mark.slow
def test_digits_fidelity_structure_and_geometry(digits, digits_explained) -> None:
    fitter, res = digits_explained
    # held out of the fit (100 of the 400 explained images) and never-seen images (197)
    assert res.heldout_rows.numel() == 100
    assert res.fidelity["accuracy"] >= 0.90, res.fidelity
    test_pred = fitter.model.encode(digits["test_features"]).predictions
    test_fid = fidelity(test_pred, digits["test_logits"].argmax(1), 10)
    assert test_fid["accuracy"] >= 0.90, test_fid
    norms = assert_structure(fitter.model, res.class_trees)
    assert len(res.class_trees) == 10 and fitter.model.sizes == (32, 16, 10)
    print(f"\ndigits: classifier acc {float(digits['accuracy']):.3f}, fidelity held-out {res.fidelity}, never-seen "
          f"{test_fid}, norms {norms}, edge agreement {res.edge_agreement}, fit {res.report.seconds:.1f}s")  # fmt: skip
    assert_on_ball(fitter.model)


@pytest.mark.slow
def test_a_settled_explanation_encodes_the_images_once_and_reads_the_same_symbols(
    digits, digits_explained, monkeypatch
) -> None:
    fitter, res = digits_explained
    state = fitter.state_dict()
    calls: list[int] = []
    encode = SymbolicModel.encode

    def counted(self: SymbolicModel, features: torch.Tensor, batch_size: int = 256):  # type: ignore[no-untyped-def]
        calls.append(features.shape[0])
        return encode(self, features, batch_size)

    monkeypatch.setattr(SymbolicModel, "encode", counted)
    args = (digits["features"], digits["logits"], 50)
    settled = explain_symbols(SymbolicFitter.from_state_dict(state), *args, stop_at=0.9, min_steps=0)
    assert settled.report.steps == 0 and calls == [len(digits["features"])]
    # the same symbols as encoding after the fit (what an explanation that ran steps does)
    again = SymbolicFitter.from_state_dict(state).model.encode(digits["features"])
    for ours, theirs in zip(settled.encoding.codes, again.codes):
        assert torch.equal(ours, theirs)
    assert settled.fidelity == res.fidelity
    # a fit that runs steps encodes again after them
    calls.clear()
    moved = explain_symbols(SymbolicFitter.from_state_dict(state), *args, stop_at=None, min_steps=0)
    assert moved.report.steps == 50 and calls == [len(digits["features"])]
    calls.clear()
    shuffled = digits["logits"][
        torch.randperm(len(digits["logits"]), generator=torch.Generator().manual_seed(0))
    ]
    ran = explain_symbols(
        SymbolicFitter.from_state_dict(state), digits["features"], shuffled, 20, stop_at=0.9
    )
    assert ran.report.steps == 20 and calls == [len(digits["features"])] * 2


@pytest.mark.slow
def test_a_warm_start_that_already_agrees_stops_early_and_one_that_does_not_runs_on(
    digits, digits_explained
) -> None:
    fitter, res = digits_explained
    state = fitter.state_dict()
    feats, teacher = digits["features"][res.fit_rows], digits["logits"].argmax(1)[res.fit_rows]
    # the same images again: the surrogate agrees from the first steps, so the fit stops at min_steps
    warm = SymbolicFitter.from_state_dict(state)
    report = warm.fit(feats, teacher, 100, stop_at=0.9, min_steps=20, check_every=10)
    assert report.stopped_early and report.steps == 20 and report.total_steps == state["total_steps"] + 20
    assert (
        report.agreement >= 0.9 and report.edge_agreement >= 0.9 and report.to_dict()["stopped_early"] is True
    )
    # the same, with every edge cut (and kept cut): the surrogate agrees, but the tokens follow no hard edge,
    # so the trees would not carry their paths: every step runs
    cut = SymbolicFitter.from_state_dict(state)
    for logits in cut.model.adjacency_logits.parameters():
        logits.data.fill_(-10.0)
        logits.requires_grad_(False)
    report = cut.fit(feats, teacher, 40, stop_at=0.9, min_steps=20, check_every=10)
    assert not report.stopped_early and report.steps == 40
    assert report.agreement >= 0.9 and report.edge_agreement == 0.0
    held = digits["features"][res.heldout_rows]
    held_teacher = digits["logits"].argmax(1)[res.heldout_rows]
    assert fidelity(warm.model.encode(held).predictions, held_teacher, 10)["accuracy"] >= 0.90
    # a teacher the features cannot predict (the labels shuffled across images): every step runs
    shuffled = teacher[torch.randperm(len(teacher), generator=torch.Generator().manual_seed(0))]
    moved = SymbolicFitter.from_state_dict(state)
    report = moved.fit(feats, shuffled, 40, stop_at=0.9, min_steps=20, check_every=10)
    assert not report.stopped_early and report.steps == 40 and report.agreement < 0.9
    # without stop_at every step runs, as before
    assert SymbolicFitter.from_state_dict(state).fit(feats, teacher, 30).steps == 30
    # min_steps=0: checked before any step, in eval mode on all the rows: nothing to run
    report = SymbolicFitter.from_state_dict(state).fit(feats, teacher, 100, stop_at=0.9, min_steps=0)
    assert report.stopped_early and report.steps == 0 and report.total_steps == state["total_steps"]
    assert report.agreement >= 0.9 and report.losses == {}
    report = SymbolicFitter.from_state_dict(state).fit(
        feats, shuffled, 20, stop_at=0.9, min_steps=0, check_every=10
    )
    assert not report.stopped_early and report.steps == 20
    # predictions handed in replace the check's forward pass: they decide, whatever the features say
    fresh = SymbolicFitter.from_state_dict(state)
    report = fresh.fit(feats, shuffled, 20, stop_at=0.9, min_steps=0, predictions=shuffled)
    assert report.stopped_early and report.steps == 0 and report.agreement == 1.0
    with pytest.raises(ValueError, match=r"predictions must be \[N\]"):
        fresh.fit(feats, teacher, 5, stop_at=0.9, min_steps=0, predictions=teacher[:3])
    for bad, match in (
        ({"stop_at": 0.0}, r"stop_at must lie in \(0, 1\]"),
        ({"min_steps": -1}, "min_steps must be"),
    ):
        with pytest.raises(ValueError, match=match):
            warm.fit(feats, teacher, 5, **bad)


def assert_on_ball(model: SymbolicModel) -> None:
    """Every codebook is a geoopt ManifoldParameter of a Poincaré ball and every code lies inside it."""
    assert len(model.codebooks) == model.num_levels
    for book in model.codebooks:
        assert isinstance(book, geoopt.ManifoldParameter)
        assert isinstance(book.manifold, geoopt.PoincareBall) and float(book.manifold.c) == 1.0
        assert bool(torch.isfinite(book).all()) and float(book.detach().norm(dim=-1).max()) < 1.0
        ok, why = book.manifold.check_point_on_manifold(book.detach(), explain=True)
        assert ok, why


@pytest.mark.slow
def test_rules_and_trees_are_identical_for_a_seed(digits) -> None:
    def run(seed: int):
        fitter = SymbolicFitter(32, 10, SymbolicConfig(), seed=seed)
        res = explain_symbols(fitter, digits["features"], digits["logits"], steps=30, seed=seed)
        return res, fitter

    (a, fa), (b, fb) = run(3), run(3)
    assert a.rule_texts == b.rule_texts and a.rule_texts
    assert {c: t.to_dict() for c, t in a.class_trees.items()} == {
        c: t.to_dict() for c, t in b.class_trees.items()
    }
    assert [a.hierarchy.image_tree(i).to_dict() for i in range(5)] == [
        b.hierarchy.image_tree(i).to_dict() for i in range(5)
    ]
    sa, sb = fa.model.state_dict(), fb.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = SymbolicFitter(32, 10, SymbolicConfig(), seed=4).model.state_dict()  # another seed, another model
    fresh = SymbolicFitter(32, 10, SymbolicConfig(), seed=3).model.state_dict()
    assert not all(torch.equal(fresh[k], other[k]) for k in fresh)


# ------------------------------------------------------------------------------------------------ the world


@pytest.fixture(scope="module")
def world_run(trained_world, tmp_path_factory):
    """SymbolicTreeCallback at its defaults on the trained TinyCNN in ``trainer.validate`` (one explained epoch)."""
    model, dm = trained_world
    root = tmp_path_factory.mktemp("world")
    cb = SymbolicTreeCallback(on_error="raise")
    trainer = Trainer(
        default_root_dir=root, logger=CSVLogger(root, name="logs"), enable_progress_bar=False,
        enable_model_summary=False, callbacks=[cb],
    )  # fmt: skip
    trainer.validate(copy.deepcopy(model), dm, verbose=False)
    (rec,) = read_records(trainer.log_dir, method="symbolic_tree")
    return cb, rec, trainer


@pytest.mark.slow
def test_world_fidelity_held_out_and_structure(world_run, trained_world) -> None:
    cb, rec, trainer = world_run
    p = rec.payload
    assert (
        p["layer"] == "conv5"
        and p["levels"] == [32, 16, 6]
        and p["n_samples"] == 512
        and p["n_heldout"] == 128
    )
    assert p["fidelity"]["accuracy"] >= 0.90, p["fidelity"]
    # the world's test split: scenes neither the classifier nor the symbolic model ever saw
    model, dm = trained_world
    test_set = WorldDataModule(task=dm.task, n_test=dm.n_test, seed=dm.seed)  # the same split, rendered again
    test_set.setup("test")
    images = torch.stack([test_set.test_set[i][0] for i in range(len(test_set.test_set))])
    feats, logits = capture(model, "conv5", images)
    test_fid = fidelity(cb.fitter.model.encode(feats).predictions, logits.argmax(1), 6)
    assert test_fid["accuracy"] >= 0.90, test_fid
    norms = assert_structure(cb.fitter.model, cb.last_result.class_trees)
    assert p["norms"] == pytest.approx(norms) and len(cb.last_result.class_trees) == 6
    assert_on_ball(cb.fitter.model)
    print(f"\nworld: fidelity held-out {p['fidelity']}, test split {test_fid}, norms {norms}, edge agreement "
          f"{p['edge_agreement']}, routed edges {p['routed_edges']}, time {rec.time_s:.1f}s (fit {p['fit']['seconds']:.1f}s)")  # fmt: skip
    # logged: scalars, a PNG per class tree, DOT text per class, rules, usage per level, semantics panels
    metrics = trainer.callback_metrics
    assert metrics["xai/symbolic_tree/fidelity"] >= 0.90
    keys = [m["key"] for m in p["media"]]
    assert keys.count("class_tree") == 6 and "usage_histogram" in keys
    assert {f"semantics_level_{lv}" for lv in range(3)} <= set(keys)
    assert all((Path(trainer.log_dir) / "xai" / m["path"]).is_file() for m in p["media"])
    assert sorted(k for k in p["text"] if k.startswith("dot/")) == [f"dot/class_{c}" for c in range(6)]
    assert p["rules"][0]["text"].startswith(f"class 0 ({trained_world.classes[0]}) <- S2_")
    # the first fit runs its warm-up (100 steps) in full, then stops once the surrogate agrees and the tokens
    # follow the hard edges (140 of its 200 steps here): the read-out routes every token along an edge
    assert 100 <= p["fit"]["steps"] < 200 and p["fit"]["stopped_early"] is True
    assert p["fit"]["agreement"] >= 0.99 and p["fit"]["edge_agreement"] >= 0.99
    assert min(p["edge_agreement"]) >= 0.99


@pytest.mark.slow
def test_world_refit_on_a_settled_model_runs_no_step(world_run, trained_world, tmp_path: Path) -> None:
    cb, _, _ = world_run
    model, dm = trained_world
    warm = SymbolicTreeCallback(on_error="raise")
    warm.load_state_dict(copy.deepcopy(cb.state_dict()))  # as after a resume: warm-starts from that fit
    trainer = Trainer(default_root_dir=tmp_path, logger=CSVLogger(tmp_path, name="logs"), enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[warm])  # fmt: skip
    trainer.validate(copy.deepcopy(model), dm, verbose=False)
    (rec,) = read_records(trainer.log_dir, method="symbolic_tree")
    p = rec.payload
    # the classifier did not move: the surrogate agrees before any step, so none runs, and the explanation
    # is the previous one's (same symbols, same rules)
    assert p["fit"]["initialised"] is False and p["fit"]["stopped_early"] is True and p["fit"]["steps"] == 0
    assert p["fit"]["agreement"] >= 0.99 and p["fidelity"]["accuracy"] >= 0.90
    before = cb.last_result
    assert [r.text for r in warm.last_result.rules] == [r.text for r in before.rules]


# ------------------------------------------------------------------------------------------------ callback


class ForwardCounter(Callback):
    def __init__(self) -> None:
        self.calls = 0

    def setup(self, trainer, pl_module, stage):
        pl_module.register_forward_pre_hook(lambda m, a: setattr(self, "calls", self.calls + 1))


def test_callback_logs_trees_rules_usage_semantics_drift_and_resumes_from_checkpoint(tmp_path: Path) -> None:
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    # stop_at=None: every step runs, so the step counts below are exact
    cb, counter = SymbolicTreeCallback(on_error="raise", **SMALL, stop_at=None), ForwardCounter()
    monitor = ConceptDriftMonitor(on_error="raise")  # symbol-usage drift between epochs is the monitor's
    trainer = make_trainer(tmp_path, [cb, monitor, ckpt, counter], max_epochs=2, enable_checkpointing=True)
    trainer.fit(SmallNet(), BlobData())
    # no extra forward pass over validation data: 2 x (4 train + 4 val batches), plus a one-image probe that found
    # the default layer (the last feature map before the head)
    assert counter.calls == 2 * (4 + 4) + 1
    records = read_records(tmp_path / "logs" / "version_0", method="symbolic_tree")
    assert [r.epoch for r in records] == [0, 1] and {r.schema for r in records} == {SymbolicTreeResult.schema}
    first, second = (read_result(r) for r in records)
    assert isinstance(first, SymbolicTreeResult) and isinstance(second, SymbolicTreeResult)
    assert first.layer == "bn" and first.levels == [8, 4, 3] and first.n_samples == 64
    assert not first.warm_started and second.warm_started  # epoch 1 continued epoch 0's model
    assert first.fit.total_steps == 40 and second.fit.total_steps == 60  # warm-started
    # symbol-usage drift between the epochs: the monitor's JS divergence per level, from the records' usage
    (drift,) = read_records(tmp_path / "logs" / "version_0", method="drift", name="epoch")
    rows = {r.key: r for r in read_result(drift).rows if r.kind == "symbol_js" and r.against == "previous"}
    assert drift.epoch == 1 and sorted(rows) == ["level_0", "level_1", "level_2"]
    for level in range(3):
        row, js = rows[f"level_{level}"], js_divergence(first.usage[level], second.usage[level])
        assert row.base_epoch == 0 and row.value == pytest.approx(js)
    assert 0 <= rules_jaccard([r.text for r in first.rules], [r.text for r in second.rules]) <= 1
    for rec, res in zip(records, (first, second)):
        p = rec.payload
        assert set(p["tables"]) >= {"rules", "usage", "usage_level_0", "usage_level_1", "usage_level_2"}
        assert p["charts"]["usage_level_2"]["kind"] == "bar"
        assert len(res.usage) == 3 and [len(u) for u in res.usage] == [8, 4, 3]
        assert [len(n) for n in res.code_norms] == [8, 4, 3]
        assert res.rules and all(" <- " in r.text for r in res.rules)
        for c, tree in res.class_trees.items():
            assert tree.is_connected_to(0), c
            assert p["text"][f"dot/class_{c}"].startswith('digraph "class ')
        assert res.image_trees and all(t.tree.is_connected_to(0) for t in res.image_trees)
        media = {m["key"] for m in p["media"]}
        assert {"class_tree", "usage_histogram", "semantics_level_0", "semantics_level_2"} <= media
        assert all((tmp_path / "logs" / "version_0" / "xai" / m["path"]).is_file() for m in p["media"])
    metrics = trainer.callback_metrics
    for key in ("fidelity", "macro_f1", "edge_agreement"):
        assert f"xai/symbolic_tree/{key}" in metrics, key
    assert "xai/symbolic_tree/norm/level_0" not in metrics  # per level: logged with log_scalars="all" only
    assert "xai/drift/symbolic_tree/symbol_js/max_prev" in metrics
    csv = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "xai/symbolic_tree/fidelity" in csv

    # the checkpoint holds the symbolic model of the last explained epoch and the layer the probe found
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][cb.state_key]
    saved = state["explainer"]
    assert state["default_layers"] == ["bn"] and saved["fitter"]["total_steps"] == 60
    assert set(saved) == {"fitter"}  # no previous epoch, no history
    live = cb.fitter.model.state_dict()
    assert all(torch.equal(saved["fitter"]["model"][k], live[k]) for k in live)

    # resume: epoch 2 starts from exactly the saved symbolic model (parameters, optimiser and generator state);
    # min_steps makes it train on even where the saved model already agrees
    resumed = SymbolicTreeCallback(on_error="raise", **SMALL, min_steps=20)
    assert resumed.state_key == cb.state_key
    counter, logger = ForwardCounter(), CSVLogger(tmp_path, name="resumed")
    trainer2 = make_trainer(tmp_path, [resumed, counter], max_epochs=3, logger=logger)
    trainer2.fit(SmallNet(), BlobData(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    # the layer came from the checkpoint: no probe
    assert resumed.layers == ("bn",) and counter.calls == 4 + 4
    start = resumed.warm_start_state
    assert start is not None and start["total_steps"] == 60
    assert all(torch.equal(start["model"][k], saved["fitter"]["model"][k]) for k in saved["fitter"]["model"])
    assert torch.equal(start["generator"], saved["fitter"]["generator"])
    after = resumed.fitter.model.state_dict()
    assert not all(torch.equal(after[k], saved["fitter"]["model"][k]) for k in after)  # and it trained on
    (rec,) = read_records(tmp_path / "resumed" / "version_0", method="symbolic_tree")
    third = read_result(rec)
    assert rec.epoch == 2 and third.warm_started and third.fit.total_steps == 80


def test_a_record_holds_its_own_epoch_and_round_trips(tmp_path: Path) -> None:
    seed_everything(0)
    cb = SymbolicTreeCallback(on_error="raise", **SMALL)
    trainer = make_trainer(tmp_path, [cb], max_epochs=4)
    trainer.fit(SmallNet(), BlobData())
    records = read_records(tmp_path / "logs" / "version_0", method="symbolic_tree")
    assert [r.epoch for r in records] == [0, 1, 2, 3]
    # the last epoch's typed result, as explained, reads back from its payload unchanged
    last = cb.last_result
    assert read_result(records[-1]) == last
    assert SymbolicTreeResult.from_payload(last.to_payload(), SymbolicTreeResult.schema) == last
    sizes = []
    for rec in records:
        payload = {k: v for k, v in rec.payload.items() if k not in ("tables", "charts", "media", "text")}
        assert payload == read_result(rec).to_payload()
        assert not {"history", "drift", "warm_start_epoch", "previous_epoch"} & set(payload)
        assert not any(k.endswith(("_prev", "_epoch")) for k in payload)
        assert "history" not in rec.payload["tables"] and "history_chart" not in rec.payload["charts"]
        sizes.append(len(json.dumps(rec.payload)))
    # what varies between epochs is the explanation (more or fewer rules, trees), not its past
    assert sizes[-1] <= 1.5 * sizes[0] + 2048, sizes


def test_a_payload_without_a_required_field_is_refused_and_schema_1_reads() -> None:
    lines = (FIXTURE / "records.jsonl").read_text().splitlines()
    payload = json.loads(next(line for line in lines if '"symbolic_tree"' in line))["payload"]
    old = SymbolicTreeResult.from_payload(payload, None)  # schema 1: no schema in the record
    assert old.layer == "conv5" and old.levels == [32, 16, 6] and old.code_norms == []
    assert not old.warm_started and old.fit.total_steps == 90
    assert old.recorded["history"][0]["epoch"] == 0 and "history" not in old.to_payload()
    assert old.class_trees[0].is_connected_to(0) and old.rules[0].to_dict() == payload["rules"][0]
    assert [o.value for o in old.observations()] == [[float(n) for n in u] for u in payload["usage"]]
    for missing in ("fidelity", "class_trees"):
        broken = {k: v for k, v in payload.items() if k != missing}
        with pytest.raises(SchemaError, match=rf"symbolic_tree record payload lacks \['{missing}'\]"):
            SymbolicTreeResult.from_payload(broken, SymbolicTreeResult.schema)


def test_a_checkpoint_of_the_old_callback_loads(tmp_path: Path) -> None:
    fitter = SymbolicFitter(8, 3, SymbolicConfig(levels=(8, 4), latent_channels=8), seed=0)
    feats = torch.randn(32, 8, 4, 4, generator=torch.Generator().manual_seed(0))
    fitter.fit(feats, feats.mean((2, 3))[:, :3].argmax(1), steps=3)
    # what the callback before the typed results saved: the found layer, the fitter, the previous epoch, a history
    old = {"layer": "bn", "fitter": fitter.state_dict(), "previous": {"epoch": 1, "usage": [], "rules": []},
           "history": [{"epoch": 0}, {"epoch": 1}]}  # fmt: skip
    cb = SymbolicTreeCallback(**SMALL)
    cb.load_state_dict({"explained_epochs": [0, 1], "explainer": old})
    assert cb.layers == ("bn",) and cb.explained_epochs == [0, 1]
    assert cb.fitter is not None and cb.fitter.total_steps == 3
    assert cb.state_dict()["explainer"].keys() == {"fitter"}
    given = SymbolicTreeCallback(layer="conv", **SMALL)  # a layer the user names wins
    given.load_state_dict({"explained_epochs": [0, 1], "explainer": old})
    assert given.layers == ("conv",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": (8, 16)}, r"levels=\[8, 16\] does not shrink"),
        ({"levels": []}, "non-empty list"),
        ({"levels": (8, 4), "top_symbols": 4}, "does not shrink towards top_symbols=4"),
        ({"layer": ""}, "layer must be a dotted layer name or None"),
        ({"steps_per_epoch": 0}, "steps_per_epoch must be an integer >= 1"),
        ({"warmup_steps": -1}, "warmup_steps must be an integer >= 0"),
        ({"holdout": 0.0}, r"holdout must lie in \(0.0, 1.0\)"),
        ({"prune": 1.5}, r"prune must lie in \[0.0, 1.0\]"),
        ({"class_share": 0}, r"class_share must lie in \(0.0, 1.0\]"),
        ({"semantic_images": 0}, "semantic_images must be an integer >= 1"),
        ({"latent_channels": 0}, "latent_channels must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"loss_weights": {"alignment": 1.0}}, r"loss_weights has unknown keys \['alignment'\]"),
        ({"loss_weights": {"edge": -1.0}}, "LossWeights.edge must be a finite number >= 0"),
        ({"class_names": "ab"}, "class_names must be a list of str"),
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1"),
        ({"stop_at": 1.5}, r"stop_at must lie in \(0.0, 1.0\]"),
        ({"min_steps": -1}, "min_steps must be an integer >= 0"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        SymbolicTreeCallback(**kwargs)


class FlatNet(SmallNet):
    """No feature map at all: a linear classifier on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.head = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flat(x))


def test_bad_layer_and_too_many_top_symbols_are_reported_in_a_trainer(tmp_path: Path) -> None:
    # a layer that is not a feature map: the head's pooled input
    cb = SymbolicTreeCallback(layer="pool", on_error="raise", **SMALL)
    with pytest.raises(RuntimeError, match=r"layer 'pool' outputs shape \[64, 8, 1, 1\], not a feature map"):
        make_trainer(tmp_path, [cb], max_epochs=1, logger=False).fit(SmallNet(), BlobData())
    # a name that is not a sub-module fails at setup, listing close names
    with pytest.raises(LayerNotFoundError, match="Closest valid names"):
        make_trainer(
            tmp_path,
            [SymbolicTreeCallback(layer="bnn", on_error="raise", **SMALL)],
            max_epochs=1,
            logger=False,
        ).fit(SmallNet(), BlobData())
    # more top symbols than the model's 3 classes (known only once the logits are seen)
    cb = SymbolicTreeCallback(layer="conv", on_error="raise", **{**SMALL, "levels": (8, 6)}, top_symbols=5)
    with pytest.raises(RuntimeError, match="top_symbols=5 is more than the 3 classes"):
        make_trainer(tmp_path, [cb], max_epochs=1, logger=False).fit(SmallNet(), BlobData())
    # the default layer on a model without any spatial feature map
    cb = SymbolicTreeCallback(on_error="raise", **SMALL)
    with pytest.raises(RuntimeError, match="FlatNet has no layer that outputs a spatial feature map"):
        make_trainer(tmp_path, [cb], max_epochs=1, logger=False).fit(FlatNet(), BlobData())
    # with on_error="warn" training goes on and an error record is written
    cb = SymbolicTreeCallback(layer="pool", **SMALL)
    trainer = make_trainer(tmp_path / "warn", [cb], max_epochs=1)
    with pytest.warns(UserWarning, match="failed at epoch 0 and training goes on"):
        trainer.fit(SmallNet(), BlobData())
    (err,) = read_records(trainer.log_dir, method="symbolic_tree")
    assert err.name == "error" and "not a feature map" in err.payload["message"]


def test_preset_shows_every_argument_at_its_default() -> None:
    spec = yaml.safe_load((ROOT / "callbacks" / "symbolic_tree.yaml").read_text())["trainer"]["callbacks"][0]
    module, _, name = spec["class_path"].rpartition(".")
    assert (module, name) == ("lightning_xai.callbacks", "SymbolicTreeCallback")
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()  # what LightningCLI sees: jsonargparse follows **base into XAICallback
    parser.add_class_arguments(SymbolicTreeCallback, "cb")
    defaults = vars(parser.get_defaults().cb)
    shown = spec["init_args"]
    assert set(defaults) - set(shown) == {"batch_to_input"}  # a callable has no YAML form
    for key, value in shown.items():
        default = defaults[key]
        assert value == (list(default) if isinstance(default, tuple) else default), key
    assert isinstance(SymbolicTreeCallback(**shown), SymbolicTreeCallback)


# ------------------------------------------------------------------------------------------------ DDP


class FakeStrategy:
    """Stands in for a DDP strategy: rank 0's broadcast message is what every rank receives."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if obj is not None:
            self.sent.append(obj)
        return self.sent[-1]


class FakeTrainer:
    def __init__(self, rank: int, strategy: FakeStrategy, datamodule: Any = None) -> None:
        self.world_size, self.global_rank, self.is_global_zero = 2, rank, rank == 0
        self.strategy, self.current_epoch, self.datamodule = strategy, 0, datamodule


def test_under_ddp_rank_zero_fits_and_the_other_ranks_receive_its_model_and_scalars() -> None:
    # the gathered sample is the same on every rank; rank 0 fits, broadcasts, the others load
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(48, 8, 4, 4, generator=g)
    logits = acts.mean((2, 3))[:, :3] * 5
    sample = ValidationSample(torch.arange(48), acts.mean((2, 3)), logits, layers={"bn": acts})
    strategy, module = FakeStrategy(), SmallNet()
    ranks = [SymbolicTreeCallback(layer="bn", on_error="raise", **SMALL) for _ in range(2)]
    zero = ranks[0].explain(FakeTrainer(0, strategy), module, sample)
    other = ranks[1].explain(FakeTrainer(1, strategy), module, sample)
    # the whole result too, so a drift monitor sees the same result on every rank
    assert other == zero and other.logged(0).scalars == zero.logged(0).scalars and zero.fidelity
    assert other.observations() == zero.observations()
    a, b = ranks[0].fitter.model.state_dict(), ranks[1].fitter.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [cb.explainer_state()["fitter"]["total_steps"] for cb in ranks]
    assert steps[0] == steps[1] >= SMALL["warmup_steps"]
    # a failure on rank 0 reaches the other ranks instead of leaving them waiting
    bad = ValidationSample(torch.arange(48), acts.mean((2, 3)), logits, layers={"bn": acts[:, :, :1, :1]})
    failing = FakeStrategy()
    with pytest.raises(FeatureMapError):
        SymbolicTreeCallback(layer="bn", **SMALL).explain(FakeTrainer(0, failing), module, bad)
    with pytest.raises(RuntimeError, match="rank 0 failed to fit the symbolic model: FeatureMapError"):
        SymbolicTreeCallback(layer="bn", **SMALL).explain(FakeTrainer(1, failing), module, bad)
