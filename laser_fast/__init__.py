"""laser_fast: fast LASER data selection for instruction tuning.

Three steps over a pool of conversations: classify each instruction into 7 task categories,
score it (difficulty, dedicated quality) and combine the scores into one preference, then
select per category with k-means over embeddings (best per cluster above a percentile, then fill)
or an exact greedy min-distance filter.

Public API: :func:`select`, :func:`classify`, :func:`cluster_select`, :func:`greedy_diverse`,
:func:`read_records`, :class:`Scorer`, :func:`score_quality`, :func:`score`, :func:`build_scorer`,
:func:`show_config`.
"""
from __future__ import annotations

from laser_fast._version import __version__
from laser_fast.categories import CATEGORIES, DEFAULT_PROPORTIONS
from laser_fast.errors import ConfigError, InputError, LaserError, MissingScoreError, ModelLoadError

__all__ = [
    "__version__",
    "CATEGORIES",
    "DEFAULT_PROPORTIONS",
    "LaserError",
    "InputError",
    "ConfigError",
    "MissingScoreError",
    "ModelLoadError",
    "select",
    "classify",
    "cluster_select",
    "greedy_diverse",
    "read_records",
    "Scorer",
    "score_quality",
    "score",
    "build_scorer",
    "SelectOptions",
    "show_config",
]

_LAZY = {
    "select": ("pipeline", "select"),
    "run_selection": ("pipeline", "run_selection"),
    "write_outputs": ("io.output", "write_outputs"),
    "classify": ("classifier.stage", "classify"),
    "cluster_select": ("sampling.cluster", "cluster_select"),
    "greedy_diverse": ("sampling.greedy", "greedy_diverse"),
    "read_records": ("io.ingest", "read_records"),
    "Scorer": ("scorers.base", "Scorer"),
    "TokenCounter": ("scorers.tokens", "TokenCounter"),
    "SelectOptions": ("config", "SelectOptions"),
    "compute_preference": ("scorers.preference", "compute_preference"),
    "score_quality": ("scorers.lite", "score_quality"),
    "score": ("pipeline", "score"),
    "run_scoring": ("pipeline", "run_scoring"),
    "build_scorer": ("scorers.stage", "build_scorer"),
    "score_records": ("scorers.stage", "score_records"),
    "ScoreCache": ("scorers.cache", "ScoreCache"),
}


def __getattr__(name: str):
    # heavy modules (torch, faiss, numba users) load on first use, not at import
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'laser_fast' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def show_config() -> None:
    """Print build and device facts (OpenMP, SIMD, faiss GPUs, torch device) for bug reports."""
    import platform

    print(f"laser_fast {__version__} (python {platform.python_version()}, {platform.machine()})")
    try:
        from laser_fast import _core

        info = _core.build_info()
        print("compiled core:", ", ".join(f"{k}={v}" for k, v in sorted(info.items())))
    except Exception as e:  # report, do not fail: this is a diagnostic
        print(f"compiled core: not available ({e})")
    try:
        import faiss

        n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        print(f"faiss {faiss.__version__}: {n} GPU(s) visible -> k-means on {'GPU' if n else 'CPU'}")
    except Exception as e:
        print(f"faiss: not available ({e})")
    try:
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"torch {torch.__version__}: models on {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev == "cuda" else ""))
    except Exception as e:
        print(f"torch: not available ({e})")
