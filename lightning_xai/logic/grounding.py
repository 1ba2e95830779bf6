"""Causal grounding of predicates by masking, with an area-matched random control (VisionLogic section 5).

Each eligible predicate ``p = (c, j, s, t)`` of an image ``x`` is tested on its own:

1. a class-activation map of *the predicate's neuron* (target ``s * z_j(x)``, not a class logit) at a
   feature-map layer: Grad-CAM; Score-CAM only where Grad-CAM's sweep failed;
2. for cutoffs ``f = 0.60, 0.55, ..., 0.10`` of the map's maximum, the region ``R`` is the union of the
   tight bounding boxes of the 8-connected components of ``{H >= f * max H}``;
3. ``x'`` is ``x`` with ``R`` replaced by a Gaussian-blurred copy of ``x`` (sigma 20 px at 224 px, scaled
   by ``side / 224``); the region is accepted at the first cutoff where ``p`` is *strictly* inactive on
   ``x'`` (``z_j < t`` for "+", ``z_j > t`` for "-").

Control: at each cutoff step, a uniformly placed random rectangle with the guided region's area and
the aspect ratio of the region's enclosing box. Its budget is matched to the guided test's: the same
steps (up to the guided acceptance, or all of them where the guided test failed) in the same stages
(Grad-CAM, then Score-CAM where Grad-CAM failed). Success rates therefore compare where the map
points against an equal number of equally large random regions.

This is a one-way removal test: it does not show that a region is minimal, unique or sufficient.
Our implementation runs Grad-CAM and Score-CAM on our own hooks (no pytorch-grad-cam dependency) and
batches every forward pass.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.capture import explanation_mode, find_head, first_tensor, resolve_layer, run_model
from lightning_xai.feature_maps import (
    FeatureMapError,
    feature_maps,
    is_feature_map,
    model_device,
    probe_outputs,
    select_feature_maps,
)
from lightning_xai.logic.regions import Box, _aspect, gaussian_blur, random_rectangle, region_from_map
from lightning_xai.logic.vocabulary import Predicate

__all__ = [
    "DEFAULT_CUTOFFS",
    "DEFAULT_MIN_CAM_SIZE",
    "GroundingLayerError",
    "GroundingReport",
    "GroundingTest",
    "feature_map_layers",
    "find_grounding_layer",
    "ground_predicates",
    "head_inputs",
    "neuron_gradcam",
    "neuron_scorecam",
]

DEFAULT_CUTOFFS: tuple[float, ...] = tuple(round(0.60 - 0.05 * k, 2) for k in range(11))
"""Fractions of the map's maximum tried in order: 0.60, 0.55, ..., 0.10."""


class GroundingLayerError(FeatureMapError):
    """The grounding layer is not a feature-map layer that feeds the classifier head."""


# --------------------------------------------------------------------------------------------- layers
def feature_map_layers(
    model: nn.Module, example: Tensor, head: str | None = None
) -> list[tuple[str, tuple[int, ...]]]:
    """Layers whose output is a feature map ``[N, C, H, W]`` (``H * W > 1``) computed before the head.

    Names come in the order the layers *finish* on one forward pass of ``example[:1]``, so a block comes
    after its children: among layers with the same output, the last is the outermost module.

    Returns:
        ``[(name, output shape)]``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> feature_map_layers(net, torch.zeros(1, 3, 8, 8))
        [('0', (1, 4, 6, 6)), ('1', (1, 4, 6, 6))]
    """
    _, head_module = find_head(model, head)
    return list(feature_maps(model, example, head_module).items())


DEFAULT_MIN_CAM_SIZE = 7
"""Smallest side of the default grounding layer's map: the reference's resolution (ResNet layer4 at 224 px)."""


