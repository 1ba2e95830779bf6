"""The colours every figure of the package uses: matplotlib's default cycle ("tab10"), so charts drawn with
PIL (:mod:`lightning_xai.charts`), mask overlays (:mod:`lightning_xai.sinks`) and the HTML report
(:mod:`lightning_xai.report`) match the matplotlib figures users make themselves. No heavy imports: the
report command reads it without loading torch.
"""

from __future__ import annotations

__all__ = ["TAB10", "rgb"]

TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def rgb(colour: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """``'#rrggbb'`` (or an ``(r, g, b)`` tuple) as an ``(r, g, b)`` tuple of ints.

    Example:
        >>> rgb(TAB10[0])
        (31, 119, 180)
    """
    if isinstance(colour, str):
        c = colour.lstrip("#")
        if len(c) != 6:
            raise ValueError(f"colours are '#rrggbb' strings or (r, g, b) tuples, got {colour!r}.")
        return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
    return tuple(int(v) for v in colour)  # type: ignore[return-value]
