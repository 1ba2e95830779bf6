"""The base callback and RepresentationDriftCallback inside real Trainer runs."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from _models import BlobData, DictBatchData, DictBatchNet, NoHeadNet, SmallNet
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_xai.callbacks import ExplainResult, RepresentationDriftCallback, XAICallback
from lightning_xai.capture import HeadNotFoundError, LayerNotFoundError
from lightning_xai.records import read_records


def make_trainer(root: Path, callbacks: list[Callback], max_epochs: int = 2, **kwargs: Any) -> Trainer:
    defaults: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": max_epochs,
        "logger": CSVLogger(root, name="logs"),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "limit_train_batches": 4,
        "num_sanity_val_steps": 1,
    }
    defaults.update(kwargs)
    return Trainer(callbacks=callbacks, **defaults)


# ----------------------------------------------------------------------------- test explainers


class Results(Callback):
    """Keeps every typed result the lightning-xai callbacks hand to their listeners, by callback."""

    def __init__(self) -> None:
        self.by_source: dict[int, list[Any]] = {}

    def on_xai_result(self, trainer, pl_module, source, record, result) -> None:
        self.by_source.setdefault(id(source), []).append(result)

    def of(self, cb: Callback) -> list[Any]:
        return self.by_source.get(id(cb), [])


def _model_state(model: torch.nn.Module) -> dict[str, Any]:
    return {
        "modes": {n: m.training for n, m in model.named_modules()},
        "flags": {n: p.requires_grad for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


class GradientExplainer(XAICallback):
    """Takes input gradients through the live model, then checks the model came back untouched."""

    method = "gradient_probe"
    needs_inputs = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checks: list[tuple[str, int]] = []

    def explain(self, trainer, pl_module, sample):
        x = sample.inputs[:8].to(pl_module.device).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(pl_module(x).logsumexp(1).sum(), x)
        assert g.abs().sum() > 0
        return ExplainResult(payload={"grad_norm": float(g.norm())}, scalars={"grad_norm": float(g.norm())})

    def _run(self, trainer, pl_module):
        before = _model_state(pl_module)
        super()._run(trainer, pl_module)
        after = _model_state(pl_module)
        assert after["modes"] == before["modes"]
        assert after["flags"] == before["flags"]
        for name, grad in before["grads"].items():
            assert (grad is None) == (after["grads"][name] is None), name
            if grad is not None:
                assert torch.equal(grad, after["grads"][name]), name
        self.checks.append((trainer.state.fn.value, trainer.current_epoch))


class FailingExplainer(XAICallback):
    method = "failing"

    def explain(self, trainer, pl_module, sample):
        raise ValueError("explainer exploded")


# ----------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs must be an integer >= 1"),
        ({"every_n_epochs": 1.5}, "every_n_epochs must be an integer >= 1"),
        ({"max_samples": 1}, "max_samples must be an integer >= 2"),
        ({"on_error": "ignore"}, r"choose one of \['warn', 'raise'\]"),
        ({"max_failures": 0}, r"max_failures must be an integer >= 1, but got 0"),
        ({"on": "test"}, r"choose one of \['validation', 'train_epoch_end'\]"),
        ({"cka_batch_size": 2}, "cka_batch_size must be an integer >= 4"),
        ({"layers": [""]}, "list of dotted layer names"),
        ({"batch_to_input": "x"}, "batch_to_input must be a callable"),
    ],
)
def test_bad_arguments_are_rejected_in_init(kwargs: dict, match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        RepresentationDriftCallback(**kwargs)


def test_unknown_layer_name_lists_close_names(tmp_path: Path) -> None:
    cb = RepresentationDriftCallback(layers=["cnv"], on_error="raise")
    trainer = make_trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(LayerNotFoundError, match=r"'cnv'.*Closest valid names: \['conv'"):
        trainer.fit(SmallNet(), BlobData())


def test_a_setup_error_under_warn_disables_the_callback_and_training_goes_on(tmp_path: Path) -> None:
    broken, working = RepresentationDriftCallback(layers=["cnv"]), RepresentationDriftCallback()
    trainer = make_trainer(tmp_path, [broken, working], max_epochs=2)
    with pytest.warns(
        UserWarning, match=r"cannot explain this model and is disabled .*'cnv'.*Closest valid names"
    ):
        trainer.fit(SmallNet(), BlobData())
    assert trainer.current_epoch == 2 and broken.disabled and broken.explained_epochs == []
    assert working.explained_epochs == [0, 1]
    records = read_records(trainer.log_dir, method="representation_drift")
    (error,) = [r for r in records if r.name == "error"]
    assert error.payload["type"] == "LayerNotFoundError" and "'cnv'" in error.payload["message"]


def test_model_without_linear_head_is_rejected(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [RepresentationDriftCallback(on_error="raise")], max_epochs=1)
    with pytest.raises(HeadNotFoundError, match="has no nn.Linear layer"):
        trainer.fit(NoHeadNet(), BlobData())


def test_unreadable_batch_says_how_to_pass_batch_to_input(tmp_path: Path) -> None:
    cb = RepresentationDriftCallback(on_error="raise")
    trainer = make_trainer(tmp_path, [cb], max_epochs=1, num_sanity_val_steps=0)
    with pytest.raises(TypeError, match=r"keys \['cls', 'pixels'\].*batch_to_input=lambda batch"):
        trainer.fit(DictBatchNet(), DictBatchData())
    # under on_error="warn" validation and training go on; the epoch's error record says the same
    trainer = make_trainer(tmp_path / "warn", [RepresentationDriftCallback()], max_epochs=2)
    with pytest.warns(UserWarning, match=r"keys \['cls', 'pixels'\].*batch_to_input=lambda batch"):
        trainer.fit(DictBatchNet(), DictBatchData())
    assert trainer.current_epoch == 2 and "val_loss" in trainer.callback_metrics
    errors = read_records(trainer.log_dir, name="error")
    assert [e.epoch for e in errors] == [0, 1] and "batch_to_input" in errors[0].payload["message"]


def test_batch_to_input_reads_custom_batches(tmp_path: Path) -> None:
    cb = RepresentationDriftCallback(batch_to_input=lambda b: (b["pixels"], b["cls"]), on_error="raise")
    make_trainer(tmp_path, [cb], max_epochs=1).fit(DictBatchNet(), DictBatchData())
    assert cb.explained_epochs == [0]


# ----------------------------------------------------------------------------- sharing and safety


def test_two_callbacks_on_one_layer_register_one_hook(tmp_path: Path) -> None:
    seen: list[int] = []

    class CountHooks(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            seen.append(len(pl_module.conv._forward_hooks))
            seen.append(len(pl_module.head._forward_hooks))

    a = RepresentationDriftCallback(layers=["conv"], on_error="raise")
    b = RepresentationDriftCallback(layers=["conv"], max_samples=32, on_error="raise")
    model = SmallNet()
    results = Results()
    make_trainer(tmp_path, [a, b, CountHooks(), results], max_epochs=1).fit(model, BlobData())
    assert seen and set(seen) == {1}
    assert a.explained_epochs == b.explained_epochs == [0]
    (ra,), (rb,) = results.of(a), results.of(b)
    assert ra.cka_prev == rb.cka_prev == {"features": 1.0, "conv": 1.0}
    # hooks are gone after fit
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_model_is_untouched_after_explaining_in_fit_validate_and_train_epoch_end(tmp_path: Path) -> None:
    model = SmallNet(frozen=True)
    in_val = GradientExplainer(on_error="raise")
    at_train_end = GradientExplainer(on="train_epoch_end", on_error="raise", seed=1)
    trainer = make_trainer(tmp_path, [in_val, at_train_end], max_epochs=2)
    trainer.fit(model, BlobData())
    assert in_val.checks == [("fit", 0), ("fit", 1)]
    assert at_train_end.checks == [("fit", 0), ("fit", 1)]
    # trainer.validate runs under torch.inference_mode
    assert trainer.validate_loop.inference_mode
    trainer.validate(model, BlobData(), verbose=False)
    assert in_val.checks[-1] == ("validate", 2)
    assert not model.conv.bias.requires_grad and model.conv.weight.requires_grad


def test_cadence_skips_sanity_check_and_follows_every_n_epochs(tmp_path: Path) -> None:
    cb = RepresentationDriftCallback(every_n_epochs=2, on_error="raise")
    trainer = make_trainer(tmp_path, [cb], max_epochs=4, num_sanity_val_steps=2)
    trainer.fit(SmallNet(), BlobData())
    assert cb.explained_epochs == [1, 3]
    records = read_records(tmp_path / "logs" / "version_0")
    assert [(r.method, r.epoch) for r in records] == [
        ("representation_drift", 1),
        ("representation_drift", 3),
    ]
    assert "xai/representation_drift/time_s" in trainer.callback_metrics


# ----------------------------------------------------------------------------- errors


def test_failing_explainer_warns_backs_off_and_training_continues(tmp_path: Path) -> None:
    cb = FailingExplainer(on_error="warn")  # max_failures=3
    trainer = make_trainer(tmp_path, [cb], max_epochs=5)
    with pytest.warns(
        UserWarning, match="failed at epoch 0 and training goes on: ValueError: explainer exploded"
    ) as rec:
        trainer.fit(SmallNet(), BlobData())
    assert trainer.current_epoch == 5
    messages = [str(w.message) for w in rec if "explainer exploded" in str(w.message)]
    assert len(messages) == 2  # the first failure, then the back-off
    assert (
        "failed 3 explained epochs in a row (last at epoch 2: ValueError: explainer exploded) and is disabled"
        in messages[1]
    )
    errors = read_records(tmp_path / "logs" / "version_0", name="error")
    assert [e.epoch for e in errors] == [0, 1, 2]  # nothing tried after the back-off
    assert errors[0].method == "failing" and "explainer exploded" in str(errors[0].payload)
    assert cb.disabled and cb.consecutive_failures == 3


class FlakyExplainer(XAICallback):
    """Fails on even epochs only."""

    method = "flaky"

    def explain(self, trainer, pl_module, sample):
        if trainer.current_epoch % 2 == 0:
            raise ValueError("flaky")
        return ExplainResult(payload={"ok": True})


@pytest.mark.parametrize(("cls", "max_failures"), [(FlakyExplainer, 2), (FailingExplainer, None)])
def test_a_success_resets_the_count_and_none_never_backs_off(tmp_path: Path, cls: type, max_failures) -> None:
    cb = cls(on_error="warn", max_failures=max_failures)
    trainer = make_trainer(tmp_path, [cb], max_epochs=5)
    with pytest.warns(UserWarning, match="training goes on"):
        trainer.fit(SmallNet(), BlobData())
    assert not cb.disabled
    errors = read_records(tmp_path / "logs" / "version_0", name="error")
    assert [e.epoch for e in errors] == ([0, 2, 4] if cls is FlakyExplainer else [0, 1, 2, 3, 4])


def test_failing_explainer_stops_fit_under_raise(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FailingExplainer(on_error="raise")], max_epochs=3)
    with pytest.raises(RuntimeError, match=r"FailingExplainer \(failing\) failed at epoch 0") as err:
        trainer.fit(SmallNet(), BlobData())
    assert isinstance(err.value.__cause__, ValueError)


# ----------------------------------------------------------------------------- drift


class Reinitialise(Callback):
    """Re-initialises the model's weights at the start of one epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            torch.manual_seed(123)
            for m in pl_module.modules():
                if hasattr(m, "reset_parameters") and m is not pl_module:
                    m.reset_parameters()


