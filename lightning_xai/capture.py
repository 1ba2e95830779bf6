"""Shared activation taps: the bounded, seeded validation sample every callback reads.

Everything here is plain PyTorch (no Lightning import), so explainers can use it in a notebook.

The pieces:

Layer lookup lives in :mod:`lightning_xai.layers`, running a model for an explanation in
:mod:`lightning_xai.running`; both are re-exported here.

* :func:`resolve_layer` finds a sub-module by dotted name (``"layer4.1.conv2"``, ``"fc"``) and,
  for a wrong name, raises an error listing the closest valid names.
* :func:`find_head` finds the classifier head: the ``nn.Linear`` named by the user, or the last
  ``nn.Linear`` on the forward path. Its input is the "features", its output the logits.
* :class:`ActivationCapture` is the shared tap of one model: one forward hook per layer however many
  callbacks ask for that layer, and one bounded, seeded reservoir sample of validation data
  (inputs, labels, logits, features, requested layer activations). Obtain it with
  :meth:`ActivationCapture.acquire` and give it back with :meth:`ActivationCapture.release`.
* :func:`forward_from_layer` re-runs a model with a given layer's activation substituted
  (hook replacement), so gradients with respect to that activation can be taken.
* :func:`explanation_mode` is the context for explanation work: it leaves ``no_grad`` and
  ``inference_mode``, switches the model to eval and restores every module's mode and every
  parameter's ``requires_grad`` exactly afterwards. It never touches ``.grad``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lightning_xai.layers import (
    HEAD_FEATURES,
    HEAD_LOGITS,
    HeadNotFoundError,
    LayerNotFoundError,
    _linear_names,
    find_head,
    first_tensor,
    resolve_layer,
)
from lightning_xai.running import (
    autocast_context,
    check_autocast_device,
    eager,
    explanation_mode,
    folded_batchnorm,
    forward_from_layer,
    run_model,
)

__all__ = [
    "HEAD_FEATURES",
    "HEAD_LOGITS",
    "ActivationCapture",
    "HeadNotFoundError",
    "LayerNotFoundError",
    "ValidationSample",
    "autocast_context",
    "check_autocast_device",
    "default_batch_to_input",
    "explanation_mode",
    "find_head",
    "first_tensor",
    "folded_batchnorm",
    "forward_from_layer",
    "resolve_layer",
    "run_model",
]

# ------------------------------------------------------------------------------------------- batches


BatchToInput = Callable[[Any], "tuple[Tensor, Tensor | None]"]

_INPUT_KEYS = ("image", "images", "input", "inputs", "x", "pixel_values", "img")
_LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def default_batch_to_input(batch: Any) -> tuple[Tensor, Tensor | None]:
    """Read ``(inputs, labels)`` from a batch: a tensor, an ``(x, y, ...)`` sequence or a dict.

    Raises:
        TypeError: the batch has another form; the message says how to pass ``batch_to_input``.
    """
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], labels
    if isinstance(batch, dict):
        x = next((batch[k] for k in _INPUT_KEYS if isinstance(batch.get(k), Tensor)), None)
        if x is not None:
            y = next((batch[k] for k in _LABEL_KEYS if isinstance(batch.get(k), Tensor)), None)
            return x, y
    desc = type(batch).__name__
    if isinstance(batch, dict):
        desc += f" with keys {sorted(map(str, batch))}"
    raise TypeError(
        f"Cannot read the model inputs from a batch of type {desc}. Expected a Tensor, a sequence "
        f"(inputs, labels, ...), or a dict with one of the keys {list(_INPUT_KEYS)} (labels under one "
        f"of {list(_LABEL_KEYS)}). Pass batch_to_input=lambda batch: (inputs, labels) to the callback "
        "(labels may be None)."
    )


# ------------------------------------------------------------------------------------------ sampling


def _sample_keys(ids: Tensor, seed: int) -> Tensor:
    """A uniform pseudo-random key in [0, 1) per sample id: a splitmix64-style hash of (seed, id).

    Keys depend only on the id and the seed, so the reservoir keeps the *same* validation samples every
    epoch (a fixed probe set for drift) without storing anything between epochs.
    """
    mask = (1 << 63) - 1
    z = (ids.to(torch.int64) + (seed * 0x9E3779B9 + 0x632BE59B)) & mask
    z = ((z ^ (z >> 31)) * 0x5851F42D4C957F2D) & mask
    z = ((z ^ (z >> 29)) * 0x14057B7EF767814F) & mask
    z = z ^ (z >> 32)
    return (z & ((1 << 24) - 1)).to(torch.float64) / float(1 << 24) + ids.to(torch.float64) * 1e-18


@dataclass
class ValidationSample:
    """A bounded sample of one validation epoch, as the shared capture kept it (CPU tensors).

    Attributes:
        ids: sample ids (stable across epochs for an unshuffled validation loader), sorted.
        features: head inputs, ``[N, D]``.
        logits: head outputs, ``[N, C]``.
        labels: labels if the batches carried them, else ``None``.
        inputs: model inputs if a subscriber asked for them, else ``None``.
        layers: activations of the requested layers, ``{name: [N, ...]}``.
        computed_in: the dtype the model computed its logits in: ``torch.float32``, or ``torch.bfloat16`` /
            ``torch.float16`` under mixed precision. The tensors above are float32 (or wider) whatever it was,
            so explanations compute in float32; checks that recompute the model's values allow for it.
    """

    ids: Tensor
    features: Tensor
    logits: Tensor
    labels: Tensor | None = None
    inputs: Tensor | None = None
    layers: dict[str, Tensor] = field(default_factory=dict)
    computed_in: torch.dtype = torch.float32

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """Flat view ``{"ids", "features", "logits", "labels"?, "inputs"?, "layer:<name>"...}``."""
        out = {"ids": self.ids, "features": self.features, "logits": self.logits}
        if self.labels is not None:
            out["labels"] = self.labels
        if self.inputs is not None:
            out["inputs"] = self.inputs
        out.update({f"layer:{k}": v for k, v in self.layers.items()})
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, Tensor], computed_in: torch.dtype | None = None
    ) -> ValidationSample:
        """A sample from its flat view (:meth:`tensors`), sorted by id; reduced-precision floating tensors
        (kept so in the reservoir, at half the memory) become float32. ``computed_in``: default, the logits'
        dtype."""
        order = torch.argsort(tensors["ids"])
        computed_in = tensors["logits"].dtype if computed_in is None else computed_in
        t = {k: _at_least_float32(v[order]) for k, v in tensors.items()}
        return cls(
            ids=t["ids"],
            features=t["features"],
            logits=t["logits"],
            labels=t.get("labels"),
            inputs=t.get("inputs"),
            layers={k[len("layer:") :]: v for k, v in t.items() if k.startswith("layer:")},
            computed_in=computed_in,
        )


def is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its sub-modules is compiled with ``torch.compile`` (a LightningModule given to
    ``fit`` compiled keeps its compiled ``forward`` and a ``_compiler_ctx``)."""
    if isinstance(getattr(model, "_compiler_ctx", None), dict):
        return True
    return any(type(m).__name__ == "OptimizedModule" for m in model.modules())


