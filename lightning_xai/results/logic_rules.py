"""The typed result of :class:`~lightning_xai.logic.LogicRules` (and of
:class:`~lightning_xai.callbacks.LogicRulesCallback`): one epoch's VisionLogic rules, fidelity and grounding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

from lightning_xai.logic.perturbation import PerturbationReport
from lightning_xai.logic.rules import finite_mean
from lightning_xai.logic.vocabulary import Vocabulary
from lightning_xai.records import Chart, Media, Table, to_jsonable
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Observation, Result, SchemaError, transient

if TYPE_CHECKING:
    from torch import Tensor

    from lightning_xai.logic.grounding import GroundingReport

__all__ = ["GroundingSummary", "ImageRule", "LogicRulesResult", "PredicateGrounding", "ScoringEvaluation"]


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _plain(value: Any) -> Any:
    """``value`` with every part and vocabulary in its payload form (dicts), for :func:`to_jsonable`."""
    if isinstance(value, (_Part, Vocabulary)):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Part:
    """A dataclass stored as the dict of its fields, ``class_index`` under the key ``"class"``."""

    _KEYS: ClassVar[dict[str, str]] = {"class_index": "class"}

    def to_dict(self) -> dict[str, Any]:
        return {
            self._KEYS.get(f.name, f.name): _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
        }

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> Self:
        """The part stored as ``data``; ``KeyError`` names a missing key."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = cls._KEYS.get(f.name, f.name)
            if key in data:
                kwargs[f.name] = data[key]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(key)
        return cls(**kwargs)


@dataclass
class ScoringEvaluation(_Part):
    """How well the rules, run as a classifier with one scoring, reproduce the model and the labels.

    Attributes:
        scoring: ``"restricted_logit"`` or ``"share"`` (see :class:`~lightning_xai.logic.RuleClassifier`).
        fidelity: share of the images on which the rules predict the model's class (held out by cross-fitting
            when ``crossfit_folds >= 2``; NaN if no class has a rule).
        accuracy: share of the images on which the rules predict the label (NaN without labels).
        model_accuracy: the model's accuracy on the same images (NaN without labels).
        coverage: share of the images whose winning rule score is finite and nonzero.
        tie_share: share of the images whose best score was tied (the model's logit decided).
        n: number of images.
    """

    scoring: str
    fidelity: float
    accuracy: float
    model_accuracy: float
    coverage: float
    tie_share: float
    n: int


@dataclass
class ImageRule(_Part):
    """The local rule of one validation image (stored with the key ``"class"`` for ``class_index``).

    Attributes:
        index: row of the image in the explained sample.
        class_index: the model's predicted class.
        rule: the rule as text, e.g. ``"class 2 (square/lined) <- f14 >= 1.4"``.
        predicates: signed ids of its eligible predicates (in the class's vocabulary and active), in pathway
            order.
        pathway_length: length of the image's pathway (features).
        in_vocabulary: pathway features in the predicted class's vocabulary, active or not.
        id: the image's sample id (its index in the validation set).
        label: the image's label (``None`` without labels, and in records of schema 1).
    """

    index: int
    class_index: int
    rule: str
    predicates: list[int]
    pathway_length: int
    in_vocabulary: int
    id: int
    label: int | None = None


@dataclass
class PredicateGrounding(_Part):
    """The grounding test of one predicate on one image (see :class:`~lightning_xai.logic.GroundingTest`).

    Attributes:
        image: position of the image among the grounded images.
        class_index: the predicate's class.
        predicate: the predicate as text, e.g. ``"f17 >= 0.83"``.
        signed_id: the predicate's signed feature id.
        value: the neuron's value on the clean image.
        accepted: whether a guided region turned the predicate strictly inactive.
        stage: ``"gradcam"`` or ``"scorecam"`` for an accepted region, else ``None``.
        cutoff: the accepted cutoff (fraction of the map's maximum).
        boxes: the accepted region's boxes ``[x0, y0, x1, y1]`` in pixels (``x1``, ``y1`` exclusive).
        area: the accepted region's share of the image.
        value_after: the neuron's value with the accepted region blurred.
        gradcam_failed: whether Grad-CAM's sweep found no region.
        random_accepted, random_stage, random_box, random_area: the same for the area-matched random control.
        skipped: why the test was not run, else ``None`` (skipped tests are not counted in the rates).
        id: the image's sample id.
    """

    image: int
    class_index: int
    predicate: str
    signed_id: int
    value: float
    accepted: bool
    stage: str | None
    cutoff: float | None
    boxes: list[list[int]]
    area: float | None
    value_after: float | None
    gradcam_failed: bool
    random_accepted: bool
    random_stage: str | None
    random_box: list[int] | None
    random_area: float | None
    skipped: str | None
    id: int


