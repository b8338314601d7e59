#!/usr/bin/env python
"""Train and evaluate the ``onepass`` heads (laser_fast/scorers/onepass.py): quality and difficulty
from one MiniLM pass over each record's instruction and response.

Quality: a pairwise logistic regression (as scripts/train_lite_quality.py) on
  * PandaLM human pairs (../shared/data/pandalm_testset.jsonl, majority of three annotators),
  * GSM8K correct vs incorrect model solutions (../shared/data/gsm8k_model_solutions.jsonl.gz),
  * ``--pairs FILE`` (JSONL with ``instruction``, ``chosen``, ``rejected``, ``source``): public
    train-split preference pairs, e.g. Open-Assistant's human-ranked ``en_100_tree`` and
    UltraFeedback GPT-4 ratings (scripts/public_data/build.py; docs/public_data.md);
  * AlpacaEval generator pairs (``--w-alpaca-eval``, 0.3 by default; 0 leaves them out): answers
    to one instruction of the pool's development half (``benchmarks.data.dev_half``) by two of
    the trained half of the generators (``benchmarks.data.generator_halves``) whose length-controlled win
    rates differ by more than ``--ae-gap`` points, at most ``--ae-per-instruction`` pairs per
    instruction. The selection benchmark ranks rows by those same win rates, so its figures for
    this head are the test half's, and the ``pool --unseen`` rows are new to it in instruction and
    generator.

Difficulty: a ridge regression of ``--teacher FILE`` (repeatable; JSONL ``instruction``, ``response``,
``lite_difficulty``: the SmolLM2 IFD of the lite-llm profile, clipped to [0, 1], on public pairs'
responses and, since the heads of the second 2026-12-06 session, on AlpacaEval development-half
answers by the trained generators: ``scripts/public_data/ifd_teacher.py --alpaca-eval-dev``).
With ``--misaligned zero`` (the default) a row whose IFD exceeds 1 (``cond`` > ``direct`` loss:
the instruction does not help to predict the response, which Cherry LLM drops as misaligned) is
taught 0 rather than the clipped 1, so junk that ignores its instruction is not rated hardest.

Output: ``onepass_quality`` is the quality head's Bradley-Terry strength, ``exp(logit)``
(``--quality-output strength``, the default), or the logit (``linear``). Pairwise accuracies do
not depend on it; the ``combination`` recipe's product with difficulty does (docs/lite_quality.md).

Held-out split, fixed once before any fit: a pair (or teacher row) is held out when
``sha1(source + group)`` mod 4 == 0 (a quarter of every source's instructions / trees). Every
choice (C, alpha) is made by grouped CV on the other three quarters; the held-out quarter is
scored once, by the shipped heads, and reported beside "the longer response wins".

Usage:
  .venv/bin/python scripts/train_onepass.py --pairs /path/pairs.jsonl --teacher /path/ifd_teacher.jsonl \
      --teacher /path/ifd_alpaca_dev.jsonl --out laser_fast/models/onepass
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import train_lite_quality as tlq

from laser_fast._version import __version__
from laser_fast.scorers.onepass import GROUP_DIMS, ONEPASS_VERSION, embed_views, features

log = logging.getLogger("train_onepass")

QUALITY_GROUPS = ("cheap", "emb", "embx")
#: the groups of the difficulty head (``--difficulty-groups``; chosen by the grouped CV Spearman on
#: the training rows: 0.515 with every group, 0.504 without ilex, 0.303 from the instruction alone)
DIFFICULTY_GROUPS = ("cheap", "emb", "embx", "iemb", "ilex")
HUMAN = ("pandalm", "oasst")


def held_out(source: str, group: str) -> bool:
    """The fixed split: a quarter of every source's groups, by hash."""
    return int(hashlib.sha1(f"{source}\x00{group}".encode()).hexdigest(), 16) % 4 == 0


