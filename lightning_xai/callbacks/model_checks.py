"""What a callback does with a model it cannot explain: under ``on_error="warn"`` it steps aside for the run (one
warning, an ``error`` record) and training goes on; under ``"raise"`` the error stops ``fit``. Multi-label
models are one such case for the methods that explain one class per image."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

__all__ = ["TASKS", "MultiLabelError", "check_task", "looks_multilabel", "step_aside"]

#: the ``task`` choices: told from the labels (``"auto"``) or declared
TASKS = ("auto", "multiclass", "multilabel")


class MultiLabelError(ValueError):
    """A method that explains one class per image was given a multi-label model."""


def looks_multilabel(labels: Tensor | None, n_classes: int | None = None) -> bool:
    """Whether a batch's labels are multi-hot targets ``[N, K]`` (of ``K = n_classes`` when given) rather than
    class indices ``[N]``.

    Example:
        >>> import torch
        >>> looks_multilabel(torch.tensor([[1.0, 0.0, 1.0]])), looks_multilabel(torch.tensor([2, 0]))
        (True, False)
    """
    if labels is None or not isinstance(labels, Tensor) or labels.dim() != 2 or labels.shape[1] < 2:
        return False
    return n_classes is None or labels.shape[1] == n_classes


def check_task(callback: Any, multilabel: bool) -> None:
    """Raise :class:`MultiLabelError` when ``callback`` cannot explain a multi-label model and this one is."""
    if not multilabel or callback.explains_multilabel:
        return
    how = (
        "declared task='multilabel'"
        if callback.task == "multilabel"
        else "its labels are multi-hot [N, classes]"
    )
    raise MultiLabelError(
        f"{type(callback).__name__} explains single-label classifiers (one class per image, the argmax of the "
        f"logits), but this model is multi-label ({how}). Leave {type(callback).__name__} out for this model "
        "(RepresentationDriftCallback explains it), or pass task='multiclass' if the labels are not multi-label."
    )


def step_aside(callback: Any, trainer: Any, exc: Exception) -> None:
    """``callback`` cannot explain this model: raise under ``on_error="raise"``, else disable it for the run with
    one warning and an ``error`` record (written by rank 0)."""
    if callback.on_error == "raise":
        raise exc
    from lightning_xai.callbacks.base import dispatcher_for

    callback.disabled = True
    rank_zero_warn(
        f"{type(callback).__name__} cannot explain this model and is disabled for this run; training goes on. "
        f"{type(exc).__name__}: {exc} (pass on_error='raise' to stop instead)"
    )
    if trainer.is_global_zero:
        dispatcher_for(trainer).write_error(callback.method, trainer.current_epoch, trainer.global_step, exc)
