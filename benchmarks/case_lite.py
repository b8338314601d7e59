"""Benchmark case ``lite``: the offline profiles on real AlpacaEval records, old path vs one pass.

* ``lite`` (one pass): the ``onepass`` scorer, which reads each record's instruction and response
  once through the work directory's embedding store (k-means reuses the response vectors), with
  the default classifier (``tuned``: MiniLM with fine-tuned top layers; its one pass over an
  instruction also yields the store's plain instruction vector) and with the ``minilm`` head (frozen MiniLM; it reads the store's
  instruction vectors, so nothing is embedded twice);
* ``lite-llm`` (the old path): the SmolLM2 classifier head, ``lite_quality`` and
  ``lite_difficulty`` (SmolLM2-135M forwards per record, in float32 on a CPU without bf16 units).

Rows:

* ``stage``: records/s of each step alone, models loaded and warmed outside the timing
  (classifier prompts/s over distinct instructions, each scorer's records/s; the ``tuned`` head
  alone, filling an empty instruction store, and over a store that holds every instruction);
* ``select``: ``laser-fast select`` end to end in a child process on a seeded sample of the pool
  (combination, k-means, cold work directory, models loading included), records/s from its wall
  time, the manifest's stage times, and the mean AlpacaEval 2 length-controlled win rate of the
  selected rows' generators (the leaderboard in ../shared/data; NullModel = 0) beside a random
  selection's expectation and "longest response first" at the same budget; ``..._test_half_...``:
  the same over the selected rows whose instruction is in the pool's test half
  (``benchmarks.data.dev_half``), since the ``onepass`` quality head learned from AlpacaEval
  pairs on the development half.
* ``accuracy``: the held-out figures the shipped heads recorded at training time (meta.json).

The CPU's name and flags (AVX2 / AVX-512 / AMX) are in every row: the old path's speed depends on
them; ``old_path_dtype`` says whether SmolLM2 ran in bfloat16 (``LASER_FAST_CPU_BF16=0`` forces
float32, as on an AVX2-only CPU). Sizes: ``--quick`` 200 records (lite-llm 100); full 2,000 (lite-llm 300); override with
``LASER_BENCH_LITE_ROWS`` / ``LASER_BENCH_LITE_LLM_ROWS`` (the whole pool: 32199, budget
``LASER_BENCH_LITE_BUDGET``, default rows / 16).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import timed

ROOT = Path(__file__).resolve().parents[1]


def cpu_info() -> dict:
    """The CPU's model name and the vector / matrix extensions that matter for float32 and bf16."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and name == "unknown":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    want = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    from laser_fast.runtime.devices import cpu_bf16_supported

    # the old path runs SmolLM2 in bf16 where the CPU multiplies it natively; LASER_FAST_CPU_BF16=0
    # measures it in float32, as on an AVX2-only CPU (the one pass is float32 either way)
    return {"cpu": name, "cpu_flags": " ".join(f for f in want if f in flags), "cores": os.cpu_count(),
            "old_path_dtype": "bfloat16" if cpu_bf16_supported() else "float32", "isa_cap": isa_cap()}


#: environment variables that cap the instruction set the math libraries use: torch's own kernels,
#: MKL (torch's matrix products), oneDNN and OpenBLAS (numpy)
ISA_CAP_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE")


def isa_cap() -> str:
    """The caps in effect (``none`` when unset), with the capability torch reports, so an
    AVX-512 machine run as an AVX2 one (``scripts/avx2_env.sh``) says so in every result row."""
    import torch

    caps = [f"{v}={os.environ[v]}" for v in ISA_CAP_VARS if os.environ.get(v)]
    return f"{' '.join(caps) or 'none'} (torch kernels: {torch.backends.cpu.get_cpu_capability()})"


def _sample(n: int, seed: int = 0) -> list[dict]:
    from benchmarks.data import alpaca_pool_rows

    rows = alpaca_pool_rows() or []
    idx = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [{"instruction": rows[i]["instruction"], "output": rows[i]["output"] or "", "generator": rows[i]["generator"]} for i in idx]


