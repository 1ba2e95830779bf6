"""One module per method: ``view(renderer, record, result, used) -> html`` for a record card of that method and,
where the method has one, ``overview(renderer, {epoch: [records]}) -> html`` across its epochs.

``result`` is the record's typed result (:func:`lightning_xai.results.read_result`); ``used`` collects the
media paths the view showed, so the generic media gallery does not repeat them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

VIEWS = (
    "concept_attribution",
    "concept_permutation",
    "diffusion_explainer",
    "drift",
    "logic_rules",
    "representation_drift",
    "symbolic_tree",
)


def view_module(method: str) -> ModuleType | None:
    """The view module of ``method``, or ``None`` for a method without its own view."""
    if method not in VIEWS:
        return None
    return importlib.import_module(f"lightning_xai.report.views.{method}")
