"""The stage signature every step of a run shares, and what each stage declares for an engine.

A stage is a function over a table of records::

    def some_stage(records: pl.DataFrame, opts: SelectOptions, *, workdir: WorkDir,
                   columns: Mapping[str, np.ndarray]) -> StageResult

``records`` is the ingested table (one row per record; see :data:`laser_fast.io.builder.OUTPUT_COLUMNS`),
``columns`` holds what earlier stages produced (one array per column, row-aligned with
``records``; read only), and the result carries the stage's new columns plus its own
:class:`StageStats`. No stage changes its inputs or a shared dictionary: the pipeline merges the
returned columns and puts each stage's stats into the manifest under the stage's name.

Each stage is declared once with a :class:`StageSpec`: the columns it reads and writes and the
resources one worker needs, so an engine adapter (e.g. Ray Data ``map_batches`` with GPU actors)
can run a row-wise stage over batches of the table without knowing what the stage does.

Example:
    >>> from laser_fast.runtime.stage import Resources, StageSpec
    >>> spec = StageSpec("language", "laser_fast.classifier.stage:language_stage",
    ...                  reads=("instruction",), writes=("is_english",), resources=Resources())
    >>> spec.resources.num_gpus
    0.0
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs.

    Attributes:
        num_cpus: CPU cores per worker.
        num_gpus: GPUs per worker when a GPU is used (a fraction shares one GPU between workers;
            0: the stage never uses a GPU).
        memory_mb: host memory one worker needs in MB (model weights, buffers, a batch), reserved
            with Ray for CPU actors (0: none). A task may work out its own instead
            (:meth:`~laser_fast.runtime.engine.UnitTask.memory_mb`: the model scorers from their
            checkpoints, :meth:`~laser_fast.scorers.base.Scorer.host_memory_mb`).
        row_wise: rows are independent, so the stage gives the same columns over any split of
            the table into batches (classification, scoring). False for stages that need every
            row at once (preference scaling fits over the whole pool; selection compares records).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int = 0
    row_wise: bool = True


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once.

    Attributes:
        name: the stage's name (manifest key, timings key).
        fn: ``"module:function"`` of the stage function, imported on first use.
        reads: record-table columns and earlier stage columns it reads.
        writes: columns it returns (a ``*`` suffix: a family of columns, e.g. ``*_scaled``).
        resources: what one worker needs.
    """

    name: str
    fn: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    resources: Resources = field(default_factory=Resources)

    def load(self) -> Callable[..., StageResult]:
        """The stage function."""
        mod, _, attr = self.fn.partition(":")
        return getattr(importlib.import_module(mod), attr)


class StageStats(Mapping):
    """What a stage reports for the manifest: counts, cache hits, model fingerprints.

    A small mapping owned by one stage; the pipeline copies it into the manifest under the
    stage's name. Values must be JSON-serialisable (numbers, strings, lists, dicts).
    """

    def __init__(self, name: str, **facts: Any):
        self.name = name
        self._facts: dict[str, Any] = dict(facts)

    def __setitem__(self, key: str, value: Any) -> None:
        self._facts[key] = value

    def __getitem__(self, key: str) -> Any:
        return self._facts[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._facts)

    def __len__(self) -> int:
        return len(self._facts)

    def update(self, other: Mapping[str, Any]) -> None:
        self._facts.update(other)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._facts)

    def __repr__(self) -> str:
        return f"StageStats({self.name!r}, {self._facts!r})"


@dataclass
class StageResult:
    """What a stage returns: new columns (row-aligned with its input table) and its stats."""

    columns: dict[str, np.ndarray]
    stats: StageStats


def named_rows(values) -> np.ndarray:
    """Which rows of an object column such as ``duplicate_of`` or ``contaminated_by`` name
    something (are not None), as a bool array."""
    return np.fromiter((x is not None for x in values), dtype=bool, count=len(values))
