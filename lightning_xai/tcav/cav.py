"""Concept activation vectors (CAVs): mean-difference and batched logistic regression.

Both kinds take the flattened activations of a concept set and of ``R`` random sets and return ``R``
vectors per concept, one per random run. A CAV points *towards* the concept.

* ``"mean"`` (Visual-TCAV, FastCAV): ``v_r = mean(concept) - mean(random_r)``, not normalised.
* ``"linear"`` (TCAV): the normal of a logistic-regression hyperplane separating the concept from
  ``random_r`` (label 1 = concept), returned as a unit vector. All ``P * R`` classifiers (every concept
  times every run) are trained **at once** as one batched model on the activations' device (see
  :func:`linear_cavs`). Each loss weighs the two classes equally (so set sizes may differ) and adds an L2
  penalty ``l2 / 2 * ||w||^2`` on features centred and divided by their overall RMS, so the penalty means
  the same at every layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

__all__ = ["CAV_KINDS", "CAVSet", "concept_shift", "linear_cavs", "mean_difference_cavs", "train_cavs"]

CAV_KINDS = ("mean", "linear")
CavKind = Literal["mean", "linear"]


def _pad(positives: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack sets of different sizes ``[n_p, m]`` into ``[P, n_max, m]`` plus a row mask ``[P, n_max]``."""
    n_max = max(p.shape[0] for p in positives)
    m = positives[0].shape[1]
    out = positives[0].new_zeros((len(positives), n_max, m))
    mask = positives[0].new_zeros((len(positives), n_max))
    for i, p in enumerate(positives):
        out[i, : p.shape[0]] = p
        mask[i, : p.shape[0]] = 1.0
    return out, mask


def mean_difference_cavs(
    positives: Sequence[Tensor], negatives: Tensor, paired: Tensor | None = None
) -> Tensor:
    """Centroid differences ``mean(positive) - mean(negative_r)`` for every positive set and run ``r``.

    Args:
        positives: ``P`` flattened sets ``[n_p, m]``, each contrasted with every random set.
        negatives: ``R`` random sets, ``[R, n_r, m]``.
        paired: optionally ``[R, n, m]``, one more positive set *per run* (the random-vs-random null: run
            ``r`` contrasts ``paired[r]`` with ``negatives[r]``); it adds one row to the result.

    Returns:
        ``[P (+1), R, m]``, not normalised.

    Example:
        >>> pos = [torch.ones(3, 2)]; neg = torch.zeros(4, 5, 2)
        >>> mean_difference_cavs(pos, neg)[0, 0]
        tensor([1., 1.])
    """
    neg_means = negatives.mean(1)  # [R, m]
    rows = []
    if len(positives):
        rows.append(torch.stack([p.mean(0) for p in positives])[:, None, :] - neg_means[None])
    if paired is not None:
        rows.append((paired.mean(1) - neg_means)[None])
    return torch.cat(rows)


