"""Training the symbolic model: seeded, bounded, warm-startable.

:class:`SymbolicFitter` owns a :class:`~lightning_xai.hyperbolic.SymbolicModel`, its
``geoopt.optim.RiemannianAdam`` (which treats plain parameters as Euclidean, so one optimiser covers
codebooks, level maps, adjacency, modulator and surrogate) and its random generator. ``fit`` runs a
given number of steps on cached features and the classifier's own predictions; calling it again
continues from where it stopped (warm start), and :meth:`SymbolicFitter.state_dict` /
:meth:`SymbolicFitter.from_state_dict` carry everything across a checkpoint, generator included, so a
resumed run makes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

import geoopt
import torch
from torch import Tensor

from lightning_xai.results.symbolic_tree import FitReport

from .config import SymbolicConfig, check_feature_map
from .model import SymbolicModel
from .tree import EDGE_THRESHOLD

__all__ = ["FitReport", "SymbolicFitter"]


class SymbolicFitter:
    """Fits a :class:`~lightning_xai.hyperbolic.SymbolicModel` to a classifier's feature maps.

    Args:
        in_channels: channels of the explained feature map.
        n_classes: classes of the classifier.
        config: hyper-parameters (:class:`~lightning_xai.hyperbolic.SymbolicConfig`).
        seed: seeds the initial weights, the data-dependent initialisation, the batch order and the
            code restarts; the global random state is left untouched.
        device: where the model trains.
        threads: CPU threads while fitting (the previous setting is restored afterwards); ``None`` keeps
            torch's setting. Default 1: the model's tensors are small, and on a few busy cores the
            intra-op thread pool costs more than it saves (measured 20x slower with 2 threads on 2
            shared cores).

    Raises:
        lightning_xai.hyperbolic.LevelsError: bad levels for ``n_classes`` (see
            :func:`~lightning_xai.hyperbolic.resolve_levels`).

    Example:
        >>> feats = torch.randn(64, 8, 4, 4); teacher = feats.mean((2, 3))[:, :3].argmax(1)
        >>> fitter = SymbolicFitter(8, 3, SymbolicConfig(levels=(8, 4), latent_channels=4), seed=0)
        >>> report = fitter.fit(feats, teacher, steps=5)
        >>> report.steps, report.total_steps, report.initialised
        (5, 5, True)
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        config: SymbolicConfig | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        threads: int | None = 1,
    ) -> None:
        self.config = config or SymbolicConfig()
        self.threads = threads
        self.seed = int(seed)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = SymbolicModel(in_channels, n_classes, self.config)
        self.model.to(self.device)
        cfg = self.config
        adjacency = list(self.model.adjacency_logits.parameters())
        codebooks = list(self.model.codebooks.parameters())
        special = {id(p) for p in adjacency + codebooks}
        others = [p for p in self.model.parameters() if id(p) not in special]
        # codes must keep up with tokens that the surrogate's gradient moves, and edges with token paths
        # that change as the codes move: both learn faster than the rest
        self.optimizer = geoopt.optim.RiemannianAdam(
            [
                {"params": others},
                {"params": codebooks, "lr": cfg.lr * cfg.codebook_lr_factor},
                {"params": adjacency, "lr": cfg.lr * cfg.adjacency_lr_factor},
            ],
            lr=cfg.lr,
            stabilize=10,
        )
        self.generator = torch.Generator().manual_seed(self.seed)
        self.total_steps = 0
        self.initialised = False

    # ------------------------------------------------------------------ training
    def fit(
        self,
        features: Tensor,
        teacher: Tensor,
        steps: int,
        stop_at: float | None = None,
        min_steps: int = 20,
        check_every: int = 10,
        predictions: Tensor | None = None,
    ) -> FitReport:
        """Run ``steps`` optimisation steps on ``features`` ``[N, C, H, W]`` and ``teacher`` ``[N]``.

        The first call places the codebooks on the data; later calls continue (warm start).

        Args:
            features, teacher: the classifier's feature maps and its predicted classes.
            steps: the most steps this call runs.
            stop_at: stop early, after at least ``min_steps``, at the first check (every ``check_every``
                steps) where, on the last ``check_every`` training batches, the surrogate agreed with
                ``teacher`` on at least this share of the images, at least this share of the tokens went
                from each level to the next along a hard edge (so the trees read out carry the paths),
                and no code was restarted. ``None``: run every step. A warm start on features that moved
                little agrees at once, so the callback passes 0.99 there and a settled run pays
                ``min_steps`` instead of ``steps``. Both shares are read off the training batches' own
                forward passes: checking costs nothing.
            min_steps: steps before the first check. 0: a fitted model is checked before any step, on all
                of ``features`` in eval mode (one forward pass without gradients, the mode its symbols are
                read out in), and no step runs if the surrogate already agrees (``steps`` 0,
                ``stopped_early``; the edges are not checked there).
            check_every: steps per check, and the batches the agreement is averaged over.
            predictions: the model's eval-mode predictions on ``features`` ``[N]``, when the caller already
                has them (it encodes the images anyway): the check before any step reads them instead of
                running its forward pass. Only read when :meth:`checks_first`.

        Raises:
            lightning_xai.hyperbolic.FeatureMapError: ``features`` is not a spatial feature map.
            ValueError: fewer than 2 images, mismatched lengths, teacher classes out of range, or a
                ``stop_at`` outside (0, 1].
        """
        check_feature_map(features, "the explained layer")
        teacher = teacher.long().flatten()
        if features.shape[0] != teacher.shape[0]:
            raise ValueError(f"{features.shape[0]} feature maps but {teacher.shape[0]} teacher labels.")
        if features.shape[0] < 2:
            raise ValueError(
                f"the symbolic model needs at least 2 images to train on, got {features.shape[0]}."
            )
        if teacher.numel() and (int(teacher.min()) < 0 or int(teacher.max()) >= self.model.n_classes):
            raise ValueError(
                f"teacher classes must lie in [0, {self.model.n_classes}), got {teacher.unique().tolist()}."
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an integer >= 0, but got {steps!r}.")
        if stop_at is not None and not (isinstance(stop_at, (int, float)) and 0.0 < float(stop_at) <= 1.0):
            raise ValueError(f"stop_at must lie in (0, 1] or be None, but got {stop_at!r}.")
        for name, value, low in (("min_steps", min_steps, 0), ("check_every", check_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, but got {value!r}.")
        if predictions is not None and predictions.shape != teacher.shape:
            raise ValueError(
                f"predictions must be [N] = {list(teacher.shape)}, got {list(predictions.shape)}."
            )
        with _num_threads(self.threads if self.device.type == "cpu" else None):
            return self._fit(features, teacher, steps, stop_at, min_steps, check_every, predictions)

    def checks_first(self, steps: int, stop_at: float | None, min_steps: int) -> bool:
        """Whether :meth:`fit` with these arguments checks the agreement in eval mode before any step (a
        fitted model, ``stop_at`` given, ``min_steps`` 0 and steps to run)."""
        return self.initialised and stop_at is not None and min_steps == 0 and steps > 0

    def _fit(
        self,
        features: Tensor,
        teacher: Tensor,
        steps: int,
        stop_at: float | None,
        min_steps: int,
        check_every: int,
        predictions: Tensor | None,
    ) -> FitReport:
        start = time.perf_counter()
        model, cfg = self.model, self.config
        features = features.detach().to(self.device, torch.float32)
        teacher = teacher.to(self.device)
        first = not self.initialised
        if self.checks_first(steps, stop_at, min_steps):
            assert stop_at is not None
            if predictions is None:
                predictions = self.model.encode(features).predictions
            agreement = float((predictions.to(teacher.device) == teacher).float().mean())
            if agreement >= stop_at:
                return FitReport(
                    steps=0,
                    total_steps=self.total_steps,
                    seconds=time.perf_counter() - start,
                    stopped_early=True,
                    agreement=agreement,
                )
        if first:
            sub = torch.randperm(features.shape[0], generator=self.generator)[:256].to(self.device)
            model.initialise_from_data(features[sub], self.generator)
            self.initialised = True
        n = features.shape[0]
        batch = min(cfg.batch_size, n)
        counts = [torch.zeros(k, dtype=torch.long, device=self.device) for k in model.sizes]
        history: list[dict[str, float]] = []
        restarts = 0
        agree: list[Tensor] = []  # per step: the share of the batch on which the surrogate agrees
        along: list[Tensor] = []  # per step: the share of the routed tokens that follow a hard edge
        last_restart = -check_every - 1
        stopped = False
        order = torch.empty(0, dtype=torch.long)
        was_training = model.training
        model.train()
        try:
            for step in range(steps):
                if order.numel() < batch:
                    order = torch.cat([order, torch.randperm(n, generator=self.generator)])
                idx, order = order[:batch].to(self.device), order[batch:]
                out = model(features[idx])
                along.append(_edge_share(model, out.codes))
                terms = model.losses(out, teacher[idx])
                self.optimizer.zero_grad(set_to_none=True)
                terms["total"].backward()
                self.optimizer.step()
                history.append({k: float(v.detach()) for k, v in terms.items()})
                agree.append((out.logits.detach().argmax(1) == teacher[idx]).float().mean())
                for level, codes in enumerate(out.codes):
                    counts[level] += torch.bincount(codes.flatten(), minlength=model.sizes[level])
                self.total_steps += 1
                # no restart in the last stretch of a fit: a restarted code needs steps to settle and its
                # edges to catch up before the model is read out
                if (
                    cfg.restart_every
                    and (step + 1) % cfg.restart_every == 0
                    and step + cfg.restart_every < steps
                ):
                    moved = self._restart_dead(counts, out)
                    restarts += moved
                    if moved:
                        last_restart = step
                    counts = [torch.zeros_like(c) for c in counts]
                done = step + 1
                if (
                    stop_at is not None
                    and done >= min_steps
                    and done < steps
                    and done % check_every == 0
                    and last_restart < done - check_every
                    and float(torch.stack(agree[-check_every:]).mean()) >= stop_at
                    and float(torch.stack(along[-check_every:]).mean()) >= stop_at
                ):
                    stopped = True
                    break
        finally:
            model.train(was_training)
            self.optimizer.zero_grad(set_to_none=True)
        tail = history[-max(1, len(history) // 4) :] if history else []
        losses = {k: sum(h[k] for h in tail) / len(tail) for k in tail[0]} if tail else {}
        enough = len(agree) >= check_every
        agreement = float(torch.stack(agree[-check_every:]).mean()) if enough else math.nan
        edges = float(torch.stack(along[-check_every:]).mean()) if enough else math.nan
        return FitReport(
            steps=len(history),
            total_steps=self.total_steps,
            seconds=time.perf_counter() - start,
            losses=losses,
            restarts=restarts,
            initialised=first,
            stopped_early=stopped,
            agreement=agreement,
            edge_agreement=edges,
        )

    def _restart_dead(self, counts: list[Tensor], out: Any) -> int:
        """Restart the codes no token used since the last check, on points of their own level."""
        moved = 0
        for level, count in enumerate(counts):
            dead = torch.nonzero(count == 0).flatten().cpu()
            if dead.numel() == 0:
                continue
            points = out.points[level].detach().reshape(-1, out.points[level].shape[-1])
            self.model.restart_codes(level, dead, points, self.generator)
            self._reset_optimizer_rows(level, dead)
            moved += dead.numel()
        return moved

    def _reset_optimizer_rows(self, level: int, dead: Tensor) -> None:
        # stale Adam moments would throw a restarted code straight back to where it came from
        model = self.model
        params = [(model.codebooks[level], dead, None)]
        if level + 1 < model.num_levels:
            params.append((model.adjacency_logits[level], dead, None))
        if level > 0:
            params.append((model.adjacency_logits[level - 1], None, dead))
        for param, rows, cols in params:
            state = self.optimizer.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    if rows is not None:
                        state[key][rows.to(param.device)] = 0
                    if cols is not None:
                        state[key][:, cols.to(param.device)] = 0

    def reset_optimizer(self) -> None:
        """Forget the optimiser's moment estimates (the model, step count and generator stay).

        For a warm start on *new* data (the classifier trained on between two fits): moments estimated
        on the previous features mis-scale the first steps on the new ones; fresh moments adapt
        measurably faster (on the world's TinyCNN between epochs 1 and 2: held-out fidelity 0.86 -> 0.98
        after 100 warm-started steps).
        """
        self.optimizer.state.clear()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this fitter is (CPU tensors, picklable)."""
        return {
            "config": self.config.to_dict(),
            "in_channels": self.model.in_channels,
            "n_classes": self.model.n_classes,
            "seed": self.seed,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "total_steps": self.total_steps,
            "initialised": self.initialised,
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], device: str | torch.device = "cpu", threads: int | None = 1
    ) -> SymbolicFitter:
        """Rebuild a fitter from :meth:`state_dict` (model, optimiser moments, generator, step count)."""
        fitter = cls(
            state["in_channels"],
            state["n_classes"],
            SymbolicConfig.from_dict(state["config"]),
            seed=state["seed"],
            device=device,
            threads=threads,
        )
        fitter.model.load_state_dict(state["model"])
        fitter.optimizer.load_state_dict(state["optimizer"])
        fitter.generator.set_state(state["generator"])
        fitter.total_steps = int(state["total_steps"])
        fitter.initialised = bool(state["initialised"])
        return fitter

    def compatible(self, in_channels: int, n_classes: int, config: SymbolicConfig) -> bool:
        """Whether this fitter can be warm-started for features of ``in_channels`` and this config."""
        return (
            self.model.in_channels == in_channels
            and self.model.n_classes == n_classes
            and self.config == config
        )


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _edge_share(model: SymbolicModel, codes: list[Tensor]) -> Tensor:
    """Share of the tokens that go from each level to the next along a hard edge (the read-out's
    ``A > EDGE_THRESHOLD``), pooled over the levels."""
    with torch.no_grad():
        along = [
            (model.adjacency(level)[codes[level], codes[level + 1]] > EDGE_THRESHOLD).float().mean()
            for level in range(model.num_levels - 1)
        ]
        return torch.stack(along).mean()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