def find_grounding_layer(
    model: nn.Module,
    example: Tensor,
    head: str | None = None,
    layer: str | None = None,
    min_size: int = DEFAULT_MIN_CAM_SIZE,
) -> str:
    """The grounding layer: ``layer`` checked, or a default chosen from one forward pass.

    The default is the last (outermost) layer before the head whose feature map is at least
    ``min_size`` x ``min_size`` (``"layer4"`` for a ResNet at 224 px, as in the reference; ``"conv4.2"``,
    the 8x8 activation of block 4 before its pooling, for :class:`~lightning_xai.world.TinyCNN` at 64 px),
    else the largest map. Why not simply the
    last feature map: for a head-input neuron, Grad-CAM at the map that is globally pooled into the head
    reduces to that channel's own activation, and a 4x4 map upsampled to the image marks more than half
    of it at the first cutoff, so such regions are no better than random ones.

    Args:
        model: the network.
        example: at least one input image ``[N, C, H, W]`` (one forward pass of the first is run).
        head: name of the classifier's ``nn.Linear`` (default: the last one).
        layer: a dotted layer name to check; ``None`` picks the default.
        min_size: smallest map side of the default layer.

    Raises:
        lightning_xai.capture.LayerNotFoundError: ``layer`` is not a sub-module (close names listed).
        GroundingLayerError: ``layer`` did not run, does not output a feature map, or runs after the head;
            or the model has no feature-map layer at all. The message lists the valid layers.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_grounding_layer(net, torch.zeros(1, 3, 16, 16))
        '1'
    """
    _, head_module = find_head(model, head)
    if layer is not None:
        resolve_layer(model, layer)
    outputs = probe_outputs(model, example, head_module)
    maps = select_feature_maps(outputs)
    names = list(maps)
    shown = names if len(names) <= 12 else names[:4] + ["..."] + names[-7:]
    if layer is None:
        if not names:
            raise GroundingLayerError(
                f"{type(model).__name__} has no layer that outputs a feature map [N, C, H, W] (H*W > 1) before "
                "its head, so predicates cannot be grounded in the image. Set max_grounding_images=0 and "
                "max_perturbation_images=0 to learn rules without grounding."
            )
        large = [n for n in names if min(maps[n][2:]) >= min_size]
        if large:
            return large[-1]
        best = max(maps[n][2] * maps[n][3] for n in names)
        return [n for n in names if maps[n][2] * maps[n][3] == best][-1]
    if layer not in outputs:
        raise GroundingLayerError(
            f"grounding_layer={layer!r} did not run during the forward pass. Feature-map layers of "
            f"{type(model).__name__}: {shown}"
        )
    shape, after = outputs[layer].shape, outputs[layer].after_head
    if after:
        raise GroundingLayerError(
            f"grounding_layer={layer!r} runs after the classifier head starts, so the head's input does not "
            f"depend on it. Choose a feature-map layer before the head: {shown}"
        )
    if not is_feature_map(shape):
        raise GroundingLayerError(
            f"grounding_layer={layer!r} outputs shape {list(shape)}, not a feature map [N, C, H, W] with "
            f"H*W > 1, so a CAM cannot localise anything there. Feature-map layers of "
            f"{type(model).__name__}: {shown}"
        )
    return layer


# ------------------------------------------------------------------------------------------ forwards
class _Runner:
    """Forward passes that return the head input ``z`` (and optionally the layer's activation)."""

    def __init__(
        self, model: nn.Module, head_module: nn.Module, layer_module: nn.Module | None, batch_size: int
    ):
        self.model = model
        self.head_module = head_module
        self.layer_module = layer_module
        self.batch_size = max(1, int(batch_size))
        self.device = model_device(model)
        self.forward_calls = 0

    def _run(self, x: Tensor, grad_layer: bool, any_layout: bool = False) -> tuple[Tensor, Tensor | None]:
        """One forward pass; ``any_layout``: the images may go in channels-last (:func:`run_model`), for
        passes on altered images. Passes whose values are compared with rule thresholds on the clean image
        keep the layout the thresholds were captured in: an image's value can sit exactly on its
        predicate's threshold, and a rounding difference would flip it."""
        store: dict[str, Tensor] = {}

        def on_head(module: nn.Module, args: tuple) -> None:
            store["z"] = args[0].flatten(1)

        def on_layer(module: nn.Module, args: tuple, out: Any) -> Any:
            try:
                t = first_tensor(out)
            except TypeError:
                return None
            if not grad_layer:
                store["act"] = t.detach()
                return None
            leaf = t.detach().requires_grad_(True)
            store["act"] = leaf
            # return a non-leaf copy so an in-place op downstream (ReLU(inplace=True)) cannot hit the leaf
            new = leaf.clone()
            return new if isinstance(out, Tensor) else (new, *out[1:])

        handles = [self.head_module.register_forward_pre_hook(on_head)]
        if self.layer_module is not None:
            handles.append(self.layer_module.register_forward_hook(on_layer))
        try:
            self.forward_calls += 1
            x = x.to(self.device)
            if any_layout:
                run_model(self.model, x)
            else:
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return store["z"], store.get("act")

    def z(self, images: Tensor, any_layout: bool = False) -> Tensor:
        """Head inputs ``[N, D]`` (float64, CPU), in batches, without autograd."""
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                z, _ = self._run(
                    images[start : start + self.batch_size], grad_layer=False, any_layout=any_layout
                )
                out.append(z.detach().to("cpu", torch.float64))
        return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def head_inputs(model: nn.Module, images: Tensor, head: str | None = None, batch_size: int = 64) -> Tensor:
    """The head's input ``z`` ``[N, D]`` (float64, CPU) for ``images``, batched, in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
        >>> head_inputs(net, torch.zeros(3, 3, 2, 2)).shape
        torch.Size([3, 5])
    """
    with explanation_mode(model):
        _, head_module = find_head(model, head)
        return _Runner(model, head_module, None, batch_size).z(images)


