"""The entry point of the spawned child that runs the reference k-means path (see
``benchmarks.case_cluster._reference_in_child``); a module of its own so that the child can import
it whatever the parent's ``__main__`` is."""
from __future__ import annotations

import numpy as np


def run_reference(path: str, k: int, q) -> None:  # pragma: no cover - runs in a spawned child
    from benchmarks.case_cluster import reference_cluster_select
    from benchmarks.common import timed

    z = np.load(path)
    q.put(timed(reference_cluster_select, z["x"], z["pref"], k))
