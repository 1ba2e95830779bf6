"""``SymbolicTreeCallback``: hierarchical symbols in hyperbolic space, refitted while the model trains."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_xai.callbacks.base import ExplainResult, XAICallback, check_int, check_interval
from lightning_xai.capture import ActivationCapture, ValidationSample
from lightning_xai.hyperbolic import (
    LevelsError,
    LossWeights,
    SymbolicConfig,
    SymbolicExplanation,
    SymbolicFitter,
    check_feature_map,
    explain_symbols,
    find_feature_layer,
    js_divergence,
    resolve_levels,
    rules_jaccard,
    semantics_grid,
    tree_image,
    tree_to_dot,
    usage_image,
    visual_semantics,
)
from lightning_xai.records import Chart, Media, Table

__all__ = ["SymbolicTreeCallback"]


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


class SymbolicTreeCallback(XAICallback):
    r"""Hierarchical symbolic explanations in hyperbolic space, refitted every few epochs while training.

    Each explained epoch it takes the feature map of ``layer`` that the validation loop already computed
    (the shared capture keeps a bounded sample of it: **no extra forward pass**) and the classifier's own
    predictions, and trains a symbolic model (:mod:`lightning_xai.hyperbolic`) on them for a bounded number
    of steps, **warm-started** from the previous explained epoch's model (kept in checkpoints; the optimiser's
    moments start afresh each epoch, since the features and predictions moved). The
    model quantises one token per channel into symbols at ``len(levels) + 1`` levels whose codebooks live
    on a Poincaré ball (geoopt ``ManifoldParameter``\ s, ``RiemannianAdam``), linked by a learned soft
    adjacency; the top level has one symbol per class and a surrogate head on it predicts the classifier.
    A share ``holdout`` of the sample is never fitted on and measures **fidelity** (surrogate vs
    classifier). The fit is read out as class trees, image trees and rules, with visual semantics and
    drift against the previous explained epoch.

    Logged scalars (``xai/symbolic_tree/...``, monitorable): ``fidelity`` (held-out accuracy of the
    surrogate against the classifier), ``macro_f1``, ``train_fidelity``, ``norm/level_<l>`` (mean
    hyperbolic norm of the codes), ``norm_order_share`` (hard edges whose parent is nearer the origin),
    ``edge_agreement`` (tokens routed along hard edges), ``perplexity/level_<l>``, ``routed_edges``,
    ``fit_loss``, ``fit_steps`` and, from the second explained epoch on, ``drift/js_mean``,
    ``drift/js/level_<l>`` (Jensen-Shannon divergence of symbol usage) and ``drift/rules_jaccard``.

    Tables: ``rules`` (class, level, rule), ``usage`` (level, symbol, tokens, share, norm), ``history``;
    bar charts ``usage_level_<l>``, line chart ``history_chart``; media ``class_tree`` (one per class),
    ``usage_histogram``, ``semantics_level_<l>`` (the most used symbols of each level on the images that
    use them most, their evidence maps overlaid); text ``rules`` (markdown) and ``dot/class_<k>`` (Graphviz).

    Distributed: every rank receives the same gathered sample; **rank 0 fits** and broadcasts the fitted
    state and the scalars, so every rank logs the same values and warm-starts from the same model.

    Attributes (after an explained epoch): ``fitter`` (the :class:`~lightning_xai.hyperbolic.SymbolicFitter`:
    ``fitter.model`` is the symbolic model), ``last_result`` (the
    :class:`~lightning_xai.hyperbolic.SymbolicExplanation`, rank 0), ``warm_start_state`` (the fitter state the
    last fit started from, ``None`` for a fresh fit) and ``history``.

    Args:
        layer: dotted name of the feature map to explain. Default ``None``: the last layer before the head
            whose output is a spatial map (``conv5`` for ``TinyCNN``, ``layer4`` for a ResNet), found by a
            one-image probe at the first explained validation batch.
        levels: codebook sizes below the top level, finest first, strictly shrinking; the top level (one
            symbol per class) is added. Default ``(32, 16)``: three levels.
        every_n_epochs: explain every n-th epoch. Default: 1.
        steps_per_epoch: optimisation steps per explained epoch. Default: 100.
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
        holdout: share of the sample kept out of fitting to measure fidelity. Default: 0.25.
        prune: a child carrying fewer than ``prune`` x the tokens of its busiest sibling is pruned. Default: 0.3.
        class_share: top symbols above this share of a class's most used one are its class symbols. Default: 0.5.
        image_trees: image trees in the payload (images of different predicted classes, seeded). Default: 4.
        semantic_symbols: symbols per level in the visual-semantics panels (0: none, and no images are kept). Default: 4.
        semantic_images: images per symbol in those panels. Default: 4.
        loss_weights: overrides of :class:`~lightning_xai.hyperbolic.LossWeights`, e.g. ``{"align": 0.5}``.
        class_names: class names; default the model's or the datamodule's ``classes``.
        max_samples: validation samples kept per explained epoch. Default: 512.
        on, on_error, head, batch_to_input, seed: see :class:`~lightning_xai.callbacks.XAICallback`.

    Raises:
        MisconfigurationException: an argument is out of range, or ``levels`` does not shrink (the message
            names the valid choices).
        lightning_xai.capture.LayerNotFoundError: at setup, ``layer`` is not a sub-module.
        lightning_xai.hyperbolic.FeatureMapError: at the first explained epoch, ``layer`` is not a spatial
            feature map; lightning_xai.hyperbolic.LevelsError: the levels do not shrink towards the number of
            classes or there are more top symbols than classes (both reported according to ``on_error``).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_xai.callbacks.symbolic_tree import SymbolicTreeCallback
        >>> trainer = Trainer(callbacks=[SymbolicTreeCallback(every_n_epochs=5)])  # doctest: +SKIP
    """

    method = "symbolic_tree"
    needs_inputs = True

    def __init__(
        self,
        layer: str | None = None,
        levels: Sequence[int] = (32, 16),
        every_n_epochs: int = 1,
        steps_per_epoch: int = 100,
        warmup_steps: int = 100,
        *,
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
        class_names: Sequence[str] | None = None,
        max_samples: int = 512,
        on: Literal["validation", "train_epoch_end"] = "validation",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        head: str | None = None,
        batch_to_input: Any = None,
        seed: int = 0,
    ) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise MisconfigurationException(
                f"layer must be a dotted layer name or None (the last feature map before the head), but got {layer!r}."
            )
        super().__init__(
            every_n_epochs=every_n_epochs,
            on=on,
            max_samples=max_samples,
            on_error=on_error,
            max_failures=max_failures,
            layers=[layer] if layer else [],
            head=head,
            batch_to_input=batch_to_input,
            seed=seed,
        )
        self.layer = layer
        self.steps_per_epoch = check_int("steps_per_epoch", steps_per_epoch, 1)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.stop_at = None if stop_at is None else check_interval("stop_at", stop_at, 0.0, 1.0, low_open=True, high_open=False)
        self.min_steps = check_int("min_steps", min_steps, 0)
        if top_symbols is not None:
            check_int("top_symbols", top_symbols, 1)
        self.image_trees = check_int("image_trees", image_trees, 0)
        self.semantic_symbols = check_int("semantic_symbols", semantic_symbols, 0)
        self.semantic_images = check_int("semantic_images", semantic_images, 1)
        self.holdout = check_interval("holdout", holdout, 0.0, 1.0, low_open=True, high_open=True)
        self.prune = check_interval("prune", prune, 0.0, 1.0, low_open=False, high_open=False)
        self.class_share = check_interval("class_share", class_share, 0.0, 1.0, low_open=True, high_open=False)
        if loss_weights is not None and not isinstance(loss_weights, Mapping):
            raise MisconfigurationException(f"loss_weights must be a dict or None, but got {loss_weights!r}.")
        if loss_weights:
            unknown = sorted(set(loss_weights) - set(LossWeights.__dataclass_fields__))
            if unknown:
                raise MisconfigurationException(
                    f"loss_weights has unknown keys {unknown}; choose from {sorted(LossWeights.__dataclass_fields__)}."
                )
        if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)):
            raise MisconfigurationException(f"class_names must be a list of str, but got {class_names!r}.")
        try:
            self.config = SymbolicConfig(
                levels=levels,
                top_symbols=top_symbols,
                latent_channels=latent_channels,
                token_size=token_size,
                lr=lr,
                batch_size=batch_size,
                weights=LossWeights(**dict(loss_weights or {})),
            )
        except (LevelsError, ValueError, TypeError) as exc:
            raise MisconfigurationException(str(exc)) from None
        if top_symbols is not None and top_symbols >= self.config.levels[-1]:
            raise MisconfigurationException(
                f"levels={list(self.config.levels)} does not shrink towards top_symbols={top_symbols}: the last level "
                f"needs more than {top_symbols} symbols."
            )
        self.class_names = list(class_names) if class_names is not None else None
        # images are kept in the sample only for the visual-semantics panels
        self.needs_inputs = self.semantic_symbols > 0
        self._resolved_layer: str | None = layer
        self._probe_error: Exception | None = None
        self._fitter: SymbolicFitter | None = None
        self._fitter_state: dict[str, Any] | None = None
        self._previous: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_result: SymbolicExplanation | None = None
        self.warm_start_state: dict[str, Any] | None = None

    # ---------------------------------------------------------------- state
    def _state_key_fields(self) -> dict[str, Any]:
        fields = super()._state_key_fields()
        fields["layers"] = [self.layer] if self.layer else []  # the argument, not the layer a probe found
        fields["levels"] = list(self.config.levels)
        fields["top_symbols"] = self.config.top_symbols
        return fields

    def explainer_state(self) -> dict[str, Any]:
        fitter_state = self._fitter.state_dict() if self._fitter is not None else self._fitter_state
        return {
            "layer": self._resolved_layer,
            "fitter": fitter_state,
            "previous": self._previous,
            "history": list(self.history),
        }

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._fitter = None
        self._fitter_state = state.get("fitter")
        self._previous = state.get("previous")
        self.history = list(state.get("history", []))
        if self.layer is None and state.get("layer"):
            self._resolved_layer = state["layer"]

    @property
    def fitter(self) -> SymbolicFitter | None:
        """The symbolic model's fitter after the last explained epoch (rebuilt from a checkpoint if needed)."""
        if self._fitter is None and self._fitter_state is not None:
            self._fitter = SymbolicFitter.from_state_dict(self._fitter_state)
        return self._fitter

    # ---------------------------------------------------------------- hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.layer is None and self._resolved_layer is not None:
            self.layers = (self._resolved_layer,)
        super().setup(trainer, pl_module, stage)

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # the default layer is found on the first explained batch, before it runs, so the capture keeps its
        # activations from that batch on (one probe forward of one image, once per run)
        if not self._armed or self._capture is None or self.layers or batch_idx != 0 or dataloader_idx != 0:
            return
        try:
            inputs, _ = self.batch_to_input(batch)
            self._resolved_layer = find_feature_layer(pl_module, inputs[:1], head=self._capture.head_name)
        except Exception as exc:  # noqa: BLE001 - reported at the end of the epoch, according to on_error
            self._probe_error = exc
            return
        self._probe_error = None
        self.layers = (self._resolved_layer,)
        self._capture = ActivationCapture.acquire(
            pl_module,
            owner=self,
            layers=self.layers,
            max_samples=self.max_samples,
            head=self.head,
            needs_inputs=self.needs_inputs,
            seed=self.seed,
        )

    # ---------------------------------------------------------------- method
    def _names(self, trainer: Trainer, pl_module: LightningModule, n_classes: int) -> list[str] | None:
        for names in (
            self.class_names,
            getattr(pl_module, "classes", None),
            getattr(getattr(trainer, "datamodule", None), "classes", None),
        ):
            if isinstance(names, (list, tuple)) and len(names) == n_classes and all(isinstance(n, str) for n in names):
                return list(names)
        return None

    def _get_fitter(self, in_channels: int, n_classes: int, device: torch.device) -> tuple[SymbolicFitter, int | None]:
        """The warm-start fitter (with the epoch it was last fitted at), or a new one."""
        fitter = self.fitter
        if fitter is not None and fitter.compatible(in_channels, n_classes, self.config):
            if fitter.device != device:
                fitter = SymbolicFitter.from_state_dict(fitter.state_dict(), device=device)
            return fitter, (self._previous or {}).get("epoch")
        if fitter is not None:
            rank_zero_warn(
                f"SymbolicTreeCallback: the saved symbolic model (for {fitter.model.in_channels} channels, "
                f"{fitter.model.n_classes} classes, levels {list(fitter.model.sizes)}) does not fit this run; "
                "fitting a new one."
            )
            self._previous = None
        return SymbolicFitter(in_channels, n_classes, self.config, seed=self.seed, device=device), None

    def explain(self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample) -> ExplainResult:
        if trainer.world_size <= 1:
            return self._explain_local(trainer, pl_module, sample)
        # rank 0 fits; the others receive its state and scalars, so every rank warm-starts alike
        result: ExplainResult | None = None
        error: Exception | None = None
        message: dict[str, Any] | None = None
        if trainer.is_global_zero:
            try:
                result = self._explain_local(trainer, pl_module, sample)
                # the payload too: listeners (the drift monitor) see the same result on every rank
                message = {"ok": True, "scalars": result.scalars, "state": self.explainer_state(), "payload": result.payload}
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others heard of it
                error = exc
                message = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        message = trainer.strategy.broadcast(message, src=0)
        if trainer.is_global_zero:
            if error is not None:
                raise error
            assert result is not None
            return result
        if not message["ok"]:
            raise RuntimeError(f"rank 0 failed to fit the symbolic model: {message['error']}")
        self.load_explainer_state(copy.deepcopy(message["state"]))
        return ExplainResult(payload=dict(message["payload"]), scalars=dict(message["scalars"]))

    def _explain_local(self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample) -> ExplainResult:
        epoch = trainer.current_epoch
        layer = self._resolved_layer
        if layer is None and self._probe_error is not None:
            raise self._probe_error
        if layer is None or layer not in sample.layers:
            raise RuntimeError(
                "SymbolicTreeCallback has no activations of its layer in this epoch's sample; pass layer='<name>' "
                "(a feature map before the head)."
            )
        acts = sample.layers[layer]
        check_feature_map(acts, f"layer {layer!r}")
        features = acts.detach().clone().float()  # captured under inference mode: clone before autograd
        logits = sample.logits.detach().clone().float()
        n_classes = int(logits.shape[1])
        resolve_levels(self.config.levels, n_classes, self.config.top_symbols)
        names = self._names(trainer, pl_module, n_classes)
        fitter, warm_epoch = self._get_fitter(int(features.shape[1]), n_classes, pl_module.device)
        self.warm_start_state = fitter.state_dict() if fitter.initialised else None
        if fitter.initialised:
            # the warm start keeps the symbolic model (so symbols keep their identity across epochs), but the
            # features and the classifier's predictions moved: start the optimiser's moments afresh
            fitter.reset_optimizer()
        warm = fitter.initialised
        steps = self.steps_per_epoch + (0 if warm else self.warmup_steps)
        res = explain_symbols(
            fitter,
            features,
            logits,
            steps,
            holdout=self.holdout,
            seed=self.seed,
            class_names=names,
            prune=self.prune,
            class_share=self.class_share,
            # the first fit places and settles the codebooks: it runs its warm-up in full before it may stop
            stop_at=self.stop_at,
            min_steps=self.min_steps if warm else max(self.min_steps, self.warmup_steps),
        )
        self._fitter, self._fitter_state = fitter, None
        self.last_result = res
        return self._result(epoch, layer, sample, res, names, warm_epoch, fitter)

    # ---------------------------------------------------------------- records
    def _result(
        self,
        epoch: int,
        layer: str,
        sample: ValidationSample,
        res: SymbolicExplanation,
        names: list[str] | None,
        warm_epoch: int | None,
        fitter: SymbolicFitter,
    ) -> ExplainResult:
        model = fitter.model
        sizes = list(model.sizes)
        ids = [int(i) for i in sample.ids]
        teacher = res.hierarchy.teacher
        routed = sum(t.routed_edges for t in res.class_trees.values())
        scalars: dict[str, float] = {
            "fidelity": res.fidelity["accuracy"],
            "macro_f1": res.fidelity["macro_f1"],
            "train_fidelity": res.train_fidelity["accuracy"],
            "norm_order_share": res.norm_order_share,
            "edge_agreement": _mean([a for a in res.edge_agreement if math.isfinite(a)]),
            "routed_edges": float(routed),
            "fit_loss": res.report.losses.get("total", math.nan),
            "fit_steps": float(res.report.total_steps),
        }
        for level, norm in enumerate(res.norms):
            scalars[f"norm/level_{level}"] = norm
        for level, ppl in enumerate(res.perplexity):
            scalars[f"perplexity/level_{level}"] = ppl

        # drift against the previous explained epoch
        drift: dict[str, Any] | None = None
        prev = self._previous
        if prev is not None and [len(u) for u in prev["usage"]] == [len(u) for u in res.usage]:
            js = [js_divergence(a, b) for a, b in zip(prev["usage"], res.usage)]
            jac = rules_jaccard(prev["rules"], res.rule_texts)
            drift = {
                "previous_epoch": prev["epoch"],
                "js_usage": [_none_if_nan(v) for v in js],
                "js_mean": _none_if_nan(_mean([v for v in js if math.isfinite(v)])),
                "rules_jaccard": jac,
            }
            scalars["drift/js_mean"] = _mean([v for v in js if math.isfinite(v)])
            for level, v in enumerate(js):
                scalars[f"drift/js/level_{level}"] = v
            scalars["drift/rules_jaccard"] = jac
        scalars = {k: v for k, v in scalars.items() if v is not None and math.isfinite(v)}

        # trees, rules
        class_trees = {c: t for c, t in res.class_trees.items()}
        label = {c: (names[c] if names else f"class {c}") for c in class_trees}
        dots = {c: tree_to_dot(t, f"class {c}") for c, t in class_trees.items()}
        rule_rows = [[r.class_index, label[r.class_index], r.level, r.text] for r in res.rules]
        image_rows = self._image_tree_rows(teacher, res)
        image_tree_payload = [
            {"id": ids[i], "row": i, "prediction": int(teacher[i]), "tree": res.hierarchy.image_tree(i).to_dict()}
            for i in image_rows
        ]

        # tables and charts
        tables = [
            Table("rules", ["class", "name", "level", "rule"], rule_rows),
            Table(
                "usage",
                ["level", "symbol", "tokens", "share", "norm"],
                [
                    [level, k, int(n), n / max(1, sum(u)), float(model.code_norms(level)[k])]
                    for level, u in enumerate(res.usage)
                    for k, n in enumerate(u)
                ],
            ),
        ]
        charts = [
            Chart(
                f"usage_level_{level}",
                "bar",
                Table(f"usage_level_{level}", ["symbol", "tokens"], [[f"S{level}_{k}", int(n)] for k, n in enumerate(u)]),
                "symbol",
                "tokens",
                title=f"Symbol usage at level {level}, epoch {epoch}",
            )
            for level, u in enumerate(res.usage)
        ]
        entry = {
            "epoch": epoch,
            "fidelity": res.fidelity["accuracy"],
            "macro_f1": res.fidelity["macro_f1"],
            "js_mean": None if drift is None else drift["js_mean"],
            "rules_jaccard": None if drift is None else drift["rules_jaccard"],
            "rules": len(res.rules),
            "fit_steps": res.report.total_steps,
        }
        self.history.append(entry)
        hist_cols = list(entry)
        ht = Table("history", hist_cols, [[h.get(c) for c in hist_cols] for h in self.history])
        tables.append(ht)
        charts.append(
            Chart("history_chart", "line", ht, "epoch", ["fidelity", "macro_f1"], title="Symbolic surrogate fidelity per explained epoch")
        )

        # media
        media: list[Media] = []
        for c, tree in class_trees.items():
            rules_c = "; ".join(r.text for r in res.rules if r.class_index == c and r.level == model.num_levels)
            media.append(Media("class_tree", tree_image(tree), caption=f"epoch {epoch}: {rules_c or tree.name}"))
        media.append(Media("usage_histogram", usage_image(res.usage, f"Symbol usage, epoch {epoch}"), caption=f"epoch {epoch}"))
        semantics_payload: list[dict[str, Any]] = []
        if self.semantic_symbols > 0 and sample.inputs is not None and sample.inputs.dim() == 4:
            size = (int(sample.inputs.shape[-2]), int(sample.inputs.shape[-1]))
            for level, u in enumerate(res.usage):
                order = sorted(range(len(u)), key=lambda k: (-u[k], k))[: self.semantic_symbols]
                sem = visual_semantics(res.encoding, [(level, k) for k in order if u[k] > 0], size, self.semantic_images)
                if not sem:
                    continue
                semantics_payload.extend(dict(s.to_dict(), ids=[ids[i] for i in s.images]) for s in sem)
                rows = "; ".join(f"row {r + 1}: {s.name} on ids {[ids[i] for i in s.images]}" for r, s in enumerate(sem))
                media.append(
                    Media(
                        f"semantics_level_{level}",
                        semantics_grid(sem, sample.inputs),
                        caption=f"epoch {epoch}, level {level}, where each symbol is evidenced ({rows})",
                    )
                )

        payload: dict[str, Any] = {
            "layer": layer,
            "levels": sizes,
            "classes": names,
            "n_samples": len(sample),
            "n_fit": int(res.fit_rows.numel()),
            "n_heldout": int(res.heldout_rows.numel()),
            "fidelity": res.fidelity,
            "train_fidelity": res.train_fidelity,
            "warm_start_epoch": warm_epoch,
            "fit": res.report.to_dict(),
            "norms": res.norms,
            "norm_order_share": _none_if_nan(res.norm_order_share),
            "edge_agreement": [_none_if_nan(a) for a in res.edge_agreement],
            "edges": [int(res.hierarchy.hard_edges(level).sum()) for level in range(model.num_levels - 1)],
            "usage": res.usage,
            "perplexity": res.perplexity,
            "class_symbols": {str(c): [int(k) for k in res.hierarchy.class_symbols(c)] for c in class_trees},
            "class_trees": {str(c): t.to_dict() for c, t in class_trees.items()},
            "image_trees": image_tree_payload,
            "rules": [r.to_dict() for r in res.rules],
            "routed_edges": routed,
            "semantics": semantics_payload,
            "drift": drift,
            "history": list(self.history),
        }
        text = {"rules": "\n".join(f"- `{r.text}`" for r in res.rules)}
        text.update({f"dot/class_{c}": dot for c, dot in dots.items()})
        self._previous = {"epoch": epoch, "usage": res.usage, "rules": res.rule_texts}
        return ExplainResult(payload=payload, scalars=scalars, tables=tables, charts=charts, media=media, text=text)

    def _image_tree_rows(self, teacher: Tensor, res: SymbolicExplanation) -> list[int]:
        """Up to ``image_trees`` held-out images, predicted classes taken in turn (seeded)."""
        if self.image_trees == 0:
            return []
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


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan

