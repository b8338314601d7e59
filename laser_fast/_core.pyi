"""Type stub for the compiled core ``laser_fast._core`` (C++17, pybind11, OpenMP).

Prefer the validating wrappers (``laser_fast.greedy.greedy_diverse``); these functions assume
their documented preconditions (e.g. unit-length rows) and only check what keeps them safe.
"""
from __future__ import annotations

from typing import Callable, TypedDict

import numpy as np
import numpy.typing as npt

class BuildInfo(TypedDict):
    openmp: bool
    openmp_version: int
    omp_max_threads: int
    compiler: str
    simd: list[str]
    dot_lanes: int
    vector_extensions: bool
    dispatch: list[str]
    kernel: str

def greedy_diverse(
    embeddings: npt.ArrayLike,
    *,
    min_distance: float = 0.1,
    order: npt.ArrayLike | None = None,
    budget: int = -1,
    num_threads: int = 0,
    block_size: int = 0,
    progress: Callable[[int, int], object] | None = None,
    method: str = "auto",
    n_cells: int = 0,
    switch_at: int = 0,
    stats: dict | None = None,
) -> npt.NDArray[np.int64]:
    """Exact greedy diversity filter over unit-length float32 rows (shape (n, d)).

    Accepts a candidate iff its cosine similarity to every accepted row is < 1 - min_distance.
    ``budget < 0``: no limit. ``block_size``: candidates per block (0: automatic, 128..512).
    ``progress(visited, accepted)`` is called between blocks (with the
    GIL held); Ctrl-C is noticed there too. Raises ValueError on bad order / min_distance.
    ``method``: "auto" (brute force until ``switch_at`` rows are accepted, 0: max(2048,
    4 n_cells), then the exact cell index), "brute" or "cells"; ``n_cells``: centroids (0:
    ~sqrt(candidates)). The result does not depend on them. ``stats``: a dict to fill with
    diagnostics (method used, cells, switch point, pair counts, phase wall times).
    """

def build_info() -> BuildInfo:
    """How the core was built: OpenMP, thread count, compiler, SIMD flags, kernel dispatch."""

def dot(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Float32 dot product in the fixed summation order used by ``greedy_diverse``."""
