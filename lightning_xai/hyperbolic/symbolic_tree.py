""":class:`SymbolicTree`: configured once, then ``explain(features, logits) -> SymbolicTreeResult`` per epoch.

It owns the :class:`~lightning_xai.hyperbolic.SymbolicFitter` across calls, so every explanation after the
first warm-starts from the previous one's symbolic model (symbols keep their identity across epochs);
:meth:`SymbolicTree.state_dict` carries that model across a checkpoint. What one call does is
:func:`~lightning_xai.hyperbolic.explain_symbols` (split, fit, read out, measure) plus the read-outs the
result records: image trees, visual semantics and their panels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_xai import checks
from lightning_xai.results.symbolic_tree import ImageTree, SymbolEvidence, SymbolicTreeResult

from .config import LossWeights, SymbolicConfig, check_feature_map, resolve_levels
from .explain import SymbolicExplanation, explain_symbols
from .fit import SymbolicFitter
from .model import SymbolicModel
from .render import semantics_grid
from .semantics import visual_semantics

__all__ = ["SymbolicTree"]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class SymbolicTree:
    r"""Hierarchical symbolic explanations in hyperbolic space of a classifier's feature maps.

    Each :meth:`explain` trains a symbolic model on the feature maps of one layer and the classifier's own
    predictions for a bounded number of steps, warm-started from the previous call's model (the optimiser's
    moments start afresh, since the features and predictions moved). The model quantises one token per
    channel into symbols at ``len(levels) + 1`` levels whose codebooks live on a Poincaré ball (geoopt
    ``ManifoldParameter``\ s, ``RiemannianAdam``), linked by a learned soft adjacency; the top level has one
    symbol per class and a surrogate head on it predicts the classifier. A share ``holdout`` of the images is
    never fitted on and measures **fidelity** (surrogate vs classifier). The fit is read out as class trees,
    image trees and rules, with visual semantics.

    Args:
        levels: codebook sizes below the top level, finest first, strictly shrinking; the top level (one
            symbol per class) is added. Default ``(32, 16)``: three levels.
        steps: optimisation steps per call. Default: 100.
        warmup_steps: extra steps of the first fit (nothing to warm-start from), always run. Default: 100.
        stop_at: a fit stops early once the surrogate agrees with the classifier on this share of the fit
            rows (the held-out rows play no part, so fidelity stays held out) and this share of the tokens goes
            from each level to the next along a hard edge (so the trees carry the tokens' paths): a
            warm-started fit checks first before any step, on all fit rows in eval mode (``min_steps=0``;
            surrogate agreement only), then every 10 steps on the last 10 training batches (no code restarted
            within them); the first fit checks after its warm-up. ``None``: always every step. Default: 0.99.
        min_steps: the fewest steps of a warm-started fit. Default: 0: once the classifier settles, a refit
            costs one forward pass instead of steps, and the symbols stay put while the classifier does
            (8 quickstart epochs, epochs 4-7: 0.1 s instead of 0.4-0.6 s per explanation, held-out fidelity
            1.0 either way, symbol-usage drift 0.004 down to 0.00002 instead of 0.03-0.08 from 20 forced
            steps).
        top_symbols: symbols of the top level; ``None``: one per class (never more than the classes).
        latent_channels: tokens per image (modulator channels). Default: 32.
        token_size: maps are pooled to ``token_size x token_size``; a token has ``token_size ** 2`` dims. Default: 4.
        batch_size: images per step. Default: 64.
        lr: learning rate of ``RiemannianAdam``. Default: 3e-3.
        holdout: share of the images kept out of fitting to measure fidelity. Default: 0.25.
        prune: a child carrying fewer than ``prune`` x the tokens of its busiest sibling is pruned. Default: 0.3.
        class_share: top symbols above this share of a class's most used one are its class symbols. Default: 0.5.
        image_trees: image trees in the result (held-out images of different predicted classes, seeded). Default: 4.
        semantic_symbols: symbols per level in the visual semantics (0: none). Default: 4.
        semantic_images: images per symbol in them. Default: 4.
        loss_weights: overrides of :class:`~lightning_xai.hyperbolic.LossWeights`, e.g. ``{"align": 0.5}``.
        seed: seeds the symbolic model, its fit, the held-out split and the image trees. Default: 0.

    Raises:
        ValueError: an argument is out of range (the message names it and the valid choices);
            :class:`~lightning_xai.hyperbolic.LevelsError` for levels that do not shrink.

    Example:
        >>> feats = torch.randn(64, 8, 4, 4); logits = feats.mean((2, 3))[:, :3]
        >>> tree = SymbolicTree(levels=(8, 4), latent_channels=4, steps=5, warmup_steps=5, semantic_symbols=0)
        >>> first = tree.explain(feats, logits, layer="features")
        >>> first.levels, first.warm_started, tree.explain(feats, logits).warm_started
        ([8, 4, 3], False, True)
    """

    def __init__(
        self,
        levels: Sequence[int] = (32, 16),
        *,
        steps: int = 100,
        warmup_steps: int = 100,
        stop_at: float | None = 0.99,
        min_steps: int = 0,
        top_symbols: int | None = None,
        latent_channels: int = 32,
        token_size: int = 4,
        batch_size: int = 64,
        lr: float = 3e-3,
        holdout: float = 0.25,
        prune: float = 0.3,
        class_share: float = 0.5,
        image_trees: int = 4,
        semantic_symbols: int = 4,
        semantic_images: int = 4,
        loss_weights: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        self.steps = checks.check_int("steps", steps, 1)
        self.warmup_steps = checks.check_int("warmup_steps", warmup_steps, 0)
        self.stop_at = (
            None
            if stop_at is None
            else checks.check_interval("stop_at", stop_at, 0.0, 1.0, low_open=True, high_open=False)
        )
        self.min_steps = checks.check_int("min_steps", min_steps, 0)
        if top_symbols is not None:
            checks.check_int("top_symbols", top_symbols, 1)
        self.image_trees = checks.check_int("image_trees", image_trees, 0)
        self.semantic_symbols = checks.check_int("semantic_symbols", semantic_symbols, 0)
        self.semantic_images = checks.check_int("semantic_images", semantic_images, 1)
        self.holdout = checks.check_interval("holdout", holdout, 0.0, 1.0, low_open=True, high_open=True)
        self.prune = checks.check_interval("prune", prune, 0.0, 1.0, low_open=False, high_open=False)
        self.class_share = checks.check_interval(
            "class_share", class_share, 0.0, 1.0, low_open=True, high_open=False
        )
        if loss_weights is not None and not isinstance(loss_weights, Mapping):
            raise ValueError(f"loss_weights must be a dict or None, but got {loss_weights!r}.")
        known = sorted(LossWeights.__dataclass_fields__)
        unknown = sorted(set(loss_weights or {}) - set(known))
        if unknown:
            raise ValueError(f"loss_weights has unknown keys {unknown}; choose from {known}.")
        self.config = SymbolicConfig(
            levels=levels,
            top_symbols=top_symbols,
            latent_channels=latent_channels,
            token_size=token_size,
            lr=lr,
            batch_size=batch_size,
            weights=LossWeights(**dict(loss_weights or {})),
        )
        if top_symbols is not None and top_symbols >= self.config.levels[-1]:
            raise ValueError(
                f"levels={list(self.config.levels)} does not shrink towards top_symbols={top_symbols}: the last level "
                f"needs more than {top_symbols} symbols."
            )
        self.seed = int(seed)
        self._fitter: SymbolicFitter | None = None
        self._state: dict[str, Any] | None = None
        #: the fitter state the last fit started from (``None`` for a fresh fit)
        self.warm_start_state: dict[str, Any] | None = None
        #: the last call's :class:`~lightning_xai.hyperbolic.SymbolicExplanation` (hierarchy, encoding, split)
        self.explanation: SymbolicExplanation | None = None

    # ------------------------------------------------------------------------------------ state
    @property
    def fitter(self) -> SymbolicFitter | None:
        """The symbolic model's fitter after the last call (rebuilt from :meth:`load_state_dict` if needed)."""
        if self._fitter is None and self._state is not None:
            self._fitter = SymbolicFitter.from_state_dict(self._state)
        return self._fitter

    def state_dict(self) -> dict[str, Any] | None:
        """The fitter's state (CPU tensors, picklable) that the next call warm-starts from; ``None`` before a fit."""
        return self._fitter.state_dict() if self._fitter is not None else self._state

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Warm-start the next call from ``state`` (:meth:`state_dict`; ``None``: fit afresh)."""
        self._fitter, self._state = None, state

    def _fitter_for(self, in_channels: int, n_classes: int, device: torch.device) -> SymbolicFitter:
        """The warm-start fitter on ``device``, or a new one."""
        fitter = self.fitter
        if fitter is not None and fitter.compatible(in_channels, n_classes, self.config):
            if fitter.device != device:
                fitter = SymbolicFitter.from_state_dict(fitter.state_dict(), device=device)
            return fitter
        if fitter is not None:
            warnings.warn(
                f"SymbolicTree: the saved symbolic model (for {fitter.model.in_channels} channels, "
                f"{fitter.model.n_classes} classes, levels {list(fitter.model.sizes)}) does not fit these features; "
                "fitting a new one.",
                stacklevel=3,
            )
        return SymbolicFitter(in_channels, n_classes, self.config, seed=self.seed, device=device)

    # ------------------------------------------------------------------------------------ explaining
    def explain(
        self,
        features: Tensor,
        logits: Tensor,
        *,
        layer: str | None = None,
        ids: Sequence[int] | Tensor | None = None,
        images: Tensor | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device | None = None,
    ) -> SymbolicTreeResult:
        """Fit (or refit) the symbolic model on ``features`` and the classifier's ``logits``, and read it out.

        Args:
            features: the classifier's feature maps ``[N, C, H, W]`` at the explained layer (``H * W > 1``).
            logits: the classifier's logits ``[N, n_classes]``; the teacher is their argmax.
            layer: the layer's name, for messages and the result.
            ids: the images' sample ids (default ``0 .. N-1``), named by image trees and semantics.
            images: the input images ``[N, 3 or 1, H, W]``, for the visual semantics (``None``: none).
            class_names: class names for trees and rules (``n_classes`` of them).
            device: where the symbolic model trains; default the features' device.

        Raises:
            lightning_xai.hyperbolic.FeatureMapError: ``features`` is not a spatial feature map.
            lightning_xai.hyperbolic.LevelsError: the levels do not shrink towards the number of classes, or
                there are more top symbols than classes.
            ValueError: mismatched shapes, or too few images.
        """
        check_feature_map(features, f"layer {layer!r}" if layer else "the explained layer")
        if logits.dim() != 2 or logits.shape[0] != features.shape[0]:
            raise ValueError(
                f"logits must be [N, n_classes] with N = {features.shape[0]}, got {list(logits.shape)}."
            )
        # captured tensors may be inference tensors, which autograd refuses: train on copies
        features, logits = features.detach().clone().float(), logits.detach().clone().float()
        n_classes = int(logits.shape[1])
        resolve_levels(self.config.levels, n_classes, self.config.top_symbols)
        fitter = self._fitter_for(int(features.shape[1]), n_classes, torch.device(device or features.device))
        warm = fitter.initialised
        self.warm_start_state = fitter.state_dict() if warm else None
        if warm:
            # the warm start keeps the symbolic model (so symbols keep their identity across epochs), but the
            # features and the classifier's predictions moved: start the optimiser's moments afresh
            fitter.reset_optimizer()
        res = explain_symbols(
            fitter,
            features,
            logits,
            self.steps + (0 if warm else self.warmup_steps),
            holdout=self.holdout,
            seed=self.seed,
            class_names=class_names,
            prune=self.prune,
            class_share=self.class_share,
            stop_at=self.stop_at,
            # the first fit places and settles the codebooks: it runs its warm-up in full before it may stop
            min_steps=self.min_steps if warm else max(self.min_steps, self.warmup_steps),
        )
        self._fitter, self._state = fitter, None
        self.explanation = res
        n = int(features.shape[0])
        ids = list(range(n)) if ids is None else [int(i) for i in ids]
        return self._result(res, fitter.model, layer, ids, images, class_names)

    def _result(
        self,
        res: SymbolicExplanation,
        model: SymbolicModel,
        layer: str | None,
        ids: list[int],
        images: Tensor | None,
        names: Sequence[str] | None,
    ) -> SymbolicTreeResult:
        h, teacher = res.hierarchy, res.hierarchy.teacher
        semantics, panels = self._semantics(res, ids, images)
        return SymbolicTreeResult(
            layer=layer,
            levels=list(model.sizes),
            classes=list(names) if names is not None else None,
            n_samples=len(ids),
            n_fit=int(res.fit_rows.numel()),
            n_heldout=int(res.heldout_rows.numel()),
            fidelity=dict(res.fidelity),
            train_fidelity=dict(res.train_fidelity),
            fit=res.report,
            norms=list(res.norms),
            code_norms=[model.code_norms(level).cpu().tolist() for level in range(model.num_levels)],
            norm_order_share=_finite(res.norm_order_share),
            edge_agreement=[_finite(a) for a in res.edge_agreement],
            edges=[int(h.hard_edges(level).sum()) for level in range(model.num_levels - 1)],
            usage=res.usage,
            perplexity=res.perplexity,
            class_symbols={c: [int(k) for k in h.class_symbols(c)] for c in res.class_trees},
            class_trees=dict(res.class_trees),
            image_trees=[
                ImageTree(ids[i], i, int(teacher[i]), h.image_tree(i)) for i in self._image_tree_rows(res)
            ],
            rules=list(res.rules),
            routed_edges=sum(t.routed_edges for t in res.class_trees.values()),
            semantics=semantics,
            panels=panels,
        )

    def _image_tree_rows(self, res: SymbolicExplanation) -> list[int]:
        """Up to ``image_trees`` held-out images, predicted classes taken in turn (seeded)."""
        if self.image_trees == 0:
            return []
        teacher = res.hierarchy.teacher
        g = torch.Generator().manual_seed(self.seed)
        rows = res.heldout_rows[torch.randperm(res.heldout_rows.numel(), generator=g)].tolist()
        by_class: dict[int, list[int]] = {}
        for i in rows:
            by_class.setdefault(int(teacher[i]), []).append(i)
        picked: list[int] = []
        while len(picked) < self.image_trees and any(by_class.values()):
            for c in sorted(by_class):
                if by_class[c] and len(picked) < self.image_trees:
                    picked.append(by_class[c].pop(0))
        return sorted(picked)

    def _semantics(
        self, res: SymbolicExplanation, ids: list[int], images: Tensor | None
    ) -> tuple[list[SymbolEvidence], dict[int, Tensor]]:
        """The most used symbols of each level on the images that use them most, and their panels by level."""
        if self.semantic_symbols == 0 or images is None or images.dim() != 4:
            return [], {}
        size = (int(images.shape[-2]), int(images.shape[-1]))
        entries: list[SymbolEvidence] = []
        panels: dict[int, Tensor] = {}
        for level, u in enumerate(res.usage):
            order = sorted(range(len(u)), key=lambda k: (-u[k], k))[: self.semantic_symbols]
            sem = visual_semantics(
                res.encoding, [(level, k) for k in order if u[k] > 0], size, self.semantic_images
            )
            if not sem:
                continue
            entries += [
                SymbolEvidence(s.level, s.symbol, s.name, s.images, s.tokens, [ids[i] for i in s.images])
                for s in sem
            ]
            panels[level] = semantics_grid(sem, images)
        return entries, panels
