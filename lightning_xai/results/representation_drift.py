"""The typed result of :class:`~lightning_xai.callbacks.RepresentationDriftCallback`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from lightning_xai.records import Table
from lightning_xai.results import register
from lightning_xai.results.base import Logged, Observation, Result

__all__ = ["RepresentationDriftResult"]


@register
@dataclass
class RepresentationDriftResult(Result):
    """Linear CKA of the model's representations at one explained epoch.

    CKA needs the activations of both epochs, which only the callback holds, so the comparisons with the
    previous and the reference epoch are this method's own output (the drift monitor takes them as given).

    Attributes:
        reference_epoch: the first explained epoch, which every epoch is compared with.
        previous_epoch: the explained epoch before this one (this epoch itself on the first).
        n_samples: validation samples in the probe set.
        representations: feature count of each representation (``"features"``: the head input; layers by name).
        cka_prev: CKA with the previous explained epoch per representation (1 = unchanged; NaN when fewer than
            4 probe samples are shared).
        cka_ref: CKA with the reference epoch per representation.

    Example:
        >>> r = RepresentationDriftResult(0, 0, 64, {"features": 32}, {"features": 1.0}, {"features": 1.0})
        >>> r.logged(0).scalars
        {'cka_prev/features': 1.0, 'cka_ref/features': 1.0}
    """

    method: ClassVar[str] = "representation_drift"
    #: one key per tracked layer: the user names the layers, so all of them
    summary_scalars: ClassVar[tuple[str, ...]] = ("cka_prev/*", "cka_ref/*", "time_s")
    schema: ClassVar[int] = 2

    reference_epoch: int
    previous_epoch: int
    n_samples: int
    representations: dict[str, int] = field(default_factory=dict)
    cka_prev: dict[str, float] = field(default_factory=dict)
    cka_ref: dict[str, float] = field(default_factory=dict)

    @classmethod
    def recorded_keys(cls, schema: int) -> tuple[str, ...]:
        return ("history",) if schema == 1 else ()

    def logged(self, epoch: int) -> Logged:
        scalars = {f"cka_prev/{rep}": v for rep, v in self.cka_prev.items()}
        scalars.update({f"cka_ref/{rep}": v for rep, v in self.cka_ref.items()})
        reps = list(self.cka_prev)
        table = Table(
            "cka",
            ["representation", "features", "cka_prev", "cka_ref"],
            [
                [rep, self.representations.get(rep), self.cka_prev.get(rep), self.cka_ref.get(rep)]
                for rep in reps
            ],
        )
        return Logged(scalars=scalars, tables=[table])

    def observations(self) -> list[Observation]:
        out = []
        for rep, cka in self.cka_prev.items():
            ref = self.cka_ref.get(rep)
            given: dict[str, Any] = {
                "previous": None if cka is None else 1.0 - float(cka),
                "previous_epoch": self.previous_epoch,
                "reference": None if ref is None else 1.0 - float(ref),
                "reference_epoch": self.reference_epoch,
            }
            out.append(Observation("cka", str(rep), f"representation {rep!r}", cka, given=given))
        return out
