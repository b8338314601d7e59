"""Scaling of the Ray engine's model stages over 1..N workers (part of the ``ray`` case).

The GPU benchmark's scorers (:mod:`benchmarks.case_gpu`: Qwen3-8B, LLaMA-13B and
Qwen2.5-Math-PRM-7B shapes, random weights built on the device) run as Ray Data actors through
:class:`laser_fast.runtime.ray_engine.RayExecutor`, the executor ``--engine ray`` uses: the same
records cut into the same chunks, once with 1 actor, then 2, ... up to one actor per GPU of the
cluster (``max_actors``). On a machine without GPUs, tiny models of the same architectures run
on CPU actors of one torch thread each, so the scaling is over the machine's cores (CI-sized;
a CPU figure is never reported as a GPU one: ``device`` says which).

Per worker count the row gives:

* ``wall_rec_s``: records / wall time of the whole stage (actor start and model build included);
* ``busy_rec_s``: records / the busiest actor's time inside its units (what the stage reaches
  once the actors are up, the part that should scale);
* ``efficiency``: ``busy_rec_s`` / (workers x ``busy_rec_s`` of one worker); 1.0 is linear;
* ``identical``: the scores equal those of one worker bit for bit (each chunk travels whole to
  one actor, so the split over actors must not change a score).

``LASER_BENCH_RAY_SCALE_RECORDS=N`` sets the records (default: 256 on CPUs, 1,500 per GPU),
``LASER_BENCH_RAY_SCALE_SCORERS=a,b`` the scorers (default: ``difficulty`` on CPUs, all three
on GPUs).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from laser_fast.runtime.engine import UnitTask
from laser_fast.runtime.stage import Resources


class ShapeScoreTask(UnitTask):
    """One of :mod:`benchmarks.case_gpu`'s scorers as a unit task: every actor builds the model
    (random weights, seed 0, so all actors hold the same weights) on its GPU or, without one, a
    tiny model on one CPU thread."""

    uses_gpu = True

    def __init__(self, scorer: str, tiny: bool, tok, label: str):
        self.scorer, self.tiny, self.tok, self.label = scorer, tiny, tok, label
        self.resources = Resources(num_cpus=1, num_gpus=1)

    def setup(self) -> None:
        import torch

        from benchmarks import case_gpu as g

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if dev == "cuda" else torch.float32
        if dev == "cpu":
            torch.set_num_threads(1)
        spec = next(s for s in g._scorer_specs(self.tiny) if s.name == self.scorer)
        cls, cfg = spec.make_model(dict(g._TINY, vocab_size=len(self.tok)) if self.tiny else dict(spec.full_kw))
        cfg.pad_token_id = self.tok.pad_token_id
        torch.manual_seed(0)
        model = g.build_on_device(cls, cfg, dev, dtype)
        self._scorer, self._key = g._attach(spec.make_scorer(device=dev), model, self.tok, dev), spec.key

    def run(self, unit) -> dict[str, np.ndarray]:
        return {"score": np.asarray(self._scorer.score(unit)[self._key], dtype=np.float64)}


def _gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def run(quick: bool) -> list[dict]:
    """One row per (scorer, worker count); see the module docstring."""
    from benchmarks import case_gpu as g
    from laser_fast.runtime.ray_engine import RayExecutor

    pool = g._pool()
    if pool is None:
        print("ray scale: ../shared/data/alpaca_eval_pool.jsonl.gz not found; skipped", flush=True)
        return []
    ex = RayExecutor(os.environ.get("LASER_BENCH_RAY_ADDRESS") or None)
    n_gpu = _gpus()
    tiny = n_gpu == 0
    workers = max(1, n_gpu if n_gpu else int(ex.cluster()["CPU"]))
    n = int(os.environ.get("LASER_BENCH_RAY_SCALE_RECORDS") or (256 if tiny else 1500 * workers))
    names = (os.environ.get("LASER_BENCH_RAY_SCALE_SCORERS") or ("difficulty" if tiny else "difficulty,deita_quality,process_reward")).split(",")
    chunk = 16 if tiny else 256
    counts = sorted({1, *([2] if workers >= 2 else []), *([4] if workers >= 4 else []), workers})
    t0 = time.perf_counter()
    train = pool[-(1500 if tiny else 10000):]
    tok = g.pool_tokenizer([t for r in train for t in (r["instruction"], r["output"])], 1000 if tiny else 32000)
    print(f"ray scale: tokenizer trained in {time.perf_counter() - t0:.1f} s; {workers} worker(s) at most, "
          f"{'CPU actors, tiny models' if tiny else 'GPU actors, paper shapes'}", flush=True)
    recs = g._records(pool, n)
    units = [recs.slice(i, chunk) for i in range(0, recs.height, chunk)]
    rows: list[dict] = []
    for name in names:
        base = None
        for k in counts:
            ex.max_actors = k
            label = f"scale:{name}:{k}"
            t1 = time.perf_counter()
            parts = ex.map_units(ShapeScoreTask(name, tiny, tok, label), units)
            wall = time.perf_counter() - t1
            scores = np.concatenate([p["score"] for p in parts])
            stats = ex.tasks[label]
            busy = max((w["busy_s"] for w in stats["workers"].values()), default=0.0)
            busy_rec_s = recs.height / busy if busy > 0 else None
            if base is None:
                base = {"scores": scores, "busy_rec_s": busy_rec_s}
            row = {"case": "ray", "what": "scale", "scorer": name, "device": "gpu" if n_gpu else "cpu", "shape": "tiny" if tiny else "paper",
                   "workers": k, "actors_used": len(stats["workers"]), "records": recs.height, "units": len(units),
                   "wall_s": round(wall, 2), "wall_rec_s": round(recs.height / wall, 2),
                   "busy_rec_s": round(busy_rec_s, 2) if busy_rec_s else None,
                   "efficiency": round(busy_rec_s / (k * base["busy_rec_s"]), 3) if busy_rec_s and base["busy_rec_s"] else None,
                   "identical": bool(np.array_equal(scores, base["scores"], equal_nan=True))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    ex.max_actors = None
    return rows
