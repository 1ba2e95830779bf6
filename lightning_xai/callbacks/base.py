"""The shared base of every lightning-xai callback: cadence, sampling, safety, DDP, state, sinks.

A method callback subclasses :class:`XAICallback`, sets ``method`` and implements :meth:`explain`;
everything else (when to run, which data, explanation mode, errors, timing, gathering across ranks,
where records go) lives here.
"""

from __future__ import annotations

import contextlib
import gc
import time
import traceback
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import WarningCache
from torch import Tensor
from typing_extensions import override

from lightning_xai import checks
from lightning_xai.callbacks.loop_checks import note_fit_start
from lightning_xai.callbacks.model_checks import (
    TASKS,
    MultiLabelError,
    check_task,
    looks_multilabel,
    step_aside,
)
from lightning_xai.callbacks.ranks import agree_on_failure, gather_objects, run_share
from lightning_xai.capture import (
    ActivationCapture,
    ValidationSample,
    _sample_keys,
    default_batch_to_input,
    explanation_mode,
)
from lightning_xai.records import Chart, Explanation, Media, Record, Table
from lightning_xai.results import Logged, Result
from lightning_xai.scalar_sets import check_scalar_set, select_scalars, unmatched_message
from lightning_xai.sinks import SinkDispatcher

__all__ = [
    "ExplainResult",
    "XAICallback",
    "agree_on_failure",
    "gather_objects",
    "result_listeners",
    "run_share",
]


_ON_CHOICES = ("validation", "train_epoch_end")
_ON_ERROR_CHOICES = ("warn", "raise")

# one dispatcher (local store + logger sinks) per trainer, shared by all callbacks of that trainer
_DISPATCHERS: weakref.WeakKeyDictionary[Trainer, SinkDispatcher] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def misconfigured() -> Iterator[None]:
    """Turn the ``ValueError`` of an argument check (:mod:`lightning_xai.checks`, a core's constructor) into the
    ``MisconfigurationException`` Lightning users expect from a callback's ``__init__``, with the same message."""
    try:
        yield
    except ValueError as exc:
        raise MisconfigurationException(str(exc)) from exc


def check_int(name: str, value: Any, low: int) -> int:
    """:func:`lightning_xai.checks.check_int`, raising ``MisconfigurationException``."""
    with misconfigured():
        return checks.check_int(name, value, low)


def check_interval(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> float:
    """:func:`lightning_xai.checks.check_interval`, raising ``MisconfigurationException``."""
    with misconfigured():
        return checks.check_interval(name, value, low, high, low_open, high_open)


def log_scalar(trainer: Trainer, pl_module: LightningModule, key: str, value: float) -> None:
    """``pl_module.log`` an epoch-level explanation value (monitorable, e.g. by ``EarlyStopping``).

    Every rank holds the same value (the sample and the results are gathered), so the mean over ranks that
    ``sync_dist`` takes under DDP changes nothing; it is asked for there so Lightning has nothing to warn about.
    """
    pl_module.log(key, float(value), on_step=False, on_epoch=True, sync_dist=trainer.world_size > 1)


def dispatcher_for(trainer: Trainer) -> SinkDispatcher:
    """The trainer's shared :class:`SinkDispatcher` (created on first use; call on rank 0 only)."""
    disp = _DISPATCHERS.get(trainer)
    if disp is None:
        disp = _DISPATCHERS[trainer] = SinkDispatcher(trainer)
    return disp


@dataclass
class ExplainResult:
    """What :meth:`XAICallback.explain` returns for one explained epoch.

    Attributes:
        payload: JSON-serialisable content of the record (each method's typed result documents its fields).
        scalars: logged with ``pl_module.log`` as ``xai/<method>/<key>`` (monitorable).
        tables, charts, media, text: sent to every logger and kept in the local store.
        name: the record's name (``"epoch"`` for the per-epoch explanation).
        extras: in-memory results for listeners such as
            :class:`~lightning_xai.callbacks.ConceptDriftMonitor` (e.g. CAV vectors too large for the
            record); never written or logged.
    """

    payload: dict[str, Any]
    scalars: dict[str, float] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    media: list[Media] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)
    name: str = "epoch"
    extras: dict[str, Any] = field(default_factory=dict)