def linear_cavs(
    positives: Sequence[Tensor],
    negatives: Tensor,
    paired: Tensor | None = None,
    l2: float = 1.0,
    max_iter: int = 500,
    tol: float = 1e-3,
) -> Tensor:
    """Logistic-regression CAVs for every positive set against every random set, trained as one batch.

    Each model ``(p, r)`` minimises ``0.5 * mean_pos softplus(-z) + 0.5 * mean_neg softplus(z) +
    l2 / 2 * |w|^2`` with ``z = w . x + b`` on features centred and divided by their overall RMS (which
    leaves the hyperplane's direction meaningful at any layer). All models (every concept x every run, plus
    the paired null runs) are updated together by an accelerated, diagonally preconditioned gradient method,
    each with *its own* step size ``1 / L`` (``L`` from a batched power iteration on its data) and its own
    momentum restarts, so easy and hard problems in one batch do not slow each other down (a shared line
    search, as in L-BFGS on the summed loss, does). Deterministic: no randomness, fixed operation order.

    Args:
        positives: ``P`` flattened sets ``[n_p, m]``, each contrasted with every random set.
        negatives: ``[R, n_r, m]``.
        paired: optionally ``[R, n, m]``: one more positive set per run (see :func:`mean_difference_cavs`).
        l2: L2 penalty on the weights (larger: closer to the centroid difference, faster convergence).
        max_iter: iteration cap (about 250 iterations reach a direction within cosine 0.99999 of the optimum
            on the world's TinyCNN layers).
        tol: stop when every model's gradient norm is below ``tol`` times its weight norm.

    Returns:
        Unit vectors ``[P (+1), R, m]``, the hyperplane normals pointing towards the positive set.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pos = [torch.randn(20, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])]
        >>> neg = torch.randn(2, 20, 3, generator=g)
        >>> v = linear_cavs(pos, neg); v.shape, bool((v[0, :, 0] > 0.8).all())
        (torch.Size([1, 2, 3]), True)
    """
    with torch.no_grad():
        neg = negatives.float()
        r_count, m = neg.shape[0], neg.shape[2]
        # centring and one overall scale leave the optimal hyperplane's direction unchanged (the bias
        # absorbs the shift) and make the penalty mean the same at every layer
        center = neg.reshape(-1, m).mean(0)
        scale = (neg - center).pow(2).mean().sqrt().clamp_min(1e-12)
        neg = (neg - center) / scale
        c_neg = 0.5 / neg.shape[1]  # each class weighs 1/2 in the loss, whatever its size
        shared = len(positives) > 0
        if shared:
            pos, mask = _pad([p.float() for p in positives])  # [P, n_max, m]
            pos = (pos - center) / scale * mask[..., None]
            c_pos = (mask * (0.5 / mask.sum(1, keepdim=True).clamp_min(1.0)))[:, None, :]  # [P, 1, n]
        if paired is not None:
            pair = (paired.float() - center) / scale  # [R, n, m]
            c_pair = 0.5 / pair.shape[1]
        n_shared = pos.shape[0] if shared else 0
        p_count = n_shared + (paired is not None)

        def project(w: Tensor) -> tuple[list[Tensor], Tensor]:
            zs = []
            if shared:
                zs.append(torch.einsum("prm,pnm->prn", w[:n_shared], pos))
            if paired is not None:
                zs.append(torch.einsum("prm,rnm->prn", w[n_shared:], pair))
            return zs, torch.einsum("prm,rnm->prn", w, neg)

        def back(gs: list[Tensor], gn: Tensor) -> Tensor:
            parts = []
            if shared:
                parts.append(torch.einsum("prn,pnm->prm", gs[0], pos))
            if paired is not None:
                parts.append(torch.einsum("prn,rnm->prm", gs[-1], pair))
            return torch.cat(parts) + torch.einsum("prn,rnm->prm", gn, neg)

        weights: list[Tensor] = []  # per-sample loss weights of the positive sides
        if shared:
            weights.append(c_pos)
        if paired is not None:
            weights.append(torch.full((1, r_count, 1), c_pair, device=neg.device))
        # Diagonal preconditioner: each feature's curvature (its weighted second moment / 4 + l2). In the
        # rescaled coordinates the problem is far better conditioned: ReLU maps mix near-dead and very
        # active features.
        second = []
        if shared:
            second.append(torch.einsum("pn,pnm->pm", c_pos[:, 0], pos.pow(2))[:, None].expand(-1, r_count, -1))
        if paired is not None:
            second.append((c_pair * pair.pow(2).sum(1))[None])
        diag = 0.25 * (torch.cat(second) + c_neg * neg.pow(2).sum(1)[None]) + l2  # [P, R, m]
        inv = 1.0 / diag
        # L of each model in the preconditioned coordinates: the logistic Hessian is at most
        # (X^T C X) / 4 + l2 (+ the intercept's 1/4); its top eigenvalue by batched power iteration
        v = torch.ones(p_count, r_count, m, device=neg.device) / math.sqrt(m)
        top = torch.ones(p_count, r_count, device=neg.device)
        for _ in range(30):
            x = v * inv.sqrt()
            zs, zn = project(x)
            u = (0.25 * back([c * z for c, z in zip(weights, zs)], c_neg * zn) + l2 * x) * inv.sqrt()
            top = u.norm(dim=-1)
            v = u / top[..., None].clamp_min(1e-12)
        step = (1.0 / (1.05 * top + 0.25))[..., None]  # 5% margin on the estimate, plus the intercept

        def gradient(w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
            zs, zn = project(w)
            # clamped so that well-separated samples do not produce denormal floats (slow on CPUs);
            # beyond |z| = 30 the sigmoid is within 1e-13 of 0 or 1
            bias = b[..., None]
            gs, start = [], 0
            for c, z in zip(weights, zs):  # shared rows first, then the paired row
                part = z + bias[start : start + z.shape[0]]
                gs.append(c * (torch.sigmoid(part.clamp(-30.0, 30.0)) - 1.0))
                start += z.shape[0]
            gn = c_neg * torch.sigmoid((zn + bias).clamp(-30.0, 30.0))
            gb = torch.cat([g.sum(-1) for g in gs]) + gn.sum(-1)
            return back(gs, gn) + l2 * w, gb

        # warm start along the centroid difference (the strong-penalty limit of the solution)
        starts = []
        if shared:
            starts.append((pos.sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0))[:, None, :] - neg.mean(1)[None])
        if paired is not None:
            starts.append((pair.mean(1) - neg.mean(1))[None])
        w = torch.cat(starts)
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        b = torch.zeros(p_count, r_count, device=neg.device)
        w_prev, b_prev = w, b
        # accelerated gradient with per-model adaptive restart (O'Donoghue & Candes, 2015): momentum
        # k / (k + 3) grows while it helps and is reset for a model as soon as its step goes uphill
        k = torch.zeros(p_count, r_count, 1, device=neg.device)
        for _ in range(max_iter):
            beta = k / (k + 3.0)
            yw = w + beta * (w - w_prev)
            yb = b + beta[..., 0] * (b - b_prev)
            gw, gb = gradient(yw, yb)
            w_new = yw - step * inv * gw  # preconditioned step
            b_new = yb - step[..., 0] * gb
            uphill = ((gw * (w_new - w)).sum(-1) + gb * (b_new - b)) > 0
            k = torch.where(uphill[..., None], torch.zeros_like(k), k + 1.0)
            w_prev, b_prev, w, b = w, b, w_new, b_new
            if bool((gw.norm(dim=-1) <= tol * w.norm(dim=-1).clamp_min(1e-12)).all()):
                break
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def concept_shift(unit: Tensor, positives: Sequence[Tensor], negatives: Tensor, paired: Tensor | None = None) -> Tensor:
    """``v_hat[p, r] . (mean(positive_p) - mean(negative_r))``, ``[P (+1), R]``: each CAV's natural length."""
    return (unit * mean_difference_cavs(positives, negatives, paired=paired)).sum(-1)


