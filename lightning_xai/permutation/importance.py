"""DEPICT: concept permutation importance through a text-to-image generator (Jabbour et al., ECCV 2024).

Importance of concept ``k`` = the classifier's performance on images generated from the unpermuted
captions minus its performance after ``k``'s column is permuted across rows, over ``R`` seeded
repeats. Images are generated once (cached) and re-scored as often as the classifier changes; per
epoch the classifier runs once on every *distinct* image, and each permutation reuses the base
image's output for rows whose caption did not change.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import Tensor, nn

from lightning_xai.capture import autocast_context, explanation_mode, folded_batchnorm
from lightning_xai.permutation.cache import GenerationCache
from lightning_xai.permutation.table import ConceptTable, Permutation
from lightning_xai.results.concept_permutation import (
    ConceptImportance,
    ConceptPermutationResult,
    GenerationStats,
)
from lightning_xai.running import run_on_generated

__all__ = ["METRICS", "ConceptPermutation", "kendall_tau", "resolve_metric", "summarise"]

METRICS = ("accuracy", "auroc")
MetricFn = Callable[[Tensor, Tensor], float]


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    from torchmetrics.functional.classification import multiclass_accuracy

    return float(multiclass_accuracy(logits, labels, num_classes=logits.shape[1], average="micro"))


def _auroc(logits: Tensor, labels: Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    probs = logits.float().softmax(-1)
    if logits.shape[1] == 2:
        return float(binary_auroc(probs[:, 1], labels))
    return float(multiclass_auroc(probs, labels, num_classes=logits.shape[1], average="macro"))


#: half-precision dtypes the classifier may be scored in (``autocast_dtype``), by name
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_autocast_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """``None`` (score in float32), a dtype of :data:`AUTOCAST_DTYPES` or its name -> the dtype or ``None``.

    Raises:
        ValueError: anything else, listing the valid choices.

    Example:
        >>> resolve_autocast_dtype("bfloat16")
        torch.bfloat16
    """
    if value is None:
        return None
    if isinstance(value, str) and value in AUTOCAST_DTYPES:
        return AUTOCAST_DTYPES[value]
    if isinstance(value, torch.dtype) and value in AUTOCAST_DTYPES.values():
        return value
    raise ValueError(
        f"autocast_dtype={value!r} is not supported; choose None (float32) or one of {list(AUTOCAST_DTYPES)}."
    )


def resolve_metric(metric: str | Any) -> tuple[str, MetricFn]:
    """``(name, fn(logits, labels) -> float)`` for a metric name, a torchmetrics ``Metric`` or a callable.

    ``"accuracy"`` (micro, from the argmax) and ``"auroc"`` (binary for 2 classes, else macro one-vs-rest)
    come from torchmetrics. A ``torchmetrics.Metric`` instance gets softmax probabilities and the labels
    (it is cloned per call, so its state is never shared). A plain callable gets ``(logits, labels)``.

    Raises:
        ValueError: an unknown metric name (the message lists the valid ones) or another type.
    """
    if isinstance(metric, str):
        if metric == "accuracy":
            return "accuracy", _accuracy
        if metric == "auroc":
            return "auroc", _auroc
        raise ValueError(
            f"metric={metric!r} is not supported; choose one of {list(METRICS)}, a torchmetrics Metric or a callable."
        )
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics is a dependency
        Metric = ()  # type: ignore[assignment]
    if isinstance(metric, Metric):

        def fn(logits: Tensor, labels: Tensor) -> float:
            m = metric.clone()
            m.reset()
            m.update(logits.float().softmax(-1), labels)
            return float(m.compute())

        return type(metric).__name__, fn
    if callable(metric):
        return getattr(metric, "__name__", type(metric).__name__), lambda logits, labels: float(
            metric(logits, labels)
        )
    raise ValueError(
        f"metric must be one of {list(METRICS)}, a torchmetrics Metric or a callable (logits, labels) -> float; "
        f"got {type(metric).__name__}."
    )


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b between two score vectors (1: same order; nan with fewer than 2 entries or no variance)."""
    if len(a) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(np.asarray(a, float), np.asarray(b, float)).statistic)


