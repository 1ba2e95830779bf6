"""Layer lookup, head discovery, the shared tap and reservoir, layer re-entry and explanation mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_xai.capture import (
    ActivationCapture,
    HeadNotFoundError,
    LayerNotFoundError,
    default_batch_to_input,
    explanation_mode,
    find_head,
    folded_batchnorm,
    forward_from_layer,
    resolve_layer,
)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(6, 3),
    )


def test_resolve_layer_by_dotted_name_and_close_names_on_error() -> None:
    net = nn.Sequential()
    net.add_module("layer4", nn.Sequential(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)))
    assert resolve_layer(net, "layer4.1") is net.layer4[1]
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layer(net, "layer4.2")
    msg = str(err.value)
    assert "'layer4.2'" in msg and "layer4.1" in msg and "Closest valid names" in msg
    with pytest.raises(LayerNotFoundError):
        resolve_layer(net, "")


def test_find_head_picks_last_linear_or_named_one() -> None:
    net = small_net()
    assert find_head(net) == ("8", net[8])
    assert find_head(net, "5")[1] is net[5]
    assert find_head(net, "0") == ("0", net[0])  # a named head may be any module whose output is the logits
    with pytest.raises(
        HeadNotFoundError, match=r"has no nn.Linear.*head='<name>'.*Top-level modules: \['0', '1'\]"
    ):
        find_head(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten()))


def test_head_that_does_not_run_is_reported() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.unused = nn.Linear(4, 2)  # registered last but never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net = Net()
    cap = ActivationCapture.acquire(net, owner="t", max_samples=8)
    try:
        cap.begin_epoch("e0")
        cap.arm("t")
        net(torch.randn(3, 4))
        with pytest.raises(HeadNotFoundError, match="head='<name>'"):
            cap.collect(None, None, 0)
    finally:
        ActivationCapture.release(net, owner="t")


def test_two_owners_on_one_layer_share_one_hook_and_one_copy() -> None:
    net = small_net()
    a = ActivationCapture.acquire(net, owner="a", layers=["0"], max_samples=16)
    b = ActivationCapture.acquire(net, owner="b", layers=["0", "2"], max_samples=32)
    assert a is b
    assert len(net[0]._forward_hooks) == 1
    assert len(net[2]._forward_hooks) == 1
    assert len(net[8]._forward_hooks) == 1  # the head
    assert a.capacity == 32
    ActivationCapture.release(net, owner="b")
    assert len(net[2]._forward_hooks) == 0 and len(net[0]._forward_hooks) == 1
    ActivationCapture.release(net, owner="a")
    assert all(len(m._forward_hooks) == 0 for m in net.modules())
    assert ActivationCapture.get(net) is None


def test_reservoir_is_bounded_uniform_and_the_same_samples_every_epoch() -> None:
    net = small_net().eval()
    cap = ActivationCapture.acquire(net, owner="o", layers=["2"], max_samples=20, needs_inputs=True)
    try:
        data = torch.randn(100, 3, 5, 5)
        kept = []
        for epoch in range(2):
            cap.begin_epoch(("val", epoch))
            cap.arm("o")
            with torch.no_grad():
                for i, batch in enumerate(data.split(16)):
                    net(batch)
                    cap.collect(batch, torch.full((len(batch),), i), ("b", i))
                    cap.collect(batch, None, ("b", i))  # a second caller of the same batch adds nothing
            cap.disarm()
            sample = cap.sample()
            assert len(sample) == 20
            # rows are the rows of the data they claim to be
            assert torch.equal(sample.inputs, data[sample.ids])
            with torch.no_grad():
                assert torch.allclose(sample.logits, net(data[sample.ids]), atol=1e-6)
                assert torch.allclose(sample.layers["2"], net[:3](data[sample.ids]), atol=1e-6)
            assert torch.equal(sample.labels, sample.ids // 16)
            kept.append(sample.ids)
        assert torch.equal(kept[0], kept[1])
        assert len(set(kept[0].tolist())) == 20
        # a smaller request is a subset of the larger sample
        assert set(cap.sample(5).ids.tolist()) <= set(kept[0].tolist())
    finally:
        ActivationCapture.release(net, owner="o")


def test_reservoir_spreads_over_the_whole_epoch() -> None:
    net = small_net().eval()
    cap = ActivationCapture.acquire(net, owner="o", max_samples=200)
    try:
        cap.begin_epoch(0)
        cap.arm("o")
        with torch.no_grad():
            for i in range(50):
                net(torch.randn(40, 3, 4, 4))
                cap.collect(None, None, i)
        ids = cap.sample().ids.float()
        # 200 of 2000 ids; a uniform sample has mean ~1000 (sd ~ 577/sqrt(200) = 41)
        assert abs(ids.mean().item() - 999.5) < 4 * 41
        assert (ids < 1000).sum().item() in range(70, 131)
    finally:
        ActivationCapture.release(net, owner="o")


@pytest.mark.parametrize(
    ("capacity", "batches"), [(20, [16] * 7), (20, [50, 3, 1]), (64, [16] * 4), (64, [16] * 3), (7, [7])]
)
def test_sample_is_the_bottom_k_of_the_hashed_ids_whatever_the_batching(
    capacity: int, batches: list[int]
) -> None:
    from lightning_xai.capture import _sample_keys

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    cap = ActivationCapture.acquire(net, owner="o", max_samples=capacity, needs_inputs=True)
    try:
        total = sum(batches)
        data = torch.randn(total, 1, 2, 2)
        cap.begin_epoch(0)
        cap.arm("o")
        with torch.no_grad():
            for i, batch in enumerate(data.split(batches)):
                net(batch)
                cap.collect(batch, None, i)
        sample = cap.sample()
        keys = _sample_keys(torch.arange(total), 0)
        # the ids of the smallest keys (all of them when they fit), sorted by id
        expected = torch.argsort(keys)[:capacity].sort().values
        assert torch.equal(sample.ids, expected)
        assert torch.equal(sample.inputs, data[expected])
        assert torch.equal(cap.sample().ids, expected)  # reading twice gives the same sample
    finally:
        ActivationCapture.release(net, owner="o")


def test_disarmed_capture_stores_nothing() -> None:
    net = small_net()
    cap = ActivationCapture.acquire(net, owner="o", max_samples=8)
    try:
        cap.begin_epoch(0)
        net(torch.randn(4, 3, 4, 4))
        cap.collect(None, None, 0)
        assert cap.sample() is None
    finally:
        ActivationCapture.release(net, owner="o")


def test_forward_from_layer_reproduces_logits_and_gives_layer_gradients() -> None:
    net = small_net().eval()
    x = torch.randn(5, 3, 6, 6)
    act = net[:3](x).detach().requires_grad_(True)
    logits = forward_from_layer(net, "2", act, x)
    assert torch.allclose(logits, net(x), atol=1e-6)
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), act)
    assert grad.shape == act.shape and grad.abs().sum() > 0
    # the gradient does not depend on the input that ran upstream
    logits_other = forward_from_layer(net, "2", act, torch.randn(5, 3, 6, 6))
    assert torch.allclose(logits, logits_other)
    # tiled inputs for batched steps
    steps = torch.cat([act * 0.5, act]).detach()
    out = forward_from_layer(net, "2", steps, x)
    assert out.shape == (10, 3) and torch.allclose(out[5:], logits, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        forward_from_layer(net, "2", act[:3], x[:2])
    assert all(len(m._forward_hooks) == 0 for m in net.modules())


class _SkipNet(nn.Module):
    """A residual block around the explained layer ``body``: downstream adds the upstream batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body, self.head = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Linear(4, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        return self.head((torch.relu(self.body(s)) + s).mean((2, 3)))


class _BatchViewNet(nn.Module):
    """Flattens with the input's batch size, read before the explained layer ``act``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.act, self.head = nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return self.head(self.act(self.stem(x)).reshape(b, -1))


class _ViewNet(nn.Module):
    """Flattens a feature map with ``.view()``, which a channels-last map does not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_run_model_feeds_cpu_images_channels_last_and_falls_back_for_models_that_cannot_take_them() -> None:
    from lightning_xai.running import _CONTIGUOUS_ONLY, run_model

    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    for net in (small_net().eval(), _BatchViewNet().eval()):
        layouts: list[bool] = []
        first = net[0] if isinstance(net, nn.Sequential) else net.stem
        first.register_forward_pre_hook(
            lambda mod, args, seen=layouts: seen.append(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )
        with torch.no_grad():
            assert torch.allclose(run_model(net, x), net(x), atol=1e-6)  # the same logits either way
        assert layouts[0] is True and net not in _CONTIGUOUS_ONLY
    # reshape(batch, -1) of a channels-last map works, .view does not: that model falls back and is remembered
    view_net = _ViewNet().eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        run_model(view_net, torch.randn(4, 3, 8, 8), retry_contiguous=False)
    assert view_net not in _CONTIGUOUS_ONLY
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            run_model(view_net, torch.randn(4, 5, 8, 8))  # fits neither way: the model's own error
        assert view_net not in _CONTIGUOUS_ONLY
        out = run_model(view_net, torch.randn(4, 3, 8, 8))
    assert out.shape == (4, 3) and view_net in _CONTIGUOUS_ONLY
    assert run_model(nn.Linear(3, 2), torch.randn(5, 3)).shape == (5, 2)  # not images: called as it is


@pytest.mark.parametrize(
    ("kind", "layer", "upstream_batches"),
    [
        ("sequential", "2", [5, 5]),  # upstream once for the k tiles, once for the check
        ("skip", "body", [5, 15]),  # the untiled pass fails on the skip connection: tiled
        ("batch_view", "act", [5, 15]),  # reshape(batch, -1) breaks the untiled pass: tiled
    ],
)
def test_forward_from_layer_runs_upstream_once_where_that_is_exact(
    kind: str, layer: str, upstream_batches: list[int]
) -> None:
    torch.manual_seed(0)
    net = {"sequential": small_net, "skip": _SkipNet, "batch_view": _BatchViewNet}[kind]().eval()
    x = torch.randn(5, 3, 6, 6)
    first = net[0] if kind == "sequential" else net.stem
    seen: list[int] = []
    first.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    with torch.no_grad():
        captured = {}
        handle = resolve_layer(net, layer).register_forward_hook(lambda m, a, o: captured.__setitem__("a", o))
        net(x)
        handle.remove()
    seen.clear()
    steps = torch.cat([captured["a"] * 0.25, captured["a"] * 0.5, captured["a"]]).requires_grad_(True)
    out = forward_from_layer(net, layer, steps, x)
    assert seen == upstream_batches
    # the same as running each tile on its own inputs, values and gradients
    expected = torch.cat([forward_from_layer(net, layer, steps[k * 5 : (k + 1) * 5], x) for k in range(3)])
    assert torch.allclose(out, expected, atol=1e-6)
    (g,) = torch.autograd.grad(out[:, 1].sum(), steps)
    (g_ref,) = torch.autograd.grad(expected[:, 1].sum(), steps)
    assert torch.allclose(g, g_ref, atol=1e-6)


@pytest.mark.parametrize("outer", ["no_grad", "inference_mode"])
def test_explanation_mode_restores_modes_flags_and_grads(outer: str) -> None:
    net = small_net().train()
    net[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    net[0].weight.requires_grad_(False)
    net(torch.randn(2, 3, 4, 4)).sum().backward()
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in net.named_parameters()}
    modes = {n: m.training for n, m in net.named_modules()}
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    ctx = torch.no_grad() if outer == "no_grad" else torch.inference_mode()
    with ctx:
        captured = torch.randn(3, 3, 4, 4) * 1.0  # made under the outer context
        with explanation_mode(net):
            assert not any(m.training for m in net.modules())
            x = captured.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(net(x)[:, 0].sum(), x)
            assert g.abs().sum() > 0
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    for n, p in net.named_parameters():
        assert (p.grad is None) == (grads[n] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n])


def test_explanation_mode_restores_after_an_exception() -> None:
    net = small_net().train()
    with pytest.raises(KeyError), explanation_mode(net):
        raise KeyError("boom")
    assert all(m.training for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())


def test_default_batch_to_input_reads_common_batches_and_explains_others() -> None:
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    assert default_batch_to_input(x)[0] is x
    assert default_batch_to_input((x, y))[1] is y
    assert default_batch_to_input({"image": x, "label": y})[1] is y
    with pytest.raises(TypeError, match="batch_to_input=lambda batch"):
        default_batch_to_input({"foo": x})
    with pytest.raises(TypeError, match="keys \\['foo'\\]"):
        default_batch_to_input({"foo": x})


def test_folded_batchnorm_gives_the_same_outputs_and_puts_every_module_back() -> None:
    from lightning_xai.world import TinyCNN

    torch.manual_seed(0)
    net = TinyCNN(num_classes=6)
    net.train()
    net(torch.rand(32, 3, 64, 64))  # running statistics that are not the initial ones
    net.eval()
    x = torch.rand(8, 3, 64, 64)
    modules = list(net.modules())
    params = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.random.get_rng_state()
    with torch.no_grad():
        plain = net(x)
        with folded_batchnorm(net) as n:
            folded = net(x)
            assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert n == 5  # one per conv block
    assert torch.allclose(folded, plain, rtol=1e-4, atol=1e-5) and not torch.equal(folded, plain)
    assert list(net.modules()) == modules  # the very same objects, in place again
    assert all(torch.equal(v, params[k]) for k, v in net.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)

    # nothing is folded while autograd records, for a batch norm in training mode, or for a hooked pair
    with folded_batchnorm(net) as n:
        assert n == 0
    seen = []
    net.conv2[1].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    net.conv3.train()
    with torch.no_grad(), folded_batchnorm(net) as n:
        net(x)
    assert n == 3 and len(seen) == 1  # conv2 (hooked) and conv3 (training) keep their batch norms
