"""The overhead benchmark's own bookkeeping (the benchmarks never run in the suite; this checks their logic)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from lightning.pytorch import Callback

# loaded from its file: the benchmarks folder is not a package, and it stays off sys.path
_spec = importlib.util.spec_from_file_location(
    "overhead", Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
)
overhead = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(overhead)


class Slow(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.calls.append("val_end")
        time.sleep(0.05)
        return "kept"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls.append(f"batch {batch_idx}")


def test_time_hooks_adds_each_hook_call_to_the_total_and_keeps_the_hooks_working() -> None:
    cb, spent = Slow(), [0.0]
    overhead._time_hooks([cb], spent)
    assert cb.on_validation_epoch_end(None, None) == "kept"
    cb.on_train_batch_end(None, None, None, None, batch_idx=3)
    cb.on_fit_start(None, None)  # a hook the class does not override is timed too (it costs nothing)
    assert cb.calls == ["val_end", "batch 3"]
    assert 0.05 <= spent[0] < 1.0
    assert cb.on_validation_epoch_end.__name__ == "on_validation_epoch_end"
