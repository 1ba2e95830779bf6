"""VisionLogic rules (lightning_xai.logic) and LogicRulesCallback, against hand-computed values and the world.

Ground truth used here: hand-computed pathways/thresholds/rules on a linear head with known weights; the
model's own predictions (pathways, rule fidelity); a toy network whose neuron reads one known image patch;
and the planted-concept world's exact object masks (grounded regions).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from _models import BlobData, NoHeadNet, SmallNet, make_trainer
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_xai.callbacks import ConceptDriftMonitor
from lightning_xai.callbacks.logic_rules import LogicRulesCallback
from lightning_xai.capture import HeadNotFoundError, LayerNotFoundError
from lightning_xai.logic import (
    SCORINGS,
    GroundingLayerError,
    HeadMismatchError,
    LinearHead,
    Predicate,
    RuleClassifier,
    Vocabulary,
    crossfit_predictions,
    evaluate_rules,
    extract_pathways,
    find_grounding_layer,
    fit_vocabulary,
    gaussian_blur,
    global_rules,
    ground_predicates,
    head_inputs,
    local_rules,
    perturb,
    perturbation_study,
    random_rectangle,
    region_from_map,
    vocabulary_jaccard,
)
from lightning_xai.records import read_records, run_dir_of

# ------------------------------------------------------------------------------------------------ helpers


class ForwardCounter(Callback):
    """Counts the LightningModule's forward calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._handle = None

    def setup(self, trainer, pl_module, stage):
        def count(module, args):
            self.calls += 1

        self._handle = pl_module.register_forward_pre_hook(count)

    def teardown(self, trainer, pl_module, stage):
        if self._handle is not None:
            self._handle.remove()


def world_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        z = model.head_input(images)
        return z, model.head(z)


# Hand-built linear head (D = 3 features, C = 3 classes), no bias:
#   class 0: [2, 0, -0.5]   class 1: [0, 1, 1]   class 2: [0, 2, -1]
W_HAND = torch.tensor([[2.0, 0.0, -0.5], [0.0, 1.0, 1.0], [0.0, 2.0, -1.0]])
# Source images (label in the comment); logits = W z, pathways worked out by hand:
#   z1 [1, .5, -1]   label 0: logits [2.5, -.5, 2], pred 0; contributions to class 0: [2, 0, .5] -> f0 first;
#                                 prefix {f0}: [2, 0, 0] -> 0.                              pathway [f0+]
#   z5 [1.5, 0, 0]   label 0: logits [3, 0, 0], pred 0; prefix {f0}: [3, 0, 0] -> 0.       pathway [f0+]
#   z3 [0, 2, 1.5]   label 1: logits [-.75, 3.5, 2.5], pred 1; contributions [0, 2, 1.5] -> f1, f2;
#                                 prefix {f1}: [0, 2, 4] -> 2 (no); {f1, f2}: [-.75, 3.5, 2.5] -> 1.
#                                                                                           pathway [f1+, f2+]
#   z7 [0, 1, 2]     label 1: logits [-1, 3, 0], pred 1; contributions [0, 1, 2] -> f2 first;
#                                 prefix {f2}: [-1, 2, -2] -> 1.                            pathway [f2+]
#   z4 [-1, .5, -2.5] label 2: logits [-.75, -2, 3.5], pred 2; contributions [0, 1, 2.5] -> f2 first;
#                                 prefix {f2}: [1.25, -2.5, 2.5] -> 2. z2 < 0 -> signed id 2 + 3 = 5.
#                                                                                           pathway [f2-]
#   z6 [.8, 0, 0]    label 1 (misclassified): logits [1.6, 0, 0], pred 0.                  pathway [f0+]
Z_HAND = torch.tensor(
    [[1.0, 0.5, -1.0], [1.5, 0.0, 0.0], [0.0, 2.0, 1.5], [0.0, 1.0, 2.0], [-1.0, 0.5, -2.5], [0.8, 0.0, 0.0]],
    dtype=torch.float64,  # thresholds are the features' own values: float64 keeps 0.8 exactly 0.8
)
Y_HAND = torch.tensor([0, 0, 1, 1, 2, 1])


def hand_head() -> LinearHead:
    return LinearHead(W_HAND, torch.zeros(3))


# ------------------------------------------------------------------------------------------ core: by hand


