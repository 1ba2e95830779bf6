"""Representation similarity across training: linear CKA, full-batch and minibatch (unbiased).

Linear centred kernel alignment (Kornblith et al., 2019) compares two representations ``X [n, p]``
and ``Y [n, q]`` of the *same* n samples through their Gram matrices ``K = X X^T`` and ``L = Y Y^T``:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

It is 1 for identical representations and invariant to orthogonal transforms and isotropic scaling
of either side, which makes it a good "how much has the model's representation moved" signal.

For large probe sets, :class:`MinibatchCKA` follows Nguyen, Raghu and Kornblith (2021): it averages
the *unbiased* HSIC estimator (Song et al., 2012) over minibatches, so memory is ``O(b^2)`` for batch
size ``b`` rather than ``O(n^2)``, and the estimate does not depend on the batch size's bias. Its
states are sums declared with ``add_state(..., dist_reduce_fx="sum")``, so it reduces correctly under
DDP.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MinibatchCKA", "js_divergence", "linear_cka", "minibatch_cka", "unbiased_hsic"]


def _flat(x: Tensor) -> Tensor:
    if x.dim() < 2:
        raise ValueError(
            f"Expected features of shape [n, ...] with at least 2 dims, but got {tuple(x.shape)}."
        )
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _check_pair(x: Tensor, y: Tensor, min_n: int) -> tuple[Tensor, Tensor]:
    x, y = _flat(x), _flat(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"Expected the same number of samples on both sides, but got {x.shape[0]} and {y.shape[0]}."
        )
    if x.shape[0] < min_n:
        raise ValueError(f"Expected at least {min_n} samples, but got {x.shape[0]}.")
    return x, y


def unbiased_hsic(k: Tensor, l: Tensor) -> Tensor:
    """Unbiased HSIC estimator of Song et al. (2012) from two ``[n, n]`` Gram matrices (n >= 4)."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"The unbiased HSIC estimator needs at least 4 samples, but got {n}.")
    k = k.clone()
    l = l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = (k * l.T).sum()
    sums = (ones.T @ k @ ones) * (ones.T @ l @ ones) / ((n - 1) * (n - 2))
    cross = (ones.T @ k @ l @ ones) * 2 / (n - 2)
    return ((trace + sums - cross) / (n * (n - 3))).squeeze()


def linear_cka(x: Tensor, y: Tensor, unbiased: bool = False) -> float:
    """Linear CKA between two representations of the same samples.

    Args:
        x: ``[n, ...]`` features (flattened per sample).
        y: ``[n, ...]`` features of the same samples, any width.
        unbiased: use the unbiased HSIC estimator (needs n >= 4) instead of the biased, centred one.

    Returns:
        CKA in [0, 1] (the unbiased estimate may leave this range slightly for tiny n).

    Example:
        >>> import torch
        >>> x = torch.randn(50, 8)
        >>> q, _ = torch.linalg.qr(torch.randn(8, 8))
        >>> round(linear_cka(x, 3.0 * x @ q), 6)
        1.0
    """
    x, y = _check_pair(x, y, 4 if unbiased else 2)
    if unbiased:
        k, l = x @ x.T, y @ y.T
        xy, xx, yy = unbiased_hsic(k, l), unbiased_hsic(k, k), unbiased_hsic(l, l)
    else:
        x = x - x.mean(0, keepdim=True)
        y = y - y.mean(0, keepdim=True)
        # ||Y^T X||_F^2 form: O(n p q) instead of O(n^2) Gram matrices
        xy = (y.T @ x).square().sum()
        xx = (x.T @ x).square().sum()
        yy = (y.T @ y).square().sum()
    denom = torch.sqrt(xx * yy)
    if denom <= 0:
        return float("nan")
    return float(xy / denom)


class MinibatchCKA(Metric):
    """Minibatch linear CKA with the unbiased HSIC estimator (Nguyen et al., 2021).

    Call :meth:`update` with aligned minibatches ``(x_i, y_i)`` (each of at least 4 samples);
    :meth:`compute` returns ``mean_i HSIC(K_i, L_i) / sqrt(mean_i HSIC(K_i, K_i) * mean_i HSIC(L_i, L_i))``.

    Example:
        >>> import torch
        >>> metric = MinibatchCKA()
        >>> x = torch.randn(256, 16)
        >>> for chunk in x.split(64):
        ...     metric.update(chunk, 2 * chunk)
        >>> round(float(metric.compute()), 6)
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    hsic_xy: Tensor
    hsic_xx: Tensor
    hsic_yy: Tensor
    batches: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("hsic_xy", "hsic_xx", "hsic_yy", "batches"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor, y: Tensor) -> None:
        x, y = _check_pair(x, y, 4)
        k, l = x @ x.T, y @ y.T
        self.hsic_xy += unbiased_hsic(k, l)
        self.hsic_xx += unbiased_hsic(k, k)
        self.hsic_yy += unbiased_hsic(l, l)
        self.batches += 1

    def compute(self) -> Tensor:
        if self.batches == 0:
            raise RuntimeError("MinibatchCKA.compute() called before any update().")
        denom = torch.sqrt(self.hsic_xx * self.hsic_yy)
        return self.hsic_xy / denom


def minibatch_cka(x: Tensor, y: Tensor, batch_size: int = 256) -> float:
    """Unbiased minibatch linear CKA of aligned ``x`` and ``y`` over consecutive chunks.

    Chunks have ``batch_size`` rows; a remainder under 4 rows is merged into the previous chunk.
    With ``n <= batch_size`` this is the unbiased full-batch CKA.
    """
    x, y = _check_pair(x, y, 4)
    n = x.shape[0]
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < 4:
        bounds.pop(-2)
    metric = MinibatchCKA()
    for lo, hi in itertools.pairwise(bounds):
        metric.update(x[lo:hi], y[lo:hi])
    return float(metric.compute())


def js_divergence(p: Sequence[float] | Tensor, q: Sequence[float] | Tensor) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two histograms (normalised here).

    Example:
        >>> js_divergence([1, 0], [0, 1]), js_divergence([2, 2], [1, 1])
        (1.0, 0.0)
    """
    a = torch.as_tensor(p, dtype=torch.float64).flatten()
    b = torch.as_tensor(q, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise ValueError(f"histograms of different sizes: {a.numel()} and {b.numel()}.")
    if a.sum() <= 0 or b.sum() <= 0:
        return math.nan
    a, b = a / a.sum(), b / b.sum()
    m = 0.5 * (a + b)

    def kl(x: Tensor) -> float:
        mask = x > 0
        return float((x[mask] * (x[mask] / m[mask]).log2()).sum())

    return min(1.0, max(0.0, 0.5 * kl(a) + 0.5 * kl(b)))
