"""Finding the feature map a symbolic model reads: the last spatial map before the classifier head."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_xai.capture import find_head
from lightning_xai.feature_maps import FeatureMapError, feature_maps, last_token_layer

__all__ = ["find_feature_layer"]


def find_feature_layer(model: nn.Module, example: Tensor, head: str | None = None) -> str:
    """The last (outermost) layer before the head whose output is a spatial feature map.

    ``"conv5"`` for :class:`~lightning_xai.world.TinyCNN`, ``"layer4"`` for a torchvision ResNet (see
    :func:`lightning_xai.feature_maps.feature_maps`); for a vision transformer, the last layer whose patch
    tokens still move the logits (:func:`lightning_xai.feature_maps.last_token_layer`), its tokens read on
    the patch grid.

    Raises:
        FeatureMapError: no layer outputs a spatial map before the head.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> find_feature_layer(net, torch.zeros(1, 3, 8, 8))
        '1'
    """
    _, head_module = find_head(model, head)
    tokens = last_token_layer(model, example, head_module)
    if tokens is not None:
        return tokens
    shapes = feature_maps(model, example, head_module)
    if not shapes:
        raise FeatureMapError(
            f"{type(model).__name__} has no layer that outputs a spatial feature map [N, C, H, W] (H * W > 1) before "
            "its head; the symbolic explanation reads one token per channel of such a map."
        )
    return list(shapes)[-1]
