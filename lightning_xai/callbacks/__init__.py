"""Lightning callbacks: thin wrappers that decide when to explain, on which data, and where results go."""

from lightning_xai.callbacks.base import ExplainResult, XAICallback
from lightning_xai.callbacks.concept_attribution import ConceptAttributionCallback
from lightning_xai.callbacks.concept_permutation import ConceptPermutationCallback
from lightning_xai.callbacks.diffusion_explainer import DiffusionExplainerCallback
from lightning_xai.callbacks.drift_monitor import ConceptDriftMonitor
from lightning_xai.callbacks.logic_rules import LogicRulesCallback
from lightning_xai.callbacks.representation_drift import RepresentationDriftCallback
from lightning_xai.callbacks.symbolic_tree import SymbolicTreeCallback

__all__ = [
    "ConceptAttributionCallback",
    "ConceptDriftMonitor",
    "ConceptPermutationCallback",
    "DiffusionExplainerCallback",
    "ExplainResult",
    "LogicRulesCallback",
    "RepresentationDriftCallback",
    "SymbolicTreeCallback",
    "XAICallback",
]