@dataclass
class GroundingSummary(_Part):
    """The grounding tests of one epoch and their rates (see :class:`~lightning_xai.logic.GroundingReport`).

    Attributes:
        layer: the CAM layer (dotted name).
        n_images: images grounded.
        n_tests: tests counted (predicate, image pairs not skipped).
        skipped: tests skipped.
        guided_success: share of the counted tests with an accepted guided region (NaN without tests).
        random_success: share of the counted tests where the area-matched random rectangle turned the predicate
            off within the same budget.
        guided_successes, random_successes: the same as counts.
        images_with_success: images with at least one accepted region.
        gradcam_failed: tests whose Grad-CAM sweep found no region.
        scorecam_recovered: of those, tests that Score-CAM's sweep accepted.
        occupancy_guided: median share of the image an accepted guided region covers (NaN if none).
        occupancy_random: the same for the accepted random rectangles.
        forward_calls: model forward passes spent.
        ids: the sample ids of the grounded images.
        tests: every test, as :class:`PredicateGrounding`.
    """

    layer: str
    n_images: int
    n_tests: int
    skipped: int
    guided_success: float
    random_success: float
    guided_successes: int
    random_successes: int
    images_with_success: int
    gradcam_failed: int
    scorecam_recovered: int
    occupancy_guided: float
    occupancy_random: float
    forward_calls: int
    ids: list[int]
    tests: list[PredicateGrounding]

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> Self:
        out = super().read(data)
        out.tests = [PredicateGrounding.read(t) for t in out.tests]
        return out


def _read_perturbation(data: Mapping[str, Any]) -> PerturbationReport:
    keys = [f.name for f in dataclasses.fields(PerturbationReport)]
    return PerturbationReport(**{k: data[k] for k in keys if k in data})


_READERS: dict[str, Any] = {
    "evaluation": lambda d: {str(k): ScoringEvaluation.read(v) for k, v in d.items()},
    "vocabulary": Vocabulary.from_dict,
    "local_rules": lambda d: [ImageRule.read(r) for r in d],
    "grounding": GroundingSummary.read,
    "perturbation": _read_perturbation,
}


