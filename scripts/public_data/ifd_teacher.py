#!/usr/bin/env python
"""The teacher of the onepass difficulty head: the lite-llm profile's ``lite_difficulty`` (SmolLM2-135M
IFD, clipped to [0, 1]) of the chosen and rejected responses of a pairs file, N of them (seeded
shuffle), appended to ``--out`` 50 at a time (a rerun continues where the file ends).

Usage: python scripts/public_data/ifd_teacher.py --pairs public_data/pairs.jsonl --out public_data/ifd_teacher.jsonl -n 1500
"""
import argparse
import json
import random
from pathlib import Path

import polars as pl
import torch

from laser_fast.metrics import build_scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-n", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    items = []
    for line in a.pairs.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        for k in ("chosen", "rejected"):
            items.append((r["instruction"], r[k], r["source"], r.get("group_id") or r.get("tree_id")))
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
