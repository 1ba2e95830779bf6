"""Hierarchical symbolic explanations in hyperbolic space (Santhirasekaram, Kori et al., 2022), in plain PyTorch.

A classifier's feature map (one token per channel) is quantised into symbols at several levels whose
codebooks live on a Poincaré ball (geoopt), linked by a learned soft adjacency, with coarser symbols
nearer the origin and one top symbol per class; a surrogate head on the top-level symbols predicts
the classifier's own prediction. The fitted model is read out as class trees, image trees and rules
("class 3 <- S2_4 AND S2_7", "S2_4 <- S1_12 OR S1_30"), exported as nested dicts, Graphviz DOT text and
PNG figures, with visual semantics (where each symbol is evidenced in the input) and fidelity.

Nothing here imports Lightning; :class:`SymbolicTree` is the one call shape (configured once,
``explain(features, logits) -> SymbolicTreeResult``, warm-started across calls), and
:class:`~lightning_xai.callbacks.SymbolicTreeCallback` runs it while a model trains. The result's types
(:class:`~lightning_xai.results.symbolic_tree.SymbolicTreeResult`, :class:`TreeNode`, :class:`Rule`,
:class:`FitReport`) live in :mod:`lightning_xai.results.symbolic_tree` and are re-exported here.

Example:
    >>> import torch
    >>> from lightning_xai.hyperbolic import SymbolicTree, tree_to_dot
    >>> feats = torch.randn(64, 8, 4, 4); logits = feats.mean((2, 3))[:, :3]
    >>> tree = SymbolicTree(levels=(8, 4), latent_channels=4, steps=10, warmup_steps=0)
    >>> result = tree.explain(feats, logits, layer="features")
    >>> sorted(result.fidelity), result.levels, tree.fitter.model.sizes
    (['accuracy', 'macro_f1'], [8, 4, 3], (8, 4, 3))
    >>> tree_to_dot(result.class_trees[0]).startswith("digraph")
    True

:func:`explain_symbols` is the step underneath, for a fitter of one's own.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # geoopt 0.5 scripts a few functions with torch.jit.script, which torch >= 2.10 deprecates at import time;
    # the warning is about geoopt's internals, not something a user of this package can act on
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import geoopt  # noqa: F401

from lightning_xai.results.symbolic_tree import ImageTree, SymbolEvidence, SymbolicTreeResult

from .config import (
    FeatureMapError,
    LevelsError,
    LossWeights,
    SymbolicConfig,
    check_feature_map,
    resolve_levels,
)
from .explain import SymbolicExplanation, explain_symbols, heldout_split
from .fit import FitReport, SymbolicFitter
from .geometry import make_ball, pairwise_dist, rowwise_dist
from .layers import find_feature_layer
from .metrics import fidelity, js_divergence, level_norms, norm_order_share, perplexity, rules_jaccard
from .model import Encoding, ForwardPass, SymbolicModel
from .render import (
    render_semantics,
    render_tree,
    render_usage,
    semantics_grid,
    tree_graph,
    tree_image,
    usage_image,
)
from .semantics import SymbolSemantics, visual_semantics
from .symbolic_tree import SymbolicTree
from .tree import Hierarchy, Rule, TreeNode, read_hierarchy, symbol_name, tree_to_dot

__all__ = [
    "Encoding",
    "FeatureMapError",
    "FitReport",
    "ForwardPass",
    "Hierarchy",
    "ImageTree",
    "LevelsError",
    "LossWeights",
    "Rule",
    "SymbolEvidence",
    "SymbolSemantics",
    "SymbolicConfig",
    "SymbolicExplanation",
    "SymbolicFitter",
    "SymbolicModel",
    "SymbolicTree",
    "SymbolicTreeResult",
    "TreeNode",
    "check_feature_map",
    "explain_symbols",
    "fidelity",
    "find_feature_layer",
    "heldout_split",
    "js_divergence",
    "level_norms",
    "make_ball",
    "norm_order_share",
    "pairwise_dist",
    "perplexity",
    "read_hierarchy",
    "render_semantics",
    "render_tree",
    "render_usage",
    "resolve_levels",
    "rowwise_dist",
    "rules_jaccard",
    "semantics_grid",
    "symbol_name",
    "tree_graph",
    "tree_image",
    "tree_to_dot",
    "usage_image",
    "visual_semantics",
]