def test_hand_built_head_pathways_vocabularies_thresholds_and_rules() -> None:
    head = hand_head()
    paths = extract_pathways(Z_HAND, head)
    assert paths.predictions.tolist() == [0, 0, 1, 1, 2, 0]
    assert [paths.pathway(i) for i in range(6)] == [[0], [0], [1, 2], [2], [5], [0]]
    assert paths.lengths.tolist() == [1, 1, 2, 1, 1, 1]

    vocab = fit_vocabulary(Z_HAND, paths, 3, labels=Y_HAND)  # paper protocol: z6 (wrong) is no source
    c0, c1, c2 = vocab.classes
    # class 0: f0+ selected by z1, z5 -> t = min(1, 1.5) = 1, count 2 of 2 source images
    assert c0.n_source == 2 and [
        (p.feature, p.sign, p.threshold, p.count, p.frequency) for p in c0.predicates
    ] == [(0, 1, 1.0, 2, 1.0)]
    # class 1: f2+ by z3 (1.5) and z7 (2) -> t = 1.5, count 2; f1+ by z3 only -> t = 2, count 1
    assert [(p.feature, p.sign, p.threshold, p.count, p.frequency) for p in c1.predicates] == [
        (2, 1, 1.5, 2, 1.0),
        (1, 1, 2.0, 1, 0.5),
    ]
    # n80: f2 covers 2 of 3 selections (67% < 80%), f2 + f1 cover all -> 2
    assert (c0.n80, c1.n80, c2.n80) == (1, 2, 1)
    # class 2: the negative branch, t = max(-2.5)
    assert [(p.feature, p.sign, p.threshold, p.signed_id) for p in c2.predicates] == [(2, -1, -2.5, 5)]
    assert c2.predicates[0].text() == "f2 <= -2.5"
    # the "predicted" protocol also takes the misclassified z6 (predicted 0): class 0's threshold drops to .8
    loose = fit_vocabulary(Z_HAND, paths, 3, labels=Y_HAND, source="predicted")
    assert (loose[0].predicates[0].threshold, loose[0].predicates[0].count, loose[0].n_source) == (0.8, 3, 3)

    # global rule of class 1: two source pathways, one each; the shorter term first
    assert global_rules(vocab)[1].text() == "class 1 <- (f2 >= 1.5) [50%] OR (f1 >= 2 AND f2 >= 1.5) [50%]"

    # local rules of new images (pathways by hand as above):
    #   q1 [1.2, 0, 0]: pred 0, pathway [f0+], 1.2 >= 1 active
    #   q2 [.9, 0, 0]:  pred 0, pathway [f0+], .9 < 1 inactive -> no eligible predicate
    #   q3 [0, 2.5, 1.6]: logits [-.8, 4.1, 3.4]; prefix {f1}: [0, 2.5, 5] -> 2; {f1, f2} -> 1; both active
    #   q4 [0, 0, -3]: logits [1.5, -3, 3]; prefix {f2}: -> 2; -3 <= -2.5 active
    q = torch.tensor(
        [[1.2, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 2.5, 1.6], [0.0, 0.0, -3.0]], dtype=torch.float64
    )
    rules = local_rules(q, vocab, head)
    assert [r.text() for r in rules] == [
        "class 0 <- f0 >= 1",
        "class 0 <- (no eligible predicate)",
        "class 1 <- f1 >= 2 AND f2 >= 1.5",
        "class 2 <- f2 <= -2.5",
    ]
    assert rules[1].in_vocabulary == 1 and rules[1].retention == 0.0 and rules[2].eligibility == 1.0
    assert rules[0].text(class_names=["circle", "square", "triangle"]) == "class 0 (circle) <- f0 >= 1"

    # rule classifier, share scoring: q1 -> class 0 has share 1, others 0. q2: every share is 0, a tie the
    # model's logit breaks (class 0). Restricted logit of q2: class 0 = 2 * .9 = 1.8, class 1 = 0 + 0,
    # class 2 = -1 * 0 = 0 -> class 0 without a tie.
    logits = head.logits(q)
    share = evaluate_rules(RuleClassifier(vocab, head, "share"), q, logits)
    restricted = evaluate_rules(RuleClassifier(vocab, head, "restricted_logit"), q, logits)
    assert share.predictions.tolist() == restricted.predictions.tolist() == [0, 0, 1, 2]
    assert share.fidelity == restricted.fidelity == 1.0
    assert share.tie_share == 0.25 and restricted.tie_share == 0.0
    assert RuleClassifier(vocab, head, "restricted_logit").scores(q)[1].tolist() == pytest.approx(
        [1.8, 0.0, 0.0]
    )


def test_class_without_correct_sample_is_empty_and_never_predicted() -> None:
    head = hand_head()
    labels = Y_HAND.clone()
    labels[4] = 0  # the only class-2 image is now misclassified: class 2 has no source image
    vocab = fit_vocabulary(Z_HAND, extract_pathways(Z_HAND, head), 3, labels=labels)
    assert (
        vocab[2].empty and vocab[2].n_source == 0 and vocab[2].n80 == 0 and math.isnan(vocab[2].n80_fraction)
    )
    assert global_rules(vocab)[2].text() == "class 2 <- (empty: no correctly classified source image)"
    q = torch.tensor([[0.0, 0.0, -3.0]])  # the model says class 2
    for scoring in SCORINGS:
        clf = RuleClassifier(vocab, head, scoring)
        assert clf.scores(q)[0, 2] == -math.inf
        assert clf.predict(q, head.logits(q)).tolist() != [2]
    assert local_rules(q, vocab, head)[0].text() == "class 2 <- (no eligible predicate)"
    # Jaccard: both empty -> undefined; one empty -> 0; identical -> 1
    full = fit_vocabulary(Z_HAND, extract_pathways(Z_HAND, head), 3, labels=Y_HAND)
    assert vocabulary_jaccard(full, vocab)[:2] == [1.0, 1.0] and vocabulary_jaccard(full, vocab)[2] == 0.0
    assert math.isnan(vocabulary_jaccard(vocab, vocab)[2])


def test_head_mismatch_and_missing_head_are_reported() -> None:
    head = hand_head()
    head.check(Z_HAND, head.logits(Z_HAND).float())
    with pytest.raises(HeadMismatchError, match="differs from the model's logits.*temperature"):
        head.check(Z_HAND, head.logits(Z_HAND) / 2.0)  # a temperature after the head
    with pytest.raises(HeadMismatchError, match=r"expects \[N, 3\]"):
        head.check(Z_HAND[:, :2], head.logits(Z_HAND))
    with pytest.raises(HeadNotFoundError, match="has no nn.Linear layer"):
        LinearHead.from_model(NoHeadNet())


