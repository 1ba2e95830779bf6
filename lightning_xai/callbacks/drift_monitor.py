"""``ConceptDriftMonitor``: drift series and alerts over what every other lightning-xai callback explains."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_deprecation
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback, check_int, dispatcher_for, log_scalar, misconfigured
from lightning_xai.concept_drift import AGAINST, DRIFT_KINDS, DriftTracker, observations
from lightning_xai.records import Record
from lightning_xai.results import Result
from lightning_xai.results.drift import DriftAlert, DriftResult, DriftRow
from lightning_xai.scalar_sets import check_scalar_set, select_scalars, unmatched_message

__all__ = ["ConceptDriftMonitor"]

_SHORT = {"previous": "prev", "reference": "ref"}


class ConceptDriftMonitor(Callback):
    r"""Track how the model's concepts drift across explained epochs, and alert when they move.

    The monitor reads the result of every lightning-xai callback on the same ``Trainer`` as it is produced
    (no extra work, no extra forward pass) and keeps, per callback, drift series against the previous
    explained epoch and against a reference epoch: representation CKA, CAV cosine and TCAV score and
    magnitude change per (concept, class), rule-vocabulary Jaccard and rule-fidelity change per class, symbol-usage
    Jensen-Shannon divergence, permutation-ranking Kendall tau, DiffExplainer readout change (see
    :mod:`lightning_xai.concept_drift` for each distance). Attach any subset of callbacks; two instances of
    one callback are tracked apart (``concept_attribution`` and ``concept_attribution#2``). One monitor per
    ``Trainer`` tracks them all (Lightning refuses a second one: they would share a checkpoint key).

    Every value is logged with ``pl_module.log`` on every rank (so ``EarlyStopping`` and
    ``ModelCheckpoint`` can monitor it) as ``xai/drift/<source>/<kind>/<prev|ref>/<key>``, plus the
    largest value of each kind, ``xai/drift/<source>/<kind>/max_<prev|ref>``, and the number of alerts,
    ``xai/drift/<source>/alerts``. On rank 0, each source's explained epoch gives a ``drift`` record (its
    rows, logged as the table ``xai/drift/<source>/rows``) and each alert an ``alert`` record and a warning
    naming what drifted, from what to what.

    Args:
        thresholds: alert thresholds by drift kind (``None``: track without alerts), over the defaults
            (``{kind: DRIFT_KINDS[kind].threshold}``: cka 0.2, cav_cosine 0.5, tcav_score 0.3,
            tcav_magnitude 0.5, symbol_js 0.2, permutation_tau 0.3, readout 0.5; rule_jaccard and
            rule_fidelity are tracked without alerts unless given a threshold).
        reference: ``"first"`` (the first tracked epoch of each callback) or an epoch number to pin.
        start_epoch: ignore epochs before it (early training always drifts). Default: 0.
        alert_on: comparisons that may alert: ``["previous"]`` (default: sudden changes), ``["reference"]``
            or both. Drift from the reference accumulates during normal learning, so it is logged but only
            alerts when asked.
        stop_on_alert: stop training (``trainer.should_stop``) at the first alert. Default: False.
        log_scalars: ``"summary"`` (the per-kind maxima and the alert count of each source), ``"all"`` (also
            one scalar per series, ``xai/drift/<source>/<kind>/<prev|ref>/<key>``), ``"none"``, or a list of
            key patterns after ``xai/drift/``, e.g. ``["logic_rules/*"]``. Default: ``"summary"``.
        log_keys: deprecated: ``True`` is ``log_scalars="all"``, ``False`` is ``"summary"``.
        on_error: ``"warn"`` (record the error, keep training) or ``"raise"``.

    Raises:
        MisconfigurationException: an unknown drift kind, a threshold that is not a positive number, or a
            bad ``reference``/``alert_on``/``on_error`` (the message lists the valid choices).

    Example:
        >>> from lightning_xai.callbacks import ConceptDriftMonitor, LogicRulesCallback
        >>> monitor = ConceptDriftMonitor(thresholds={"rule_jaccard": 0.5}, stop_on_alert=True)
        >>> callbacks = [LogicRulesCallback(), monitor]  # Trainer(callbacks=callbacks)
        >>> monitor.tracker.thresholds["rule_jaccard"], monitor.tracker.thresholds["tcav_score"]
        (0.5, 0.3)
    """

    def __init__(
        self,
        thresholds: Mapping[str, float | None] | None = None,
        reference: Literal["first"] | int = "first",
        start_epoch: int = 0,
        alert_on: Sequence[Literal["previous", "reference"]] = ("previous",),
        stop_on_alert: bool = False,
        log_scalars: str | Sequence[str] = "summary",
        on_error: Literal["warn", "raise"] = "warn",
        log_keys: bool | None = None,
    ) -> None:
        super().__init__()
        if log_keys is not None:
            rank_zero_deprecation(
                f"ConceptDriftMonitor(log_keys={log_keys!r}) is deprecated; use "
                f"log_scalars={'all' if log_keys else 'summary'!r}."
            )
            log_scalars = "all" if log_keys else "summary"
        with misconfigured():
            log_scalars = check_scalar_set(log_scalars)
        thresholds = dict(thresholds or {})
        unknown = sorted(set(thresholds) - set(DRIFT_KINDS))
        if unknown:
            raise MisconfigurationException(
                f"Unknown drift kind(s) {unknown} in thresholds; valid kinds: {sorted(DRIFT_KINDS)}."
            )
        for kind, value in thresholds.items():
            if value is None:  # tracked and logged, never alerts
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise MisconfigurationException(
                    f"thresholds[{kind!r}] must be a positive number (or None: no alerts), but got {value!r}."
                )
        if not (
            reference == "first"
            or (isinstance(reference, int) and not isinstance(reference, bool) and reference >= 0)
        ):
            raise MisconfigurationException(
                f"reference={reference!r} is not supported; choose 'first' or an epoch number >= 0."
            )
        check_int("start_epoch", start_epoch, 0)
        alert_on = [alert_on] if isinstance(alert_on, str) else list(alert_on)
        bad = [a for a in alert_on if a not in AGAINST]
        if bad or not alert_on:
            raise MisconfigurationException(
                f"alert_on={alert_on!r} is not supported; choose one or both of {list(AGAINST)}."
            )
        if on_error not in ("warn", "raise"):
            raise MisconfigurationException(
                f"on_error={on_error!r} is not supported; choose one of ['warn', 'raise']."
            )
        self.thresholds = thresholds
        self.reference = reference
        self.start_epoch = start_epoch
        self.alert_on = tuple(alert_on)
        self.stop_on_alert = bool(stop_on_alert)
        self.log_scalars = log_scalars
        self._keys_seen: set[str] = set()
        self.on_error = on_error
        self.tracker = DriftTracker(
            thresholds, reference=reference, start_epoch=start_epoch, alert_on=self.alert_on
        )
        self._sources: dict[int, str] = {}
        self._warned_error = False

    # ------------------------------------------------------------------ identity and state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict.get("tracker", {}))

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert so far (dicts with ``epoch``, ``source``, ``kind``, ``key``, ``message``, ...)."""
        return self.tracker.alerts

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # source names by callback order: stable across a resume with the same callbacks
        counts: dict[str, int] = {}
        self._sources = {}
        for cb in trainer.callbacks:
            if isinstance(cb, XAICallback) and id(cb) not in self._sources:
                counts[cb.method] = counts.get(cb.method, 0) + 1
                n = counts[cb.method]
                self._sources[id(cb)] = cb.method if n == 1 else f"{cb.method}#{n}"
        if not self._sources:
            rank_zero_warn(
                "ConceptDriftMonitor: no lightning-xai callback is attached to this Trainer, so there is nothing to "
                "track. Add e.g. LogicRulesCallback() or ConceptAttributionCallback(...) to the callbacks."
            )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        message = unmatched_message("ConceptDriftMonitor", self.log_scalars, self._keys_seen, "xai/drift/")
        if message:
            rank_zero_warn(message)
        self._keys_seen = set()  # said once per run

    def on_xai_result(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        source: XAICallback,
        record: Record,
        result: Result,
    ) -> None:
        """Called by every lightning-xai callback (on every rank) after it explained an epoch."""
        if record.name != "epoch" or not isinstance(result, Result):
            return  # a custom callback's ExplainResult has no typed observations to track
        name = self._sources.get(id(source), source.method)
        try:
            obs = observations(result)
            rows, alerts = self.tracker.update(name, record.epoch, obs)
            if not rows:
                return
            self._log(trainer, pl_module, name, rows, alerts)
            if trainer.is_global_zero:
                self._write(trainer, name, record, rows, alerts)
            for alert in alerts:
                rank_zero_warn(f"ConceptDriftMonitor alert at epoch {record.epoch}: {alert['message']}")
            if alerts and self.stop_on_alert:
                trainer.should_stop = True
        except Exception as exc:
            if self.on_error == "raise":
                raise RuntimeError(
                    f"ConceptDriftMonitor failed on {name} at epoch {record.epoch}: {exc}"
                ) from exc
            if trainer.is_global_zero:
                dispatcher_for(trainer).write_error("drift", record.epoch, record.global_step, exc)
            if not self._warned_error:
                self._warned_error = True
                rank_zero_warn(
                    f"ConceptDriftMonitor failed on {name} at epoch {record.epoch} and training goes on: "
                    f"{type(exc).__name__}: {exc}. Further failures are recorded silently in xai/records.jsonl."
                )

    # ------------------------------------------------------------------ output
    def _log(
        self, trainer: Trainer, pl_module: LightningModule, source: str, rows: list[dict], alerts: list[dict]
    ) -> None:
        series: dict[str, float] = {}
        summary: dict[str, float] = {}
        for r in rows:
            short = _SHORT[r["against"]]
            series[f"{source}/{r['kind']}/{short}/{r['key']}"] = r["value"]
            key = f"{source}/{r['kind']}/max_{short}"
            summary[key] = max(summary.get(key, -math.inf), r["value"])
        summary[f"{source}/alerts"] = float(len(alerts))
        scalars = {**series, **summary}
        self._keys_seen.update(scalars)
        for key, value in select_scalars(scalars, self.log_scalars, tuple(summary)).items():
            log_scalar(trainer, pl_module, f"xai/drift/{key}", value)

    def _write(
        self, trainer: Trainer, source: str, record: Record, rows: list[dict], alerts: list[dict]
    ) -> None:
        # one epoch's rows per record: the report draws each series from the records of all epochs
        state = self.tracker.sources.get(source, {})
        result = DriftResult(
            source=source,
            source_method=record.method,
            reference_epoch=(state.get("reference") or {}).get("epoch"),
            rows=[DriftRow.read(r) for r in rows],
            alerts=[a["message"] for a in alerts],
        )
        disp = dispatcher_for(trainer)
        disp.dispatch(
            result.explanation(result.record(record.epoch, record.global_step)), step=record.global_step
        )
        for a in alerts:
            alert = DriftAlert(**{k: a[k] for k in DriftAlert.FIELDS})
            disp.dispatch(
                alert.explanation(alert.record(record.epoch, record.global_step)), step=record.global_step
            )