def result_listeners(trainer: Trainer) -> list[Any]:
    """The trainer's callbacks that observe explanation results (each once, in callback order).

    A listener has ``on_xai_result(trainer, pl_module, source, record, result)``; it is called on every
    rank, right after ``source`` logged its scalars, with the same record and result on every rank.
    """
    seen: set[int] = set()
    out = []
    for cb in getattr(trainer, "callbacks", []):
        if callable(getattr(cb, "on_xai_result", None)) and id(cb) not in seen:
            seen.add(id(cb))
            out.append(cb)
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the device or host ran out of memory."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@contextlib.contextmanager
def young_collections_only() -> Iterator[None]:
    """Run explanation work without automatic garbage collection, then collect the youngest generation.

    Explaining allocates many short-lived Python objects (rules, tables, figure parts). Automatic collections
    that run while they are alive move them to older generations, and on CPython 3.11 enough such moves start
    a full collection of the whole process: 0.3 to 0.45 s with torch and Lightning loaded (measured here), once
    every few explained epochs. Paused, the collector runs once afterwards, on the young objects only, which
    also frees any reference cycle the explanation left. A collector the user disabled stays disabled.

    Example:
        >>> import gc
        >>> with young_collections_only():
        ...     gc.isenabled()
        False
        >>> gc.isenabled()
        True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(0)


def _check_finite(sample: ValidationSample, epoch: int) -> None:
    """Explaining NaN or infinite activations gives numbers without meaning: say where they are instead."""
    bad = []
    for name, value in sample.tensors().items():
        if value.is_floating_point() and value.numel():
            lo, hi = torch.aminmax(value)  # both propagate NaN: one reduction, no mask, when all is finite
            if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
                continue
            n = (
                int((~torch.isfinite(value)).any(dim=tuple(range(1, value.dim()))).sum())
                if value.dim() > 1
                else int((~torch.isfinite(value)).sum())
            )
            if n:
                bad.append(f"{name} ({n} of {value.shape[0]} samples)")
    if bad:
        raise FloatingPointError(
            f"the validation sample of epoch {epoch} holds NaN or infinite values in {', '.join(bad)}; the model's "
            "activations are not finite (diverged training or bad inputs?), so this epoch is not explained."
        )


class XAICallback(Callback):
    r"""Base class of the explainer callbacks.

    Each explained epoch (every ``every_n_epochs``; never during the sanity check) it:

    1. keeps a bounded, seeded sample of the validation batches (head inputs, logits, labels and the
       requested layers' activations) through the model's shared :class:`ActivationCapture`: no extra
       forward pass;
    2. gathers the sample from all ranks (every rank takes part in the collectives, every rank gets
       the whole sample);
    3. runs :meth:`explain` inside :func:`~lightning_xai.capture.explanation_mode`, so model modes and
       ``requires_grad`` are restored and ``.grad`` is never touched;
    4. logs ``xai/<method>/time_s`` and the result's scalars with ``pl_module.log`` (every rank logs the
       same values, so ``EarlyStopping`` works under DDP), and on rank 0 writes the record to
       ``<run dir>/xai/records.jsonl`` and to every logger of the trainer.

    Under DDP the ranks agree after each explained epoch on whether any of them failed
    (:func:`agree_on_failure`), so a failure on one rank is handled alike on every rank (error record on
    rank 0, same back-off everywhere) instead of leaving the others waiting in a collective. Once every
    callback that wanted the epoch's sample has run, the sample is freed.

    Args:
        every_n_epochs: explain when ``(epoch + 1) % every_n_epochs == 0``. Default: 1.
        on: ``"validation"`` (at the end of each validation epoch, also in ``trainer.validate``) or
            ``"train_epoch_end"`` (after the epoch's validation, in ``on_train_epoch_end``).
            Default: ``"validation"``.
        max_samples: validation samples kept per explained epoch (across ranks). Default: 512.
        on_error: ``"warn"`` (log an error record, warn once, keep training) or ``"raise"``.
            Default: ``"warn"``.
        max_failures: with ``on_error="warn"``, disable the callback for the rest of the run after this many
            consecutive failed epochs (a success resets the count; a resumed run tries again). ``None``:
            never. Default: 3.
        layers: extra layers (dotted names) whose activations are sampled. Default: none.
        head: name of the module whose output is the logits (any module: a pooled 1x1 convolution, a module
            returning a dict...); default: the last ``nn.Linear``.
        batch_to_input: ``batch -> (inputs, labels or None)`` for batches that are not a tensor, an
            ``(x, y, ...)`` sequence or a dict with an ``"image"``/``"input"``/``"x"`` key.
        seed: seed of the validation sample and of any randomness of the method. Default: 0.
        dataloader_idx: which validation dataloader the sample comes from, when the validation loop has
            several (their samples are never mixed); records of another than the first carry it. Default: 0.
        log_scalars: which scalars go to ``pl_module.log`` (and so to the loggers and ``EarlyStopping``):
            ``"summary"`` (the method's keys that do not grow with the classes, concepts or targets, and
            ``time_s``), ``"all"``, ``"none"``, or a list of key patterns after ``xai/<method>/`` such as
            ``["fidelity", "importance/*"]``. Tables, charts and media are logged whatever the choice.
            Default: ``"summary"``.
        task: ``"auto"`` (multi-hot labels ``[N, classes]`` mark a multi-label model), ``"multiclass"`` or
            ``"multilabel"``. A callback that explains one class per image steps aside for a multi-label model
            (see :mod:`lightning_xai.callbacks.model_checks`). Default: ``"auto"``.

    Raises:
        MisconfigurationException: an argument is out of range; the message names the valid choices.
    """

    method: ClassVar[str] = "xai"
    #: whether the method needs the input images in its validation sample
    needs_inputs: ClassVar[bool] = False
    #: whether the method reads the validation sample at all; without it (DEPICT, DiffExplainer generate their
    #: own images) nothing is collected and :meth:`explain` gets ``sample=None``
    needs_sample: ClassVar[bool] = True
    #: whether the method explains multi-label models (else it steps aside for them)
    explains_multilabel: ClassVar[bool] = False

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        on: Literal["validation", "train_epoch_end"] = "validation",
        max_samples: int = 512,
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        layers: Sequence[str] = (),
        head: str | None = None,
        batch_to_input: Callable[[Any], tuple[Tensor, Tensor | None]] | None = None,
        seed: int = 0,
        dataloader_idx: int = 0,
        log_scalars: str | Sequence[str] = "summary",
        task: Literal["auto", "multiclass", "multilabel"] = "auto",
    ) -> None:
        super().__init__()
        with misconfigured():
            self.log_scalars = check_scalar_set(log_scalars)
            self.task = checks.check_choice("task", task, TASKS)
            checks.check_int("every_n_epochs", every_n_epochs, 1)
            checks.check_int("dataloader_idx", dataloader_idx, 0)
            checks.check_choice("on", on, _ON_CHOICES)
            checks.check_int("max_samples", max_samples, 2)
            checks.check_choice("on_error", on_error, _ON_ERROR_CHOICES)
            if max_failures is not None:
                checks.check_int("max_failures", max_failures, 1)
        if isinstance(layers, str):
            layers = [layers]
        if not all(isinstance(n, str) and n for n in layers):
            raise MisconfigurationException(
                f"layers must be a list of dotted layer names, but got {layers!r}."
            )
        if batch_to_input is not None and not callable(batch_to_input):
            raise MisconfigurationException(
                f"batch_to_input must be a callable batch -> (inputs, labels), but got {type(batch_to_input).__name__}."
            )
        self.every_n_epochs = every_n_epochs
        self.on = on
        self.max_samples = max_samples
        self.on_error = on_error
        self.max_failures = max_failures
        self.consecutive_failures = 0
        self.disabled = False
        self.layers = tuple(dict.fromkeys(layers))
        self._given_layers = (
            self.layers
        )  # the state key's: layers found by default_layers() must not change it
        self._layers_error: Exception | None = None
        self.head = head
        self.batch_to_input = batch_to_input or default_batch_to_input
        self.seed = int(seed)
        self.dataloader_idx = dataloader_idx
        self.explained_epochs: list[int] = []
        self._capture: ActivationCapture | None = None
        self._model_ref: weakref.ref[torch.nn.Module] | None = None
        self._armed = False
        self._validated_epoch: tuple[int, int] | None = None
        self._warned_error = False
        self._warnings = WarningCache()
        self._keys_seen: set[str] = set()
        self._warned_skip = False
        self._collect_error: Exception | None = None
        self._task_seen = False
        self._train_batch_read = False
        #: the shape of one model input, read off the first validation batch (``None`` before it)
        self.input_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ identity and state
    def _state_key_fields(self) -> dict[str, Any]:
        """Configuration that tells two instances of this class apart in a checkpoint."""
        fields = {
            "every_n_epochs": self.every_n_epochs,
            "on": self.on,
            "layers": list(self._given_layers),
            "head": self.head,
            "max_samples": self.max_samples,
            "seed": self.seed,
        }
        if self.dataloader_idx:  # only then: the keys of checkpoints written before the argument stay valid
            fields["dataloader_idx"] = self.dataloader_idx
        return fields

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._state_key_fields())

    def explainer_state(self) -> dict[str, Any]:
        """Method state to checkpoint (override in subclasses); must be picklable."""
        return {}

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`explainer_state` returned (override in subclasses)."""

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {"explained_epochs": list(self.explained_epochs), "explainer": self.explainer_state()}
        if self.layers != self._given_layers:
            state["default_layers"] = list(self.layers)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.explained_epochs = list(state_dict.get("explained_epochs", []))
        self.load_explainer_state(state_dict.get("explainer", {}))
        found = state_dict.get("default_layers")
        if found and not self._given_layers:  # a resumed run reads the layers its first run found
            self.layers = tuple(found)
            model = self._model_ref() if self._model_ref is not None else None
            if model is not None and self._capture is not None:
                self._acquire(model)

    # ------------------------------------------------------------------ the method
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> Result | ExplainResult:
        """Explain the model on this epoch's gathered validation sample (identical on every rank).

        Returns the method's typed :class:`~lightning_xai.results.Result`: its payload is the record, its
        :meth:`~lightning_xai.results.Result.logged` output goes to the loggers.
        """
        raise NotImplementedError

    def default_layers(self, pl_module: LightningModule, example: Tensor) -> list[str]:
        """Layers to sample when the user named none (override; default: none).

        Called once, on the first explained validation batch before it runs, with one of its inputs (so an
        override may run one probe forward pass). The layers found are kept in the callback's state, so a
        resumed run samples the same ones. An error is raised at the end of that epoch, handled by
        ``on_error``.
        """
        return []

    def class_names_for(
        self, trainer: Trainer, pl_module: LightningModule, n_classes: int
    ) -> list[str] | None:
        """The names of the model's ``n_classes`` classes, or ``None`` where nothing names them all.

        Looked up in order: the callback's ``class_names`` argument, ``pl_module.classes``,
        ``pl_module.hparams["classes"]`` and the datamodule's ``classes``; the first list of ``n_classes``
        strings wins.
        """
        hparams = getattr(pl_module, "hparams", None)
        for names in (
            getattr(self, "class_names", None),
            getattr(pl_module, "classes", None),
            hparams.get("classes") if isinstance(hparams, Mapping) else None,
            getattr(getattr(trainer, "datamodule", None), "classes", None),
        ):
            if (
                isinstance(names, (list, tuple))
                and len(names) == n_classes
                and all(isinstance(n, str) for n in names)
            ):
                return list(names)
        return None

    def _finds_layers(self) -> bool:
        return not self.layers and type(self).default_layers is not XAICallback.default_layers

    def should_explain(self, trainer: Trainer) -> bool:
        """Whether the current epoch is explained (never during the sanity check or under ``fast_dev_run``)."""
        if trainer.sanity_checking or self.disabled or getattr(trainer, "fast_dev_run", False):
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _first_validation_of_epoch(self, trainer: Trainer) -> bool:
        """In ``fit``, only an epoch's first validation run is explained: with ``val_check_interval < 1`` there
        are several, and one explanation per epoch keeps every record and drift series one per epoch."""
        if trainer.state.fn != "fit":
            return True
        key = (id(trainer), trainer.current_epoch)
        if self._validated_epoch == key:
            return False
        self._validated_epoch = key
        return True

    def wants_inputs(self, trainer: Trainer) -> bool:
        """Whether this explained epoch needs the input images in its sample (only asked when
        ``needs_inputs``). Override for methods that use them on some epochs only."""
        return True

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._model_ref is not None and self._model_ref() is pl_module:
            return
        self._release()
        self._model_ref = weakref.ref(pl_module)
        try:
            check_task(self, self.task == "multilabel")
            if self.needs_sample:
                self._acquire(pl_module)
            self.prepare(trainer, pl_module, stage)
        except Exception as exc:  # noqa: BLE001 - on_error="warn": a model this callback cannot explain trains on
            self._release()
            step_aside(self, trainer, exc)

    def _check_labels(self, trainer: Trainer, labels: Tensor | None) -> bool:
        """Once: whether the first batch's labels let this callback go on (multi-hot labels of a multi-label
        model make a single-label method step aside)."""
        if self._task_seen or self.task != "auto":
            return True
        self._task_seen = True
        try:
            check_task(self, looks_multilabel(labels))
        except MultiLabelError as exc:
            self._armed = False
            self._release()
            step_aside(self, trainer, exc)
            return False
        return True

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the first training batch only: every later step returns here at once
        if self._train_batch_read or self._task_seen or self.disabled or self.task != "auto":
            return
        self._train_batch_read = True
        try:
            labels = self.batch_to_input(batch)[1]
        except Exception:  # noqa: BLE001 - an unreadable batch is told at validation, where it matters
            return
        self._check_labels(trainer, labels)

    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the model and the arguments that depend on it, once per model at ``setup`` (override; default:
        nothing). An exception here disables the callback for the run under ``on_error="warn"`` (with one
        warning and an ``error`` record) and stops ``fit`` under ``"raise"``."""

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        note_fit_start(trainer, pl_module, [cb for cb in trainer.callbacks if isinstance(cb, XAICallback)])

    def _acquire(self, pl_module: torch.nn.Module) -> None:
        self._capture = ActivationCapture.acquire(
            pl_module,
            owner=self,
            layers=self.layers,
            max_samples=self.max_samples,
            head=self.head,
            needs_inputs=self.needs_inputs,
            seed=self.seed,
        )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._release()
        message = unmatched_message(
            type(self).__name__, self.log_scalars, self._keys_seen, f"xai/{self.method}/"
        )
        if message:
            rank_zero_warn(message)
        self._keys_seen = set()  # said once per run
        disp = _DISPATCHERS.get(trainer)
        if disp is not None and trainer.is_global_zero:
            disp.finish_epoch()  # the last epoch's records are complete (idempotent across callbacks)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        model = self._model_ref() if self._model_ref is not None else None
        if model is not None:
            ActivationCapture.release(model, owner=self)
        self._capture = None
        self._model_ref = None
        self._armed = False

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        cap = self._capture
        if cap is None:
            self._armed = (
                not self.needs_sample
                and self._model_ref is not None
                and self.should_explain(trainer)
                and self._first_validation_of_epoch(trainer)
            )
            return
        key = (
            id(trainer),
            trainer.state.stage,
            trainer.current_epoch,
            trainer.global_step,
            trainer.sanity_checking,
        )
        cap.begin_epoch(key, rank=trainer.global_rank, world_size=trainer.world_size)
        self._armed = self.should_explain(trainer) and self._first_validation_of_epoch(trainer)
        if self._armed:
            cap.arm(
                self,
                inputs=self.needs_inputs and self.wants_inputs(trainer),
                dataloader_idx=self.dataloader_idx,
            )

    @override
    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # default layers are found on the first explained batch, before it runs, so the capture keeps their
        # activations from that batch on (one probe forward of one input, once per run)
        if (
            not self._armed
            or self._capture is None
            or batch_idx != 0
            or dataloader_idx != self.dataloader_idx
            or not self._finds_layers()
        ):
            return
        try:
            inputs, _ = self.batch_to_input(batch)
            found = tuple(dict.fromkeys(self.default_layers(pl_module, inputs[:1])))
        except Exception as exc:  # noqa: BLE001 - raised at the end of the epoch, according to on_error
            self._layers_error = exc
            return
        self._layers_error = None
        if found:
            self.layers = found
            self._acquire(pl_module)

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.input_shape is None:  # the model's inputs, for what must fit them (generated images)
            with contextlib.suppress(Exception):
                self.input_shape = tuple(int(s) for s in self.batch_to_input(batch)[0].shape[1:])
        if not self._armed or self._capture is None or self._collect_error is not None:
            return
        try:
            inputs, labels = self.batch_to_input(batch)
            if not self._check_labels(trainer, labels):
                return
            self._capture.collect(inputs, labels, (dataloader_idx, batch_idx), dataloader_idx)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            # reported with the epoch's explanation (error record, warning, back-off): validation goes on
            self._collect_error = exc

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._capture is not None:
            self._capture.disarm()
        if self.on == "validation" and self._armed:
            self._run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.on != "train_epoch_end" or not self.should_explain(trainer):
            return
        if not self._armed:  # no validation ran this epoch, so there is no fresh sample to explain
            if not self._warned_skip:
                self._warned_skip = True
                rank_zero_warn(
                    f"{type(self).__name__} skips the epochs in which no validation ran (from epoch "
                    f"{trainer.current_epoch} on). With on='train_epoch_end', choose every_n_epochs as a multiple of the "
                    "Trainer's check_val_every_n_epoch."
                )
            return
        self._run(trainer, pl_module)

    # ------------------------------------------------------------------ running
    def _run(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with young_collections_only():
            self._run_unpaused(trainer, pl_module)

    def _run_unpaused(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._armed = False
        epoch, step = trainer.current_epoch, trainer.global_step
        start = time.perf_counter()
        error: Exception | None = None
        try:
            if self._layers_error is not None:
                raise self._layers_error
            if self._collect_error is not None:
                exc, self._collect_error = self._collect_error, None
                raise exc
            sample = self._gathered_sample(trainer, pl_module) if self.needs_sample else None
            loaders = len(getattr(trainer, "num_val_batches", None) or [])
            if self.needs_sample and loaders and self.dataloader_idx >= loaders:
                raise ValueError(
                    f"dataloader_idx={self.dataloader_idx} does not exist: this validation loop has {loaders} "
                    f"dataloader{'s' if loaders > 1 else ''}; choose one of {list(range(loaders))}."
                )
            if self.needs_sample and (sample is None or len(sample) < 2):
                raise RuntimeError(
                    f"{type(self).__name__} collected {0 if sample is None else len(sample)} validation samples "
                    f"at epoch {epoch}; it needs at least 2. Is there a validation loop (val_dataloader, "
                    "limit_val_batches > 0)?"
                )
            if sample is not None:
                _check_finite(sample, epoch)
                if sample.logits.shape[1] > len(sample):
                    self._warnings.warn(
                        f"{type(self).__name__} explains from {len(sample)} validation samples, fewer "
                        f"than the model's {sample.logits.shape[1]} classes, so some classes have no example; raise "
                        "limit_val_batches (or max_samples)."
                    )
            with explanation_mode(pl_module):
                result = self.explain(trainer, pl_module, sample)
            if isinstance(result, Result):
                logged = result.logged(epoch)
                record = result.record(epoch, step)
            else:  # an ExplainResult of a callback not yet moved to a typed result
                logged = Logged(result.scalars, result.tables, result.charts, result.media, result.text)
                record = Record(self.method, result.name, epoch, step, 0.0, result.payload)
            if self.needs_sample:
                record.dataloader_idx = self.dataloader_idx
            elapsed = record.time_s = time.perf_counter() - start
            scalars = self._chosen_scalars(result, {"time_s": elapsed, **logged.scalars})
        except Exception as exc:  # noqa: BLE001 - reported, then raised or survived by choice
            error = exc
            # the traceback's frames hold the failed attempt's tensors: drop them (the text survives), so an
            # out-of-memory epoch's memory is free before the error is handled and the CUDA cache emptied
            traceback.clear_frames(exc.__traceback__)
            sample = result = logged = None  # type: ignore[assignment]
        if self._capture is not None:
            self._capture.done(self)  # the sample is freed once every callback that wanted it has run
        # every rank takes the same branch, so failure counts and back-off stay in step and no rank waits alone
        # in the next explained epoch's collectives (which a failure on one rank only would otherwise cause)
        agreed = agree_on_failure(trainer, error)
        if agreed is not None:
            self._handle_error(trainer, agreed, epoch, step)
            return
        try:  # only now: a rank must not log an epoch that another rank failed (their metrics would differ)
            for key, value in scalars.items():
                log_scalar(trainer, pl_module, f"xai/{self.method}/{key}", value)
        except Exception as exc:  # noqa: BLE001 - the same values on every rank, so every rank gets here alike
            self._handle_error(trainer, exc, epoch, step)
            return
        self.consecutive_failures = 0
        self.explained_epochs.append(epoch)
        if trainer.is_global_zero:
            try:
                explanation = Explanation(record, logged.tables, logged.charts, logged.media, logged.text)
                dispatcher_for(trainer).dispatch(explanation, step=step)
            except Exception as exc:  # noqa: BLE001 - the store of rank 0 alone: reported, not counted for back-off
                self._handle_error(trainer, exc, epoch, step, count=False)
        # after the record is out, so a listener's own records follow it; a listener handles its own errors
        for listener in result_listeners(trainer):
            listener.on_xai_result(trainer, pl_module, self, record, result)

    def _chosen_scalars(self, result: Any, scalars: dict[str, float]) -> dict[str, float]:
        """The scalars ``log_scalars`` asks for (the keys are remembered: a pattern that matched none of the
        run's keys warns at teardown, naming them)."""
        self._keys_seen.update(scalars)
        summary = type(result).summary_scalars if isinstance(result, Result) else ("*",)
        return select_scalars(scalars, self.log_scalars, summary)

    def _handle_error(
        self, trainer: Trainer, exc: BaseException, epoch: int, step: int, count: bool = True
    ) -> None:
        hint = None
        if is_out_of_memory(exc):
            hint = (
                "out of memory while explaining: lower max_samples or the method's batch size / image counts, or "
                "explain less often (every_n_epochs)"
            )
            gc.collect()  # the failed attempt's tensors are unreferenced now: hand their memory back
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if self.on_error == "raise":
            raise RuntimeError(
                f"{type(self).__name__} ({self.method}) failed at epoch {epoch}: {exc}"
                + (f" ({hint})" if hint else "")
            ) from exc
        if trainer.is_global_zero:
            dispatcher_for(trainer).write_error(self.method, epoch, step, exc, hint=hint)
        self.consecutive_failures += int(count)
        if count and self.max_failures is not None and self.consecutive_failures >= self.max_failures:
            self.disabled = True  # backs off: a broken explainer stops costing time every epoch
            rank_zero_warn(
                f"{type(self).__name__} ({self.method}) failed {self.consecutive_failures} explained epochs in a row "
                f"(last at epoch {epoch}: {type(exc).__name__}: {exc}) and is disabled for the rest of this run; "
                "training goes on. Raise max_failures (or pass None) to keep trying."
            )
            return
        if not self._warned_error:
            self._warned_error = True
            rank_zero_warn(
                f"{type(self).__name__} ({self.method}) failed at epoch {epoch} and training goes on: "
                f"{type(exc).__name__}: {str(exc).rstrip('.')}. An error record was written to xai/records.jsonl; "
                "pass on_error='raise' to stop instead. Further failures of this callback are recorded silently."
            )

    def _gathered_sample(self, trainer: Trainer, pl_module: LightningModule) -> ValidationSample | None:
        """This epoch's validation sample from all ranks, bottom-k over all of them (same on every rank)."""
        assert self._capture is not None
        local = self._capture.sample(self.max_samples, self.dataloader_idx)
        if trainer.world_size <= 1:
            return local
        fields = local.tensors() if local is not None else {}
        count = torch.tensor([0 if local is None else len(local)], device=pl_module.device)
        counts = pl_module.all_gather(count).flatten().tolist()
        if min(counts) == 0:
            raise RuntimeError(f"Some ranks collected no validation samples (per-rank counts {counts}).")
        gathered: dict[str, Tensor] = {}
        for name in sorted(fields):
            value = fields[name]
            padded = value.new_zeros((self.max_samples, *value.shape[1:]))
            padded[: value.shape[0]] = value
            all_ranks = pl_module.all_gather(padded.to(pl_module.device)).cpu()
            gathered[name] = torch.cat([all_ranks[r, : counts[r]] for r in range(len(counts))])
        keep = torch.topk(
            _sample_keys(gathered["ids"], self._capture.seed),
            min(self.max_samples, len(gathered["ids"])),
            largest=False,
        )
        return ValidationSample.from_tensors(
            {k: v[keep.indices] for k, v in gathered.items()}, computed_in=local.computed_in
        )
