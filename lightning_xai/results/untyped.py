"""Records of a method this version has no result type for (another package's callback, say)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_xai.records import RESERVED_PAYLOAD_KEYS
from lightning_xai.results.base import Result

__all__ = ["UntypedResult"]


@dataclass
class UntypedResult(Result):
    """The payload of a record whose method has no registered result, kept as it is.

    Attributes:
        payload: the stored payload without the store's reserved keys (tables, charts, media, text).
    """

    payload: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], schema: int | None = None) -> UntypedResult:
        return cls({k: v for k, v in payload.items() if k not in RESERVED_PAYLOAD_KEYS})

    def to_payload(self) -> dict[str, Any]:
        return dict(self.payload)

    def summary(self) -> dict[str, Any]:
        return dict(self.payload)
