"""Concept tables: one row per generated image, its concept values, caption, seed and label.

DEPICT permutes a concept *in text space*: the concept's column is shuffled across rows, every other
column is kept, and the captions are rebuilt. Each row keeps its own seed in every permutation, so a
permuted image differs from its base image by the concept alone (a paired comparison), and a row
whose caption did not change reuses its base image exactly.
"""

from __future__ import annotations

import csv
import hashlib
import os
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ConceptTable", "Permutation"]

CaptionTemplate = str | Callable[[Mapping[str, Any]], str]


def _template_fields(template: str) -> list[str]:
    fields = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        if name == "" or not name.isidentifier():
            raise ValueError(
                f"caption_template {template!r} has a field {{{name}}}; use named fields such as {{shape}} that "
                "name concept columns."
            )
        fields.append(name)
    return fields


@dataclass(frozen=True)
class Permutation:
    """One permuted version of a table: concept ``concept`` shuffled with repeat index ``repeat``.

    Attributes:
        concept: the permuted column.
        repeat: the repeat index ``r`` (0-based).
        order: ``[N]`` the permutation: row ``i`` takes the concept value of row ``order[i]``.
        captions: the rebuilt captions, one per row.
        changed: ``[N]`` bool, rows whose caption differs from the base caption (only these are generated).
    """

    concept: str
    repeat: int
    order: np.ndarray
    captions: list[str]
    changed: np.ndarray