def _normalise_maps(maps: Tensor) -> tuple[Tensor, Tensor]:
    """Min-max scale each map ``[M, H, W]`` to [0, 1]; flat maps become zeros. Returns (maps, ok)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    ok = (hi - lo) > 1e-12 * hi.abs().clamp_min(1.0)
    scaled = (maps - lo[:, None, None]) / (hi - lo).clamp_min(1e-30)[:, None, None]
    return torch.where(ok[:, None, None], scaled, torch.zeros_like(maps)), ok


def neuron_gradcam(
    model: nn.Module,
    layer: str,
    images: Tensor,
    features: Sequence[int],
    signs: Sequence[int],
    head: str | None = None,
    batch_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Grad-CAM of the signed head-input neuron ``s_m * z_{j_m}`` for image ``m``, at ``layer``.

    ``alpha_k = mean over (h, w) of d(s z_j) / dA_k``, ``H = ReLU(sum_k alpha_k A_k)``, bilinearly resized
    to the image and min-max scaled.

    Args:
        model: the network (any mode; eval inside).
        layer: a feature-map layer (see :func:`find_grounding_layer`).
        images: ``[M, C, H, W]`` one image per (image, neuron) pair.
        features: ``M`` neuron indices ``j``.
        signs: ``M`` signs (+1 / -1).
        head: the head's name (default: the last ``nn.Linear``).
        batch_size: pairs per forward/backward pass.

    Returns:
        ``(maps [M, H, W] in [0, 1], values [M])``: the maps (zeros where the map is flat) and the clean
        neuron values ``z_j`` (float64).
    """
    with explanation_mode(model):
        _, head_module = find_head(model, head)
        runner = _Runner(model, head_module, resolve_layer(model, layer), batch_size)
        return _gradcam(runner, images, torch.as_tensor(list(features)), torch.as_tensor(list(signs)))


def _gradcam(runner: _Runner, images: Tensor, feat: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    size = images.shape[-2:]
    maps, values = [], []
    for start in range(0, images.shape[0], runner.batch_size):
        sl = slice(start, start + runner.batch_size)
        z, act = runner._run(images[sl], grad_layer=True)
        if act is None:
            raise GroundingLayerError("the grounding layer did not run during the forward pass")
        rows = torch.arange(z.shape[0], device=z.device)
        target = sign[sl].to(z.device, z.dtype) * z[rows, feat[sl].to(z.device)]
        if not target.requires_grad:
            raise GroundingLayerError(
                "the head's input does not depend on the grounding layer; choose a layer before the head"
            )
        # each row's target depends only on its own row (eval mode), so one backward gives every gradient
        (grad,) = torch.autograd.grad(target.sum(), act, allow_unused=True)
        if grad is None:
            raise GroundingLayerError(
                "the head's input does not depend on the grounding layer; choose a layer before the head"
            )
        alpha = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * act.detach()).sum(1, keepdim=True))
        cam = F.interpolate(cam.float(), size=size, mode="bilinear", align_corners=False)[:, 0]
        maps.append(cam.detach().cpu())
        values.append(z[rows, feat[sl].to(z.device)].detach().to("cpu", torch.float64))
    out, _ = _normalise_maps(torch.cat(maps))
    return out, torch.cat(values)


