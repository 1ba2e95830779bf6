"""Finding the feature map a symbolic model reads: the last spatial map before the classifier head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_xai.capture import find_head

from .config import FeatureMapError

__all__ = ["feature_maps_before_head", "find_feature_layer"]


def feature_maps_before_head(
    model: nn.Module, example: Tensor, head: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Output shapes of the layers that produce a spatial map ``[N, C, H, W]`` (``H * W > 1``) and finish
    before the head starts, in the order they finish (one forward pass of ``example[:1]``, no grad;
    the model's mode is left as it is).
    """
    _, head_module = find_head(model, head)
    started = [False]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [head_module.register_forward_pre_hook(lambda m, a: started.__setitem__(0, True))]

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: object) -> None:
            out = output[0] if isinstance(output, (tuple, list)) and output else output
            if (
                started[0]
                or not isinstance(out, Tensor)
                or out.dim() != 4
                or out.shape[2] * out.shape[3] <= 1
            ):
                return
            shapes.pop(name, None)  # a module that runs twice counts where it last finished
            shapes[name] = tuple(out.shape)

        return record

    for name, module in model.named_modules():
        if name and module is not head_module:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    return shapes


def find_feature_layer(model: nn.Module, example: Tensor, head: str | None = None) -> str:
    """The last (outermost) layer before the head whose output is a spatial feature map.

    ``"conv5"`` for :class:`~lightning_xai.world.TinyCNN`, ``"layer4"`` for a torchvision ResNet.

    Raises:
        FeatureMapError: no layer outputs a spatial map before the head.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_feature_layer(net, torch.zeros(1, 3, 8, 8))
        '1'
    """
    shapes = feature_maps_before_head(model, example, head)
    if not shapes:
        raise FeatureMapError(
            f"{type(model).__name__} has no layer that outputs a spatial feature map [N, C, H, W] (H * W > 1) before "
            "its head; the symbolic explanation reads one token per channel of such a map."
        )
    return list(shapes)[-1]