def train_cavs(
    kind: CavKind,
    positives: Sequence[Tensor],
    negatives: Tensor,
    paired: Tensor | None = None,
    l2: float = 1.0,
    max_iter: int = 500,
) -> Tensor:
    """CAVs of ``kind`` (``"mean"`` or ``"linear"``) for every positive set and random run, ``[P (+1), R, m]``."""
    if kind == "mean":
        return mean_difference_cavs(positives, negatives, paired=paired)
    if kind == "linear":
        return linear_cavs(positives, negatives, paired=paired, l2=l2, max_iter=max_iter)
    raise ValueError(f"cav={kind!r} is not supported; choose one of {list(CAV_KINDS)}.")


@dataclass
class CAVSet:
    """The CAVs of every concept at one layer, for every random run, plus the random-vs-random null.

    Attributes:
        layer: Layer name.
        kind: ``"mean"`` or ``"linear"``.
        concepts: Concept names (rows of ``vectors``).
        vectors: ``[K, R, m]`` concept-vs-``random_r`` CAVs (flattened activation space).
        null: ``[R, m]`` random-vs-random CAVs (run ``r``: ``random_{r-1}`` vs ``random_r``), the null
            distribution of the significance test.
        shape: The activation shape of one image at this layer, e.g. ``(C, H, W)``.
        shift: ``[K, R]`` the concept's mean activation shift along each unit CAV,
            ``v_hat . (mean(concept) - mean(random_r))``: the natural length of the CAV (for ``"mean"`` CAVs
            exactly ``|v|``). TCAV magnitudes are directional derivatives scaled by it (logit units).
        null_shift: ``[R]`` the same for the null CAVs.
        hi, lo: ``[K]`` concept-emblem thresholds of Visual-TCAV (median emblem over the concept's images
            and over the random images); filled by the explainer.
    """

    layer: str
    kind: str
    concepts: list[str]
    vectors: Tensor
    null: Tensor
    shape: tuple[int, ...]
    shift: Tensor | None = None
    null_shift: Tensor | None = None
    hi: Tensor | None = None
    lo: Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def n_random(self) -> int:
        return int(self.vectors.shape[1])

    def index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise KeyError(f"unknown concept {concept!r}; concepts: {self.concepts}")
        return self.concepts.index(concept)

    def unit(self) -> tuple[Tensor, Tensor]:
        """``(vectors, null)`` scaled to unit length (the TCAV paper's convention)."""
        def norm(v: Tensor) -> Tensor:
            return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)

        return norm(self.vectors), norm(self.null)

    def mean_vectors(self) -> Tensor:
        """``[K, m]``: each concept's CAV averaged over the random runs (the runs' unit vectors for ``"linear"``)."""
        return self.vectors.mean(1)

    def pooled(self) -> Tensor:
        """``[K, C]``: the run-averaged CAV pooled over space, Visual-TCAV's channel weights ``d``.

        For ``"mean"`` CAVs this is exactly ``mean(GAP(A(concept))) - mean(GAP(A(random)))`` over the runs'
        random sets (GAP is linear). Activations without spatial dimensions are returned as they are.
        """
        v = self.mean_vectors()
        if len(self.shape) < 2:
            return v
        return v.reshape(v.shape[0], self.shape[0], -1).mean(-1)
