"""Run the benchmark cases side by side in one process and write results.json + results.md.

    python -m benchmarks [--quick] [--out DIR] [--cases greedy,cluster,embed,kernels,scorers,e2e,gpu,ray]

Baselines that need extra packages (scikit-learn, chromadb) come with ``pip install '.[bench]'``
(``make bench`` installs them and runs ``--quick``); a missing one is reported in its column.

Cases:

* ``greedy``: the exact greedy min-distance filter -- ours (C++ core; ``auto`` = brute force
  until enough rows are accepted, then the exact cell index that prunes with the triangle
  inequality on angles) vs our brute force vs a numpy per-candidate loop vs a faiss IndexFlatIP
  add/search loop vs the reference's ChromaDB loop (cosine HNSW with the reference's settings;
  all with the reference's semantics: accept iff the nearest accepted row is farther than
  ``min_distance``), on synthetic clustered unit vectors at 20k and 100k (the loops at 20k in
  --quick; the ChromaDB loop stops after 15 min in the full run and its ratio is then a labelled
  projection) and ours alone at 1M in the full run; accepted sets are compared for equality.
* ``cluster``: per-category selection — ours (PCA 0.99 + faiss k-means, two-level above n*k =
  5e7, + best per cluster above the percentile + fill) vs the reference path (PCA 0.99,
  scikit-learn KMeans n_init=10 up to 25k rows, MiniBatchKMeans batch 2048 max_iter 50 above) at
  n/k = 12, on synthetic clustered data (random preference) and on real MiniLM embeddings of the
  AlpacaEval pool (preference = the generator's AlpacaEval 2 win rate); time, k-means objective
  in the PCA space, coverage (mean cosine distance of every row to its nearest selected row, on
  a 20k-row sample), mean preference of the selection, and rows taken as cluster bests.
* ``embed`` (``case_embed.py``): MiniLM records/s with exact-length batches (the CPU default),
  length-sorted token-budget batching, naive fixed-size batching and one sample per forward,
  non-padding share; the float16 memmap store's write/read throughput.
* ``kernels`` (``case_kernels.py``): the numba statistics kernels vs per-record loops.
* ``read`` (``case_read.py``): one large JSONL file read on the driver vs in byte ranges by Ray
  workers, records compared.
* ``scorers``: the model scorers on real AlpacaEval responses (``../shared/data``): token-budget
  batching (sorted by length, packed up to a token budget) vs one sample per forward pass;
  records/s, share of non-padding tokens, and the largest difference between the two results.
  Runs on CUDA in bf16 when torch sees a GPU, else on the CPU (the ``device`` column says which).
* ``e2e`` (``case_e2e.py``): ``laser-fast select`` in a child process on 100k (quick) or 1M
  synthetic rows whose embeddings and scores are cached: seconds per stage and peak RSS, cold
  (token counts computed) and warm.

Timings are wall-clock seconds on this machine; ratios compare methods within the same run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import machine_info
from benchmarks.registry import CASES


def to_markdown(results: dict) -> str:
    m = results["machine"]
    head = (f"Machine: {m.get('cpus')} CPUs, {m.get('platform')}; faiss GPUs: {m.get('faiss_gpus')}; CUDA: {m.get('cuda')}; "
            f"load average at start: {m.get('load_average_at_start')}; {'--quick' if results.get('quick') else 'full run'}")
    out = [head, ""]
    for case, rows in results["cases"].items():
        if not rows:
            continue
        out.append(f"### {case}")
        # rows with the same columns share a table (a case may report several kinds of row)
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r), []).append(r)
        for keys, grp in groups.items():
            out.append("| " + " | ".join(keys) + " |")
            out.append("|" + "---|" * len(keys))
            for r in grp:
                out.append("| " + " | ".join(str(r.get(k)) for k in keys) + " |")
            out.append("")
    return "\n".join(out)




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes on 2 cores)")
    ap.add_argument("--out", default="benchmarks/results", help="output folder")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    a = ap.parse_args(argv)
    results = {"quick": a.quick, "machine": machine_info(), "cases": {}}
    unknown = [c for c in a.cases.split(",") if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}: use {', '.join(CASES)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from laser_fast.io.output import write_json, write_text

    for name in a.cases.split(","):
        t0 = time.perf_counter()
        results["cases"][name] = CASES[name].runner()(a.quick)
        print(f"case {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        # written after every case: a long run that fails late keeps what it measured
        write_json(out / "results.json", results)
        write_text(out / "results.md", to_markdown(results))
    print(to_markdown(results))
    # a row that failed (a model out of memory, a missing kernel) is kept as an "error" row so the
    # rows after it are measured; the run still fails
    bad = [(case, r) for case, rows in results["cases"].items() for r in rows if isinstance(r, dict) and "error" in r]
    for case, r in bad:
        print(f"case {case}: a row failed: {r}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
