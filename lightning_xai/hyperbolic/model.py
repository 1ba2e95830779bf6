"""The symbolic model: modulator, per-channel tokens, hyperbolic codebooks, soft adjacency, surrogate.

Given a classifier's feature map ``f`` ``[N, C_in, H, W]`` (captured at a layer before the global pooling),

1. a small **modulator** (BN, conv 3x3, BN, ReLU, conv 3x3; ``C`` output channels) re-expresses it;
   its maps are average-pooled to ``s x s`` and each channel becomes one **token** ``t_i`` in
   ``R^(s*s)``, softly clipped and lifted to the Poincaré ball: ``u0_i = expmap0(clip(t_i))``;
2. **level 0** assigns each token to its nearest code of the codebook ``E_0`` (Poincaré distance) and
   quantises it with a straight-through estimator (in the tangent space at the origin);
3. **level l >= 1** maps the quantised tokens of the level below with a Möbius matrix-vector product,
   ``u_l = M_l (x) q_(l-1)``, and quantises them against ``E_l``. Because ``q_(l-1)`` is a code, a
   token's level-``l`` symbol is a function of its level-``(l-1)`` symbol: symbols form paths;
4. the **soft adjacency** ``A_l = sigmoid(Theta_l)`` (``K_l x K_(l+1)``) links symbols of consecutive
   levels; it composes parents (parent code = A-weighted gyromidpoint of its children's images
   ``M (x) E_l[j]``), pulls connected and pushes unconnected codes apart, is asked to carry the token
   paths, is kept sparse, and weights the norm ordering (parents nearer the origin than children);
5. the **surrogate** (a linear layer on ``logmap0`` of the top-level quantised tokens) predicts the
   classifier's own prediction; the top level has one symbol per class, and (``weights.align``, a
   hinge) the top symbol of the classifier's class holds the largest share of an image's tokens.

Training steps are bounded and seeded; codes that no token used for ``restart_every`` steps are moved
back onto the data (a usual VQ remedy against dead codes), and the codebooks and adjacency learn faster
than the rest so that codes keep up with the tokens and edges with the token paths.

Every codebook is a :class:`geoopt.ManifoldParameter` on a :class:`geoopt.PoincareBall`; the whole
model trains with :class:`geoopt.optim.RiemannianAdam` (see :class:`~lightning_xai.hyperbolic.SymbolicFitter`).

Defects of the public reference code that this design avoids (spec section 2): the adjacency enters
the losses (1), codes of every level have a commitment loss and the classification loss reaches every
level map and the modulator (2), edges are continuous and can appear as well as vanish (3), all maps
stay on the ball (no Lorentz coordinate is dropped) (4), one softmax inside the cross-entropy (5);
trees are read from the classifier's predictions, not the labels (10; see :mod:`.tree`).
"""

from __future__ import annotations

from dataclasses import dataclass

import geoopt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SymbolicConfig, check_feature_map
from .geometry import (
    clip_tangent,
    dist0,
    expmap0,
    gyromidpoints,
    logmap0,
    make_ball,
    mobius_matvec,
    nearest,
    pairwise_dist,
    rowwise_dist,
    soft_clip,
)

__all__ = ["Encoding", "ForwardPass", "SymbolicModel"]

_EDGE_ON = 2.0  # initial adjacency logits: sigmoid(2) = 0.88 for a child's parent, 0.12 otherwise
# level maps start as a contraction towards the origin: coarser levels begin nearer the origin (the norm
# ordering) and a parent starts among the (contracted) images of its children
_LEVEL_MAP_SCALE = 0.7


@dataclass
class ForwardPass:
    """What one training forward computes (tensors keep their graph).

    Attributes:
        points: per level, the tokens on the ball before quantisation ``[N, C, d]``.
        codes: per level, the symbol index of every token ``[N, C]``.
        logits: surrogate logits ``[N, n_classes]``.
        top_dist: distances of the top-level tokens to the top codes ``[N, C, K_top]``.
    """

    points: list[Tensor]
    codes: list[Tensor]
    logits: Tensor
    top_dist: Tensor


@dataclass
class Encoding:
    """Symbols of a set of images (no graph; CPU tensors).

    Attributes:
        codes: per level, the symbol of every token (channel) ``[N, C]``, level 0 finest.
        logits: surrogate logits ``[N, n_classes]``.
        maps: modulated feature maps ``[N, C, H, W]`` (channel ``i`` is token ``i``), for visual semantics.
    """

    codes: list[Tensor]
    logits: Tensor
    maps: Tensor

    @property
    def predictions(self) -> Tensor:
        """The surrogate's predicted class per image."""
        return self.logits.argmax(1)

    def usage(self, level: int, size: int) -> Tensor:
        """Tokens assigned to each symbol of ``level`` (``size`` symbols), over all images."""
        return torch.bincount(self.codes[level].flatten(), minlength=size)

    def image_usage(self, level: int, size: int) -> Tensor:
        """Tokens of each image on each symbol of ``level``: ``[N, size]``."""
        codes = self.codes[level]
        out = torch.zeros(codes.shape[0], size, dtype=torch.long)
        return out.scatter_add_(1, codes, torch.ones_like(codes))


