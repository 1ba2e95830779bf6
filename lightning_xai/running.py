"""Running a model for an explanation: retries, autocast, folded batch norm, re-entry at a layer, and the
explanation context that restores the model exactly. Plain PyTorch (no Lightning import)."""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.layers import first_tensor, resolve_layer

__all__ = [
    "autocast_context",
    "check_autocast_device",
    "eager",
    "explanation_mode",
    "folded_batchnorm",
    "forward_from_layer",
    "run_model",
    "run_on_generated",
]

# ---------------------------------------------------------------------------------- running the model
# models that cannot take channels-last images (e.g. ``.view()`` on a convolution's output)
_CONTIGUOUS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def run_model(model: nn.Module, x: Tensor, retry_contiguous: bool = True) -> Any:
    """``model(x)`` the way explanation work should call it: on the CPU, a batch of images goes in
    channels-last.

    Convolutions and pooling run faster in that layout on a CPU (a batch of 64 images of 64x64, 2 cores: the
    world's TinyCNN 28 -> 12 ms, MobileNetV3-Small 12.9 -> 10.1 ms, ResNet-18 82 -> 75 ms) and the values,
    read through logical indexing, agree to rounding (1e-6 or less there). A model that fails on
    channels-last images but runs on contiguous ones (e.g. ``.view()`` on a feature map) is remembered and
    gets contiguous images from then on; input that fits neither way raises the model's own error and leaves
    the model eligible. With ``retry_contiguous=False`` a failure in channels-last raises at once (for a pass
    that is allowed to fail, so a failing model is not run twice).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> run_model(net, torch.rand(4, 3, 4, 4)).shape
        torch.Size([4, 2])
    """
    if x.dim() != 4 or x.device.type != "cpu" or model in _CONTIGUOUS_ONLY:
        return model(x)
    try:
        return model(x.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        if not retry_contiguous:
            raise
        out = model(x)  # a real error recurs here, and propagates
        _CONTIGUOUS_ONLY.add(model)
        return out


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def check_autocast_device(dtype: torch.dtype | None, device: torch.device, name: str = "dtype") -> None:
    """Refuse float16 autocast on a CPU: the world's TinyCNN ran 3x slower in it than in float32 (bfloat16: 3.5x
    faster), and many CPU kernels have no float16 version. ``name`` is the argument the message names.

    Raises:
        ValueError: ``dtype`` is ``torch.float16`` and ``device`` a CPU.
    """
    if dtype is torch.float16 and device.type == "cpu":
        raise ValueError(
            f"{name}=torch.float16 needs a GPU (float16 autocast on CPU is slow and unsupported "
            "by many kernels); use torch.bfloat16 or None on CPU"
        )


def autocast_context(
    dtype: torch.dtype | None, device: torch.device, name: str = "dtype"
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type for an explanation pass; a null context for
    ``None`` or float32 (the model's own precision).

    Raises:
        ValueError: float16 on a CPU (:func:`check_autocast_device`).

    Example:
        >>> with autocast_context(torch.bfloat16, torch.device("cpu")):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if dtype is None or dtype is torch.float32:
        return contextlib.nullcontext()
    check_autocast_device(dtype, device, name)
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module) -> Iterator[int]:
    """Within the block, every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in an
    ``nn.Sequential`` is folded into that convolution; yields how many were folded, and puts the original
    modules back afterwards (the model's parameters are never touched).

    In eval mode a batch norm is a fixed affine map per channel, so the pair is one convolution with
    rescaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): the same outputs to float
    rounding, one pass over the activations fewer. For passes that only read outputs, many times (DEPICT
    scores thousands of scenes per epoch): the world's TinyCNN scores a batch of 64 scenes in 15.1 instead of
    16.4 ms (channels-last, medians of 40 interleaved passes).

    Nothing is folded while autograd records (a folded copy must not be trained through or differentiated),
    while global module hooks exist, or for a pair whose convolution or batch norm carries hooks (their
    outputs would change or never come); a batch norm in training mode or without running statistics stays.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> x = torch.rand(2, 3, 8, 8)
        >>> with torch.no_grad(), folded_batchnorm(net) as n:
        ...     folded = net(x)
        >>> n, torch.allclose(folded, net(x), atol=1e-5), isinstance(net[1], nn.BatchNorm2d)
        (1, True, True)
    """
    from torch.nn.modules import module as _module

    swaps: list[tuple[nn.Module, str, str, nn.Module, nn.Module]] = []
    if not (torch.is_grad_enabled() or _module._global_forward_hooks or _module._global_forward_pre_hooks):
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        for seq in model.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            names = list(seq._modules)
            for a, b in itertools.pairwise(names):
                conv, bn = seq._modules[a], seq._modules[b]
                if (
                    type(conv) is nn.Conv2d
                    and type(bn) is nn.BatchNorm2d
                    and not conv.training
                    and not bn.training
                    and bn.running_mean is not None
                    and bn.running_var is not None
                    and conv.out_channels == bn.num_features
                    and not _has_hooks(conv)
                    and not _has_hooks(bn)
                ):
                    swaps.append((seq, a, b, conv, bn))
        for seq, a, b, conv, bn in swaps:
            seq._modules[a] = fuse_conv_bn_eval(conv, bn)
            seq._modules[b] = nn.Identity()
    try:
        yield len(swaps)
    finally:
        for seq, a, b, conv, bn in swaps:
            seq._modules[a] = conv
            seq._modules[b] = bn


# ---------------------------------------------------------------------------------- layer re-entry


def forward_from_layer(
    model: nn.Module,
    layer: str | nn.Module,
    activation: Tensor,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None = None,
) -> Tensor:
    """Run ``model`` with ``layer``'s output replaced by ``activation`` and return the logits.

    The forward pass runs on ``inputs``, and a temporary forward hook swaps the layer's output for
    ``activation``, so everything downstream (and so the gradient) depends on ``activation`` only.
    If ``activation`` has ``k`` times as many rows as ``inputs``, row ``i`` of ``activation`` pairs with
    ``inputs[i % len(inputs)]``; this lets integrated-gradient steps be batched.

    With ``k > 1`` the layers upstream of ``layer`` run once on ``inputs`` (not ``k`` times on tiled
    copies, whose results the hook would throw away): only the downstream part sees ``k * len(inputs)``
    rows. That is exact where nothing downstream reads an upstream tensor of the original batch; a model
    where something does (a skip connection around ``layer``, a ``view(batch, -1)`` with the input's batch
    size) fails that pass or gives different logits for the rows paired with the inputs, which is checked
    against a plain pass, and then the inputs are tiled instead.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> x = torch.randn(5, 4); a = net[1](net[0](x)).requires_grad_(True)
        >>> torch.allclose(forward_from_layer(net, "1", a, x), net(x))
        True
    """
    module = resolve_layer(model, layer) if isinstance(layer, str) else layer
    n, m = inputs.shape[0], activation.shape[0]
    if m == n:
        return _forward_replaced(model, module, activation, inputs, output_fn)
    if m % n:
        raise ValueError(f"activation has {m} rows, which is not a multiple of the {n} input rows.")
    try:
        out = _forward_replaced(model, module, activation, inputs, output_fn, speculative=True)
    except Exception:  # noqa: BLE001 - downstream met the upstream batch (a real error recurs in the tiled pass)
        out = None
    if out is not None and out.shape[0] == m:
        # the last n rows pair with the inputs in order: a plain pass must give the same logits
        with torch.no_grad():
            check = _forward_replaced(model, module, activation[m - n :].detach(), inputs, output_fn)
        if torch.allclose(
            out[m - n :].detach(), check, rtol=1e-4, atol=1e-5 * (1.0 + float(check.abs().max()))
        ):
            return out
    tiled = inputs.repeat(m // n, *([1] * (inputs.dim() - 1)))
    return _forward_replaced(model, module, activation, tiled, output_fn)


def _forward_replaced(
    model: nn.Module,
    module: nn.Module,
    activation: Tensor,
    inputs: Tensor,
    output_fn: Callable[[Any], Tensor] | None,
    speculative: bool = False,
) -> Tensor:
    def replace(mod: nn.Module, args: tuple, output: Any) -> Any:
        out = first_tensor(output, "layer")
        if out.shape[1:] != activation.shape[1:]:
            raise ValueError(
                f"activation shape {tuple(activation.shape[1:])} != layer output shape {tuple(out.shape[1:])}"
            )
        if isinstance(output, Tensor):
            return activation
        return (activation, *output[1:])

    handle = module.register_forward_hook(replace)
    try:
        out = run_model(model, inputs, retry_contiguous=not speculative)
    finally:
        handle.remove()
    return output_fn(out) if output_fn is not None else first_tensor(out, "model")


def run_on_generated(model: nn.Module, images: Tensor, argument: str) -> Any:
    """``run_model`` on images a generator made; a model that cannot read them (another number of channels or
    size than the generator's) is a ``ValueError`` naming their shape and the ``argument`` that adapts them.

    Example:
        >>> import torch, torch.nn as nn
        >>> run_on_generated(nn.Conv2d(1, 2, 3), torch.zeros(1, 3, 8, 8), "transform")
        Traceback (most recent call last):
        ...
        ValueError: The classifier cannot read the generated images of shape [1, 3, 8, 8] ...
    """
    try:
        return run_model(model, images)
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise
        raise ValueError(
            f"The classifier cannot read the generated images of shape {list(images.shape)} ({exc}). Pass "
            f"{argument}=<images -> model inputs> that converts them to what the model was trained on (channels, "
            "size, normalisation), e.g. lambda x: x.mean(1, keepdim=True) for a grayscale model."
        ) from exc


# ----------------------------------------------------------------------------- explanation context


@contextlib.contextmanager
def eager(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, ``model`` runs without ``torch.compile``: each compiled sub-module is replaced by its original
    in its parent, and a LightningModule compiled whole (``trainer.fit(torch.compile(model))``) gets its
    original ``forward`` back. Explanations run other batch sizes, gradient modes and frozen parameters than
    training, and each would make the compiled model recompile; the original computes the same values.
    Everything is put back on exit, so training goes on with the same compiled code.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(torch.compile(nn.Linear(4, 2)))
        >>> with eager(net):
        ...     type(net[0]).__name__
        'Linear'
        >>> type(net[0]).__name__
        'OptimizedModule'
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            original = getattr(child, "_orig_mod", None) if child is not None else None
            if isinstance(original, nn.Module) and type(child).__name__ == "OptimizedModule":
                swapped.append((parent, name, child))
                parent._modules[name] = original
    ctx = getattr(model, "_compiler_ctx", None)
    forward = ctx.get("original_forward") if isinstance(ctx, dict) else None
    compiled_forward = model.__dict__.get("forward") if forward is not None else None
    if forward is not None:
        model.forward = forward  # type: ignore[method-assign]
    try:
        yield model
    finally:
        if forward is not None and compiled_forward is not None:
            model.forward = compiled_forward  # type: ignore[method-assign]
        elif forward is not None:
            del model.forward
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


@contextlib.contextmanager
def explanation_mode(model: nn.Module, freeze_parameters: bool = True) -> Iterator[nn.Module]:
    """Context for explanation work on a live model, safe inside ``fit``, ``validate`` and hooks.

    Inside: autograd is on even under ``torch.no_grad`` or ``torch.inference_mode`` (Lightning
    validates under the latter in ``trainer.validate``), every module is in eval mode and, with
    ``freeze_parameters``, no parameter requires grad (gradients are taken with respect to inputs or
    activations via ``torch.autograd.grad``, never ``.backward()`` into the live model). On exit each
    module's ``training`` flag and each parameter's ``requires_grad`` are restored exactly. A compiled model
    runs its original modules inside (:func:`eager`).

    Tensors captured under inference mode must be cloned inside the block before they enter autograd.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 2), nn.Dropout()).train()
        >>> with torch.inference_mode(), explanation_mode(net):
        ...     x = torch.randn(3, 4, requires_grad=True)
        ...     (g,) = torch.autograd.grad(net(x).sum(), x)
        >>> net.training, all(p.requires_grad for p in net.parameters()), g.shape
        (True, True, torch.Size([3, 4]))
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with torch.inference_mode(False), torch.enable_grad(), eager(model):
            model.eval()
            if freeze_parameters:
                for p, _ in flags:
                    p.requires_grad_(False)
            yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
        for p, req in flags:
            p.requires_grad_(req)
