"""Visual-TCAV (De Santis et al., 2024): concept emblems, concept maps and concept attributions.

Notation: ``A`` is an image's feature map at a layer, ``[C, H, W]``; ``d`` is a concept's pooled CAV,
``[C]`` (see :meth:`lightning_xai.tcav.cav.CAVSet.pooled`).

* Concept projection: ``raw = ReLU(sum_c d_c A_c)``, an ``H x W`` map.
* Emblem of an image: the contraharmonic mean ``sum raw^2 / (sum raw + eps)``. Thresholds per concept and
  layer: ``hi`` = median emblem over the concept's images, ``lo`` = median over the random images.
* Concept map: ``M = (clip(raw, lo, hi) - lo) / (hi - lo)`` in ``[0, 1]`` if ``hi > lo``, else 0.
* Integrated gradients in feature-map space for class ``k``: zero baseline, ``alpha_i = i / m`` for
  ``i = 0..m``, gradients of the pre-softmax logit at ``alpha_i A``, trapezoid rule
  ``G = mean_i (g_i + g_{i+1}) / 2``; ``IG = G * A`` (sums to ``logit_k(A) - logit_k(0)``, completeness).
  All ``m + 1`` steps of a chunk of images run as one batch through
  :func:`~lightning_xai.capture.forward_from_layer`.
* Attribution: ``R = ReLU(IG)`` rescaled to total mass ``E_k`` where ``E = ReLU(logits(A) - logits(0))``
  normalised by its maximum over classes; channel signs ``s_c = -1`` iff ``min(A) < 0`` and
  ``sum_hw A_c M < 0``; pooled-CAV weights ``w = ReLU(s * d) / max``; and
  ``attr(concept, k) = sum_c w_c sum_hw M R_c``, in ``[0, E_k]``: the share of class ``k``'s positive
  logit gain over the zero baseline that lies in the concept's region and channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_xai.capture import forward_from_layer

__all__ = [
    "EPS",
    "IntegratedGradients",
    "as_feature_map",
    "concept_attributions",
    "concept_maps",
    "concept_projection",
    "emblems",
    "integrated_gradients",
]

EPS = 1e-8


def as_feature_map(acts: Tensor) -> Tensor:
    """View activations as ``[N, C, H, W]``: a vector layer ``[N, C]`` becomes ``[N, C, 1, 1]``.

    Raises:
        ValueError: for other ranks (e.g. token sequences), which have no spatial map.
    """
    if acts.dim() == 4:
        return acts
    if acts.dim() == 2:
        return acts[:, :, None, None]
    raise ValueError(
        f"Visual-TCAV needs convolutional feature maps [N, C, H, W] (or vectors [N, C]); got activations of shape "
        f"{list(acts.shape)}. Choose a convolutional layer."
    )


def concept_projection(acts: Tensor, d: Tensor) -> Tensor:
    """``ReLU(sum_c d[k, c] * A[n, c])`` for every concept ``k`` and image ``n``: ``[K, N, H, W]``.

    Example:
        >>> concept_projection(torch.ones(2, 3, 4, 4), torch.tensor([[1.0, -1.0, 2.0]])).shape
        torch.Size([1, 2, 4, 4])
    """
    a = as_feature_map(acts).float()
    return torch.relu(torch.einsum("kc,nchw->knhw", d.float(), a))


def emblems(raw: Tensor) -> Tensor:
    """Contraharmonic mean of each map, ``sum m^2 / (sum m + eps)``: ``[..., H, W] -> [...]``.

    Example:
        >>> emblems(torch.tensor([[[1.0, 3.0]]])).item()
        2.5
    """
    flat = raw.flatten(-2)
    return flat.pow(2).sum(-1) / (flat.sum(-1) + EPS)


def concept_maps(acts: Tensor, d: Tensor, hi: Tensor, lo: Tensor) -> Tensor:
    """Visual-TCAV concept maps in ``[0, 1]``, ``[K, N, H, W]`` at the layer's resolution.

    ``M = (clip(raw, lo, hi) - lo) / (hi - lo)`` where ``hi > lo``, and 0 for a concept whose images do
    not project above random images (``hi <= lo``).
    """
    raw = concept_projection(acts, d)
    hi_ = hi.float().to(raw.device)[:, None, None, None]
    lo_ = lo.float().to(raw.device)[:, None, None, None]
    span = hi_ - lo_
    valid = span > 0
    m = (torch.minimum(torch.maximum(raw, lo_), hi_) - lo_) / torch.where(valid, span, torch.ones_like(span))
    return torch.where(valid, m, torch.zeros_like(m))


@dataclass
class IntegratedGradients:
    """Integrated gradients at a layer for one target class per row.

    Attributes:
        attributions: ``[N, C, H, W]`` (the layer's shape), ``G * A`` before any ReLU or scaling.
        logits: ``[N, n_classes]`` at the actual activation (``alpha = 1``).
        baseline_logits: ``[N, n_classes]`` at the zero feature map (``alpha = 0``).
        targets: ``[N]`` the class each row was attributed to.
    """

    attributions: Tensor
    logits: Tensor
    baseline_logits: Tensor
    targets: Tensor

    @property
    def delta(self) -> Tensor:
        """``logit_k(A) - logit_k(0)`` per row: what the attributions must sum to (completeness)."""
        t = self.targets[:, None].to(self.logits.device)
        return (self.logits.gather(1, t) - self.baseline_logits.gather(1, t))[:, 0]

    @property
    def total(self) -> Tensor:
        """The summed attributions per row."""
        return self.attributions.flatten(1).sum(1)

    def scaling(self) -> Tensor:
        """``E_k`` per row: ``ReLU(logits(A) - logits(0))`` normalised by its maximum over classes, at the target."""
        gain = torch.relu(self.logits - self.baseline_logits)
        top = gain.max(1, keepdim=True).values
        e = torch.where(top > 0, gain / top.clamp_min(EPS), torch.zeros_like(gain))
        return e.gather(1, self.targets[:, None].to(e.device))[:, 0]


def integrated_gradients(
    model: nn.Module,
    layer: str,
    acts: Tensor,
    inputs: Tensor,
    targets: Tensor,
    m_steps: int = 50,
    batch_rows: int = 512,
) -> IntegratedGradients:
    """Integrated gradients of ``logit[targets]`` with respect to ``layer``'s feature map, zero baseline.

    ``alpha_i = i / m_steps`` for ``i = 0..m_steps``; the gradients of all steps of a chunk of images are
    computed in one batched pass through :func:`~lightning_xai.capture.forward_from_layer` (the inputs are
    tiled, the layer's output replaced by ``alpha_i * A``), then combined by the trapezoid rule.

    Args:
        model: The network, in eval mode with frozen parameters (see
            :func:`~lightning_xai.capture.explanation_mode`).
        layer: Layer name.
        acts: The images' activations at ``layer``, ``[N, ...]``.
        inputs: The images ``[N, C, H, W]`` (needed to run the model; upstream values are replaced).
        targets: ``[N]`` class per row.
        m_steps: Number of intervals (``m_steps + 1`` gradient evaluations per row).
        batch_rows: Rows per pass; a chunk holds ``max(1, batch_rows // (m_steps + 1))`` images.

    Returns:
        :class:`IntegratedGradients`.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
        >>> x = torch.randn(2, 3); a = net[1](net[0](x))
        >>> ig = integrated_gradients(net, "1", a, x, torch.tensor([0, 1]), m_steps=50)
        >>> torch.allclose(ig.total, ig.delta, atol=1e-5)
        True
    """
    if m_steps < 1:
        raise ValueError(f"m_steps must be >= 1, got {m_steps}")
    device = acts.device
    steps = m_steps + 1
    alphas = torch.linspace(0.0, 1.0, steps, device=device, dtype=acts.dtype)
    per_chunk = max(1, batch_rows // steps)
    attributions, logits_a, logits_0 = [], [], []
    for start in range(0, acts.shape[0], per_chunk):
        a = acts[start : start + per_chunk].detach()
        x = inputs[start : start + per_chunk].to(device)
        t = targets[start : start + per_chunk].to(device).long()
        n = a.shape[0]
        view = (steps,) + (1,) * a.dim()
        # row j is step j // n of image j % n, which is how forward_from_layer tiles the inputs
        scaled = (alphas.view(view) * a[None]).reshape(steps * n, *a.shape[1:]).requires_grad_(True)
        out = forward_from_layer(model, layer, scaled, x)
        chosen = out.gather(1, t.repeat(steps)[:, None]).sum()
        (g,) = torch.autograd.grad(chosen, scaled)
        g = g.reshape(steps, n, *a.shape[1:])
        mean_grad = (g[:-1] + g[1:]).sum(0) / (2.0 * m_steps)  # trapezoid rule
        attributions.append((mean_grad * a).detach())
        out = out.detach().reshape(steps, n, -1)
        logits_0.append(out[0])
        logits_a.append(out[-1])
    return IntegratedGradients(
        attributions=torch.cat(attributions),
        logits=torch.cat(logits_a),
        baseline_logits=torch.cat(logits_0),
        targets=targets.to(device).long(),
    )


def concept_attributions(acts: Tensor, ig: IntegratedGradients, maps: Tensor, d: Tensor) -> Tensor:
    """Visual-TCAV concept attributions ``attr(k, n)`` in ``[0, E]``, ``[K, N]``.

    Args:
        acts: ``[N, ...]`` activations (row ``n`` pairs with ``ig`` row ``n``).
        ig: Integrated gradients of each row's target class.
        maps: ``[K, N, H, W]`` concept maps of the same rows.
        d: ``[K, C]`` pooled CAVs.
    """
    a = as_feature_map(acts).float()
    r = torch.relu(as_feature_map(ig.attributions).float())
    e = ig.scaling().float()
    r = r / (r.flatten(1).sum(1) + EPS)[:, None, None, None] * e[:, None, None, None]
    m = maps.float()
    # channel sign: flip channels whose (possibly negative) activations oppose the concept's region
    negative_layer = (a.flatten(1).min(1).values < 0)[None, :, None]  # [1, N, 1]
    in_region = torch.einsum("nchw,knhw->knc", a, m)  # [K, N, C]
    sign = torch.where(negative_layer & (in_region < 0), -1.0, 1.0)
    w = torch.relu(sign * d.float()[:, None, :])  # [K, N, C]
    top = w.max(-1, keepdim=True).values
    w = torch.where(top > 0, w / top.clamp_min(EPS), torch.zeros_like(w))
    return torch.einsum("knc,knhw,nchw->kn", w, m, r)


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of ``[..., h, w]`` maps to ``size`` (H, W) (image resolution)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *size)
