"""k-means backends: the torch path (Lloyd + nearest-centroid assignment, CPU here, CUDA on a GPU
machine) against the faiss path, the backend choice, the faiss install check and the device the
manifest records."""
import importlib.util
import logging

import numpy as np
import pytest

from laser_fast.runtime import devices
from laser_fast.sampling import kmeans as km
from laser_fast.sampling.kmeans import kmeans_labels
from laser_fast.sampling.kmeans_torch import block_rows, lloyd_torch


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# faiss is a declared dependency, but the lent GPU machine's image has none (scripts/gpu_check.sh):
# the comparisons with it skip there, and the torch path is checked against itself on the CPU
HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (pip install faiss-cpu)")


def _blobs(n_per=150, k=12, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 20.0
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(k), n_per)
    perm = rng.permutation(x.shape[0])
    return x[perm], truth[perm]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a relabelling: each label of ``a`` maps to exactly one label of ``b`` and back."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.fixture
def random_rows():
    return np.random.default_rng(3).normal(size=(2000, 24)).astype(np.float32)


# --------------------------------------------------------------------------- torch vs faiss


@needs_faiss
def test_torch_matches_faiss_on_separated_blobs():
    x, truth = _blobs()
    lab_f, st_f = kmeans_labels(x, 12, seed=0, method="flat", backend="faiss", device="cpu")
    lab_t, st_t = kmeans_labels(x, 12, seed=0, method="flat", backend="torch", device="cpu")
    assert st_f["kmeans_device"] == "faiss:cpu" and st_t["kmeans_device"] == "torch:cpu"
    assert _same_partition(lab_t, lab_f) and _same_partition(lab_t, truth)
    # the GPU recipe (torch k-means++, half-precision products, one-hot float32 sums), on the CPU
    _, lab_h, _, _, info = lloyd_torch(x, 12, seed=0, device="cpu", dtype="float16", update="device", seeding="torch")
    assert info["compute_dtype"] == "float16" and _same_partition(lab_h, truth)


@needs_faiss
def test_torch_inertia_close_to_faiss_on_random_rows(random_rows):
    x = random_rows
    _, st_f = kmeans_labels(x, 60, seed=0, method="flat", backend="faiss", device="cpu")
    _, st_t = kmeans_labels(x, 60, seed=0, method="flat", backend="torch", device="cpu")
    assert st_t["objective"] == pytest.approx(st_f["objective"], rel=0.03)
    assert st_t["init"] == st_f["init"] == "k-means++ (greedy)"
    assert len(st_t["objective_per_iteration"]) == 25
    for dtype in ("float16", "bfloat16"):
        for seeding in ("numpy", "torch"):
            _, lab, _, _, _ = lloyd_torch(x, 60, seed=0, device="cpu", dtype=dtype, update="device", seeding=seeding)
            assert km.kmeans_objective(x, lab, 60) == pytest.approx(st_f["objective"], rel=0.03)


def test_torch_is_deterministic_and_seeded(random_rows):
    a = lloyd_torch(random_rows, 30, seed=5, device="cpu")
    b = lloyd_torch(random_rows, 30, seed=5, device="cpu")
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert a[3] == b[3]
    c = lloyd_torch(random_rows, 30, seed=6, device="cpu")
    assert not np.array_equal(a[0], c[0])
    gpu_recipe = {"device": "cpu", "dtype": "float16", "update": "device", "seeding": "torch"}
    np.testing.assert_array_equal(lloyd_torch(random_rows, 30, seed=5, **gpu_recipe)[1], lloyd_torch(random_rows, 30, seed=5, **gpu_recipe)[1])


@pytest.mark.parametrize("update", ["host", "device"])
def test_chunking_gives_the_same_clustering(random_rows, update):
    x = random_rows[:1200]
    whole = lloyd_torch(x, 40, seed=1, device="cpu", update=update, chunk_rows=x.shape[0])
    for rows in (7, 97, 1024):
        part = lloyd_torch(x, 40, seed=1, device="cpu", update=update, chunk_rows=rows)
        assert part[4]["block_rows"] == rows
        np.testing.assert_array_equal(part[1], whole[1])
        np.testing.assert_allclose(part[0], whole[0], rtol=0, atol=1e-5)