class ConceptTable:
    """Rows of concept values with labels and per-row seeds, and a caption template.

    Args:
        columns: ``{concept: [value per row]}``; every column has the same length ``N``.
        labels: ``[N]`` class index of each row (the label the classifier is scored against).
        caption_template: a format string whose ``{fields}`` name columns (``"a {colour} {shape} on a
            {texture} background{marker}"``), or a callable ``row -> caption``.
        seeds: one generation seed per row (default: ``seed + i``). Every version of row ``i`` (base and
            permuted) is generated with ``seeds[i]``.
        concepts: the columns that are permuted (default: every column the template uses, or every column
            for a callable template). Other columns are context: kept as they are.
        seed: default seed offset and the base of the permutation generator.

    Raises:
        ValueError: columns of different lengths, labels or seeds of the wrong length, negative seeds, a
            template field that names no column (the message lists the columns), a concept that is not a
            column, or fewer than 2 rows.
        TypeError: a ``caption_template`` that is neither a format string nor a callable.

    Example:
        >>> table = ConceptTable({"shape": ["circle", "square"], "colour": ["red", "blue"]}, labels=[0, 1],
        ...                      caption_template="a {colour} {shape} on a plain background")
        >>> table.captions()
        ['a red circle on a plain background', 'a blue square on a plain background']
        >>> p = table.permutation("colour", repeat=0)
        >>> p.captions[0] in ('a red circle on a plain background', 'a blue circle on a plain background')
        True
    """

    def __init__(
        self,
        columns: Mapping[str, Sequence[Any]],
        labels: Sequence[int] | Tensor,
        caption_template: CaptionTemplate,
        *,
        seeds: Sequence[int] | None = None,
        concepts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        if not columns:
            raise ValueError(
                "columns is empty: pass {concept: [value per row], ...} with at least one column."
            )
        self.columns: dict[str, list[Any]] = {str(k): list(v) for k, v in columns.items()}
        lengths = {k: len(v) for k, v in self.columns.items()}
        n = next(iter(lengths.values()))
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every column must have one value per row; got lengths {lengths}.")
        if n < 2:
            raise ValueError(f"a concept table needs at least 2 rows to permute, got {n}.")
        self.n = n
        self.labels = torch.as_tensor(labels).long().flatten()
        if self.labels.numel() != n:
            raise ValueError(f"got {self.labels.numel()} labels for {n} rows; pass one label per row.")
        if seeds is None:
            seeds = [int(seed) + i for i in range(n)]
        seeds = list(seeds)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} rows; pass one seed per row.")
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds):
            bad = next(
                s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
            )
            raise ValueError(f"seeds must be non-negative integers, got {bad!r}.")
        self.seeds = [int(s) for s in seeds]
        self.seed = int(seed)
        if isinstance(caption_template, str):
            fields = _template_fields(caption_template)
            unknown = sorted(set(fields) - set(self.columns))
            if unknown:
                raise ValueError(
                    f"caption_template {caption_template!r} names unknown column(s) {unknown}; the columns are "
                    f"{sorted(self.columns)}."
                )
            self._fields = list(dict.fromkeys(fields))
        elif callable(caption_template):
            self._fields = list(self.columns)
        else:
            raise TypeError(
                f"caption_template must be a format string or a callable row -> caption, got "
                f"{type(caption_template).__name__}."
            )
        self.caption_template = caption_template
        if concepts is None:
            concepts = self._fields
        concepts = list(concepts)
        unknown = [c for c in concepts if c not in self.columns]
        if unknown:
            raise ValueError(f"concepts {unknown} are not columns; the columns are {sorted(self.columns)}.")
        if not concepts:
            raise ValueError("no concepts to permute: the template uses no column and none were named.")
        self.concepts = concepts
        self._base = [self._caption(i, {}) for i in range(n)]

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, Sequence[Any]],
        caption_template: CaptionTemplate,
        *,
        label_column: str = "label",
        seed_column: str | None = None,
        concepts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> ConceptTable:
        """A table from columns that include the labels (and optionally the seeds).

        Raises:
            ValueError: ``label_column`` or ``seed_column`` is not a column (the message lists them), or a
                label is not an integer.
        """
        columns = dict(columns)
        for name, what in ((label_column, "label_column"), (seed_column, "seed_column")):
            if name is not None and name not in columns:
                raise ValueError(f"{what}={name!r} is not a column; the columns are {sorted(columns)}.")
        try:
            labels = [int(v) for v in columns.pop(label_column)]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the label column {label_column!r} must hold class indices: {exc}") from exc
        seeds = [int(v) for v in columns.pop(seed_column)] if seed_column is not None else None
        return cls(columns, labels, caption_template, seeds=seeds, concepts=concepts, seed=seed)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike,
        caption_template: CaptionTemplate,
        *,
        label_column: str = "label",
        seed_column: str | None = None,
        concepts: Sequence[str] | None = None,
        seed: int = 0,
    ) -> ConceptTable:
        """A table from a CSV file with a header row (values are kept as strings, labels as integers).

        Example:
            >>> import tempfile, pathlib
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "rows.csv"
            >>> _ = f.write_text("shape,colour,label\\ncircle,red,0\\nsquare,blue,1\\n")
            >>> ConceptTable.from_csv(f, "a {colour} {shape} on a plain background").captions()[1]
            'a blue square on a plain background'
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"concept table file {os.fspath(path)!r} does not exist.")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise ValueError(f"concept table file {os.fspath(path)!r} has no header row.")
            columns: dict[str, list[str]] = {name: [] for name in reader.fieldnames}
            for row in reader:
                for name in reader.fieldnames:
                    columns[name].append(row[name] if row[name] is not None else "")
        return cls.from_columns(
            columns,
            caption_template,
            label_column=label_column,
            seed_column=seed_column,
            concepts=concepts,
            seed=seed,
        )

    # ------------------------------------------------------------------ captions
    def row(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.columns.items()}

    def _caption(self, i: int, override: Mapping[str, Any]) -> str:
        row = self.row(i)
        row.update(override)
        if isinstance(self.caption_template, str):
            return self.caption_template.format(**row)
        return str(self.caption_template(row))

    def captions(self) -> list[str]:
        """The base (unpermuted) caption of every row."""
        return list(self._base)

    def distinct_values(self, concept: str) -> list[Any]:
        return list(dict.fromkeys(self.columns[concept]))

    def is_constant(self, concept: str) -> bool:
        """True when the column has one distinct value (no permutation can change it)."""
        return len(self.distinct_values(concept)) < 2

    # ------------------------------------------------------------------ permutations
    def _rng(self, concept: str, repeat: int, seed: int | None) -> np.random.Generator:
        # keyed by the concept's *name*, so adding or reordering columns does not change other concepts'
        # permutations
        digest = hashlib.sha256(f"{self.seed if seed is None else seed}|{concept}|{repeat}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def permutation(self, concept: str, repeat: int, seed: int | None = None) -> Permutation:
        """The ``repeat``-th seeded shuffle of ``concept``'s column, with rebuilt captions.

        Raises:
            KeyError: ``concept`` is not a column.
        """
        if concept not in self.columns:
            raise KeyError(f"unknown concept {concept!r}; the columns are {sorted(self.columns)}.")
        order = self._rng(concept, repeat, seed).permutation(self.n)
        values = self.columns[concept]
        captions = [self._caption(i, {concept: values[int(order[i])]}) for i in range(self.n)]
        changed = np.array([c != b for c, b in zip(captions, self._base)], dtype=bool)
        return Permutation(
            concept=concept, repeat=int(repeat), order=order, captions=captions, changed=changed
        )

    def permutations(
        self, n_repeats: int, concepts: Sequence[str] | None = None, seed: int | None = None
    ) -> list[Permutation]:
        """Every concept's ``n_repeats`` permutations (concept-major order)."""
        concepts = self.concepts if concepts is None else list(concepts)
        return [self.permutation(c, r, seed) for c in concepts for r in range(n_repeats)]

    def fingerprint(self) -> str:
        """A digest of the rows, labels, seeds and captions (changes whenever any of them does)."""
        h = hashlib.sha256()
        for name in sorted(self.columns):
            h.update(repr((name, self.columns[name])).encode())
        h.update(repr((self.labels.tolist(), self.seeds, self._base, self.concepts)).encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ConceptTable(rows={self.n}, concepts={self.concepts}, columns={sorted(self.columns)})"
