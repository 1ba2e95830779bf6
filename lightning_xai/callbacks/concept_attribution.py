"""``ConceptAttributionCallback``: TCAV scores and Visual-TCAV concept maps and attributions while training."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.utils.data import Dataset

from lightning_xai.callbacks.base import ExplainResult, XAICallback, check_int, check_interval, run_share
from lightning_xai.capture import ValidationSample, resolve_layer
from lightning_xai.charts import bar_chart
from lightning_xai.panels import display_image, heat_overlay, panel_image
from lightning_xai.records import Chart, Media, Table
from lightning_xai.tcav.cav import CAV_KINDS
from lightning_xai.tcav.data import IMAGE_EXTENSIONS, check_images, describe_source
from lightning_xai.tcav.explainer import ConceptAttribution, GlobalExplanation, TCAVResult

__all__ = ["ConceptAttributionCallback"]

_RUN_FIELDS = 4  # sign runs, magnitude runs, null sign runs, null magnitude runs (each R long)
_EXTRA_FIELDS = 4  # attribution mean, attribution std, attribution n, class inputs n


class ConceptAttributionCallback(XAICallback):
    r"""Track concepts while training: TCAV scores with significance, Visual-TCAV maps and attributions.

    Each explained epoch, on the shared validation sample (no extra pass over validation data):

    1. one batched forward over every concept set and the random pool gives their activations at each
       layer (cached per epoch, keyed by a fingerprint of the images), from which the CAVs are computed:
       ``n_random`` per concept, each against another random set, all trained at once;
    2. per class, one forward/backward over the sample's images of that class gives the gradients of the
       class logit at each layer: TCAV sign fractions and magnitudes for every concept, tested against
       random-vs-random CAVs (two-sided Welch t-test, Bonferroni over all layer x concept x class);
    3. Visual-TCAV: integrated gradients in feature-map space over up to ``images_per_class`` images of each
       class give the global attribution of every concept (mean, SE and 2-SE interval), and concept maps
       plus local attributions of the top classes of the fixed probe images;
    4. the cosine similarity of each concept's CAV with the previous explained epoch's (concept drift).

    Under DDP the (class, concept) pairs are split across ranks and gathered (equal shapes); every rank
    logs the same scalars and rank 0 writes the record.

    Logged:

    * scalars ``xai/concept_attribution/cav_similarity/<layer>/<concept>`` (from the second explained
      epoch on), ``xai/concept_attribution/n_significant`` and ``.../time_s``;
    * tables ``tcav_scores``, ``global_attribution``, ``cav_similarity``, ``local_attribution``;
    * a TCAV bar chart per (layer, class) whose labels carry ``*`` for significant concepts, and per layer a
      figure of the scores with run error bars and significance marks and one of the global attributions
      with their 2-SE intervals;
    * per probe image, a figure of the concept maps over the image (plus the maps thresholded at 0.5 as masks).

    Record ``{"method": "concept_attribution", "name": "epoch"}``, payload: ``layers``, ``concepts``,
    ``classes``, ``cav``, ``n_random``, ``alpha``, ``n_hypotheses``, ``random_pool``, ``scores`` (one dict per
    layer x concept x class: ``tcav``, ``tcav_sd``, ``magnitude``, ``null_tcav``, ``p_value``, ``p_adjusted``,
    ``significant``, ...), ``global_attribution`` (``mean``, ``se``, ``ci_low``, ``ci_high``, ``n``),
    ``cav_similarity`` (``{layer: {concept: cosine}}``, empty on the first explained epoch),
    ``previous_epoch``, ``probes`` (local attributions of each probe image's top classes).

    Args:
        concepts: ``{name: images}`` where images are a tensor ``[N, C, H, W]`` preprocessed like the model's
            inputs, a map-style ``Dataset`` of such images, or the path of a folder of image files (read with
            ``concept_transform``). At least 2 images each.
        layers: dotted layer names; default: the model's last layer with a spatial feature map (found on the
            first explained epoch), e.g. ``layer4`` of a ResNet.
        classes: class indices or names to explain; default: the classes present in the sample (at most
            ``max_classes``, the most frequent first).
        random: random counter-examples (same forms as a concept); default: a seeded sample of
            ``random_pool_size`` validation images, the same every epoch.
        n_random: random runs per concept (and random-vs-random null runs). Default: 30, enough for
            the t-test to survive the Bonferroni correction over a few concepts and classes.
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
        class_names: names of all classes (default: ``pl_module.classes`` or ``class_<k>``).
        max_samples, on, on_error, head, batch_to_input, seed: see :class:`XAICallback`.

    Raises:
        MisconfigurationException: an argument has the wrong type or range, a concept tensor has fewer than
            2 images, a folder does not exist (at setup), or a layer name is unknown (at setup, listing close
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
        max_samples: int = 512,
        on: Literal["validation", "train_epoch_end"] = "validation",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        head: str | None = None,
        batch_to_input: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            on=on,
            max_samples=max_samples,
            on_error=on_error,
            max_failures=max_failures,
            layers=(),  # our layers are explained on concept sets, not sampled from validation
            head=head,
            batch_to_input=batch_to_input,
            seed=seed,
        )
        self.concepts = self._check_concepts(concepts)
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and (not layers or not all(isinstance(n, str) and n for n in layers)):
            raise MisconfigurationException(
                f"layers must be None (the last feature-map layer) or a list of dotted layer names, got {layers!r}."
            )
        self.concept_layers = list(dict.fromkeys(layers)) if layers is not None else None
        if classes is not None:
            if isinstance(classes, (str, int)):
                classes = [classes]
            if not classes or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in classes):
                raise MisconfigurationException(f"classes must be None or a list of class indices or names, got {classes!r}.")
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
                    f"probe_images must be a tensor [N, C, H, W] or a number of validation images, got shape "
                    f"{list(probe_images.shape)}."
                )
        elif isinstance(probe_images, bool) or not isinstance(probe_images, int) or probe_images < 0:
            raise MisconfigurationException(
                f"probe_images must be a tensor [N, C, H, W] or an integer >= 0, but got {probe_images!r}."
            )
        check_interval("alpha", alpha, 0, 1, low_open=True, high_open=True)
        if random is not None and not isinstance(random, (Tensor, Dataset, str, os.PathLike)):
            raise MisconfigurationException(
                f"random must be None (a sample of validation images), a tensor, a Dataset or a folder path, got "
                f"{type(random).__name__}."
            )
        self.random = random
        self.n_random = n_random
        self.cav = cav
        self.probe_images = probe_images
        self.images_per_class = images_per_class
        self.random_pool_size = random_pool_size
        self.max_concept_images = max_concept_images
        self.max_classes = max_classes
        self.m_steps = m_steps
        self.alpha = float(alpha)
        self.concept_transform = concept_transform
        self.class_names = list(class_names) if class_names is not None else None
        self._explainer: ConceptAttribution | None = None
        self._previous: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- configuration
    @staticmethod
    def _check_concepts(concepts: Any) -> dict[str, Any]:
        if concepts is None:
            return {}
        if not isinstance(concepts, Mapping):
            raise MisconfigurationException(
                f"concepts must be a dict {{name: images}}, got {type(concepts).__name__}; e.g. "
                "concepts={'striped': 'concepts/striped/', 'dotted': dotted_tensor}."
            )
        out: dict[str, Any] = {}
        for name, source in concepts.items():
            if not isinstance(name, str) or not name:
                raise MisconfigurationException(f"Concept names must be non-empty strings, got {name!r}.")
            if isinstance(source, Tensor):
                try:
                    if source.dim() != 4:
                        raise ValueError(f"Concept {name!r}: a tensor of images must be [N, C, H, W], got shape {list(source.shape)}.")
                    check_images(name, source)
                except ValueError as exc:
                    raise MisconfigurationException(str(exc)) from None
            elif not isinstance(source, (Dataset, str, os.PathLike)):
                raise MisconfigurationException(
                    f"Concept {name!r} is a {type(source).__name__}; give a tensor [N, C, H, W], a Dataset of images or "
                    "the path of a folder of images."
                )
            out[name] = source
        return out

    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "concepts": sorted(self.concepts),
            "concept_layers": self.concept_layers,
            "classes": self.classes,
            "cav": self.cav,
            "n_random": self.n_random,
        }

    def explainer_state(self) -> dict[str, Any]:
        return {"previous": self._previous, "history": list(self.history), "layers": self.concept_layers}

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._previous = state.get("previous")
        self.history = list(state.get("history", []))
        if self.concept_layers is None and state.get("layers"):
            self.concept_layers = list(state["layers"])

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        for name in self.concept_layers or ():
            resolve_layer(pl_module, name)  # fails now, listing close names, not at the first explained epoch
        for name, source in {**self.concepts, **({"random pool": self.random} if self.random is not None else {})}.items():
            if isinstance(source, (str, os.PathLike)):
                folder = Path(source)
                if not folder.is_dir():
                    raise MisconfigurationException(f"Concept {name!r}: the folder {os.fspath(folder)!r} does not exist.")
                n = sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                if n < 2:
                    raise MisconfigurationException(
                        f"Concept {name!r}: the folder {os.fspath(folder)!r} holds {n} image file(s); at least 2 are "
                        f"needed (extensions {list(IMAGE_EXTENSIONS)})."
                    )
        if not self.concepts:
            rank_zero_warn(
                "ConceptAttributionCallback has no concepts, so it cannot explain anything; pass "
                "concepts={'<name>': <tensor [N, C, H, W] | Dataset | folder of images>, ...}."
            )

    # ---------------------------------------------------------------- helpers
    def _names(self, pl_module: LightningModule, n_classes: int) -> list[str]:
        names = self.class_names
        if names is None:
            names = getattr(pl_module, "classes", None)
            if names is None and hasattr(pl_module, "hparams"):
                names = pl_module.hparams.get("classes") if isinstance(pl_module.hparams, Mapping) else None
        if isinstance(names, (list, tuple)) and len(names) == n_classes:
            return [str(n) for n in names]
        return [f"class_{k}" for k in range(n_classes)]

    def _resolve_classes(self, names: list[str], targets: Tensor) -> list[int]:
        if self.classes is None:
            counts = torch.bincount(targets, minlength=len(names))
            present = [int(k) for k in torch.argsort(counts, descending=True, stable=True) if counts[k] > 0]
            return sorted(present[: self.max_classes])
        out = []
        for c in self.classes:
            if isinstance(c, str):
                if c not in names:
                    raise ValueError(f"Unknown class {c!r}; classes: {names}. Pass class_names=[...] if they are missing.")
                out.append(names.index(c))
            else:
                if not 0 <= int(c) < len(names):
                    raise ValueError(f"Class index {c} is out of range for {len(names)} classes.")
                out.append(int(c))
        return list(dict.fromkeys(out))

    def _random_pool(self, inputs: Tensor) -> Any:
        if self.random is not None:
            return self.random
        n = min(self.random_pool_size, inputs.shape[0])
        if n < 3:
            raise ValueError(
                f"The validation sample has {inputs.shape[0]} images; the default random pool needs at least 3. Pass "
                "random=<images> or raise max_samples."
            )
        g = torch.Generator().manual_seed(self.seed)
        return inputs[torch.randperm(inputs.shape[0], generator=g)[:n]]

    def _probes(self, inputs: Tensor) -> Tensor | None:
        if isinstance(self.probe_images, Tensor):
            return self.probe_images
        if self.probe_images == 0:
            return None
        return inputs[: self.probe_images]

    def _explainer_for(self, pl_module: LightningModule, inputs: Tensor, pool: Any, names: list[str]) -> ConceptAttribution:
        ex = self._explainer
        if ex is None or ex.model is not pl_module or ex.random_source is not pool:
            ex = ConceptAttribution(
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
            )
            self._explainer = ex
        return ex

    # ---------------------------------------------------------------- method
    def explain(self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample) -> ExplainResult:
        if not self.concepts:
            raise ValueError(
                "No concepts to explain: pass concepts={'<name>': <tensor [N, C, H, W] | Dataset | folder of images>, "
                "...} to ConceptAttributionCallback"
            )
        if sample.inputs is None:
            raise RuntimeError("The validation sample holds no inputs; ConceptAttributionCallback needs images.")
        inputs = sample.inputs.clone()  # captured under inference mode: clone before autograd sees it
        targets = (sample.labels if sample.labels is not None else sample.logits.argmax(1)).long().cpu()
        names = self._names(pl_module, int(sample.logits.shape[1]))
        classes = self._resolve_classes(names, targets)
        pool = self._random_pool(inputs)
        ex = self._explainer_for(pl_module, inputs, pool, names)
        try:
            return self._explain(trainer, pl_module, ex, inputs, targets, classes, pool, names)
        finally:
            ex.release()  # this epoch's activations and CAVs are of no use to the next one: free them now

    def _explain(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        ex: ConceptAttribution,
        inputs: Tensor,
        targets: Tensor,
        classes: list[int],
        pool: Any,
        names: list[str],
    ) -> ExplainResult:
        epoch = trainer.current_epoch
        ex.begin(("epoch", epoch, trainer.global_step))  # activations and CAVs are valid for this epoch only
        layers = ex.layers(inputs)
        self.concept_layers = layers
        cavs = ex.cavs(layers)
        concepts = ex.concepts

        tcav, glob = self._scores(trainer, pl_module, ex, inputs, targets, classes, layers, concepts, names)

        # concept drift: cosine of each concept's (run-averaged) CAV with the previous explained epoch's
        current = {layer: {k: cavs[layer].mean_vectors()[i].detach().cpu().clone() for i, k in enumerate(concepts)}
                   for layer in layers}
        similarity: dict[str, dict[str, float]] = {}
        previous_epoch = None
        if self._previous is not None:
            previous_epoch = self._previous["epoch"]
            for layer, vecs in current.items():
                for k, v in vecs.items():
                    old = self._previous["cavs"].get(layer, {}).get(k)
                    if old is not None and old.shape == v.shape:
                        cos = torch.nn.functional.cosine_similarity(v.double(), old.double(), dim=0)
                        similarity.setdefault(layer, {})[k] = float(cos)
        self._previous = {"epoch": epoch, "cavs": current}
        self.history.append({"epoch": epoch, "cav_similarity": similarity})

        probes = self._probes(inputs) if trainer.is_global_zero else None
        local_rows, media = self._local(ex, probes, names, layers) if probes is not None else ([], [])
        result = self._result(epoch, tcav, glob, similarity, previous_epoch, local_rows, media, pool, names)
        result.extras["cavs"] = current  # {layer: {concept: run-averaged CAV}} for the drift monitor
        return result

    def _scores(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        ex: ConceptAttribution,
        inputs: Tensor,
        targets: Tensor,
        classes: list[int],
        layers: list[str],
        concepts: list[str],
        names: list[str],
    ) -> tuple[TCAVResult, GlobalExplanation]:
        """TCAV runs and global attributions of every (class, concept), split across ranks and gathered."""
        pairs = [(c, k) for c in classes for k in concepts]  # class-major: a rank's chunk spans few classes
        world, rank = max(1, trainer.world_size), trainer.global_rank
        per = math.ceil(len(pairs) / world)
        mine = pairs[rank * per : (rank + 1) * per]
        R, L = self.n_random, len(layers)
        width = _RUN_FIELDS * R + _EXTRA_FIELDS

        def my_share() -> Tensor:
            local = torch.full((per, L, width), float("nan"))
            if not mine:
                return local
            # one gradient pass and one integrated-gradient run for all of this rank's pairs: every quantity is
            # per image (its own class's logit), so batching classes together changes no number, only the calls
            mine_classes = list(dict.fromkeys(c for c, _ in mine))
            mine_concepts = [k for k in concepts if any(k == kk for _, kk in mine)]
            runs = ex.tcav_runs(inputs, targets, mine_classes, concepts=mine_concepts)
            chosen = {c: torch.nonzero(targets == c).flatten()[: self.images_per_class] for c in mine_classes}
            rows = torch.cat(list(chosen.values()))
            attr = None
            if rows.numel() > 0:
                vt = ex.attribute(inputs[rows], target=targets[rows], concepts=mine_concepts)
                attr = vt.attributions[..., 0].double()  # [L, k, n]: images of each class in turn
            start = dict(zip(mine_classes, torch.cumsum(torch.tensor([0] + [len(v) for v in chosen.values()]), 0).tolist()))
            for i, (c, k) in enumerate(mine):
                ci, kj, n_c = mine_classes.index(c), mine_concepts.index(k), int(chosen[c].numel())
                if attr is not None and n_c > 0:
                    a = attr[:, kj, start[c] : start[c] + n_c]
                    local[i, :, 4 * R] = a.mean(-1).float()
                    local[i, :, 4 * R + 1] = a.std(-1, unbiased=False).float()
                local[i, :, 4 * R + 2] = float(n_c)
                local[i, :, 0:R] = runs["sign_runs"][:, kj, ci]
                local[i, :, R : 2 * R] = runs["magnitude_runs"][:, kj, ci]
                local[i, :, 2 * R : 3 * R] = runs["null_sign_runs"][:, ci]
                local[i, :, 3 * R : 4 * R] = runs["null_magnitude_runs"][:, ci]
                local[i, :, 4 * R + 3] = float(runs["n_inputs"][ci])
            return local

        local = run_share(trainer, my_share)
        if world > 1:
            gathered = pl_module.all_gather(local.to(pl_module.device)).cpu().reshape(world * per, L, width)
        else:
            gathered = local
        gathered = gathered[: len(pairs)]

        C, K = len(classes), len(concepts)
        table = gathered.reshape(C, K, L, width).permute(2, 1, 0, 3)  # [L, K, C, width]
        tcav = TCAVResult.from_runs(
            layers=layers,
            concepts=concepts,
            classes=classes,
            class_names=[names[c] for c in classes],
            sign_runs=table[..., 0:R],
            magnitude_runs=table[..., R : 2 * R],
            null_sign_runs=table[:, 0, :, 2 * R : 3 * R],
            null_magnitude_runs=table[:, 0, :, 3 * R : 4 * R],
            n_inputs=table[0, 0, :, 4 * R + 3].round().long(),
            alpha=self.alpha,
            cav=self.cav,
        )
        mean, std, n = table[..., 4 * R], table[..., 4 * R + 1], table[0, 0, :, 4 * R + 2].round().long()
        se = std / n.clamp_min(1).float().sqrt()
        glob = GlobalExplanation(
            layers=layers,
            concepts=concepts,
            classes=classes,
            class_names=[names[c] for c in classes],
            mean=mean,
            std=std,
            se=se,
            ci_low=(mean - 2 * se).clamp_min(0.0),
            ci_high=mean + 2 * se,
            n=n,
        )
        return tcav, glob

    def _local(
        self, ex: ConceptAttribution, probes: Tensor, names: list[str], layers: list[str]
    ) -> tuple[list[list[Any]], list[Media]]:
        """Concept maps and local attributions of the probe images' top classes (rank 0 only: media)."""
        n_top = min(3, len(names))
        result = ex.attribute(probes, target=None, n_classes=n_top)
        rows: list[list[Any]] = []
        media: list[Media] = []
        layer = layers[0]
        maps = result.maps(layer, upsample=True)  # [K, N, H, W]
        for i in range(probes.shape[0]):
            for t in range(result.targets.shape[1]):
                for li, lay in enumerate(layers):
                    for k, concept in enumerate(result.concepts):
                        rows.append([i, lay, names[int(result.targets[i, t])], float(result.probabilities[i, t]), concept,
                                     float(result.attributions[li, k, i, t])])
            image = display_image(probes[i])
            top = names[int(result.targets[i, 0])]
            attr = {k: float(result.attributions[0, j, i, 0]) for j, k in enumerate(result.concepts)}
            masks = {k: (maps[j, i].numpy() >= 0.5).astype(np.uint8) for j, k in enumerate(result.concepts)}
            media.append(
                Media(
                    key="concept_maps",
                    image=_maps_figure(image, maps[:, i].numpy(), result.concepts, attr, top, layer),
                    caption=f"probe {i}: predicted {top}; concept maps at {layer}",
                )
            )
            media.append(
                Media(
                    key="concept_masks",
                    image=image,
                    caption=f"probe {i}: concept maps at {layer} thresholded at 0.5",
                    masks=masks,
                    mask_labels={1: "concept"},
                )
            )
        return rows, media

    def _result(
        self,
        epoch: int,
        tcav: TCAVResult,
        glob: GlobalExplanation,
        similarity: dict[str, dict[str, float]],
        previous_epoch: int | None,
        local_rows: list[list[Any]],
        media: list[Media],
        pool: Any,
        names: list[str],
    ) -> ExplainResult:
        score_rows = tcav.rows()
        global_rows = glob.rows()
        columns = list(score_rows[0]) if score_rows else []
        tables = [
            Table("tcav_scores", columns, [list(r.values()) for r in score_rows]),
            Table("global_attribution", list(global_rows[0]) if global_rows else [], [list(r.values()) for r in global_rows]),
            Table(
                "cav_similarity",
                ["layer", "concept", "cosine_to_previous"],
                [[layer, k, v] for layer, sims in similarity.items() for k, v in sims.items()],
            ),
        ]
        if local_rows:
            tables.append(Table("local_attribution", ["probe", "layer", "class", "probability", "concept", "attribution"], local_rows))
        charts = []
        for layer in tcav.layers:
            for c, cname in zip(tcav.classes, tcav.class_names):
                rows = [
                    [f"{k} *" if s.significant else k, s.sign_fraction, s.significant]
                    for k in tcav.concepts
                    for s in [tcav.score(k, c, layer)]
                ]
                key = f"tcav_{layer}_{cname}"
                charts.append(
                    Chart(
                        key=f"tcav/{layer}/{cname}",
                        kind="bar",
                        table=Table(key, ["concept", "tcav", "significant"], rows),
                        x="concept",
                        y="tcav",
                        title=f"TCAV scores for {cname} at {layer} (* significant, Bonferroni alpha={tcav.alpha})",
                    )
                )
        figures = [Media(key="tcav_plot", image=_tcav_figure(tcav, layer), caption=f"TCAV scores at {layer}, epoch {epoch}")
                   for layer in tcav.layers]
        figures += [Media(key="attribution_plot", image=_global_figure(glob, layer),
                          caption=f"Visual-TCAV global attributions (mean and 2-SE interval) at {layer}, epoch {epoch}")
                    for layer in glob.layers]
        scalars = {f"cav_similarity/{layer}/{k}": v for layer, sims in similarity.items() for k, v in sims.items()}
        scalars["n_significant"] = float(tcav.significant.sum())
        payload = {
            "layers": tcav.layers,
            "concepts": tcav.concepts,
            "classes": tcav.class_names,
            "cav": self.cav,
            "n_random": self.n_random,
            "alpha": tcav.alpha,
            "n_hypotheses": tcav.n_hypotheses,
            "n_inputs": {n: int(v) for n, v in zip(tcav.class_names, tcav.n_inputs)},
            "random_pool": describe_source(pool) if self.random is not None else f"validation sample ({int(pool.shape[0])} images)",
            "scores": score_rows,
            "global_attribution": global_rows,
            "cav_similarity": similarity,
            "previous_epoch": previous_epoch,
            "probes": [dict(zip(["probe", "layer", "class", "probability", "concept", "attribution"], r)) for r in local_rows],
        }
        return ExplainResult(payload=payload, scalars=scalars, tables=tables, charts=charts, media=figures + media)


