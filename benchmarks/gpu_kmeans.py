"""k-means timing for the GPU case: the torch backend (Lloyd + nearest-centroid assignment in
distance blocks) on 1M x 384 rows with k = 25,000 (the paper's scale), and faiss beside it where
faiss can run that size (a faiss GPU build; on the CPU only in the quick case).

Imported by the GPU benchmark case; run alone with ``python -m benchmarks.gpu_kmeans [--full] [--device cuda]``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks.common import clustered

#: (n, d, k, Lloyd iterations): the full case and the quick one (a CPU fits it in seconds)
FULL = (1_000_000, 384, 25_000, 25)
QUICK = (20_000, 384, 200, 10)


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    from laser_fast.runtime.stats import peak_rss_mb

    return peak_rss_mb()


def _run(x: np.ndarray, k: int, iters: int, backend: str, device: str) -> dict:
    from laser_fast.sampling.kmeans import kmeans_labels

    _peak_reset(device if backend == "torch" else "cpu")
    t0 = time.perf_counter()
    lab, st = kmeans_labels(x, k, seed=0, niter=iters, method="flat", backend=backend, device=device)
    total = time.perf_counter() - t0
    info = st.get("torch", {})
    return {
        "backend": st["backend"],
        "kmeans_device": st["kmeans_device"],
        "total_s": round(total, 3),
        # total / iterations for both backends (comparable: seeding and the final assignment in both);
        # the torch path also times its Lloyd loop alone (synchronised), which faiss does not expose
        "seconds_per_iter": round(total / max(iters, 1), 4),
        "lloyd_seconds_per_iter": info.get("seconds_per_iteration"),
        "seconds_seed": info.get("seconds_seed"),
        "init": st.get("init"),
        "compute_dtype": info.get("compute_dtype"),
        "block_rows": info.get("block_rows"),
        "objective": float(st["objective"]),
        "clusters_nonempty": int(np.unique(lab).size),
        # torch: its own CUDA peak on a GPU; faiss (and any CPU run): the process's peak RSS, which
        # includes everything run before it in the process
        "peak_mem_mb": _peak_mb(device if backend == "torch" else "cpu"),
        "mem_kind": "cuda_max_allocated" if backend == "torch" and device.startswith("cuda") else "process_peak_rss",
    }


def bench_kmeans(quick: bool, device: str) -> dict:
    """Time k-means with the torch backend on ``device`` (and faiss where it can run the size).

    Args:
        quick: 20,000 x 384, k = 200, 10 iterations (seconds on a CPU) instead of 1M x 384,
            k = 25,000, 25 iterations.
        device: a torch device (``"cuda"``, ``"cpu"``) or ``"auto"`` (CUDA when torch sees one).

    Returns:
        ``case="kmeans"``, ``n``, ``d``, ``k``, ``iters``, ``device``, ``backend`` ("torch"),
        ``total_s`` (seeding, upload, iterations, final assignment), ``seconds_per_iter``
        (``total_s`` / iterations, for both backends), ``lloyd_seconds_per_iter`` (torch's loop
        alone), ``peak_mem_mb`` with ``mem_kind`` (``torch.cuda.max_memory_allocated`` for torch on
        CUDA, else the process's peak RSS), ``objective``; and ``faiss_*`` fields for faiss on the
        same rows when it ran (``faiss_skipped`` says why not).
    """
    from laser_fast.runtime.devices import faiss_gpus, torch_device

    n, d, k, iters = QUICK if quick else FULL
    device = torch_device(None if device in (None, "", "auto") else device)
    x = clustered(n, d, centers=max(200, k // 8), seed=0)
    if device.startswith("cuda"):  # CUDA context and cuBLAS handles outside the timing
        _run(x[:2000], 8, 2, "torch", device)
    t = _run(x, k, iters, "torch", device)
    out = {"case": "kmeans", "n": n, "d": d, "k": k, "iters": iters, "device": device, **t}
    import importlib.util

    gpus = faiss_gpus()
    if importlib.util.find_spec("faiss") is None:
        out["faiss_skipped"] = "faiss is not installed"
    elif gpus or quick:
        if gpus:  # faiss's GPU resources outside the timing, as torch's CUDA context above
            _run(x[:2000], 8, 2, "faiss", "cuda")
        f = _run(x, k, iters, "faiss", "cuda" if gpus else "cpu")
        out.update({f"faiss_{key}": v for key, v in f.items() if key in ("kmeans_device", "total_s", "seconds_per_iter", "objective", "init", "peak_mem_mb", "mem_kind")})
        out["objective_ratio_torch_vs_faiss"] = round(t["objective"] / f["objective"], 4) if f["objective"] else None
    else:
        out["faiss_skipped"] = "faiss sees no GPU, and flat faiss k-means on the CPU at this size takes hours"
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--full", action="store_true", help="1M x 384, k = 25,000 (default: the quick case)")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    print(json.dumps(bench_kmeans(not a.full, a.device), indent=1))


if __name__ == "__main__":
    main()
