"""VisionLogic: logic rules from the classifier head's input neurons (no Lightning imports).

Geng et al., 2025. :class:`LogicRules` is the entry point: configured once, its
:meth:`~LogicRules.explain` runs the whole pipeline on one epoch's head inputs, logits and labels and
returns a :class:`~lightning_xai.results.logic_rules.LogicRulesResult`. The steps, each usable alone:

1. :func:`extract_pathways`: per image, the shortest contribution-ordered prefix of head-input
   features whose partial logits already give the prediction; signed feature ids.
2. :func:`fit_vocabulary`: per class, every signed feature selected by a source pathway (correctly
   classified images by default) becomes a predicate ``z_j >= t`` / ``z_j <= t`` with ``t`` the min /
   max over the selecting images; selection frequencies and n80.
3. :func:`local_rules` / :func:`global_rules`: readable rules (``"class 2 <- f17 >= 0.83 AND f40 >= 1.2"``).
4. :class:`RuleClassifier` + :func:`evaluate_rules` / :func:`crossfit_predictions`: the rules as an
   executable classifier (two scorings) with fidelity to the model and accuracy (torchmetrics).
5. :func:`ground_predicates`: causal grounding of each predicate by blurring Grad-CAM / Score-CAM
   regions of its neuron, against an area-matched random rectangle.
6. :func:`perturbation_study`: survival of active predicates under noise, blur, colour jitter and
   occlusion.

Steps 1-4 need only head inputs, logits and labels (what a validation loop already computes); steps
5-6 run the model on a small set of images.

Example:
    >>> import torch
    >>> from lightning_xai.logic import LinearHead, extract_pathways, fit_vocabulary, local_rules
    >>> head = LinearHead(torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64),
    ...                   torch.zeros(2, dtype=torch.float64))
    >>> z = torch.tensor([[2.0, 0.5], [1.5, 0.0], [0.2, 1.0]])
    >>> vocab = fit_vocabulary(z, extract_pathways(z, head), 2, labels=torch.tensor([0, 0, 1]))
    >>> [r.text() for r in local_rules(z, vocab, head)]
    ['class 0 <- f0 >= 1.5', 'class 0 <- f0 >= 1.5', 'class 1 <- f1 >= 1']
    >>> LogicRules(crossfit_folds=0).explain(z, head.logits(z), torch.tensor([0, 0, 1]), head).global_rules
    ['class 0 <- (f0 >= 1.5) [100%]', 'class 1 <- (f1 >= 1) [100%]']
"""

from lightning_xai.logic.explainer import SCORING_CHOICES, LogicRules
from lightning_xai.logic.grounding import (
    DEFAULT_CUTOFFS,
    DEFAULT_MIN_CAM_SIZE,
    GroundingLayerError,
    GroundingReport,
    GroundingTest,
    feature_map_layers,
    find_grounding_layer,
    ground_predicates,
    head_inputs,
    neuron_gradcam,
    neuron_scorecam,
)
from lightning_xai.logic.pathways import (
    HeadMismatchError,
    LinearHead,
    Pathways,
    extract_pathways,
    signed_id,
    split_signed_id,
)
from lightning_xai.logic.perturbation import (
    DEFAULT_LEVELS,
    PERTURBATIONS,
    PerturbationReport,
    perturb,
    perturbation_study,
)
from lightning_xai.logic.regions import gaussian_blur, random_rectangle, region_from_map
from lightning_xai.logic.rules import (
    SCORINGS,
    GlobalRule,
    LocalRule,
    RuleClassifier,
    RuleEvaluation,
    class_label,
    crossfit_predictions,
    evaluate_rules,
    global_rules,
    local_rules,
)
from lightning_xai.logic.vocabulary import (
    SOURCES,
    ClassVocabulary,
    Predicate,
    Vocabulary,
    fit_vocabulary,
    vocabulary_jaccard,
)

__all__ = [
    "DEFAULT_CUTOFFS",
    "DEFAULT_LEVELS",
    "DEFAULT_MIN_CAM_SIZE",
    "PERTURBATIONS",
    "SCORINGS",
    "SCORING_CHOICES",
    "SOURCES",
    "ClassVocabulary",
    "GlobalRule",
    "GroundingLayerError",
    "GroundingReport",
    "GroundingTest",
    "HeadMismatchError",
    "LinearHead",
    "LocalRule",
    "LogicRules",
    "Pathways",
    "PerturbationReport",
    "Predicate",
    "RuleClassifier",
    "RuleEvaluation",
    "Vocabulary",
    "class_label",
    "crossfit_predictions",
    "evaluate_rules",
    "extract_pathways",
    "feature_map_layers",
    "find_grounding_layer",
    "fit_vocabulary",
    "gaussian_blur",
    "global_rules",
    "ground_predicates",
    "head_inputs",
    "local_rules",
    "neuron_gradcam",
    "neuron_scorecam",
    "perturb",
    "perturbation_study",
    "random_rectangle",
    "region_from_map",
    "signed_id",
    "split_signed_id",
    "vocabulary_jaccard",
]
