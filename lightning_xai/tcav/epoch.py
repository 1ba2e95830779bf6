"""The parts of :meth:`ConceptAttribution.explain <lightning_xai.tcav.ConceptAttribution.explain>`: which
classes are explained, the TCAV runs and global attributions of every (class, concept) pair (shared among
processes), and the local explanations of probe images.

Per pair, a process computes per layer a row of :class:`PairFields` (the TCAV runs of the concept and of the
random-vs-random null, and the moments of the concept's attributions over the class's images), so one gather
brings every process's pairs together; the statistics (t-tests, Bonferroni, SE and intervals) are computed
afterwards on the whole table, the same on every process.

No Lightning import: a Lightning callback passes its collectives in a :class:`Split`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lightning_xai.tcav.scores import GlobalExplanation, TCAVResult, VisualTCAVResult

if TYPE_CHECKING:
    from lightning_xai.tcav.explainer import ConceptAttribution

__all__ = ["PairFields", "Split", "class_indices", "pair_statistics", "probe_attributions"]


@dataclass(frozen=True)
class Split:
    """How the (class, concept) pairs of one explanation are shared among processes.

    Pairs are taken class by class and cut into ``world`` equal chunks; process ``rank`` computes chunk
    ``rank`` and every process receives every chunk.

    Attributes:
        rank: this process's index, from 0.
        world: the number of processes (1: every pair here).
        gather: ``[P, L, F]`` of this process -> ``[world, P, L, F]`` of every process in rank order (e.g.
            Lightning's ``all_gather``); needed when ``world > 1``.
        guard: runs this process's share, ``guard(compute) -> compute()``; for example raising on every
            process when one fails, so none waits alone in ``gather``. Default: call it.

    Example:
        >>> Split().world, Split(rank=1, world=2, gather=lambda t: torch.stack([t, t])).rank
        (1, 1)
    """

    rank: int = 0
    world: int = 1
    gather: Callable[[Tensor], Tensor] | None = None
    guard: Callable[[Callable[[], Tensor]], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.world > 1 and self.gather is None:
            raise ValueError(f"a split over {self.world} processes needs gather=<all-gather of a tensor>")
        if not 0 <= self.rank < max(1, self.world):
            raise ValueError(f"rank {self.rank} is not among the {self.world} processes")


class PairFields:
    """The row of one (pair, layer) in the table that processes gather: named positions, ``width`` in all.

    Example:
        >>> f = PairFields(n_random=3)
        >>> f.sign, f.null_magnitude, f.attribution_mean, f.n_inputs, f.width
        (slice(0, 3, None), slice(9, 12, None), 12, 15, 16)
    """

    def __init__(self, n_random: int) -> None:
        r = int(n_random)
        #: the concept's per-run TCAV sign fractions and magnitudes
        self.sign, self.magnitude = slice(0, r), slice(r, 2 * r)
        #: the same for the random-vs-random null CAVs (per class: equal across the class's pairs)
        self.null_sign, self.null_magnitude = slice(2 * r, 3 * r), slice(3 * r, 4 * r)
        #: mean and population std of the concept's attributions over the class's images, and their number
        self.attribution_mean, self.attribution_std, self.n_attributed = 4 * r, 4 * r + 1, 4 * r + 2
        #: the class's inputs in the TCAV runs
        self.n_inputs = 4 * r + 3
        self.width = 4 * r + 4


def class_indices(
    classes: Sequence[int | str] | None, names: Sequence[str], targets: Tensor, max_classes: int
) -> list[int]:
    """The explained classes as indices: ``classes`` by index or name, or (``None``) the ``max_classes`` most
    frequent in ``targets``, in index order.

    Example:
        >>> class_indices(None, ["a", "b", "c"], torch.tensor([2, 2, 0, 1, 2, 0]), max_classes=2)
        [0, 2]
        >>> class_indices(["c", 0], ["a", "b", "c"], torch.tensor([0]), max_classes=2)
        [2, 0]
    """
    if classes is None:
        counts = torch.bincount(targets, minlength=len(names))
        present = [int(k) for k in torch.argsort(counts, descending=True, stable=True) if counts[k] > 0]
        return sorted(present[:max_classes])
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(
                    f"Unknown class {c!r}; classes: {list(names)}. "
                    "Pass class_names=[...] if they are missing."
                )
            out.append(list(names).index(c))
        else:
            if not 0 <= int(c) < len(names):
                raise ValueError(f"Class index {c} is out of range for {len(names)} classes.")
            out.append(int(c))
    return list(dict.fromkeys(out))


def _my_pairs(
    ex: ConceptAttribution,
    inputs: Tensor,
    targets: Tensor,
    mine: list[tuple[int, str]],
    per: int,
    n_layers: int,
    images_per_class: int,
) -> Tensor:
    """``[per, L, width]``: this process's pairs (NaN rows pad a short last chunk)."""
    f = PairFields(ex.n_random)
    local = torch.full((per, n_layers, f.width), float("nan"))
    if not mine:
        return local
    # one gradient pass and one integrated-gradient run for all of this process's pairs: every quantity is per
    # image (its own class's logit), so batching classes together changes no number, only the calls
    mine_classes = list(dict.fromkeys(c for c, _ in mine))
    mine_concepts = [k for k in ex.concepts if any(k == kk for _, kk in mine)]
    runs = ex.tcav_runs(inputs, targets, mine_classes, concepts=mine_concepts)
    chosen = {c: torch.nonzero(targets == c).flatten()[:images_per_class] for c in mine_classes}
    rows = torch.cat(list(chosen.values()))
    attr = None
    if rows.numel() > 0:
        vt = ex.attribute(inputs[rows], target=targets[rows], concepts=mine_concepts)
        attr = vt.attributions[..., 0].double()  # [L, k, n]: images of each class in turn
    sizes = torch.tensor([0] + [len(v) for v in chosen.values()])
    start = dict(zip(mine_classes, torch.cumsum(sizes, 0).tolist()))
    for i, (c, k) in enumerate(mine):
        ci, kj, n_c = mine_classes.index(c), mine_concepts.index(k), int(chosen[c].numel())
        if attr is not None and n_c > 0:
            a = attr[:, kj, start[c] : start[c] + n_c]
            local[i, :, f.attribution_mean] = a.mean(-1).float()
            local[i, :, f.attribution_std] = a.std(-1, unbiased=False).float()
        local[i, :, f.n_attributed] = float(n_c)
        local[i, :, f.sign] = runs["sign_runs"][:, kj, ci]
        local[i, :, f.magnitude] = runs["magnitude_runs"][:, kj, ci]
        local[i, :, f.null_sign] = runs["null_sign_runs"][:, ci]
        local[i, :, f.null_magnitude] = runs["null_magnitude_runs"][:, ci]
        local[i, :, f.n_inputs] = float(runs["n_inputs"][ci])
    return local


def pair_statistics(
    ex: ConceptAttribution,
    inputs: Tensor,
    targets: Tensor,
    classes: list[int],
    layers: list[str],
    names: Sequence[str],
    images_per_class: int,
    split: Split,
) -> tuple[TCAVResult, GlobalExplanation]:
    """TCAV scores with significance and Visual-TCAV global attributions of every (class, concept) pair.

    The TCAV runs use every input of each class; the global attribution the first ``images_per_class`` of
    them. The pairs are shared among processes as ``split`` says; every process returns the same result.
    """
    concepts = ex.concepts
    pairs = [(c, k) for c in classes for k in concepts]  # class-major: a process's chunk spans few classes
    world = max(1, split.world)
    per = math.ceil(len(pairs) / world)
    mine = pairs[split.rank * per : (split.rank + 1) * per]
    f, n_layers = PairFields(ex.n_random), len(layers)

    def compute() -> Tensor:
        return _my_pairs(ex, inputs, targets, mine, per, n_layers, images_per_class)

    local = split.guard(compute) if split.guard is not None else compute()
    if world > 1:
        assert split.gather is not None
        local = split.gather(local).cpu().reshape(world * per, n_layers, f.width)
    table = local[: len(pairs)].reshape(len(classes), len(concepts), n_layers, f.width).permute(2, 1, 0, 3)
    # table: [L, K, C, width]; the null runs and the counts are per class, the same in each of its pairs
    class_names = [names[c] for c in classes]
    tcav = TCAVResult.from_runs(
        layers=layers,
        concepts=concepts,
        classes=classes,
        class_names=class_names,
        sign_runs=table[..., f.sign],
        magnitude_runs=table[..., f.magnitude],
        null_sign_runs=table[:, 0, :, f.null_sign],
        null_magnitude_runs=table[:, 0, :, f.null_magnitude],
        n_inputs=table[0, 0, :, f.n_inputs].round().long(),
        alpha=ex.alpha,
        cav=ex.cav,
    )
    glob = GlobalExplanation.from_moments(
        layers,
        concepts,
        classes,
        class_names,
        mean=table[..., f.attribution_mean],
        std=table[..., f.attribution_std],
        n=table[0, 0, :, f.n_attributed].round().long(),
    )
    return tcav, glob


def probe_attributions(
    ex: ConceptAttribution, probes: Tensor, names: Sequence[str], n_top: int
) -> tuple[VisualTCAVResult, list[dict[str, Any]]]:
    """Concept maps and local attributions of each probe image's top ``n_top`` classes, and one row per
    (probe, class, layer, concept)."""
    local = ex.attribute(probes, target=None, n_classes=min(n_top, len(names)))
    rows = [
        {
            "probe": i,
            "layer": layer,
            "class": names[int(local.targets[i, t])],
            "probability": float(local.probabilities[i, t]),
            "concept": concept,
            "attribution": float(local.attributions[li, k, i, t]),
        }
        for i in range(probes.shape[0])
        for t in range(local.targets.shape[1])
        for li, layer in enumerate(local.layers)
        for k, concept in enumerate(local.concepts)
    ]
    return local, rows
