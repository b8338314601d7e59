"""The benchmark cases: one module per case (``benchmarks/case_<name>.py``), each with a
``run(quick: bool) -> list[dict]`` that returns one row per measurement.

Adding a case: write ``benchmarks/case_<name>.py`` with ``run(quick)`` and add one line here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """A benchmark case: its name, the module that runs it, and what it measures."""

    name: str
    module: str
    about: str

    def runner(self) -> Callable[[bool], list[dict]]:
        """The case's ``run(quick)`` (its module is imported on first use)."""
        return importlib.import_module(self.module).run


CASES: dict[str, Case] = {c.name: c for c in (
    Case("greedy", "benchmarks.case_greedy", "exact greedy min-distance filter vs loops and the reference's ChromaDB loop"),
    Case("cluster", "benchmarks.case_cluster", "per-category k-means selection vs the reference's scikit-learn path"),
    Case("embed", "benchmarks.case_embed", "MiniLM batching and the float16 embedding store"),
    Case("kernels", "benchmarks.case_kernels", "numba statistics kernels vs per-record loops"),
    Case("scorers", "benchmarks.case_scorers", "model scorers: token-budget batching vs one sample per forward"),
    Case("gpu", "benchmarks.case_gpu", "paper-shape random-init scorers (Qwen3-8B, LLaMA-13B, Qwen2.5-Math-PRM-7B) and embedders in bf16/fp16 on one GPU, plus k-means: records/s, tokens/s, MFU, peak memory, batched vs single"),
    Case("e2e", "benchmarks.case_e2e", "laser-fast select end to end on a large pool with warm caches"),
    Case("lite", "benchmarks.case_lite", "the offline profiles on AlpacaEval records: lite (one MiniLM pass) vs lite-llm (SmolLM2): records/s per stage and end to end, selected generators' win rate, held-out accuracy"),
    Case("dedup", "benchmarks.case_dedup", "duplicate detection before scoring (exact, normalized, instruction) vs a plain Python dict over the same keys"),
    Case("decontam", "benchmarks.case_decontam", "benchmark decontamination (13-gram and exact-prompt matches against the shared eval sets) vs a plain Python set of n-gram tuples"),
    Case("read", "benchmarks.case_read", "one large JSONL file read on the driver vs in byte ranges by Ray workers"),
    Case("ray", "benchmarks.case_ray", "laser-fast select with --engine ray vs the local engine on the same machine: overhead ratio and byte identity"),
)}
