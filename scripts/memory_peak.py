"""A CPU worker's peak resident memory against the estimate the Ray engine reserves for it.

Scores (or classifies) the first N records of the AlpacaEval pool in ``../shared/data`` in this
process, in chunks of 128 records as a scoring window does, then prints the process's peak
(``VmHWM``) and the estimate (``Scorer.host_memory_mb`` or ``ClassifyTask.memory_mb``) as JSON.
Run it with one thread, as a Ray actor of one CPU runs:

    OMP_NUM_THREADS=1 python scripts/memory_peak.py scorer lite_quality --n 1024
    OMP_NUM_THREADS=1 python scripts/memory_peak.py classifier tuned --n 8000

A scorer is named as ``--scorers`` names it (default settings, on the CPU); a classifier as
``--classifier`` does. Classifier texts are the pool's instructions and the first 2,000
characters of its answers, each once.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

POOL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("VmHWM:"))) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("scorer", "classifier"))
    ap.add_argument("name")
    ap.add_argument("--n", type=int, default=1024, help="records (scorer) or texts (classifier)")
    ap.add_argument("--pool", type=Path, default=POOL)
    a = ap.parse_args()
    import polars as pl

    with gzip.open(a.pool, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    if a.kind == "scorer":
        from laser_fast.metrics import build_scorer

        s = build_scorer(a.name)
        df = pl.DataFrame([{"data_id": str(i), "instruction": r["instruction"], "response": r["output"]} for i, r in enumerate(rows[:a.n])])
        for start in range(0, df.height, 128):
            s.score(df.slice(start, 128))
        estimate, done = s.host_memory_mb(), df.height
    else:
        from laser_fast.classifier.models import load_classifier
        from laser_fast.classifier.stage import ClassifyTask

        texts = list(dict.fromkeys(t for r in rows for t in (r["instruction"], r["output"][:2000])))[:a.n]
        clf = load_classifier(a.name, device="cpu")
        task = ClassifyTask(a.name, "cpu", 64, clf.fingerprint)
        task.setup()
        done = int(task.run(pl.DataFrame({"text": texts}))["probs"].shape[0])
        estimate = task.memory_mb()
    peak = peak_mb()
    print(json.dumps({"kind": a.kind, "name": a.name, "records": done, "peak_mb": round(peak), "estimate_mb": estimate,
                      "estimate_over_peak": round(estimate / peak, 2) if estimate else None}))


if __name__ == "__main__":
    main()
