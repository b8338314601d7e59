"""The shared data the benchmarks read (``../shared/data`` beside the project)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def alpaca_pool_rows(data: Path = DATA) -> list[dict] | None:
    """Every row of the AlpacaEval pool (``instruction``, ``output``, ``generator``, ...) in file
    order, or None when ``data`` (default ``../shared/data``) does not hold it."""
    path = data / "alpaca_eval_pool.jsonl.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


def alpaca_win_rates(data: Path = DATA) -> dict[str, float]:
    """Each pool generator's length-controlled AlpacaEval 2 win rate
    (``alpaca_eval_leaderboard.jsonl``); ``NullModel``, a deliberate junk string that games the
    judge, counts as 0."""
    lc = {}
    for line in (data / "alpaca_eval_leaderboard.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        lc[d["generator"]] = float(d["length_controlled_winrate"])
    lc["NullModel"] = 0.0
    return lc


def repeated_alpaca(n: int) -> tuple[list[str], list[str]]:
    """``n`` (instruction, output) texts from the AlpacaEval pool, repeated in file order; every
    repetition after the first gets the suffix `` (variant K)`` on its instruction, so each text
    is unique. Needs ``../shared/data`` (the callers check)."""
    base = [(r["instruction"], r["output"]) for r in alpaca_pool_rows() or []]
    ins, out = [], []
    for i in range(n):
        a, b = base[i % len(base)]
        k = i // len(base)
        ins.append(a if k == 0 else f"{a} (variant {k})")
        out.append(b)
    return ins, out
