"""The typed result of :meth:`lightning_xai.tcav.ConceptAttribution.explain` (and of
:class:`~lightning_xai.callbacks.ConceptAttributionCallback`): one epoch's TCAV scores with significance and
Visual-TCAV attributions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import Self

from lightning_xai.records import Chart, Media, Table, to_jsonable
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Observation, Result, SchemaError, transient

if TYPE_CHECKING:
    from torch import Tensor

    from lightning_xai.tcav.scores import GlobalExplanation, TCAVResult, VisualTCAVResult

__all__ = ["RELEVANT_SHARE", "ConceptAttributionResult", "GlobalAttribution", "ProbeAttribution", "TCAVEntry"]

#: a concept matters to a class when its result is significant and its |TCAV magnitude| is at least this share
#: of the layer's largest (drift kinds ``tcav_magnitude`` and ``cav_cosine``)
RELEVANT_SHARE = 0.25


class _Row:
    """A table row stored as the dict of its fields, ``class_name`` under the key ``"class"``."""

    def to_dict(self) -> dict[str, Any]:
        return {
            ("class" if f.name == "class_name" else f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def read(cls, data: Mapping[str, Any]) -> Self:
        """The row stored as ``data``; ``KeyError`` names a missing key."""
        return cls(
            **{f.name: data["class" if f.name == "class_name" else f.name] for f in dataclasses.fields(cls)}
        )


@dataclass
class TCAVEntry(_Row):
    """The TCAV score of one (layer, concept, class), as the record stores it (see
    :class:`~lightning_xai.tcav.TCAVScore`).

    Attributes:
        layer: dotted layer name.
        concept: concept name.
        class_name: class name (stored under the key ``"class"``).
        class_index: class index.
        n: the class's inputs.
        tcav: TCAV score, the mean over random runs of the share of the class's inputs whose logit rises along
            the CAV (0 to 1; NaN for a class without inputs).
        tcav_sd: its standard deviation over the runs.
        magnitude: mean over runs of the first-order change of the class logit when the concept is added
            (logit units).
        magnitude_sd: its standard deviation over the runs.
        null_tcav: the mean score of the random-vs-random CAVs.
        null_tcav_sd: its standard deviation over the runs.
        p_value: Welch two-sided t-test of the concept's run scores against the null's.
        p_adjusted: Bonferroni-corrected over every (layer, concept, class) of the epoch.
        significant: ``p_adjusted < alpha``.
    """

    layer: str
    concept: str
    class_name: str
    class_index: int
    n: int
    tcav: float
    tcav_sd: float
    magnitude: float
    magnitude_sd: float
    null_tcav: float
    null_tcav_sd: float
    p_value: float
    p_adjusted: float
    significant: bool


@dataclass
class GlobalAttribution(_Row):
    """The Visual-TCAV global attribution of one concept to one class at one layer.

    Attributes:
        layer: dotted layer name.
        concept: concept name.
        class_name: class name (stored under the key ``"class"``).
        class_index: class index.
        n: the class's images it is averaged over.
        mean: mean attribution (share of the logit's gain along the feature map the concept explains, >= 0).
        se: its standard error.
        ci_low: ``max(0, mean - 2 se)``.
        ci_high: ``mean + 2 se``.
    """

    layer: str
    concept: str
    class_name: str
    class_index: int
    n: int
    mean: float
    se: float
    ci_low: float
    ci_high: float


@dataclass
class ProbeAttribution(_Row):
    """The local attribution of one concept to one of a probe image's top classes at one layer.

    Attributes:
        probe: the probe image's index.
        layer: dotted layer name.
        class_name: the class (stored under the key ``"class"``), one of the image's top 3 predictions.
        probability: the model's softmax probability of that class.
        concept: concept name.
        attribution: the concept's attribution to the class on this image.
    """

    probe: int
    layer: str
    class_name: str
    probability: float
    concept: str
    attribution: float


_READERS: dict[str, Any] = {
    "scores": TCAVEntry,
    "global_attribution": GlobalAttribution,
    "probes": ProbeAttribution,
}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@register
@dataclass
class ConceptAttributionResult(Result):
    """TCAV scores with significance and Visual-TCAV attributions of one explained epoch.

    Built by :meth:`lightning_xai.tcav.ConceptAttribution.explain`. The record's payload holds the fields
    below in this order; schema 1 (records written before the typed results) held the same fields and two
    about the previous explained epoch (``cav_similarity``, the cosine of each concept's CAV with that
    epoch's, and ``previous_epoch``), which are read into :attr:`recorded` and never written again: the
    drift monitor compares the CAVs across epochs (drift kind ``cav_cosine``, from :attr:`cavs`).

    Attributes:
        layers: the explained layers (dotted names).
        concepts: the concept names.
        classes: the names of the explained classes.
        cav: the CAV kind, ``"mean"`` or ``"linear"``.
        n_random: random runs per concept (and random-vs-random null runs).
        alpha: significance level after the Bonferroni correction.
        n_hypotheses: Bonferroni's ``m``, the (layer, concept, class) triples tested.
        n_inputs: per class name, its inputs in the TCAV runs.
        random_pool: what the random counter-examples are, e.g. ``"tensor [100, 3, 64, 64]"``.
        scores: every (layer, concept, class) as a :class:`TCAVEntry`, layer-major, then concept, then class.
        global_attribution: every (layer, concept, class) as a :class:`GlobalAttribution`, in the same order.
        probes: per probe image, top class, layer and concept a :class:`ProbeAttribution`.
        cavs: in memory only: per layer and concept, its run-averaged CAV (a flat vector), for the drift
            monitor.
        tcav: in memory only: the :class:`~lightning_xai.tcav.TCAVResult` with the per-run scores.
        global_explanation: in memory only: the :class:`~lightning_xai.tcav.GlobalExplanation` as tensors.
        local: in memory only: the probes' :class:`~lightning_xai.tcav.VisualTCAVResult` (their concept maps).
        probe_images: in memory only: the probe images ``[N, C, H, W]``, for the concept-map figures.

    Example:
        >>> entry = TCAVEntry("conv5", "striped", "zebra", 0, 8, 0.9, 0.1, 1.5, 0.2, 0.5, 0.3, 1e-4, 1e-3,
        ...                   True)
        >>> r = ConceptAttributionResult(["conv5"], ["striped"], ["zebra"], "mean", 10, 0.05, 1, {"zebra": 8},
        ...                              "tensor [20, 3, 64, 64]", [entry])
        >>> r.logged(0).scalars
        {'n_significant': 1.0, 'tcav/conv5/striped/zebra': 0.9, 'magnitude/conv5/striped/zebra': 1.5}
        >>> [(o.kind, o.key) for o in r.observations()]
        [('tcav_score', 'conv5/striped/zebra'), ('tcav_magnitude', 'conv5/striped/zebra')]
        >>> r.to_payload()["scores"][0]["class"]
        'zebra'
    """

    method: ClassVar[str] = "concept_attribution"
    summary_scalars: ClassVar[tuple[str, ...]] = ("n_significant", "time_s")
    schema: ClassVar[int] = 2

    layers: list[str]
    concepts: list[str]
    classes: list[str]
    cav: str
    n_random: int
    alpha: float
    n_hypotheses: int
    n_inputs: dict[str, int]
    random_pool: str
    scores: list[TCAVEntry]
    global_attribution: list[GlobalAttribution] = dataclasses.field(default_factory=list)
    probes: list[ProbeAttribution] = dataclasses.field(default_factory=list)
    cavs: dict[str, dict[str, Tensor]] = transient(default_factory=dict)
    tcav: TCAVResult | None = transient()
    global_explanation: GlobalExplanation | None = transient()
    local: VisualTCAVResult | None = transient()
    probe_images: Tensor | None = transient()

    # ------------------------------------------------------------------------------------ serialised form
    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        return ("cav_similarity", "previous_epoch") if schema == 1 else ()

    def to_payload(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("transient"):
                continue
            value = getattr(self, f.name)
            if f.name in _READERS:
                value = [row.to_dict() for row in value]
            out[f.name] = to_jsonable(value, f"payload[{f.name!r}]")
        return out

    @classmethod
    def _from_fields(cls, payload: Mapping[str, Any]) -> Self:
        parsed = dict(payload)
        for key, row in _READERS.items():
            if key in parsed:
                try:
                    parsed[key] = [row.read(r) for r in parsed[key]]
                except (KeyError, TypeError, AttributeError) as exc:
                    raise SchemaError(
                        f"{cls.method} record payload has an unreadable {key!r} ({type(exc).__name__}: {exc})"
                    ) from exc
        return super()._from_fields(parsed)

    # ------------------------------------------------------------------------------------ what it logs
    @property
    def n_significant(self) -> int:
        """The significant (layer, concept, class) triples."""
        return sum(bool(s.significant) for s in self.scores)

    def _score(self, layer: str, concept: str, class_name: str) -> TCAVEntry | None:
        return next(
            (s for s in self.scores if (s.layer, s.concept, s.class_name) == (layer, concept, class_name)),
            None,
        )

    def logged(self, epoch: int) -> Logged:
        """The scalars ``n_significant`` and, per (layer, concept, class), ``tcav/<layer>/<concept>/<class>`` and
        ``magnitude/<layer>/<concept>/<class>`` (not in the summary set); the tables ``tcav_scores``, ``global_attribution`` and (with probes)
        ``local_attribution``; a TCAV bar chart per (layer, class) whose labels carry ``*`` for significant
        concepts; per layer the media ``tcav_plot`` (scores with their run-to-run SD and significance marks)
        and ``attribution_plot`` (global attributions with their 2-SE intervals); and per probe image (when
        the probes' explanation is in memory) ``concept_maps`` (the maps over the image) and
        ``concept_masks`` (the maps thresholded at 0.5)."""
        from lightning_xai.tcav import figures

        def table(key: str, rows: list[Any], cls: type[_Row]) -> Table:
            columns = [("class" if f.name == "class_name" else f.name) for f in dataclasses.fields(cls)]
            return Table(key, columns, [list(r.to_dict().values()) for r in rows])

        tables = [
            table("tcav_scores", self.scores, TCAVEntry),
            table("global_attribution", self.global_attribution, GlobalAttribution),
        ]
        if self.probes:
            tables.append(table("local_attribution", self.probes, ProbeAttribution))
        charts, media = [], []
        for layer in self.layers:
            for cname in self.classes:
                entries = [(k, self._score(layer, k, cname)) for k in self.concepts]
                rows = [[f"{k} *" if s.significant else k, s.tcav, s.significant] for k, s in entries if s]
                chart_table = Table(f"tcav_{layer}_{cname}", ["concept", "tcav", "significant"], rows)
                title = f"TCAV scores for {cname} at {layer} (* significant, Bonferroni alpha={self.alpha})"
                charts.append(
                    Chart(f"tcav/{layer}/{cname}", "bar", chart_table, "concept", "tcav", title=title)
                )
        for layer in self.layers:
            image = figures.tcav_figure(self.scores, layer, self.concepts, self.classes, self.n_hypotheses)
            media.append(Media("tcav_plot", image, caption=f"TCAV scores at {layer}, epoch {epoch}"))
        for layer in self.layers:
            image = figures.global_figure(self.global_attribution, layer, self.concepts, self.classes)
            caption = f"Visual-TCAV global attributions (mean and 2-SE interval) at {layer}, epoch {epoch}"
            media.append(Media("attribution_plot", image, caption=caption))
        if self.local is not None and self.probe_images is not None:
            media += figures.probe_media(self.local, self.probe_images)
        scalars = {"n_significant": float(self.n_significant)}
        for s in self.scores:
            if math.isfinite(s.tcav):
                scalars[f"tcav/{s.layer}/{s.concept}/{s.class_name}"] = float(s.tcav)
            if math.isfinite(s.magnitude):
                scalars[f"magnitude/{s.layer}/{s.concept}/{s.class_name}"] = float(s.magnitude)
        return Logged(scalars=scalars, tables=tables, charts=charts, media=media)

    # ------------------------------------------------------------------------------------ what it tracks
    def observations(self) -> list[Observation]:
        """Per (layer, concept, class) its TCAV score (``tcav_score``) and its magnitude as a share of the
        layer's largest (``tcav_magnitude``), and per (layer, concept) its run-averaged CAV (``cav_cosine``,
        while the vectors are in memory). ``meta["relevant"]``: significant with a share of at least
        :data:`RELEVANT_SHARE` (for a CAV: so for some class)."""
        rows = [r for r in self.scores if _finite(r.tcav)]
        # magnitudes (first-order logit effects) as shares of the layer's largest: logits grow as training
        # goes on, shares do not. A concept the model ignores can still have a consistent sign (significant)
        # with no size, so a concept matters when it is significant and its share is large enough.
        scale: dict[str, float] = {}
        for r in rows:
            if _finite(r.magnitude):
                scale[r.layer] = max(scale.get(r.layer, 0.0), abs(r.magnitude))
        out = []
        relevant_concepts: dict[str, set[str]] = {}
        for r in rows:
            top = scale.get(r.layer, 0.0)
            share = r.magnitude / top if _finite(r.magnitude) and top > 0 else None
            rel = bool(r.significant) and share is not None and abs(share) >= RELEVANT_SHARE
            if rel:
                relevant_concepts.setdefault(r.layer, set()).add(r.concept)
            key = f"{r.layer}/{r.concept}/{r.class_name}"
            what = f"of {r.concept!r} for class {r.class_name!r} at {r.layer}"
            meta = {"significant": bool(r.significant), "relevant": rel, "magnitude": r.magnitude}
            out.append(Observation("tcav_score", key, f"TCAV score {what}", float(r.tcav), meta))
            if share is not None:
                out.append(Observation("tcav_magnitude", key, f"TCAV magnitude {what}", share, meta))
        for layer, vectors in self.cavs.items():
            for concept, v in vectors.items():
                meta = {"relevant": concept in relevant_concepts.get(layer, set())}
                label = f"CAV of {concept!r} at {layer}"
                out.append(Observation("cav_cosine", f"{layer}/{concept}", label, v.detach().cpu(), meta))
        return out
