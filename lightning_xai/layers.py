"""Finding what explainers read in a model: a layer by dotted name, the classifier head, a hook's tensor.

Plain PyTorch (no Lightning import).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import Tensor, nn

__all__ = [
    "HEAD_FEATURES",
    "HEAD_LOGITS",
    "HeadNotFoundError",
    "LayerNotFoundError",
    "find_head",
    "first_tensor",
    "resolve_layer",
]

HEAD_FEATURES = "features"
HEAD_LOGITS = "logits"


class LayerNotFoundError(ValueError):
    """A layer name that is not a sub-module of the model."""


class HeadNotFoundError(ValueError):
    """The model has no usable ``nn.Linear`` classifier head."""


# --------------------------------------------------------------------------------------------- layers


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module of ``model`` called ``name`` (dotted path, as in ``named_modules``).

    Args:
        model: the network.
        name: dotted path such as ``"layer4.1.conv2"`` or ``"fc"``.

    Raises:
        LayerNotFoundError: ``name`` is not a sub-module; the message lists the closest valid names.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer(net, "0")
        Conv2d(3, 4, kernel_size=(3, 3), stride=(1, 1))
    """
    if not isinstance(name, str) or not name:
        raise LayerNotFoundError(f"Expected a layer name as a non-empty string, but got {name!r}.")
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    valid = [n for n in modules if n]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    hint = f" Closest valid names: {close}." if close else ""
    shown = valid if len(valid) <= 30 else valid[:15] + ["..."] + valid[-10:]
    raise LayerNotFoundError(
        f"Layer {name!r} is not a sub-module of {type(model).__name__}.{hint} "
        f"Valid names ({len(valid)}): {shown}"
    )


def find_head(model: nn.Module, name: str | None = None) -> tuple[str, nn.Linear]:
    """Find the classifier head: the ``nn.Linear`` called ``name``, else the last ``nn.Linear``.

    Without a name, the head is the last ``nn.Linear`` in registration order, which is the last one on
    the forward path for ordinary classifiers (ResNet ``fc``, MobileNet ``classifier.3``). The shared
    capture checks on the first batch that this module really ran; if it did not, it asks for
    ``head=``.

    Raises:
        HeadNotFoundError: no ``nn.Linear`` exists, or ``name`` is not one.
        LayerNotFoundError: ``name`` is not a sub-module.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> find_head(net)[0]
        '3'
    """
    if name is not None:
        module = resolve_layer(model, name)
        if not isinstance(module, nn.Linear):
            raise HeadNotFoundError(
                f"head={name!r} is a {type(module).__name__}, not an nn.Linear. Name the linear layer "
                f"that produces the logits; linear layers of this model: {_linear_names(model)}"
            )
        return name, module
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise HeadNotFoundError(
            f"{type(model).__name__} has no nn.Linear layer, so no classifier head can be found. "
            "lightning-xai explains the input of a linear head (the 'features') and its logits; add an "
            "nn.Linear head, or pass head='<name of the linear layer>' if it is wrapped."
        )
    return linears[-1]


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def first_tensor(value: Any, where: str = "the module") -> Tensor:
    """A module's output as one tensor: the tensor itself, or the first element of a tuple or list.

    Raises:
        TypeError: ``value`` holds no tensor there (the message names ``where``).

    Example:
        >>> import torch
        >>> first_tensor((torch.zeros(2), None)).shape
        torch.Size([2])
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(
        f"{where} produced {type(value).__name__}, expected a Tensor (or a tuple starting with one)."
    )