def test_block_rows_bound_the_distance_block():
    # 1M x 384, k = 25,000 on a GPU: a block of about 1 GiB of float32 distances
    r = block_rows(1_000_000, 25_000, "cuda")
    assert r * 25_000 * 4 <= 1 << 30 and r >= 1024
    assert block_rows(100, 25_000, "cpu") == 100
    assert block_rows(10, 5, "cpu", chunk_rows=3) == 3


def test_torch_float16_rows_and_sampled_training():
    x, truth = _blobs(n_per=200, k=6, d=8, seed=1)
    # float16 rows (a large stratum) and a training sample of 50 rows per cluster (faiss's rule)
    c, lab, _, obj, info = lloyd_torch(x.astype(np.float16), 6, seed=0, device="cpu", max_points_per_centroid=50)
    assert info["train_rows"] == 300 and c.shape == (6, 8) and _same_partition(lab, truth)
    assert len(obj) == 25 and obj[-1] <= obj[0]


def test_half_rows_keep_float32_precision_and_update_on_the_host():
    """float16 rows with their scaled remainders give back float32 rows to about 20 bits, also
    for the small components of unit-length embeddings (unscaled, those remainders are subnormal
    and keep a few bits); rows held in bfloat16 update on the host (``update="host"``) from the
    float32 values."""
    import torch

    from laser_fast.sampling.kmeans_torch import _Rows

    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[:, :8] *= 1e-2  # components down to about 1e-6
    back = _Rows(x, "cpu", torch.float16).f32(slice(None)).numpy()
    assert np.all(np.abs(back - x) <= 2.0**-20 * np.maximum(np.abs(x), 2.0**-14))
    big = np.array([[3e4, 1.0], [-2e4, 0.5]], np.float32)  # float16 asked for above its safe range: unscaled remainders
    assert np.all(np.isfinite(_Rows(big, "cpu", torch.float16).f32(slice(None)).numpy()))
    xb, truth = _blobs(n_per=100, k=4, d=8, seed=2)
    for dtype in ("bfloat16", "float16"):
        c, lab, *_ = lloyd_torch(xb.astype(np.float16), 4, seed=0, device="cpu", dtype=dtype, update="host", seeding="torch")
        assert _same_partition(lab, truth) and np.all(np.isfinite(c))


def test_kmeanspp_torch_picks_distinct_spread_rows(random_rows):
    import torch

    from laser_fast.sampling.kmeans_torch import _Rows, kmeanspp_torch

    x = random_rows[:1500]

    def potential(c):
        return float((((x[:, None, :] - c[None]) ** 2).sum(-1)).min(1).sum())

    for dtype in (torch.float32, torch.float16):
        picks = kmeanspp_torch(_Rows(x, "cpu", dtype), 30, seed=0)
        assert len(set(picks.tolist())) == 30
        np.testing.assert_array_equal(picks, kmeanspp_torch(_Rows(x, "cpu", dtype), 30, seed=0))
        # as good as the numpy k-means++ (a random pick of rows is about 1.3x worse here)
        assert potential(x[picks]) <= 1.1 * potential(km.kmeanspp_init(x, 30, seed=0))


def test_torch_small_k_edge_cases():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    assert lloyd_torch(x, 1, device="cpu")[1].tolist() == [0] * 6
    assert lloyd_torch(x, 6, device="cpu")[1].tolist() == list(range(6))


# --------------------------------------------------------------------------- backend choice


@pytest.fixture
def fake_machine(monkeypatch):
    """Set what faiss and torch see: ``fake_machine(faiss_gpus=0, cuda=False, faiss=True)``."""

    def set_(faiss_gpus=0, cuda=False, faiss=True):
        monkeypatch.setattr(devices, "faiss_gpus", lambda: faiss_gpus if faiss else 0)
        monkeypatch.setattr(devices, "_cuda_maybe", lambda: cuda)
        monkeypatch.setattr(devices, "_faiss_importable", lambda: faiss)

    return set_


