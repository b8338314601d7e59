"""The scorer interface."""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)


class Scorer(ABC):
    """A batched scorer. Model scorers (difficulty, deita, PRM, judges, ...) implement this.

    Attributes:
        name: short unique name (``"tokens"``, ``"difficulty"``...).
        outputs: the metric columns :meth:`score` returns.
        categories: the categories it applies to (None = every record).
        gpu_share: the share of a GPU one copy of its model needs on an engine's worker (0: it
            runs no model on a GPU, e.g. an HTTP judge; fractions share a GPU between workers).
    """

    name: str = ""
    outputs: tuple[str, ...] = ()
    categories: tuple[str, ...] | None = None
    gpu_share: float = 0.0

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Identifies everything that changes the scores: model id + revision, prompt template,
        max length and code version. Cached scores are reused only under the same fingerprint."""

    @abstractmethod
    def score(self, batch: pl.DataFrame, *, batch_size: int | None = None, show_progress: bool | None = None) -> dict[str, np.ndarray]:
        """Score a batch of records (the ingestion table's columns) and return
        ``{output name: float64 array of len(batch)}`` in the batch's order."""

    def applies_to(self, categories: Sequence[str]) -> np.ndarray:
        """Boolean mask of the records this scorer should score."""
        if self.categories is None:
            return np.ones(len(categories), dtype=bool)
        return np.isin(np.asarray(categories, dtype=object), list(self.categories))


    @property
    def used_device(self) -> str | None:
        """Where the scorer actually ran (``cpu``, ``cuda:0``, ``vllm:cuda``, an endpoint URL);
        None before it ran or for a scorer without a model. Recorded in the manifest."""
        return None

    def release(self) -> None:
        """Free what the scorer holds once it is done (models on the GPU, judge engines); the next
        :meth:`score` loads them again. The default holds nothing."""

    def host_memory_mb(self) -> int | None:
        """Peak host memory in MB of one worker running this scorer on the CPU, estimated from its
        models' checkpoint headers (:mod:`laser_fast.runtime.model_memory`); the Ray engine
        reserves it for CPU actors. None: unknown, nothing is reserved (the default)."""
        return None

    def worker_pins(self) -> dict:
        """Choices this scorer made from the machine it was built on that are part of its
        fingerprint (the CPU's bfloat16 support choosing the dtype): an engine's worker built on
        another kind of machine takes them over (:meth:`apply_pins`), so every node computes the
        same scores under the driver's fingerprint. The default makes none."""
        return {}

    def apply_pins(self, pins: dict) -> None:
        """Take over the driver's :meth:`worker_pins` (before the first score)."""
        if pins:
            raise NotImplementedError(f"{self.name} makes no machine-dependent choices to pin, got {sorted(pins)}")
