"""``ConceptPermutationCallback``: DEPICT concept permutation importance, re-scored as the model trains."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_xai.callbacks.base import (
    ExplainResult,
    XAICallback,
    check_int,
    check_interval,
    gather_objects,
    run_share,
)
from lightning_xai.capture import ValidationSample
from lightning_xai.charts import TAB10, bar_chart
from lightning_xai.permutation import ConceptPermutation, ConceptTable, GenerationCache, PermutationResult
from lightning_xai.permutation.importance import resolve_autocast_dtype, resolve_metric
from lightning_xai.records import Chart, Media, Table

__all__ = ["ConceptPermutationCallback"]


class ConceptPermutationCallback(XAICallback):
    r"""Concept permutation importance (DEPICT, Jabbour et al. 2024) of a table of concepts, every few epochs.

    On the first explained epoch every image the permutations need is generated once (the base caption of
    each row, and each permutation's changed rows, all with the row's own seed) and cached; every explained
    epoch then only runs the classifier on the cached images: importance of concept ``k`` = metric on the
    unpermuted images minus the metric after ``k``'s column is shuffled, over ``n_repeats`` seeded shuffles.

    Logged:

    * scalars ``xai/concept_permutation/importance/<concept>``, ``base_<metric>`` and, from the second
      explained epoch, ``kendall_tau_prev`` (ranking agreement with the previous explained epoch);
    * tables ``permutation_importance`` (concept, rank, importance, sd, low/high over repeats, ci_low/ci_high
      of the paired row bootstrap, ...) and ``ranking``;
    * a bar chart of the importances and a figure with the bootstrap intervals.

    Record ``{"method": "concept_permutation", "name": "epoch"}``, payload: ``metric``, ``base``,
    ``n_rows``, ``n_repeats``, ``interval``, ``importance`` (the table's rows), ``ranking``,
    ``constant_concepts``, ``kendall_tau_prev``, ``previous_epoch``, ``generation`` (``generated_now``,
    ``cached_images``, ``generator_calls_now``, ``fingerprint``; counts are summed over the ranks under DDP).

    Args:
        generator: ``generate(captions, seeds) -> Tensor[N, 3, H, W]`` with a ``fingerprint``: the world's
            :class:`~lightning_xai.world.WorldGenerator`, or :class:`~lightning_xai.generators.DiffusersGenerator`
            around any diffusers text-to-image pipeline.
        concept_table: a :class:`~lightning_xai.permutation.ConceptTable`, a CSV file (header row, a
            ``label_column``), or ``{column: values}`` including the labels.
        caption_template: format string over the columns (``"a {colour} {shape} on a {texture} background"``)
            or a callable ``row -> caption``; needed unless ``concept_table`` is a ``ConceptTable``.
        metric: ``"accuracy"``, ``"auroc"``, a torchmetrics ``Metric`` or ``fn(logits, labels) -> float``.
        n_repeats: shuffles per concept. Default: 10 (the paper's notebook uses 25).
        every_n_epochs: explain every n-th epoch. Default: 1.
        concepts: columns to permute (default: every column the template uses).
        interval: coverage of the percentile interval over repeats. Default: 0.95.
        transform: applied to generated images before the classifier (resize, normalise).
        cache_dir: folder for an on-disk image cache that later runs reuse (default: memory only).
        batch_size: images per classifier forward. Default: 64 (see :class:`~lightning_xai.permutation.ConceptPermutation`).
        label_column, seed_column: columns of a CSV / mapping table holding the labels and per-row seeds.
        n_bootstrap: row resamples of the paired bootstrap interval (``ci_low``/``ci_high``), which also
            covers the variation from the finite number of rows (0: none). Default: 200.
        show_progress: a progress bar over generation (rank 0). Default: True.
        autocast_dtype: score the classifier under ``torch.autocast`` in ``"bfloat16"`` or ``"float16"`` (GPU
            only: on a CPU it is recorded as an error).
            Default ``None``: float32. bfloat16 made a later epoch about 1.5x cheaper on a CPU with
            AVX512-BF16 and left the quickstart's importances unchanged; see
            :class:`~lightning_xai.permutation.ConceptPermutation` for the trade-off.
        on, on_error, seed: see :class:`XAICallback` (``seed`` also seeds the permutations).

    Raises:
        MisconfigurationException: a bad argument (the message names it and the valid choices), an unknown
            template column, a table without labels.

    Example:
        >>> from lightning_xai.world import WorldGenerator
        >>> from lightning_xai.permutation import world_concept_table
        >>> cb = ConceptPermutationCallback(WorldGenerator(), world_concept_table(200), n_repeats=5)
        >>> cb.concept_table.concepts
        ['shape', 'colour', 'texture', 'marker']
    """

    method = "concept_permutation"

    def __init__(
        self,
        generator: Any = None,
        concept_table: ConceptTable | str | os.PathLike | Mapping[str, Sequence[Any]] | None = None,
        caption_template: str | Callable[[Mapping[str, Any]], str] | None = None,
        metric: str | Any = "accuracy",
        n_repeats: int = 10,
        every_n_epochs: int = 1,
        *,
        concepts: Sequence[str] | None = None,
        interval: float = 0.95,
        transform: Callable[[Tensor], Tensor] | None = None,
        cache_dir: str | None = None,
        batch_size: int = 64,
        label_column: str = "label",
        seed_column: str | None = None,
        n_bootstrap: int = 200,
        show_progress: bool = True,
        autocast_dtype: str | torch.dtype | None = None,
        on: Literal["validation", "train_epoch_end"] = "validation",
        on_error: Literal["warn", "raise"] = "warn",
        max_failures: int | None = 3,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, on=on, max_samples=2, on_error=on_error, max_failures=max_failures, seed=seed)
        if generator is not None and not callable(getattr(generator, "generate", None)):
            raise MisconfigurationException(
                f"generator must have a generate(captions, seeds) method (e.g. lightning_xai.world.WorldGenerator or "
                f"lightning_xai.generators.DiffusersGenerator), got {type(generator).__name__}."
            )
        check_int("n_repeats", n_repeats, 1)
        check_interval("interval", interval, 0, 1, low_open=True, high_open=True)
        check_int("batch_size", batch_size, 1)
        check_int("n_bootstrap", n_bootstrap, 0)
        if transform is not None and not callable(transform):
            raise MisconfigurationException(f"transform must be callable, got {type(transform).__name__}.")
        self._table_fp: tuple[ConceptTable, str] | None = None
        try:
            self.metric_name, _ = resolve_metric(metric)
            self.autocast_dtype = resolve_autocast_dtype(autocast_dtype)
            self.concept_table = self._table(concept_table, caption_template, label_column, seed_column, concepts, seed)
        except ValueError as exc:
            raise MisconfigurationException(str(exc)) from exc
        self.generator = generator
        self.metric = metric
        self.n_repeats = n_repeats
        self.interval = float(interval)
        self.transform = transform
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.n_bootstrap = n_bootstrap
        self.show_progress = show_progress
        self._depict: ConceptPermutation | None = None
        self._previous: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    @staticmethod
    def _table(
        table: Any, template: Any, label_column: str, seed_column: str | None, concepts: Sequence[str] | None, seed: int
    ) -> ConceptTable | None:
        if table is None:
            return None
        if isinstance(table, ConceptTable):
            if concepts is not None:
                return ConceptTable(
                    table.columns, table.labels, table.caption_template, seeds=table.seeds, concepts=concepts, seed=table.seed
                )
            return table
        if template is None:
            raise ValueError(
                "caption_template is needed to build captions from the table's columns, e.g. "
                "'a {colour} {shape} on a {texture} background'."
            )
        if isinstance(table, (str, os.PathLike)):
            return ConceptTable.from_csv(
                table, template, label_column=label_column, seed_column=seed_column, concepts=concepts, seed=seed
            )
        if isinstance(table, Mapping):
            return ConceptTable.from_columns(
                table, template, label_column=label_column, seed_column=seed_column, concepts=concepts, seed=seed
            )
        raise ValueError(
            f"concept_table must be a ConceptTable, a CSV path or a mapping of columns, got {type(table).__name__}."
        )

    # ---------------------------------------------------------------- identity and state
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "table": self._table_fingerprint(),
            "metric": self.metric_name,
            "n_repeats": self.n_repeats,
        }

    def _table_fingerprint(self) -> str | None:
        # Lightning reads ``state_key`` at every hook call (hundreds per epoch); hashing the table each
        # time cost about 0.04 s per epoch of the quickstart
        table = self.concept_table
        if table is None:
            return None
        cached = self._table_fp
        if cached is None or cached[0] is not table:
            cached = self._table_fp = (table, table.fingerprint())
        return cached[1]

    def explainer_state(self) -> dict[str, Any]:
        return {"previous": self._previous, "history": list(self.history)}

    def load_explainer_state(self, state: dict[str, Any]) -> None:
        self._previous = state.get("previous")
        self.history = list(state.get("history", []))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.generator is None or self.concept_table is None:
            rank_zero_warn(
                "ConceptPermutationCallback has no generator or no concept table, so it cannot explain anything; pass "
                "generator=WorldGenerator() (or DiffusersGenerator(pipeline)) and concept_table=<ConceptTable | CSV | "
                "columns> with a caption_template."
            )

    # ---------------------------------------------------------------- explain
    def _explainer(self, trainer: Trainer) -> ConceptPermutation:
        if self._depict is None:
            cache = GenerationCache(
                self.generator, directory=self.cache_dir, show_progress=self.show_progress and trainer.is_global_zero
            )
            self._depict = ConceptPermutation(
                self.generator,
                self.concept_table,
                metric=self.metric,
                n_repeats=self.n_repeats,
                seed=self.seed,
                interval=self.interval,
                transform=self.transform,
                batch_size=self.batch_size,
                cache=cache,
                n_bootstrap=self.n_bootstrap,
                autocast_dtype=self.autocast_dtype,
            )
        return self._depict

    def explain(self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample) -> ExplainResult:
        if self.generator is None or self.concept_table is None:
            raise ValueError(
                "No generator or concept table: pass generator=... and concept_table=... to ConceptPermutationCallback."
            )
        depict = self._explainer(trainer)
        before = (depict.cache.generated, depict.cache.calls)
        result = self._split_and_gather(trainer, pl_module, depict)
        epoch = trainer.current_epoch
        tau = None
        previous_epoch = None
        if self._previous is not None:
            prev = self._previous["importance"]
            common = [c for c in result.concepts if c in prev]
            if len(common) >= 2:
                from lightning_xai.permutation import kendall_tau

                tau = kendall_tau([result.importance_of(c) for c in common], [prev[c] for c in common])
                tau = None if math.isnan(tau) else tau
            previous_epoch = self._previous["epoch"]
        current = {"epoch": epoch, "importance": {c: result.importance_of(c) for c in result.concepts}}
        self._previous = current
        self.history.append({**current, "ranking": result.ranking(), "kendall_tau_prev": tau})
        # under DDP each rank generated (and caches) the scenes of its own concepts: report the sums
        counts = gather_objects(trainer, (depict.cache.generated - before[0], depict.cache.calls - before[1], len(depict.cache)))
        generation = {
            "generated_now": sum(c[0] for c in counts),
            "generator_calls_now": sum(c[1] for c in counts),
            "cached_images": sum(c[2] for c in counts),
            "fingerprint": depict.cache.fingerprint,
        }
        return self._result(epoch, result, tau, previous_epoch, generation)

    def _split_and_gather(self, trainer: Trainer, pl_module: LightningModule, depict: ConceptPermutation) -> PermutationResult:
        """Each rank scores a contiguous share of the concepts; the shares are gathered (equal shapes, padded)."""
        concepts = list(self.concept_table.concepts)
        world, rank = max(1, trainer.world_size), trainer.global_rank
        if world == 1:
            return depict.explain(pl_module, concepts, device=pl_module.device)
        per = math.ceil(len(concepts) / world)
        mine = concepts[rank * per : (rank + 1) * per]
        R, B = self.n_repeats, self.n_bootstrap
        width = 2 * R + 1 + B
        local = torch.full((per, width), float("nan"), dtype=torch.float64)
        base = float("nan")
        part = run_share(trainer, lambda: depict.explain(pl_module, mine, device=pl_module.device) if mine else None)
        if part is not None:
            base = part.base
            local[: len(mine), :R] = torch.as_tensor(part.permuted)
            local[: len(mine), R : 2 * R] = torch.as_tensor(part.changed)
            if part.bootstrap is not None:
                local[: len(mine), 2 * R + 1 :] = torch.as_tensor(part.bootstrap)
        local[:, 2 * R] = base
        gathered = pl_module.all_gather(local.to(pl_module.device)).cpu().double().reshape(world * per, width)
        gathered = gathered[: len(concepts)]
        bases = gathered[:, 2 * R]
        base = float(bases[~torch.isnan(bases)][0])
        permuted = gathered[:, :R].numpy()
        return PermutationResult(
            concepts=concepts,
            metric=depict.metric_name,
            base=base,
            permuted=permuted,
            importance=base - permuted,
            changed=gathered[:, R : 2 * R].numpy(),
            interval=self.interval,
            n_rows=self.concept_table.n,
            constant=[c for c in concepts if self.concept_table.is_constant(c)],
            bootstrap=gathered[:, 2 * R + 1 :].numpy() if B else None,
        )

    def _result(
        self,
        epoch: int,
        result: PermutationResult,
        tau: float | None,
        previous_epoch: int | None,
        generation: dict[str, Any],
    ) -> ExplainResult:
        rows = result.rows()
        columns = list(rows[0])
        ranking = result.ranking()
        scalars = {f"importance/{r['concept']}": r["importance"] for r in rows}
        scalars[f"base_{result.metric}"] = result.base
        if tau is not None:
            scalars["kendall_tau_prev"] = tau
        tables = [
            Table("permutation_importance", columns, [list(r.values()) for r in rows]),
            Table("ranking", ["rank", "concept", "importance"], [[i + 1, c, result.importance_of(c)] for i, c in enumerate(ranking)]),
        ]
        chart_rows = [[r["concept"], r["importance"]] for r in sorted(rows, key=lambda r: r["rank"])]
        charts = [
            Chart(
                key="importance",
                kind="bar",
                table=Table("importance_bars", ["concept", "importance"], chart_rows),
                x="concept",
                y="importance",
                title=f"Concept permutation importance ({result.metric} drop), epoch {epoch}",
            )
        ]
        media = [Media(key="importance_plot", image=_importance_figure(result, epoch),
                       caption=f"{result.metric} drop when each concept is permuted ({result.importance.shape[1]} repeats, "
                               f"{int(100 * result.interval)}% paired-bootstrap interval over rows), epoch {epoch}")]
        payload = {
            "metric": result.metric,
            "base": result.base,
            "n_rows": result.n_rows,
            "n_repeats": int(result.importance.shape[1]),
            "interval": result.interval,
            "importance": rows,
            "ranking": ranking,
            "constant_concepts": result.constant,
            "kendall_tau_prev": tau,
            "previous_epoch": previous_epoch,
            "generation": generation,
        }
        return ExplainResult(payload=payload, scalars=scalars, tables=tables, charts=charts, media=media)


def _importance_figure(result: PermutationResult, epoch: int) -> np.ndarray:
    """Importance per concept, most important first, with its interval; negative drops in red."""
    order = [result.concepts.index(c) for c in result.ranking()]
    mean, low, high = result.mean[order], result.ci_low[order], result.ci_high[order]
    err = np.vstack([np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)])
    return bar_chart(
        [result.concepts[i] for i in order],
        [mean],
        errors=[err],
        bar_colours=[[TAB10[3] if m < 0 else TAB10[0] for m in mean]],
        hline=0.0,
        ylabel=f"{result.metric} drop",
        title=f"Permutation importance, epoch {epoch} (base {result.metric} {result.base:.3f})",
        size=(round(100 * max(4.0, 1.0 + 0.8 * len(order))), 340),
    )
