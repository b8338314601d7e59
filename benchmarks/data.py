"""The shared data the benchmarks read (``../shared/data`` beside the project)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def alpaca_pool_rows() -> list[dict] | None:
    """Every row of the AlpacaEval pool (``instruction``, ``output``, ``generator``, ...) in file
    order, or None when ``../shared/data`` is absent."""
    path = DATA / "alpaca_eval_pool.jsonl.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]