# ------------------------------------------------------------------------------------------------ drawing
def _maps_figure(image: Tensor, maps: np.ndarray, concepts: list[str], attr: dict[str, float], top: str, layer: str) -> Any:
    """The probe, then each concept's map over it (jet, 45% opacity) titled with its attribution."""
    panels = [image] + [heat_overlay(image, maps[j]) for j in range(len(concepts))]
    titles = [f"pred: {top}"] + [f"{concept}\nattr {attr[concept]:.3f}" for concept in concepts]
    return panel_image(panels, titles, f"Visual-TCAV concept maps at {layer}", cols=5)


def _bars_width(K: int, C: int) -> int:
    """Pixels: room for K groups of C bars (the width the matplotlib version of these figures had)."""
    return round(100 * min(16.0, 2.0 + 0.9 * K * max(1, C) / 2))


def _tcav_figure(tcav: TCAVResult, layer: str) -> np.ndarray:
    """TCAV scores per (concept, class) with the run-to-run standard deviation; ``*`` where significant."""
    li = tcav.layers.index(layer)
    K, C = len(tcav.concepts), len(tcav.classes)
    runs = tcav.sign_runs[li]  # [K, C, R]
    means = np.stack([runs[:, ci].mean(-1).numpy() for ci in range(C)])
    sds = np.stack([runs[:, ci].std(-1).numpy() if runs.shape[-1] > 1 else np.zeros(K) for ci in range(C)])
    marks = np.stack([[bool(tcav.significant[li, k, ci]) for k in range(K)] for ci in range(C)])
    return bar_chart(
        tcav.concepts, means, series=tcav.class_names, errors=sds, marks=marks, ylim=(0.0, 1.1), hline=0.5,
        ylabel="TCAV score (sign fraction)", title=f"TCAV at {layer} (* significant after Bonferroni, m={tcav.n_hypotheses})",
        size=(_bars_width(K, C), 380),
    )


def _global_figure(glob: GlobalExplanation, layer: str) -> np.ndarray:
    """Visual-TCAV global attribution per (concept, class): mean and 2-SE interval."""
    li = glob.layers.index(layer)
    means, errors = [], []
    for ci in range(len(glob.classes)):
        mean = np.nan_to_num(glob.mean[li, :, ci].numpy())
        lo = mean - np.nan_to_num(glob.ci_low[li, :, ci].numpy())
        hi = np.nan_to_num(glob.ci_high[li, :, ci].numpy()) - mean
        means.append(mean)
        errors.append(np.stack([lo, hi]))
    return bar_chart(
        glob.concepts, np.stack(means), series=glob.class_names, errors=errors,
        ylabel="attribution (share of logit gain)", title=f"Visual-TCAV global attribution at {layer} (2-SE intervals)",
        size=(_bars_width(len(glob.concepts), len(glob.classes)), 380),
    )
