"""The typed result of :class:`~lightning_xai.diffexplainer.DiffExplainer` (and of
:class:`~lightning_xai.callbacks.DiffusionExplainerCallback`): one epoch's optimised prompts, their readouts,
images and bias reports.

Its parts are the record's own types, which :mod:`lightning_xai.diffexplainer` builds and re-exports:
:class:`Target` (what a prompt maximises), :class:`Readout` (a prompt in words), :class:`BiasReport` (concepts
over-represented in a target's images) and :class:`TargetExplanation` (one target's optimisation). This module
imports neither torch nor diffusers, so a report reads these records without them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from typing_extensions import Self

from lightning_xai.records import Chart, Media, Table, to_jsonable
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Observation, Result, SchemaError, transient

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["TARGET_KINDS", "BiasReport", "DiffusionExplainerResult", "Readout", "Target", "TargetExplanation"]

TARGET_KINDS = ("class", "neuron", "channel")


@dataclass(frozen=True)
class Target:
    """What the images should maximise.

    * ``Target("class", c)``: the probability of class ``c`` (objective ``-log softmax(logits)[c]``);
    * ``Target("neuron", j)``: input feature ``j`` of the classifier's linear head (objective: minus
      its mean over the images);
    * ``Target("channel", j, layer)``: channel ``j`` of a named layer's output (objective: minus its
      mean over the images and positions).

    :meth:`parse` reads ``3`` / ``"class:3"``, ``"neuron:12"`` and ``"channel:conv3:5"``.

    Example:
        >>> Target.parse("channel:features.3:5")
        Target(kind='channel', index=5, layer='features.3')
        >>> Target.parse(2).label
        'class 2'
    """

    kind: Literal["class", "neuron", "channel"]
    index: int
    layer: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(
                f"target kind {self.kind!r} is not supported; choose one of {list(TARGET_KINDS)}"
            )
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ValueError(f"target index must be a non-negative int, got {self.index!r}")
        if (self.kind == "channel") != (self.layer is not None):
            raise ValueError("a 'channel' target needs a layer name (and only a channel target has one)")

    @classmethod
    def parse(cls, value: int | str | Target) -> Target:
        if isinstance(value, Target):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls("class", value)
        if isinstance(value, str):
            kind, _, rest = value.partition(":")
            try:
                if kind in ("class", "neuron") and rest:
                    return cls(kind, int(rest))  # type: ignore[arg-type]
                if kind == "channel" and ":" in rest:
                    layer, _, index = rest.rpartition(":")
                    return cls("channel", int(index), layer)
            except ValueError as exc:
                if "invalid literal" not in str(exc):
                    raise
        raise ValueError(
            f"cannot read target {value!r}; use a class index (3), 'class:3', 'neuron:12' (input of the linear head) "
            "or 'channel:<layer>:5' (channel of a named layer)"
        )

    @property
    def label(self) -> str:
        """Short readable name: ``"class 2"``, ``"neuron 12"``, ``"conv3[5]"``."""
        return f"{self.layer}[{self.index}]" if self.kind == "channel" else f"{self.kind} {self.index}"


@dataclass
class Readout:
    """What an optimised prompt says in words.

    Attributes:
        caption: A readable caption: the generator's template filled with the top word of each
            position (``"a green circle on a striped background"``, ``"a photo of padlock wood"``).
        positions: Name of each optimised position: a caption slot (``"shape"``) or a soft token
            (``"token 1"``).
        words: The top word of each position.
        candidates: Per position, the top-k ``(word, score)`` pairs, best first. Scores are slot
            probabilities for the world, cosine similarities to the vocabulary for soft tokens.

    Example:
        >>> r = Readout("a red circle", ["colour", "shape"], ["red", "circle"], [[("red", 0.9)], [("circle", 0.8)]])
        >>> r.changed_since(Readout("a blue circle", ["colour", "shape"], ["blue", "circle"], [[], []]))
        {'colour': ('blue', 'red')}
    """

    caption: str
    positions: list[str]
    words: list[str]
    candidates: list[list[tuple[str, float]]] = field(default_factory=list)

    def changed_since(self, previous: Readout | None) -> dict[str, tuple[str, str]]:
        """``{position: (previous word, word)}`` for every position whose top word changed."""
        if previous is None:
            return {}
        old = dict(zip(previous.positions, previous.words))
        return {p: (old[p], w) for p, w in zip(self.positions, self.words) if p in old and old[p] != w}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (also what :meth:`from_dict` reads)."""
        return {
            "caption": self.caption,
            "positions": list(self.positions),
            "words": list(self.words),
            "candidates": [[[w, float(s)] for w, s in c] for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Readout:
        return cls(
            data["caption"],
            list(data["positions"]),
            list(data["words"]),
            [[(str(w), float(s)) for w, s in c] for c in data.get("candidates", [])],
        )


@dataclass
class BiasReport:
    """Concept scores of a target's maximising images against reference images.

    Attributes:
        target: Readable target (``"class 0"`` or a class name).
        rows: One dict per concept: ``concept``, ``score`` (mean detector score over the target's images,
            0-1), ``reference`` (mean over the reference images), ``excess`` (score - reference), ``core``
            (declared core concept of the target), ``effect`` (rise of the objective when the concept is
            removed from the prompt, ``None`` where not measured) and ``flagged`` (suspected spurious feature).
        min_excess, min_score: The flagging thresholds used.
    """

    target: str
    rows: list[dict[str, Any]]
    min_excess: float
    min_score: float

    @property
    def flagged(self) -> list[str]:
        """Suspected spurious concepts, most over-represented first."""
        return [r["concept"] for r in sorted(self.rows, key=lambda r: -r["excess"]) if r["flagged"]]

    @property
    def core_found(self) -> list[str]:
        """Declared core concepts that are over-represented too (the images show what they should)."""
        return [
            r["concept"]
            for r in self.rows
            if r["core"] and r["excess"] >= self.min_excess and r["score"] >= self.min_score
        ]

    def to_dict(self) -> dict[str, Any]:
        """The stored form: the fields, with ``flagged`` and ``core_found`` spelt out."""
        return {
            "target": self.target,
            "flagged": self.flagged,
            "core_found": self.core_found,
            "min_excess": self.min_excess,
            "min_score": self.min_score,
            "rows": [dict(r) for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BiasReport:
        """Inverse of :meth:`to_dict` (``flagged`` and ``core_found`` are read from the rows again)."""
        return cls(
            str(data["target"]), [dict(r) for r in data["rows"]], data["min_excess"], data["min_score"]
        )


@dataclass
class TargetExplanation:
    """One target's optimised prompt at one explained epoch.

    Attributes:
        target: what the prompt maximises (:class:`Target`; stored as ``{"kind", "index", "layer"}``).
        label: the target's readable name (its :attr:`Target.label`), the key of its scalars and media.
        readout: the optimised prompt in words (:class:`Readout`; ``None`` for a generator without one).
        steps: optimisation steps taken (at most the callback's ``steps``).
        stopped_early: whether the early-stopping rule ended the run.
        initial_objective, final_objective: the objective before the first and after the last update (for a
            class, ``-log p`` in nats; for a neuron or channel, minus its mean activation).
        image_objective: the objective on the display images (new seeds).
        mean_probability: mean probability of the target class over the display images (class targets only).
        share_predicted: share of the display images predicted as the target class (class targets only).
        probabilities: the target class's probability on each display image (class targets only).
        loss_curve: the objective at every step (before that step's update).
        bias: the bias report (:class:`BiasReport`), ``None`` without a concept detector.
    """

    target: Target
    label: str
    readout: Readout | None
    steps: int
    stopped_early: bool
    initial_objective: float
    final_objective: float
    image_objective: float
    mean_probability: float | None
    share_predicted: float | None
    probabilities: list[float] | None
    loss_curve: list[float]
    bias: BiasReport | None = None

    @property
    def flagged(self) -> list[str]:
        """Suspected spurious concepts of the bias report (none without one)."""
        return [] if self.bias is None else self.bias.flagged

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["target"] = {"kind": self.target.kind, "index": self.target.index, "layer": self.target.layer}
        out["readout"] = None if self.readout is None else self.readout.to_dict()
        out["bias"] = None if self.bias is None else self.bias.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetExplanation:
        """Inverse of :meth:`to_dict`; ``KeyError`` names a missing key (other keys are ignored)."""
        parsed = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name != "bias"}
        t = parsed["target"]
        parsed["target"] = Target(t["kind"], int(t["index"]), t.get("layer"))
        parsed["readout"] = None if parsed["readout"] is None else Readout.from_dict(parsed["readout"])
        bias = data.get("bias")
        return cls(**parsed, bias=None if bias is None else BiasReport.from_dict(bias))


def _over_targets(scalars: dict[str, float]) -> dict[str, float]:
    """The summary keys: the mean objective and probability over the targets and the total flagged."""
    out: dict[str, float] = {}
    for name in ("objective", "probability", "flagged"):
        values = [v for k, v in scalars.items() if k.startswith(f"{name}/") and math.isfinite(v)]
        if values:
            out[name] = float(sum(values) if name == "flagged" else sum(values) / len(values))
    return out


def _key(label: str) -> str:
    return label.replace(" ", "_")


@register
@dataclass
class DiffusionExplainerResult(Result):
    """DiffExplainer prompts of a classifier at one explained epoch (Pennisi et al., 2024).

    Built by :meth:`lightning_xai.diffexplainer.DiffExplainer.explain`: for each target, a text-to-image
    generator's prompt is optimised so that its images maximise the target, read out in words, rendered with
    display seeds and, with a concept detector, checked for over-represented concepts that are not the
    target's core concepts. Schema 1 (records written before the typed results) also held
    ``previous_epoch`` and, per target, ``readout_changes`` (the positions whose top word changed since the
    previous explained epoch); they are read into :attr:`recorded` (``readout_changes`` by target label) and
    never written again: the drift monitor compares the readouts across epochs (drift kind ``readout``).

    Attributes:
        targets: one :class:`TargetExplanation` per target, in the order of the targets.
        generator: the generator's fingerprint (the images of a prompt change when it does).
        images: in memory only: the display images of each target by label, ``[N, 3, H, W]`` in [0, 1].
        prompts: in memory only: the optimised prompt of each target by label (the next warm start).

    Example:
        >>> readout = Readout("a red circle", ["colour", "shape"], ["red", "circle"])
        >>> entry = TargetExplanation(Target("class", 0), "class 0", readout, 5, False, 2.0, 0.1, 0.2, 0.9, 1.0,
        ...                           [0.9], [2.0, 1.0, 0.5, 0.2, 0.1])
        >>> r = DiffusionExplainerResult([entry], generator="world-prompt")
        >>> r.logged(0).scalars
        {'objective/class_0': 0.1, 'probability/class_0': 0.9, 'objective': 0.1, 'probability': 0.9}
        >>> [(o.kind, o.key, o.value) for o in r.observations()]
        [('readout', 'class 0', {'colour': 'red', 'shape': 'circle'})]
        >>> DiffusionExplainerResult.from_payload(r.to_payload(), schema=2) == r
        True
    """

    method: ClassVar[str] = "diffusion_explainer"
    summary_scalars: ClassVar[tuple[str, ...]] = ("objective", "probability", "flagged", "time_s")
    schema: ClassVar[int] = 2

    targets: list[TargetExplanation]
    generator: str
    images: dict[str, Tensor] = transient(default_factory=dict)
    prompts: dict[str, Tensor] = transient(default_factory=dict)

    # ------------------------------------------------------------------------------------ serialised form
    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        return ("previous_epoch",) if schema == 1 else ()

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], schema: int | None = None) -> Self:
        result = super().from_payload(payload, schema)
        if cls.check_schema(schema) == 1:  # each target's readout changes since the previous explained epoch
            changes = {
                str(t.get("label")): t["readout_changes"]
                for t in payload.get("targets") or []
                if isinstance(t, Mapping) and "readout_changes" in t
            }
            if changes:
                result.recorded["readout_changes"] = changes
        return result

    @classmethod
    def _from_fields(cls, payload: Mapping[str, Any]) -> Self:
        parsed = dict(payload)
        if parsed.get("targets") is not None:
            try:
                parsed["targets"] = [TargetExplanation.from_dict(t) for t in parsed["targets"]]
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise SchemaError(
                    f"{cls.method} record payload has an unreadable target ({type(exc).__name__}: {exc})"
                ) from exc
        return super()._from_fields(parsed)

    def to_payload(self) -> dict[str, Any]:
        return {
            "targets": to_jsonable([t.to_dict() for t in self.targets], "payload['targets']"),
            "generator": self.generator,
        }

    def summary(self) -> dict[str, Any]:
        """The generator, then what schema 1 recorded of other epochs (the targets are the view's)."""
        return {"generator": self.generator, **self.recorded}

    def target(self, label: str) -> TargetExplanation:
        """The explanation of the target called ``label``."""
        return next(t for t in self.targets if t.label == label)

    # ------------------------------------------------------------------------------------ what it logs
    def logged(self, epoch: int) -> Logged:
        """Scalars ``objective/<target>``, ``probability/<target>`` (class targets) and ``flagged/<target>``
        (with a bias report: the number of suspected spurious concepts), targets named by label with ``_`` for
        spaces, and over the targets (the summary set) ``objective`` (mean), ``probability`` (mean over the
        class targets) and ``flagged`` (total); tables ``readout`` (target, caption, top words with scores, steps, objective, probability) and,
        with bias reports, ``bias_report`` (target, concept, score, reference, excess, core, effect, flagged);
        the line chart ``loss_curves``; media ``images`` (per target, its display images with the readout,
        while the images are in memory)."""
        scalars: dict[str, float] = {}
        readout_rows, bias_rows, media = [], [], []
        for e in self.targets:
            key = _key(e.label)
            scalars[f"objective/{key}"] = e.final_objective
            if e.mean_probability is not None:
                scalars[f"probability/{key}"] = e.mean_probability
            caption = "" if e.readout is None else e.readout.caption
            top = (
                "; ".join(
                    f"{p}: " + ", ".join(f"{w} ({s:.2f})" for w, s in c)
                    for p, c in zip(e.readout.positions, e.readout.candidates)
                )
                if e.readout is not None
                else ""
            )
            readout_rows.append(
                [e.label, caption, top, e.steps, e.final_objective, e.mean_probability, e.share_predicted]
            )
            if e.bias is not None:
                scalars[f"flagged/{key}"] = float(len(e.bias.flagged))
                columns = ("concept", "score", "reference", "excess", "core")
                bias_rows += [
                    [e.label, *(r[c] for c in columns), r.get("effect"), r["flagged"]] for r in e.bias.rows
                ]
            if e.label in self.images:
                media.append(Media("images", self._figure(e, epoch), caption=f"{e.label}: {caption}"))
        columns = [
            "target",
            "caption",
            "top_words",
            "steps",
            "objective",
            "mean_probability",
            "share_predicted",
        ]
        tables = [Table("readout", columns, readout_rows)]
        if any(e.bias is not None for e in self.targets):
            columns = ["target", "concept", "score", "reference", "excess", "core", "effect", "flagged"]
            tables.append(Table("bias_report", columns, bias_rows))
        charts = []
        if any(e.loss_curve for e in self.targets):
            labels = [e.label for e in self.targets if e.loss_curve]
            length = max(len(e.loss_curve) for e in self.targets)
            wide = [[s] + [_at(e.loss_curve, s) for e in self.targets] for s in range(length)]
            charts.append(
                Chart(
                    "loss_curves",
                    "line",
                    Table("loss_curves", ["step", *labels], wide),
                    "step",
                    labels,
                    title=f"DiffExplainer objective per step, epoch {epoch}",
                )
            )
        scalars.update(_over_targets(scalars))
        return Logged(scalars=scalars, tables=tables, charts=charts, media=media)

    def _figure(self, e: TargetExplanation, epoch: int, max_images: int = 8) -> Any:
        """The optimised prompt's images, each titled with the class probability, the readout over all."""
        from lightning_xai.panels import panel_image

        images = self.images[e.label]
        n = min(max_images, len(images))
        probs = e.probabilities or []
        note = f"; flagged: {', '.join(e.flagged)}" if e.flagged else ""
        caption = "" if e.readout is None else e.readout.caption
        return panel_image(
            [images[i] for i in range(n)],
            [f"p={probs[i]:.2f}" if i < len(probs) else "" for i in range(n)],
            f'{e.label}, epoch {epoch}: "{caption}"{note}',
        )

    # ------------------------------------------------------------------------------------ what it tracks
    def observations(self) -> list[Observation]:
        """Per target, the top word of each prompt position (drift kind ``readout``: the share of positions
        whose word changed), keyed by the target's label, with the caption in ``meta``."""
        out = []
        for e in self.targets:
            if e.readout is None:
                continue
            words = dict(zip(e.readout.positions, e.readout.words))
            label = f"readout of target {e.label!r}"
            out.append(
                Observation("readout", str(e.label), label, words, meta={"caption": e.readout.caption})
            )
        return out


def _at(curve: Sequence[float], step: int) -> float | None:
    return curve[step] if step < len(curve) else None
