"""Activations and gradients at named layers, in batched passes, with a per-model-state cache.

* :func:`layer_activations`: one batched forward over a set of images, with forward hooks on every
  requested layer at once (no gradients).
* :func:`layer_gradients`: activations and, per image, the gradient of *its own target class's* logit
  with respect to each requested layer (one forward and one backward per batch; rows are independent
  in eval mode, so one backward serves every class).
* :func:`last_feature_map_layer`: the default layer: the last module that runs exactly once and outputs a
  spatial feature map ``[B, C, H, W]`` with ``H * W > 1`` (``conv5`` of the world's TinyCNN,
  ``layer4`` of a torchvision ResNet).
* :class:`ActivationCache`: activations keyed by (model state, layer, fingerprint of the images). The
  model state is a token the caller sets once per epoch (or, by default, the version counters of the
  model's parameters and buffers, which every optimiser step bumps), so cached activations never outlive
  the weights they came from, and changed images never hit an old entry.

Gradients are taken with ``torch.autograd.grad`` with respect to activations only; parameters are frozen
for the duration (:func:`lightning_xai.capture.explanation_mode`), so no ``.grad`` of the model is touched.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_xai.capture import (
    HeadNotFoundError,
    explanation_mode,
    find_head,
    first_tensor,
    resolve_layer,
    run_model,
)
from lightning_xai.feature_maps import feature_maps, last_token_layer, model_device
from lightning_xai.tcav.data import fingerprint

__all__ = [
    "ActivationCache",
    "last_feature_map_layer",
    "layer_activations",
    "layer_gradients",
    "model_device",
    "model_version",
]


def model_version(model: nn.Module) -> tuple:
    """A cheap token of the model's current weights: ``(id, version counter)`` of every parameter/buffer.

    Every in-place update (optimiser steps, ``load_state_dict``, BatchNorm running statistics) bumps a
    tensor's version counter, so the token changes whenever the model's function may have changed.

    Example:
        >>> net = nn.Linear(2, 2); v = model_version(net)
        >>> with torch.no_grad(): _ = net.weight.add_(1.0)
        >>> v == model_version(net)
        False
    """
    return tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers()))


class _Hooks:
    """Forward hooks that keep the latest output of each named layer (optionally still in the graph).

    With ``detach=False`` the first hooked output that is not yet in a graph becomes a leaf that requires
    grad: gradients with respect to the hooked layers then need no graph before the earliest of them, so
    the layers in front run without autograd (the input need not require grad).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], detach: bool) -> None:
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {name: 0 for name in layers}
        self.handles = []
        for name in layers:
            module = resolve_layer(model, name)

            def hook(mod: nn.Module, args: tuple, output: Any, name: str = name) -> Any:
                out = first_tensor(output, f"Layer {name!r}")
                self.calls[name] += 1
                if detach:
                    self.outputs[name] = out.detach()
                    return None
                if out.requires_grad or not torch.is_grad_enabled():
                    self.outputs[name] = out
                    return None
                leaf = out.detach().requires_grad_(True)
                self.outputs[name] = leaf
                # the model goes on with a copy in the graph: an in-place op downstream (ReLU(inplace=True))
                # may not write into a leaf that requires grad
                passed = leaf.clone()
                if isinstance(output, Tensor):
                    return passed
                return type(output)([passed, *output[1:]])

            self.handles.append(module.register_forward_hook(hook))

    def take(self, layers: Sequence[str]) -> dict[str, Tensor]:
        missing = [n for n in layers if n not in self.outputs]
        if missing:
            raise RuntimeError(
                f"Layers {missing} did not run during the forward pass; choose layers on the forward path."
            )
        out = {n: self.outputs[n] for n in layers}
        self.outputs = {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.outputs = {}


def _forward_checked(model: nn.Module, x: Tensor, what: str) -> Tensor:
    """``model(x)`` (first tensor of the output, channels-last on the CPU: see
    :func:`~lightning_xai.capture.run_model`), with an error that names ``what`` when the images do not fit."""
    try:
        return first_tensor(run_model(model, x), "The model")
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"The model cannot run on {what} (input batch of shape {list(x.shape)}): {exc}. Do the images have the "
            "shape, channels and preprocessing of the model's inputs?"
        ) from exc


