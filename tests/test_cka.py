"""Linear CKA: identity, invariances, agreement of the estimators, and the metric's reduction."""

from __future__ import annotations

import pytest
import torch

from lightning_xai.drift import MinibatchCKA, linear_cka, minibatch_cka


@pytest.fixture()
def features() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 24, generator=g) @ torch.randn(24, 24, generator=g)


@pytest.mark.parametrize("fn", [linear_cka, lambda x, y: linear_cka(x, y, unbiased=True), minibatch_cka])
def test_cka_of_identical_features_is_one(fn, features: torch.Tensor) -> None:
    assert fn(features, features) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("fn", [linear_cka, minibatch_cka])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(fn, features: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    other = features @ torch.randn(24, 10, generator=g) + torch.randn(300, 10, generator=g)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    base = fn(features, other)
    assert 0.05 < base < 0.999
    assert fn(features.double() @ q, other) == pytest.approx(base, abs=1e-9)
    assert fn(7.5 * features, other) == pytest.approx(base, abs=1e-9)
    assert fn(features, 0.01 * other) == pytest.approx(base, abs=1e-9)


def test_cka_is_not_invariant_to_anisotropic_scaling(features: torch.Tensor) -> None:
    other = features[:, :12] + 0.5 * torch.randn(300, 12)
    scale = torch.ones(24)
    scale[:12] = 20.0
    assert abs(linear_cka(features, other) - linear_cka(features * scale, other)) > 0.01


def test_cka_of_independent_features_is_near_zero_unbiased() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    assert abs(minibatch_cka(x, y, batch_size=500)) < 0.02
    # the biased estimator is inflated for n not >> p
    assert linear_cka(x[:100], y[:100]) > abs(linear_cka(x[:100], y[:100], unbiased=True))


def test_minibatch_estimate_close_to_full_batch_unbiased(features: torch.Tensor) -> None:
    other = features[:, :8] + torch.randn(300, 8)
    full = linear_cka(features, other, unbiased=True)
    assert minibatch_cka(features, other, batch_size=100) == pytest.approx(full, abs=0.05)
    assert minibatch_cka(features, other, batch_size=300) == pytest.approx(full, abs=1e-9)


def test_metric_sums_states_so_ddp_reduction_is_exact(features: torch.Tensor) -> None:
    other = features[:, :8] + torch.randn(300, 8)
    whole, part_a, part_b = MinibatchCKA(), MinibatchCKA(), MinibatchCKA()
    for i, (xa, ya) in enumerate(zip(features.split(50), other.split(50))):
        whole.update(xa, ya)
        (part_a if i % 2 else part_b).update(xa, ya)
    # what dist_reduce_fx="sum" does across two ranks
    merged = MinibatchCKA()
    merged.merge_state(part_a)
    merged.merge_state(part_b)
    assert float(merged.compute()) == pytest.approx(float(whole.compute()), abs=1e-6)


def test_cka_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(ValueError, match="at least 4"):
        minibatch_cka(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="before any update"):
        MinibatchCKA().compute()


@pytest.mark.slow
def test_cka_of_trained_world_model_drops_against_a_reinitialised_copy(
    trained_world, trained_model_copy
) -> None:
    from lightning_xai.world import random_set

    images = random_set(256, seed=3)
    model = trained_model_copy
    with torch.no_grad():
        trained = model.head_input(images)
        again = model.head_input(images)
        torch.manual_seed(7)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        fresh = model.head_input(images)
    assert minibatch_cka(trained, again) == pytest.approx(1.0, abs=1e-9)
    assert minibatch_cka(trained, fresh, batch_size=128) < 0.5