def test_vocabulary_round_trips_through_dict() -> None:
    head = hand_head()
    vocab = fit_vocabulary(Z_HAND, extract_pathways(Z_HAND, head), 3, labels=Y_HAND)
    back = type(vocab).from_dict(vocab.to_dict())
    assert back.to_dict() == vocab.to_dict()
    assert vocabulary_jaccard(vocab, back) == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------- grounding on a known neuron


class PatchNet(nn.Module):
    """Neuron 0 = mean of ReLU(red - 0.5) over the image: it reads the bright red pixels only."""

    def __init__(self) -> None:
        super().__init__()
        self.read = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.read.weight.zero_()
            self.read.weight[0, 0] = 1.0  # red channel
            self.read.weight[1, 2] = 1.0  # blue channel
            self.read.bias.fill_(-0.5)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.act(self.read(x))).flatten(1))


def test_grounding_finds_the_patch_the_neuron_reads_and_random_rectangles_do_not() -> None:
    g = torch.Generator().manual_seed(0)
    n, size = 6, 32
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    truth = []
    for i in range(n):
        y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
        images[i, 0, y0 : y0 + 8, x0 : x0 + 8] = 1.0  # a bright red 8x8 patch
        mask = np.zeros((size, size), bool)
        mask[y0 : y0 + 8, x0 : x0 + 8] = True
        truth.append(mask)
    net = PatchNet().eval()
    z = head_inputs(net, images)
    # predicate "f0 >= 90% of its clean value" per image
    preds = [[Predicate(0, 0, 1, 0.9 * float(z[i, 0]), 1, 1.0, 2)] for i in range(n)]
    assert find_grounding_layer(net, images) == "act"
    report = ground_predicates(net, images, preds, layer="act", seed=0)
    summary = report.summary()
    assert summary["guided_success"] == 1.0 and summary["n_tests"] == n
    for t in report.tests:
        inside = (t.region & truth[t.image]).sum() / t.region.sum()
        assert inside > 0.6  # the accepted region is (mostly) the patch
        assert t.value_after < t.predicate.threshold <= t.value
        for x0, y0, x1, y1 in t.boxes:
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
    # a rectangle of the same (small) area placed at random rarely hits the patch
    assert summary["random_success"] < 0.5
    assert summary["occupancy_guided"] < 0.15


def test_sweeps_stop_at_acceptance_and_agree_with_evaluating_every_step() -> None:
    from lightning_xai.logic.grounding import (
        DEFAULT_CUTOFFS,
        _evaluate_masks,
        _make_sweep,
        _run_sweeps,
        _Runner,
    )

    g = torch.Generator().manual_seed(3)
    n, size = 8, 32
    images = torch.rand(n, 3, size, size, generator=g)
    net = PatchNet().eval()
    z = head_inputs(net, images)
    blurred = gaussian_blur(images, 3.0)
    # thresholds from barely below the clean value (early acceptance) to far below it (late or never)
    pairs = [
        (i, Predicate(0, 0, 1, float(z[i, 0]) * frac, 1, 1.0, 2))
        for i in range(n)
        for frac in (0.97, 0.8, 0.5, 0.1)
    ]
    rng = np.random.default_rng(0)
    # a bump per pair: its region grows as the cutoff falls
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(4, size - 4, (len(pairs), 2))
    heat = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / (2 * 6.0**2))
    sweeps = {m: _make_sweep(heat[m], DEFAULT_CUTOFFS, rng) for m in range(len(pairs))}

    lazy = _Runner(net, net.head, None, batch_size=64)
    images_run = []
    lazy.model = lambda x: (images_run.append(x.shape[0]), net(x))[1]
    guided, random = _run_sweeps(lazy, images, blurred, pairs, sweeps)

    # every step of every sweep, evaluated
    full = _Runner(net, net.head, None, batch_size=64)
    expected_g, expected_r, total = {}, {}, 0
    for m, sw in sweeps.items():
        i, p = pairs[m]
        firsts = []
        for masks in (sw.regions, sw.randoms):
            steps = [k for k, mask in enumerate(masks) if mask is not None and mask.any()]
            values = _evaluate_masks(full, images, blurred, [(i, masks[k], 0) for k in steps])
            total += len(steps)
            off = [k for k, v in zip(steps, values) if bool(p.is_strictly_inactive(v[None])[0])]
            firsts.append(off[0] if off else None)
        expected_g[m] = firsts[0]
        # only the steps up to the guided acceptance count for the random control
        expected_r[m] = (
            firsts[1] if firsts[1] is not None and (firsts[0] is None or firsts[1] <= firsts[0]) else None
        )
    assert guided == expected_g and random == expected_r
    accepted_at = [k for k in guided.values() if k is not None]
    assert len(set(accepted_at)) >= 3 and None in guided.values()  # early, late and never: the test has teeth
    assert sum(images_run) < 0.8 * total  # sweeps that ended early were not run on


def test_scorecam_pairs_of_one_image_share_its_masked_passes() -> None:
    from lightning_xai.logic.grounding import _Runner, _scorecam

    net = PatchNet().eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    feat, sign = torch.tensor([0, 1, 0]), torch.tensor([1, 1, -1])
    shared = _Runner(net, net.head, net.act, batch_size=64)
    maps = _scorecam(shared, images, feat, sign, image_of=torch.tensor([1, 1, 0]))
    for m, row in enumerate([1, 1, 0]):
        alone = _Runner(net, net.head, net.act, batch_size=64)
        one = _scorecam(alone, images[row : row + 1], feat[m : m + 1], sign[m : m + 1])
        assert torch.equal(maps[m], one[0])
        assert alone.forward_calls == 2  # the clean image, then its masked copies
    assert shared.forward_calls == 4  # two images, not three pairs
    assert not torch.equal(maps[0], maps[1])  # the neurons differ, so do the maps


