"""Predicates and class vocabularies (VisionLogic section 3).

The **vocabulary** ``V_c`` of class ``c`` is every signed feature that appears in the pathway of some
*source image* of ``c`` (by default the correctly classified images predicted as ``c``, the paper
protocol). For each (class, signed feature ``j``), with ``S_cj`` the source images whose pathway
selected ``j``:

* "+" branch: threshold ``t = min z_j`` over ``S_cj``; the predicate is true when ``z_j >= t``;
* "-" branch: threshold ``t = max z_j`` over ``S_cj``; the predicate is true when ``z_j <= t``.

Equality counts as active. Thresholds are class specific, so one neuron can give different
predicates in different classes. Each predicate keeps its selection count and frequency (share of
the class's source images whose pathway selected it); **n80** is the number of predicates, most
frequent first, that cover 80% of all selections of the class.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_xai.logic.pathways import Pathways, split_signed_id

__all__ = [
    "SOURCES",
    "ClassVocabulary",
    "Predicate",
    "Vocabulary",
    "fit_vocabulary",
    "vocabulary_jaccard",
]

SOURCES = ("correct", "predicted")
"""Source populations: correctly classified images (paper protocol) or all images by prediction."""


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class Predicate:
    """A thresholded head-input neuron of one class: ``z_j >= t`` (sign +1) or ``z_j <= t`` (sign -1).

    Attributes:
        class_index: the class whose vocabulary holds it.
        feature: the neuron ``j`` (column of the head's weight).
        sign: +1 or -1 (from the activation's sign in the source pathways).
        threshold: ``t``.
        count: source pathways of the class that selected it.
        frequency: ``count`` / number of source images of the class.
        num_features: ``D`` (for the signed id).

    Example:
        >>> p = Predicate(class_index=2, feature=17, sign=1, threshold=0.83, count=3, frequency=0.75, num_features=64)
        >>> p.text(), p.signed_id
        ('f17 >= 0.83', 17)
        >>> bool(p.is_active(torch.zeros(1, 64))[0])
        False
    """

    class_index: int
    feature: int
    sign: int
    threshold: float
    count: int
    frequency: float
    num_features: int

    @property
    def signed_id(self) -> int:
        return self.feature if self.sign > 0 else self.feature + self.num_features

    def is_active(self, features: Tensor) -> Tensor:
        """``[N]`` bool: whether the predicate holds on head inputs ``[N, D]`` (equality counts)."""
        z = features[:, self.feature].to(torch.float64)
        return z >= self.threshold if self.sign > 0 else z <= self.threshold

    def holds(self, value: float) -> bool:
        """:meth:`is_active` for one value of this neuron, as a Python float (float64, equality counts): for
        loops over many images, where a tensor per comparison would cost more than the comparison."""
        return value >= self.threshold if self.sign > 0 else value <= self.threshold

    def is_strictly_inactive(self, values: Tensor) -> Tensor:
        """``[N]`` bool on values of this neuron: ``z < t`` (for "+") or ``z > t`` (for "-")."""
        v = values.to(torch.float64)
        return v < self.threshold if self.sign > 0 else v > self.threshold

    def text(self, feature_names: Sequence[str] | None = None) -> str:
        """``"f17 >= 0.83"`` (or with a name from ``feature_names``)."""
        name = feature_names[self.feature] if feature_names is not None else f"f{self.feature}"
        return f"{name} {'>=' if self.sign > 0 else '<='} {_fmt(self.threshold)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_index,
            "feature": self.feature,
            "sign": "+" if self.sign > 0 else "-",
            "signed_id": self.signed_id,
            "threshold": self.threshold,
            "count": self.count,
            "frequency": self.frequency,
            "text": self.text(),
        }


@dataclass
class ClassVocabulary:
    """The vocabulary of one class: its predicates (most frequent first) and its source pathways.

    Attributes:
        class_index: the class.
        n_source: number of source images (0: the class is reported empty).
        predicates: sorted by count (descending), then signed id.
        terms: the distinct source pathways restricted to the vocabulary, as sorted tuples of signed ids,
            with the number of source images that had each; most frequent first. This is the class's
            global rule as a DNF.
    """

    class_index: int
    n_source: int
    predicates: list[Predicate] = field(default_factory=list)
    terms: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of predicates."""
        return len(self.predicates)

    @property
    def empty(self) -> bool:
        return not self.predicates

    @property
    def signed_ids(self) -> set[int]:
        return {p.signed_id for p in self.predicates}

    @property
    def n80(self) -> int:
        """Fewest predicates (most frequent first) covering 80% of the class's selections; 0 if empty."""
        total = sum(p.count for p in self.predicates)
        if total == 0:
            return 0
        covered = 0
        for k, p in enumerate(self.predicates, start=1):
            covered += p.count
            if covered >= 0.8 * total - 1e-9:
                return k
        return len(self.predicates)

    @property
    def n80_fraction(self) -> float:
        """``n80 / size`` (NaN for an empty vocabulary)."""
        return self.n80 / self.size if self.size else float("nan")

    def predicate(self, sid: int) -> Predicate | None:
        """The predicate with signed id ``sid``, if it is in the vocabulary."""
        return self._index.get(int(sid))

    @property
    def _index(self) -> dict[int, Predicate]:
        cached = self.__dict__.get("_index_cache")
        if cached is None or len(cached) != len(self.predicates):
            cached = {p.signed_id: p for p in self.predicates}
            self.__dict__["_index_cache"] = cached
        return cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_index,
            "n_source": self.n_source,
            "predicates": [p.to_dict() for p in self.predicates],
            "terms": [[list(t), c] for t, c in self.terms],
        }


@dataclass
class Vocabulary:
    """The class vocabularies of one model at one time.

    Attributes:
        classes: one :class:`ClassVocabulary` per class, in class order.
        num_features: ``D``.
        source: ``"correct"`` or ``"predicted"``.
    """

    classes: list[ClassVocabulary]
    num_features: int
    source: str = "correct"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, class_index: int) -> ClassVocabulary:
        return self.classes[class_index]

    @property
    def predicates(self) -> list[Predicate]:
        """All predicates, class by class."""
        return [p for cv in self.classes for p in cv.predicates]

    def active(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Which predicates hold on each image.

        Returns:
            ``(active [N, P] bool, class_of [P] long)`` over :attr:`predicates`.
        """
        preds = self.predicates
        if not preds:
            return torch.zeros(features.shape[0], 0, dtype=torch.bool), torch.zeros(0, dtype=torch.long)
        feat = torch.tensor([p.feature for p in preds])
        sign = torch.tensor([p.sign for p in preds], dtype=torch.float64)
        thr = torch.tensor([p.threshold for p in preds], dtype=torch.float64)
        z = features.detach().to("cpu", torch.float64)[:, feat]
        # sign * z >= sign * t covers both branches (z >= t for "+", z <= t for "-")
        active = sign * z >= sign * thr
        return active, torch.tensor([p.class_index for p in preds])

    def feature_mask(self) -> Tensor:
        """``[C, D]`` bool: whether neuron ``j`` (either sign) is in class ``c``'s vocabulary."""
        mask = torch.zeros(self.num_classes, self.num_features, dtype=torch.bool)
        for cv in self.classes:
            for p in cv.predicates:
                mask[cv.class_index, p.feature] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (also what the callback checkpoints)."""
        return {
            "num_features": self.num_features,
            "source": self.source,
            "classes": [cv.to_dict() for cv in self.classes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        """Inverse of :meth:`to_dict`."""
        d = int(data["num_features"])
        classes = []
        for c in data["classes"]:
            preds = [
                Predicate(
                    class_index=int(p["class"]),
                    feature=int(p["feature"]),
                    sign=1 if p["sign"] == "+" else -1,
                    threshold=float(p["threshold"]),
                    count=int(p["count"]),
                    frequency=float(p["frequency"]),
                    num_features=d,
                )
                for p in c["predicates"]
            ]
            terms = [(tuple(int(s) for s in t), int(n)) for t, n in c.get("terms", [])]
            classes.append(ClassVocabulary(int(c["class"]), int(c["n_source"]), preds, terms))
        return cls(classes=classes, num_features=d, source=str(data.get("source", "correct")))


def fit_vocabulary(
    features: Tensor,
    pathways: Pathways,
    num_classes: int,
    labels: Tensor | None = None,
    source: Literal["correct", "predicted"] = "correct",
    threshold_quantile: float = 0.0,
    rows: Tensor | None = None,
) -> Vocabulary:
    """Class vocabularies with thresholds from the source images' pathways.

    Args:
        features: head inputs ``[N, D]`` (the same images as ``pathways``).
        pathways: from :func:`~lightning_xai.logic.extract_pathways`.
        num_classes: ``C``; classes without a source image get an empty vocabulary.
        labels: ``[N]`` true labels; needed for ``source="correct"``.
        source: ``"correct"`` (default, the paper protocol): images whose prediction equals their label,
            grouped by class; ``"predicted"``: all images, grouped by prediction.
        threshold_quantile: 0 (default, the reference): min / max over the selecting source images. A
            value ``q`` in (0, 0.5) uses the ``q`` / ``1 - q`` quantile instead, which ignores outliers.
        rows: optional ``[N]`` bool or index tensor restricting the source images (cross-fitting).

    Returns:
        :class:`Vocabulary`.

    Raises:
        ValueError: ``source="correct"`` without labels, or arguments out of range.

    Example:
        >>> from lightning_xai.logic import LinearHead, extract_pathways
        >>> head = LinearHead(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
        >>> z = torch.tensor([[2.0, 1.0], [3.0, -1.0], [0.5, 1.5]])
        >>> vocab = fit_vocabulary(z, extract_pathways(z, head), 2, labels=torch.tensor([0, 0, 1]))
        >>> [p.text() for p in vocab[0].predicates], [p.text() for p in vocab[1].predicates]
        (['f0 >= 2'], ['f1 >= 1.5'])
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is not supported; choose one of {list(SOURCES)}")
    if not 0.0 <= float(threshold_quantile) < 0.5:
        raise ValueError(f"threshold_quantile must lie in [0, 0.5), got {threshold_quantile!r}")
    z = features.detach().to("cpu", torch.float64)
    n, d = z.shape
    if d != pathways.num_features or len(pathways) != n:
        raise ValueError(
            f"features [{n}, {d}] do not match the pathways ({len(pathways)} images, D={pathways.num_features})"
        )
    pred = pathways.predictions
    keep = torch.ones(n, dtype=torch.bool)
    if source == "correct":
        if labels is None:
            raise ValueError(
                "source='correct' needs labels (the paper protocol keeps correctly classified images); "
                "pass labels or use source='predicted'"
            )
        keep &= pred == labels.detach().to("cpu", torch.long)
    if rows is not None:
        sel = torch.zeros(n, dtype=torch.bool)
        sel[rows] = True
        keep &= sel
    member = pathways.membership()  # [N, 2D]
    signed_z = torch.cat([z, z], dim=1)  # value of neuron (s mod D) for every signed id s
    classes: list[ClassVocabulary] = []
    for c in range(int(num_classes)):
        idx = torch.nonzero(keep & (pred == c)).flatten()
        n_c = int(idx.numel())
        if n_c == 0:
            classes.append(ClassVocabulary(c, 0))
            continue
        m = member[idx]
        counts = m.sum(0)
        if threshold_quantile == 0:
            # min (for "+") / max (for "-") over the selecting images, every signed id at once
            zc = signed_z[idx]
            lowest = torch.where(m, zc, math.inf).amin(0).tolist()
            highest = torch.where(m, zc, -math.inf).amax(0).tolist()
        preds: list[Predicate] = []
        count_list = counts.tolist()
        for s in torch.nonzero(counts).flatten().tolist():
            j, sign = split_signed_id(s, d)
            if threshold_quantile > 0:
                values = signed_z[idx[m[:, s]], s]
                q = threshold_quantile if sign > 0 else 1.0 - threshold_quantile
                t = float(torch.quantile(values, q))
            else:
                t = lowest[s] if sign > 0 else highest[s]
            cnt = int(count_list[s])
            preds.append(Predicate(c, j, sign, t, cnt, cnt / n_c, d))
        preds.sort(key=lambda p: (-p.count, p.signed_id))
        # each image's pathway as a sorted tuple of signed ids: one nonzero for the class, split by row
        ids = torch.nonzero(m)[:, 1].tolist()
        ends = list(itertools.accumulate(m.sum(1).tolist()))
        term_counts = Counter(tuple(ids[a:b]) for a, b in zip([0, *ends], ends))
        terms = sorted(term_counts.items(), key=lambda tc: (-tc[1], len(tc[0]), tc[0]))
        classes.append(ClassVocabulary(c, n_c, preds, terms))
    return Vocabulary(classes=classes, num_features=d, source=source)


def vocabulary_jaccard(a: Vocabulary, b: Vocabulary) -> list[float]:
    """Per class, the Jaccard overlap of the signed-feature sets of two vocabularies.

    NaN where both are empty (nothing to compare); 0 where exactly one is.

    Example:
        >>> v = Vocabulary([ClassVocabulary(0, 1, [Predicate(0, 1, 1, 0.5, 1, 1.0, 4)])], num_features=4)
        >>> vocabulary_jaccard(v, v)
        [1.0]
    """
    if a.num_classes != b.num_classes:
        raise ValueError(f"vocabularies have {a.num_classes} and {b.num_classes} classes")
    out = []
    for ca, cb in zip(a.classes, b.classes):
        sa, sb = ca.signed_ids, cb.signed_ids
        union = sa | sb
        out.append(len(sa & sb) / len(union) if union else math.nan)
    return out