def summarise(
    concepts: Sequence[str],
    metric: str,
    base: float,
    scores: np.ndarray,
    changed: np.ndarray,
    *,
    interval: float,
    n_rows: int,
    constant: Sequence[str] = (),
    bootstrap: np.ndarray | None = None,
    generation: GenerationStats | None = None,
) -> ConceptPermutationResult:
    """The :class:`~lightning_xai.results.concept_permutation.ConceptPermutationResult` of permutation scores.

    Args:
        concepts: the permuted concepts (``K``), in the table's order.
        metric: the metric's name. base: the metric on the unpermuted images.
        scores: ``[K, R]`` the metric after each permutation; the importance of a repeat is ``base - score``.
        changed: ``[K, R]`` share of rows each permutation changed.
        interval: coverage of the percentile intervals.
        n_rows: rows of the table. constant: the concepts whose column has one value.
        bootstrap: ``[K, B]`` mean importance on ``B`` paired row resamples, or ``None`` (the intervals over
            the repeats stand in for the bootstrap's).
        generation: what generating the images cost.

    Example:
        >>> r = summarise(["shape", "colour"], "accuracy", 0.9, np.array([[0.5, 0.6], [0.9, 0.9]]),
        ...               np.ones((2, 2)), interval=0.95, n_rows=10)
        >>> r.ranking(), [round(float(x), 3) for x in r.mean]
        (['shape', 'colour'], [0.35, 0.0])
    """
    scores = np.asarray(scores, dtype=float)
    drops = base - scores
    K, R = drops.shape
    mean = drops.mean(1)
    sd = drops.std(1, ddof=1) if R > 1 else np.zeros(K)
    tail = 50 * (1 - interval)
    low, high = np.percentile(drops, tail, axis=1), np.percentile(drops, 100 - tail, axis=1)
    if bootstrap is None:
        ci_low, ci_high = low, high
    else:
        ci_low = np.nanpercentile(bootstrap, tail, axis=1)
        ci_high = np.nanpercentile(bootstrap, 100 - tail, axis=1)
    order = sorted(range(K), key=lambda i: -mean[i])  # stable: ties keep the table's order
    rank = {i: r + 1 for r, i in enumerate(order)}
    rows = [
        ConceptImportance(
            concept=c,
            rank=rank[i],
            importance=float(mean[i]),
            sd=float(sd[i]),
            low=float(low[i]),
            high=float(high[i]),
            ci_low=float(ci_low[i]),
            ci_high=float(ci_high[i]),
            permuted=float(scores[i].mean()),
            changed_rows=float(np.asarray(changed)[i].mean()),
            constant=c in constant,
        )
        for i, c in enumerate(concepts)
    ]
    return ConceptPermutationResult(
        metric=metric,
        base=float(base),
        importance=rows,
        n_rows=int(n_rows),
        n_repeats=int(R),
        interval=float(interval),
        constant_concepts=[c for c in concepts if c in constant],
        generation=generation,
        scores=scores,
        changed=np.asarray(changed, dtype=float),
        bootstrap=bootstrap,
    )


@dataclass
class _ScoringPlan:
    """What scoring a list of concepts needs, for one generator state: the distinct images, in scoring order,
    and where each row of the base table and of every permutation finds its image. The table, its
    permutations and the keys do not change between epochs; only the classifier does."""

    fingerprint: str
    captions: list[str]
    seeds: list[int]
    keys: list[str]
    base: Tensor  # [n]: the image of each base row (index into ``keys``)
    # (concept index, repeat) -> (changed rows, their images); absent where no row changed
    changed: dict[tuple[int, int], tuple[Tensor, Tensor]]
    generated: bool = False  # every image is in the cache


