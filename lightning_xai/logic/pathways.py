"""The linear head split and VisionLogic pathways (minimal prediction-preserving feature prefixes).

The predicates of VisionLogic live on the input ``z`` of the classifier's final linear layer
(``logits = W z + b``). For an image predicted as class ``y``:

1. the contributions ``c_j = z_j * W[y, j]`` are sorted in descending order;
2. features are added one at a time to the partial logits of *all* classes, ``b + sum_j W[:, j] z_j``;
3. the pathway is the shortest such prefix whose argmax is ``y`` (at least one feature);
4. each feature gets a signed id: ``j`` if ``z_j >= 0``, else ``j + D`` (the sign of the activation).

Everything here is plain PyTorch on CPU tensors (no Lightning), computed in float64 so the argmax of
the full prefix equals the argmax of the captured logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_xai.capture import find_head

__all__ = ["HeadMismatchError", "LinearHead", "Pathways", "extract_pathways", "signed_id", "split_signed_id"]

# partial logits of a chunk of images hold rows * D * C float64 values; this keeps them near 32 MB
_CHUNK_ELEMENTS = 1 << 22


class HeadMismatchError(ValueError):
    """The captured head input does not reproduce the captured logits through the linear head."""


def signed_id(feature: int, negative: bool, num_features: int) -> int:
    """The signed predicate id of a feature: ``feature`` for ``z >= 0``, ``feature + D`` otherwise.

    Example:
        >>> signed_id(3, negative=False, num_features=8), signed_id(3, negative=True, num_features=8)
        (3, 11)
    """
    return int(feature) + (int(num_features) if negative else 0)


def split_signed_id(sid: int, num_features: int) -> tuple[int, int]:
    """``(feature, sign)`` of a signed id, with ``sign`` +1 or -1.

    Example:
        >>> split_signed_id(11, num_features=8)
        (3, -1)
    """
    sid = int(sid)
    return (sid, 1) if sid < num_features else (sid - num_features, -1)


@dataclass(frozen=True)
class LinearHead:
    """Weights and bias of the classifier's final ``nn.Linear`` (float64 CPU copies).

    Attributes:
        weight: ``[C, D]``.
        bias: ``[C]`` (zeros if the layer has no bias).
        name: the layer's dotted name in the model, if known.

    Example:
        >>> head = LinearHead.from_module(nn.Linear(4, 3))
        >>> head.num_classes, head.num_features
        (3, 4)
    """

    weight: Tensor
    bias: Tensor
    name: str | None = None

    def __post_init__(self) -> None:
        # float64 on CPU: partial logits are then exact enough that the full prefix reproduces the argmax
        object.__setattr__(self, "weight", torch.as_tensor(self.weight).detach().to("cpu", torch.float64))
        object.__setattr__(self, "bias", torch.as_tensor(self.bias).detach().to("cpu", torch.float64))
        if self.weight.dim() != 2:
            raise ValueError(f"LinearHead.weight must be [C, D], got shape {tuple(self.weight.shape)}")
        if self.bias.shape != self.weight.shape[:1]:
            raise ValueError(
                f"LinearHead.bias must be [C] = [{self.weight.shape[0]}], got shape {tuple(self.bias.shape)}"
            )

    @classmethod
    def from_module(cls, module: nn.Linear, name: str | None = None) -> LinearHead:
        """Copy the weights of ``module`` (which must be an ``nn.Linear``)."""
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"the classifier head must be an nn.Linear, got {type(module).__name__}; name the linear layer "
                "that produces the logits"
            )
        w = module.weight.detach().to("cpu", torch.float64).clone()
        b = (
            module.bias.detach().to("cpu", torch.float64).clone()
            if module.bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64)
        )
        return cls(weight=w, bias=b, name=name)

    @classmethod
    def from_model(cls, model: nn.Module, name: str | None = None) -> LinearHead:
        """The head of ``model``: the ``nn.Linear`` called ``name``, else the last ``nn.Linear``.

        Raises:
            lightning_xai.capture.HeadNotFoundError: the model has no ``nn.Linear`` (or ``name`` is not one).
        """
        head_name, module = find_head(model, name)
        return cls.from_module(module, head_name)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, features: Tensor) -> Tensor:
        """``W z + b`` in float64, ``[N, C]``."""
        return features.to(torch.float64) @ self.weight.T + self.bias

    def check(
        self,
        features: Tensor,
        logits: Tensor,
        rtol: float = 1e-3,
        atol: float = 1e-4,
        computed_in: torch.dtype = torch.float32,
    ) -> None:
        """Check that ``W z + b`` reproduces the captured ``logits`` (the head really is the last layer).

        ``computed_in`` is the dtype the model computed ``logits`` in. Under mixed precision (bfloat16,
        float16) the head rounded its weights, inputs and outputs to that dtype, so the check allows for the
        largest error that rounding can make: ``eps * (max |W| |z| + max |logit|)``, ``eps`` the dtype's
        machine epsilon (twice the unit roundoff). A temperature, a softmax or a second branch changes
        the logits by far more.

        Raises:
            HeadMismatchError: shapes differ, or some logit differs by more than ``atol + rtol * scale``
                (``scale`` = the largest absolute logit); the message says what to pass instead.
        """
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise HeadMismatchError(
                f"features have shape {tuple(features.shape)} but the head {self.name or ''} expects "
                f"[N, {self.num_features}]"
            )
        if logits.shape != (features.shape[0], self.num_classes):
            raise HeadMismatchError(
                f"logits have shape {tuple(logits.shape)} but the head {self.name or ''} produces "
                f"[{features.shape[0]}, {self.num_classes}]"
            )
        recomputed = self.logits(features)
        target = logits.to(torch.float64)
        err = float((recomputed - target).abs().max()) if target.numel() else 0.0
        scale = float(target.abs().max()) if target.numel() else 0.0
        allowed = atol + rtol * scale
        eps = torch.finfo(computed_in).eps if computed_in.is_floating_point else 0.0
        if eps > torch.finfo(torch.float32).eps and target.numel():
            terms = float((features.to(torch.float64).abs() @ self.weight.abs().T).max())
            allowed += eps * (terms + scale)
        if err > allowed:
            raise HeadMismatchError(
                f"W z + b of the head {self.name or ''} differs from the model's logits by up to {err:.3g} "
                f"(logit scale {scale:.3g}, computed in {str(computed_in).removeprefix('torch.')}, "
                f"{allowed:.3g} allowed): the model changes the head's output (a temperature, a second "
                "branch, a softmax?) or the head is not the last layer. VisionLogic needs logits = W z + b; "
                "name the final nn.Linear with head='<name>'."
            )


@dataclass
class Pathways:
    """The pathways of ``N`` images.

    Attributes:
        signed: ``[N, D]`` signed ids of the features in contribution order (descending); the pathway of
            image ``i`` is ``signed[i, :lengths[i]]``.
        lengths: ``[N]`` pathway lengths (1..D).
        predictions: ``[N]`` the predicted class each pathway preserves.
        reached: ``[N]`` False where even the full prefix did not give the prediction (only possible
            when the captured logits tie or disagree with ``W z + b``); the pathway is then all features.
        num_features: ``D``.
    """

    signed: Tensor
    lengths: Tensor
    predictions: Tensor
    reached: Tensor
    num_features: int

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def pathway(self, i: int) -> list[int]:
        """Signed ids of image ``i``'s pathway, in contribution order."""
        return self.signed[i, : int(self.lengths[i])].tolist()

    def membership(self) -> Tensor:
        """``[N, 2D]`` bool: whether signed id ``s`` is in image ``i``'s pathway."""
        n, d = self.signed.shape
        rank = torch.arange(d).expand(n, d)
        inside = rank < self.lengths[:, None]
        out = torch.zeros(n, 2 * self.num_features, dtype=torch.bool)
        out.scatter_(1, self.signed, inside)
        return out


