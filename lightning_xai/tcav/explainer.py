"""``ConceptAttribution``: TCAV scores with significance and Visual-TCAV maps and attributions.

One object holds the model, the layers, the concept sets and the random pool; its methods share one
activation cache and one set of CAVs:

* :meth:`ConceptAttribution.explain` ``(inputs, target)`` -> :class:`~lightning_xai.results.concept_attribution.ConceptAttributionResult`:
  everything one explained epoch records (TCAV scores with significance, global attributions, local
  attributions of probe images, the CAVs);
* :meth:`ConceptAttribution.cavs` -> ``{layer: CAVSet}``;
* :meth:`ConceptAttribution.tcav` ``(inputs, target)`` -> :class:`~lightning_xai.tcav.TCAVResult`;
* :meth:`ConceptAttribution.attribute` ``(inputs, target)`` -> :class:`~lightning_xai.tcav.VisualTCAVResult`
  (per image: concept maps and concept attributions), whose
  :meth:`~lightning_xai.tcav.VisualTCAVResult.global_explanation` gives the per-class mean, SE and 2-SE
  interval; :meth:`ConceptAttribution.local` explains one image's top classes.

The call shape follows Captum's ``attribute(inputs, target=...)``; the results (:mod:`lightning_xai.tcav.scores`)
are typed objects that index by concept, class and layer and turn into table rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.capture import explanation_mode, resolve_layer
from lightning_xai.results.concept_attribution import (
    ConceptAttributionResult,
    GlobalAttribution,
    ProbeAttribution,
    TCAVEntry,
)
from lightning_xai.tcav.activations import (
    ActivationCache,
    last_feature_map_layer,
    layer_activations,
    layer_gradients,
    model_device,
    model_version,
)
from lightning_xai.tcav.cav import CAV_KINDS, CAVSet, concept_shift, train_cavs
from lightning_xai.tcav.data import (
    ConceptDataError,
    ConceptSource,
    check_images,
    describe_source,
    fingerprint,
    load_images,
    random_set_indices,
)
from lightning_xai.tcav.epoch import Split, class_indices, pair_statistics, probe_attributions
from lightning_xai.tcav.scores import GlobalExplanation, TCAVResult, VisualTCAVResult
from lightning_xai.tcav.visual import (
    IntegratedGradients,
    concept_attributions,
    concept_maps,
    concept_projection,
    emblems,
    integrated_gradients,
    upsample_maps,
)
from lightning_xai.token_layout import SpatialLayout, spatial_layout

__all__ = ["TOKEN_POOLINGS", "ConceptAttribution"]

#: the CAV spaces of a token layer (see ``token_pooling``)
TOKEN_POOLINGS = ("mean", "cls", "none")


def _as_map(cavset: CAVSet, acts: Tensor) -> Tensor:
    """A layer's activations as ``[N, C, H, W]`` by its CAV set's layout (tokens: the patch grid)."""
    if cavset.layout is None:
        raise ValueError(
            f"Visual-TCAV needs a spatial view of layer {cavset.layer!r}, whose activations are "
            f"{list(cavset.shape)} per image: neither a feature map [C, H, W] nor tokens [T, C] on a square patch "
            "grid. Pass reshape_transform=<activations -> [N, C, H, W]> or choose a convolutional layer."
        )
    return cavset.layout.to_map(acts)


RANDOM = "<random pool>"


# ------------------------------------------------------------------------------------------------ explainer
class ConceptAttribution:
    r"""TCAV and Visual-TCAV on a PyTorch model, for concepts given by example images.

    Args:
        model: The classifier (``nn.Module``); inputs ``[N, C, H, W]``, outputs logits ``[N, n_classes]``.
        layers: Dotted layer names; default: the last layer with a spatial feature map before the head
            (:func:`~lightning_xai.tcav.activations.last_feature_map_layer`).
        concepts: ``{name: source}``; a source is a tensor ``[N, C, H, W]``, a Dataset of images or a folder
            path (see :func:`~lightning_xai.tcav.data.load_images`). Each needs at least 2 images.
        random: The pool of random counter-examples (same forms). ``R + 1`` random sets are drawn from it.
        cav: ``"mean"`` (centroid difference; Visual-TCAV / FastCAV) or ``"linear"`` (logistic regression,
            trained in torch on the model's device, all runs of all concepts as one batched model).
        n_random: ``R``, the number of random runs (CAVs per concept, and random-vs-random null CAVs).
        random_set_size: images per random set; default: the largest concept set, at most half the pool.
        alpha: significance level after Bonferroni correction.
        m_steps: integration steps of Visual-TCAV's integrated gradients.
        transform: PIL image -> tensor for folder sources (default: ``to_tensor``, resized to ``input_shape``).
        input_shape: the model's input shape ``[C, H, W]``; concept images must match it. Default: the shape
            of the first batch explained, else of the random pool.
        max_images: keep at most this many images per concept.
        class_names: names of the model's classes (default ``class_<k>``).
        batch_size: images per forward pass; ig_batch_rows: rows per integrated-gradients pass.
        l2, max_iter: L2 penalty and iteration cap of ``"linear"`` CAVs (see :func:`~lightning_xai.tcav.cav.linear_cavs`).
        seed: seed of the random sets.
        head: name of the classifier head, for the default layer (one before the head starts); default: the
            last ``nn.Linear``, or any layer when the model has none.
        reshape_transform: activations of a layer -> ``[N, C, H, W]`` for Visual-TCAV's maps, for layouts that
            are neither convolutional maps nor transformer tokens (``[N, T, C]``, laid out on the patch grid
            without the class, register and distillation tokens; see :mod:`lightning_xai.token_layout`).
        token_pooling: the space of a token layer's CAVs: ``"mean"`` (the mean patch token, ``[C]``; its
            directional derivative adds the CAV to every patch token), ``"cls"`` (the class token) or ``"none"``
            (all tokens flattened, ``[T * C]``, as a convolutional map is).
        cache: an :class:`~lightning_xai.tcav.activations.ActivationCache` to share with other explainers of the
            same model (e.g. a ``"mean"`` and a ``"linear"`` one: activations and integrated gradients are
            computed once).

    Raises:
        ValueError: an unknown ``cav``, ``n_random < 2``, ``m_steps < 1``, no concepts or no random pool.
        LayerNotFoundError: a layer name that is not a sub-module (the message lists close names).

    Example:
        >>> from lightning_xai.world import TinyCNN, concept_set, random_set
        >>> model = TinyCNN(num_classes=6).eval()
        >>> explainer = ConceptAttribution(
        ...     model, layers=["conv5"], concepts={"striped": concept_set("texture:striped", 8, seed=1)},
        ...     random=random_set(24, seed=2), n_random=3, m_steps=4)
        >>> scores = explainer.tcav(random_set(6, seed=3), target=0)
        >>> scores.sign_runs.shape  # [layers, concepts, classes, runs]
        torch.Size([1, 1, 1, 3])
        >>> local = explainer.local(random_set(1, seed=4)[0], n_classes=2)
        >>> local.attributions.shape  # [layers, concepts, images, targets]
        torch.Size([1, 1, 1, 2])
        >>> epoch = explainer.explain(random_set(12, seed=5), images_per_class=2)  # what a callback records
        >>> epoch.layers, epoch.n_hypotheses == len(epoch.scores) == len(epoch.classes)
        (['conv5'], True)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str | None = None,
        concepts: Mapping[str, ConceptSource] | None = None,
        random: ConceptSource | None = None,
        *,
        cav: str = "mean",
        n_random: int = 30,
        random_set_size: int | None = None,
        alpha: float = 0.05,
        m_steps: int = 50,
        transform: Any = None,
        input_shape: Sequence[int] | None = None,
        max_images: int | None = None,
        class_names: Sequence[str] | None = None,
        batch_size: int = 64,
        ig_batch_rows: int = 512,
        l2: float = 1.0,
        max_iter: int = 50,
        seed: int = 0,
        cache: ActivationCache | None = None,
        head: str | None = None,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        token_pooling: str = "mean",
    ) -> None:
        if cav not in CAV_KINDS:
            raise ValueError(f"cav={cav!r} is not supported; choose one of {list(CAV_KINDS)}.")
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 2:
            raise ValueError(f"n_random must be an integer >= 2 (a t-test needs two runs), got {n_random!r}.")
        if isinstance(m_steps, bool) or not isinstance(m_steps, int) or m_steps < 1:
            raise ValueError(f"m_steps must be an integer >= 1, got {m_steps!r}.")
        if not concepts:
            raise ValueError(
                "No concepts given: pass concepts={'striped': images_or_dataset_or_folder, ...} with at least one concept."
            )
        if random is None:
            raise ValueError(
                "No random pool given: pass random=<tensor, Dataset or folder of random counter-example images>."
            )
        bad = [k for k in concepts if not isinstance(k, str) or not k or k == RANDOM]
        if bad:
            raise ValueError(f"Concept names must be non-empty strings other than {RANDOM!r}; got {bad}.")
        self.model = model
        self.head = head
        self.reshape_transform = reshape_transform
        if token_pooling not in TOKEN_POOLINGS:
            raise ValueError(
                f"token_pooling={token_pooling!r} is not supported; choose one of {list(TOKEN_POOLINGS)}."
            )
        self.token_pooling = token_pooling
        if isinstance(layers, str):
            layers = [layers]
        self._layers = list(dict.fromkeys(layers)) if layers else None
        for name in self._layers or ():
            resolve_layer(model, name)
        self.sources = dict(concepts)
        self.random_source = random
        self.cav = cav
        self.n_random = int(n_random)
        self.random_set_size = random_set_size
        self.alpha = float(alpha)
        self.m_steps = int(m_steps)
        self.transform = transform
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.max_images = max_images
        self.class_names = list(class_names) if class_names is not None else None
        self.batch_size = int(batch_size)
        self.ig_batch_rows = int(ig_batch_rows)
        self.l2 = float(l2)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.cache = cache if cache is not None else ActivationCache()
        # per set: [cache key, images, fingerprint or None until asked for]
        self._loaded: dict[str, list[Any]] = {}
        self._cavs: dict[tuple, CAVSet] = {}
        self._token: Hashable | None = None

    # ------------------------------------------------------------------ state
    @property
    def concepts(self) -> list[str]:
        return list(self.sources)

    def begin(self, token: Hashable | None = None) -> None:
        """Start a model state (e.g. an epoch): cached activations and CAVs of other states are dropped.

        Without a token the model's parameter/buffer version counters are used, which change with every
        optimiser step; every public method calls this, so a standalone user never sees stale values.
        """
        token = ("auto", model_version(self.model)) if token is None else ("user", token)
        if token != self._token:
            self._token = token
            self.cache.begin(token)
            self._cavs.clear()
            self._loaded.clear()

    def release(self) -> None:
        """Drop cached activations, CAVs and loaded images now (the next call rebuilds them).

        A callback calls this after each explained epoch, so nothing of that epoch's work stays in memory
        until the next one (they would be dropped then anyway, since the model will have changed).
        """
        self._token = None
        self.cache.begin(None)
        self._cavs.clear()
        self._loaded.clear()

    def _ensure_state(self) -> None:
        if self._token is None or self._token[0] == "auto":
            self.begin(None)

    def layers(self, example: Tensor | None = None) -> list[str]:
        """The explained layers (the default layer is found on ``example`` or the random pool)."""
        if self._layers is None:
            if example is None:
                example = self._images(RANDOM)
            self._layers = [last_feature_map_layer(self.model, example[:1], head=self.head)]
        return list(self._layers)

    def _images(self, name: str) -> Tensor:
        """A concept's (or the pool's) images, loaded and checked once per model state.

        A tensor source is read again when it was modified in place since (its version counter moved), so
        editing a concept's tensor between two calls is never missed.
        """
        source = self.random_source if name == RANDOM else self.sources[name]
        # one explained epoch asks for every set many times (per class, layer and probe): loading, checking
        # and hashing them each time cost about as much as the CAVs themselves
        key = (self._token, source._version, source.data_ptr()) if isinstance(source, Tensor) else self._token
        cached = self._loaded.get(name)
        if cached is not None and cached[0] == key:
            images = cached[1]
            if self.input_shape is not None and tuple(images.shape[1:]) != tuple(self.input_shape):
                # loaded before the model's input shape was known: the shape check is all that is owed
                check_images(name if name != RANDOM else "random pool", images, self.input_shape, 0, source)
            return images
        if isinstance(source, Tensor):
            images = load_images(
                name if name != RANDOM else "random pool",
                source,
                input_shape=self.input_shape,
                max_images=None if name == RANDOM else self.max_images,
            )
            self._loaded[name] = [key, images, None]
            return images
        images = load_images(
            name if name != RANDOM else "random pool",
            source,
            transform=self.transform,
            input_shape=self.input_shape,
            max_images=None if name == RANDOM else self.max_images,
            min_images=3 if name == RANDOM else 2,
        )
        self._loaded[name] = [key, images, None]
        return images

    def _fingerprint(self, name: str, images: Tensor) -> str:
        """:func:`fingerprint` of the images :meth:`_images` just returned for a set, hashed once per load."""
        entry = self._loaded.get(name)
        if entry is None or entry[1] is not images:
            return fingerprint(images)
        if entry[2] is None:
            entry[2] = fingerprint(images)
        return entry[2]

    def _set_input_shape(self, inputs: Tensor) -> None:
        if self.input_shape is None:
            self.input_shape = tuple(int(s) for s in inputs.shape[1:])

    # ------------------------------------------------------------------ CAVs
    def cavs(self, layers: Sequence[str] | None = None) -> dict[str, CAVSet]:
        """The CAVs (and emblem thresholds) of every concept at every layer, for the current model state.

        One batched forward computes the activations of every concept set and the random pool at every layer
        (cached per model state and per fingerprint of each set's images); CAVs are cached on the same key.
        """
        self._ensure_state()
        images = {name: self._images(name) for name in self.concepts}
        pool = self._images(RANDOM)
        if self.input_shape is None:
            self.input_shape = tuple(int(s) for s in pool.shape[1:])
        for name, x in images.items():
            if tuple(x.shape[1:]) != tuple(pool.shape[1:]):
                raise ConceptDataError(
                    f"Concept {name!r} has images of shape {list(x.shape[1:])} but the random pool's are "
                    f"{list(pool.shape[1:])}; both must be preprocessed like the model's inputs."
                )
        layers = list(layers) if layers is not None else self.layers(pool)
        set_fps = {name: self._fingerprint(name, x) for name, x in {**images, RANDOM: pool}.items()}
        fps = tuple(set_fps.items())
        config = (self.cav, self.n_random, self.random_set_size, self.seed, self.l2, self.max_iter)
        keys = {layer: (self._token, layer, fps, config) for layer in layers}
        missing = [layer for layer in layers if keys[layer] not in self._cavs]
        if missing:
            sets = {**images, RANDOM: pool}
            acts = self.cache.activations(
                self.model, missing, sets, batch_size=self.batch_size, fps_known=set_fps
            )
            set_size = self._random_set_size(images, pool)
            idx = random_set_indices(pool.shape[0], self.n_random + 1, set_size, self.seed)
            for layer in missing:
                self._cavs[keys[layer]] = self._fit_layer(
                    layer, {n: acts[n][layer] for n in images}, acts[RANDOM][layer], idx
                )
        return {layer: self._cavs[keys[layer]] for layer in layers}

    def _cav_space(self, layout: SpatialLayout | None) -> Callable[[Tensor], Tensor]:
        if layout is None:
            return lambda acts: acts.flatten(1)
        return lambda acts: layout.cav_space(acts, self.token_pooling)

    def _cav_gradient(self, layout: SpatialLayout | None, grads: Tensor) -> Tensor:
        return grads.flatten(1) if layout is None else layout.cav_gradient(grads, self.token_pooling)

    def _random_set_size(self, images: dict[str, Tensor], pool: Tensor) -> int:
        if self.random_set_size is not None:
            return int(self.random_set_size)
        largest = max(x.shape[0] for x in images.values())
        return max(2, min(largest, pool.shape[0] // 2))

    def _fit_layer(
        self, layer: str, concept_acts: dict[str, Tensor], pool_acts: Tensor, idx: Tensor
    ) -> CAVSet:
        shape = tuple(pool_acts.shape[1:])
        layout = spatial_layout(self.model, shape, self.reshape_transform)
        space = self._cav_space(layout)
        flat_pool = space(pool_acts).float()
        idx = idx.to(flat_pool.device)
        negatives = flat_pool[idx[1:]]  # [R, n, m]: random_1 .. random_R
        # the null contrasts two *different* random sets in every run (random_{r-1} vs random_r): a fixed
        # random_0 would be one random "concept" whose own sampling bias makes its scores consistent
        null_positives = flat_pool[idx[:-1]]  # [R, n, m]: random_0 .. random_{R-1}
        positives = [space(concept_acts[n]).float() for n in self.concepts]
        with torch.no_grad():
            # every concept x run and the null runs: one batched model
            both = train_cavs(
                self.cav, positives, negatives, paired=null_positives, l2=self.l2, max_iter=self.max_iter
            )
            unit = both / both.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            shift = concept_shift(unit, positives, negatives, paired=null_positives)
        vectors, null = both[:-1], both[-1]
        shift, null_shift = shift[:-1], shift[-1]
        pooled_tokens = layout is not None and layout.kind == "tokens" and self.token_pooling != "none"
        cavset = CAVSet(
            layer=layer,
            layout=layout,
            kind=self.cav,
            concepts=self.concepts,
            vectors=vectors.detach(),
            null=null.detach(),
            shape=(int(flat_pool.shape[1]),) if pooled_tokens else shape,
            shift=shift.detach(),
            null_shift=null_shift.detach(),
            meta={
                "random_set_size": int(idx.shape[1]),
                "n_concept_images": {n: int(a.shape[0]) for n, a in concept_acts.items()},
            },
        )
        if layout is not None:
            d = cavset.pooled()
            hi = torch.stack(
                [
                    emblems(concept_projection(layout.to_map(concept_acts[n]), d[k : k + 1]))[0].median()
                    for k, n in enumerate(self.concepts)
                ]
            )
            lo = emblems(concept_projection(layout.to_map(pool_acts), d)).median(dim=1).values
            cavset.hi, cavset.lo = hi, lo
        return cavset

    # ------------------------------------------------------------------ helpers
    def _names(self, n_classes: int) -> list[str]:
        names = self.class_names
        if names is None:
            names = getattr(self.model, "classes", None)
            names = list(names) if isinstance(names, (list, tuple)) and len(names) == n_classes else None
        return list(names) if names is not None else [f"class_{k}" for k in range(n_classes)]

    def _targets(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None) -> Tensor:
        n = inputs.shape[0]
        if target is None:
            _, logits = layer_activations(self.model, [], inputs, batch_size=self.batch_size)
            return logits.argmax(1).cpu()
        if isinstance(target, int):
            return torch.full((n,), int(target), dtype=torch.long)
        t = torch.as_tensor(target).long().cpu().flatten()
        if t.numel() == 1:
            return t.expand(n).clone()
        if t.numel() != n:
            raise ValueError(
                f"target has {t.numel()} entries for {n} inputs; give one class per input or one for all."
            )
        return t

    # ------------------------------------------------------------------ one explained epoch
    def explain(
        self,
        inputs: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        *,
        classes: Sequence[int | str] | None = None,
        max_classes: int = 10,
        images_per_class: int = 20,
        probes: Tensor | None = None,
        n_top: int = 3,
        random_pool: str | None = None,
        split: Split | None = None,
    ) -> ConceptAttributionResult:
        """Everything one explained epoch records: TCAV scores with significance, the Visual-TCAV global
        attribution of every (class, concept), the local attributions of probe images, and the CAVs.

        Per class, the TCAV runs use all its inputs and the global attribution its first ``images_per_class``;
        the t-tests and the Bonferroni correction cover every (layer, concept, class).

        Args:
            inputs: ``[N, C, H, W]`` images (e.g. a sample of validation images).
            target: class per input (``[N]``), one class for all, or ``None`` for the predicted class.
            classes: classes to explain, by index or name; default: the ``max_classes`` most frequent in
                ``target``.
            max_classes: most classes explained when ``classes`` is None.
            images_per_class: images per class of the global attribution.
            probes: images ``[P, C, H, W]`` whose concept maps and local attributions of their top ``n_top``
                classes are explained (default: none).
            n_top: classes per probe image.
            random_pool: how the result describes the random pool (default: from its source, e.g.
                ``"tensor [100, 3, 64, 64]"``).
            split: how the (class, concept) pairs are shared among processes (default: all here).

        Returns:
            :class:`~lightning_xai.results.concept_attribution.ConceptAttributionResult`; the per-run scores,
            the attribution tensors and the probes' maps stay in its in-memory fields.

        Raises:
            ValueError: an unknown class name or an out-of-range class index.

        Example:
            >>> result = explainer.explain(val_images, val_labels, probes=val_images[:2])  # doctest: +SKIP
            >>> [(s.concept, s.class_name, s.tcav) for s in result.scores if s.significant]  # doctest: +SKIP
        """
        self._ensure_state()
        self._set_input_shape(inputs)
        targets = self._targets(inputs, target)
        if self.class_names is not None:
            names = list(self.class_names)
        else:
            _, logits = layer_activations(self.model, [], inputs[:1], batch_size=1)
            names = self._names(int(logits.shape[1]))
        indices = class_indices(classes, names, targets, max_classes)
        layers = self.layers(inputs)
        cavs = self.cavs(layers)
        vectors: dict[str, dict[str, Tensor]] = {}  # the run-averaged CAVs, for the drift monitor
        for layer in layers:
            mean = cavs[layer].mean_vectors().detach().cpu()
            vectors[layer] = {k: mean[i].clone() for i, k in enumerate(self.concepts)}
        split = split if split is not None else Split()
        tcav, glob = pair_statistics(self, inputs, targets, indices, layers, names, images_per_class, split)
        local, probe_rows = (None, []) if probes is None else probe_attributions(self, probes, names, n_top)
        return ConceptAttributionResult(
            layers=tcav.layers,
            concepts=tcav.concepts,
            classes=tcav.class_names,
            cav=self.cav,
            n_random=self.n_random,
            alpha=tcav.alpha,
            n_hypotheses=tcav.n_hypotheses,
            n_inputs={n: int(v) for n, v in zip(tcav.class_names, tcav.n_inputs)},
            random_pool=random_pool if random_pool is not None else describe_source(self.random_source),
            scores=[TCAVEntry.read(r) for r in tcav.rows()],
            global_attribution=[GlobalAttribution.read(r) for r in glob.rows()],
            probes=[ProbeAttribution.read(r) for r in probe_rows],
            cavs=vectors,
            tcav=tcav,
            global_explanation=glob,
            local=local,
            probe_images=probes,
        )

    # ------------------------------------------------------------------ TCAV
    def tcav(
        self,
        inputs: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        classes: Sequence[int] | None = None,
        concepts: Sequence[str] | None = None,
    ) -> TCAVResult:
        """TCAV scores of every concept for every class, with significance.

        For each input, the gradient of *its target class's* logit at each layer is dotted with every CAV
        (unit length). Per class ``k``, over the inputs whose target is ``k``: the sign fraction (TCAV score)
        and the mean directional derivative (magnitude), per random run; then the t-test against the
        random-vs-random CAVs and the Bonferroni correction over all (layer, concept, class).

        Args:
            inputs: ``[N, C, H, W]`` images (e.g. a sample of validation images).
            target: class per input (``[N]``), one class for all, or ``None`` for the predicted class.
            classes: classes to score (default: every class present in ``target``).
            concepts: a subset of the concepts (default: all).

        Returns:
            :class:`TCAVResult`.
        """
        self._ensure_state()
        self._set_input_shape(inputs)
        targets = self._targets(inputs, target)
        if classes is None:
            classes = sorted(int(c) for c in targets.unique())
        classes = [int(c) for c in classes]
        runs = self.tcav_runs(inputs, targets, classes, concepts)
        return TCAVResult.from_runs(**runs, alpha=self.alpha, cav=self.cav)

    def tcav_runs(
        self, inputs: Tensor, targets: Tensor, classes: Sequence[int], concepts: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Per-run TCAV scores without the significance test (for splitting work across processes)."""
        concepts = list(concepts) if concepts is not None else self.concepts
        layers = self.layers(inputs)
        cavs = self.cavs(layers)
        keep = torch.isin(targets, torch.tensor(list(classes), dtype=targets.dtype))
        x, t = inputs[keep], targets[keep]
        L, K, C, R = len(layers), len(concepts), len(classes), self.n_random
        sign = torch.full((L, K, C, R), float("nan"))
        mag = torch.full((L, K, C, R), float("nan"))
        unit_mag = torch.full((L, K, C, R), float("nan"))
        null_sign = torch.full((L, C, R), float("nan"))
        null_mag = torch.full((L, C, R), float("nan"))
        n_inputs = torch.tensor([int((t == c).sum()) for c in classes], dtype=torch.long)
        n_classes = None
        if x.shape[0] > 0:
            _, grads, logits = layer_gradients(self.model, layers, x, t, batch_size=self.batch_size)
            n_classes = logits.shape[1]
            for li, layer in enumerate(layers):
                vec, null = cavs[layer].unit()
                shift, null_shift = cavs[layer].shift, cavs[layer].null_shift
                ki = [cavs[layer].index(k) for k in concepts]
                g = self._cav_gradient(cavs[layer].layout, grads[layer]).float()
                s = torch.einsum("nm,krm->nkr", g, vec[ki].to(g.device))  # directional derivatives
                s0 = g @ null.to(g.device).T  # [N, R]
                for ci, c in enumerate(classes):
                    rows = (t == c).to(g.device)
                    if not bool(rows.any()):
                        continue
                    sign[li, :, ci] = (s[rows] > 0).float().mean(0).cpu()
                    # scaled by the concept's mean shift along the CAV: a first-order logit change (logit units)
                    mag[li, :, ci] = (s[rows].mean(0) * shift[ki].to(g.device)).cpu()
                    unit_mag[li, :, ci] = s[rows].mean(0).cpu()
                    null_sign[li, ci] = (s0[rows] > 0).float().mean(0).cpu()
                    null_mag[li, ci] = (s0[rows].mean(0) * null_shift.to(g.device)).cpu()
        if n_classes is None:
            _, logits = layer_activations(self.model, [], inputs[:1], batch_size=1)
            n_classes = logits.shape[1]
        names = self._names(n_classes)
        return {
            "layers": layers,
            "concepts": concepts,
            "classes": list(classes),
            "class_names": [names[c] for c in classes],
            "sign_runs": sign,
            "magnitude_runs": mag,
            "unit_magnitude_runs": unit_mag,
            "null_sign_runs": null_sign,
            "null_magnitude_runs": null_mag,
            "n_inputs": n_inputs,
        }

    # ------------------------------------------------------------------ Visual-TCAV
    def maps(
        self, inputs: Tensor, upsample: bool = False, concepts: Sequence[str] | None = None, raw: bool = False
    ) -> dict[str, Tensor]:
        """Visual-TCAV concept maps of ``inputs`` without attributions (no gradients): ``{layer: [K, N, h, w]}``.

        With ``upsample`` the maps are resized (bilinear) to the inputs' resolution, ``[K, N, H, W]``. With
        ``raw`` the unthresholded projections ``ReLU(sum_c d_c A_c)`` are returned instead: the concept map is a
        clipped, monotone function of them, so their argmax is an argmax of the map that does not depend on
        where the map saturates at 1 (use it to locate a concept's peak).
        """
        self._ensure_state()
        self._set_input_shape(inputs)
        concepts = list(concepts) if concepts is not None else self.concepts
        layers = self.layers(inputs)
        cavs = self.cavs(layers)
        acts, _ = layer_activations(self.model, layers, inputs, batch_size=self.batch_size)
        out = {}
        for layer in layers:
            cs = cavs[layer]
            ki = [cs.index(k) for k in concepts]
            d = cs.pooled()[ki].to(acts[layer].device)
            a = _as_map(cs, acts[layer])
            if raw:
                m = concept_projection(a, d).cpu()
            else:
                m = concept_maps(a, d, cs.hi[ki], cs.lo[ki]).cpu()
            out[layer] = upsample_maps(m, (int(inputs.shape[-2]), int(inputs.shape[-1]))) if upsample else m
        return out

    def attribute(
        self,
        inputs: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        n_classes: int = 1,
        concepts: Sequence[str] | None = None,
        return_ig: bool = False,
    ) -> VisualTCAVResult:
        """Visual-TCAV concept maps and concept attributions of each input.

        Args:
            inputs: ``[N, C, H, W]``.
            target: the class to explain per input (``[N]`` or one for all); ``None``: each input's top
                ``n_classes`` predicted classes.
            n_classes: classes per input when ``target`` is None (Visual-TCAV's local explanation uses up to 3).
            concepts: a subset of the concepts (default: all).
            return_ig: keep the raw integrated-gradient maps ``[N * T, ...]`` per layer in ``result.ig``.

        Returns:
            :class:`VisualTCAVResult`; ``.global_explanation()`` aggregates per class.
        """
        self._ensure_state()
        self._set_input_shape(inputs)
        concepts = list(concepts) if concepts is not None else self.concepts
        layers = self.layers(inputs)
        cavs = self.cavs(layers)
        device = model_device(self.model)
        with explanation_mode(self.model):
            acts, logits = layer_activations(self.model, layers, inputs, batch_size=self.batch_size)
        if target is None:
            t_count = max(1, min(int(n_classes), logits.shape[1]))
            targets = logits.topk(t_count, dim=1).indices.cpu()  # [N, T]
        else:
            targets = self._targets(inputs, target)[:, None]
        n, t_count = targets.shape
        probs = torch.softmax(logits.float(), 1).cpu().gather(1, targets)
        rows_t = targets.T.reshape(-1)  # target-major: row j is image j % n, target slot j // n
        rows_x = inputs.repeat(t_count, *([1] * (inputs.dim() - 1)))
        L, K = len(layers), len(concepts)
        attributions = torch.zeros(L, K, n, t_count)
        scaling = torch.zeros(L, n, t_count)
        ig_total = torch.zeros(L, n, t_count)
        ig_delta = torch.zeros(L, n, t_count)
        maps_out: dict[str, Tensor] = {}
        ig_keep: dict[str, Tensor] = {}
        with explanation_mode(self.model):
            for li, layer in enumerate(layers):
                cs = cavs[layer]
                ki = [cs.index(k) for k in concepts]
                d = cs.pooled()[ki].to(device)
                a = acts[layer]
                maps = concept_maps(_as_map(cs, a), d, cs.hi[ki], cs.lo[ki])  # [K, N, h, w]
                maps_out[layer] = maps.cpu()
                a_rows = a.repeat(t_count, *([1] * (a.dim() - 1)))
                ig = self._integrated_gradients(layer, a_rows, rows_x, rows_t)  # in the layer's own layout
                # on the map: for tokens the patch tokens' share (the class token's attribution is not on the map)
                on_map = dataclasses.replace(ig, attributions=_as_map(cs, ig.attributions))
                attr = concept_attributions(_as_map(cs, a_rows), on_map, maps.repeat(1, t_count, 1, 1), d)
                attributions[li] = attr.cpu().reshape(K, t_count, n).transpose(1, 2)
                scaling[li] = ig.scaling().cpu().reshape(t_count, n).T
                ig_total[li] = ig.total.cpu().reshape(t_count, n).T
                ig_delta[li] = ig.delta.cpu().reshape(t_count, n).T
                if return_ig:
                    ig_keep[layer] = ig.attributions.cpu()
        return VisualTCAVResult(
            layers=layers,
            concepts=concepts,
            targets=targets,
            class_names=self._names(logits.shape[1]),
            attributions=attributions,
            layer_maps=maps_out,
            scaling=scaling,
            ig_total=ig_total,
            ig_delta=ig_delta,
            probabilities=probs,
            image_size=(int(inputs.shape[-2]), int(inputs.shape[-1])),
            ig=ig_keep,
        )

    def _integrated_gradients(
        self, layer: str, acts: Tensor, inputs: Tensor, targets: Tensor
    ) -> IntegratedGradients:
        """Integrated gradients, cached per model state on (layer, images, targets, m_steps).

        They do not depend on the concepts or the CAV kind, so explainers sharing a cache (or repeated calls)
        pay for the ``m_steps + 1`` gradient evaluations once.
        """
        key = ("ig", layer, fingerprint(inputs), fingerprint(targets), str(self.m_steps))
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        ig = integrated_gradients(
            self.model, layer, acts, inputs, targets, m_steps=self.m_steps, batch_rows=self.ig_batch_rows
        )
        self.cache.put(key, ig)
        return ig

    def local(self, image: Tensor, n_classes: int = 3, target: int | None = None) -> VisualTCAVResult:
        """Local explanation of one image ``[C, H, W]``: concept maps and attributions for its top classes.

        Example:
            >>> explanation = explainer.local(image, n_classes=3)  # doctest: +SKIP
            >>> explanation.attribution("texture:striped", target=0)  # doctest: +SKIP
        """
        if image.dim() == 3:
            image = image[None]
        return self.attribute(image, target=target, n_classes=n_classes)

    def global_explanation(
        self,
        inputs: Tensor,
        target: int | Sequence[int] | Tensor | None = None,
        classes: Sequence[int] | None = None,
    ) -> GlobalExplanation:
        """Visual-TCAV global explanation: each class's attribution mean, SE and 2-SE interval over its inputs.

        Args:
            inputs: images; target: their classes (``None``: predicted classes); classes: classes to report.
        """
        self._set_input_shape(inputs)
        targets = self._targets(inputs, target)
        if classes is not None:
            keep = torch.isin(targets, torch.tensor([int(c) for c in classes]))
            inputs, targets = inputs[keep], targets[keep]
        return self.attribute(inputs, targets).global_explanation(classes)
