"""``ConceptAttributionCallback``: TCAV scores, Visual-TCAV concept maps and attributions while training."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_xai import checks
from lightning_xai.callbacks.base import XAICallback, check_int, check_interval, misconfigured, run_share
from lightning_xai.capture import ValidationSample, resolve_layer
from lightning_xai.results.concept_attribution import ConceptAttributionResult
from lightning_xai.tcav.cav import CAV_KINDS
from lightning_xai.tcav.data import check_folder, check_images, sample_pool
from lightning_xai.tcav.epoch import Split
from lightning_xai.tcav.explainer import TOKEN_POOLINGS, ConceptAttribution

__all__ = ["ConceptAttributionCallback"]


class ConceptAttributionCallback(XAICallback):
    r"""Track concepts while training: TCAV scores with significance, Visual-TCAV maps and attributions.

    Each explained epoch, on the shared validation sample (no extra pass over validation data),
    :meth:`lightning_xai.tcav.ConceptAttribution.explain` (attribute ``explainer``) trains ``n_random`` CAVs
    per concept and layer, scores every concept for every class (TCAV sign fractions and magnitudes, Welch
    t-test against random-vs-random CAVs, Bonferroni over all layer x concept x class), and runs Visual-TCAV's
    integrated gradients for the global attributions (mean, SE and 2-SE interval per class) and for the
    concept maps and local attributions of the probe images. Under DDP the (class, concept) pairs are split
    across ranks and gathered; every rank logs the same scalars and rank 0 writes the record.

    The record ``{"method": "concept_attribution", "name": "epoch"}`` of each explained epoch holds a
    :class:`~lightning_xai.results.concept_attribution.ConceptAttributionResult` (its fields are documented
    there), and its ``logged`` lists what goes to the loggers: the scalar ``n_significant`` (logged as
    ``xai/concept_attribution/n_significant``, plus ``time_s``), the tables ``tcav_scores``,
    ``global_attribution`` and ``local_attribution``, TCAV bar charts, figures of the scores and
    attributions, and the probes' concept maps. A record holds its own epoch only: how each concept's CAV
    turns between epochs is the :class:`~lightning_xai.callbacks.ConceptDriftMonitor`'s (kind ``cav_cosine``).

    Args:
        concepts: ``{name: images}`` where images are a tensor ``[N, C, H, W]`` preprocessed like the model's
            inputs, a map-style ``Dataset`` of such images, or the path of a folder of image files (read with
            ``concept_transform``). At least 2 images each.
        layers: dotted layer names; default: the model's last layer with a spatial feature map (found on the
            first explained epoch and kept in the checkpoint), e.g. ``layer4`` of a ResNet.
        classes: class indices or names to explain; default: the classes present in the sample (at most
            ``max_classes``, the most frequent first).
        random: random counter-examples (same forms as a concept); default: a seeded sample of
            ``random_pool_size`` validation images, the same every epoch.
        n_random: random runs per concept (and random-vs-random null runs). Default: 30, enough for the t-test
            to survive the Bonferroni correction over a few concepts and classes.
        cav: ``"mean"`` (centroid difference, Visual-TCAV / FastCAV) or ``"linear"`` (logistic regression).
        probe_images: fixed images whose concept maps are logged: a tensor ``[N, C, H, W]``, or how many
            images of the validation sample to use (0: none). Default: 4.
        every_n_epochs: explain every n-th epoch. Default: 1.
        images_per_class: images per class for the Visual-TCAV global attribution. Default: 20.
        random_pool_size: validation images drawn as the default random pool. Default: 200.
        max_concept_images: keep at most this many images per concept. Default: 100.
        max_classes: most classes explained when ``classes`` is None. Default: 10.
        m_steps: integrated-gradient steps. Default: 50.
        alpha: significance level after Bonferroni correction. Default: 0.05.
        concept_transform: PIL image -> tensor for folder concepts (default: resize to the input size,
            ``to_tensor``); pass the model's normalisation here.
        class_names: all class names (default: the model's or the datamodule's ``classes``, or ``class_<k>``).
        token_pooling, reshape_transform: for transformer layers: the CAV space of tokens (``"mean"`` patch
            token, ``"cls"`` or ``"none"``: flattened) and a map for layouts other than tokens on a square grid
            (see :class:`~lightning_xai.tcav.ConceptAttribution`).
        max_samples, **base: see :class:`XAICallback` (keyword-only).

    Raises:
        MisconfigurationException: an argument has the wrong type or range, a concept tensor has fewer than 2
            images, a folder does not exist (at setup), or a layer name is unknown (at setup, listing close
            names).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> cb = ConceptAttributionCallback(
        ...     concepts={"striped": "concepts/striped/", "dotted": "concepts/dotted/"},
        ...     layers=["layer4"], every_n_epochs=2)  # doctest: +SKIP
        >>> Trainer(callbacks=[cb]).fit(model, datamodule)  # doctest: +SKIP
    """

    method = "concept_attribution"
    needs_inputs = True

    def __init__(
        self,
        concepts: Mapping[str, Any] | None = None,
        layers: Sequence[str] | str | None = None,
        classes: Sequence[int | str] | None = None,
        *,
        random: Any = None,
        n_random: int = 30,
        cav: Literal["mean", "linear"] = "mean",
        probe_images: int | Tensor = 4,
        every_n_epochs: int = 1,
        images_per_class: int = 20,
        random_pool_size: int = 200,
        max_concept_images: int = 100,
        max_classes: int = 10,
        m_steps: int = 50,
        alpha: float = 0.05,
        concept_transform: Any = None,
        class_names: Sequence[str] | None = None,
        token_pooling: Literal["mean", "cls", "none"] = "mean",
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        max_samples: int = 512,
        **base: Any,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            max_samples=max_samples,
            layers=(),  # our layers are explained on concept sets, not sampled from validation
            **base,
        )
        self.concepts = self._check_concepts(concepts)
        layers = [layers] if isinstance(layers, str) else layers
        if layers is not None and (not layers or not all(isinstance(n, str) and n for n in layers)):
            raise MisconfigurationException(
                f"layers must be None (the last feature-map layer) or a list of dotted layer names, got {layers!r}."
            )
        #: the given layers, else those found on the first explained epoch (kept in the checkpoint)
        self.concept_layers = list(dict.fromkeys(layers)) if layers is not None else None
        self._given_concept_layers = self.concept_layers  # the state key's: found layers must not change it
        if classes is not None:
            classes = [classes] if isinstance(classes, (str, int)) else classes
            if not classes or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes):
                raise MisconfigurationException(
                    f"classes must be None or a list of class indices or names, got {classes!r}."
                )
        self.classes = list(classes) if classes is not None else None
        if cav not in CAV_KINDS:
            raise MisconfigurationException(f"cav={cav!r} is not supported; choose one of {list(CAV_KINDS)}.")
        for name, value, low in (
            ("n_random", n_random, 2),
            ("images_per_class", images_per_class, 1),
            ("random_pool_size", random_pool_size, 3),
            ("max_concept_images", max_concept_images, 2),
            ("max_classes", max_classes, 1),
            ("m_steps", m_steps, 1),
        ):
            check_int(name, value, low)
        if isinstance(probe_images, Tensor):
            if probe_images.dim() != 4 or probe_images.shape[0] < 1:
                raise MisconfigurationException(
                    "probe_images must be a tensor [N, C, H, W] or a number of validation images, got shape "
                    f"{list(probe_images.shape)}."
                )
        elif isinstance(probe_images, bool) or not isinstance(probe_images, int) or probe_images < 0:
            raise MisconfigurationException(
                f"probe_images must be a tensor [N, C, H, W] or an integer >= 0, but got {probe_images!r}."
            )
        check_interval("alpha", alpha, 0, 1, low_open=True, high_open=True)
        if random is not None and not isinstance(random, (Tensor, Dataset, str, os.PathLike)):
            raise MisconfigurationException(
                "random must be None (a sample of validation images), a tensor, a Dataset or a folder path, got "
                f"{type(random).__name__}."
            )
        self.random, self.probe_images, self.concept_transform = random, probe_images, concept_transform
        with misconfigured():
            self.token_pooling = checks.check_choice("token_pooling", token_pooling, TOKEN_POOLINGS)
        self.reshape_transform = reshape_transform
        self.n_random, self.cav, self.alpha, self.m_steps = n_random, cav, float(alpha), m_steps
        self.images_per_class, self.random_pool_size = images_per_class, random_pool_size
        self.max_concept_images, self.max_classes = max_concept_images, max_classes
        self.class_names = list(class_names) if class_names is not None else None
        #: the method, built each explained epoch (it needs the model and the random pool)
        self.explainer: ConceptAttribution | None = None

    @staticmethod
    def _check_concepts(concepts: Any) -> dict[str, Any]:
        if concepts is None:
            return {}
        if not isinstance(concepts, Mapping):
            raise MisconfigurationException(
                f"concepts must be a dict {{name: images}}, got {type(concepts).__name__}; e.g. "
                "concepts={'striped': 'concepts/striped/', 'dotted': dotted_tensor}."
            )
        for name, source in concepts.items():
            if not isinstance(name, str) or not name:
                raise MisconfigurationException(f"Concept names must be non-empty strings, got {name!r}.")
            if isinstance(source, Tensor):
                if source.dim() != 4:
                    raise MisconfigurationException(
                        f"Concept {name!r}: a tensor of images must be [N, C, H, W], got shape {list(source.shape)}."
                    )
                with misconfigured():
                    check_images(name, source)
            elif not isinstance(source, (Dataset, str, os.PathLike)):
                raise MisconfigurationException(
                    f"Concept {name!r} is a {type(source).__name__}; give a tensor [N, C, H, W], a Dataset of "
                    "images or the path of a folder of images."
                )
        return dict(concepts)

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "concepts": sorted(self.concepts),
            "concept_layers": self._given_concept_layers,
            "classes": self.classes,
            "cav": self.cav,
            "n_random": self.n_random,
        }

    @override
    def explainer_state(self) -> dict[str, Any]:
        return {"layers": self.concept_layers}

    @override
    def load_explainer_state(self, state: dict[str, Any]) -> None:
        # checkpoints of earlier versions also hold "previous" and "history" (the drift monitor's now)
        if self.concept_layers is None and state.get("layers"):
            self.concept_layers = list(state["layers"])

    # ---------------------------------------------------------------- hooks
    @override
    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name in self.concept_layers or ():
            resolve_layer(pl_module, name)  # fails now, listing close names, not at the first explained epoch
        pool = {"random pool": self.random} if self.random is not None else {}
        with misconfigured():
            for name, source in {**self.concepts, **pool}.items():
                check_folder(name, source)
        if not self.concepts:
            rank_zero_warn(
                "ConceptAttributionCallback has no concepts, so it cannot explain anything; pass "
                "concepts={'<name>': <tensor [N, C, H, W] | Dataset | folder of images>, ...}."
            )

    # ---------------------------------------------------------------- method
    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> ConceptAttributionResult:
        if not self.concepts:
            raise ValueError(
                "No concepts to explain: pass concepts={'<name>': <tensor [N, C, H, W] | Dataset | folder of "
                "images>, ...} to ConceptAttributionCallback"
            )
        if sample.inputs is None:
            raise RuntimeError("ConceptAttributionCallback needs images; the validation sample holds none.")
        inputs = sample.inputs.clone()  # captured under inference mode: clone before autograd sees it
        targets = (sample.labels if sample.labels is not None else sample.logits.argmax(1)).long().cpu()
        n = int(sample.logits.shape[1])
        names = self.class_names_for(trainer, pl_module, n) or [f"class_{k}" for k in range(n)]
        random = self.random
        pool = random if random is not None else sample_pool(inputs, self.random_pool_size, self.seed)
        ex = self.explainer = ConceptAttribution(
            pl_module,
            layers=self.concept_layers,
            concepts=self.concepts,
            random=pool,
            cav=self.cav,
            n_random=self.n_random,
            alpha=self.alpha,
            m_steps=self.m_steps,
            transform=self.concept_transform,
            input_shape=tuple(inputs.shape[1:]),
            max_images=self.max_concept_images,
            class_names=names,
            seed=self.seed,
            head=self._capture.head_name if self._capture is not None else self.head,
            token_pooling=self.token_pooling,
            reshape_transform=self.reshape_transform,
        )
        split = Split(
            rank=trainer.global_rank,
            world=max(1, trainer.world_size),
            gather=lambda t: pl_module.all_gather(t.to(pl_module.device)),
            guard=functools.partial(run_share, trainer),
        )
        probes = self.probe_images if isinstance(self.probe_images, Tensor) else inputs[: self.probe_images]
        probes = probes if trainer.is_global_zero and len(probes) else None  # media: rank 0 only
        described = None if random is not None else f"validation sample ({int(pool.shape[0])} images)"
        ex.begin(("epoch", trainer.current_epoch, trainer.global_step))  # activations and CAVs of this epoch
        try:
            result = ex.explain(
                inputs,
                targets,
                classes=self.classes,
                max_classes=self.max_classes,
                images_per_class=self.images_per_class,
                probes=probes,
                random_pool=described,
                split=split,
            )
        finally:
            ex.release()  # this epoch's activations and CAVs are of no use to the next one: free them now
        self.concept_layers = result.layers
        return result
