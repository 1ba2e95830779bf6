"""Pixel-space activation maximisation: the baseline DiffExplainer is compared with."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_xai.capture import explanation_mode

from .optimize import (
    PromptResult,
    Target,
    TargetObjective,
    _check_optimiser_args,
    _progress,
    evaluate_images,
    predicts_target,
)

__all__ = ["PixelImage", "pixel_activation_maximisation", "total_variation"]


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), per image then averaged."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class PixelImage(nn.Module):
    """An image parametrised in pixel space or by a 1/f-scaled Fourier spectrum, squashed to [0, 1].

    The Fourier parametrisation (Olah et al., "Feature Visualization", 2017) scales each frequency's
    coefficient by ``1 / max(f, 1/size)``, so a plain gradient step changes low frequencies more than high
    ones: this decorrelates the pixels and tends to give smoother images than raw pixels.

    Args:
        shape: ``(channels, height, width)``.
        fourier: Use the Fourier parametrisation.
        init_std: Standard deviation of the random initial parameters (0: mid-grey).
        seed: Seed of the initial parameters.
    """

    def __init__(
        self, shape: Sequence[int], fourier: bool = False, init_std: float = 0.01, seed: int = 0
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        self.shape = (c, h, w)
        self.fourier = bool(fourier)
        gen = torch.Generator().manual_seed(int(seed))
        if self.fourier:
            fy = torch.fft.fftfreq(h).abs()[:, None]
            fx = torch.fft.rfftfreq(w)[None, :]
            freq = torch.sqrt(fy**2 + fx**2).clamp_min(1.0 / max(h, w))
            self.register_buffer("scale", (1.0 / freq) / math.sqrt(h * w))
            self.spectrum = nn.Parameter(init_std * torch.randn(1, c, h, w // 2 + 1, 2, generator=gen))
        else:
            self.pixels = nn.Parameter(init_std * torch.randn(1, c, h, w, generator=gen))

    def forward(self) -> Tensor:
        if self.fourier:
            spec = torch.view_as_complex(self.spectrum) * self.scale
            x = torch.fft.irfft2(spec, s=self.shape[1:], norm="ortho")
        else:
            x = self.pixels
        return torch.sigmoid(x)


def _jitter(x: Tensor, pixels: int, gen: torch.Generator) -> Tensor:
    if pixels <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def pixel_activation_maximisation(
    classifier: nn.Module,
    target: int | str | Target,
    image_shape: Sequence[int] = (3, 64, 64),
    *,
    steps: int = 200,
    lr: float = 0.05,
    jitter: int = 4,
    tv_weight: float = 0.05,
    fourier: bool = False,
    early_stop: int | None = 3,
    min_prob: float = 0.9,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    show_progress: bool = False,
) -> PromptResult:
    """Activation maximisation directly in pixel space, with the same objective and step budget as
    :func:`~lightning_xai.diffexplainer.optimize_prompt` (the baseline of DiffExplainer's comparison).

    Each step: jitter the image by a random shift of up to ``jitter`` pixels, run the classifier, and
    take an Adam step on ``objective + tv_weight * total_variation(image)``. ``final_objective`` and the
    returned image are un-jittered.

    Returns:
        A :class:`~lightning_xai.diffexplainer.PromptResult` whose ``prompt`` holds the image parameters
        and whose ``images`` is the one optimised image (no readout).

    Example:
        >>> from lightning_xai.world import TinyCNN
        >>> res = pixel_activation_maximisation(TinyCNN(num_classes=6), target=1, steps=3)
        >>> res.images.shape, len(res.loss_curve)
        (torch.Size([1, 3, 64, 64]), 3)
    """
    target = Target.parse(target)
    _check_optimiser_args(steps, lr, early_stop, min_prob, 0.0)
    if isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0:
        raise ValueError(f"jitter must be an integer >= 0 (pixels), got {jitter!r}")
    if not float(tv_weight) >= 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight!r}")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (channels, height, width), got {tuple(image_shape)}")
    preprocess = preprocess or (lambda x: x)
    device = (
        torch.device(device)
        if device is not None
        else next(iter(classifier.parameters()), torch.empty(0)).device
    )
    image = PixelImage(image_shape, fourier=fourier, seed=seed).to(device)
    params = list(image.parameters())
    gen = torch.Generator().manual_seed(int(seed))
    with explanation_mode(classifier):
        objective = TargetObjective(classifier, target, image().detach(), preprocess)
        optimiser = torch.optim.Adam(params, lr=float(lr))
        curve: list[float] = []
        streak, stopped = 0, False
        bar = _progress(steps, f"pixel AM {target.label}", show_progress)
        try:
            for _ in range(steps):
                x = image()
                value, logits = objective(_jitter(x, jitter, gen))
                loss = value + float(tv_weight) * total_variation(x)
                grads = torch.autograd.grad(loss, params)
                curve.append(float(value.detach()))
                if target.kind == "class" and early_stop is not None:
                    streak = streak + 1 if predicts_target(logits, target.index, min_prob) else 0
                for p_, g in zip(params, grads):
                    p_.grad = g
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
                if bar is not None:
                    bar.update(1)
                if early_stop is not None and streak >= early_stop:
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
        with torch.no_grad():
            final = image().detach()
        value, probs, preds = evaluate_images(objective, final)
    return PromptResult(
        target=target,
        prompt=torch.cat([p.detach().flatten() for p in params]).cpu(),
        images=final.cpu(),
        loss_curve=curve,
        initial_objective=curve[0],
        final_objective=value,
        steps=len(curve),
        stopped_early=stopped,
        readout=None,
        probabilities=probs,
        predicted=preds,
        image_objective=value,
    )
