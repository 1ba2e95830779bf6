"""Figures: trees (networkx layout drawn by matplotlib, no system Graphviz), usage histograms and
visual-semantics panels. Every function returns a :class:`matplotlib.figure.Figure` (no pyplot, so
nothing global is touched); ``fig.savefig(path)`` writes a PNG.
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

__all__ = ["render_semantics", "render_tree", "render_usage", "semantics_grid", "tree_graph"]

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

    Example:
        >>> fig = render_tree(TreeNode("class 0", 1, None, 4, children=[TreeNode("S0_2", 0, 2, 4, edge=0.8)]))
        >>> type(fig).__name__
        'Figure'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g = tree_graph(tree)
    widest = max(sum(1 for _, d in g.nodes(data=True) if d["level"] == lv) for lv in {d["level"] for _, d in g.nodes(data=True)})
    fig = Figure(figsize=(max(4.0, 0.9 * widest + 1.5), 1.2 * (tree.level + 1) + 1.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    ax.set_axis_off()
    pos = _layered_positions(g)
    top_tokens = max(1, max(d["tokens"] for _, d in g.nodes(data=True)))
    colours = [_LEVEL_COLOURS[d["level"] % len(_LEVEL_COLOURS)] if d["level"] < tree.level else "#dddddd" for _, d in g.nodes(data=True)]
    sizes = [300 + 1200 * (d["tokens"] / top_tokens) ** 0.5 for _, d in g.nodes(data=True)]
    solid = [(u, v) for u, v, d in g.edges(data=True) if not d["routed"]]
    dashed = [(u, v) for u, v, d in g.edges(data=True) if d["routed"]]
    widths = [0.5 + 2.5 * float(g.edges[e]["weight"] or 1.0) for e in solid]
    nx.draw_networkx_edges(g, pos, edgelist=solid, width=widths, ax=ax, arrows=False, edge_color="#555555")
    if dashed:
        nx.draw_networkx_edges(g, pos, edgelist=dashed, style="dashed", ax=ax, arrows=False, edge_color="#cc3333")
    nx.draw_networkx_nodes(g, pos, node_color=colours, node_size=sizes, ax=ax, edgecolors="#333333")
    labels = {n: (d["label"].replace(" (", "\n(") if d["level"] == tree.level else d["label"]) for n, d in g.nodes(data=True)}
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=7, ax=ax)
    ax.set_title(title or tree.name, fontsize=10)
    ax.margins(0.12, 0.12)
    fig.tight_layout()
    return fig


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

    The bars are drawn with :func:`lightning_xai.barchart.bar_chart` (a few milliseconds, against about
    200 ms for the same charts as matplotlib subplots), and the figure shows that image 1:1.

    Example:
        >>> type(render_usage([[3, 1, 0, 2], [4, 2]])).__name__
        'Figure'
    """
    from lightning_xai.barchart import bar_chart, image_figure, side_by_side

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
    return image_figure(side_by_side(charts or [np.full((40, 320, 3), 255, dtype=np.uint8)], title))


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


def semantics_grid(semantics: Sequence[SymbolSemantics], images: Tensor, scale: int = 2, gap: int = 4) -> Tensor:
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
