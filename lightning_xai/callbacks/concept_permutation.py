"""``ConceptPermutationCallback``: DEPICT concept permutation importance, re-scored as the model trains."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from lightning_xai.callbacks.base import XAICallback, check_int, check_interval, gather_objects, run_share
from lightning_xai.capture import ValidationSample
from lightning_xai.input_match import fitted_to
from lightning_xai.permutation import ConceptPermutation, ConceptTable, GenerationCache
from lightning_xai.permutation.importance import resolve_autocast_dtype, resolve_metric
from lightning_xai.results.concept_permutation import ConceptPermutationResult

__all__ = ["ConceptPermutationCallback"]


class ConceptPermutationCallback(XAICallback):
    r"""Concept permutation importance (DEPICT, Jabbour et al. 2024) of a table of concepts, every few epochs.

    On the first explained epoch every image the permutations need is generated once (the base caption of
    each row, and each permutation's changed rows, all with the row's own seed) and cached; every explained
    epoch then only runs the classifier on the cached images: importance of concept ``k`` = metric on the
    unpermuted images minus the metric after ``k``'s column is shuffled, over ``n_repeats`` seeded shuffles.
    It reads no validation sample: the images are its own.

    The record of an explained epoch is a :class:`~lightning_xai.results.concept_permutation.ConceptPermutationResult`
    (its docstring documents every field); what it logs is :meth:`ConceptPermutationResult.logged
    <lightning_xai.results.concept_permutation.ConceptPermutationResult.logged>`: scalars
    ``xai/concept_permutation/base_<metric>`` and ``max_importance`` (monitorable; with ``log_scalars="all"``
    also ``importance/<concept>``), tables
    ``permutation_importance`` and ``ranking``, a bar chart and a figure with the bootstrap intervals. A record
    holds its own epoch only: how the ranking changes between epochs is the
    :class:`~lightning_xai.callbacks.ConceptDriftMonitor`'s (kind ``permutation_tau``).

    Distributed: each rank scores a contiguous share of the concepts; the shares are gathered and merged
    (:meth:`~lightning_xai.permutation.ConceptPermutation.merge`), so every rank logs the same values.

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
        transform: applied to generated images before the classifier (resize, normalise). Default: fit them to
            the validation inputs' size and channels (:class:`~lightning_xai.input_match.MatchInput`).
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
        **base: ``on``, ``on_error``, ``max_failures``, ``seed``: see :class:`XAICallback` (``seed`` also seeds the
            permutations).

    Raises:
        MisconfigurationException: a bad argument (the message names it and the valid choices), an unknown
            template column, a table without labels.

    Example:
        >>> from lightning_xai.world import WorldGenerator, world_concept_table
        >>> cb = ConceptPermutationCallback(WorldGenerator(), world_concept_table(200), n_repeats=5)
        >>> cb.concept_table.concepts
        ['shape', 'colour', 'texture', 'marker']
    """

    method = "concept_permutation"
    needs_sample = False

    def __init__(
        self,
        generator: Any = None,
        concept_table: ConceptTable | str | os.PathLike | Mapping[str, Sequence[Any]] | None = None,
        caption_template: str | Callable[[Mapping[str, Any]], str] | None = None,
        *,
        metric: str | Any = "accuracy",
        n_repeats: int = 10,
        every_n_epochs: int = 1,
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
        **base: Any,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            **base,
        )
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
            self.concept_table = self._table(
                concept_table, caption_template, label_column, seed_column, concepts, self.seed
            )
        except (TypeError, ValueError) as exc:
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

    @staticmethod
    def _table(
        table: Any,
        template: Any,
        label_column: str,
        seed_column: str | None,
        concepts: Sequence[str] | None,
        seed: int,
    ) -> ConceptTable | None:
        if table is None:
            return None
        if isinstance(table, ConceptTable):
            if concepts is None:
                return table
            return ConceptTable(
                table.columns,
                table.labels,
                table.caption_template,
                seeds=table.seeds,
                concepts=concepts,
                seed=table.seed,
            )
        if template is None:
            raise ValueError(
                "caption_template is needed to build captions from the table's columns, e.g. "
                "'a {colour} {shape} on a {texture} background'."
            )
        options = {
            "label_column": label_column,
            "seed_column": seed_column,
            "concepts": concepts,
            "seed": seed,
        }
        if isinstance(table, (str, os.PathLike)):
            return ConceptTable.from_csv(table, template, **options)
        if isinstance(table, Mapping):
            return ConceptTable.from_columns(table, template, **options)
        raise ValueError(
            f"concept_table must be a ConceptTable, a CSV path or a mapping of columns, got {type(table).__name__}."
        )

    # ---------------------------------------------------------------- identity and state
    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            # the callback passed max_samples=2 to the base before it could ask for no sample at all
            # (needs_sample): kept in the key, so checkpoints written then still find this callback's state
            "max_samples": 2,
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

    @override
    def prepare(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.generator is None or self.concept_table is None:
            rank_zero_warn(
                "ConceptPermutationCallback has no generator or no concept table, so it cannot explain anything; pass "
                "generator=WorldGenerator() (or DiffusersGenerator(pipeline)) and concept_table=<ConceptTable | CSV | "
                "columns> with a caption_template."
            )

    # ---------------------------------------------------------------- explain
    def _explainer(self, trainer: Trainer) -> ConceptPermutation:
        if self._depict is None or self._depict.table is not self.concept_table:
            show = self.show_progress and trainer.is_global_zero
            cache = GenerationCache(self.generator, directory=self.cache_dir, show_progress=show)
            self._depict = ConceptPermutation(
                self.generator,
                self.concept_table,
                metric=self.metric,
                n_repeats=self.n_repeats,
                seed=self.seed,
                interval=self.interval,
                transform=self.transform or fitted_to(self.input_shape),
                batch_size=self.batch_size,
                cache=cache,
                n_bootstrap=self.n_bootstrap,
                autocast_dtype=self.autocast_dtype,
            )
        return self._depict

    @override
    def explain(
        self, trainer: Trainer, pl_module: LightningModule, sample: ValidationSample | None = None
    ) -> ConceptPermutationResult:
        if self.generator is None or self.concept_table is None:
            raise ValueError(
                "No generator or concept table: pass generator=... and concept_table=... to ConceptPermutationCallback."
            )
        depict = self._explainer(trainer)
        world, rank = max(1, trainer.world_size), trainer.global_rank
        if world == 1:
            return depict.explain(pl_module, device=pl_module.device)
        # each rank scores a contiguous share of the concepts (generating the scenes of its own share)
        concepts = list(self.concept_table.concepts)
        per = math.ceil(len(concepts) / world)
        mine = concepts[rank * per : (rank + 1) * per]
        part = run_share(
            trainer,
            lambda: depict.explain(pl_module, concepts=mine, device=pl_module.device) if mine else None,
        )
        return depict.merge(gather_objects(trainer, part))