def load_pairs_file(path: Path, p: tlq.Pairs) -> dict:
    n = defaultdict(int)
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        src = "oasst" if r["source"].startswith("oasst") else "ultrafeedback" if r["source"].startswith("ultrafeedback") else r["source"]
        group = r.get("tree_id") or r.get("group_id") or r["instruction"]
        p.add(src, group, r["instruction"], r["chosen"], r["rejected"])
        n[src] += 1
    return dict(n)


def load_alpaca_eval_dev_half(data: Path, p: tlq.Pairs, gap: float, per_instruction: int, seed: int) -> dict:
    """AlpacaEval generator pairs on the pool's development half, by the trained half of the
    generators (see the module docstring)."""
    from benchmarks.data import generator_halves, trained_dev_answers

    found = trained_dev_answers(data)
    if found is None:
        sys.exit(f"{data / 'alpaca_eval_pool.jsonl.gz'} not found: give the shared data folder with --data, or --w-alpaca-eval 0")
    lc, by_inst = found
    trained, _ = generator_halves(lc)
    rng = random.Random(seed)
    n = 0
    for inst in sorted(by_inst):
        outs = by_inst[inst]
        cand = [(a, b) for a in sorted(outs) for b in sorted(outs) if lc[a] - lc[b] > gap]
        for a, b in rng.sample(cand, min(per_instruction, len(cand))):
            p.add("alpaca_eval", inst, inst, outs[a], outs[b])
            n += 1
    return {"instructions": len(by_inst), "generators": {g: round(lc[g], 1) for g in sorted(trained)}, "gap": gap,
            "per_instruction": per_instruction, "pairs": n, "split": "benchmarks.data.dev_half instructions x generator_halves()[0]"}


