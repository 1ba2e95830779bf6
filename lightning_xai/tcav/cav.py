"""Concept activation vectors (CAVs): mean-difference and batched logistic regression.

Both kinds take the flattened activations of a concept set and of ``R`` random sets and return ``R``
vectors per concept, one per random run. A CAV points *towards* the concept.

* ``"mean"`` (Visual-TCAV, FastCAV): ``v_r = mean(concept) - mean(random_r)``, not normalised.
* ``"linear"`` (TCAV): the normal of a logistic-regression hyperplane separating the concept from
  ``random_r`` (label 1 = concept), returned as a unit vector. All ``P * R`` classifiers (every concept
  times every run) are trained **at once** as one batched model on the activations' device (see
  :func:`linear_cavs`: Newton's method in dual coordinates). Each loss weighs the two classes equally (so
  set sizes may differ) and adds an L2
  penalty ``l2 / 2 * ||w||^2`` on features centred and divided by their overall RMS, so the penalty means
  the same at every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from lightning_xai.token_layout import SpatialLayout

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
    max_iter: int = 50,
    tol: float = 1e-4,
) -> Tensor:
    """Logistic-regression CAVs for every positive set against every random set, trained as one batch.

    Each model ``(p, r)`` minimises ``0.5 * mean_pos softplus(-z) + 0.5 * mean_neg softplus(z) +
    l2 / 2 * |w|^2`` with ``z = w . x + b`` on features centred and divided by their overall RMS (which
    leaves the hyperplane's direction meaningful at any layer). The optimum lies in the span of the
    training rows (representer theorem), so every model is solved in its dual coordinates ``w = X^T beta``
    by Newton's method with a per-model backtracking step: each iteration is one batched ``(n+1) x (n+1)``
    solve, where ``n`` (a few hundred images) is far smaller than the flattened activation size ``m``. The
    ``n x n`` Gram blocks are computed once, so the cost in ``m`` is two matrix products, however many
    iterations run. All models (every concept x every run, plus the paired null runs) are independent
    problems in one batch; deterministic (no randomness, fixed operation order).

    Args:
        positives: ``P`` flattened sets ``[n_p, m]``, each contrasted with every random set.
        negatives: ``[R, n_r, m]``.
        paired: optionally ``[R, n, m]``: one more positive set per run (see :func:`mean_difference_cavs`).
        l2: L2 penalty on the weights (larger: closer to the centroid difference).
        max_iter: Newton iteration cap.
        tol: stop when no model's objective decreased by more than ``tol`` (relative) in the last step.
            Newton converges quadratically: the default stops after about 3 steps, with directions within
            cosine 0.9999995 of the exact optimum (``tol=1e-12`` runs to machine precision).

    Returns:
        Unit vectors ``[P (+1), R, m]``, the hyperplane normals pointing towards the positive set.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pos = [torch.randn(20, 3, generator=g) + torch.tensor([2.0, 0.0, 0.0])]
        >>> neg = torch.randn(2, 20, 3, generator=g)
        >>> v = linear_cavs(pos, neg); v.shape, bool((v[0, :, 0] > 0.8).all())
        (torch.Size([1, 2, 3]), True)
    """
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0 (the dual solution needs a penalty), got {l2!r}.")
    with torch.no_grad():
        device = negatives.device
        # float64 for the small dual problems (n x n); the large products in m stay in float32
        neg = negatives.float()
        r_count, n_neg, m = neg.shape
        # centring and one overall scale leave the optimal hyperplane's direction unchanged (the bias
        # absorbs the shift) and make the penalty mean the same at every layer
        center = neg.reshape(-1, m).mean(0)
        scale = (neg - center).pow(2).mean().sqrt().clamp_min(1e-12)
        neg = (neg - center) / scale
        k_nn = torch.einsum("ram,rbm->rab", neg, neg).double()  # [R, n_r, n_r]
        blocks = []  # per positive row-group: (pos [G, n, m], mask [G, n], K_pp [G, n, n], K_pn [G, R, n, n_r])
        if len(positives):
            pos, mask = _pad([p.float() for p in positives])
            pos = (pos - center) / scale * mask[..., None]
            blocks.append(
                (
                    pos,
                    mask.double(),
                    torch.einsum("pam,pbm->pab", pos, pos).double(),
                    torch.einsum("pam,rbm->prab", pos, neg).double(),
                )
            )
        if paired is not None:
            pair = (paired.float() - center) / scale  # [R, n, m]: run r's own positive set
            cross = torch.einsum("ram,rbm->rab", pair, neg).double()  # [R, n, n_r]
            # stored as one group whose r-th model pairs pair[r] with neg[r]: only the diagonal of [G, R] is used
            blocks.append(
                (
                    pair,
                    torch.ones(pair.shape[:2], dtype=torch.float64, device=device),
                    torch.einsum("ram,rbm->rab", pair, pair).double(),
                    cross,
                )
            )
        # assemble every model's Gram matrix [M, n, n] over rows (positives, negatives), M = (P + 1) * R
        grams, weights, labels = [], [], []
        n_pos = max(b[0].shape[1] for b in blocks)
        for gi, (pos, mask, k_pp, k_pn) in enumerate(blocks):
            is_pair = paired is not None and gi == len(blocks) - 1
            groups = 1 if is_pair else pos.shape[0]
            n_p = pos.shape[1]
            k = torch.zeros(groups, r_count, n_pos + n_neg, n_pos + n_neg, dtype=torch.float64, device=device)
            if is_pair:
                k[0, :, :n_p, :n_p] = k_pp
                k[0, :, :n_p, n_pos:] = k_pn
                k[0, :, n_pos:, :n_p] = k_pn.transpose(-1, -2)
                c_pos = torch.full((1, r_count, n_p), 0.5 / n_p, dtype=torch.float64, device=device)
            else:
                k[:, :, :n_p, :n_p] = k_pp[:, None]
                k[:, :, :n_p, n_pos:] = k_pn
                k[:, :, n_pos:, :n_p] = k_pn.transpose(-1, -2)
                c_pos = (mask * 0.5 / mask.sum(1, keepdim=True).clamp_min(1.0))[:, None].expand(
                    -1, r_count, -1
                )
            k[:, :, n_pos:, n_pos:] = k_nn[None]
            c = torch.zeros(groups, r_count, n_pos + n_neg, dtype=torch.float64, device=device)
            c[..., :n_p] = c_pos
            c[..., n_pos:] = 0.5 / n_neg
            y = torch.ones_like(c)
            y[..., n_pos:] = -1.0
            grams.append(k)
            weights.append(c)
            labels.append(y)
        gram = torch.cat(grams).flatten(0, 1)  # [M, n, n]
        c = torch.cat(weights).flatten(0, 1)  # [M, n]; 0 on padded rows, which then keep beta = 0
        y = torch.cat(labels).flatten(0, 1)
        models, n = c.shape

        def objective(beta: Tensor, b: Tensor) -> Tensor:
            z = (gram @ beta[..., None])[..., 0] + b[:, None]
            return (c * torch.nn.functional.softplus(-y * z)).sum(-1) + 0.5 * l2 * (
                beta * (z - b[:, None])
            ).sum(-1)

        beta = torch.zeros(models, n, dtype=torch.float64, device=device)
        b = torch.zeros(models, dtype=torch.float64, device=device)
        eye = torch.eye(n, dtype=torch.float64, device=device)
        current = objective(beta, b)
        for _ in range(max_iter):
            k_beta = (gram @ beta[..., None])[..., 0]
            s = torch.sigmoid(-y * (k_beta + b[:, None]))  # per-row "error" probability
            root = (c * s * (1.0 - s)).sqrt()  # sqrt of d^2 loss / d z^2
            u_over_root = -y * (c * s / (1.0 - s).clamp_min(1e-300)).sqrt()  # (d loss / d z) / root, no 0/0
            # Newton step on (beta, b). With D = root^2 and M = D K + l2 I, the step is
            # d_beta = -M^-1 (u + l2 beta) - d_b M^-1 D 1, and d_b makes 1^T (beta + d_beta) = 0 (the
            # intercept's optimality condition). Both products with M^-1 go through the symmetric positive
            # definite A = root K root + l2 I (one Cholesky factor): M^-1 D v = root A^-1 (root v) and
            # M^-1 (u + l2 beta) = beta + root A^-1 (u / root - root K beta); nothing is divided by a
            # vanishing curvature.
            a = root[:, :, None] * gram * root[:, None, :] + l2 * eye
            # float32 is ample for the factor (the penalty bounds A's condition number); the objective that
            # accepts or halves each step stays in float64, so precision only affects the convergence rate
            factor = torch.linalg.cholesky(a.float())
            rhs = torch.stack([u_over_root - root * k_beta, root], -1)
            solved = root[..., None] * torch.cholesky_solve(rhs.float(), factor).double()
            m_q, m_d1 = beta + solved[..., 0], solved[..., 1]
            d_b = (beta.sum(-1) - m_q.sum(-1)) / m_d1.sum(-1).clamp_min(1e-300)
            d_beta = -m_q - d_b[:, None] * m_d1
            # backtracking, per model: halve until the objective does not increase
            t = torch.ones(models, dtype=torch.float64, device=device)
            for _ in range(30):
                trial = objective(beta + t[:, None] * d_beta, b + t * d_b)
                worse = trial > current + 1e-15 * current.abs()
                if not bool(worse.any()):
                    break
                t = torch.where(worse, 0.5 * t, t)
            new = objective(beta + t[:, None] * d_beta, b + t * d_b)
            beta, b = beta + t[:, None] * d_beta, b + t * d_b
            decrease = current - new
            current = new
            if bool((decrease <= tol * current.abs().clamp_min(1e-12)).all()):
                break
        # back to the primal: w = X^T beta, one product per row group
        beta = beta.reshape(-1, r_count, n).float()
        ws, start = [], 0
        for gi, (pos, _mask, _k_pp, _k_pn) in enumerate(blocks):
            is_pair = paired is not None and gi == len(blocks) - 1
            groups = 1 if is_pair else pos.shape[0]
            bt = beta[start : start + groups]
            n_p = pos.shape[1]
            w_neg = torch.einsum("grn,rnm->grm", bt[..., n_pos:], neg)
            if is_pair:
                w_pos = torch.einsum("grn,rnm->grm", bt[..., :n_p], pos)
            else:
                w_pos = torch.einsum("grn,gnm->grm", bt[..., :n_p], pos)
            ws.append(w_pos + w_neg)
            start += groups
        w = torch.cat(ws)
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def concept_shift(
    unit: Tensor, positives: Sequence[Tensor], negatives: Tensor, paired: Tensor | None = None
) -> Tensor:
    """``v_hat[p, r] . (mean(positive_p) - mean(negative_r))``, ``[P (+1), R]``: each CAV's natural length."""
    return (unit * mean_difference_cavs(positives, negatives, paired=paired)).sum(-1)


def train_cavs(
    kind: CavKind,
    positives: Sequence[Tensor],
    negatives: Tensor,
    paired: Tensor | None = None,
    l2: float = 1.0,
    max_iter: int = 50,
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
        layout: the layer's :class:`~lightning_xai.token_layout.SpatialLayout` (how its activations form a
            map: for transformer tokens, the patch tokens on their grid), ``None`` without a spatial view.
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
    layout: SpatialLayout | None = None

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
        random sets (GAP is linear). Transformer tokens are pooled over their patch tokens (:attr:`layout`).
        Activations without spatial dimensions are returned as they are.
        """
        v = self.mean_vectors()
        if len(self.shape) < 2:  # vectors, or CAVs learned on pooled tokens: already per channel
            return v
        if self.layout is not None:
            return self.layout.pool(v, self.shape)
        return v.reshape(v.shape[0], self.shape[0], -1).mean(-1)
