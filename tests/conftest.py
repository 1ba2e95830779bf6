"""Shared pytest fixtures of the lightning-xai test suite.

Public fixtures:

``trained_world`` (session scope)
    A :class:`lightning_xai.world.TrainedWorld`: a :class:`~lightning_xai.world.TinyCNN` trained on
    the default ``shape_texture`` task of the planted-concept world (CPU, trained once per test
    session), with its :class:`~lightning_xai.world.WorldDataModule` (splits set up). Unpacks as
    ``model, datamodule = trained_world``; also has ``.val_acc``, ``.fit_seconds``, ``.rule`` and
    ``.classes``. The model is shared by every test: treat it as read-only (or use
    ``trained_model_copy``). Tests using it should be marked ``@pytest.mark.slow``.

``spurious_world`` (session scope)
    A :class:`~lightning_xai.world.TrainedWorld` trained (width 16, 6 epochs, 2000 scenes) with the marker
    tied to class 0 in the training split (``spurious_class=0, spurious_p=1.0``): a model that has learned
    the planted spurious feature. Read-only, like ``trained_world``.

``world_concept_detector`` (session scope)
    A :class:`~lightning_xai.world.WorldConceptDetector` trained on 3000 renders (3 epochs), with its
    :class:`~lightning_xai.world.DetectorReport` (held-out accuracy per slot); unpacks as ``detector, report``.

``quickstart_run`` (session scope)
    ``examples/quickstart.py`` run once (2 epochs, 600 scenes, seed 0): ``(out dir, summary)``. Read-only;
    copy the records before editing them.

``trained_model_copy`` (function scope)
    A deep copy of the trained model in eval mode, safe to modify, hook or fit further.

Markers are declared in ``pyproject.toml``; tests marked ``gpu`` are skipped without CUDA.
"""

from __future__ import annotations

import copy
import os

import pytest

# No test may reach the network: W&B always runs offline.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The same float arithmetic on every x86 CI host: PyTorch's and oneDNN's kernels dispatch on the CPU's
# instruction set, and AVX-512 kernels round differently from AVX2 ones. The trained models the
# correctness tests rest on then land elsewhere; five thresholds (TCAV significance, pointing game,
# DEPICT margins, a DiffExplainer probability) failed on an AVX-512 host and passed with the same code
# when these were set. Read at the first kernel call, so setting them here (before any test runs) works.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
os.environ.setdefault("DNNL_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests when CUDA is not available."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_world():
    """A TinyCNN trained on the default world task (>= 95% val accuracy), shared by the session."""
    from lightning_xai.world import train_tiny_cnn

    return train_tiny_cnn(task="shape_texture", seed=0)


@pytest.fixture(scope="session")
def spurious_world():
    """A TinyCNN trained with the marker present exactly in class 0's training scenes."""
    from lightning_xai.world import train_tiny_cnn

    return train_tiny_cnn(
        epochs=6, n_train=2000, n_val=300, width=16, seed=0, spurious_class=0, spurious_p=1.0
    )


@pytest.fixture(scope="session")
def world_concept_detector():
    """A WorldConceptDetector trained on world renders, and its held-out report."""
    from lightning_xai.world import train_world_concept_detector

    return train_world_concept_detector(n_train=3000, n_test=600, epochs=3, seed=0)


@pytest.fixture()
def trained_model_copy(trained_world):
    """A deep copy of ``trained_world.model`` in eval mode, free to modify."""
    model = copy.deepcopy(trained_world.model)
    return model.eval()


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """``examples/quickstart.py --epochs 2 --n-train 600 --seed 0``, once per session: ``(out dir, summary)``.

    Read-only: tests that edit records copy them first.
    """
    import importlib.util
    from pathlib import Path

    out = tmp_path_factory.mktemp("quickstart")
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    summary = module.main(["--out", str(out), "--epochs", "2", "--n-train", "600", "--seed", "0"])
    return out, summary
