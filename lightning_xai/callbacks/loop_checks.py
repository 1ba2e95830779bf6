"""What the callbacks say at the start of ``fit`` when the run cannot be explained: ``fast_dev_run``, or no
validation loop. Said once per Trainer, naming every lightning-xai callback it concerns."""

from __future__ import annotations

import weakref
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_xai.runs import LIGHTNING_NAMESPACES

__all__ = ["missing_validation", "note_fit_start"]

_NOTED: weakref.WeakSet[Any] = weakref.WeakSet()


def _user_defines(pl_module: Any, name: str) -> bool:
    """``pl_module``'s class (not Lightning's base class) defines ``name``: in either Lightning namespace."""
    for cls in type(pl_module).__mro__:
        if cls.__module__.split(".")[0] in LIGHTNING_NAMESPACES:
            return False
        if name in cls.__dict__:
            return True
    return False


def missing_validation(trainer: Any, pl_module: Any) -> str | None:
    """Why ``fit`` will run no validation loop, or ``None`` when it will (or cannot be told).

    Example:
        >>> from types import SimpleNamespace
        >>> missing_validation(SimpleNamespace(limit_val_batches=0), object())
        'limit_val_batches=0'
    """
    if getattr(trainer, "limit_val_batches", None) == 0:
        return "limit_val_batches=0"
    if not _user_defines(pl_module, "validation_step"):
        return f"{type(pl_module).__name__} has no validation_step"
    # Lightning's own test of whether a val_dataloader exists (model, datamodule or fit(val_dataloaders=...));
    # private, so read defensively: without it nothing is claimed
    loop = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "val_loop", None)
    is_defined = getattr(getattr(loop, "_data_source", None), "is_defined", None)
    try:
        if callable(is_defined) and not is_defined():
            return "there is no val_dataloader (not in the model, the datamodule or fit(val_dataloaders=...))"
    except Exception:  # noqa: BLE001 - a Lightning internal we cannot read: say nothing
        return None
    return None


def note_fit_start(trainer: Any, pl_module: Any, callbacks: list[Any]) -> None:
    """At the start of ``fit``: one line for ``fast_dev_run`` (nothing is explained or written), one warning
    when there is no validation loop (nothing can be explained), naming ``callbacks``; once per Trainer."""
    if trainer in _NOTED or not callbacks:
        return
    _NOTED.add(trainer)
    names = ", ".join(dict.fromkeys(type(cb).__name__ for cb in callbacks))
    if getattr(trainer, "fast_dev_run", False):
        rank_zero_info(
            f"lightning-xai: fast_dev_run is on, so {names} explain nothing and write no records or files."
        )
        return
    reason = missing_validation(trainer, pl_module)
    if reason is not None:
        rank_zero_warn(
            f"lightning-xai: {names} explain at the end of validation epochs, but this fit runs no validation "
            f"loop ({reason}), so nothing will be explained. Give the Trainer a validation loop "
            "(a validation_step and a val_dataloader, limit_val_batches > 0)."
        )
