#!/usr/bin/env python
"""How strong are the generators of a selection from the shared AlpacaEval pool? (issue 17)

The pool (``../shared/data/alpaca_eval_pool.jsonl.gz``) holds 805 instructions answered by 40
generators; ``alpaca_eval_leaderboard.jsonl`` gives each generator's length-controlled AlpacaEval 2
win rate (``NullModel``, a deliberate junk string, counts as 0). A selection's figure is the mean
win rate of its rows' generators.

  # the pool as a selection input (ids r0, r1, ... are pool positions)
  python scripts/pool_winrate.py pool /tmp/pool.jsonl
  laser-fast select /tmp/pool.jsonl --budget 2000 --profile lite --strategy combination \\
      --mode kmeans --seed 0 --workdir /tmp/wd --output-dir /tmp/out --no-report
  python scripts/pool_winrate.py score /tmp/out [more output folders...]

``pool --oracle-quality --difficulty-from OUT/decisions.parquet`` writes every quality metric as
the generator's win rate itself and ``difficulty`` as a lite run over this pool scored it (rows
that run left unscored, its duplicates, get 0; they are duplicates here too), for ``--profile
none``: the ceiling a perfect quality scorer would reach under the same selection. These win rates
are the benchmark's answer key: a scorer may learn from them on the development half only (and
then be judged on the test half, best on ``--unseen`` rows), never on the rows it is judged on.

``pool --unseen`` writes only the test half's answers by the held-out generators
(``benchmarks.data.generator_halves``, ``NullModel`` included): the shipped ``onepass`` quality head learned
from AlpacaEval pairs of the other generators on the development half, so these rows are new to it
in both respects. (``--oracle-quality`` cannot be combined with it: its difficulty file has one row
per pool row.)

``score`` splits the pool's instructions once, by ``sha1(instruction) mod 2`` (0: development
half, 1: test half), and prints both halves beside the whole, so a choice made on one half can be
reported on the other.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.data import DATA, alpaca_pool_rows, alpaca_win_rates, dev_half, generator_halves

QUALITY_COLUMNS = ("quality", "if_quality", "process_reward", "code_quality")


def pool_rows(data: Path) -> list[dict]:
    rows = alpaca_pool_rows(data)
    if rows is None:
        sys.exit(f"{data / 'alpaca_eval_pool.jsonl.gz'} not found: give the shared data folder with --data")
    return rows


def write_pool(args) -> None:
    rows = pool_rows(args.data)
    lc = alpaca_win_rates(args.data)
    diff = None
    if args.oracle_quality:
        import polars as pl

        if args.unseen:
            sys.exit("--oracle-quality takes the whole pool: leave out --unseen")

        if args.difficulty_from is None:
            sys.exit("--oracle-quality needs --difficulty-from: the decisions.parquet of a lite run over this pool")
        diff = np.nan_to_num(pl.read_parquet(args.difficulty_from, columns=["difficulty"])["difficulty"].to_numpy(), nan=0.0)
        if len(diff) != len(rows):
            sys.exit(f"{args.difficulty_from}: {len(diff)} rows, the pool has {len(rows)}; run the selection on the file 'pool' wrote")
    held_out = generator_halves(lc)[1]
    n = 0
    with open(args.out, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            if args.unseen and (dev_half(r["instruction"]) or r["generator"] not in held_out):
                continue
            n += 1
            rec = {"id": f"r{i}", "instruction": r["instruction"], "output": r["output"] or ""}
            if args.oracle_quality:
                rec.update({k: lc[r["generator"]] for k in QUALITY_COLUMNS}, difficulty=float(diff[i]))
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {n} rows to {args.out}")


def mean(v: np.ndarray) -> str:
    return f"{v.mean():.2f}" if v.size else "-"


def score(args) -> None:
    rows = pool_rows(args.data)
    lc = alpaca_win_rates(args.data)
    for out in args.outputs:
        ids = []
        path = Path(out) / "selected.jsonl"
        if not path.is_file():
            sys.exit(f"{path} not found: give the --output-dir of a laser-fast select run")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            rid = json.loads(line).get("id") or ""
            if not (rid.startswith("r") and rid[1:].isdigit() and int(rid[1:]) < len(rows)):
                sys.exit(f"{out}/selected.jsonl line {n}: id {rid!r} is not a pool position written by 'pool'")
            ids.append(int(rid[1:]))
        y = np.array([lc[rows[i]["generator"]] for i in ids])
        dev = np.array([dev_half(rows[i]["instruction"]) for i in ids])
        null = sum(rows[i]["generator"] == "NullModel" for i in ids)
        print(f"{out}: {len(ids)} rows, {len({rows[i]['instruction'] for i in ids})} instructions, mean LC win rate "
              f"{mean(y)} (development half {mean(y[dev])} over {dev.sum()} rows, test half "
              f"{mean(y[~dev])} over {(~dev).sum()}), NullModel rows {null}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool", help="write the pool as a selection input")
    p.add_argument("out", type=Path)
    p.add_argument("--oracle-quality", action="store_true")
    p.add_argument("--difficulty-from", type=Path, metavar="PARQUET", help="decisions.parquet of a lite run over this pool")
    p.add_argument("--unseen", action="store_true", help="only the test half's answers by the held-out generators (generator_halves): "
                   "rows whose instruction and generator the AlpacaEval-trained quality head never saw")
    s = sub.add_parser("score", help="mean generator win rate of selections")
    s.add_argument("outputs", nargs="+")
    args = ap.parse_args(argv)
    (write_pool if args.cmd == "pool" else score)(args)


if __name__ == "__main__":
    main()