def test_perturbation_study_takes_known_clean_features() -> None:
    net = PatchNet().eval()
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    z = head_inputs(net, images)
    preds = [[Predicate(0, 0, 1, 0.9 * float(z[i, 0]), 1, 1.0, 2)] for i in range(4)]
    computed = perturbation_study(net, images, preds, levels=[0.5, 1.0])
    given = perturbation_study(net, images, preds, levels=[0.5, 1.0], clean_features=z)
    assert given.to_dict() | {"forward_calls": None} == computed.to_dict() | {"forward_calls": None}
    assert given.forward_calls == computed.forward_calls - 1  # no clean pass
    # the clean features decide which predicates are followed: none is active on zeros
    assert perturbation_study(net, images, preds, clean_features=torch.zeros_like(z)).n_predicates == 0
    with pytest.raises(ValueError, match="clean_features for 3 images, but 4"):
        perturbation_study(net, images, preds, clean_features=z[:3])


def test_region_rectangle_and_blur_helpers() -> None:
    heat = np.zeros((10, 10))
    heat[1:3, 1:3] = 1.0
    heat[6, 5:9] = 0.7  # a second component, kept at cutoff 0.6, dropped at 0.8
    mask, boxes = region_from_map(heat, 0.6)
    assert boxes == [(1, 1, 3, 3), (5, 6, 9, 7)] and mask.sum() == 4 + 4
    assert region_from_map(heat, 0.8)[1] == [(1, 1, 3, 3)]
    assert region_from_map(np.zeros((4, 4)), 0.5)[1] == []
    rmask, (x0, y0, x1, y1) = random_rectangle(20, 5.0, 10, 10, np.random.default_rng(1))
    assert rmask.sum() == (x1 - x0) * (y1 - y0) == 20 and (x1 - x0) / (y1 - y0) == 5.0
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)  # a constant image is unchanged (edges replicated)


# ------------------------------------------------------------------------------ the trained world model


@pytest.mark.slow
def test_pathway_reproduces_prediction_and_no_shorter_prefix_does(trained_world) -> None:
    model, dm = trained_world
    z, logits = world_features(model, dm.val_set.images[:300])
    head = LinearHead.from_module(model.head)
    head.check(z, logits)
    pred = logits.argmax(1)
    paths = extract_pathways(z, head, pred)
    assert paths.reached.all()
    w, b, zz = head.weight, head.bias, z.double()
    for i in range(len(paths)):
        contrib = zz[i] * w[pred[i]]
        order = np.argsort(-contrib.numpy(), kind="stable")
        path = paths.pathway(i)
        assert [s % head.num_features for s in path] == order[: len(path)].tolist()
        for k in range(1, len(path) + 1):
            partial = b + (w[:, order[:k]] * zz[i, order[:k]]).sum(1)
            assert (int(partial.argmax()) == int(pred[i])) == (k == len(path)), (i, k)
        for s in path:  # sign of the signed id = sign of the activation
            j = s % head.num_features
            assert (s >= head.num_features) == bool(zz[i, j] < 0)


@pytest.mark.slow
def test_rule_classifier_agrees_with_the_model_on_validation(trained_world) -> None:
    model, dm = trained_world
    head = LinearHead.from_module(model.head)
    z_train, l_train = world_features(model, dm.train_set.images)
    z_val, l_val = world_features(model, dm.val_set.images)
    vocab = fit_vocabulary(
        z_train, extract_pathways(z_train, head, l_train.argmax(1)), 6, labels=dm.train_set.labels
    )
    assert not any(cv.empty for cv in vocab.classes)
    held_out = {
        s: evaluate_rules(RuleClassifier(vocab, head, s), z_val, l_val, dm.val_set.labels) for s in SCORINGS
    }
    # rules learned on training images reproduce the model on >= 90% of validation images
    assert max(e.fidelity for e in held_out.values()) >= 0.90
    assert held_out["share"].coverage > 0.95
    # cross-fitting on the validation sample alone (what the callback does) also stays >= 90%
    oof = crossfit_predictions(z_val, l_val, head, dm.val_set.labels, folds=2, seed=0)
    val_vocab = fit_vocabulary(
        z_val, extract_pathways(z_val, head, l_val.argmax(1)), 6, labels=dm.val_set.labels
    )
    crossfit = {
        s: evaluate_rules(
            RuleClassifier(val_vocab, head, s), z_val, l_val, dm.val_set.labels, predictions=oof[s]
        )
        for s in SCORINGS
    }
    assert max(e.fidelity for e in crossfit.values()) >= 0.90
    # the model is near perfect, so the rules' accuracy follows their fidelity
    for e in crossfit.values():
        assert abs(e.accuracy - e.fidelity) <= 1.0 - e.model_accuracy + 1e-6


@pytest.fixture(scope="module")
def world_grounding(trained_world):
    """Grounding of the local-rule predicates of 48 correctly classified validation images."""
    model, dm = trained_world
    ds = dm.val_set
    images = ds.images[:240]
    z, logits = world_features(model, images)
    head = LinearHead.from_module(model.head)
    paths = extract_pathways(z, head, logits.argmax(1))
    vocab = fit_vocabulary(z, paths, 6, labels=ds.labels[:240])
    rules = local_rules(z, vocab, head, pathways=paths)
    rows = [i for i, r in enumerate(rules) if r.predicates and int(logits[i].argmax()) == int(ds.labels[i])][
        :48
    ]
    layer = find_grounding_layer(model, images)
    report = ground_predicates(model, images[rows], [rules[i].predicates for i in rows], layer, seed=0)
    return {"report": report, "rows": rows, "layer": layer, "dataset": ds, "rule": dm.rule}