@pytest.mark.parametrize(
    "faiss_gpus, cuda, faiss, device, expected",
    [
        (2, True, True, None, ("faiss", "cuda (2 GPUs)")),  # a faiss GPU build comes first
        (1, False, True, "auto", ("faiss", "cuda (1 GPU)")),
        (0, True, True, None, ("torch", "cuda")),  # pip install laser_fast on a CUDA machine
        (0, False, True, None, ("faiss", "cpu")),  # a CPU machine
        (0, False, False, None, ("torch", "cpu")),  # faiss missing
        (0, True, True, "cpu", ("faiss", "cpu")),  # an explicit CPU keeps faiss
        (2, True, True, "cpu", ("faiss", "cpu")),
        (0, True, True, "cuda:1", ("torch", "cuda:1")),
        (1, True, True, "cuda:1", ("faiss", "cuda (1 GPU)")),
        (0, False, True, "mps", ("torch", "mps")),
    ],
)
def test_auto_backend_rule(fake_machine, faiss_gpus, cuda, faiss, device, expected):
    fake_machine(faiss_gpus=faiss_gpus, cuda=cuda, faiss=faiss)
    assert devices.resolve_kmeans_backend("auto", device) == expected


def test_forced_backends(fake_machine):
    fake_machine(faiss_gpus=2, cuda=True)
    assert devices.resolve_kmeans_backend("torch", "cpu") == ("torch", "cpu")
    assert devices.resolve_kmeans_backend("faiss", "cpu") == ("faiss", "cpu")
    assert devices.resolve_kmeans_backend("faiss") == ("faiss", "cuda (2 GPUs)")
    fake_machine(faiss_gpus=0, cuda=True)
    with pytest.raises(ValueError, match="faiss sees no GPU"):
        devices.resolve_kmeans_backend("faiss", "cuda")
    fake_machine(faiss=False)
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        devices.resolve_kmeans_backend("faiss")
    with pytest.raises(ValueError, match="unknown k-means backend"):
        devices.resolve_kmeans_backend("cuvs")


def test_auto_on_a_cuda_machine_runs_torch(fake_machine, monkeypatch):
    """faiss-cpu and a GPU that torch sees: auto picks torch (its "cuda" pointed at the CPU here)."""
    fake_machine(faiss_gpus=0, cuda=True)
    real = devices.resolve_kmeans_backend

    def on_cpu(backend="auto", device=None):
        be, dev = real(backend, device)
        return be, "cpu" if dev == "cuda" else dev

    monkeypatch.setattr(km, "resolve_kmeans_backend", on_cpu)
    x, truth = _blobs(n_per=50, k=4, d=4)
    lab, st = kmeans_labels(x, 4)
    assert st["backend"] == "torch" and st["kmeans_device"] == "torch:cpu" and _same_partition(lab, truth)


def test_method_rules_per_backend():
    x = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="two-level k-means runs on faiss"):
        kmeans_labels(x, 70, backend="torch", device="cpu", method="two-level")
    with pytest.raises(ValueError, match="unknown k-means method"):
        kmeans_labels(x, 70, backend="torch", device="cpu", method="exact")
    # auto: two-level with faiss above TWO_LEVEL_MIN_NK, flat with torch
    old = km.TWO_LEVEL_MIN_NK
    try:
        km.TWO_LEVEL_MIN_NK = 1000
        if HAS_FAISS:
            assert kmeans_labels(x, 70, backend="faiss", device="cpu")[1]["method"] == "two-level"
        assert kmeans_labels(x, 70, backend="torch", device="cpu")[1]["method"] == "flat"
    finally:
        km.TWO_LEVEL_MIN_NK = old


# --------------------------------------------------------------------------- faiss install check


def test_two_faiss_distributions_warn(monkeypatch, caplog):
    monkeypatch.setattr(devices, "faiss_distributions", lambda: {"faiss-cpu": "1.15.1", "faiss-gpu-cu12": "1.14.1.post1"})
    devices.check_faiss_install.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="laser_fast.runtime.devices"):
            assert devices.check_faiss_install() == ("faiss-cpu", "faiss-gpu-cu12")
        msg = caplog.text
        assert "faiss-cpu 1.15.1" in msg and "faiss-gpu-cu12 1.14.1.post1" in msg and "pip uninstall -y faiss-cpu faiss-gpu-cu12" in msg
    finally:
        devices.check_faiss_install.cache_clear()


@needs_faiss
def test_faiss_distributions_names_only_faiss_builds():
    names = devices.faiss_distributions()
    assert "faiss-cpu" in names or any(n.startswith("faiss-gpu") for n in names)
    for good in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss_gpu_cu12_cuvs", "faiss-cuda", "faiss"):
        assert devices._FAISS_DIST.match(good)
    for other in ("faiss-haystack", "faiss-imputer", "langchain-faiss"):
        assert not devices._FAISS_DIST.match(other)


