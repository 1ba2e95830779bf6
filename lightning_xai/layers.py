"""Finding what explainers read in a model: a layer by dotted name, the classifier head, a hook's tensor.

Plain PyTorch (no Lightning import).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
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
    """No classifier head can be found: the model has no ``nn.Linear`` and ``head=`` names none."""


# --------------------------------------------------------------------------------------------- layers


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module of ``model`` called ``name`` (dotted path, as in ``named_modules``).

    A module compiled with ``torch.compile`` keeps its sub-modules under ``_orig_mod``; they are found with
    or without that part (``"backbone.block2"`` and ``"backbone._orig_mod.block2"`` are the same layer).

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
    plain = uncompiled_names(modules)
    if name in plain:
        return plain[name]
    valid = [n for n in {**modules, **plain} if n and not _is_compiled_name(n)]
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    hint = f" Closest valid names: {close}." if close else ""
    shown = valid if len(valid) <= 30 else valid[:15] + ["..."] + valid[-10:]
    raise LayerNotFoundError(
        f"Layer {name!r} is not a sub-module of {type(model).__name__}.{hint} "
        f"Valid names ({len(valid)}): {shown}"
    )


_COMPILED = "_orig_mod"


def _is_compiled_name(name: str) -> bool:
    return _COMPILED in name.split(".")


def uncompiled_names(modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The sub-modules of compiled modules by their names without ``_orig_mod`` (``torch.compile`` wraps a module
    in an ``OptimizedModule`` that holds the original as ``_orig_mod``); the wrapper keeps its own name."""
    out = {}
    for name, module in modules.items():
        parts = name.split(".")
        if _COMPILED in parts and parts[-1] != _COMPILED:
            out[".".join(p for p in parts if p != _COMPILED)] = module
    return out


def find_head(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """Find the classifier head: the module called ``name``, else the last ``nn.Linear``.

    A named head may be any module whose output is the logits: an ``nn.Linear``, a 1x1 convolution with
    pooling in an ``nn.Sequential``, a module returning a tuple, a dict or an object with ``.logits``; its
    input is the explained "features". Without a name, the head is the last ``nn.Linear`` in registration
    order, which is the last one on the forward path for ordinary classifiers (ResNet ``fc``, MobileNet
    ``classifier.3``). The shared capture checks on the first batch that this module really ran; if it
    did not, it asks for ``head=``. Methods that read the weights of a linear head (VisionLogic) check
    for an ``nn.Linear`` themselves.

    Raises:
        HeadNotFoundError: no name, and the model has no ``nn.Linear``.
        LayerNotFoundError: ``name`` is not a sub-module.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> find_head(net)[0]
        '3'
    """
    if name is not None:
        return name, resolve_layer(model, name)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        children = [n for n, _ in model.named_children()]
        raise HeadNotFoundError(
            f"{type(model).__name__} has no nn.Linear layer, so its classifier head cannot be guessed. Pass "
            "head='<name>' naming the module whose output is the logits (a 1x1-convolution head, an "
            f"nn.Sequential...); its input is what is explained as the features. Top-level modules: {children}"
        )
    return linears[-1]


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def first_tensor(value: Any, where: str = "the module") -> Tensor:
    """A module's output as one tensor: the tensor itself, the first element of a tuple or list, the
    ``"logits"`` entry of a dict (else its first tensor), or the ``.logits`` of an output object (as
    Hugging Face models return).

    Raises:
        TypeError: ``value`` holds no tensor there (the message names ``where``).

    Example:
        >>> import torch
        >>> first_tensor((torch.zeros(2), None)).shape
        torch.Size([2])
        >>> first_tensor({"aux": torch.zeros(1), "logits": torch.zeros(3)}).shape
        torch.Size([3])
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if isinstance(value, Mapping):
        if isinstance(value.get("logits"), Tensor):
            return value["logits"]
        found = next((v for v in value.values() if isinstance(v, Tensor)), None)
        if found is not None:
            return found
    if isinstance(getattr(value, "logits", None), Tensor):
        return value.logits
    raise TypeError(
        f"{where} produced {type(value).__name__}, expected a Tensor (or a tuple starting with one, a dict with "
        "'logits', an object with .logits)."
    )
