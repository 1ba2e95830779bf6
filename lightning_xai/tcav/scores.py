"""The results of :class:`~lightning_xai.tcav.ConceptAttribution`'s methods: typed objects that index by
concept, class and layer and turn into table rows.

* :class:`TCAVResult` (of :meth:`~lightning_xai.tcav.ConceptAttribution.tcav`): per-run TCAV scores with
  significance; :class:`TCAVScore` is one (layer, concept, class) entry of it;
* :class:`VisualTCAVResult` (of :meth:`~lightning_xai.tcav.ConceptAttribution.attribute`): per image concept
  maps and concept attributions;
* :class:`GlobalExplanation`: per class the mean attribution, its SE and 2-SE interval.

No Lightning import.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_xai.tcav.stats import bonferroni, two_se_interval, two_sided_pvalues
from lightning_xai.tcav.visual import upsample_maps

__all__ = ["GlobalExplanation", "TCAVResult", "TCAVScore", "VisualTCAVResult"]


@dataclass(frozen=True)
class TCAVScore:
    """One (layer, concept, class) entry of a :class:`TCAVResult`.

    Attributes:
        sign_fraction: mean over random runs of the fraction of the class's inputs whose directional
            derivative along the CAV is positive (the TCAV score).
        sign_fraction_sd: its standard deviation over runs.
        magnitude: mean over runs of the mean directional derivative along the unit CAV, scaled by the
            concept's mean activation shift along it (``CAVSet.shift``): ``(grad logit_k . v_hat) *
            (v_hat . (mean(concept) - mean(random_r)))``, the first-order change of the class logit when the
            concept is added (logit units; for ``"mean"`` CAVs simply ``grad logit_k . v``). Comparable
            across concepts, unlike the paper's unit-CAV magnitude (kept in ``TCAVResult.unit_magnitude_runs``).
        null_sign_fraction: mean score of the random-vs-random CAVs.
        p_value, p_adjusted, significant: Welch two-sided t-test of the run scores against the null runs,
            Bonferroni-corrected over every hypothesis of the evaluation.
    """

    layer: str
    concept: str
    class_index: int
    class_name: str
    n_inputs: int
    sign_fraction: float
    sign_fraction_sd: float
    magnitude: float
    magnitude_sd: float
    null_sign_fraction: float
    null_sign_fraction_sd: float
    p_value: float
    p_adjusted: float
    significant: bool

    @property
    def direction(self) -> int:
        """+1 if the concept raises the class logit (score above the null), -1 if it lowers it, 0 if not significant."""
        if not self.significant:
            return 0
        return 1 if self.sign_fraction > self.null_sign_fraction else -1


@dataclass
class TCAVResult:
    """TCAV scores of every (layer, concept, class), per random run, with significance.

    Tensors are indexed ``[layer, concept, class(, run)]`` in the order of :attr:`layers`,
    :attr:`concepts` and :attr:`classes`.

    Attributes:
        layers, concepts: names.
        classes: class indices; class_names: their names.
        sign_runs, magnitude_runs: ``[L, K, C, R]`` per-run TCAV sign fraction and magnitude (see
            :class:`TCAVScore`); unit_magnitude_runs: the mean directional derivative along the unit CAV.
        null_sign_runs, null_magnitude_runs: ``[L, C, R]`` the same for the random-vs-random CAVs.
        n_inputs: ``[C]`` inputs of each class.
        p_values, p_adjusted: ``[L, K, C]``; significant: ``[L, K, C]`` bool.
        alpha: significance level; n_hypotheses: Bonferroni's ``m``.
    """

    layers: list[str]
    concepts: list[str]
    classes: list[int]
    class_names: list[str]
    sign_runs: Tensor
    magnitude_runs: Tensor
    null_sign_runs: Tensor
    null_magnitude_runs: Tensor
    n_inputs: Tensor
    p_values: Tensor
    p_adjusted: Tensor
    significant: Tensor
    alpha: float
    n_hypotheses: int
    cav: str = "mean"
    unit_magnitude_runs: Tensor | None = None

    @classmethod
    def from_runs(
        cls,
        layers: Sequence[str],
        concepts: Sequence[str],
        classes: Sequence[int],
        class_names: Sequence[str],
        sign_runs: Tensor,
        magnitude_runs: Tensor,
        null_sign_runs: Tensor,
        null_magnitude_runs: Tensor,
        n_inputs: Tensor,
        alpha: float = 0.05,
        cav: str = "mean",
        unit_magnitude_runs: Tensor | None = None,
    ) -> TCAVResult:
        """Build a result from per-run scores: t-tests and the Bonferroni correction happen here.

        Classes without inputs (``n_inputs == 0``) get NaN scores, p-value 1 and are not counted as hypotheses.
        """
        p = two_sided_pvalues(sign_runs, null_sign_runs[:, None])
        tested = (n_inputs > 0)[None, None, :].expand_as(p)
        p = torch.where(tested, p, torch.ones_like(p))
        adjusted, significant, m = bonferroni(p, alpha, m=int(tested.sum()))
        significant = significant & tested
        return cls(
            layers=list(layers),
            concepts=list(concepts),
            classes=[int(c) for c in classes],
            class_names=list(class_names),
            sign_runs=sign_runs,
            magnitude_runs=magnitude_runs,
            null_sign_runs=null_sign_runs,
            null_magnitude_runs=null_magnitude_runs,
            n_inputs=n_inputs,
            p_values=p,
            p_adjusted=adjusted,
            significant=significant,
            alpha=float(alpha),
            n_hypotheses=m,
            cav=cav,
            unit_magnitude_runs=unit_magnitude_runs,
        )

    @property
    def sign_fraction(self) -> Tensor:
        """``[L, K, C]`` TCAV scores (mean over runs)."""
        return self.sign_runs.mean(-1)

    @property
    def magnitude(self) -> Tensor:
        """``[L, K, C]`` TCAV magnitudes in logit units (mean over runs; see :class:`TCAVScore`)."""
        return self.magnitude_runs.mean(-1)

    def _index(self, concept: str, class_: int | str, layer: str | None) -> tuple[int, int, int]:
        li = 0 if layer is None else self.layers.index(layer)
        if concept not in self.concepts:
            raise KeyError(f"unknown concept {concept!r}; concepts: {self.concepts}")
        if isinstance(class_, str):
            if class_ not in self.class_names:
                raise KeyError(f"unknown class {class_!r}; classes: {self.class_names}")
            ci = self.class_names.index(class_)
        else:
            if int(class_) not in self.classes:
                raise KeyError(f"class {class_} was not scored; classes: {self.classes}")
            ci = self.classes.index(int(class_))
        return li, self.concepts.index(concept), ci

    def score(self, concept: str, class_: int | str, layer: str | None = None) -> TCAVScore:
        """The entry of one concept and class (name or index) at ``layer`` (default: the first layer).

        Example:
            >>> result.score("texture:striped", "circle/lined").significant  # doctest: +SKIP
            True
        """
        li, ki, ci = self._index(concept, class_, layer)
        s = self.sign_runs[li, ki, ci]
        mg = self.magnitude_runs[li, ki, ci]
        ns = self.null_sign_runs[li, ci]
        return TCAVScore(
            layer=self.layers[li],
            concept=self.concepts[ki],
            class_index=self.classes[ci],
            class_name=self.class_names[ci],
            n_inputs=int(self.n_inputs[ci]),
            sign_fraction=float(s.mean()),
            sign_fraction_sd=float(s.std(unbiased=True)) if s.numel() > 1 else 0.0,
            magnitude=float(mg.mean()),
            magnitude_sd=float(mg.std(unbiased=True)) if mg.numel() > 1 else 0.0,
            null_sign_fraction=float(ns.mean()),
            null_sign_fraction_sd=float(ns.std(unbiased=True)) if ns.numel() > 1 else 0.0,
            p_value=float(self.p_values[li, ki, ci]),
            p_adjusted=float(self.p_adjusted[li, ki, ci]),
            significant=bool(self.significant[li, ki, ci]),
        )

    def subset(self, concepts: Sequence[str]) -> TCAVResult:
        """The entries of some concepts only; p-values stay corrected for *all* hypotheses of the evaluation."""
        keep = [self.concepts.index(c) for c in concepts]
        return dataclasses.replace(
            self,
            concepts=list(concepts),
            sign_runs=self.sign_runs[:, keep],
            magnitude_runs=self.magnitude_runs[:, keep],
            p_values=self.p_values[:, keep],
            p_adjusted=self.p_adjusted[:, keep],
            significant=self.significant[:, keep],
            unit_magnitude_runs=None
            if self.unit_magnitude_runs is None
            else self.unit_magnitude_runs[:, keep],
        )

    def scores(self) -> list[TCAVScore]:
        """Every entry, layer-major, then concept, then class."""
        return [self.score(k, c, layer) for layer in self.layers for k in self.concepts for c in self.classes]

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per entry (the callback's score table)."""
        return [
            {
                "layer": s.layer,
                "concept": s.concept,
                "class": s.class_name,
                "class_index": s.class_index,
                "n": s.n_inputs,
                "tcav": s.sign_fraction,
                "tcav_sd": s.sign_fraction_sd,
                "magnitude": s.magnitude,
                "magnitude_sd": s.magnitude_sd,
                "null_tcav": s.null_sign_fraction,
                "null_tcav_sd": s.null_sign_fraction_sd,
                "p_value": s.p_value,
                "p_adjusted": s.p_adjusted,
                "significant": s.significant,
            }
            for s in self.scores()
        ]


