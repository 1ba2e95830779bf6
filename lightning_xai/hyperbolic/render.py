"""Figures: trees (a layered layout drawn with PIL, no system Graphviz), usage histograms and
visual-semantics panels. The ``render_*`` functions return a :class:`matplotlib.figure.Figure` (no pyplot,
so nothing global is touched; ``fig.savefig(path)`` writes a PNG); :func:`tree_image`, :func:`usage_image`
and :func:`semantics_grid` return the pixels themselves, which is what the callback logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from lightning_xai.panels import display_image, heat_overlay

from .semantics import SymbolSemantics
from .tree import TreeNode, _dot_id

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "render_semantics",
    "render_tree",
    "render_usage",
    "semantics_grid",
    "tree_graph",
    "tree_image",
    "usage_image",
]

_LEVEL_COLOURS = ["#9ecae1", "#a1d99b", "#fdae6b", "#bcbddc", "#fc9272", "#d9d9d9"]


def tree_graph(tree: TreeNode) -> nx.DiGraph:
    """The tree as a :class:`networkx.DiGraph` (node attributes ``level``, ``label``, ``tokens``; edge
    attributes ``weight`` (``A``) and ``routed``). A symbol shared by two parents is one node.

    Example:
        >>> g = tree_graph(TreeNode("class 0", 1, None, 4, children=[TreeNode("S0_2", 0, 2, 4, edge=0.8)]))
        >>> sorted(g.nodes), list(g.edges)
        (['S0_2', 'root'], [('root', 'S0_2')])
    """
    g = nx.DiGraph()
    for parent, node in tree.walk():
        nid = _dot_id(node)
        if nid not in g:
            g.add_node(nid, level=node.level, label=node.name, tokens=node.tokens)
        if parent is not None:
            g.add_edge(_dot_id(parent), nid, weight=node.edge, routed=node.routed)
    return g


def render_tree(tree: TreeNode, title: str | None = None) -> Figure:
    """Draw a class or image tree, root on top, level 0 at the bottom; node size ~ tokens, edge width ~ A,
    routed edges dashed.

    Drawn with PIL at twice the size and reduced (so lines and circles are smooth), in matplotlib's
    default font: about a tenth of the time of networkx's matplotlib drawing, which an epoch paid once per
    class. The figure shows that image 1:1.

    Example:
        >>> fig = render_tree(TreeNode("class 0", 1, None, 4, children=[TreeNode("S0_2", 0, 2, 4, edge=0.8)]))
        >>> type(fig).__name__
        'Figure'
    """
    from lightning_xai.panels import image_figure

    return image_figure(tree_image(tree, title))


def tree_image(tree: TreeNode, title: str | None = None, dpi: int = 100, supersample: int = 2) -> np.ndarray:
    """The picture :func:`render_tree` shows, as a ``uint8`` RGB array ``[H, W, 3]``.

    Example:
        >>> tree_image(TreeNode("class 0", 1, None, 4, children=[TreeNode("S0_2", 0, 2, 4, edge=0.8)])).shape
        (340, 400, 3)
    """
    from PIL import Image, ImageDraw

    from lightning_xai.panels import draw_dashed_line, draw_text, text_font, text_size

    g = tree_graph(tree)
    nodes = list(g.nodes(data=True))
    levels = {d["level"] for _, d in nodes}
    widest = max(sum(1 for _, d in nodes if d["level"] == lv) for lv in levels)
    width, height = round(dpi * max(4.0, 0.9 * widest + 1.5)), round(dpi * (1.2 * (tree.level + 1) + 1.0))
    k, pt = supersample, dpi / 72.0 * supersample  # pixels of the drawing per point
    pos = _layered_positions(g)
    top_tokens = max(1, max(d["tokens"] for _, d in nodes))
    # node areas as networkx gives them (points squared), edge widths in points, as the matplotlib version
    radius = {n: 0.5 * (300 + 1200 * (d["tokens"] / top_tokens) ** 0.5) ** 0.5 * pt for n, d in nodes}
    title_font, label_font = text_font(10 * pt), text_font(7 * pt)
    heading = title or tree.name
    band = text_size(heading, title_font)[1] + 16 * k
    r_max = max(radius.values())
    margin_x, margin_y = max(r_max + 6 * k, 0.06 * width * k), r_max + 6 * k
    xs = [p[0] for p in pos.values()]
    x_lo, x_hi = min(xs), max(xs)
    top_level = max(levels)

    def at(n: str) -> tuple[float, float]:
        x, lv = pos[n]
        fx = 0.5 if x_hi == x_lo else (x - x_lo) / (x_hi - x_lo)
        fy = 0.5 if top_level == 0 else 1.0 - lv / top_level
        return margin_x + fx * (width * k - 2 * margin_x), band + margin_y + fy * (
            height * k - band - 2 * margin_y
        )

    page = Image.new("RGB", (width * k, height * k), (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for u, v, d in g.edges(data=True):
        (x0, y0), (x1, y1) = at(u), at(v)
        if d["routed"]:
            draw_dashed_line(draw, (x0, y0), (x1, y1), (204, 51, 51), max(1, round(1.0 * pt)), 6 * pt, 3 * pt)
        else:
            w = 0.5 + 2.5 * float(d["weight"] or 1.0)
            draw.line([(x0, y0), (x1, y1)], fill=(85, 85, 85), width=max(1, round(w * pt)))
    for n, d in nodes:
        x, y = at(n)
        r = radius[n]
        fill = _LEVEL_COLOURS[d["level"] % len(_LEVEL_COLOURS)] if d["level"] < tree.level else "#dddddd"
        draw.ellipse(
            [x - r, y - r, x + r, y + r], fill=fill, outline=(51, 51, 51), width=max(1, round(1.0 * pt))
        )
        lines = (d["label"].replace(" (", "\n(") if d["level"] == tree.level else d["label"]).split("\n")
        step = 7 * pt * 1.2
        for i, line in enumerate(lines):
            draw_text(draw, (x, y + (i - (len(lines) - 1) / 2) * step), line, label_font, "mm")
    draw_text(draw, (width * k / 2, 8 * k), heading, title_font, "ma")
    return np.asarray(page.reduce(k) if k > 1 else page)


def _layered_positions(g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """One row per level; within a row, nodes ordered by the mean position of their parents, so
    children sit under their parents and edges rarely cross."""
    levels = sorted({d["level"] for _, d in g.nodes(data=True)}, reverse=True)
    pos: dict[str, tuple[float, float]] = {}
    for level in levels:
        row = [n for n, d in g.nodes(data=True) if d["level"] == level]

        def key(n: str) -> tuple[float, str]:
            parents = [pos[p][0] for p in g.predecessors(n) if p in pos]
            return (float(np.mean(parents)) if parents else 0.0, n)

        row.sort(key=key)
        for i, n in enumerate(row):
            pos[n] = (i - (len(row) - 1) / 2.0, float(level))
    return pos


def render_usage(usage: Sequence[Sequence[int]], title: str = "Symbol usage") -> Figure:
    """One bar chart per level: tokens per symbol (levels side by side, finest first).

    The bars are drawn with :func:`lightning_xai.charts.bar_chart` (a few milliseconds, against about
    200 ms for the same charts as matplotlib subplots), and the figure shows that image 1:1.

    Example:
        >>> type(render_usage([[3, 1, 0, 2], [4, 2]])).__name__
        'Figure'
    """
    from lightning_xai.panels import image_figure

    return image_figure(usage_image(usage, title))


def usage_image(usage: Sequence[Sequence[int]], title: str = "Symbol usage") -> np.ndarray:
    """The picture :func:`render_usage` shows, as a ``uint8`` RGB array ``[H, W, 3]``.

    Example:
        >>> usage_image([[3, 1, 0, 2], [4, 2]]).dtype.name
        'uint8'
    """
    from lightning_xai.charts import bar_chart, side_by_side

    charts = [
        bar_chart(
            [str(i) for i in range(len(counts))],
            [np.asarray(counts, dtype=float)],
            colours=[_LEVEL_COLOURS[level % len(_LEVEL_COLOURS)]],
            title=f"level {level} ({len(counts)} symbols)",
            xlabel="symbol",
            ylabel="tokens" if level == 0 else "",
            size=(320, 280),
        )
        for level, counts in enumerate(usage)
    ]
    return side_by_side(charts or [np.full((40, 320, 3), 255, dtype=np.uint8)], title)


def render_semantics(semantics: Sequence[SymbolSemantics], images: Tensor, title: str = "") -> Figure:
    """Rows = symbols, columns = the images that use each symbol most, with the symbol's evidence map
    (its channels' spatial maps, upsampled) overlaid.

    Args:
        semantics: from :func:`~lightning_xai.hyperbolic.visual_semantics`.
        images: the images the semantics index, ``[N, 3 or 1, H, W]`` (any range; min-max scaled for display).
        title: figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(semantics))
    cols = max([1, *(len(s.images) for s in semantics)])
    fig = Figure(figsize=(1.6 * cols + 0.8, 1.7 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for r, sem in enumerate(semantics):
        for c in range(cols):
            ax = fig.add_subplot(rows, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(sem.images):
                ax.set_axis_off()
                continue
            ax.imshow(display_image(images[sem.images[c]]).permute(1, 2, 0).numpy())
            ax.imshow(sem.maps[c].numpy(), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            ax.set_title(f"#{sem.images[c]}: {sem.tokens[c]} tok", fontsize=7)
            if c == 0:
                ax.set_ylabel(sem.name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def semantics_grid(
    semantics: Sequence[SymbolSemantics], images: Tensor, scale: int = 2, gap: int = 4
) -> Tensor:
    """The panels of :func:`render_semantics` as one image tensor ``[3, H, W]`` in [0, 1], without
    matplotlib (about 50 times faster, for logging every epoch): rows = symbols (in order), columns =
    images, each image next to nothing but its own overlay (jet colour map, 45% opacity).

    Example:
        >>> sem = [SymbolSemantics(0, 1, [0, 1], [3, 2], torch.rand(2, 8, 8))]
        >>> tuple(semantics_grid(sem, torch.rand(2, 3, 8, 8)).shape)
        (3, 16, 36)
    """
    rows = max(1, len(semantics))
    cols = max([1, *(len(s.images) for s in semantics)])
    h, w = int(images.shape[-2]) * scale, int(images.shape[-1]) * scale
    grid = torch.ones(3, rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap)
    for r, sem in enumerate(semantics):
        for c, idx in enumerate(sem.images):
            cell = heat_overlay(display_image(images[idx]), sem.maps[c])
            cell = cell.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
            y, x = r * (h + gap), c * (w + gap)
            grid[:, y : y + h, x : x + w] = cell
    return grid.clamp(0, 1)