def test_cka_drops_when_the_model_is_reinitialised(tmp_path: Path) -> None:
    seed_everything(0)
    cb = RepresentationDriftCallback(layers=["conv"], on_error="raise", cka_batch_size=32)
    results = Results()
    trainer = make_trainer(
        tmp_path, [cb, Reinitialise(epoch=3), results], max_epochs=4, limit_train_batches=2
    )
    trainer.fit(SmallNet(lr=0.01), BlobData())
    history = results.of(cb)
    prev = [r.cka_prev["features"] for r in history]
    assert prev[0] == 1.0  # the first explained epoch is its own reference
    assert min(prev[1:3]) > 0.9  # small steps: the representation barely moves
    # re-initialised: the drop is an order of magnitude above the epoch-to-epoch movement
    assert 1 - prev[3] > 10 * (1 - min(prev[1:3]))
    assert 1 - history[3].cka_ref["conv"] > 10 * (1 - history[2].cka_ref["conv"])
    # scalars are logged where a monitor can read them
    assert trainer.callback_metrics["xai/representation_drift/cka_prev/features"] == pytest.approx(prev[3])
    payload = read_records(tmp_path / "logs" / "version_0")[-1].payload
    assert payload["reference_epoch"] == 0 and payload["previous_epoch"] == 2
    assert payload["n_samples"] == 64 and payload["representations"] == {"features": 8, "conv": 8 * 8 * 8}


