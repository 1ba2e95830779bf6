"""The troubleshooting page's table of setup errors (docs/troubleshooting.md) is true: each case raises, under
``on_error="raise"``, an error of the type shown whose message starts with the text shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _models import BlobData, ConvHeadNet, SmallNet, blob_data, make_trainer
from torch.utils.data import DataLoader

from lightning_xai.callbacks import (
    ConceptAttributionCallback,
    LogicRulesCallback,
    RepresentationDriftCallback,
)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def _rows() -> dict[str, tuple[str, str]]:
    block = (
        PAGE.read_text()
        .split("<!-- setup-error-table:start -->")[1]
        .split("<!-- setup-error-table:end -->")[0]
    )
    rows = {}
    for line in block.strip().splitlines()[2:]:
        case, _, error, message = (c.strip() for c in line.strip().strip("|").split(" | ", 3))
        rows[case.strip("`")] = (error.split()[0].strip("`"), message)
    return rows


class TwoLoaderNet(SmallNet):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))


def _fit(root: Path, callback, model, *loaders) -> None:
    trainer = make_trainer(root, [callback], max_epochs=1)
    if loaders:
        trainer.fit(model, DataLoader(blob_data(32, seed=1), batch_size=16), list(loaders))
    else:
        trainer.fit(model, BlobData())


CASES: dict[str, Callable[[Path], None]] = {
    "no-linear-head": lambda root: _fit(root, RepresentationDriftCallback(on_error="raise"), ConvHeadNet()),
    "head-not-logits": lambda root: _fit(
        root, RepresentationDriftCallback(head="head.0", on_error="raise"), ConvHeadNet()
    ),
    "logic-rules-linear-head": lambda root: _fit(
        root, LogicRulesCallback(head="head", on_error="raise"), ConvHeadNet()
    ),
    "unknown-layer": lambda root: _fit(
        root, RepresentationDriftCallback(layers=["cnv"], on_error="raise"), SmallNet()
    ),
    "missing-concept-folder": lambda root: _fit(
        root, ConceptAttributionCallback({"striped": root / "missing"}, on_error="raise"), SmallNet()
    ),
    "multi-label": lambda root: _fit(
        root, LogicRulesCallback(task="multilabel", on_error="raise"), SmallNet()
    ),
    "dataloader-idx": lambda root: _fit(
        root,
        RepresentationDriftCallback(dataloader_idx=2, on_error="raise"),
        TwoLoaderNet(),
        DataLoader(blob_data(32, seed=2), batch_size=16),
        DataLoader(blob_data(32, seed=3), batch_size=16),
    ),
}


def test_every_case_of_the_table_is_tested() -> None:
    assert set(_rows()) == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_setup_error_is_the_documented_one(tmp_path: Path, case: str) -> None:
    error, message = _rows()[case]
    with pytest.raises(Exception) as info:
        CASES[case](tmp_path)
    exc = info.value
    # an error at an explained epoch comes wrapped in the callback's RuntimeError; the cause is the one shown
    if isinstance(exc, RuntimeError) and exc.__cause__ is not None and type(exc).__name__ != error:
        exc = exc.__cause__
    assert type(exc).__name__ == error or any(c.__name__ == error for c in type(exc).__mro__), (
        type(exc),
        error,
    )
    assert str(exc).startswith(message), (str(exc), message)
