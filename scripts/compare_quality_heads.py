#!/usr/bin/env python
"""The quality heads against "the longer response wins" on pairs they were not trained on.

* ``--pairs F``: the held-out quarter (scripts/train_onepass.py's split) of the training pairs file;
* ``--heldout F``: an external held-out file (``pairs_heldout.jsonl`` of
  scripts/public_data/build_prompts.py: Auto-J's human-labelled pairwise test set, never trained
  on), split into a ``dev`` half (printed) and a ``test`` half (printed only with ``--report-test``:
  look at it once, after every choice is made).

Heads: ``onepass`` (the lite profile's MiniLM head) always; ``lite_quality`` (SmolLM2, the lite-llm
profile) with ``--lite-llm`` (about 10 responses/s on 2 cores). "similar length" = pairs whose
character lengths are within 1.3x of each other. A tie counts half.

Usage: python scripts/compare_quality_heads.py --heldout public_data/pairs_heldout.jsonl [--report-test]
"""
from __future__ import annotations

import argparse
import json
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


def _score(texts: list[tuple[str, str]], need: list[int], lite_llm: bool, onepass_model: Path | None = None) -> dict[str, np.ndarray]:
    inst, resp = [texts[i][0] for i in need], [texts[i][1] for i in need]
    heads = {"onepass": OnePassScorer(onepass_model).score_pairs(inst, resp)["onepass_quality"]}
    if lite_llm:
        heads["lite_quality"] = score_quality(inst, resp)
    out = {}
    for name, v in heads.items():
        full = np.full(len(texts), np.nan)
        full[need] = v
        out[name] = full
    out["longer wins"] = np.array([len(r) for _, r in texts], dtype=float)
    return out


def _report(label: str, scores: dict[str, np.ndarray], b: np.ndarray, w: np.ndarray, chars: np.ndarray) -> dict:
    ratio = np.maximum(chars[b], chars[w]) / np.maximum(1.0, np.minimum(chars[b], chars[w]))
    sim = ratio <= 1.3
    row = {"set": label, "pairs": len(b), "similar_length_pairs": int(sim.sum())}
    for name, s in scores.items():
        row[name] = round(tlq.pair_acc(s, b, w), 4)
        row[f"{name} (similar length)"] = round(tlq.pair_acc(s, b[sim], w[sim]), 4)
    print(json.dumps(row))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, help="training pairs file: report its held-out quarter")
    ap.add_argument("--heldout", type=Path, help="external held-out pairs (pairs_heldout.jsonl)")
    ap.add_argument("--report-test", action="store_true", help="also print the test half of --heldout")
    ap.add_argument("--lite-llm", action="store_true", help="also score with lite_quality (SmolLM2)")
    ap.add_argument("--onepass-model", type=Path, help="the onepass heads' folder (default: the shipped ones)")
    a = ap.parse_args()
    if not (a.pairs or a.heldout):
        ap.error("give --pairs and/or --heldout")
    if a.pairs:
        p = tlq.Pairs()
        to.load_pairs_file(a.pairs, p)
        b, w, src, grp = np.array(p.better), np.array(p.worse), np.array(p.source), np.array(p.group)
        test = np.array([to.held_out(s, g) for s, g in zip(src, grp)])
        scores = _score(p.texts, sorted(set(b[test]) | set(w[test])), a.lite_llm, a.onepass_model)
        chars = np.array([len(r) for _, r in p.texts], dtype=float)
        for so in sorted(set(src.tolist())):
            t = test & (src == so)
            _report(f"{a.pairs.name} held-out quarter: {so}", scores, b[t], w[t], chars)
    if a.heldout:
        rows = [json.loads(line) for line in a.heldout.read_text(encoding="utf-8").splitlines() if line.strip()]
        halves = ["dev", "test"] if a.report_test else ["dev"]
        rows = [r for r in rows if r["half"] in halves]
        texts = [(r["instruction"], t) for r in rows for t in (r["chosen"], r["rejected"])]
        b, w = np.arange(0, len(texts), 2), np.arange(1, len(texts), 2)
        scores = _score(texts, list(range(len(texts))), a.lite_llm, a.onepass_model)
        chars = np.array([len(t) for _, t in texts], dtype=float)
        half = np.array([r["half"] for r in rows])
        for h in halves:
            _report(f"{a.heldout.name}: {h}", scores, b[half == h], w[half == h], chars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
