"""Benchmark case ``read``: one large JSONL file read on the driver (``read_source``, the local
engine) vs the Ray engine's workers reading it in byte ranges (``read_in_ranges`` with
``LASER_FAST_READ_RANGE_BYTES``), side by side in one process, records compared.

The file is the shared AlpacaEval pool written out N times with distinct ids (``--quick``: 2
copies, ~118 MB; full: 6, ~355 MB), in ``$TMPDIR``. Ray runs a local instance on this machine's
cores; its workers are warmed up before the timing. Ranges of 16 MiB.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import ray_case_missing

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT.parent / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"
RANGE = 16 << 20


def _big_file(copies: int) -> Path:
    out = Path(tempfile.gettempdir()) / f"laser_bench_read_{copies}.jsonl"
    if not out.exists():
        with gzip.open(POOL, "rt", encoding="utf-8") as g:
            lines = g.read().splitlines()
        tmp = out.with_suffix(".part")
        with open(tmp, "w", encoding="utf-8") as f:
            for k in range(copies):
                for line in lines:
                    d = json.loads(line)
                    for key in ("data_id", "id"):
                        if key in d:
                            d[key] = f"{d[key]}-{k}"
                    f.write(json.dumps(d) + "\n")
        tmp.replace(out)
    return out


def run(quick: bool) -> list[dict]:
    if ray_case_missing("read", POOL):
        return []
    import ray

    from laser_fast.io.ingest import read_source
    from laser_fast.io.ranges import read_in_ranges
    from laser_fast.runtime.engine import current_executor, use_engine

    path = _big_file(2 if quick else 6)
    call = {"path": str(path), "name": None, "schema": None, "split": None, "index": 0, "skip_invalid": False,
            "max_record_bytes": 1 << 20, "show_progress": False}
    t0 = time.perf_counter()
    local = read_source(**call)
    t_local = time.perf_counter() - t0
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    old = os.environ.get("LASER_FAST_READ_RANGE_BYTES")
    os.environ["LASER_FAST_READ_RANGE_BYTES"] = str(RANGE)
    try:
        with use_engine("ray"):
            ex = current_executor()
            read_in_ranges(ex, [dict(call, path=str(ROOT / "examples" / "pool" / "alpaca.jsonl"))])  # warm the workers
            t0 = time.perf_counter()
            ranged = read_in_ranges(ex, [call])[0]
            t_ray = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("LASER_FAST_READ_RANGE_BYTES", None)
        else:
            os.environ["LASER_FAST_READ_RANGE_BYTES"] = old
        if started:
            ray.shutdown()
    row = {"case": "read", "bytes": path.stat().st_size, "records": local[0].height, "cpus": os.cpu_count(),
           "local_s": round(t_local, 2), "ray_ranges": ranged[2]["ranges"], "range_bytes": RANGE, "ray_s": round(t_ray, 2),
           "ray_vs_local": round(t_ray / t_local, 2),
           "same_records": bool(ranged[0].drop("_source_index").equals(local[0].drop("_source_index")))}
    print(json.dumps(row), flush=True)
    return [row]