@register
@dataclass
class LogicRulesResult(Result):
    """VisionLogic rules of the classifier head at one explained epoch (Geng et al., 2025).

    Built by :meth:`lightning_xai.logic.LogicRules.explain`. The record's payload holds the fields below in
    this order; schema 1 (records written before the typed results) held the same fields and three about
    the previous explained epoch (``previous_epoch``, ``jaccard_prev``, ``history``), which are read into
    :attr:`recorded` and never written again: the drift monitor compares the vocabularies across epochs
    (drift kind ``rule_jaccard``).

    Attributes:
        n_samples: validation images the rules were learned from.
        num_features: ``D``, the head's input features.
        head: the head's dotted name in the model (``None`` if not known).
        classes: class names (``None``: classes are shown by index).
        source: the images the vocabularies come from: ``"correct"`` (correctly classified, the paper's
            protocol) or ``"predicted"`` (all images by prediction; also used without labels).
        n_source: source images per class.
        empty_classes: classes without a source image, whose vocabulary and rule are empty.
        scoring: the scoring chosen for the headline fidelity and accuracy (the more faithful one under
            ``"auto"``).
        crossfit_folds: folds of the held-out fidelity (0: in-sample).
        evaluation: every scoring's :class:`ScoringEvaluation`, by scoring.
        fidelity_per_class: per class, the share of the images the model assigns to it that the chosen
            scoring's rules assign to it too (``None`` for a class the model predicts for no image).
        vocabulary: the class vocabularies (thresholded predicates with their frequencies and the source
            pathways), a :class:`~lightning_xai.logic.Vocabulary`.
        n80: per class, the fewest predicates that cover 80% of the class's selections (0 if empty).
        global_rules: per class, its global rule as text (a DNF over its source pathways, most frequent
            terms first, truncated to ``max_terms`` terms).
        local_rules: the local rules of the grounded images, then of the sample's first 16 images, as
            :class:`ImageRule`.
        pathway_length: ``{"mean", "median"}`` pathway length over the sample (features).
        eligibility: mean share of an image's pathway features that are in its predicted class's vocabulary.
        retention: mean share of those whose predicate is active on the image.
        grounding: the grounding tests (:class:`GroundingSummary`), ``None`` on epochs without grounding.
        perturbation: predicate survival under noise, blur, colour jitter and occlusion
            (:class:`~lightning_xai.logic.PerturbationReport`), ``None`` on epochs without the study.
        grounding_report: in memory only: the grounding tests with their regions, for the figures.
        grounded_images: in memory only: the grounded images ``[K, C, H, W]``, for the figures.

    Example:
        >>> from lightning_xai.logic import ClassVocabulary, Predicate
        >>> vocab = Vocabulary([ClassVocabulary(0, 3, [Predicate(0, 1, 1, 0.5, 3, 1.0, 4)], [((1,), 3)])], 4)
        >>> evaluation = {"share": ScoringEvaluation("share", 1.0, 0.9, 0.9, 1.0, 0.0, 3)}
        >>> r = LogicRulesResult(3, 4, "head", ["cat"], "correct", [3], [], "share", 0, evaluation, [1.0],
        ...                      vocab, [1], ["class 0 (cat) <- (f1 >= 0.5) [100%]"], [], {"mean": 1.0, "median": 1.0},
        ...                      1.0, 1.0)
        >>> r.logged(0).scalars["fidelity"], [o.kind for o in r.observations()]
        (1.0, ['rule_jaccard', 'rule_fidelity'])
    """

    method: ClassVar[str] = "logic_rules"
    summary_scalars: ClassVar[tuple[str, ...]] = (
        "fidelity",
        "accuracy",
        "model_accuracy",
        "coverage",
        "vocab_size",
        "n80",
        "n80_fraction",
        "empty_classes",
        "pathway_length",
        "grounding/*",
        "survival/*",
        "time_s",
    )
    schema: ClassVar[int] = 2

    n_samples: int
    num_features: int
    head: str | None
    classes: list[str] | None
    source: str
    n_source: list[int]
    empty_classes: list[int]
    scoring: str
    crossfit_folds: int
    evaluation: dict[str, ScoringEvaluation]
    fidelity_per_class: list[float | None]
    vocabulary: Vocabulary
    n80: list[int]
    global_rules: list[str]
    local_rules: list[ImageRule]
    pathway_length: dict[str, float]
    eligibility: float
    retention: float
    grounding: GroundingSummary | None = None
    perturbation: PerturbationReport | None = None
    grounding_report: GroundingReport | None = transient()
    grounded_images: Tensor | None = transient()

    # ------------------------------------------------------------------------------------ serialised form
    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        return ("previous_epoch", "jaccard_prev", "history") if schema == 1 else ()

    def to_payload(self) -> dict[str, Any]:
        return {
            f.name: to_jsonable(_plain(getattr(self, f.name)), f"payload[{f.name!r}]")
            for f in dataclasses.fields(self)
            if not f.metadata.get("transient")
        }

    @classmethod
    def _from_fields(cls, payload: Mapping[str, Any]) -> Self:
        parsed = dict(payload)
        for key, read in _READERS.items():
            if parsed.get(key) is not None:
                try:
                    parsed[key] = read(parsed[key])
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise SchemaError(
                        f"{cls.method} record payload has an unreadable {key!r} ({type(exc).__name__}: {exc})"
                    ) from exc
        return super()._from_fields(parsed)

    def summary(self) -> dict[str, Any]:
        """The payload's values (the report lists its numbers), then what schema 1 recorded of other epochs."""
        return {**self.to_payload(), **self.recorded}

    # ------------------------------------------------------------------------------------ what it logs
    def class_name(self, k: int) -> str:
        """The name of class ``k`` (its index as text without class names)."""
        return self.classes[k] if self.classes and 0 <= k < len(self.classes) else str(k)

    def logged(self, epoch: int) -> Logged:
        """Scalars (``fidelity``, ``accuracy``, ``fidelity/<scoring>``, ``vocab_size``, ``n80``,
        ``grounding/*``, ``survival/<kind>``...), the tables ``rules``, ``fidelity``, ``local_rules``,
        ``grounding`` and ``survival``, the chart ``predicate_survival``, the media ``grounding_images`` and
        ``survival_plot``, and the text ``rules`` (markdown)."""
        vocab = self.vocabulary
        non_empty = [cv for cv in vocab.classes if not cv.empty]
        ev = self.evaluation[self.scoring]
        scalars: dict[str, float] = {
            "fidelity": ev.fidelity,
            "accuracy": ev.accuracy,
            "model_accuracy": ev.model_accuracy,
            "coverage": ev.coverage,
            "vocab_size": sum(cv.size for cv in vocab.classes) / max(vocab.num_classes, 1),
            "n80": finite_mean([cv.n80 for cv in non_empty]),
            "n80_fraction": finite_mean([cv.n80_fraction for cv in non_empty]),
            "empty_classes": float(len(self.empty_classes)),
            "pathway_length": float(self.pathway_length["mean"]),
        }
        for s, e in self.evaluation.items():
            scalars[f"fidelity/{s}"] = e.fidelity
            scalars[f"accuracy/{s}"] = e.accuracy
        rules = Table(
            "rules",
            [
                "class",
                "name",
                "n_source",
                "vocab_size",
                "n80",
                "n80_fraction",
                "top_predicates",
                "global_rule",
            ],
            [
                [
                    cv.class_index,
                    self.class_name(cv.class_index),
                    cv.n_source,
                    cv.size,
                    cv.n80,
                    _none_if_nan(cv.n80_fraction),
                    ", ".join(f"{p.text()} ({p.frequency:.0%})" for p in cv.predicates[:5]) or "(empty)",
                    rule,
                ]
                for cv, rule in zip(vocab.classes, self.global_rules)
            ],
        )
        fidelity = Table(
            "fidelity",
            ["scoring", "fidelity", "accuracy", "model_accuracy", "coverage", "tie_share", "chosen"],
            [
                [
                    s,
                    *(
                        _none_if_nan(v)
                        for v in (e.fidelity, e.accuracy, e.model_accuracy, e.coverage, e.tie_share)
                    ),
                ]
                + [s == self.scoring]
                for s, e in self.evaluation.items()
            ],
        )
        local = Table(
            "local_rules",
            ["id", "label", "predicted", "rule", "pathway_length"],
            [[r.id, r.label, r.class_index, r.rule, r.pathway_length] for r in self.local_rules],
        )
        out = Logged(scalars=scalars, tables=[rules, fidelity, local], text={"rules": self._rules_markdown()})
        if self.grounding is not None:
            self._log_grounding(out)
        if self.perturbation is not None:
            self._log_perturbation(out, epoch)
        return out

    def _rules_markdown(self) -> str:
        return "\n".join(f"- {rule}" for rule in self.global_rules)

    def _log_grounding(self, out: Logged) -> None:
        g = self.grounding
        assert g is not None
        for key in ("guided_success", "random_success", "occupancy_guided", "occupancy_random"):
            out.scalars[f"grounding/{key}"] = getattr(g, key)
        columns = ["id", "class", "predicate", "accepted", "stage", "cutoff", "area", "random_accepted"]
        out.tables.append(
            Table(
                "grounding",
                [*columns, "random_area", "skipped"],
                [
                    [
                        t.id,
                        t.class_index,
                        t.predicate,
                        t.accepted,
                        t.stage,
                        t.cutoff,
                        t.area,
                        t.random_accepted,
                    ]
                    + [t.random_area, t.skipped]
                    for t in g.tests
                ],
            )
        )
        if self.grounding_report is None or self.grounded_images is None:
            return  # a result read back from a record: the regions and images are not stored
        from lightning_xai.logic.figures import grounding_panel

        rule_of = {r.id: r.rule for r in self.local_rules}
        for k, image in enumerate(self.grounded_images):
            tests = [t for t in self.grounding_report.tests if t.image == k]
            panel = grounding_panel(image, tests, f"id {g.ids[k]}: {rule_of.get(g.ids[k], '')}")
            if panel is not None:
                out.media.append(panel)

    def _log_perturbation(self, out: Logged, epoch: int) -> None:
        from lightning_xai.sinks import chart_image

        p = self.perturbation
        assert p is not None
        for kind, curve in p.survival.items():
            out.scalars[f"survival/{kind}"] = finite_mean(curve)
        table = Table(
            "survival",
            ["level", *p.survival],
            [[lv, *(_none_if_nan(p.survival[k][i]) for k in p.survival)] for i, lv in enumerate(p.levels)],
        )
        chart = Chart(
            "predicate_survival",
            "line",
            table,
            "level",
            list(p.survival),
            title=f"Share of active predicates that survive, epoch {epoch}",
        )
        out.tables.append(table)
        out.charts.append(chart)
        out.media.append(
            Media("survival_plot", chart_image(chart), caption=f"Predicate survival, epoch {epoch}")
        )

    # ------------------------------------------------------------------------------------ what it tracks
    def observations(self) -> list[Observation]:
        """Per class, its vocabulary's signed feature ids (``rule_jaccard``) and its rule fidelity
        (``rule_fidelity``, for classes the model predicts), keyed by class name (``class_<k>`` without
        names)."""
        names = list(self.classes or [])

        def name(k: int) -> str:
            return names[k] if k < len(names) else f"class_{k}"

        out = []
        for cv in self.vocabulary.classes:
            n = name(cv.class_index)
            texts = {p.signed_id: p.text() for p in cv.predicates}
            label = f"rule vocabulary of class {n!r}"
            out.append(Observation("rule_jaccard", n, label, frozenset(texts), meta={"texts": texts}))
        for k, f in enumerate(self.fidelity_per_class):
            if f is not None:
                out.append(
                    Observation("rule_fidelity", name(k), f"rule fidelity of class {name(k)!r}", float(f))
                )
        return out
