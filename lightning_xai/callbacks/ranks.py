"""Collectives of the callbacks under DDP: every rank learns whether any rank failed, so all of them act alike
(and none waits alone in a gather that the others skip)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist
from lightning.pytorch import Trainer

__all__ = ["agree_on_failure", "gather_objects", "run_share"]

T = TypeVar("T")


def gather_objects(trainer: Trainer, obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree_on_failure(trainer: Trainer, error: BaseException | None) -> BaseException | None:
    """Every rank learns whether any rank failed (a collective: every rank must call it at the same point).

    Returns this rank's own ``error`` if it has one, else a ``RuntimeError`` naming the first rank that failed
    and why, else ``None``. Callers act on the result alike on every rank, so no rank runs ahead into a
    collective that the others skip (the hang a one-rank failure would otherwise cause under DDP).
    """
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return error
    reports = gather_objects(trainer, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        return error
    for rank, report in enumerate(reports):
        if report is not None:
            return RuntimeError(f"rank {rank} of {len(reports)} failed: {report}")
    return None


def run_share(trainer: Trainer, compute: Callable[[], T]) -> T:
    """Run this rank's share of work that is split across ranks and gathered afterwards.

    If the share fails on any rank, every rank raises (its own error, or one naming the rank that failed)
    instead of the healthy ranks waiting forever in the gather that follows.
    """
    result: T | None = None
    error: Exception | None = None
    try:
        result = compute()
    except Exception as exc:  # noqa: BLE001 - raised below on every rank
        error = exc
    agreed = agree_on_failure(trainer, error)
    if agreed is not None:
        raise agreed
    return result  # type: ignore[return-value]
