"""Concept drift across explained epochs: what each method says about the model, compared epoch to epoch.

The core of :class:`~lightning_xai.callbacks.ConceptDriftMonitor`; no Lightning imports. Each method's
result (its record payload, plus in-memory extras such as CAV vectors) becomes a set of *observations*,
one per ``(kind, key)``, e.g. the TCAV score of ``marker:present`` for class ``circle/lined`` at
``conv5``. :class:`DriftTracker` compares every observation with the same one at the previous explained
epoch and at a reference epoch, as a *drift distance* (0: unchanged, larger: more drift), and raises an
alert when a distance passes its kind's threshold.

Drift kinds (default thresholds in :data:`DRIFT_KINDS`, chosen on the planted-concept world, see the
docs/drift.md and docs/benchmarks/world-and-overhead.md):

================  ====================  ===========================================================
kind              source method         distance
================  ====================  ===========================================================
``cka``           representation_drift  ``1 - linear CKA`` of a representation (the source's own
                                        previous and reference epochs)
``cav_cosine``    concept_attribution   ``1 - cosine`` of a concept's run-averaged CAV
``tcav_score``    concept_attribution   ``|change|`` of a TCAV score (sign fraction)
``tcav_magnitude`` concept_attribution  relative change of a TCAV magnitude as a share of the layer's
                                        largest magnitude (scale-free: logits grow as training goes
                                        on; shares under 25% count as 25%); a concept that a class
                                        stops using moves here first
``rule_jaccard``  logic_rules           ``1 - Jaccard`` of a class's predicate vocabulary (no alert
                                        by default)
``rule_fidelity`` logic_rules           drop of a class's rule fidelity (negative: it rose; no alert
                                        by default)
``symbol_js``     symbolic_tree         Jensen-Shannon divergence (base 2) of a level's symbol usage
``permutation_tau`` concept_permutation share of discordant concept pairs, ``(1 - Kendall tau) / 2``
``readout``       diffusion_explainer   share of a target's prompt positions whose top word changed
================  ====================  ===========================================================

CAV and TCAV changes alert only for a concept that *matters* on one side of the comparison: significant,
with a TCAV magnitude (first-order logit effect) of at least 25% of the largest at that layer (for a CAV:
for some class). A concept the model ignores has a wandering CAV and can still have a consistent,
significant sign.

Example:
    >>> tracker = DriftTracker(thresholds={"rule_fidelity": 0.1})
    >>> def fidelity(f):
    ...     return {("rule_fidelity", "b"): Observation("rule_fidelity", "b", "rule fidelity of class 'b'", f)}
    >>> _ = tracker.update("logic_rules", 0, fidelity(0.9))
    >>> rows, alerts = tracker.update("logic_rules", 1, fidelity(0.6))
    >>> [(r["kind"], r["key"], round(r["value"], 2)) for r in rows if r["against"] == "previous"]
    [('rule_fidelity', 'b', 0.3)]
    >>> alerts[0]["message"]
    "logic_rules: rule fidelity of class 'b' drifted since epoch 0 (previous): 0.90 -> 0.60 (rule_fidelity 0.300 > 0.1)"
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lightning_xai.drift import js_divergence
from lightning_xai.results.base import Observation, Result
from lightning_xai.results.concept_attribution import RELEVANT_SHARE

__all__ = ["AGAINST", "DRIFT_KINDS", "DriftKind", "DriftTracker", "Observation", "observations"]

AGAINST = ("previous", "reference")


@dataclass(frozen=True)
class DriftKind:
    """One kind of drift: the method it comes from, its default alert threshold and what it measures."""

    name: str
    method: str
    threshold: float | None
    meaning: str


DRIFT_KINDS: dict[str, DriftKind] = {
    k.name: k
    for k in (
        DriftKind("cka", "representation_drift", 0.2, "1 - linear CKA of a representation"),
        DriftKind("cav_cosine", "concept_attribution", 0.5, "1 - cosine of a concept's run-averaged CAV"),
        DriftKind("tcav_score", "concept_attribution", 0.3, "|change| of a TCAV score (sign fraction)"),
        DriftKind(
            "tcav_magnitude",
            "concept_attribution",
            0.5,
            "relative change of a TCAV magnitude's share of the layer's",
        ),
        # tracked but silent by default: on the world, a stable model's vocabularies swap neurons and its
        # per-class fidelities swing by up to 0.6 between epochs (docs/benchmarks/world-and-overhead.md)
        DriftKind("rule_jaccard", "logic_rules", None, "1 - Jaccard of a class's predicate vocabulary"),
        DriftKind("rule_fidelity", "logic_rules", None, "drop of a class's rule fidelity"),
        DriftKind("symbol_js", "symbolic_tree", 0.2, "Jensen-Shannon divergence of a level's symbol usage"),
        DriftKind("permutation_tau", "concept_permutation", 0.3, "share of discordant pairs of the ranking"),
        DriftKind("readout", "diffusion_explainer", 0.5, "share of prompt positions whose top word changed"),
    )
}


def observations(result: Result) -> dict[tuple[str, str], Observation]:
    """What the drift monitor tracks of one explained epoch: ``result.observations()`` by ``(kind, key)``.

    Example:
        >>> from lightning_xai.results.representation_drift import RepresentationDriftResult
        >>> r = RepresentationDriftResult(0, 1, 64, {"features": 32}, {"features": 0.9}, {"features": 0.8})
        >>> sorted(observations(r))
        [('cka', 'features')]
    """
    return {(o.kind, o.key): o for o in result.observations()}


# ------------------------------------------------------------------------------------------- distances
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _distance(before: Observation, after: Observation) -> float:
    a, b = before.value, after.value
    kind = after.kind
    if kind == "cav_cosine":
        if a.shape != b.shape:
            return math.nan
        return 1.0 - float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))
    if kind == "tcav_score":
        return abs(b - a)
    if kind == "tcav_magnitude":  # relative change of the share; small shares count as RELEVANT_SHARE
        return abs(b - a) / max(abs(a), abs(b), RELEVANT_SHARE)
    if kind == "rule_jaccard":
        union = a | b
        return 0.0 if not union else 1.0 - len(a & b) / len(union)
    if kind == "rule_fidelity":
        return a - b
    if kind == "symbol_js":
        return js_divergence(a, b) if len(a) == len(b) else math.nan
    if kind == "permutation_tau":
        from lightning_xai.permutation.importance import kendall_tau

        common = [c for c in b if c in a]
        tau = kendall_tau([a[c] for c in common], [b[c] for c in common])
        return math.nan if math.isnan(tau) else (1.0 - tau) / 2.0
    if kind == "readout":
        common = [p for p in b if p in a]
        return sum(a[p] != b[p] for p in common) / len(common) if common else math.nan
    raise ValueError(f"no distance for drift kind {kind!r}; valid kinds: {sorted(DRIFT_KINDS)}")


def _eligible(before: Observation, after: Observation) -> bool:
    """Whether a change may alert: CAVs and TCAV scores only of concepts that matter on one side."""
    if after.kind in ("tcav_score", "tcav_magnitude", "cav_cosine"):
        return bool(before.meta.get("relevant") or after.meta.get("relevant"))
    return True


def _state_text(o: Observation) -> str:
    v = o.value
    if o.kind == "tcav_score":
        mag = o.meta.get("magnitude")
        size = f", magnitude {mag:+.2f}" if _finite(mag) else ""
        return f"{v:.2f} ({'significant' if o.meta.get('significant') else 'not significant'}{size})"
    if o.kind == "tcav_magnitude":
        return f"{o.meta.get('magnitude', math.nan):+.2f} logits ({v:+.0%} of the layer's largest)"
    if o.kind in ("rule_fidelity",):
        return f"{v:.2f}"
    if o.kind == "rule_jaccard":
        texts = o.meta.get("texts", {})
        shown = [texts.get(i, str(i)) for i in sorted(v)[:4]]
        return "{" + ", ".join(shown) + (", ..." if len(v) > 4 else "") + "}"
    if o.kind == "permutation_tau":
        return " > ".join(sorted(v, key=lambda c: -v[c])[:4])
    if o.kind == "readout":
        return repr(o.meta.get("caption", " ".join(v.values())))
    if o.kind == "symbol_js":
        total = sum(v) or 1.0
        top = sorted(range(len(v)), key=lambda i: -v[i])[:3]
        return "top " + ", ".join(f"S{i} {v[i] / total:.0%}" for i in top)
    if o.kind == "cka":
        return "CKA"
    return "vector"


def _change_text(before: Observation, after: Observation) -> str:
    if after.kind == "rule_jaccard":
        texts = {**before.meta.get("texts", {}), **after.meta.get("texts", {})}
        lost = [texts.get(i, str(i)) for i in sorted(before.value - after.value)[:3]]
        gained = [texts.get(i, str(i)) for i in sorted(after.value - before.value)[:3]]
        return f"lost {lost or 'nothing'}, gained {gained or 'nothing'}"
    if after.kind in ("cav_cosine", "cka"):
        return ""
    return f"{_state_text(before)} -> {_state_text(after)}"


def _plain(o: Observation) -> dict[str, Any]:
    value = sorted(o.value) if isinstance(o.value, (set, frozenset)) else o.value
    return {"kind": o.kind, "key": o.key, "label": o.label, "value": value, "meta": o.meta, "given": o.given}


def _from_plain(d: Mapping[str, Any]) -> Observation:
    value = frozenset(d["value"]) if d["kind"] == "rule_jaccard" else d["value"]
    return Observation(d["kind"], d["key"], d["label"], value, dict(d.get("meta") or {}), d.get("given"))


# -------------------------------------------------------------------------------------------- tracker
class DriftTracker:
    """Drift series of every source against its previous and its reference explained epoch, with alerts.

    Args:
        thresholds: alert threshold per drift kind, over :data:`DRIFT_KINDS`' defaults.
        reference: ``"first"`` (each source's first tracked epoch) or an epoch number (the first explained
            epoch at or after it).
        start_epoch: epochs before it are ignored (early training always drifts).
        alert_on: which comparisons may alert: ``("previous",)`` (default), ``("reference",)`` or both.
            Against the reference, slow and legitimate learning accumulates (measured on the world: TCAV
            magnitude shares move by 0.4 to 0.6 from the first epoch over 5 stable epochs), so by default
            it is tracked and logged but does not alert.

    A series that stays past its threshold against the reference alerts once, when it crosses, and again
    only after it came back under; against the previous epoch every crossing alerts.
    """

    def __init__(
        self,
        thresholds: Mapping[str, float] | None = None,
        reference: str | int = "first",
        start_epoch: int = 0,
        alert_on: Sequence[str] = ("previous",),
    ) -> None:
        self.thresholds = {k: d.threshold for k, d in DRIFT_KINDS.items()}
        self.thresholds.update(dict(thresholds or {}))
        self.reference = reference
        self.start_epoch = int(start_epoch)
        self.alert_on = tuple(alert_on)
        self.sources: dict[str, dict[str, Any]] = {}
        self.history: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self._alerting: set[tuple[str, str, str]] = set()

    def _is_reference(self, epoch: int) -> bool:
        return self.reference == "first" or epoch >= int(self.reference)

    def update(
        self, source: str, epoch: int, obs: Mapping[tuple[str, str], Observation]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Compare ``source``'s observations at ``epoch``; returns this epoch's rows and new alerts.

        An epoch at or before the source's last tracked one (``trainer.validate`` after ``fit``, a repeated
        hook) is ignored, so no epoch of a series is counted twice.
        """
        if epoch < self.start_epoch or not obs:
            return [], []
        state = self.sources.setdefault(source, {"previous": None, "reference": None})
        previous, reference = state["previous"], state["reference"]
        if previous is not None and epoch <= previous["epoch"]:
            return [], []
        current = {"epoch": epoch, "obs": dict(obs)}
        if reference is None and self._is_reference(epoch):
            state["reference"] = current
        bases = {"previous": previous, "reference": reference}
        rows: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        for (kind, key), after in obs.items():
            for against in AGAINST:
                if after.given is not None:
                    value, base_epoch = after.given.get(against), after.given.get(f"{against}_epoch")
                    if value is None or base_epoch is None or base_epoch == epoch:
                        continue
                    before = after
                else:
                    base = bases[against]
                    before = None if base is None else base["obs"].get((kind, key))
                    if before is None:
                        continue
                    value, base_epoch = _distance(before, after), base["epoch"]
                if value is None or math.isnan(value):
                    continue
                threshold = self.thresholds[kind]
                over = threshold is not None and value > threshold and _eligible(before, after)
                alert = over and against in self.alert_on
                if against == "reference":
                    tag = (source, kind, key)
                    if over and tag in self._alerting:
                        alert = False
                    if over:
                        self._alerting.add(tag)
                    else:
                        self._alerting.discard(tag)
                row = {
                    "epoch": epoch,
                    "source": source,
                    "kind": kind,
                    "key": key,
                    "against": against,
                    "base_epoch": base_epoch,
                    "value": float(value),
                    "threshold": threshold,
                    "alert": bool(alert),
                }
                rows.append(row)
                if alert:
                    change = _change_text(before, after)
                    message = (
                        f"{source}: {after.label} drifted since epoch {base_epoch} ({against}): "
                        + (f"{change} " if change else "")
                        + f"({kind} {value:.3f} > {threshold:g})"
                    )
                    alerts.append(
                        {
                            **row,
                            "label": after.label,
                            "before": _state_text(before) if before is not after else None,
                            "after": _state_text(after),
                            "message": message,
                        }
                    )
        state["previous"] = current
        self.history.extend(rows)
        self.alerts.extend(alerts)
        return rows, alerts

    def state_dict(self) -> dict[str, Any]:
        """Plain containers, tensors and numbers only (checkpoints load with ``weights_only=True``)."""

        def snapshot(snap: dict[str, Any] | None) -> dict[str, Any] | None:
            if snap is None:
                return None
            return {"epoch": snap["epoch"], "obs": [_plain(o) for o in snap["obs"].values()]}

        return {
            "sources": {s: {k: snapshot(v) for k, v in st.items()} for s, st in self.sources.items()},
            "history": list(self.history),
            "alerts": list(self.alerts),
            "alerting": [list(t) for t in sorted(self._alerting)],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        def snapshot(snap: Mapping[str, Any] | None) -> dict[str, Any] | None:
            if snap is None:
                return None
            obs = [_from_plain(o) for o in snap["obs"]]
            return {"epoch": snap["epoch"], "obs": {(o.kind, o.key): o for o in obs}}

        self.sources = {
            s: {k: snapshot(v) for k, v in st.items()} for s, st in state.get("sources", {}).items()
        }
        self.history = list(state.get("history", []))
        self.alerts = list(state.get("alerts", []))
        self._alerting = {tuple(t) for t in state.get("alerting", [])}