def _not_traced(fn: Any) -> Any:
    """``fn`` left out of ``torch.compile``'s graphs (a graph break where it runs); as it is without dynamo."""
    dynamo = getattr(torch, "_dynamo", None)
    return dynamo.disable(fn) if dynamo is not None and hasattr(dynamo, "disable") else fn


def _check_logits(head: str | None, logits: Tensor) -> None:
    """The head's output must be logits ``[N, C]`` (``[N, C, 1, ...]`` from a pooled convolution is flattened)."""
    if logits.dim() >= 2 and all(s == 1 for s in logits.shape[2:]):
        return
    raise HeadNotFoundError(
        f"The head {head!r} outputs shape {list(logits.shape)}, not logits [N, classes]. Pass head='<name>' naming "
        "the module whose output is the logits (for a 1x1-convolution head, the module that also pools it)."
    )


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


class _Reservoir:
    """Keeps the ``capacity`` samples with the smallest hash keys seen so far (bottom-k sampling).

    Offered rows are buffered as chunks and merged only when the buffer holds twice the capacity, or when
    the sample is read: merging at every batch would copy the whole reservoir once per batch (quadratic in
    the number of batches, and the reservoir may hold images). The result is the same set in the same
    order: insertion order while at most ``capacity`` rows were offered, else sorted by key.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self.seed = seed
        self._chunks: list[tuple[Tensor, dict[str, Tensor]]] = []
        self._rows = 0
        self._sorted = False  # whether a merge has already cut the rows to the bottom ``capacity``
        self._bound = (
            math.inf
        )  # no key at or above this can enter any more (largest key kept by the last cut)

    def offer(self, ids: Tensor, fetch: Callable[[Tensor], dict[str, Tensor]]) -> None:
        """Offer a batch; ``fetch(rows)`` returns the batch's fields at ``rows`` as new tensors (indexed, not views)."""
        keys = _sample_keys(ids.cpu(), self.seed)
        if self._bound < math.inf:
            # only rows that beat the worst key kept so far can enter: fetch (and copy to CPU) just those
            rows = torch.nonzero(keys < self._bound).flatten()
            if rows.numel() == 0:
                return
        else:
            rows = torch.arange(ids.shape[0])
        # ``fetch`` indexes with ``rows``, which makes new tensors: moving them to the CPU needs no second copy
        new = {k: v.detach().to("cpu") for k, v in fetch(rows).items()}
        if self._chunks and set(new) != set(self._chunks[0][1]):
            raise RuntimeError(
                f"Captured fields changed within an epoch: {sorted(self._chunks[0][1])} -> {sorted(new)}"
            )
        self._chunks.append((keys[rows], new))
        self._rows += int(rows.numel())
        if self._rows >= 2 * self.capacity:
            self._merge()

    def _merge(self) -> None:
        if len(self._chunks) <= 1 and (self._rows <= self.capacity or self._sorted):
            return
        keys = torch.cat([k for k, _ in self._chunks])
        data = {f: torch.cat([d[f] for _, d in self._chunks]) for f in self._chunks[0][1]}
        if keys.numel() > self.capacity or self._sorted:
            keep = torch.topk(keys, min(self.capacity, keys.numel()), largest=False).indices
            keys, data = keys[keep], {f: v[keep] for f, v in data.items()}
            self._sorted = True
            if keys.numel() >= self.capacity:
                self._bound = float(keys.max())
        self._chunks, self._rows = [(keys, data)], int(keys.numel())

    @property
    def keys(self) -> Tensor:
        self._merge()
        return self._chunks[0][0] if self._chunks else torch.empty(0, dtype=torch.float64)

    @property
    def data(self) -> dict[str, Tensor]:
        self._merge()
        return self._chunks[0][1] if self._chunks else {}