def layer_activations(
    model: nn.Module,
    layers: Sequence[str],
    images: Tensor,
    batch_size: int = 128,
    what: str = "the images",
) -> tuple[dict[str, Tensor], Tensor]:
    """Activations of ``images`` at every layer in ``layers``, from one batched pass, and the logits.

    Args:
        model: The network (run in eval mode; modes are restored).
        layers: Dotted layer names.
        images: ``[N, C, H, W]``.
        batch_size: Images per forward pass.
        what: How to call the images in error messages (e.g. ``"concept 'striped'"``).

    Returns:
        ``({layer: [N, ...]}, logits [N, n_classes])``, on the model's device.

    Raises:
        ValueError: the model cannot run on the images (wrong shape or channels), naming ``what``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
        >>> acts, logits = layer_activations(net, ["1"], torch.rand(5, 3, 6, 6))
        >>> acts["1"].shape, logits.shape
        (torch.Size([5, 4, 4, 4]), torch.Size([5, 2]))
    """
    device = model_device(model)
    hooks = _Hooks(model, layers, detach=True)
    parts: dict[str, list[Tensor]] = {n: [] for n in layers}
    logits = []
    try:
        with explanation_mode(model), torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = images[start : start + batch_size].to(device)
                logits.append(_forward_checked(model, x, what).detach())
                for n, a in hooks.take(layers).items():
                    parts[n].append(a)
    finally:
        hooks.remove()
    return {n: torch.cat(v) for n, v in parts.items()}, torch.cat(logits)


