"""Significance of TCAV scores: two-sided t-tests against random-vs-random CAVs, Bonferroni-corrected.

For each (concept, class, layer) the ``R`` TCAV scores of the concept's CAVs (one per random run) are
compared with the ``R`` scores of random-vs-random CAVs at the same layer and class, using Welch's
two-sided two-sample t-test (``scipy.stats.ttest_ind(..., equal_var=False)``; concept scores usually vary
far less than the null's, so the equal-variance test of the reference code would be miscalibrated). The
p-values are Bonferroni-corrected over every hypothesis of one evaluation (concepts x classes x layers):
``p_adjusted = min(1, p * m)`` and ``significant = p_adjusted < alpha``.

Visual-TCAV's global attributions are summarised per class by their mean, standard error and the 2-SE
interval (:func:`two_se_interval`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import stats
from torch import Tensor

__all__ = ["bonferroni", "two_se_interval", "two_sided_pvalues"]


def two_sided_pvalues(concept_runs: Tensor, null_runs: Tensor) -> Tensor:
    """Welch two-sided t-test p-values of ``concept_runs[..., R]`` against ``null_runs[..., R]``.

    ``null_runs`` broadcasts against ``concept_runs`` over the leading dimensions. When both samples have
    zero variance the test is undefined: the p-value is then 1 if the means are equal and 0 if they differ.

    Example:
        >>> p = two_sided_pvalues(torch.tensor([0.9, 1.0, 0.95, 1.0]), torch.tensor([0.1, 0.3, 0.2, 0.4]))
        >>> p.item() < 0.01
        True
    """
    a = concept_runs.double().cpu()
    b = null_runs.double().cpu().expand_as(a)
    # identical runs (e.g. every run scores 1.0) make scipy warn about precision loss; handled below
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a.numpy(), b.numpy(), axis=-1, equal_var=False)
    p = torch.from_numpy(np.asarray(res.pvalue, dtype=np.float64)).reshape(a.shape[:-1])
    degenerate = torch.isnan(p)
    if bool(degenerate.any()):
        differ = (a.mean(-1) - b.mean(-1)).abs() > 1e-12
        p = torch.where(degenerate, torch.where(differ, torch.zeros_like(p), torch.ones_like(p)), p)
    return p


def bonferroni(p_values: Tensor, alpha: float = 0.05, m: int | None = None) -> tuple[Tensor, Tensor, int]:
    """Bonferroni correction of ``p_values`` for ``m`` hypotheses: ``(p_adjusted, significant, m)``.

    ``m`` defaults to every entry of ``p_values`` (pass it when some entries were not tested).

    Example:
        >>> adj, sig, m = bonferroni(torch.tensor([0.001, 0.04], dtype=torch.float64))
        >>> adj.tolist(), sig.tolist(), m
        ([0.002, 0.08], [True, False], 2)
    """
    m = max(1, int(p_values.numel() if m is None else m))
    adjusted = (p_values * m).clamp(max=1.0)
    if not 0.0 < alpha < 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return adjusted, adjusted < alpha, m


def two_se_interval(mean: Tensor, std: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The standard error of means over ``n`` values and their interval of two SE: ``(se, low, high)``.

    ``se = std / sqrt(n)`` (``n`` broadcasts over the last dimension; 0 counts as 1),
    ``low = max(0, mean - 2 se)`` (attributions are never negative) and ``high = mean + 2 se``.

    Example:
        >>> mean, std, n = torch.tensor([0.5, 0.1]), torch.tensor([0.2, 0.2]), torch.tensor([4, 4])
        >>> [[round(v, 6) for v in t.tolist()] for t in two_se_interval(mean, std, n)]
        [[0.1, 0.1], [0.3, 0.0], [0.7, 0.3]]
    """
    se = std / n.clamp_min(1).float().sqrt()
    return se, (mean - 2 * se).clamp_min(0.0), mean + 2 * se