def extract_pathways(features: Tensor, head: LinearHead, predictions: Tensor | None = None) -> Pathways:
    """The pathway of every image: the shortest contribution-ordered prefix whose argmax is the prediction.

    Args:
        features: head inputs ``[N, D]``.
        head: the linear head.
        predictions: ``[N]`` classes to preserve; default ``argmax(W z + b)``. Pass the model's captured
            ``logits.argmax(1)`` to explain the model's own decisions.

    Returns:
        :class:`Pathways`.

    Example:
        >>> head = LinearHead(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2))
        >>> p = extract_pathways(torch.tensor([[2.0, -1.0]]), head)
        >>> p.pathway(0), int(p.predictions[0])
        ([0], 0)
    """
    if features.dim() != 2 or features.shape[1] != head.num_features:
        raise ValueError(f"features must be [N, {head.num_features}], got shape {tuple(features.shape)}")
    z = features.detach().to("cpu", torch.float64)
    n, d = z.shape
    w, b = head.weight, head.bias
    y = (z @ w.T + b).argmax(1) if predictions is None else predictions.detach().to("cpu", torch.long)
    if y.shape != (n,):
        raise ValueError(f"predictions must be [N] = [{n}], got shape {tuple(y.shape)}")
    contrib = z * w[y]
    # stable sort: equal contributions keep feature order, so pathways are deterministic
    order = torch.sort(contrib, dim=1, descending=True, stable=True).indices
    lengths = torch.empty(n, dtype=torch.long)
    reached = torch.empty(n, dtype=torch.bool)
    wt = w.T.contiguous()  # [D, C]
    rows = max(1, _CHUNK_ELEMENTS // max(1, d * head.num_classes))
    for start in range(0, n, rows):
        sl = slice(start, min(n, start + rows))
        o = order[sl]
        zs = torch.gather(z[sl], 1, o)  # [n, D]
        partial = b + torch.cumsum(zs[..., None] * wt[o], dim=1)  # [n, D, C]: prefix k = first k+1 features
        hit = partial.argmax(-1) == y[sl, None]
        any_hit = hit.any(1)
        first = hit.to(torch.int8).argmax(1)  # index of the first True
        lengths[sl] = torch.where(any_hit, first + 1, torch.full_like(first, d))
        reached[sl] = any_hit
    sorted_z = torch.gather(z, 1, order)
    signed = order + d * (sorted_z < 0).long()
    return Pathways(signed=signed, lengths=lengths, predictions=y, reached=reached, num_features=d)
