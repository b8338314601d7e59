"""The ``gpu`` benchmark case (benchmarks/case_gpu.py): its ``--quick`` form on the CPU (tiny models
of the paper's architectures, the real batching paths), and the same on CUDA when a GPU is there."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

POOL = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"
SCORERS = {"difficulty", "deita_quality", "process_reward"}
EMBEDDERS = {"minilm_shape", "bert_large_shape"}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _need_pool():
    if not POOL.exists():
        pytest.skip(f"{POOL} not present (the shared data folder sits beside the project in development and CI only)")


def _check_rows(rows, device_prefix: str, *, agree_tol: float, spearman_min: float | None):
    by_what: dict[str, list[dict]] = {}
    for r in rows:
        assert r["case"] == "gpu"
        by_what.setdefault(r["what"], []).append(r)
    assert {r["scorer"] for r in by_what["scorer"]} == SCORERS
    assert {r["model"].split(" ")[0] for r in by_what["embedder"]} == EMBEDDERS
    assert len(by_what["kmeans"]) == 1
    km = by_what["kmeans"][0]
    # the quick k-means also times faiss on the CPU; a machine without faiss (the GPU image) errs there
    if not (importlib.util.find_spec("faiss") is None and "faiss" in km.get("error", "")):
        assert "error" not in km and "note" not in km, km
        assert km["clusters_nonempty"] == km["k"] and km["device"].startswith(device_prefix), km
    for r in by_what["scorer"]:
        assert r["device"].startswith(device_prefix), r
        assert r["records"] >= r["single_records"] > 0
        assert r["batched_rec_s"] > 0 and r["single_rec_s"] > 0 and r["batched_tok_s"] > 0
        assert r["tokens_per_record"] > 1 and 0 < r["non_padding"] <= 1 and 0 < r["forward_share"] <= 1
        assert r["params_m"] > 0 and r["peak_mem_mb"] > 0 and 1 <= r["forwards"] <= r["records"]
        assert r["score_std"] > 0.01, r  # scores that vary: the agreement columns say something
        assert r["max_abs_diff"] is not None and r["max_abs_diff"] <= agree_tol, r
        if spearman_min is not None:
            assert r["spearman"] >= spearman_min, r
        if device_prefix == "cpu":
            assert r["batched_mfu"] is None and r["single_mfu"] is None and r["mem_kind"] == "process_peak_rss"
            assert r["dtype"] == "float32"
        else:
            assert r["dtype"] == "bfloat16"
    wide = [r["rec_s_max_batch_512"] for r in by_what["scorer"] if r["scorer"] == "difficulty"]
    assert wide[0] > 0
    for r in by_what["scorer"]:  # the stage with and without its prefetch thread: difficulty only
        staged = [r["stage_rec_s_prefetch"], r["stage_rec_s_serial"]]
        assert all(v > 0 for v in staged) if r["scorer"] == "difficulty" else staged == [None, None], r
    for r in by_what["embedder"]:
        assert r["device"].startswith(device_prefix), r
        assert r["fast_path"] is True  # timed through laser_fast's own token-budget path
        assert r["batched_rec_s"] > 0 and r["single_rec_s"] > 0 and 0 < r["non_padding"] <= 1
        assert r["min_cosine"] > (0.9999 if device_prefix == "cpu" else 0.99), r
        if device_prefix == "cpu":
            assert r["batched_mfu"] is None and r["dtype"] == "float32"
        else:
            assert r["dtype"] == "float16"


def test_quick_on_cpu_rows():
    _need_pool()
    from benchmarks import case_gpu

    rows = case_gpu.run(quick=True, device="cpu")
    _check_rows(rows, "cpu", agree_tol=1e-3, spearman_min=0.99)


def test_full_run_branches_on_cpu_with_tiny_shapes(monkeypatch):
    """The full run's own branches (the paper shapes' configs and vocabularies, record counts,
    the 32k tokenizer, the BERT-large row, k-means at its full-run branch) run otherwise only on a
    lent GPU: here with the shapes shrunk and the CPU as the device, so a mistake there shows
    before device time is spent on it."""
    _need_pool()
    import torch

    from benchmarks import case_gpu, gpu_kmeans

    for name in ("_QWEN3_8B", "_LLAMA_13B", "_QWEN25_MATH_7B"):  # the tiny layers, the real vocabulary
        full = getattr(case_gpu, name)
        monkeypatch.setattr(case_gpu, name, {**case_gpu._TINY, "vocab_size": full["vocab_size"],
                                             **{k: full[k] for k in ("rope_theta", "rms_norm_eps") if k in full}})
    monkeypatch.setattr(case_gpu, "_BERT_LARGE", case_gpu._BERT_TINY)
    monkeypatch.setattr(case_gpu, "_FULL_RECORDS", {"difficulty": 40, "deita_quality": 24, "process_reward": 24})
    monkeypatch.setattr(case_gpu, "_FULL_SINGLE", 8)
    monkeypatch.setattr(case_gpu, "_FULL_EMBED", {"minilm_shape": 48, "bert_large_shape": 32})
    monkeypatch.setattr(case_gpu, "_FULL_EMBED_SINGLE", 8)
    monkeypatch.setattr(gpu_kmeans, "FULL", (3000, 384, 40, 3))
    monkeypatch.delenv("LASER_BENCH_GPU_RECORDS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = case_gpu.run(quick=False, device="cpu")
    finally:
        torch.set_num_threads(threads)
    _check_rows(rows, "cpu", agree_tol=1e-3, spearman_min=0.99)
    sc = {r["scorer"]: r for r in rows if r["what"] == "scorer"}
    assert {k: r["records"] for k, r in sc.items()} == {"difficulty": 40, "deita_quality": 24, "process_reward": 24}
    assert all(r["single_records"] == 8 and "tiny" not in r["shape"] for r in sc.values())
    assert [r["model"] for r in rows if r["what"] == "embedder"] == ["minilm_shape", "bert_large_shape"]
    km = next(r for r in rows if r["what"] == "kmeans")
    assert (km["n"], km["k"], km["iters"]) == (3000, 40, 3) and ("faiss_skipped" in km or "faiss_total_s" in km)


def test_a_failed_row_fails_the_run(tmp_path, monkeypatch, capsys):
    """An error row keeps the rows after it measured, and the run still exits non-zero."""
    import benchmarks.__main__ as bm

    class Fake:
        def __init__(self, rows):
            self.rows = rows

        def runner(self):
            return lambda quick: self.rows

    monkeypatch.setattr(bm, "CASES", {"ok": Fake([{"case": "ok", "x": 1}]), "bad": Fake([{"case": "bad", "error": "out of memory"}, {"case": "bad", "x": 2}])})
    assert bm.main(["--quick", "--cases", "ok", "--out", str(tmp_path / "a")]) == 0
    assert bm.main(["--quick", "--cases", "ok,bad", "--out", str(tmp_path / "b")]) == 1
    assert "a row failed" in capsys.readouterr().err and "out of memory" in (tmp_path / "b" / "results.md").read_text()


def test_markdown_of_rows():
    from benchmarks.__main__ import to_markdown

    row = {"case": "gpu", "what": "skipped", "note": "x"}
    md = to_markdown({"quick": True, "machine": {"cpus": 2}, "cases": {"gpu": [row]}})
    assert "### gpu" in md and "| case | what | note |" in md


def test_full_without_cuda_reports_no_figures(monkeypatch):
    import torch

    from benchmarks import case_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rows = case_gpu.run(quick=False)
    assert len(rows) == 1 and rows[0]["what"] == "skipped" and "CUDA" in rows[0]["note"]


def test_peak_flops_and_helpers():
    from benchmarks.case_gpu import peak_flops, spearman

    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12 and peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H20") is None and peak_flops("cpu") is None
    assert spearman(np.arange(5.0), np.arange(5.0) ** 3) == 1.0
    assert spearman(np.array([1.0, np.nan]), np.array([1.0, 2.0])) is None


def test_tokenizer_has_what_the_scorers_need():
    _need_pool()
    from benchmarks.case_gpu import pool_tokenizer
    from laser_fast.scorers.models import score_token_ids

    tok = pool_tokenizer(["What is 12 * 7? It is 84.", "Write a poem about the sea."] * 50, 400)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    assert tok.encode("a<extra_0>b", add_special_tokens=False).count(sep) == 1
    assert len(score_token_ids(tok)) == 6
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_packed_scorer_rows_time_the_padded_path_beside(monkeypatch):
    """Where a scorer packs (on CUDA with ``varlen_attn``) its row also times the padded forward
    (``padded_rec_s``): that branch runs only on a GPU, so here packing is switched on for the
    CPU (per-sequence attention) to run it before a lent GPU does."""
    _need_pool()
    import torch

    from benchmarks import case_gpu
    from laser_fast.runtime import packing

    monkeypatch.setattr(packing, "packing_supported", lambda model, device=None: True)
    pool = case_gpu._pool()
    tok = case_gpu.pool_tokenizer([t for r in pool[-300:] for t in (r["instruction"], r["output"])], 1000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in case_gpu._scorer_specs(quick=True):
            row = case_gpu.bench_scorer(spec, tok, case_gpu._records(pool, 24), 6, "cpu", torch.float32, quick=True)
            assert row["packed"] is True and row["padded_rec_s"] > 0, row
            assert row["max_abs_diff"] <= 1e-3 and row["spearman"] >= 0.99, row  # packed batches vs one per forward
            assert 1 <= row["forwards"] <= 24
    finally:
        torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible to torch")
def test_quick_on_cuda_rows():
    """Tiny models on the GPU in bf16: every path of the full run, a few seconds."""
    _need_pool()
    from benchmarks import case_gpu

    rows = case_gpu.run(quick=True, device="cuda")
    # bf16: batched and one-per-forward pick other kernels; the tiny models' scores spread widely
    # (score_std ~0.1-2), so ranks hold and values differ by ~1e-2 (0.03 on a CPU in bf16)
    _check_rows(rows, "cuda", agree_tol=0.1, spearman_min=0.9)
    for r in rows:
        if r["what"] in ("scorer", "embedder"):
            assert r["mem_kind"] == "cuda_max_allocated"
            assert r["batched_mfu"] is None or (0 < r["batched_mfu"] < 1 and math.isfinite(r["batched_mfu"]))
    from laser_fast.runtime.packing import varlen_available

    if varlen_available():  # packed (padding-free) rows, with the padded forward timed beside them
        assert all(r["packed"] and r["padded_rec_s"] > 0 for r in rows if r["what"] == "scorer"), rows


def test_a_failing_row_keeps_the_rows_after_it(monkeypatch, capsys):
    """One model failing (on a GPU: out of memory, a kernel the device lacks) becomes an ``error``
    row, and the models after it are still measured: a rerun on a lent GPU costs device time."""
    from benchmarks import case_gpu
    from benchmarks.__main__ import to_markdown

    calls = []

    def scorer_row(spec, tok, recs, n_single, dev, dtype, quick):
        calls.append((spec[0], recs.height, n_single))
        if spec[0] == "deita_quality":
            raise RuntimeError("CUDA out of memory (simulated)")
        return {"case": "gpu", "what": "scorer", "scorer": spec[0]}

    monkeypatch.setattr(case_gpu, "bench_scorer", scorer_row)
    monkeypatch.setattr(case_gpu, "bench_embedder", lambda label, *a: {"case": "gpu", "what": "embedder", "model": label})
    monkeypatch.setattr(case_gpu, "_kmeans_row", lambda quick, dev: {"case": "gpu", "what": "kmeans"})
    pool = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(20)]
    rows = case_gpu._measure(True, "cpu", None, pool, None, {"difficulty": 6, "deita_quality": 5, "process_reward": 4}, 3)

    assert calls == [("difficulty", 6, 3), ("deita_quality", 5, 3), ("process_reward", 4, 3)]
    # k-means first: a run its time limit cuts short keeps it
    assert [r["what"] for r in rows] == ["kmeans"] + ["scorer"] * 3 + ["embedder"] * 2
    failed = [r for r in rows if "error" in r]
    assert len(failed) == 1 and failed[0]["scorer"] == "deita_quality" and "LLaMA-13B" in failed[0]["shape"]
    assert failed[0]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "CUDA out of memory (simulated)" in capsys.readouterr().err  # the traceback, for the log
    assert "RuntimeError: CUDA out of memory (simulated)" in to_markdown({"machine": {}, "cases": {"gpu": rows}})
