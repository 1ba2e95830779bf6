"""Embedding media in the page: base64 data URIs within a byte budget, mask overlays."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

from lightning_xai.sinks import mask_overlay

DEFAULT_MAX_MEDIA_BYTES = 4_000_000
#: Once this many bytes of media are embedded, further media are left out (with a note).
DEFAULT_MAX_TOTAL_MEDIA_BYTES = 96_000_000

_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


@dataclass
class _MediaBudget:
    """Embeds media files as data URIs until a per-file or total size cap says no."""

    max_file: int
    max_total: int
    used: int = 0
    embedded: int = 0
    skipped: list[str] = field(default_factory=list)

    def _take(self, n: int, what: str) -> str | None:
        if n > self.max_file:
            reason = f"{what} is {n / 1e6:.1f} MB, over the {self.max_file / 1e6:.1f} MB per-image limit"
        elif self.used + n > self.max_total:
            reason = f"{what} left out: the report already embeds {self.used / 1e6:.1f} MB of media"
        else:
            self.used += n
            self.embedded += 1
            return None
        self.skipped.append(reason)
        return reason

    def file(self, path: Path) -> tuple[str | None, str]:
        """``(data URI, "")`` or ``(None, reason)``."""
        if not path.is_file():
            self.skipped.append(f"{path} is missing")
            return None, f"file missing: {path}"
        size = path.stat().st_size
        reason = self._take(size, path.name)
        if reason:
            return None, reason
        mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}", ""

    def png(self, data: bytes, what: str) -> tuple[str | None, str]:
        reason = self._take(len(data), what)
        if reason:
            return None, reason
        return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}", ""


def _mask_overlay_png(image_path: Path, mask_path: Path) -> bytes | None:
    """The mask's non-zero ids coloured over the image, as PNG bytes (``None`` if either is unreadable)."""
    try:
        import numpy as np
        from PIL import Image

        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(mask_path) as mm:
            mask = np.asarray(mm)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != image.shape[:2]:
            return None
        buf = io.BytesIO()
        Image.fromarray(mask_overlay(image, mask)).save(buf, format="PNG")
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - a broken mask must not break the report; the page says it is missing
        return None
