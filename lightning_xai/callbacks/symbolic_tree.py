"""``SymbolicTreeCallback``: hierarchical symbols in hyperbolic space, refitted while the model trains."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback, check_int, misconfigured
from lightning_xai.capture import ValidationSample
from lightning_xai.hyperbolic import SymbolicFitter, SymbolicTree, find_feature_layer
from lightning_xai.results.symbolic_tree import SymbolicTreeResult
from lightning_xai.token_layout import spatial_layout

__all__ = ["SymbolicTreeCallback"]


class SymbolicTreeCallback(XAICallback):
    r"""Hierarchical symbolic explanations in hyperbolic space, refitted every few epochs while training.

    Each explained epoch it takes the feature map of ``layer`` that the validation loop already computed
    (the shared capture keeps a bounded sample of it: **no extra forward pass**) and the classifier's own
    predictions, and explains them with a :class:`~lightning_xai.hyperbolic.SymbolicTree`: a symbolic model
    (one token per channel, quantised into symbols at ``len(levels) + 1`` levels whose codebooks live on a
    Poincaré ball, linked by a learned soft adjacency; one top symbol per class and a surrogate head on them)
    trained for a bounded number of steps, **warm-started** from the previous explained epoch's model (kept in
    checkpoints), and read out as class trees, image trees, rules and visual semantics. A share ``holdout``
    of the sample is never fitted on and measures **fidelity** (surrogate vs classifier).

    The record of an explained epoch is a :class:`~lightning_xai.results.symbolic_tree.SymbolicTreeResult`
    (its docstring documents every field); what it logs is :meth:`SymbolicTreeResult.logged
    <lightning_xai.results.symbolic_tree.SymbolicTreeResult.logged>`: scalars ``xai/symbolic_tree/...``
    (monitorable: ``fidelity``, ``macro_f1``, ``train_fidelity``, ``norm_order_share``, ``edge_agreement``,
    ``routed_edges``, ``fit_loss``, ``fit_steps``; with ``log_scalars="all"`` also ``norm/level_<l>`` and
    ``perplexity/level_<l>``), tables ``rules``
    and ``usage``, bar charts ``usage_level_<l>``, media ``class_tree`` (one per class), ``usage_histogram`` and
    ``semantics_level_<l>``, text ``rules`` and ``dot/class_<k>`` (Graphviz). A record holds its own epoch only:
    the drift of symbol usage between epochs is the :class:`~lightning_xai.callbacks.ConceptDriftMonitor`'s
    (kind ``symbol_js``).

    Distributed: every rank receives the same gathered sample; **rank 0 fits** and broadcasts the fitted
    state and the result, so every rank logs the same values and warm-starts from the same model.

    Attributes (after an explained epoch): ``tree`` (the :class:`~lightning_xai.hyperbolic.SymbolicTree`;
    ``tree.explanation`` is the last :class:`~lightning_xai.hyperbolic.SymbolicExplanation`, rank 0),
    ``fitter`` (its :class:`~lightning_xai.hyperbolic.SymbolicFitter`: ``fitter.model`` is the symbolic model),
    ``last_result`` (the :class:`~lightning_xai.results.symbolic_tree.SymbolicTreeResult`) and
    ``warm_start_state`` (the fitter state the last fit started from, ``None`` for a fresh fit).

    Args:
        layer: dotted name of the feature map to explain. Default ``None``: the last layer before the head
            whose output is a spatial map (``conv5`` for ``TinyCNN``, ``layer4`` for a ResNet), found by a
            one-image probe at the first explained validation batch (kept in checkpoints).
        levels: codebook sizes below the top level, finest first, strictly shrinking; the top level (one
            symbol per class) is added. Default ``(32, 16)``: three levels.
        every_n_epochs: explain every n-th epoch. Default: 1.
        steps_per_epoch: optimisation steps per explained epoch (``steps`` of the tree). Default: 100.
        warmup_steps, stop_at, min_steps, top_symbols, latent_channels, token_size, batch_size, lr, holdout,
            prune, class_share, image_trees, semantic_symbols, semantic_images, loss_weights: the
            :class:`~lightning_xai.hyperbolic.SymbolicTree`'s (defaults 100, 0.99, 0, ``None``, 32, 4, 64, 3e-3,
            0.25, 0.3, 0.5, 4, 4, 4, ``None``); ``semantic_symbols=0`` also keeps no images in the sample.
        class_names: class names; default the model's or the datamodule's ``classes``.
        max_samples: validation samples kept per explained epoch. Default: 512.
        **base: ``on``, ``on_error``, ``max_failures``, ``head``, ``batch_to_input``, ``seed``: see
            :class:`~lightning_xai.callbacks.XAICallback`.

    Raises:
        MisconfigurationException: an argument is out of range, or ``levels`` does not shrink (the message
            names the valid choices).
        lightning_xai.capture.LayerNotFoundError: at setup, ``layer`` is not a sub-module.
        lightning_xai.feature_maps.FeatureMapError: at the first explained epoch, ``layer`` is not a spatial
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
        *,
        every_n_epochs: int = 1,
        steps_per_epoch: int = 100,
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
        class_names: Sequence[str] | None = None,
        max_samples: int = 512,
        **base: Any,
    ) -> None:
        if layer is not None and (not isinstance(layer, str) or not layer):
            raise MisconfigurationException(
                f"layer must be a dotted layer name or None (the last feature map before the head), but got {layer!r}."
            )
        super().__init__(
            every_n_epochs=every_n_epochs,
            max_samples=max_samples,
            layers=[layer] if layer else [],
            **base,
        )
        self.layer = layer
        check_int("steps_per_epoch", steps_per_epoch, 1)
        with misconfigured():
            self.tree = SymbolicTree(
                levels,
                steps=steps_per_epoch,
                warmup_steps=warmup_steps,
                stop_at=stop_at,
                min_steps=min_steps,
                top_symbols=top_symbols,
                latent_channels=latent_channels,
                token_size=token_size,
                batch_size=batch_size,
                lr=lr,
                holdout=holdout,
                prune=prune,
                class_share=class_share,
                image_trees=image_trees,
                semantic_symbols=semantic_symbols,
                semantic_images=semantic_images,
                loss_weights=loss_weights,
                seed=self.seed,
            )
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)
        ):
            raise MisconfigurationException(f"class_names must be a list of str, but got {class_names!r}.")
        self.class_names = list(class_names) if class_names is not None else None
        # images are kept in the sample only for the visual-semantics panels
        self.needs_inputs = self.tree.semantic_symbols > 0
        self.last_result: SymbolicTreeResult | None = None

    # ---------------------------------------------------------------- state
    @override
    def _state_key_fields(self) -> dict[str, Any]:
        fields = super()._state_key_fields()
        fields["levels"] = list(self.tree.config.levels)
        fields["top_symbols"] = self.tree.config.top_symbols
        return fields

    @override
    def explainer_state(self) -> dict[str, Any]:
        return {"fitter": self.tree.state_dict()}

    @override
    def load_explainer_state(self, state: dict[str, Any]) -> None:
        # checkpoints of the callback before the typed results also hold "previous" and "history": ignored
        self.tree.load_state_dict(state.get("fitter"))

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # checkpoints of the callback before the typed results kept the layer it found in its own state
        old_layer = (state_dict.get("explainer") or {}).get("layer")
        if self.layer is None and old_layer and "default_layers" not in state_dict:
            state_dict = {**state_dict, "default_layers": [old_layer]}
        super().load_state_dict(state_dict)

    @property
    def fitter(self) -> SymbolicFitter | None:
        """The symbolic model's fitter after the last explained epoch (rebuilt from a checkpoint if needed)."""
        return self.tree.fitter

    @property
    def warm_start_state(self) -> dict[str, Any] | None:
        """The fitter state the last fit started from (``None`` for a fresh fit)."""
        return self.tree.warm_start_state

    # ---------------------------------------------------------------- method
    @override
    def default_layers(self, pl_module: LightningModule, example: Tensor) -> list[str]:
        head = self._capture.head_name if self._capture is not None else self.head
        return [find_feature_layer(pl_module, example, head=head)]

    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> SymbolicTreeResult:
        if trainer.world_size <= 1:
            self.last_result = self._explain_here(trainer, pl_module, sample)
            return self.last_result
        # rank 0 fits; the others receive its state and result, so every rank warm-starts and logs alike
        message: dict[str, Any] | None = None
        result: SymbolicTreeResult | None = None
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                result = self._explain_here(trainer, pl_module, sample)
                message = {"ok": True, "state": self.tree.state_dict(), "payload": result.to_payload()}
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others heard of it
                error = exc
                message = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        message = trainer.strategy.broadcast(message, src=0)
        if error is not None:
            raise error
        if not message["ok"]:
            raise RuntimeError(f"rank 0 failed to fit the symbolic model: {message['error']}")
        if result is not None:
            self.last_result = result  # with its visual-semantics panels, which only rank 0 logs
        else:
            self.tree.load_state_dict(copy.deepcopy(message["state"]))
            self.last_result = SymbolicTreeResult.from_payload(message["payload"], SymbolicTreeResult.schema)
        return self.last_result

    def _explain_here(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> SymbolicTreeResult:
        layer = self.layers[0] if self.layers else None
        if layer is None or layer not in sample.layers:
            raise RuntimeError(
                "SymbolicTreeCallback has no activations of its layer in this epoch's sample; pass layer='<name>' "
                "(a feature map before the head)."
            )
        features = sample.layers[layer]
        layout = spatial_layout(pl_module, tuple(features.shape[1:])) if features.dim() == 3 else None
        if (
            layout is not None
        ):  # a transformer's tokens: its patch tokens on their grid, one symbol token each
            features = layout.to_map(features)
        return self.tree.explain(
            features,
            sample.logits,
            layer=layer,
            ids=sample.ids,
            images=sample.inputs,
            class_names=self.class_names_for(trainer, pl_module, int(sample.logits.shape[1])),
            device=pl_module.device,
        )
