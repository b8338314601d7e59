"""The shared data the benchmarks read (``../shared/data`` beside the project)."""
from __future__ import annotations

import gzip
import hashlib
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


def dev_half(instruction: str) -> bool:
    """The pool's development half (``sha1(instruction) mod 2 == 0``); the rest is its test half.
    Split once (issue 17), so a choice made on one half can be reported on the other."""
    return int(hashlib.sha1(instruction.encode("utf-8")).hexdigest(), 16) % 2 == 0


def generator_halves(lc: dict[str, float]) -> tuple[set[str], set[str]]:
    """``(trained, held out)``: the generators other than ``NullModel`` ranked by win rate and
    dealt alternately (the weakest to ``trained``), so both halves span the whole range.
    ``NullModel`` is held out. A quality head may be trained on the development half's answers
    by ``trained`` generators (``scripts/train_onepass.py --w-alpaca-eval``); the test half's
    answers by held-out generators (``scripts/pool_winrate.py pool --unseen``) are then new to it on both counts."""
    ranked = sorted((g for g in lc if g != "NullModel"), key=lambda g: (lc[g], g))
    return set(ranked[0::2]), set(ranked[1::2]) | {"NullModel"}


def trained_dev_answers(data: Path = DATA) -> tuple[dict[str, float], dict[str, dict[str, str]]] | None:
    """``(win rates, {instruction: {generator: answer}})``: the non-blank answers to the pool's
    development half by the trained half of the generators (what a scorer may learn from; see
    ``generator_halves``), or None when ``data`` does not hold the pool."""
    rows = alpaca_pool_rows(data)
    if rows is None:
        return None
    lc = alpaca_win_rates(data)
    trained, _ = generator_halves(lc)
    by_inst: dict[str, dict[str, str]] = {}
    for r in rows:
        if r["generator"] in trained and dev_half(r["instruction"]) and (r["output"] or "").strip():
            by_inst.setdefault(r["instruction"], {})[r["generator"]] = r["output"]
    return lc, by_inst


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