class SymbolicModel(nn.Module):
    """Hierarchical vector-quantised symbols of a feature map on the Poincaré ball.

    Args:
        in_channels: channels of the explained feature map.
        n_classes: classes of the explained classifier.
        config: hyper-parameters; see :class:`~lightning_xai.hyperbolic.SymbolicConfig`.

    Raises:
        lightning_xai.hyperbolic.LevelsError: the levels do not shrink towards the top level, or there
            are more top symbols than classes.

    Example:
        >>> model = SymbolicModel(8, 3, SymbolicConfig(levels=(8, 4), latent_channels=4))
        >>> model.sizes
        (8, 4, 3)
        >>> enc = model.encode(torch.randn(5, 8, 6, 6))
        >>> [tuple(c.shape) for c in enc.codes], tuple(enc.logits.shape)
        ([(5, 4), (5, 4), (5, 4)], (5, 3))
    """

    def __init__(self, in_channels: int, n_classes: int, config: SymbolicConfig | None = None) -> None:
        super().__init__()
        self.config = config or SymbolicConfig()
        self.sizes = self.config.resolved_levels(n_classes)
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.ball = make_ball()
        c, d = self.config.latent_channels, self.config.token_dim
        self.modulator = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1),
        )
        # codes start near the origin (spec); initialise_from_data moves them onto the data
        self.codebooks = nn.ParameterList(
            geoopt.ManifoldParameter(self.ball.expmap0(1e-2 * torch.randn(k, d)), manifold=self.ball)
            for k in self.sizes
        )
        self.level_maps = nn.ParameterList(
            nn.Parameter(_LEVEL_MAP_SCALE * torch.eye(d)) for _ in self.sizes[1:]
        )
        self.adjacency_logits = nn.ParameterList(
            nn.Parameter(torch.zeros(a, b)) for a, b in zip(self.sizes, self.sizes[1:])
        )
        self.surrogate = nn.Linear(c * d, n_classes)

    # ------------------------------------------------------------------ structure
    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def adjacency(self, level: int) -> Tensor:
        """Soft adjacency ``A_level`` in (0, 1), ``[K_level, K_(level+1)]`` (child rows, parent columns)."""
        return torch.sigmoid(self.adjacency_logits[level])

    def child_images(self, level: int) -> Tensor:
        """Codes of ``level`` as seen from ``level + 1``: ``M_(level+1) (x) E_level``, ``[K_level, d]``."""
        return mobius_matvec(self.level_maps[level], self.codebooks[level])

    def parent_of(self, level: int) -> Tensor:
        """The symbol at ``level + 1`` that tokens coded ``j`` at ``level`` receive, for every ``j``."""
        with torch.no_grad():
            return pairwise_dist(self.child_images(level), self.codebooks[level + 1]).argmin(1)

    def code_norms(self, level: int) -> Tensor:
        """Hyperbolic distance of every code of ``level`` from the origin."""
        return dist0(self.codebooks[level]).detach()

    # ------------------------------------------------------------------ forward
    def tokens(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Modulated maps ``[N, C, H, W]`` and level-0 tokens on the ball ``[N, C, d]``."""
        maps, t = self._tangent_tokens(features)
        return maps, expmap0(t)

    def _tangent_tokens(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Modulated maps and the level-0 tokens as tangent vectors at the origin (clipped, before ``expmap0``)."""
        check_feature_map(features, "the explained layer")
        if features.shape[1] != self.in_channels:
            raise ValueError(
                f"the feature map has {features.shape[1]} channels, but this symbolic model was built for "
                f"{self.in_channels}."
            )
        maps = self.modulator(features)
        s = self.config.token_size
        # pooling a map that already has the token size is the identity (and costs ~0.5 ms a training step)
        t = (maps if maps.shape[-2:] == (s, s) else F.adaptive_avg_pool2d(maps, (s, s))).flatten(2)
        return maps, soft_clip(t, self.config.max_token_norm)

    def forward(self, features: Tensor) -> ForwardPass:
        return self._run(features)[1]

    def _run(self, features: Tensor) -> tuple[Tensor, ForwardPass]:
        # Computed in the tangent space at the origin, which gives the same values and gradients as the
        # definition on the ball with fewer passes over the tokens: the straight-through quantiser works on
        # logmap0 of the token, the Möbius product M (x) q of a quantised point q = expmap0(t) is
        # expmap0(M t), and the surrogate reads logmap0(q) = t, so no point is mapped to the tangent space and
        # back (tested against the definition).
        maps, t = self._tangent_tokens(features)
        n, c, d = t.shape
        points, codes = [], []
        top_dist = t.new_zeros(0)
        for level, book in enumerate(self.codebooks):
            if level > 0:
                # logmap0 of the (projected) point M (x) q: the tangent vector, shortened like the point
                t = clip_tangent(t @ self.level_maps[level - 1].transpose(0, 1))
            u = expmap0(t)
            flat = u.reshape(-1, d)
            if level == self.num_levels - 1:  # the top distances enter the align loss
                dist = pairwise_dist(flat, book)
                top_dist = dist.view(n, c, -1)
                k = dist.detach().argmin(1)
            else:  # elsewhere they only pick the nearest code
                k = nearest(flat, book)
            points.append(u)
            codes.append(k.view(n, c))
            # straight-through in the tangent space: the code's tangent vector forward, the identity backward
            with torch.no_grad():
                jump = logmap0(book)[k].view(n, c, d) - t
            t = t + jump
        logits = self.surrogate(t.flatten(1))
        return maps, ForwardPass(points, codes, logits, top_dist)

    def losses(self, out: ForwardPass, teacher: Tensor) -> dict[str, Tensor]:
        """Every term of the objective for one forward pass (unweighted), plus ``"total"`` (weighted).

        Terms: ``ce`` (surrogate vs the classifier's prediction), ``vq`` (commitment, summed over levels),
        ``composition``, ``edge``, ``path``, ``norm``, ``sparsity`` (means over levels) and ``align``.
        """
        w = self.config.weights
        terms: dict[str, Tensor] = {"ce": F.cross_entropy(out.logits, teacher)}
        vq = out.logits.new_zeros(())
        for level, (u, k) in enumerate(zip(out.points, out.codes)):
            flat, code = u.reshape(-1, u.shape[-1]), self.codebooks[level][k.flatten()]
            # d(sg(u), e)^2 + beta d(u, sg(e))^2 from one distance: (1 + beta) d(u, e)^2, with the gradient that
            # reaches u scaled by beta / (1 + beta) and the one that reaches e by 1 / (1 + beta)
            d = rowwise_dist(
                _ScaleGrad.apply(flat, w.beta / (1 + w.beta)), _ScaleGrad.apply(code, 1 / (1 + w.beta))
            )
            vq = vq + (1 + w.beta) * (d**2).mean()
        terms["vq"] = vq
        comp, edge, path, norm, sparse = [], [], [], [], []
        for level in range(self.num_levels - 1):
            a = self.adjacency(level)
            kids = self.child_images(level)
            parents = self.codebooks[level + 1]
            # each parent is the A-weighted gyromidpoint of its children, as seen from its level
            mid = gyromidpoints(kids, a.T)
            comp.append((rowwise_dist(parents, mid) ** 2).mean())
            d = pairwise_dist(kids, parents)
            edge.append((a * d**2 + (1 - a) * F.relu(w.margin - d) ** 2).mean())
            child, parent = out.codes[level].flatten(), out.codes[level + 1].flatten()
            path.append(-torch.log(a[child, parent].clamp_min(1e-6)).mean())
            gap = dist0(parents)[None, :] - dist0(self.codebooks[level])[:, None] + w.norm_margin
            # averaged over the (soft) edges, not over all pairs: most pairs are not edges
            norm.append((a * F.relu(gap)).sum() / a.sum().clamp_min(1e-6))
            sparse.append(a.mean())
        for name, values in (
            ("composition", comp),
            ("edge", edge),
            ("path", path),
            ("norm", norm),
            ("sparsity", sparse),
        ):
            terms[name] = torch.stack(values).mean()
        if self.sizes[-1] == self.n_classes:
            # one symbol per class: the class's own top symbol gets the largest share of an image's tokens
            # a hinge, not a likelihood: once the class's symbol leads by the margin the tokens are free,
            # so the images of a class do not collapse onto one symbol at every level
            share = torch.softmax(-out.top_dist / w.align_temperature, dim=-1).mean(1)
            own = share.gather(1, teacher[:, None])[:, 0]
            rival = share.scatter(1, teacher[:, None], float("-inf")).amax(1)
            terms["align"] = F.relu(rival - own + w.align_margin).mean()
        else:
            terms["align"] = out.logits.new_zeros(())
        terms["total"] = (
            terms["ce"]
            + w.commitment * terms["vq"]
            + w.composition * terms["composition"]
            + w.edge * terms["edge"]
            + w.path * terms["path"]
            + w.norm * terms["norm"]
            + w.sparsity * terms["sparsity"]
            + w.align * terms["align"]
        )
        return terms

    @torch.no_grad()
    def encode(self, features: Tensor, batch_size: int = 256) -> Encoding:
        """Symbols, surrogate logits and modulated maps of ``features`` (eval mode, mode restored after)."""
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            codes: list[list[Tensor]] = [[] for _ in self.sizes]
            logits, maps = [], []
            for start in range(0, features.shape[0], batch_size):
                f = features[start : start + batch_size].to(device, torch.float32)
                m, out = self._run(f)
                for level, k in enumerate(out.codes):
                    codes[level].append(k.cpu())
                logits.append(out.logits.cpu())
                maps.append(m.cpu())
            return Encoding([torch.cat(c) for c in codes], torch.cat(logits), torch.cat(maps))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ initialisation and restarts
    @torch.no_grad()
    def initialise_from_data(
        self, features: Tensor, generator: torch.Generator, max_tokens: int = 4096
    ) -> None:
        """Place the codebooks on the data (hyperbolic k-means, level by level) and the adjacency on the
        resulting parent of every child. Deterministic for a given ``generator``."""
        was_training = self.training
        self.train()  # batch statistics: the fresh BN layers have no running statistics yet
        _, u = self.tokens(features)
        self.train(was_training)
        flat = u.reshape(-1, u.shape[-1])
        if flat.shape[0] > max_tokens:
            flat = flat[torch.randperm(flat.shape[0], generator=generator)[:max_tokens].to(flat.device)]
        points = flat
        for level, book in enumerate(self.codebooks):
            if level > 0:
                points = self.child_images(level - 1)
            centres = _kmeans(self.ball, points, book.shape[0], generator)
            book.data.copy_(self.ball.projx(centres))
            if level > 0:
                # the adjacency starts as the parent each child code joined
                theta = torch.full_like(self.adjacency_logits[level - 1], -_EDGE_ON)
                theta[torch.arange(points.shape[0]), self.parent_of(level - 1)] = _EDGE_ON
                self.adjacency_logits[level - 1].data.copy_(theta)

    @torch.no_grad()
    def restart_codes(self, level: int, dead: Tensor, candidates: Tensor, generator: torch.Generator) -> None:
        """Move the unused codes ``dead`` of ``level`` onto randomly chosen ``candidates`` (points of that
        level, ``[M, d]``), slightly jittered so they do not tie with a live code; reset their edges."""
        if dead.numel() == 0 or candidates.shape[0] == 0:
            return
        pick = torch.randint(candidates.shape[0], (dead.numel(),), generator=generator).to(candidates.device)
        jitter = 1e-2 * torch.randn(dead.numel(), candidates.shape[1], generator=generator).to(
            candidates.device
        )
        book = self.codebooks[level]
        new = self.ball.expmap(candidates[pick], self.ball.proju(candidates[pick], jitter))
        book.data[dead.to(book.device)] = self.ball.projx(new)
        if level + 1 < self.num_levels:  # as a child: an edge to the parent it now maps to
            theta = self.adjacency_logits[level]
            theta.data[dead] = -_EDGE_ON
            theta.data[dead, self.parent_of(level)[dead]] = _EDGE_ON
        if level > 0:  # as a parent: the children that now map to it
            theta = self.adjacency_logits[level - 1]
            parents = self.parent_of(level - 1)
            for j in dead.tolist():
                theta.data[:, j] = torch.where(parents == j, _EDGE_ON, -_EDGE_ON)


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


def _kmeans(
    ball: geoopt.PoincareBall, points: Tensor, k: int, generator: torch.Generator, iterations: int = 5
) -> Tensor:
    """A few Lloyd iterations on the ball (assign by Poincaré distance, centres = gyromidpoints).

    Starts from ``k`` random distinct points (repeated if there are fewer); an emptied cluster keeps its
    centre. Returns the centres ``[k, d]``.
    """
    n = points.shape[0]
    order = torch.randperm(n, generator=generator).to(points.device)
    if n < k:
        order = order.repeat((k + n - 1) // n)
    centres = points[order[:k]].clone()
    if n < k:  # duplicated starting points would tie forever: spread them a little
        noise = 1e-2 * torch.randn(centres.shape, generator=generator).to(points.device)
        centres = ball.expmap(centres, ball.proju(centres, noise))
    for _ in range(iterations):
        groups = pairwise_dist(points, centres).argmin(1)
        onehot = F.one_hot(groups, k).to(points.dtype)  # [n, k]
        filled = onehot.sum(0) > 0
        mids = gyromidpoints(points, onehot.T)
        centres = torch.where(filled[:, None], mids, centres)
    return centres
