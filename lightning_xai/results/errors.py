"""The record an explainer writes when it fails (any method, record name ``"error"``)."""

from __future__ import annotations

import traceback as _traceback
from dataclasses import dataclass
from typing import ClassVar

from lightning_xai.results.base import Logged, Result

__all__ = ["ExplainerError"]


@dataclass
class ExplainerError(Result):
    """An explained epoch that failed; training went on (``on_error="warn"``).

    Attributes:
        type: the exception's class name, e.g. ``"RuntimeError"``.
        qualified_type: its module and qualified name, e.g. ``"torch.OutOfMemoryError"``.
        message: ``str(exception)``.
        traceback: the formatted traceback.
        hint: what to do about it (e.g. after running out of memory), or ``None``.

    Example:
        >>> err = ExplainerError.from_exception(ValueError("no concept images"), hint="pass concepts=...")
        >>> err.type, err.message, err.hint
        ('ValueError', 'no concept images', 'pass concepts=...')
    """

    method: ClassVar[str] = "*"
    name: ClassVar[str] = "error"

    type: str = "Error"
    qualified_type: str | None = None
    message: str = ""
    traceback: str = ""
    hint: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, hint: str | None = None) -> ExplainerError:
        etype = type(exc)
        return cls(
            type=etype.__name__,
            qualified_type=f"{etype.__module__}.{etype.__qualname__}",
            message=str(exc),
            traceback="".join(_traceback.format_exception(etype, exc, exc.__traceback__)),
            hint=hint,
        )

    def logged(self, epoch: int) -> Logged:
        advice = f"\n\n{self.hint}" if self.hint else ""
        return Logged(text={"error": f"**{self.type}**: {self.message}{advice}\n\n```\n{self.traceback}```"})

    def summary(self) -> dict:
        return {}