def layer_gradients(
    model: nn.Module,
    layers: Sequence[str],
    images: Tensor,
    targets: Tensor,
    batch_size: int = 64,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Activations and gradients of each image's target logit at every layer in ``layers``.

    Row ``i`` of the gradient at layer ``l`` is ``d logit[i, targets[i]] / d A_l(x_i)``: since images do not
    interact in eval mode, one backward of ``sum_i logit[i, targets[i]]`` gives every row's gradient.

    Returns:
        ``(activations {layer: [N, ...]}, gradients {layer: [N, ...]}, logits [N, n_classes])`` on the
        model's device, detached.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> acts, grads, logits = layer_gradients(net, ["0"], torch.rand(5, 3), torch.tensor([0, 1, 0, 1, 1]))
        >>> torch.allclose(grads["0"][0], net[2].weight[0] * (acts["0"][0] > 0))
        True
    """
    device = model_device(model)
    hooks = _Hooks(model, layers, detach=False)
    acts: dict[str, list[Tensor]] = {n: [] for n in layers}
    grads: dict[str, list[Tensor]] = {n: [] for n in layers}
    logits_out = []
    try:
        with explanation_mode(model):
            for start in range(0, images.shape[0], batch_size):
                # the hooks start the graph at the earliest hooked layer; parameters are frozen, so nothing
                # accumulates in any parameter's .grad
                x = images[start : start + batch_size].to(device)
                t = targets[start : start + batch_size].to(device)
                logits = _forward_checked(model, x, "the inputs")
                outs = hooks.take(layers)
                chosen = logits.gather(1, t[:, None].long()).sum()
                g = torch.autograd.grad(chosen, [outs[n] for n in layers], allow_unused=True)
                for n, gi in zip(layers, g):
                    acts[n].append(outs[n].detach())
                    grads[n].append(torch.zeros_like(outs[n]) if gi is None else gi.detach())
                logits_out.append(logits.detach())
    finally:
        hooks.remove()
    return (
        {n: torch.cat(v) for n, v in acts.items()},
        {n: torch.cat(v) for n, v in grads.items()},
        torch.cat(logits_out),
    )


def last_feature_map_layer(model: nn.Module, example: Tensor, head: str | None = None) -> str:
    """Name of the last module that runs once and outputs a spatial feature map ``[B, C, H, W]``, ``H*W > 1``,
    before the classifier head starts (``head``: its name; default the last ``nn.Linear``, or no head when the
    model has none: a 1x1-convolution head's own convolution would otherwise be taken).

    A container and its last child finish at the same point of the forward pass; the container (the
    shorter name, e.g. ``layer4`` rather than ``layer4.1``) is preferred. Modules called more than once per
    forward (a shared ReLU) are skipped: a hook on them would see several outputs.

    Raises:
        ValueError: no module outputs a spatial feature map; name a layer explicitly.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> last_feature_map_layer(net, torch.rand(1, 3, 8, 8))
        '1'
    """
    try:
        head_module: nn.Module | None = find_head(model, head)[1]
    except HeadNotFoundError:
        head_module = None
    best = last_token_layer(model, example, head_module)  # a vision transformer's patch tokens
    if best is None:
        best = next(reversed(feature_maps(model, example, head_module)), None)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no module that outputs a spatial feature map [B, C, H, W]; pass layers=[...] "
            "naming a convolutional layer."
        )
    return best


class ActivationCache:
    """Activations of image sets at layers, valid for one state of the model (one epoch).

    Keys are ``(layer, fingerprint of the images)`` within the current *token*. :meth:`begin` with a new
    token (the callback passes ``(epoch, global_step)``; standalone use passes :func:`model_version`) drops
    everything: activations change as the model trains. Changing a set's images changes its fingerprint,
    so a stale entry is never served.

    Example:
        >>> cache = ActivationCache(); cache.begin("epoch-0")
        >>> x = torch.ones(2, 3); key = cache.key("layer", x)
        >>> cache.put(key, x * 2); torch.equal(cache.get(key), x * 2)
        True
        >>> cache.begin("epoch-1"); cache.get(key) is None
        True
    """

    def __init__(self) -> None:
        self.token: Hashable | None = None
        self._store: dict[tuple, Any] = {}
        self.hits = 0
        self.misses = 0

    def begin(self, token: Hashable) -> None:
        """Start a model state: entries of any other state are dropped."""
        if token != self.token:
            self.token = token
            self._store.clear()

    @staticmethod
    def key(layer: str, images: Tensor) -> tuple[str, str]:
        return (layer, fingerprint(images))

    def get(self, key: tuple) -> Any:
        value = self._store.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: tuple, value: Any) -> None:
        self._store[key] = value

    def __len__(self) -> int:
        return len(self._store)

    def activations(
        self,
        model: nn.Module,
        layers: Sequence[str],
        sets: dict[str, Tensor],
        batch_size: int = 128,
        fps_known: dict[str, str] | None = None,
    ) -> dict[str, dict[str, Tensor]]:
        """Activations of several image sets at ``layers``: ``{set name: {layer: [N_set, ...]}}``.

        Every (set, layer) not cached yet is computed in *one* batched pass over the concatenated sets
        (hooks on all missing layers at once), then split back per set. ``fps_known`` passes fingerprints
        the caller already computed (``{set name: fingerprint}``), so no set is hashed twice.
        """
        fps = {
            name: fps_known[name] if fps_known and name in fps_known else fingerprint(images)
            for name, images in sets.items()
        }
        todo = [name for name in sets if any((n, fps[name]) not in self._store for n in layers)]
        self.hits += len(sets) - len(todo)
        if todo:
            self.misses += len(todo)
            # one pass over every set that misses something; sets of one shape only can be concatenated
            groups: dict[tuple[int, ...], list[str]] = {}
            for name in todo:
                groups.setdefault(tuple(sets[name].shape[1:]), []).append(name)
            for names in groups.values():
                stacked = torch.cat([sets[name] for name in names])
                what = ", ".join(repr(n) for n in names[:3]) + (" ..." if len(names) > 3 else "")
                acts, _ = layer_activations(
                    model, layers, stacked, batch_size=batch_size, what=f"the sets {what}"
                )
                start = 0
                for name in names:
                    stop = start + sets[name].shape[0]
                    for n in layers:
                        self._store[(n, fps[name])] = acts[n][start:stop]
                    start = stop
        return {name: {n: self._store[(n, fps[name])] for n in layers} for name in sets}
