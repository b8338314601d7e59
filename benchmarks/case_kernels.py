"""Benchmark case ``kernels``: :mod:`laser_fast.runtime.kernels` vs what a straightforward implementation does.

Every public kernel runs on realistic sizes (1M records, 100k with ``--quick``) against a plain
per-record Python/numpy loop (one numpy call per record, as scorer code typically reduces a list
of per-record arrays), and where a vectorised dataframe version is natural, against polars
(``group_by`` over segment ids, ``over`` windows for per-group min-max; pandas is not a
dependency). ``robust_scale`` is compared with scikit-learn's ``RobustScaler(quantile_range=(1,
99))``, the reference's normalisation. Data: ragged segments of 0..16 values (mean 8, ~6% empty:
per-step rewards / per-token losses), 6 score-token logits per record for ``expected_score``,
64 category groups for ``minmax``. Every result is checked against each baseline
(``np.allclose``, NaN equal to NaN). Kernel times are the best of 3 runs after a warm-up (numba
compiles once per machine and caches), and so are the vectorised baselines' (polars, scikit-learn);
the per-record Python loops run once (seconds to minutes each, where a repeat changes little).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _best(fn: Callable[[], Any], repeat: int = 3) -> tuple[Any, float]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _once(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=1e-9, atol=1e-12, equal_nan=True))


# --------------------------------------------------------------------------------------
# baselines
# --------------------------------------------------------------------------------------

def _loop_reduce(v: np.ndarray, off: np.ndarray, fn: Callable[[np.ndarray], float], empty: float) -> np.ndarray:
    out = np.empty(off.size - 1)
    for i in range(off.size - 1):
        seg = v[off[i]:off[i + 1]]
        out[i] = fn(seg) if seg.size else empty
    return out


def _loop_step_min_mean(v: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = off.size - 1
    mn, mean = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n):
        seg = v[off[i]:off[i + 1]]
        if seg.size:
            mn[i] = seg.min()
            mean[i] = seg.mean()
    return mn, mean


def _loop_expected(lp: np.ndarray, vals: np.ndarray) -> np.ndarray:
    out = np.empty(lp.shape[0])
    for i in range(lp.shape[0]):
        r = lp[i]
        w = np.exp(r - r.max())
        out[i] = (w @ vals) / w.sum()
    return out


def _loop_ifd(cs, cc, ds, dc) -> np.ndarray:
    out = np.empty(cs.size)
    for i in range(cs.size):
        if cc[i] > 0 and dc[i] > 0 and ds[i] > 0:
            out[i] = (cs[i] / cc[i]) / (ds[i] / dc[i])
        else:
            out[i] = np.nan
    return out


def _loop_minmax(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    xs, gs = x.tolist(), g.tolist()
    for xi, gi in zip(xs, gs):
        if not math.isnan(xi):
            if gi not in lo or xi < lo[gi]:
                lo[gi] = xi
            if gi not in hi or xi > hi[gi]:
                hi[gi] = xi
    out = []
    for xi, gi in zip(xs, gs):
        if math.isnan(xi):
            out.append(xi)
        else:
            r = hi[gi] - lo[gi]
            out.append((xi - lo[gi]) / r if r > 0 else 1.0)
    return np.array(out)


def _polars_segments(v: np.ndarray, off: np.ndarray, agg: str) -> np.ndarray:
    import polars as pl

    n = off.size - 1
    seg = np.repeat(np.arange(n, dtype=np.int64), np.diff(off))
    df = pl.DataFrame({"g": seg, "v": v})
    res = df.group_by("g").agg(getattr(pl.col("v"), agg)().alias("r"))
    out = np.full(n, 0.0 if agg == "sum" else np.nan)
    out[res["g"].to_numpy()] = res["r"].to_numpy()
    return out


def _polars_minmax(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    import polars as pl

    df = pl.DataFrame({"x": x, "g": g})
    lo = pl.col("x").min().over("g")
    hi = pl.col("x").max().over("g")
    r = hi - lo
    out = df.select(pl.when(r > 0).then((pl.col("x") - lo) / r).otherwise(1.0).alias("y"))["y"].to_numpy()
    return out


def _sklearn_robust(x: np.ndarray) -> np.ndarray:
    from sklearn.preprocessing import RobustScaler

    fit = x[np.isfinite(x)].reshape(-1, 1)
    return RobustScaler(quantile_range=(1.0, 99.0)).fit(fit).transform(x.reshape(-1, 1)).ravel()


# --------------------------------------------------------------------------------------
# case
# --------------------------------------------------------------------------------------

def run(quick: bool) -> list[dict]:
    """One row per kernel: time of ours and of each baseline, speedups, equality."""
    from laser_fast.runtime import kernels as K

    n = 100_000 if quick else 1_000_000
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 17, n)  # mean 8, ~6% empty
    off = K.offsets_from_lengths(lens)
    v = rng.normal(size=int(off[-1])) * 2.0
    # warm-up: load the numba cache (or compile once) outside the timings
    small = K.offsets_from_lengths(lens[:100])
    for f in (K.segment_sum, K.segment_mean, K.segment_min, K.segment_max):
        f(v[: small[-1]], small)
    K.step_min_mean(v[: small[-1]], small)
    K.minmax(v[:100], lens[:100] % 3)
    _polars_segments(v[: small[-1]], small, "sum")  # import polars / sklearn outside the timings too
    _polars_minmax(v[:100], lens[:100] % 3)
    _sklearn_robust(v[:100])

    rows: list[dict] = []

    def emit(function: str, ours: tuple[Any, float], baselines: dict[str, tuple[Any, float]], **extra: Any) -> None:
        out, t = ours
        row: dict[str, Any] = {"case": "kernels", "function": function, "n_records": n, **extra, "ours_s": round(t, 4)}
        for name, (ref, tb) in baselines.items():
            row[f"{name}_s"] = round(tb, 4)
            row[f"speedup_vs_{name}"] = round(tb / t, 1) if t > 0 else None
            row[f"equal_{name}"] = _same(out, ref)
        rows.append(row)
        print(json.dumps(row), flush=True)

    seg = {"n_values": int(off[-1])}
    emit("segment_sum", _best(lambda: K.segment_sum(v, off)),
         {"loop": _once(lambda: _loop_reduce(v, off, np.sum, 0.0)), "polars": _best(lambda: _polars_segments(v, off, "sum"))}, **seg)
    emit("segment_mean", _best(lambda: K.segment_mean(v, off)),
         {"loop": _once(lambda: _loop_reduce(v, off, np.mean, np.nan)), "polars": _best(lambda: _polars_segments(v, off, "mean"))}, **seg)
    emit("segment_min", _best(lambda: K.segment_min(v, off)),
         {"loop": _once(lambda: _loop_reduce(v, off, np.min, np.nan)), "polars": _best(lambda: _polars_segments(v, off, "min"))}, **seg)
    emit("segment_max", _best(lambda: K.segment_max(v, off)),
         {"loop": _once(lambda: _loop_reduce(v, off, np.max, np.nan)), "polars": _best(lambda: _polars_segments(v, off, "max"))}, **seg)
    emit("step_min_mean", _best(lambda: K.step_min_mean(v, off)), {"loop": _once(lambda: _loop_step_min_mean(v, off))}, **seg)

    lp = rng.normal(size=(n, 6)) * 3.0
    vals = np.arange(1.0, 7.0)
    emit("expected_score", _best(lambda: K.expected_score(lp, vals)), {"loop": _once(lambda: _loop_expected(lp, vals))}, shape=[n, 6])

    cc = rng.integers(0, 400, n).astype(np.float64)
    dc = np.maximum(cc - rng.integers(0, 3, n), 0).astype(np.float64)
    cs = cc * rng.uniform(0.5, 3.0, n)
    ds = dc * rng.uniform(0.5, 3.0, n)
    emit("ifd_ratio", _best(lambda: K.ifd_ratio(cs, cc, ds, dc)), {"loop": _once(lambda: _loop_ifd(cs, cc, ds, dc))})

    x = rng.normal(size=n)
    x[rng.random(n) < 0.02] = np.nan  # records a scorer could not score
    g = rng.integers(0, 64, n)
    emit("minmax", _best(lambda: K.minmax(x, g)),
         {"loop": _once(lambda: _loop_minmax(x, g)), "polars": _best(lambda: _polars_minmax(x, g))}, groups=64)
    emit("robust_scale", _best(lambda: K.robust_scale(x)), {"sklearn": _best(lambda: _sklearn_robust(x))})
    return rows


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    run("--quick" in sys.argv)
