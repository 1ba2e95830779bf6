"""Root pytest configuration: the package's docstring examples run as doctests (``--doctest-modules`` over
``lightning_xai``), each from the same seeds, offline."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seeded_doctest(request: pytest.FixtureRequest) -> None:
    """Seed Python, NumPy and torch before every doctest, so an example prints the same numbers every run."""
    if not isinstance(request.node, pytest.DoctestItem):
        return
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
