"""laser_fast: fast LASER data selection for instruction tuning.

Three steps over a pool of conversations: classify each instruction into 7 task categories,
score it (difficulty, dedicated quality) and combine the scores into one preference, then
select per category with k-means over embeddings (best per cluster above a percentile, then fill)
or an exact greedy min-distance filter.

Public API (every stage is one attribute away; heavy modules load on first use):

- the run: :func:`select`, :func:`score`, :func:`run_selection`, :func:`run_scoring`,
  :func:`run_stages`, :data:`STAGES`, :class:`SelectOptions`, :func:`write_outputs`;
- step 1: :func:`classify`, :func:`classify_conversations`, :func:`load_classifier`, :func:`is_english`;
- step 2: :class:`Scorer`, :func:`build_scorer`, :func:`score_records`, :func:`score_quality`,
  :class:`ScoreCache`, :class:`TokenCounter`, :func:`compute_preference`, :data:`REGISTRY`;
- step 3: :func:`allocate`, :class:`EmbeddingStore`, :func:`cluster_select`, :func:`greedy_diverse`;
- input and output: :func:`read_records`, :func:`write_outputs`, :func:`output_frame`;
- runtime: :class:`WorkDir`, :func:`torch_device`, :func:`show_config`.
"""
from __future__ import annotations

from laser_fast._version import __version__
from laser_fast.categories import CATEGORIES, DEFAULT_PROPORTIONS
from laser_fast.errors import ConfigError, InputError, LaserError, MissingScoreError, ModelLoadError

#: public name -> (module, attribute), imported on first use (torch, faiss and numba users are heavy)
_LAZY = {
    # the run
    "select": ("pipeline", "select"),
    "score": ("pipeline", "score"),
    "run_selection": ("pipeline", "run_selection"),
    "run_scoring": ("pipeline", "run_scoring"),
    "run_stages": ("pipeline", "run_stages"),
    "STAGES": ("pipeline", "STAGES"),
    "SelectionRun": ("pipeline", "SelectionRun"),
    "SelectOptions": ("config", "SelectOptions"),
    "StageSpec": ("runtime.stage", "StageSpec"),
    # step 1
    "classify": ("classifier.stage", "classify"),
    "classify_conversations": ("classifier.stage", "classify_conversations"),
    "load_classifier": ("classifier.models", "load_classifier"),
    "is_english": ("classifier.language", "is_english"),
    # step 2
    "Scorer": ("scorers.base", "Scorer"),
    "TokenCounter": ("scorers.tokens", "TokenCounter"),
    "build_scorer": ("scorers.stage", "build_scorer"),
    "score_records": ("scorers.stage", "score_records"),
    "ScoreCache": ("scorers.cache", "ScoreCache"),
    "score_quality": ("scorers.lite", "score_quality"),
    "compute_preference": ("scorers.preference", "compute_preference"),
    "REGISTRY": ("metrics", "REGISTRY"),
    # step 3
    "allocate": ("sampling.allocate", "allocate"),
    "EmbeddingStore": ("sampling.store", "EmbeddingStore"),
    "cluster_select": ("sampling.cluster", "cluster_select"),
    "greedy_diverse": ("sampling.greedy", "greedy_diverse"),
    # input and output
    "read_records": ("io.ingest", "read_records"),
    "write_outputs": ("io.output", "write_outputs"),
    "output_frame": ("io.output", "output_frame"),
    # runtime
    "WorkDir": ("runtime.workdir", "WorkDir"),
    "torch_device": ("runtime.devices", "torch_device"),
}

__all__ = [
    "__version__",
    "CATEGORIES",
    "DEFAULT_PROPORTIONS",
    "LaserError",
    "InputError",
    "ConfigError",
    "MissingScoreError",
    "ModelLoadError",
    "show_config",
    *_LAZY,
]


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
        from laser_fast.runtime.devices import kmeans_device_label, resolve_kmeans_backend

        print(f"faiss {faiss.__version__}: {n} GPU(s) visible; k-means (auto) -> {kmeans_device_label(*resolve_kmeans_backend())}")
    except Exception as e:
        print(f"faiss: not available ({e})")
    try:
        import torch

        from laser_fast.runtime.devices import torch_device

        dev = torch_device()
        print(f"torch {torch.__version__}: models on {dev}" + (f" ({torch.cuda.get_device_name(0)})" if dev == "cuda" else ""))
    except Exception as e:
        print(f"torch: not available ({e})")