@dataclass
class GlobalExplanation:
    """Visual-TCAV global attributions: per (layer, concept, class) statistics over that class's images.

    Tensors are ``[L, K, C]``: ``mean``, ``std`` (population), ``se = std / sqrt(n)``, and the interval
    ``[max(0, mean - 2 se), mean + 2 se]`` (``ci_low``, ``ci_high``); ``n`` is ``[C]``.
    """

    layers: list[str]
    concepts: list[str]
    classes: list[int]
    class_names: list[str]
    mean: Tensor
    std: Tensor
    se: Tensor
    ci_low: Tensor
    ci_high: Tensor
    n: Tensor

    @classmethod
    def from_moments(
        cls,
        layers: Sequence[str],
        concepts: Sequence[str],
        classes: Sequence[int],
        class_names: Sequence[str],
        mean: Tensor,
        std: Tensor,
        n: Tensor,
    ) -> GlobalExplanation:
        """The explanation of per-class means and population standard deviations ``[L, K, C]`` over ``n``
        ``[C]`` images each (SE and interval by :func:`~lightning_xai.tcav.stats.two_se_interval`)."""
        se, low, high = two_se_interval(mean, std, n)
        return cls(
            layers=list(layers),
            concepts=list(concepts),
            classes=[int(c) for c in classes],
            class_names=list(class_names),
            mean=mean,
            std=std,
            se=se,
            ci_low=low,
            ci_high=high,
            n=n,
        )

    def attribution(self, concept: str, class_: int | str, layer: str | None = None) -> float:
        """Mean attribution of ``concept`` to ``class_`` (name or index) at ``layer`` (default: the first)."""
        li = 0 if layer is None else self.layers.index(layer)
        ci = self.class_names.index(class_) if isinstance(class_, str) else self.classes.index(int(class_))
        return float(self.mean[li, self.concepts.index(concept), ci])

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per (layer, concept, class)."""
        out = []
        for li, layer in enumerate(self.layers):
            for ki, concept in enumerate(self.concepts):
                for ci, c in enumerate(self.classes):
                    out.append(
                        {
                            "layer": layer,
                            "concept": concept,
                            "class": self.class_names[ci],
                            "class_index": c,
                            "n": int(self.n[ci]),
                            "mean": float(self.mean[li, ki, ci]),
                            "se": float(self.se[li, ki, ci]),
                            "ci_low": float(self.ci_low[li, ki, ci]),
                            "ci_high": float(self.ci_high[li, ki, ci]),
                        }
                    )
        return out


@dataclass
class VisualTCAVResult:
    """Visual-TCAV explanation of a batch of images.

    Attributes:
        layers, concepts: names.
        targets: ``[N, T]`` the classes each image was attributed to (its label, or its top ``T`` predictions).
        class_names: names of all classes of the model.
        attributions: ``[L, K, N, T]`` concept attributions in ``[0, E_k]``.
        maps: ``[L, K, N, h, w]`` concept maps in ``[0, 1]`` at each layer's resolution (same ``h, w`` only if
            the layers share it; otherwise a dict per layer is in :attr:`layer_maps`).
        scaling: ``[L, N, T]`` the ``E_k`` of each target.
        ig_total: ``[L, N, T]`` summed integrated gradients before ReLU and scaling.
        ig_delta: ``[L, N, T]`` ``logit_k(A) - logit_k(0)``; equal to ``ig_total`` up to the quadrature error.
        probabilities: ``[N, T]`` softmax probability of each target.
        image_size: ``(H, W)`` of the inputs.
    """

    layers: list[str]
    concepts: list[str]
    targets: Tensor
    class_names: list[str]
    attributions: Tensor
    layer_maps: dict[str, Tensor]
    scaling: Tensor
    ig_total: Tensor
    ig_delta: Tensor
    probabilities: Tensor
    image_size: tuple[int, int]
    ig: dict[str, Tensor] = field(default_factory=dict)

    def maps(self, layer: str | None = None, upsample: bool = False) -> Tensor:
        """``[K, N, h, w]`` concept maps at ``layer`` (default: the first), or ``[K, N, H, W]`` upsampled."""
        m = self.layer_maps[layer or self.layers[0]]
        return upsample_maps(m, self.image_size) if upsample else m

    def attribution(self, concept: str, image: int = 0, target: int = 0, layer: str | None = None) -> float:
        """Attribution of ``concept`` to image ``image``'s ``target``-th class at ``layer``."""
        li = 0 if layer is None else self.layers.index(layer)
        return float(self.attributions[li, self.concepts.index(concept), image, target])

    def global_explanation(self, classes: Sequence[int] | None = None) -> GlobalExplanation:
        """Per class: mean, population std, SE and the 2-SE interval of the attributions over its images.

        An image contributes to class ``k`` for every target slot equal to ``k`` (one slot per image when
        explaining images at their labels).
        """
        t = self.targets.cpu()
        if classes is None:
            classes = sorted(int(c) for c in t.unique())
        L, K = len(self.layers), len(self.concepts)
        shape = (L, K, len(classes))
        mean, std = torch.zeros(shape), torch.zeros(shape)
        n = torch.zeros(len(classes), dtype=torch.long)
        attr = self.attributions.cpu().double()
        for ci, c in enumerate(classes):
            sel = t == int(c)  # [N, T]
            n[ci] = int(sel.sum())
            if n[ci] == 0:
                mean[..., ci] = float("nan")
                std[..., ci] = float("nan")
                continue
            values = attr[:, :, sel]  # [L, K, n]
            mean[..., ci] = values.mean(-1).float()
            std[..., ci] = values.std(-1, unbiased=False).float()
        return GlobalExplanation.from_moments(
            self.layers, self.concepts, classes, [self.class_names[int(c)] for c in classes], mean, std, n
        )
