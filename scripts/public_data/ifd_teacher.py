#!/usr/bin/env python
"""The teacher of the onepass difficulty head: the lite-llm profile's ``lite_difficulty`` (SmolLM2-135M
IFD, clipped to [0, 1]) of the chosen and rejected responses of a pairs file, N of them (seeded
shuffle), appended to ``--out`` 50 at a time (a rerun continues where the file ends).

Usage: python scripts/public_data/ifd_teacher.py --pairs public_data/pairs.jsonl --out public_data/ifd_teacher.jsonl -n 850

``--alpaca-eval-dev DATA`` takes its responses from the shared AlpacaEval pool instead (``DATA`` is
the shared data folder): ``--per-instruction`` answers (default 2, seeded) to each instruction of
the pool's development half (``benchmarks.data.dev_half``), written by the trained half of the
generators (``benchmarks.data.generator_halves``: ``NullModel`` and the other held-out generators
are left out, as ``scripts/train_onepass.py`` leaves them out of its AlpacaEval pairs), source
``alpaca_eval``. The IFD needs no win rate: the leaderboard only picks the generators.

  python scripts/public_data/ifd_teacher.py --alpaca-eval-dev ../shared/data --out public_data/ifd_alpaca_dev.jsonl -n 1000
"""
import argparse
import json
import random
import sys
from pathlib import Path

import polars as pl
import torch

from laser_fast.metrics import build_scorer


def pair_items(path: Path) -> list[tuple]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        for k in ("chosen", "rejected"):
            items.append((r["instruction"], r[k], r["source"], r.get("group_id") or r.get("tree_id")))
    return items


def pool_items(data: Path, per_instruction: int, seed: int = 0) -> list[tuple]:
    """``per_instruction`` non-empty answers to each development-half instruction of the AlpacaEval
    pool by the trained half of the generators, sampled with ``seed``; the group is the instruction."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for benchmarks.data
    from benchmarks.data import trained_dev_answers

    found = trained_dev_answers(data)
    if found is None:
        raise SystemExit(f"{data / 'alpaca_eval_pool.jsonl.gz'} not found: give the shared data folder as --alpaca-eval-dev")
    _, by_inst = found
    rng = random.Random(seed)
    items = []
    for inst in sorted(by_inst):
        outs = by_inst[inst]
        for g in rng.sample(sorted(outs), min(per_instruction, len(outs))):
            items.append((inst, outs[g], "alpaca_eval", inst))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, help="a pairs file: its chosen and rejected responses")
    src.add_argument("--alpaca-eval-dev", type=Path, metavar="DATA",
                     help="the shared data folder: answers to the AlpacaEval pool's development half by the trained generators")
    ap.add_argument("--per-instruction", type=int, default=2, help="with --alpaca-eval-dev: answers per instruction")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-n", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    items = pool_items(a.alpaca_eval_dev, a.per_instruction) if a.alpaca_eval_dev else pair_items(a.pairs)
    random.Random(0).shuffle(items)
    items = items[: a.n]
    done = len(a.out.read_text(encoding="utf-8").splitlines()) if a.out.exists() else 0
    sc = build_scorer("lite_difficulty")
    with open(a.out, "a", encoding="utf-8") as out:
        for s in range(done, len(items), 50):
            ch = items[s : s + 50]
            df = pl.DataFrame({"data_id": [f"r{s + i}" for i in range(len(ch))], "instruction": [c[0] for c in ch],
                               "response": [c[1] for c in ch], "user_turns": [[c[0]] for c in ch],
                               "responses": [[c[1]] for c in ch], "system": [""] * len(ch)})
            res = sc.score(df)
            out.writelines(json.dumps({"instruction": c[0], "response": c[1], "source": c[2], "group_id": c[3],
                                      "lite_difficulty": float(v), "cond": float(cond), "direct": float(direct)}) + "\n" for c, v, cond, direct in zip(ch, res["lite_difficulty"], res["ifd_cond_loss"], res["ifd_direct_loss"]))
            out.flush()
            print(s + len(ch), flush=True)


if __name__ == "__main__":
    main()
