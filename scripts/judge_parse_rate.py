"""How many judge answers parse with the in-process transformers backend (constrained decoding).

Runs ``code_quality`` on HumanEval prompts with their canonical solutions and ``if_quality`` on
AlpacaEval prompts with one generator's outputs (both from ``../shared/data``), through
``--judge-backend transformers``, and prints the share of exchanges whose answers parsed, with the
fallback and failure counts. Default judge: SmolLM2-135M-Instruct on the CPU.

    python scripts/judge_parse_rate.py --n 40 --model smollm2 --max-tokens 96 [--unconstrained]

``--unconstrained`` lets the model write freely (the baseline: the same prompts, the JSON parsers
only). Fallbacks are counted but do not make an answer parse.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40, help="records per judge")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--unconstrained", action="store_true", help="free generation (the baseline): no schema held")
    a = ap.parse_args()

    from laser_fast.scorers.judges import CodeQualityScorer, IFQualityScorer

    data = Path(a.data)
    he = [json.loads(x) for x in open(data / "humaneval.jsonl")][: a.n]
    code = pl.DataFrame({"instruction": [r["instruction"] for r in he], "response": [r["instruction"] + r["output"] for r in he],
                         "category": ["Coding"] * len(he)})
    with gzip.open(data / "alpaca_eval_pool.jsonl.gz", "rt") as f:
        pool = [json.loads(x) for x in f]
    gen = [r for r in pool if r.get("generator") == pool[0].get("generator")][: a.n]
    ifd = pl.DataFrame({"instruction": [r["instruction"] for r in gen], "response": [r["output"] for r in gen],
                        "category": ["Generation"] * len(gen)})
    kw = {"model": a.model, "backend": "transformers", "device": a.device, "max_tokens": a.max_tokens}
    rows = []
    for scorer, df in ((CodeQualityScorer(**kw), code), (IFQualityScorer(**kw, check_max_tokens=48, overall_max_tokens=12), ifd)):
        t0 = time.perf_counter()
        scorer.client.constrained = not a.unconstrained
        out = scorer.score(df)[scorer.name]
        st = scorer.stats
        answers = st["requests"] + st["cache_hits"]
        bad = st["unparsable"] + st["failures"]
        rows.append({"judge": scorer.name, "constrained": not a.unconstrained, "records": df.height, "answers": answers, "parsed_share": round(1 - bad / max(1, answers), 4),
                     "unparsable": st["unparsable"], "failures": st["failures"], "fallbacks": st["fallbacks"],
                     "scored_records": int(pl.Series(out).is_finite().sum()), "seconds": round(time.perf_counter() - t0, 1)})
        scorer.release()
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
