"""Which layers of a model output a spatial feature map, and which of them is the last before the head.

One probe forward pass serves TCAV's default layer, VisionLogic's grounding layer and the symbolic
tree's feature layer, so the three agree on what "the last feature map" of a model is. Plain PyTorch (no
Lightning import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.layers import first_tensor
from lightning_xai.running import explanation_mode

__all__ = [
    "FeatureMapError",
    "LayerOutput",
    "feature_maps",
    "is_feature_map",
    "last_token_layer",
    "model_device",
    "probe_outputs",
    "select_feature_maps",
]


class FeatureMapError(ValueError):
    """A model or layer has no spatial feature map where an explainer needs one."""


@dataclass(frozen=True)
class LayerOutput:
    """What one module produced on a probe forward pass.

    Attributes:
        shape: shape of its (first) tensor output at its last call.
        calls: how many times it ran in the forward pass (a shared ``ReLU`` runs more than once).
        after_head: its last call started after the classifier head had started.
    """

    shape: tuple[int, ...]
    calls: int
    after_head: bool


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without either.

    Example:
        >>> model_device(nn.Linear(2, 2)).type
        'cpu'
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def is_feature_map(shape: tuple[int, ...]) -> bool:
    """``[N, C, H, W]`` with more than one position (``H * W > 1``).

    Example:
        >>> is_feature_map((1, 8, 4, 4)), is_feature_map((1, 8, 1, 1)), is_feature_map((1, 8))
        (True, False, False)
    """
    return len(shape) == 4 and shape[2] * shape[3] > 1


def probe_outputs(model: nn.Module, example: Tensor, head: nn.Module | None = None) -> dict[str, LayerOutput]:
    """Run ``example[:1]`` once (eval mode, no grad, model restored after) and describe every module's output.

    Keys are dotted module names in the order of their last call's completion, so a block comes after its
    children and, among modules with the same output, the last is the outermost. Modules whose output holds
    no tensor are left out; ``head`` itself is left out.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
        >>> {k: v.shape for k, v in probe_outputs(net, torch.zeros(1, 3, 8, 8), head=net[2]).items()}
        {'0': (1, 4, 6, 6), '1': (1, 144)}
    """
    outputs: dict[str, LayerOutput] = {}
    started = [False]
    handles = []

    def on_head(module: nn.Module, args: tuple) -> None:
        started[0] = True

    for name, module in model.named_modules():
        if not name or module is head:
            continue

        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name) -> None:
            try:
                t = first_tensor(out)
            except TypeError:
                return
            calls = outputs.pop(name).calls + 1 if name in outputs else 1
            outputs[name] = LayerOutput(tuple(t.shape), calls, started[0])

        handles.append(module.register_forward_hook(hook))
    if head is not None:
        handles.append(head.register_forward_pre_hook(on_head))
    try:
        with explanation_mode(model), torch.no_grad():
            model(example[:1].to(model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return outputs


def feature_maps(
    model: nn.Module, example: Tensor, head: nn.Module | None = None
) -> dict[str, tuple[int, ...]]:
    """Layers that output a spatial feature map ``[N, C, H, W]`` (``H * W > 1``), run once, and finish before
    ``head`` starts (any layer when ``head`` is ``None``), in completion order (see :func:`probe_outputs`).

    A module that runs more than once per forward pass (a shared ``ReLU``) is left out: a hook on it would
    see several outputs. The last entry is the model's last feature map before its head.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> feature_maps(net, torch.zeros(1, 3, 8, 8), head=net[4])
        {'0': (1, 4, 6, 6), '1': (1, 4, 6, 6)}
    """
    return select_feature_maps(probe_outputs(model, example, head))


def select_feature_maps(outputs: dict[str, LayerOutput]) -> dict[str, tuple[int, ...]]:
    """The entries of a :func:`probe_outputs` result that :func:`feature_maps` keeps, with their shapes."""
    return {
        name: out.shape
        for name, out in outputs.items()
        if out.calls == 1 and not out.after_head and is_feature_map(out.shape)
    }


def last_token_layer(model: nn.Module, example: Tensor, head: nn.Module | None = None) -> str | None:
    """For a vision transformer (a model that declares prefix tokens, see
    :func:`~lightning_xai.token_layout.prefix_tokens`): the last module before the head whose output is tokens
    on a patch grid and whose *patch* tokens still move the logits; ``None`` for other models.

    After the last attention, patch tokens no longer reach a class-token readout (the last block's output and
    its MLP change each token alone), so maps read there explain nothing. One gradient probe on ``example[:1]``
    finds the modules whose patch tokens still reach what the head reads; of those, the last block of the
    model's stack of blocks (its output is the residual stream: for a class-token readout the next-to-last
    block, with mean pooling over the patch tokens the last one), else the last such module.
    """
    from lightning_xai.token_layout import prefix_tokens, spatial_layout

    if prefix_tokens(model) is None:
        return None
    outputs = probe_outputs(model, example, head)
    candidates = []
    for name, out in outputs.items():
        layout = spatial_layout(model, out.shape[1:]) if len(out.shape) == 3 else None
        if out.calls == 1 and not out.after_head and layout is not None and layout.kind == "tokens":
            candidates.append((name, layout.prefix))
    if not candidates:
        return None
    modules = dict(model.named_modules())
    reach: dict[str, float] = {}
    handles = []
    for name, prefix in candidates:

        def hook(mod: nn.Module, args: tuple, out: Any, name: str = name, prefix: int = prefix) -> None:
            t = first_tensor(out)
            if t.requires_grad:
                t.register_hook(lambda g: reach.__setitem__(name, float(g[:, prefix:].abs().sum())))

        handles.append(modules[name].register_forward_hook(hook))
    # what the head reads (its input; a fresh head may be all zeros, as torchvision's is, and pass no gradient)
    read: list[Tensor] = []
    if head is not None:
        handles.append(head.register_forward_pre_hook(lambda mod, args: read.append(first_tensor(args))))
    try:
        with explanation_mode(model):
            x = example[:1].to(model_device(model)).clone().requires_grad_(True)
            out = first_tensor(model(x))
            target = (read[-1] if read else out).float().pow(2).sum()
            torch.autograd.grad(target, x, allow_unused=True)  # fills `reach`
    finally:
        for h in handles:
            h.remove()
    reaching = [name for name, _ in candidates if reach.get(name, 0.0) > 0]
    # a block of the stack (its output is the residual stream) rather than a norm inside the next block, which
    # feeds that block's attention branch alone
    blocks = [name for name in reaching if name in _stacked_blocks(model)]
    return (blocks or reaching or [None])[-1]


def _stacked_blocks(model: nn.Module) -> set[str]:
    """Names of the children of a stack of at least two modules of one type (a transformer's blocks)."""
    out = set()
    for name, module in model.named_modules():
        children = list(module.named_children())
        stack = isinstance(module, (nn.Sequential, nn.ModuleList)) and len(children) >= 2
        if stack and len({type(c) for _, c in children}) == 1:
            out |= {f"{name}.{c}" if name else c for c, _ in children}
    return out
