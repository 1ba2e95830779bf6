"""``RepresentationDriftCallback``: how far the model's representation moves from epoch to epoch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback
from lightning_xai.capture import ValidationSample
from lightning_xai.drift import minibatch_cka
from lightning_xai.results.representation_drift import RepresentationDriftResult

__all__ = ["RepresentationDriftCallback"]

FEATURES = "features"


class RepresentationDriftCallback(XAICallback):
    r"""Linear CKA of the model's representations against the previous and the first explained epoch.

    The probe set is the shared validation sample: the same ``max_samples`` validation images every
    epoch (hash-seeded, no extra forward pass). Representations are the head input (``"features"``)
    and, optionally, named layers (flattened). Similarity is the unbiased minibatch linear CKA
    (Nguyen et al., 2021), so probe sets far larger than a batch stay cheap.

    Logged (monitorable with ``EarlyStopping``):

    * ``xai/representation_drift/cka_prev/<rep>``: CKA with the previous explained epoch
      (1.0 on the first explained epoch, which is its own reference);
    * ``xai/representation_drift/cka_ref/<rep>``: CKA with the first explained epoch;
    * ``xai/representation_drift/time_s``.

    Each explained epoch writes one record ``{"method": "representation_drift", "name": "epoch"}`` whose payload
    is a :class:`~lightning_xai.results.representation_drift.RepresentationDriftResult`, and a table of this
    epoch's values; ``lightning-xai report`` draws the CKA timeline from the records of all epochs.

    Args:
        layers: extra layers to track by dotted name, e.g. ``["layer4"]``. Default: head input only.
        cka_batch_size: minibatch size of the CKA estimate (>= 4). Default: 256.
        every_n_epochs, max_samples, on, on_error, head, batch_to_input, seed: see :class:`XAICallback`.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning_xai.callbacks import RepresentationDriftCallback
        >>> trainer = Trainer(callbacks=[RepresentationDriftCallback(layers=["features.3"])])  # doctest: +SKIP
    """

    method = "representation_drift"
    explains_multilabel = (
        True  # CKA compares representations: it reads neither labels nor one class per image
    )

    def __init__(
        self,
        layers: Sequence[str] = (),
        *,
        cka_batch_size: int = 256,
        every_n_epochs: int = 1,
        max_samples: int = 512,
        **base: Any,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            max_samples=max_samples,
            layers=layers,
            **base,
        )
        if isinstance(cka_batch_size, bool) or not isinstance(cka_batch_size, int) or cka_batch_size < 4:
            raise MisconfigurationException(
                f"cka_batch_size must be an integer >= 4 (the unbiased HSIC needs 4 samples), but got {cka_batch_size!r}."
            )
        if FEATURES in self.layers:
            raise MisconfigurationException(
                f"layers={list(self.layers)!r}: {FEATURES!r} is reserved for the head input; name a layer "
                "instead."
            )
        self.cka_batch_size = cka_batch_size
        self._reference: dict[str, Any] | None = None
        # CKA compares activations, which no record holds: the two epochs compared with are kept here
        self._previous: dict[str, Any] | None = None

    # ---------------------------------------------------------------- state
    def _state_key_fields(self) -> dict[str, Any]:
        return {**super()._state_key_fields(), "cka_batch_size": self.cka_batch_size}

    def explainer_state(self) -> dict[str, Any]:
        return {"reference": self._reference, "previous": self._previous}

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._reference = state.get("reference")
        self._previous = state.get("previous")

    # ---------------------------------------------------------------- method
    def _snapshot(self, epoch: int, sample: ValidationSample) -> dict[str, Any]:
        reps = {FEATURES: sample.features.flatten(1).float()}
        for name in self.layers:
            reps[name] = sample.layers[name].flatten(1).float()
        return {"epoch": epoch, "ids": sample.ids.clone(), "reps": {k: v.clone() for k, v in reps.items()}}

    def _cka(self, a: dict[str, Any], b: dict[str, Any], rep: str) -> float:
        if a is b:
            return 1.0
        common, ia, ib = _align(a["ids"], b["ids"])
        if common < 4:
            rank_zero_warn(
                f"RepresentationDriftCallback: only {common} probe samples are shared between epochs "
                f"{a['epoch']} and {b['epoch']}; CKA needs 4. Is the validation loader shuffled?"
            )
            return float("nan")
        return minibatch_cka(a["reps"][rep][ia], b["reps"][rep][ib], batch_size=self.cka_batch_size)

    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample
    ) -> RepresentationDriftResult:
        current = self._snapshot(trainer.current_epoch, sample)
        if self._reference is None:
            self._reference = current
        previous = self._previous if self._previous is not None else current
        self._previous = current
        reps = list(current["reps"])
        return RepresentationDriftResult(
            reference_epoch=self._reference["epoch"],
            previous_epoch=previous["epoch"],
            n_samples=len(sample),
            representations={rep: int(current["reps"][rep].shape[1]) for rep in reps},
            cka_prev={rep: self._cka(previous, current, rep) for rep in reps},
            cka_ref={rep: self._cka(self._reference, current, rep) for rep in reps},
        )


def _align(a: Tensor, b: Tensor) -> tuple[int, Tensor, Tensor]:
    """Row indices of the ids that two *sorted* id vectors share, in the same order on both sides."""
    ia = torch.nonzero(torch.isin(a, b)).flatten()
    ib = torch.nonzero(torch.isin(b, a)).flatten()
    return int(ia.numel()), ia, ib