def _select(rows: list[dict], root: Path, profile: str, classifier: str, budget: int) -> dict:
    pool = root / f"pool-{profile}-{classifier}.jsonl"
    with open(pool, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"id": f"r{i}", "instruction": r["instruction"], "output": r["output"]}) + "\n" for i, r in enumerate(rows))
    out, wd = root / f"out-{profile}-{classifier}", root / f"wd-{profile}-{classifier}"  # each run cold
    cmd = [sys.executable, "-m", "laser_fast.cli", "select", str(pool), "--budget", str(budget), "--profile", profile,
           "--classifier", classifier, "--strategy", "combination", "--mode", "kmeans", "--seed", "0",
           "--workdir", str(wd), "--output-dir", str(out), "--no-report", "-q"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    picked = [json.loads(line) for line in (out / "selected.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"wall_s": wall, "ids": [p.get("id") or p.get("data_id") for p in picked],
            "stages_s": {k: round(v, 1) for k, v in (man.get("timings_seconds") or {}).items() if isinstance(v, (int, float))}}


def _stage_rows(rows: list[dict], n_llm: int, cpu: dict) -> list[dict]:
    import polars as pl

    from laser_fast.classifier.models import load_classifier
    from laser_fast.io.ingest import records_from_frame
    from laser_fast.metrics import ScorerSettings, build_scorer

    out = []
    insts = sorted({r["instruction"] for r in rows})
    for name, n in (("tuned", len(insts)), ("minilm", len(insts)), ("smollm", min(n_llm, len(insts)))):
        clf = load_classifier(name, device="cpu")
        clf.predict(["warm up the model"])
        _, t = timed(clf.predict, insts[:n])
        out.append({"case": "lite", "row": "stage", "stage": f"classify ({name})", "path": "old" if name == "smollm" else "one pass",
                    "items": n, "per_s": round(n / t, 2), **cpu})
    # in a run the default head also hands the plain instruction vectors to the work directory's
    # store (9 MiniLM layers a text); texts the store holds already take its 6 layers alone
    with tempfile.TemporaryDirectory() as wd:
        for stage in ("classify (tuned), filling the instruction store", "classify (tuned), instruction store filled"):
            clf = load_classifier("tuned", device="cpu")
            clf.store_root = wd
            clf.predict(["warm up the model"])
            _, t = timed(clf.predict, insts)
            out.append({"case": "lite", "row": "stage", "stage": stage, "path": "one pass", "items": len(insts),
                        "per_s": round(len(insts) / t, 2), **cpu})
    frame = pl.DataFrame([{"instruction": r["instruction"], "output": r["output"]} for r in rows])
    recs, _ = records_from_frame(frame, origin="bench")
    recs = recs.with_columns(pl.lit("Generation").alias("category"))
    for name, n in (("onepass", len(rows)), ("lite_quality", n_llm), ("lite_difficulty", n_llm)):
        sc = build_scorer(name, ScorerSettings(device="cpu"))
        sc.score(recs[:2])  # load and warm up outside the timing
        _, t = timed(sc.score, recs[:n])
        out.append({"case": "lite", "row": "stage", "stage": f"score ({name})", "path": "one pass" if name == "onepass" else "old",
                    "items": n, "per_s": round(n / t, 2), **cpu})
    for r in out:
        print(json.dumps(r), flush=True)
    return out


def _mean(v: list[float]) -> float | None:
    return round(float(np.mean(v)), 2) if v else None


def run(quick: bool) -> list[dict]:
    from benchmarks.data import DATA, alpaca_win_rates, dev_half

    if not (DATA / "alpaca_eval_pool.jsonl.gz").exists():
        print("lite: ../shared/data/alpaca_eval_pool.jsonl.gz not present, skipped", flush=True)
        return []
    cpu = cpu_info()
    n = int(os.environ.get("LASER_BENCH_LITE_ROWS") or (200 if quick else 2000))
    n_llm = int(os.environ.get("LASER_BENCH_LITE_LLM_ROWS") or (100 if quick else 300))
    budget = int(os.environ.get("LASER_BENCH_LITE_BUDGET") or max(1, n // 16))
    rows = _sample(n)
    out = _stage_rows(rows, n_llm, cpu)
    lc = alpaca_win_rates()
    gens = [r["generator"] for r in rows]
    longest = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["output"]), i))[:budget]
    root = Path(os.environ.get("LASER_FAST_BENCH_TMP") or "/tmp/laser_fast_bench_lite")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        for profile, classifier, m in (("lite", "tuned", n), ("lite", "minilm", n), ("lite-llm", "smollm", n_llm)):
            # a smaller run takes a seeded random subset (the pool file is ordered by generator)
            pick = list(range(n)) if m >= n else sorted(random.Random(1).sample(range(n), m))
            sub, sub_gens = [rows[i] for i in pick], [gens[i] for i in pick]
            b = budget if m >= n else max(1, m // 16)
            res = _select(sub, root, profile, classifier, b)
            sel = [int(str(i)[1:]) for i in res["ids"]]  # ids are positions in ``sub``
            row = {"case": "lite", "row": "select", "profile": profile, "classifier": classifier, "path": "one pass" if profile == "lite" else "old",
                   "records": len(sub), "budget": b, "wall_s": round(res["wall_s"], 1), "records_per_s": round(len(sub) / res["wall_s"], 2),
                   "selected_mean_lc_winrate": round(float(np.mean([lc[sub_gens[i]] for i in sel])), 2),
                   "random_mean_lc_winrate": round(float(np.mean([lc[g] for g in sub_gens])), 2),
                   # the onepass quality head learned from AlpacaEval pairs on the development half: the test half is new to it
                   "selected_test_half_mean_lc_winrate": _mean([lc[sub_gens[i]] for i in sel if not dev_half(sub[i]["instruction"])]),
                   "stages_s": " ".join(f"{k}={v}" for k, v in res["stages_s"].items()), **cpu}
            if m >= n:
                row["longest_first_mean_lc_winrate"] = round(float(np.mean([lc[gens[i]] for i in longest])), 2)
                row["longest_first_test_half_mean_lc_winrate"] = _mean([lc[gens[i]] for i in longest if not dev_half(rows[i]["instruction"])])
            out.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta = json.loads((ROOT / "laser_fast" / "models" / "onepass" / "meta.json").read_text())
    acc = {"case": "lite", "row": "accuracy", "source": "laser_fast/models/onepass/meta.json (held-out quarter, scripts/train_onepass.py)",
           "quality": meta["quality"]["held_out"], "difficulty": meta["difficulty"]["held_out"]}
    cls = json.loads((ROOT / "laser_fast" / "models" / "classifier_tuned" / "meta.json").read_text())
    if "held_out" in cls:
        acc["classifier"] = cls["held_out"]
    out.append(acc)
    print(json.dumps(acc), flush=True)
    return out