# ------------------------------------------------------------------------------------------ capture


class _Tap:
    """One forward hook on one module; holds the latest output (and input) while the capture is armed."""

    def __init__(
        self, capture: ActivationCapture, name: str, module: nn.Module, keep_input: bool, attach: bool = True
    ) -> None:
        self.name = name
        self.module = module
        self.keep_input = keep_input
        self.calls = 0
        self.latest_output: Tensor | None = None
        self.latest_input: Tensor | None = None
        capture_ref = weakref.ref(capture)

        # run eagerly inside a compiled model: traced, the hook's Python state (``calls``, whether the capture is
        # armed) would become guards, and every change of it a recompile of the model
        @_not_traced
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            cap = capture_ref()
            if cap is None or not cap.armed:
                return
            self.calls += 1
            self.latest_output = first_tensor(output, f"Layer {name!r}").detach()
            if self.keep_input:
                self.latest_input = first_tensor(args, f"Input of layer {name!r}").detach()

        self._hook = hook
        self.handle: Any = None
        if attach:
            self.attach()

    def attach(self) -> None:
        if self.handle is None:
            self.handle = self.module.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def clear(self) -> None:
        self.latest_output = None
        self.latest_input = None

    def remove(self) -> None:
        self.detach()
        self.clear()


class ActivationCapture:
    """The shared activation tap and validation sample of one model.

    Several callbacks on the same model share one instance (see :meth:`acquire`): each layer gets one
    forward hook and one stored copy, whatever the number of callbacks that asked for it. The sample
    is a bottom-k reservoir over hashed sample ids, so it is uniform, bounded by the largest
    ``max_samples`` asked for, seeded, and the same validation samples are kept every epoch.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> cap = ActivationCapture.acquire(net, owner="me", layers=["1"], max_samples=16)
        >>> cap.begin_epoch(("validate", 0)); cap.arm("me")
        >>> logits = net(torch.randn(10, 3, 2, 2)); cap.collect(torch.randn(10, 3, 2, 2), None, ("b", 0))
        >>> sample = cap.sample(); sample.features.shape, sample.layers["1"].shape
        (torch.Size([10, 8]), torch.Size([10, 8]))
        >>> ActivationCapture.release(net, owner="me")
    """

    _registry: ClassVar[weakref.WeakKeyDictionary[nn.Module, ActivationCapture]] = weakref.WeakKeyDictionary()

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self._model_ref = weakref.ref(model)
        self.seed = seed
        self.head_name: str | None = None
        self._head_tap: _Tap | None = None
        self._taps: dict[str, _Tap] = {}
        # owner -> (layers, max_samples, needs_inputs)
        self._owners: dict[Any, tuple[tuple[str, ...], int, bool]] = {}
        self._wanted: set[Any] = set()
        self._pending: set[Any] = set()  # owners armed this epoch that have not taken the sample yet
        self._inputs_for: set[Any] = set()  # owners armed this epoch that want the input images
        # one sample per validation dataloader an owner asked for: loaders are never mixed in one sample
        self._reservoirs: dict[int, _Reservoir] = {}
        self._loader_of: dict[Any, int] = {}  # owner armed this epoch -> its dataloader index
        self._epoch_key: Any = None
        self._seen_batches: set[Any] = set()
        self._counters: dict[int, int] = {}
        self.rank = 0
        self.world_size = 1
        self.head_checked = False
        # a compiled model keeps no hooks: they would be traced into its graphs (graph breaks, and a recompile
        # whenever one is added); its sampled batches are run again, eagerly, with the hooks on (see collect)
        self.compiled = is_compiled(model)

    # ---- registry
    @classmethod
    def acquire(
        cls,
        model: nn.Module,
        owner: Any,
        layers: Sequence[str] = (),
        max_samples: int = 512,
        head: str | None = None,
        needs_inputs: bool = False,
        seed: int = 0,
    ) -> ActivationCapture:
        """Return the shared capture of ``model`` and register ``owner``'s needs with it.

        Layer names are checked here (errors list close names). Asking again with the same owner
        replaces that owner's needs.
        """
        cap = cls._registry.get(model)
        if cap is None:
            cap = cls(model, seed=seed)
            cls._registry[model] = cap
        head_name, head_module = find_head(model, head)
        if cap.head_name is not None and head is not None and head_name != cap.head_name:
            raise ValueError(
                f"head={head!r} differs from the head {cap.head_name!r} another callback on this model uses."
            )
        if cap._head_tap is None:
            cap.head_name = head_name
            cap._head_tap = _Tap(cap, head_name, head_module, keep_input=True, attach=not cap.compiled)
        for name in layers:
            resolve_layer(model, name)
        cap._owners[owner] = (tuple(layers), int(max_samples), bool(needs_inputs))
        cap._sync_taps()
        return cap

    @classmethod
    def release(cls, model: nn.Module, owner: Any) -> None:
        """Unregister ``owner``; hooks no other owner needs are removed, the last owner removes all."""
        cap = cls._registry.get(model)
        if cap is None:
            return
        cap._owners.pop(owner, None)
        cap._wanted.discard(owner)
        if not cap._owners:
            cap.close()
            cls._registry.pop(model, None)
        else:
            cap._sync_taps()

    @classmethod
    def get(cls, model: nn.Module) -> ActivationCapture | None:
        return cls._registry.get(model)

    def close(self) -> None:
        for tap in self._taps.values():
            tap.remove()
        self._taps.clear()
        if self._head_tap is not None:
            self._head_tap.remove()
            self._head_tap = None
        self._reservoirs.clear()

    def _sync_taps(self) -> None:
        model = self._model_ref()
        if model is None:
            return
        wanted = {name for layers, _, _ in self._owners.values() for name in layers}
        for name in list(self._taps):
            if name not in wanted:
                self._taps.pop(name).remove()
        for name in sorted(wanted - set(self._taps)):
            self._taps[name] = _Tap(
                self, name, resolve_layer(model, name), keep_input=False, attach=not self.compiled
            )

    # ---- properties
    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(sorted(self._taps))

    @property
    def capacity(self) -> int:
        return max((m for _, m, _ in self._owners.values()), default=0)

    @property
    def armed(self) -> bool:
        return bool(self._wanted)

    def hook_count(self) -> int:
        """Number of forward hooks this capture holds (one per layer plus the head)."""
        return len(self._taps) + (self._head_tap is not None)

    # ---- epoch protocol
    def begin_epoch(self, key: Any, rank: int = 0, world_size: int = 1) -> None:
        """Start a new sample for the epoch identified by ``key`` (repeated calls with one key are no-ops)."""
        if key == self._epoch_key:
            return
        self._epoch_key = key
        self._wanted.clear()
        self._pending.clear()
        self._inputs_for.clear()
        self._seen_batches.clear()
        self._counters.clear()
        self._loader_of.clear()
        self.rank, self.world_size = rank, world_size
        self._reservoirs = {}

    def arm(self, owner: Any, inputs: bool | None = None, dataloader_idx: int = 0) -> None:
        """``owner`` wants this epoch's sample of validation dataloader ``dataloader_idx``: hooks start storing
        activations.

        ``inputs``: whether it needs the input images this epoch (default: what it registered). The images
        are the largest part of a sample; an owner that needs them only on some epochs (the logic rules'
        grounding) spares the copies on the others. Call before the epoch's first batch.
        """
        self._wanted.add(owner)
        self._loader_of[owner] = dataloader_idx
        self._reservoirs.setdefault(dataloader_idx, _Reservoir(self.capacity, self.seed))
        registered = self._owners.get(owner, ((), 0, False))[2]
        if registered if inputs is None else inputs:
            self._inputs_for.add(owner)

    def disarm(self) -> None:
        """Stop storing activations (explanation work must not overwrite the sample)."""
        self._pending |= self._wanted
        self._wanted.clear()
        for tap in self._all_taps():
            tap.clear()

    def done(self, owner: Any) -> None:
        """``owner`` is through with this epoch's sample; once every owner armed for it is, its memory is freed
        (rather than held until the next validation epoch)."""
        self._pending.discard(owner)
        if not self._pending and not self._wanted:
            self._reservoirs.clear()

    def _run_eagerly(self, inputs: Tensor | None) -> None:
        """The batch again through the original (uncompiled) modules, with the hooks on for this pass only."""
        model = self._model_ref()
        if inputs is None or model is None:
            raise RuntimeError(
                "A compiled model's validation sample is taken by running its batches again without torch.compile, "
                "which needs the batch's inputs; pass batch_to_input returning (inputs, labels)."
            )
        taps = list(self._all_taps())
        with torch.no_grad(), eager(model):
            for tap in taps:
                tap.attach()
            try:
                run_model(model, inputs)
            finally:
                for tap in taps:
                    tap.detach()

    def _all_taps(self) -> Iterator[_Tap]:
        yield from self._taps.values()
        if self._head_tap is not None:
            yield self._head_tap

    def collect(
        self, inputs: Tensor | None, labels: Tensor | None, batch_key: Any, dataloader_idx: int = 0
    ) -> None:
        """Add the batch that just ran to its dataloader's sample (once per ``batch_key``, however many callers);
        batches of a dataloader no owner asked for are not kept."""
        if not self.armed or batch_key in self._seen_batches:
            return
        self._seen_batches.add(batch_key)
        reservoir = self._reservoirs.get(dataloader_idx)
        if reservoir is None:
            for tap in self._all_taps():
                tap.clear()
            return
        if self.compiled:
            self._run_eagerly(inputs)
        head = self._head_tap
        assert head is not None
        if head.latest_output is None:
            if not self.head_checked:
                raise HeadNotFoundError(
                    f"The head {self.head_name!r} did not run during the forward pass, so it is not the "
                    f"classifier head. Pass head='<name>' naming the module that produces the logits; "
                    f"linear layers: {_linear_names(self._model_ref())}"
                )
            return
        if not self.head_checked:
            _check_logits(self.head_name, head.latest_output)
        self.head_checked = True
        n = head.latest_output.shape[0]
        start = self._counters.get(dataloader_idx, 0)
        ids = torch.arange(start, start + n) * self.world_size + self.rank
        self._counters[dataloader_idx] = start + n
        fields: dict[str, Tensor] = {
            "features": head.latest_input.flatten(1),
            "logits": head.latest_output.flatten(1),
        }
        if labels is not None and labels.shape[:1] == (n,):
            fields["labels"] = labels.detach()
        if self._inputs_for and inputs is not None:
            fields["inputs"] = inputs.detach()
        for name, tap in self._taps.items():
            if tap.latest_output is None:
                raise RuntimeError(
                    f"Layer {name!r} did not run during the forward pass; choose a layer on the forward path."
                )
            fields[f"layer:{name}"] = tap.latest_output
        for f, v in fields.items():
            if v.shape[0] != n:
                raise RuntimeError(f"Captured {f!r} has batch size {v.shape[0]}, the logits have {n}.")
        fields["ids"] = ids

        def fetch(rows: Tensor) -> dict[str, Tensor]:
            return {k: v[rows.to(v.device)] for k, v in fields.items()}

        reservoir.offer(ids, fetch)
        for tap in self._all_taps():
            tap.clear()

    def sample(self, max_samples: int | None = None, dataloader_idx: int = 0) -> ValidationSample | None:
        """This epoch's sample of validation dataloader ``dataloader_idx`` on this process (sorted by id), or
        ``None`` if nothing was collected.

        With ``max_samples`` smaller than the capacity, the samples with the smallest keys are kept,
        which is again a uniform sample, and the same one every epoch.
        """
        res = self._reservoirs.get(dataloader_idx)
        if res is None or not res.data:
            return None
        data, keys = res.data, res.keys
        if max_samples is not None and max_samples < keys.numel():
            keep = torch.topk(keys, max_samples, largest=False).indices
            data = {k: v[keep] for k, v in data.items()}
        return ValidationSample.from_tensors(data)