@pytest.mark.slow
def test_grounding_guided_beats_area_matched_random(world_grounding) -> None:
    report = world_grounding["report"]
    s = report.summary()
    assert world_grounding["layer"] == "conv4.2"  # last feature map of at least 7x7 (8x8 here)
    assert s["n_tests"] >= 40 and s["skipped"] == 0
    assert s["guided_success"] >= 0.75
    # same areas, same number of attempts: where the CAM points matters
    assert s["guided_success"] >= s["random_success"] + 0.15
    both = [(t.accepted, t.random_accepted) for t in report.counted]
    assert sum(g and not r for g, r in both) > 3 * sum(r and not g for g, r in both)


@pytest.mark.slow
def test_accepted_regions_overlap_the_object_more_than_random_regions(world_grounding) -> None:
    report, ds, rule = world_grounding["report"], world_grounding["dataset"], world_grounding["rule"]
    rows = world_grounding["rows"]
    # classes whose label depends on the object's shape (per the world's label rule)
    shape_classes = {
        c for c in range(rule.num_classes) if any(k.startswith("shape:") for k in rule.relevant_concepts(c))
    }
    diffs = []
    for t in report.counted:
        i = rows[t.image]
        if not t.accepted or int(ds.labels[i]) not in shape_classes:
            continue
        obj = ds.scene(i).object_mask.numpy()
        guided = (t.region & obj).sum() / t.region.sum()
        rnd = (t.matched_random_region & obj).sum() / t.matched_random_region.sum()
        diffs.append(guided - rnd)
    diffs = np.array(diffs)
    assert len(diffs) >= 30
    # share of the region on the object: guided minus area-matched random, paired per test
    assert diffs.mean() > 0.15
    assert diffs.mean() > 3 * diffs.std(ddof=1) / math.sqrt(len(diffs))


@pytest.mark.slow
def test_pipeline_is_deterministic_for_a_seed(trained_world) -> None:
    model, dm = trained_world
    images = dm.val_set.images[:64]

    def run(seed: int) -> tuple[dict, list, dict, dict]:
        z, logits = world_features(model, images)
        head = LinearHead.from_module(model.head)
        paths = extract_pathways(z, head, logits.argmax(1))
        vocab = fit_vocabulary(z, paths, 6, labels=dm.val_set.labels[:64])
        rules = local_rules(z, vocab, head, pathways=paths)
        oof = crossfit_predictions(z, logits, head, dm.val_set.labels[:64], seed=seed)
        rows = [i for i, r in enumerate(rules) if r.predicates][:6]
        rep = ground_predicates(
            model, images[rows], [rules[i].predicates for i in rows], "conv4.2", seed=seed
        )
        pert = perturbation_study(
            model, images[rows], [rules[i].predicates for i in rows], levels=[0.5], seed=seed
        )
        return (
            vocab.to_dict(),
            [t.to_dict() for t in rep.tests],
            {k: v.tolist() for k, v in oof.items()},
            pert.to_dict(),
        )

    first, second, other = run(0), run(0), run(1)
    assert first == second
    assert first[0] == other[0]  # vocabularies do not depend on the seed
    assert [t["boxes"] for t in first[1]] == [t["boxes"] for t in other[1]]  # nor do the guided regions
    assert [t["random_box"] for t in first[1]] != [
        t["random_box"] for t in other[1]
    ]  # the random control does