def test_state_dict_round_trips_through_checkpoint_and_resume(tmp_path: Path) -> None:
    seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb = RepresentationDriftCallback(on_error="raise")
    other = RepresentationDriftCallback(every_n_epochs=2, on_error="raise")
    assert cb.state_key != other.state_key
    trainer = make_trainer(tmp_path, [cb, other, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(SmallNet(), BlobData())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    assert saved[cb.state_key]["explained_epochs"] == [0, 1]
    assert saved[other.state_key]["explained_epochs"] == [1]
    assert saved[cb.state_key]["explainer"]["reference"]["epoch"] == 0
    assert saved[cb.state_key]["explainer"]["previous"]["epoch"] == 1

    resumed = RepresentationDriftCallback(on_error="raise")
    resumed_other = RepresentationDriftCallback(every_n_epochs=2, on_error="raise")
    results = Results()
    trainer2 = make_trainer(
        tmp_path,
        [resumed, resumed_other, ModelCheckpoint(dirpath=tmp_path / "ckpt2"), results],
        max_epochs=4,
        enable_checkpointing=True,
    )
    trainer2.fit(SmallNet(), BlobData(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.explained_epochs == [0, 1, 2, 3]
    assert resumed_other.explained_epochs == [1, 3]
    after = results.of(resumed)
    assert [(r.reference_epoch, r.previous_epoch) for r in after] == [(0, 1), (0, 2)]
    # the reference survived the resume: epoch 2's CKA is against epoch 0, not against itself
    assert after[0].cka_ref["features"] < 1.0
    assert resumed.explainer_state()["reference"]["epoch"] == 0


# ----------------------------------------------------------------------------- DDP: every callback together is in test_hardening.py


def test_unwritable_local_store_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "xai").write_text("a file where the store's folder should be")
    cb = RepresentationDriftCallback(on_error="warn")
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, logger=False)
    with pytest.warns(UserWarning, match="failed at epoch 0 and training goes on"):
        trainer.fit(SmallNet(), BlobData())
    assert trainer.current_epoch == 2


def test_train_epoch_end_without_validation_that_epoch_warns_and_skips(tmp_path: Path) -> None:
    cb = GradientExplainer(on="train_epoch_end", on_error="raise")
    trainer = make_trainer(tmp_path, [cb], max_epochs=2, check_val_every_n_epoch=2)
    with pytest.warns(UserWarning, match="skips the epochs in which no validation ran \\(from epoch 0 on\\)"):
        trainer.fit(SmallNet(), BlobData())
    assert cb.checks == [("fit", 1)]


@pytest.mark.gpu
def test_on_cuda_the_sample_stays_on_cpu_and_the_model_untouched(tmp_path: Path) -> None:
    probe = GradientExplainer(on_error="raise")
    drift = RepresentationDriftCallback(on_error="raise")
    results = Results()
    trainer = make_trainer(tmp_path, [probe, drift, results], max_epochs=2, accelerator="gpu", devices=1)
    trainer.fit(SmallNet(frozen=True), BlobData())
    assert probe.checks == [("fit", 0), ("fit", 1)]
    assert drift.explainer_state()["previous"]["reps"]["features"].device.type == "cpu"
    assert 0.0 < results.of(drift)[1].cka_prev["features"] <= 1.0


class NaNAfterFirstEpoch(SmallNet):
    """Its head inputs turn NaN from epoch 1 on (a diverged model)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)
        if self.trainer is not None and self.current_epoch >= 1:
            h = h * float("nan")
        return self.head(h)


def test_nan_activations_are_reported_not_explained(tmp_path: Path) -> None:
    from lightning_xai.callbacks import LogicRulesCallback

    callbacks = [
        RepresentationDriftCallback(max_failures=None),
        LogicRulesCallback(max_grounding_images=0, max_perturbation_images=0, max_failures=None),
    ]
    trainer = make_trainer(tmp_path, callbacks, max_epochs=3)
    with pytest.warns(UserWarning, match="holds NaN or infinite values in features"):
        trainer.fit(NaNAfterFirstEpoch(), BlobData())
    assert trainer.state.finished
    records = read_records(tmp_path / "logs" / "version_0")
    assert sorted((r.method, r.name, r.epoch) for r in records) == [
        ("logic_rules", "epoch", 0),
        ("logic_rules", "error", 1),
        ("logic_rules", "error", 2),
        ("representation_drift", "epoch", 0),
        ("representation_drift", "error", 1),
        ("representation_drift", "error", 2),
    ]
    error = next(r for r in records if r.name == "error")
    assert error.payload["type"] == "FloatingPointError"
    assert (
        "the validation sample of epoch 1 holds NaN or infinite values in features (64 of 64 samples)"
        in error.payload["message"]
    )
    with pytest.raises(
        RuntimeError,
        match=r"RepresentationDriftCallback \(representation_drift\) failed at epoch 1: the validation sample",
    ):
        make_trainer(tmp_path / "raise", [RepresentationDriftCallback(on_error="raise")], max_epochs=2).fit(
            NaNAfterFirstEpoch(), BlobData()
        )


class CycleExplainer(XAICallback):
    """Leaves a reference cycle behind (as matplotlib figures and tracebacks do) and notes the collector's state."""

    method = "cycles"

    def __init__(self, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = fail
        self.collector_on: list[bool] = []
        self.left: list[Any] = []

    def explain(self, trainer, pl_module, sample):
        import gc
        import weakref

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # only the cycle collector can free these
        self.left.append(weakref.ref(a))
        self.collector_on.append(gc.isenabled())
        if self.fail:
            raise ValueError("explainer exploded")
        return ExplainResult(payload={})


@pytest.mark.parametrize("fail", [False, True])
def test_explaining_pauses_the_collector_and_frees_its_cycles_after(tmp_path: Path, fail: bool) -> None:
    import gc

    cb = CycleExplainer(fail=fail, on_error="warn", max_failures=5)
    with pytest.warns(UserWarning) if fail else nullcontext():
        make_trainer(tmp_path, [cb], max_epochs=2, num_sanity_val_steps=0).fit(SmallNet(), BlobData())
    assert cb.collector_on == [False, False]  # no automatic collection while explaining
    assert gc.isenabled()  # and on again after, failure or not
    assert all(ref() is None for ref in cb.left)  # the young collection after each epoch freed the cycles
    gc.disable()  # a collector the user turned off stays off
    try:
        cb2 = CycleExplainer()
        make_trainer(tmp_path / "off", [cb2], max_epochs=1, num_sanity_val_steps=0).fit(
            SmallNet(), BlobData()
        )
        assert not gc.isenabled() and cb2.collector_on == [False]
    finally:
        gc.enable()