# --------------------------------------------------------------------------- the recorded device


def test_cluster_select_reports_the_torch_backend_when_forced():
    from laser_fast.io.decisions import kmeans_device_used
    from laser_fast.sampling.cluster import cluster_select_detailed

    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    res = cluster_select_detailed(x, np.random.default_rng(1).random(400), 20, kmeans_backend="torch", device="cpu")
    assert res.stats["kmeans_device"] == "torch:cpu" and res.stats["backend"] == "torch"
    strata = {"code": res.stats, "math": {"n": 3, "target": 0, "selected": 0}}
    assert kmeans_device_used(strata, "cpu") == "torch:cpu"
    assert kmeans_device_used({"math": {"n": 3}}, "cpu") == "not run (no stratum needed k-means)"
    assert kmeans_device_used({}, None) is None
    assert kmeans_device_used({"a": {"kmeans_device": "torch:cuda"}, "b": {"kmeans_device": "faiss:cpu"}}) == ["faiss:cpu", "torch:cuda"]


def test_manifest_records_the_kmeans_device_that_ran(monkeypatch):
    """select_strata -> run_manifest, as the pipeline runs them, with the torch backend forced."""
    from types import SimpleNamespace

    from laser_fast.config import SelectOptions
    from laser_fast.io.decisions import run_manifest
    from laser_fast.sampling.stratum import select_strata

    monkeypatch.setattr(km, "resolve_kmeans_backend", lambda backend="auto", device=None: ("torch", "cpu"))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(500, 16)).astype(np.float32)
    strata = {"code": np.arange(0, 400), "math": np.arange(400, 420), "other": np.arange(420, 500)}
    plan = SimpleNamespace(strata=strata, targets={"code": 30, "math": 50, "other": 0}, available={"code": 400, "math": 20, "other": 80},
                           unit_tokens=False, budget=80, proportions={}, moves=[])
    opts = SelectOptions(budget=80, mode="kmeans", show_progress=False)
    sel = select_strata(plan, rng.random(500), np.full(500, 10), np.full(500, "candidate", dtype=object), lambda rows: emb[rows], opts)
    assert sel.stats["code"]["kmeans_device"] == "torch:cpu" and "kmeans_device" not in sel.stats["math"]
    common = {"opts": opts, "inputs": [], "skipped": [], "score_files": [], "plan": plan, "cats": np.full(500, "code"), "status": sel.status,
              "eligible": np.ones(500, bool), "n_selected": int(sel.rows.size), "strata_stats": sel.stats, "embedding": {}, "stages": {},
              "timer": SimpleNamespace(t={}, peak_mb={})}
    # the pipeline passes the planned device (faiss_device()); the manifest keeps the one that ran
    m = run_manifest(devices={"embedding": "cpu", "kmeans": "cpu", "torch_cuda": False}, **common)
    assert m["devices"] == {"embedding": "cpu", "kmeans": "torch:cpu", "torch_cuda": False}
    assert run_manifest(devices={"embedding": None, "kmeans": None}, **{**common, "strata_stats": {}})["devices"]["kmeans"] is None


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible to torch")
def test_torch_kmeans_on_cuda(random_rows):
    x = random_rows
    lab, st = kmeans_labels(x, 60, seed=0, backend="torch", device="cuda")
    assert st["kmeans_device"] == "torch:cuda" and st["torch"]["compute_dtype"] == "float16"
    # the CPU reference: faiss where installed, else the torch path on the CPU
    _, ref = kmeans_labels(x, 60, seed=0, method="flat", backend="faiss" if HAS_FAISS else "torch", device="cpu")
    assert st["objective"] == pytest.approx(ref["objective"], rel=0.03)
    lab2, _ = kmeans_labels(x, 60, seed=0, backend="torch", device="cuda")
    np.testing.assert_array_equal(lab, lab2)  # deterministic on one device
    xb, truth = _blobs()
    assert _same_partition(kmeans_labels(xb, 12, backend="torch", device="cuda")[0], truth)
    # chunked = unchunked on the GPU too
    a = lloyd_torch(x, 60, seed=0, device="cuda", chunk_rows=x.shape[0])
    b = lloyd_torch(x, 60, seed=0, device="cuda", chunk_rows=333)
    np.testing.assert_array_equal(a[1], b[1])