class ConceptPermutation:
    """DEPICT permutation importance of a table's concepts for a classifier, through a generator.

    Configured once; every :meth:`explain` scores the classifier in its current state and returns a
    :class:`~lightning_xai.results.concept_permutation.ConceptPermutationResult`. The images are generated
    on the first call (and cached), so later calls only run the classifier.

    Args:
        generator: ``generate(captions, seeds) -> Tensor[N, 3, H, W]`` with a ``fingerprint``
            (:class:`~lightning_xai.world.WorldGenerator`, :class:`~lightning_xai.generators.DiffusersGenerator`).
        table: the :class:`ConceptTable` (rows, labels, seeds, caption template).
        model: the classifier :meth:`explain` scores when it is given none.
        metric: ``"accuracy"``, ``"auroc"``, a torchmetrics ``Metric`` or ``fn(logits, labels) -> float``.
        n_repeats: permutations per concept (``R``; the paper's notebook uses 25).
        seed: seed of the permutations (each concept's shuffles depend on its name and the repeat only).
        interval: coverage of the percentile interval over repeats.
        transform: applied to generated images before the classifier (resize, normalise); default none.
        batch_size: images per classifier forward. Default 64: on a CPU, larger batches of 64x64 scenes
            spill the activations out of the cache (scoring the quickstart's table took 0.48 s at 64, 0.73 s
            at 128 and 0.96 s at 256 on 2 cores, TinyCNN).
        cache: a :class:`GenerationCache` to share (default: a new one over ``generator``).
        cache_dir: folder for an on-disk cache (ignored when ``cache`` is given).
        show_progress: progress bars over generation.
        n_bootstrap: row resamples of the paired bootstrap interval (0: none). Accuracy is resampled in one
            vectorised step; other metrics cost ``n_bootstrap * (n_repeats + 1)`` metric calls per concept.
        autocast_dtype: score the classifier under ``torch.autocast`` in ``"bfloat16"`` or ``"float16"``
            (or the ``torch`` dtype). Default ``None``: float32, the classifier's own numbers. Scoring is
            nearly all of a later epoch's cost; bfloat16 made it about 1.5x faster on a CPU with AVX512-BF16
            (2083 world scenes through the TinyCNN: 0.33 -> 0.23 s) and left the quickstart model's accuracy
            importances unchanged. Logits move by about 1e-3, so a prediction near a tie can flip; on a CPU
            without native bfloat16 it is slower, not faster. float16 needs a GPU: on a CPU the explanation
            fails with a ``ValueError`` (float16 ran 3x slower than float32 there).

    Raises:
        ValueError: bad ``n_repeats``, ``interval``, ``batch_size``, ``n_bootstrap`` or ``autocast_dtype``,
            an unknown metric.
        TypeError: ``table`` is not a :class:`ConceptTable`.

    Example:
        >>> from lightning_xai.world import TinyCNN, WorldGenerator, world_concept_table
        >>> depict = ConceptPermutation(WorldGenerator(), world_concept_table(8), n_repeats=2, show_progress=False)
        >>> result = depict.explain(TinyCNN(num_classes=6))
        >>> result.concepts, result.drops.shape
        (['shape', 'colour', 'texture', 'marker'], (4, 2))
    """

    def __init__(
        self,
        generator: Any,
        table: ConceptTable,
        *,
        model: nn.Module | None = None,
        metric: str | Any = "accuracy",
        n_repeats: int = 10,
        seed: int = 0,
        interval: float = 0.95,
        transform: Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 64,
        cache: GenerationCache | None = None,
        cache_dir: str | None = None,
        show_progress: bool = True,
        n_bootstrap: int = 200,
        autocast_dtype: str | torch.dtype | None = None,
    ) -> None:
        if not isinstance(table, ConceptTable):
            raise TypeError(f"table must be a ConceptTable, got {type(table).__name__}.")
        if isinstance(n_repeats, bool) or not isinstance(n_repeats, int) or n_repeats < 1:
            raise ValueError(f"n_repeats must be an integer >= 1, got {n_repeats!r}.")
        if not isinstance(interval, (int, float)) or not 0.0 < float(interval) < 1.0:
            raise ValueError(f"interval must lie in (0, 1), got {interval!r}.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
            raise ValueError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}.")
        self.model = model
        self.metric_name, self.metric = resolve_metric(metric)
        self.autocast_dtype = resolve_autocast_dtype(autocast_dtype)
        self.n_bootstrap = n_bootstrap
        self.table = table
        self.n_repeats = n_repeats
        self.seed = int(seed)
        self.interval = float(interval)
        self.transform = transform
        self.batch_size = batch_size
        self.cache = (
            cache
            if cache is not None
            else GenerationCache(generator, directory=cache_dir, show_progress=show_progress)
        )
        self._perms: dict[str, list[Permutation]] = {}
        self._warned: set[str] = set()
        self._plans: dict[tuple[str, ...], _ScoringPlan] = {}

    # ------------------------------------------------------------------ generation
    def permutations(self, concept: str) -> list[Permutation]:
        if concept not in self._perms:
            self._perms[concept] = [
                self.table.permutation(concept, r, self.seed) for r in range(self.n_repeats)
            ]
        return self._perms[concept]

    def _check_concepts(self, concepts: Sequence[str] | None) -> list[str]:
        concepts = list(self.table.concepts if concepts is None else concepts)
        unknown = [c for c in concepts if c not in self.table.columns]
        if unknown:
            raise ValueError(
                f"concepts {unknown} are not columns of the table; the columns are {sorted(self.table.columns)}."
            )
        for c in concepts:
            if self.table.is_constant(c) and c not in self._warned:
                self._warned.add(c)
                warnings.warn(
                    f"Concept {c!r} has one distinct value ({self.table.columns[c][0]!r}) in all {self.table.n} rows: "
                    "permuting it cannot change any caption, so its importance is reported as 0. Add rows with "
                    "other values to measure it.",
                    stacklevel=3,
                )
        return concepts

    def needed(self, concepts: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
        """Every distinct (caption, seed) that scoring ``concepts`` needs: the base rows, then each permutation's
        changed rows."""
        plan = self._plan(self._check_concepts(concepts))
        return list(plan.captions), list(plan.seeds)

    def generate(self, concepts: Sequence[str] | None = None) -> int:
        """Generate (once) every image scoring ``concepts`` needs; returns how many were generated now."""
        before = self.cache.generated
        self._generate(self._plan(self._check_concepts(concepts)))
        return self.cache.generated - before

    def _generate(self, plan: _ScoringPlan) -> None:
        # the cache never forgets an image, so a plan's scenes are generated (or read from disk) once; later epochs
        # neither look them up again nor re-read the generator's fingerprint (a diffusers one hashes weights)
        if not plan.generated:
            self.cache.prefetch(plan.captions, plan.seeds, desc="DEPICT: generating images")
            plan.generated = True

    # ------------------------------------------------------------------ scoring
    def _plan(self, concepts: list[str]) -> _ScoringPlan:
        """The scoring plan of ``concepts`` under the generator's current state (built once per state: about
        20,000 key look-ups for the quickstart's table would otherwise be repeated every epoch)."""
        fingerprint = self.cache.refresh_fingerprint()
        plan = self._plans.get(tuple(concepts))
        if plan is not None and plan.fingerprint == fingerprint:
            return plan
        index: dict[str, int] = {}
        captions: list[str] = []
        seeds: list[int] = []

        def image_of(caption: str, seed: int) -> int:
            k = self.cache.key(caption, seed)
            if k not in index:
                index[k] = len(index)
                captions.append(caption)
                seeds.append(int(seed))
            return index[k]

        # base rows first, then each permutation's changed rows (the order generation and scoring follow)
        base = torch.tensor(
            [image_of(c, s) for c, s in zip(self.table.captions(), self.table.seeds)], dtype=torch.long
        )
        changed: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        for ki, c in enumerate(concepts):
            if self.table.is_constant(c):
                continue
            for r, p in enumerate(self.permutations(c)):
                rows = np.flatnonzero(p.changed)
                if len(rows):
                    idx = [image_of(p.captions[i], self.table.seeds[i]) for i in rows]
                    changed[(ki, r)] = (torch.as_tensor(rows), torch.tensor(idx, dtype=torch.long))
        if any(p.fingerprint != fingerprint for p in self._plans.values()):
            self._plans = {}  # plans of another generator state are of no use again
        plan = _ScoringPlan(fingerprint, captions, seeds, list(index), base, changed)
        self._plans[tuple(concepts)] = plan
        return plan

    def _score(self, model: nn.Module, plan: _ScoringPlan, device: torch.device) -> Tensor:
        """The classifier's logits for every image of ``plan``, ``[len(plan.keys), C]`` (float32, CPU)."""
        out: list[Tensor] = []
        amp = autocast_context(self.autocast_dtype, device, "autocast_dtype")
        # batch norms folded into their convolutions: scoring only reads the logits
        with explanation_mode(model), torch.no_grad(), folded_batchnorm(model), amp:
            for start in range(0, len(plan.keys), self.batch_size):
                x = self.cache.images(plan.keys[start : start + self.batch_size]).to(device)
                if self.transform is not None:
                    x = self.transform(x)
                logits = run_on_generated(
                    model, x, "transform"
                )  # channels-last on the CPU (faster convolutions)
                if not isinstance(logits, Tensor) or logits.dim() != 2:
                    raise ValueError(
                        f"the classifier must return logits [N, classes]; got {getattr(logits, 'shape', type(logits))}."
                    )
                out.append(logits.detach().float().cpu())
        return torch.cat(out)

    def explain(
        self,
        model: nn.Module | None = None,
        *,
        concepts: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> ConceptPermutationResult:
        """Importance of ``concepts`` (default: the table's) for ``model`` (default: the constructor's) as it is now.

        Generates whatever is not cached yet, runs the classifier once per distinct image, and scores every
        permutation. The model's modes and ``requires_grad`` flags are restored afterwards.

        Raises:
            ValueError: no model, a concept that is not a column, labels out of the classifier's range, a
                classifier that does not return logits ``[N, classes]``, float16 scoring on a CPU.
        """
        model = model if model is not None else self.model
        if model is None:
            raise ValueError(
                "no classifier to explain: pass one to explain(model) or ConceptPermutation(model=...)."
            )
        concepts = self._check_concepts(concepts)
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        device = torch.device(device)
        before = (self.cache.generated, self.cache.calls)
        plan = self._plan(concepts)
        self._generate(plan)
        logits = self._score(model, plan, device)
        base_logits = logits[plan.base]
        labels = self.table.labels
        n_classes = base_logits.shape[1]
        if int(labels.max()) >= n_classes or int(labels.min()) < 0:
            raise ValueError(
                f"labels range over [{int(labels.min())}, {int(labels.max())}] but the classifier has {n_classes} classes."
            )
        base = self.metric(base_logits, labels)
        K, R = len(concepts), self.n_repeats
        permuted = np.full((K, R), base, dtype=float)
        changed = np.zeros((K, R), dtype=float)
        perm_logits_all: list[list[Tensor | None]] = [[None] * R for _ in range(K)]
        for (ki, r), (rows, images) in plan.changed.items():
            changed[ki, r] = len(rows) / self.table.n
            perm_logits = base_logits.clone()
            perm_logits[rows] = logits[images]
            permuted[ki, r] = self.metric(perm_logits, labels)
            perm_logits_all[ki][r] = perm_logits
        boot = self._bootstrap(base_logits, perm_logits_all, labels) if self.n_bootstrap else None
        generation = GenerationStats(
            generated_now=self.cache.generated - before[0],
            generator_calls_now=self.cache.calls - before[1],
            cached_images=len(self.cache),
            fingerprint=self.cache.fingerprint,
        )
        return summarise(
            concepts,
            self.metric_name,
            float(base),
            permuted,
            changed,
            interval=self.interval,
            n_rows=self.table.n,
            constant=[c for c in concepts if self.table.is_constant(c)],
            bootstrap=boot,
            generation=generation,
        )

    @staticmethod
    def merge(parts: Sequence[ConceptPermutationResult | None]) -> ConceptPermutationResult:
        """One result from the results of disjoint shares of the concepts, in share order (e.g. one share per
        rank under DDP; ``None`` for a share without concepts).

        The concepts are ranked again over all shares; the generation counts are summed (every share generates
        the base scenes). The parts must hold their in-memory scores (results of :meth:`explain`).

        Raises:
            ValueError: no part holds a concept, or a part has no scores (a result read back from a record).
        """
        done = [p for p in parts if p is not None]
        if not done:
            raise ValueError("no share of the concepts was explained.")
        if any(p.scores is None or p.changed is None for p in done):
            raise ValueError(
                "merge needs the results of explain(), with their scores; results read from records have none."
            )
        first = done[0]
        boot = [p.bootstrap for p in done]
        stats = [p.generation for p in done if p.generation is not None]
        generation = (
            GenerationStats(
                generated_now=sum(g.generated_now for g in stats),
                generator_calls_now=sum(g.generator_calls_now for g in stats),
                cached_images=sum(g.cached_images for g in stats),
                fingerprint=stats[0].fingerprint,
            )
            if stats
            else None
        )
        return summarise(
            [c for p in done for c in p.concepts],
            first.metric,
            first.base,
            np.concatenate([p.scores for p in done]),  # type: ignore[misc]
            np.concatenate([p.changed for p in done]),  # type: ignore[misc]
            interval=first.interval,
            n_rows=first.n_rows,
            constant=[c for p in done for c in p.constant_concepts],
            bootstrap=None if any(b is None for b in boot) else np.concatenate(boot),  # type: ignore[arg-type]
            generation=generation,
        )

    def _bootstrap(self, base: Tensor, permuted: list[list[Tensor | None]], labels: Tensor) -> np.ndarray:
        """``[K, B]``: mean importance over repeats on ``B`` row resamples, shared by base and repeats (paired)."""
        n, B = base.shape[0], self.n_bootstrap
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 4099]))
        idx = torch.as_tensor(rng.integers(0, n, size=(B, n)))
        out = np.zeros((len(permuted), B))
        if self.metric_name == "accuracy" and self.metric is _accuracy:
            correct = (base.argmax(1) == labels).double()
            for ki, reps in enumerate(permuted):
                diffs = [
                    correct - (p.argmax(1) == labels).double()
                    if p is not None
                    else torch.zeros(n, dtype=torch.float64)
                    for p in reps
                ]
                d = torch.stack(diffs).mean(0)  # [N]: per-row drop, averaged over repeats
                out[ki] = d[idx].mean(1).numpy()
            return out
        with warnings.catch_warnings():
            # a resample may miss a class; such resamples give nan and are skipped
            warnings.simplefilter("ignore")
            for b in range(B):
                rows = idx[b]
                y = labels[rows]
                m_base = self.metric(base[rows], y)
                for ki, reps in enumerate(permuted):
                    drops = [m_base - self.metric(p[rows], y) if p is not None else 0.0 for p in reps]
                    out[ki, b] = float(np.mean(drops))
        return out