@pytest.mark.slow
def test_perturbations_reduce_predicate_survival(trained_world) -> None:
    model, dm = trained_world
    images = dm.val_set.images[:32]
    z, logits = world_features(model, images)
    head = LinearHead.from_module(model.head)
    paths = extract_pathways(z, head, logits.argmax(1))
    rules = local_rules(z, fit_vocabulary(z, paths, 6, labels=dm.val_set.labels[:32]), head, pathways=paths)
    study = perturbation_study(model, images, [r.predicates for r in rules], levels=[0.1, 1.0], seed=0)
    assert study.n_images == 32
    for kind in ("blur", "occlusion", "noise"):
        assert study.survival[kind][1] < study.survival[kind][0]  # stronger -> fewer predicates survive
    # a predicate that holds for any input survives everything: survival measures the predicate, not noise
    always = [[Predicate(0, 3, 1, -1e9, 1, 1.0, 64)] for _ in range(4)]
    assert all(
        v == [1.0, 1.0]
        for v in perturbation_study(model, images[:4], always, levels=[0.1, 1.0]).survival.values()
    )
    # level semantics: occlusion covers level/2 of the image; noise std is level * the image's std
    x = torch.rand(2, 3, 64, 64)
    occluded = perturb(x, "occlusion", 1.0, torch.Generator().manual_seed(0))
    assert (occluded != x).any(1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    noisy = perturb(x, "noise", 0.5, torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.5 * x[0].std().item(), rel=0.05)


# --------------------------------------------------------------------------------------- other models


def test_torchvision_resnet18_fc_head() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    from lightning_xai.world import random_set

    images = random_set(24, seed=3)
    head = LinearHead.from_model(net)
    assert head.name == "fc"
    z = head_inputs(net, images)
    with torch.no_grad():
        logits = net(images)
    head.check(z, logits)
    pred = logits.argmax(1)
    paths = extract_pathways(z, head, pred)
    assert paths.reached.all()
    vocab = fit_vocabulary(z, paths, 6, source="predicted")
    # post-ReLU average-pooled features are >= 0: only "+" predicates (as the specification notes)
    assert vocab.predicates and all(p.sign == 1 for p in vocab.predicates)
    rules = local_rules(z, vocab, head, pathways=paths)
    assert all(r.predicates for r in rules)  # in-sample: every pathway predicate holds on its own image
    assert find_grounding_layer(net, images) == "layer2"  # 8x8 at 64 px; layer4 is 2x2
    assert find_grounding_layer(net, torch.zeros(1, 3, 224, 224)) == "layer4"  # 7x7, the reference's layer
    rows = [0, 1, 2]
    report = ground_predicates(net, images[rows], [rules[i].predicates[:1] for i in rows], "layer2", seed=0)
    assert len(report.tests) == 3
    for t in report.counted:
        if t.accepted:
            assert t.region.shape == (64, 64) and 0 < t.area <= 1 and t.value_after < t.predicate.threshold


class DropoutHeadNet(SmallNet):
    """SmallNet whose head is ``classifier = Sequential(Dropout, Linear)``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__(classes=classes)
        del self.head
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_head_inside_sequential_with_dropout_in_a_trainer(tmp_path: Path) -> None:
    seed_everything(0)
    model = DropoutHeadNet()
    assert LinearHead.from_model(model).name == "classifier.1"
    cb = LogicRulesCallback(on_error="raise", max_grounding_images=4, max_perturbation_images=4)
    make_trainer(tmp_path, [cb], max_epochs=2).fit(model, BlobData())
    assert model.training  # modes restored after explaining
    records = read_records(tmp_path / "logs" / "version_0", method="logic_rules")
    assert [r.epoch for r in records] == [0, 1]
    p = records[-1].payload
    assert p["head"] == "classifier.1" and p["num_features"] == 8
    assert p["grounding"]["layer"] == "bn" and p["grounding"]["n_tests"] >= 1


# -------------------------------------------------------------------------------------- the callback


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_grounding_images": -1}, "max_grounding_images must be an integer >= 0"),
        ({"max_predicates_per_image": 0}, "max_predicates_per_image must be an integer >= 1"),
        ({"grounding_every": 0}, "grounding_every must be an integer >= 1"),
        ({"scoring": "vote"}, r"choose one of \['auto', 'restricted_logit', 'share'\]"),
        ({"source": "all"}, r"choose one of \['correct', 'predicted'\]"),
        ({"crossfit_folds": 1}, "crossfit_folds must be 0"),
        ({"perturbation_levels": [0.0]}, r"strengths in \(0, 1\]"),
        ({"threshold_quantile": 0.5}, r"threshold_quantile must lie in \[0, 0.5\)"),
        ({"grounding_layer": ""}, "grounding_layer must be a dotted layer name"),
        ({"class_names": "abc"}, "class_names must be a list of str"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        LogicRulesCallback(**kwargs)


def test_grounding_layer_that_is_not_a_feature_map_is_rejected(tmp_path: Path) -> None:
    net = SmallNet()
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(
        GroundingLayerError, match=r"'pool' outputs shape \[1, 8, 1, 1\], not a feature map.*\['conv', 'bn'\]"
    ):
        find_grounding_layer(net, x, layer="pool")
    with pytest.raises(GroundingLayerError, match="runs after the classifier head"):
        find_grounding_layer(
            nn.Sequential(nn.Flatten(), nn.Linear(192, 4), nn.Unflatten(1, (1, 2, 2))), x, head="1", layer="2"
        )
    with pytest.raises(GroundingLayerError, match="has no layer that outputs a feature map"):
        find_grounding_layer(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), x)
    # in a Trainer: a wrong name fails at setup with close names; a non-feature-map layer at the first epoch
    with pytest.raises(LayerNotFoundError, match="Closest valid names"):
        make_trainer(
            tmp_path, [LogicRulesCallback(grounding_layer="cnv", on_error="raise")], max_epochs=1
        ).fit(SmallNet(), BlobData())
    trainer = make_trainer(
        tmp_path, [LogicRulesCallback(grounding_layer="pool", on_error="raise")], max_epochs=1
    )
    with pytest.raises(RuntimeError, match="failed at epoch 0: grounding_layer='pool' outputs shape") as err:
        trainer.fit(SmallNet(), BlobData())
    assert isinstance(err.value.__cause__, GroundingLayerError)


def test_model_without_linear_head_is_rejected(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [LogicRulesCallback(on_error="raise")], max_epochs=1)
    with pytest.raises(HeadNotFoundError, match="has no nn.Linear layer"):
        trainer.fit(NoHeadNet(), BlobData())
    # a head that is not linear, named: VisionLogic needs W and b, and says so
    trainer = make_trainer(tmp_path, [LogicRulesCallback(head="classifier", on_error="raise")], max_epochs=1)
    with pytest.raises(HeadNotFoundError, match="needs a linear head.*head='classifier' is a Conv2d"):
        trainer.fit(NoHeadNet(), BlobData())


class NeverClassTwo(SmallNet):
    """Class 2's bias is frozen far below the others: the model never predicts class 2."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.head.bias[2] = -1e3

    def configure_optimizers(self):
        params = [p for n, p in self.named_parameters() if n != "head.bias"]
        return torch.optim.SGD(params, lr=self.lr)


def test_class_without_correct_sample_is_reported_empty_in_a_trainer(tmp_path: Path) -> None:
    seed_everything(0)
    cb = LogicRulesCallback(on_error="raise", max_grounding_images=3, max_perturbation_images=3)
    trainer = make_trainer(tmp_path, [cb], max_epochs=2)
    with pytest.warns(UserWarning, match="no correctly classified validation sample of class 2"):
        trainer.fit(NeverClassTwo(), BlobData())
    records = read_records(tmp_path / "logs" / "version_0", method="logic_rules")
    assert [r.epoch for r in records] == [0, 1]
    for rec in records:
        p = rec.payload
        assert p["empty_classes"] == [2] and p["n_source"][2] == 0
        row = p["tables"]["rules"]["rows"][2]
        assert row[3] == 0 and "empty" in row[-1]
        assert all(t["class"] != 2 for t in p["grounding"]["tests"])
    assert trainer.callback_metrics["xai/logic_rules/empty_classes"] == 1.0


@pytest.mark.slow
def test_no_extra_forward_pass_for_rules(trained_world, tmp_path: Path) -> None:
    model, dm = trained_world

    def forwards(callbacks: list[Callback]) -> int:
        counter = ForwardCounter()
        m = copy.deepcopy(model)
        Trainer(
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            limit_val_batches=4,
            callbacks=[*callbacks, counter],
        ).validate(m, dm, verbose=False)
        return counter.calls

    baseline = forwards([])
    rules_only = LogicRulesCallback(on_error="raise", max_grounding_images=0, max_perturbation_images=0)
    assert forwards([rules_only]) == baseline  # pathways, vocabularies, rules and fidelity: zero forwards
    assert rules_only.explained_epochs == [0] and not rules_only.needs_inputs
    grounded = LogicRulesCallback(on_error="raise")
    extra = forwards([grounded]) - baseline
    last = grounded.last_result
    # every extra forward belongs to grounding (+1 layer probe) or the perturbation study
    assert extra == 1 + last.grounding.forward_calls + last.perturbation.forward_calls
    assert rules_only.last_result.vocabulary.to_dict() == last.vocabulary.to_dict()


@pytest.mark.slow
@pytest.mark.wandb
def test_callback_on_trained_world_logs_everything(trained_world, tmp_path: Path, monkeypatch) -> None:
    from _wandb_offline import find_offline_runs, logged_images, logged_tables
    from lightning.pytorch.loggers import WandbLogger

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    model, dm = trained_world
    cb = LogicRulesCallback(on_error="raise")
    (tmp_path / "wb").mkdir()
    wandb_logger = WandbLogger(offline=True, save_dir=str(tmp_path / "wb"), project="xai-test")
    trainer = Trainer(
        logger=[wandb_logger],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.validate(copy.deepcopy(model), dm, verbose=False)
    wandb_logger.experiment.finish()
    (rec,) = read_records(run_dir_of(trainer), method="logic_rules")  # <save_dir>/<project>/<run id>
    p = rec.payload
    # held-out (cross-fitted) fidelity of the chosen scoring, on the callback's 512-image sample
    assert p["n_samples"] == 512 and p["evaluation"][p["scoring"]]["fidelity"] >= 0.90
    assert p["evaluation"][p["scoring"]]["fidelity"] == max(e["fidelity"] for e in p["evaluation"].values())
    assert p["classes"] == dm.classes and p["empty_classes"] == []
    assert len(p["tables"]["rules"]["rows"]) == 6
    assert all(
        rule.startswith(f"class {k} ({dm.classes[k]}) <- (f") for k, rule in enumerate(p["global_rules"])
    )
    assert p["grounding"]["layer"] == "conv4.2" and len(p["grounding"]["ids"]) == 8
    assert set(p["perturbation"]["survival"]) == {"noise", "blur", "colour_jitter", "occlusion"}
    grounding_media = [m for m in p["media"] if m["key"] == "grounding_images"]
    assert len(grounding_media) == 8 and any(m.get("boxes") for m in grounding_media)
    assert (run_dir_of(trainer) / "xai" / grounding_media[0]["path"]).is_file()
    metrics = trainer.callback_metrics
    for key in (
        "fidelity",
        "accuracy",
        "vocab_size",
        "n80",
        "grounding/guided_success",
        "grounding/random_success",
        "survival/blur",
    ):
        assert f"xai/logic_rules/{key}" in metrics
    assert metrics["xai/logic_rules/fidelity"] >= 0.90
    (run,) = find_offline_runs(tmp_path / "wb")
    tables = logged_tables(run)
    assert {"xai/logic_rules/rules", "xai/logic_rules/local_rules", "xai/logic_rules/grounding"} <= set(
        tables
    )
    assert len(logged_images(run)) >= 8


def test_vocabulary_drift_survives_checkpoint_and_resume(tmp_path: Path) -> None:
    """Records and the callback's checkpoint hold one epoch; the drift monitor compares epoch 2 with epoch 1's
    vocabularies across a resume, from a checkpoint written by the version that kept them in the callback."""
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = LogicRulesCallback(on_error="raise", max_grounding_images=0, max_perturbation_images=0)
    trainer = make_trainer(
        tmp_path, [cb, ConceptDriftMonitor(), ckpt], max_epochs=2, enable_checkpointing=True
    )
    trainer.fit(SmallNet(), BlobData())
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    saved = checkpoint["callbacks"][cb.state_key]
    assert saved == {"explained_epochs": [0, 1], "explainer": {}}  # no previous epoch, no history
    first = read_records(tmp_path / "logs" / "version_0", method="logic_rules")
    assert [r.epoch for r in first] == [0, 1]
    assert not {"previous_epoch", "jaccard_prev", "history"} & set(first[1].payload)
    assert "xai/logic_rules/jaccard_prev" not in trainer.callback_metrics

    # the checkpoint as the version before the typed results wrote it: the previous vocabularies and a history
    saved["explainer"] = {
        "previous": {"epoch": 1, "vocabulary": first[1].payload["vocabulary"]},
        "history": [{"epoch": 0}, {"epoch": 1}],
    }
    torch.save(checkpoint, tmp_path / "ckpt" / "old.ckpt")
    resumed = LogicRulesCallback(on_error="raise", max_grounding_images=0, max_perturbation_images=0)
    assert resumed.state_key == cb.state_key
    trainer2 = make_trainer(
        tmp_path,
        [resumed, ConceptDriftMonitor(log_scalars="all")],
        max_epochs=3,
        logger=CSVLogger(tmp_path, name="resumed"),
    )
    trainer2.fit(SmallNet(), BlobData(), ckpt_path=tmp_path / "ckpt" / "old.ckpt")
    assert resumed.explained_epochs == [0, 1, 2]
    run = tmp_path / "resumed" / "version_0"
    (rec,) = read_records(run, method="logic_rules")
    assert rec.epoch == 2 and not {"previous_epoch", "jaccard_prev", "history"} & set(rec.payload)
    # epoch 2 is compared with epoch 1's vocabularies: the drift monitor's state came with the checkpoint
    expected = vocabulary_jaccard(
        Vocabulary.from_dict(first[1].payload["vocabulary"]), resumed.last_result.vocabulary
    )
    (drift,) = [r for r in read_records(run, method="drift") if r.name == "epoch" and r.epoch == 2]
    rows = {
        row["key"]: row
        for row in drift.payload["rows"]
        if row["kind"] == "rule_jaccard" and row["against"] == "previous"
    }
    assert sorted(rows) == [f"class_{k}" for k in range(3)]
    for k, jaccard in enumerate(expected):
        row = rows[f"class_{k}"]
        assert row["base_epoch"] == 1
        assert row["value"] == pytest.approx(0.0 if math.isnan(jaccard) else 1.0 - jaccard)
        assert float(trainer2.callback_metrics[f"xai/drift/logic_rules/rule_jaccard/prev/class_{k}"]) == (
            pytest.approx(row["value"])
        )


def test_grounding_runs_every_n_explained_epochs_the_first_and_the_last(tmp_path: Path) -> None:
    def run(
        cb: LogicRulesCallback, max_epochs: int, name: str, ckpt_path: Path | None = None
    ) -> dict[int, bool]:
        ckpt = ModelCheckpoint(dirpath=tmp_path / f"ckpt_{name}", save_last=True)
        trainer = make_trainer(
            tmp_path,
            [cb, ckpt],
            max_epochs=max_epochs,
            enable_checkpointing=True,
            logger=CSVLogger(tmp_path, name=name),
        )
        with_images: dict[int, bool] = {}
        explain = cb.explain

        def spy(trainer, pl_module, sample):
            with_images[trainer.current_epoch] = sample.inputs is not None
            return explain(trainer, pl_module, sample)

        cb.explain = spy
        seed_everything(0)
        trainer.fit(SmallNet(), BlobData(), ckpt_path=ckpt_path)
        records = read_records(tmp_path / name / "version_0", method="logic_rules")
        grounded = {r.epoch: r.payload["grounding"] is not None for r in records}
        # the sample carries the images on the grounding epochs alone: copying them on the others is wasted
        assert with_images == grounded
        # the perturbation study keeps the same cadence, and the rules are learned every epoch regardless
        assert grounded == {r.epoch: r.payload["perturbation"] is not None for r in records}
        assert all(r.payload["global_rules"] for r in records)
        return grounded

    kwargs = {
        "on_error": "raise",
        "max_grounding_images": 2,
        "max_perturbation_images": 2,
        "grounding_every": 3,
    }
    # epochs 0 and 3 (every third explained epoch, from the first) and 4 (the fit's last); 1 and 2 learn rules only
    assert run(LogicRulesCallback(**kwargs), 5, "every3") == {0: True, 1: False, 2: False, 3: True, 4: True}
    # every second epoch explained (1, 3, 5): the first of them grounds, the second does not, and 5 is the last
    sparse = LogicRulesCallback(every_n_epochs=2, **kwargs)
    assert run(sparse, 6, "sparse") == {1: True, 3: False, 5: True}
    # the count continues across a resume: epochs 0-1 explained before the checkpoint, so epoch 2 is skipped
    # and epoch 3 (the fourth explained) grounds again
    first = LogicRulesCallback(**kwargs)
    run(first, 2, "before")
    resumed = LogicRulesCallback(**kwargs)
    assert run(resumed, 6, "after", ckpt_path=tmp_path / "ckpt_before" / "last.ckpt") == {
        2: False,
        3: True,
        4: False,
        5: True,
    }
    assert LogicRulesCallback().grounding_every == 5


def test_without_labels_vocabularies_come_from_predictions(tmp_path: Path) -> None:
    cb = LogicRulesCallback(
        on_error="raise",
        max_grounding_images=2,
        max_perturbation_images=0,
        batch_to_input=lambda batch: (batch[0], None),
    )
    with pytest.warns(UserWarning, match="carry no labels"):
        make_trainer(tmp_path, [cb], max_epochs=1).fit(SmallNet(), BlobData())
    (rec,) = read_records(tmp_path / "logs" / "version_0", method="logic_rules")
    assert rec.payload["source"] == "predicted"
    assert rec.payload["evaluation"]["share"]["accuracy"] is None or math.isnan(
        rec.payload["evaluation"]["share"]["accuracy"]
    )