def neuron_scorecam(
    model: nn.Module,
    layer: str,
    images: Tensor,
    features: Sequence[int],
    signs: Sequence[int],
    head: str | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Score-CAM of the signed neuron ``s_m * z_{j_m}`` at ``layer``: ``[M, H, W]`` maps in [0, 1].

    Each channel's upsampled, min-max scaled activation masks the image; the weights are a softmax over
    the channels of the signed neuron on the masked images; ``H = ReLU(sum_k w_k A_k)``. Costs one
    forward pass per (pair, channel), batched.
    """
    with explanation_mode(model):
        _, head_module = find_head(model, head)
        runner = _Runner(model, head_module, resolve_layer(model, layer), batch_size)
        return _scorecam(runner, images, torch.as_tensor(list(features)), torch.as_tensor(list(signs)))


def _scorecam(
    runner: _Runner, images: Tensor, feat: Tensor, sign: Tensor, image_of: Tensor | None = None
) -> Tensor:
    """Score-CAM maps of pair ``m``: image ``images[image_of[m]]`` (default: ``images[m]``), neuron ``feat[m]``.

    The masked images depend on the image alone, not on the neuron, so pairs of the same image share one
    set of masked forward passes (the maps are the same as computing each pair on its own).
    """
    size = images.shape[-2:]
    if image_of is None:
        image_of = torch.arange(images.shape[0])
    rows = image_of.tolist()
    head_inputs: dict[int, tuple[Tensor, Tensor]] = {}  # image row -> (activation [K, h, w], z [K, D])
    maps = []
    with torch.no_grad():
        for m, row in enumerate(rows):
            if row not in head_inputs:
                x = images[row : row + 1]
                _, act = runner._run(x, grad_layer=False)
                assert act is not None
                act = act.float()
                up = F.interpolate(act, size=size, mode="bilinear", align_corners=False)[0]  # [K, H, W]
                masks, _ = _normalise_maps(up)
                zs = []
                for start in range(0, masks.shape[0], runner.batch_size):
                    chunk = masks[start : start + runner.batch_size].to(x.device)
                    z, _ = runner._run(x * chunk[:, None], grad_layer=False, any_layout=True)
                    zs.append(z)
                head_inputs[row] = (act[0], torch.cat(zs))
            act, z = head_inputs[row]
            weights = torch.softmax(float(sign[m]) * z[:, int(feat[m])].float(), 0)
            cam = torch.relu((weights[:, None, None] * act).sum(0, keepdim=True))[None]
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
            maps.append(cam.cpu())
    out, _ = _normalise_maps(torch.stack(maps)) if maps else (torch.zeros(0, *size), None)
    return out


# ------------------------------------------------------------------------------------------ results
@dataclass
class GroundingTest:
    """The grounding test of one predicate on one image.

    Attributes:
        image: row of the image in the images given.
        predicate: the predicate tested.
        value: the neuron's clean value ``z_j``.
        accepted: whether some guided region turned the predicate strictly inactive.
        stage: ``"gradcam"`` or ``"scorecam"`` for an accepted region, else ``None``.
        cutoff: the accepted cutoff (fraction of the map's maximum).
        boxes: the accepted region's boxes ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive).
        area: accepted area as a fraction of the image ("occupancy").
        value_after: the neuron's value on the image with the accepted region blurred.
        region: ``[H, W]`` bool mask of the accepted region.
        gradcam_failed: Grad-CAM's sweep found no region (Score-CAM was tried if enabled).
        random_accepted, random_stage, random_cutoff, random_box, random_area, random_region: the same for
            the random control (its first successful rectangle).
        matched_random_region: the random rectangle drawn at the guided acceptance's step (same area),
            for comparisons that must not depend on the random control's own success.
        skipped: why the test was not run (e.g. the predicate is already inactive on the clean image
            when recomputed), else ``None``; skipped tests are not counted in the rates.
    """

    image: int
    predicate: Predicate
    value: float
    accepted: bool = False
    stage: str | None = None
    cutoff: float | None = None
    boxes: list[Box] = field(default_factory=list)
    area: float | None = None
    value_after: float | None = None
    region: np.ndarray | None = None
    gradcam_failed: bool = False
    random_accepted: bool = False
    random_stage: str | None = None
    random_cutoff: float | None = None
    random_box: Box | None = None
    random_area: float | None = None
    random_region: np.ndarray | None = None
    matched_random_region: np.ndarray | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "class": self.predicate.class_index,
            "predicate": self.predicate.text(),
            "signed_id": self.predicate.signed_id,
            "value": self.value,
            "accepted": self.accepted,
            "stage": self.stage,
            "cutoff": self.cutoff,
            "boxes": [list(b) for b in self.boxes],
            "area": self.area,
            "value_after": self.value_after,
            "gradcam_failed": self.gradcam_failed,
            "random_accepted": self.random_accepted,
            "random_stage": self.random_stage,
            "random_box": list(self.random_box) if self.random_box else None,
            "random_area": self.random_area,
            "skipped": self.skipped,
        }


@dataclass
class GroundingReport:
    """All grounding tests of a set of images, with the summary rates.

    Attributes:
        tests: one :class:`GroundingTest` per (image, eligible predicate).
        layer: the CAM layer.
        n_images: images given.
        forward_calls: model forward passes spent.
    """

    tests: list[GroundingTest]
    layer: str
    n_images: int
    forward_calls: int = 0

    @property
    def counted(self) -> list[GroundingTest]:
        return [t for t in self.tests if t.skipped is None]

    @property
    def guided_success(self) -> float:
        """Share of (counted) tests with an accepted guided region; NaN without tests."""
        c = self.counted
        return sum(t.accepted for t in c) / len(c) if c else math.nan

    @property
    def random_success(self) -> float:
        """Share of (counted) tests where a random rectangle deactivated the predicate."""
        c = self.counted
        return sum(t.random_accepted for t in c) / len(c) if c else math.nan

    def summary(self) -> dict[str, Any]:
        c = self.counted
        guided_areas = [t.area for t in c if t.accepted and t.area is not None]
        random_areas = [t.random_area for t in c if t.random_accepted and t.random_area is not None]
        failed = [t for t in c if t.gradcam_failed]
        return {
            "layer": self.layer,
            "n_images": self.n_images,
            "n_tests": len(c),
            "skipped": len(self.tests) - len(c),
            "guided_success": self.guided_success,
            "random_success": self.random_success,
            "guided_successes": sum(t.accepted for t in c),
            "random_successes": sum(t.random_accepted for t in c),
            "images_with_success": len({t.image for t in c if t.accepted}),
            "gradcam_failed": len(failed),
            "scorecam_recovered": sum(t.accepted and t.stage == "scorecam" for t in failed),
            "occupancy_guided": statistics.median(guided_areas) if guided_areas else math.nan,
            "occupancy_random": statistics.median(random_areas) if random_areas else math.nan,
            "forward_calls": self.forward_calls,
        }


# ------------------------------------------------------------------------------------------ the test
@dataclass
class _Sweep:
    regions: list[np.ndarray]  # one per cutoff
    boxes: list[list[Box]]
    randoms: list[np.ndarray | None]
    random_boxes: list[Box | None]


def _make_sweep(heat: np.ndarray, cutoffs: Sequence[float], rng: np.random.Generator) -> _Sweep:
    regions, boxes, randoms, rboxes = [], [], [], []
    h, w = heat.shape
    for f in cutoffs:
        mask, bx = region_from_map(heat, f)
        regions.append(mask)
        boxes.append(bx)
        area = int(mask.sum())
        if area == 0:
            randoms.append(None)
            rboxes.append(None)
            continue
        rmask, rbox = random_rectangle(area, _aspect(mask), h, w, rng)
        randoms.append(rmask)
        rboxes.append(rbox)
    return _Sweep(regions, boxes, randoms, rboxes)


def _evaluate_masks(
    runner: _Runner,
    images: Tensor,
    blurred: Tensor,
    jobs: list[tuple[int, np.ndarray, int]],
) -> Tensor:
    """Neuron value for each job ``(image row, mask, feature)`` with the mask's pixels blurred."""
    out = torch.empty(len(jobs), dtype=torch.float64)
    for start in range(0, len(jobs), runner.batch_size):
        chunk = jobs[start : start + runner.batch_size]
        rows = torch.tensor([r for r, _, _ in chunk])
        masks = torch.from_numpy(np.stack([m for _, m, _ in chunk]))[:, None].to(images.device)
        x = torch.where(masks, blurred[rows], images[rows])
        with torch.no_grad():
            z, _ = runner._run(x, grad_layer=False, any_layout=True)
        feats = torch.tensor([f for _, _, f in chunk], device=z.device)
        out[start : start + len(chunk)] = z[torch.arange(len(chunk), device=z.device), feats].to(
            "cpu", torch.float64
        )
    return out


def ground_predicates(
    model: nn.Module,
    images: Tensor,
    predicates: Sequence[Sequence[Predicate]],
    layer: str,
    head: str | None = None,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    blur_sigma: float | None = None,
    score_cam: bool = True,
    batch_size: int = 64,
    seed: int = 0,
) -> GroundingReport:
    """Ground each image's predicates by blurring CAM regions of their neurons, with a random control.

    Args:
        model: the network (any mode; the test runs in eval mode, and modes are restored).
        images: ``[N, C, H, W]`` model inputs.
        predicates: per image, the predicates to test (usually its local rule's eligible predicates).
        layer: the CAM layer (see :func:`find_grounding_layer`).
        head: the head's name (default: the last ``nn.Linear``).
        cutoffs: fractions of the map's maximum, tried in order (default 0.60 down to 0.10).
        blur_sigma: Gaussian sigma of the replacement in pixels; default ``20 * min(H, W) / 224``.
        score_cam: try Score-CAM where Grad-CAM's sweep fails (one forward per channel and pair).
        batch_size: images per forward pass.
        seed: seed of the random control.

    Returns:
        :class:`GroundingReport`.

    Example:
        >>> from lightning_xai.world import TinyCNN
        >>> from lightning_xai.logic import Predicate
        >>> net = TinyCNN().eval()
        >>> p = Predicate(0, 5, 1, -1e9, 1, 1.0, 64)   # always active: cannot be deactivated
        >>> report = ground_predicates(net, torch.rand(1, 3, 64, 64), [[p]], layer="conv5")
        >>> report.summary()["guided_success"]
        0.0
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if len(predicates) != images.shape[0]:
        raise ValueError(f"got {len(predicates)} predicate lists for {images.shape[0]} images")
    cutoffs = tuple(float(f) for f in cutoffs)
    if not cutoffs or not all(0.0 < f <= 1.0 for f in cutoffs):
        raise ValueError(f"cutoffs must be fractions in (0, 1], got {cutoffs}")
    pairs = [(i, p) for i, ps in enumerate(predicates) for p in ps]
    with explanation_mode(model):
        _, head_module = find_head(model, head)
        runner = _Runner(model, head_module, resolve_layer(model, layer), batch_size)
        if not pairs:
            return GroundingReport([], layer, int(images.shape[0]), 0)
        x = images.detach().to(runner.device).float().clone()
        height, width = x.shape[-2:]
        sigma = blur_sigma if blur_sigma is not None else 20.0 * min(height, width) / 224.0
        blurred = gaussian_blur(x, sigma)
        rows = torch.tensor([i for i, _ in pairs])
        feat = torch.tensor([p.feature for _, p in pairs])
        sign = torch.tensor([p.sign for _, p in pairs])
        heat, values = _gradcam(runner, x[rows], feat, sign)
        rng = np.random.default_rng(int(seed))
        tests = []
        for (i, p), v in zip(pairs, values.tolist()):
            t = GroundingTest(image=i, predicate=p, value=v)
            if bool(p.is_strictly_inactive(torch.tensor([v]))[0]):
                # numerically on the threshold: the predicate is already off, there is nothing to remove
                t.skipped = "inactive on the clean image"
            tests.append(t)
        live = [m for m, t in enumerate(tests) if t.skipped is None]
        stage1 = {m: _make_sweep(heat[m].numpy(), cutoffs, rng) for m in live}
        guided1, random1 = _run_sweeps(runner, x, blurred, pairs, stage1)
        # Score-CAM only where Grad-CAM's sweep failed; the random control gets that second stage too
        need = [m for m in live if guided1[m] is None] if score_cam else []
        stage2: dict[int, _Sweep] = {}
        guided2: dict[int, int | None] = {}
        random2: dict[int, int | None] = {}
        if need:
            idx = torch.tensor(need)
            heat2 = _scorecam(runner, x, feat[idx], sign[idx], image_of=rows[idx])
            stage2 = {m: _make_sweep(heat2[k].numpy(), cutoffs, rng) for k, m in enumerate(need)}
            guided2, random2 = _run_sweeps(runner, x, blurred, pairs, stage2)
        for m in live:
            t = tests[m]
            t.gradcam_failed = guided1[m] is None
            # the random control's budget is the guided one's: the steps up to the guided acceptance (all
            # steps where guided failed), in the stages the guided test used
            budget = [("gradcam", stage1[m], random1[m], guided1[m])]
            if m in stage2:
                budget.append(("scorecam", stage2[m], random2.get(m), guided2.get(m)))
            for stage, sweep, r_step, g_step in budget:
                if g_step is not None and not t.accepted:
                    t.accepted, t.stage, t.cutoff = True, stage, cutoffs[g_step]
                    t.region = sweep.regions[g_step]
                    t.boxes = sweep.boxes[g_step]
                    t.area = float(t.region.mean())
                    t.matched_random_region = sweep.randoms[g_step]
                within = r_step is not None and (g_step is None or r_step <= g_step)
                if within and not t.random_accepted:
                    t.random_accepted, t.random_stage, t.random_cutoff = True, stage, cutoffs[r_step]
                    t.random_region = sweep.randoms[r_step]
                    t.random_box = sweep.random_boxes[r_step]
                    t.random_area = float(t.random_region.mean())
        accepted = [m for m in live if tests[m].accepted]
        if accepted:
            after = _evaluate_masks(
                runner, x, blurred, [(pairs[m][0], tests[m].region, pairs[m][1].feature) for m in accepted]
            )
            for m, v in zip(accepted, after.tolist()):
                tests[m].value_after = v
    return GroundingReport(tests, layer, int(images.shape[0]), runner.forward_calls)


def _run_sweeps(
    runner: _Runner,
    x: Tensor,
    blurred: Tensor,
    pairs: Sequence[tuple[int, Predicate]],
    sweeps: dict[int, _Sweep],
) -> tuple[dict[int, int | None], dict[int, int | None]]:
    """First accepted step of the guided and of the random sweep of each pair (None: never).

    Steps run in order, all pairs batched per step, and a sweep stops at its acceptance; a random sweep
    also stops once the guided one was accepted at an earlier step, since only the steps up to the guided
    acceptance enter its budget. The answers are those of evaluating every step (a step's verdict does not
    depend on the others): a random acceptance after the guided one is reported as None, which the budget
    rejects anyway. Most guided sweeps end within the first few cutoffs, so this saves most forward passes.
    """
    guided: dict[int, int | None] = dict.fromkeys(sweeps)
    random: dict[int, int | None] = dict.fromkeys(sweeps)
    for k in range(max((len(sw.regions) for sw in sweeps.values()), default=0)):
        jobs: list[tuple[int, np.ndarray, int]] = []
        where: list[tuple[int, dict[int, int | None]]] = []
        for m, sw in sweeps.items():
            if k >= len(sw.regions):
                continue
            i, p = pairs[m]
            g_step = guided[m]
            if g_step is None and sw.regions[k].any():
                jobs.append((i, sw.regions[k], p.feature))
                where.append((m, guided))
            rnd = sw.randoms[k]
            if rnd is not None and random[m] is None and g_step is None:
                jobs.append((i, rnd, p.feature))
                where.append((m, random))
        if not jobs:
            continue
        values = _evaluate_masks(runner, x, blurred, jobs)
        for (m, out), off in zip(where, _strictly_inactive(pairs, where, values)):
            if off:
                out[m] = k
    return guided, random


def _strictly_inactive(
    pairs: Sequence[tuple[int, Predicate]], where: Sequence[tuple[int, Any]], values: Tensor
) -> list[bool]:
    return [bool(pairs[m][1].is_strictly_inactive(v[None])[0]) for (m, _), v in zip(where, values)]
