"""GPU paths: run on a machine with a CUDA GPU (and faiss-gpu); skipped with a reason elsewhere."""
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


@pytest.mark.gpu
@pytest.mark.skipif(_faiss_gpus() == 0, reason="faiss sees no GPU (install faiss-gpu on a CUDA machine)")
def test_faiss_gpu_kmeans_reports_device():
    from laser_fast.sampling.cluster import cluster_select_detailed

    x = np.random.default_rng(0).normal(size=(5000, 64)).astype(np.float32)
    res = cluster_select_detailed(x, np.random.default_rng(1).random(5000), 100)
    assert res.stats["device"].startswith("cuda")
    assert res.order.size == 5000 and res.n_cluster_best > 0


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU visible to torch")
def test_embedding_on_cuda(tmp_path):
    from laser_fast.sampling.store import EmbeddingStore

    emb, info = EmbeddingStore(tmp_path).get(["a GPU sentence", "another one"], device="cuda", show_progress=False)
    assert info["device"].startswith("cuda") and emb.shape == (2, 384)
