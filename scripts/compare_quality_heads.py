#!/usr/bin/env python
"""``lite_quality`` (SmolLM2, the lite-llm profile) vs ``onepass_quality`` (the lite profile) vs "the
longer response wins" on the held-out quarter (scripts/train_onepass.py's split) of a pairs file that
neither head was trained on outside that split; the old head never saw these sources at all.

Usage: python scripts/compare_quality_heads.py --pairs public_data/pairs.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import train_lite_quality as tlq
import train_onepass as to

from laser_fast.scorers.lite import score_quality
from laser_fast.scorers.onepass import OnePassScorer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, required=True)
    a = ap.parse_args()
    p = tlq.Pairs()
    to.load_pairs_file(a.pairs, p)
    b, w, src, grp = np.array(p.better), np.array(p.worse), np.array(p.source), np.array(p.group)
    test = np.array([to.held_out(s, g) for s, g in zip(src, grp)])
    need = sorted(set(b[test]) | set(w[test]))
    inst, resp = [p.texts[i][0] for i in need], [p.texts[i][1] for i in need]
    old, new = np.full(len(p.texts), np.nan), np.full(len(p.texts), np.nan)
    new[need] = OnePassScorer().score_pairs(inst, resp)["onepass_quality"]
    old[need] = score_quality(inst, resp)
    chars = np.array([len(r) for _, r in p.texts], dtype=float)
    for so in sorted(set(src.tolist())):
        t = test & (src == so)
        print(f"{so}: {int(t.sum())} held-out pairs; lite_quality {tlq.pair_acc(old, b[t], w[t]):.4f}, "
              f"onepass {tlq.pair_acc(new, b[t], w[t]):.4f}, longer wins {tlq.pair_acc(chars, b[t], w[t]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