def embed_cached(texts: list[tuple[str, str]], work: Path) -> dict[str, np.ndarray]:
    """Feature groups of (instruction, response) pairs; MiniLM vectors cached in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    f = work / "onepass_vectors.npz"  # MiniLM vectors only: the feature version does not change them
    keys = [hashlib.sha1(a.encode("utf-8", "surrogatepass") + b"\0" + b.encode("utf-8", "surrogatepass")).hexdigest() for a, b in texts]
    have: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if f.exists():
        with np.load(f) as z:
            have = {str(k): (a, b) for k, a, b in zip(z["keys"], z["ei"], z["er"])}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in have}.values())
    log.info("features: %d pairs, %d cached, %d to embed", len(keys), len(keys) - len(todo), len(todo))
    if todo:
        ei, er, _ = embed_views([texts[i][0] for i in todo], [texts[i][1] for i in todo])
        for j, i in enumerate(todo):
            have[keys[i]] = (ei[j], er[j])
        ks = sorted(have)
        np.savez(f, keys=np.array(ks), ei=np.stack([have[k][0] for k in ks]), er=np.stack([have[k][1] for k in ks]))
    ei = np.stack([have[k][0] for k in keys]).astype(np.float32)
    er = np.stack([have[k][1] for k in keys]).astype(np.float32)
    return features([a for a, _ in texts], [b for _, b in texts], ei, er)


def quality(args) -> tuple[dict, dict]:
    p = tlq.Pairs()
    summary = {"pandalm": tlq.load_pandalm(args.data, p), "gsm8k": tlq.load_gsm8k(args.data, p, args.gsm_problems, args.seed)}
    if args.pairs:
        summary["pairs_file"] = load_pairs_file(args.pairs, p)
    if args.w_alpaca_eval > 0:
        summary["alpaca_eval"] = load_alpaca_eval_dev_half(args.data, p, args.ae_gap, args.ae_per_instruction, args.seed)
    # empty responses cannot be scored (NaN ranks lowest): drop them from training, keep them in the evaluation
    F = embed_cached([(a, b if b.strip() else " ") for a, b in p.texts], args.work)
    empty = np.array([not b.strip() for _, b in p.texts])
    b, w = np.array(p.better), np.array(p.worse)
    src, grp = np.array(p.source), np.array(p.group)
    test = np.array([held_out(s, g) for s, g in zip(src, grp)])
    weights = {"pandalm": 1.0, "gsm8k": args.w_gsm8k, "oasst": args.w_oasst, "ultrafeedback": args.w_ultrafeedback,
               "alpaca_eval": args.w_alpaca_eval}
    tlq.HD_SCALE[0] = args.hd_scale
    tr = ~test & ~empty[b] & ~empty[w]
    grid = [float(c) for c in args.C.split(",")]
    C = tlq.choose_C(F, QUALITY_GROUPS, b[tr], w[tr], src[tr], grp[tr], weights, grid, args.seed)
    model = tlq.fit(F, QUALITY_GROUPS, b[tr], w[tr], tlq.source_weights(src[tr], weights), C)
    s = tlq.score_with(F, QUALITY_GROUPS, model, empty)
    chars = np.array([len(r) for _, r in p.texts], dtype=float)
    ratio = np.maximum(chars[b], chars[w]) / np.maximum(np.minimum(chars[b], chars[w]), 1)
    res: dict[str, dict] = {}

    def row(name: str, m: np.ndarray) -> None:
        t = m & test
        res[name] = {"pairs": int(t.sum()), "onepass": round(tlq.pair_acc(s, b[t], w[t]), 4),
                     "longer_wins": round(tlq.pair_acc(chars, b[t], w[t]), 4)}

    row("human (PandaLM + Open-Assistant)", np.isin(src, HUMAN))
    row("human, similar length (within 1.3x)", np.isin(src, HUMAN) & (ratio <= 1.3))
    for so in sorted(set(src.tolist())):
        row(so, src == so)
    info = {"groups": list(QUALITY_GROUPS), "output": args.quality_output, "C": C, "hd_scale": args.hd_scale, "source_weights": weights, "data": summary,
            "train_pairs": int(tr.sum()), "held_out": res}
    return info, {"mean": model[0], "std": model[1], "w": model[2]}


def difficulty(args) -> tuple[dict, dict]:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.linear_model import Ridge

    rows = []
    for path in args.teacher:
        file_rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        if args.misaligned == "zero":
            for n, r in enumerate(file_rows, 1):
                if not all(isinstance(r.get(k), (int, float)) for k in ("cond", "direct")):
                    sys.exit(f"{path} line {n}: no numeric 'cond' and 'direct' losses, which --misaligned zero needs to find IFD > 1; "
                             "build the file with scripts/public_data/ifd_teacher.py, or pass --misaligned clip")
        rows += file_rows
    rows = [r for r in rows if r["response"].strip() and np.isfinite(r["lite_difficulty"])]
    F = embed_cached([(r["instruction"], r["response"]) for r in rows], args.work)
    y = np.array([r["lite_difficulty"] for r in rows])
    misaligned = np.array([args.misaligned == "zero" and r["cond"] > r["direct"] for r in rows], dtype=bool)
    y[misaligned] = 0.0
    test = np.array([held_out(r["source"], r.get("group_id") or r["instruction"]) for r in rows])
    groups = tuple(args.difficulty_groups.split(","))
    X = np.concatenate([F[g] for g in groups], axis=1)
    mean, std = X[~test].mean(0), X[~test].std(0)
    std[std < 1e-8] = 1.0
    Z = (X - mean) / std
    # alpha by 5-fold CV on the training rows (grouped by instruction)
    inst = np.array([hashlib.sha1(r["instruction"].encode()).hexdigest() for r in rows])
    fold = np.array([int(h, 16) % 5 for h in inst])
    best, alpha = -np.inf, None
    for a in [float(x) for x in args.alpha.split(",")]:
        preds = np.empty(len(y))
        for k in range(5):
            trk, tek = ~test & (fold != k), ~test & (fold == k)
            preds[tek] = Ridge(alpha=a).fit(Z[trk], y[trk]).predict(Z[tek])
        r = spearmanr(preds[~test], y[~test]).statistic
        if r > best:
            best, alpha = r, a
    m = Ridge(alpha=alpha).fit(Z[~test], y[~test])
    pred = np.clip(m.predict(Z[test]), 0, 1)
    length = np.log1p([len(rows[i]["response"]) for i in np.flatnonzero(test)])
    ilength = np.log1p([len(rows[i]["instruction"]) for i in np.flatnonzero(test)])
    res = {"rows": int(test.sum()), "spearman": round(float(spearmanr(pred, y[test]).statistic), 4),
           "pearson": round(float(pearsonr(pred, y[test]).statistic), 4),
           "baseline_spearman_log_response_chars": round(float(spearmanr(length, y[test]).statistic), 4),
           "baseline_spearman_log_instruction_chars": round(float(spearmanr(ilength, y[test]).statistic), 4)}
    info = {"groups": list(groups), "alpha": alpha, "bias": float(m.intercept_), "train_rows": int((~test).sum()),
            "cv_spearman": round(float(best), 4), "held_out": res, "misaligned": args.misaligned, "misaligned_rows": int(misaligned.sum()),
            "target": "lite_difficulty = clip(IFD of SmolLM2-135M-Instruct, 0, 1)" + ("; 0 where IFD > 1" if args.misaligned == "zero" else "")}
    return info, {"mean": mean, "std": std, "w": m.coef_.astype(np.float64)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--pairs", type=Path, help="extra preference pairs (JSONL: instruction, chosen, rejected, source)")
    ap.add_argument("--teacher", type=Path, required=True, action="append",
                    help="IFD teacher rows (JSONL: instruction, response, lite_difficulty, cond, direct, source); repeatable, the files' rows are pooled")
    ap.add_argument("--out", type=Path, default=ROOT / "laser_fast" / "models" / "onepass")
    ap.add_argument("--work", type=Path, default=Path("/tmp/onepass_feats"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gsm-problems", type=int, default=250)
    ap.add_argument("--w-gsm8k", type=float, default=1.0)
    ap.add_argument("--w-oasst", type=float, default=1.0)
    ap.add_argument("--w-ultrafeedback", type=float, default=1.0)
    ap.add_argument("--w-alpaca-eval", type=float, default=0.3, help="weight of the AlpacaEval development-half pairs, relative to PandaLM's (0: none)")
    ap.add_argument("--ae-gap", type=float, default=5.0, help="least win-rate difference (points) between an AlpacaEval pair's two generators")
    ap.add_argument("--ae-per-instruction", type=int, default=40, help="most AlpacaEval pairs per instruction (a seeded sample)")
    ap.add_argument("--misaligned", choices=("zero", "clip"), default="zero", help="difficulty target of a teacher row whose IFD exceeds 1")
    ap.add_argument("--quality-output", choices=("strength", "linear"), default="strength",
                    help="what onepass_quality gives: the Bradley-Terry strength exp(logit) (default since the third 2026-12-06 session) "
                         "or the logit itself (the heads before); pairwise accuracies are the same, the recipe's product with difficulty is not")
    ap.add_argument("--hd-scale", type=float, default=0.03, help="scale of the standardised embedding dimensions (0.03 won the grouped CV on the training quarters among 0.03, 0.1, 0.3)")
    ap.add_argument("--C", default="0.003,0.01,0.03,0.1")
    ap.add_argument("--alpha", default="10,100,1000,3000,10000")
    ap.add_argument("--difficulty-groups", default=",".join(DIFFICULTY_GROUPS))
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    q_info, q = quality(args)
    d_info, d = difficulty(args)
    print(json.dumps({"quality": q_info["held_out"], "C": q_info["C"], "difficulty": d_info["held_out"], "alpha": d_info["alpha"]}, indent=1))
    if args.no_save:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    meta = {"name": "onepass", "onepass_version": ONEPASS_VERSION, "code_version": __version__, "git_commit_at_training": commit,
            "group_dims": GROUP_DIMS, "split": "held out: sha1(source + '\\0' + group) mod 4 == 0", "quality": q_info, "difficulty": d_info,
            "command": " ".join(sys.argv)}
    np.savez(args.out / "weights.npz", **{f"quality_{k}": v for k, v in q.items()}, **{f"difficulty_{k}": v for k, v in d.items()})
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
