"""cluster_select (kmeans mode for one stratum) and the embedding store."""
import numpy as np
import pytest

from laser_fast.cluster import cluster_select, cluster_select_detailed, pca_reduce, preference_order


def _blobs(n=600, d=32, centers=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * 5
    lab = rng.integers(0, centers, n)
    x = (c[lab] + rng.normal(size=(n, d))).astype(np.float32)
    return x, lab


def test_cluster_select_contract():
    x, _ = _blobs()
    pref = np.random.default_rng(1).random(x.shape[0])
    idx = cluster_select(x, pref, 40, threshold_percentile=0.8, seed=0)
    assert idx.dtype == np.int64 and idx.size == 40 and np.unique(idx).size == 40
    res = cluster_select_detailed(x, pref, 40, threshold_percentile=0.8, seed=0)
    bests = res.order[: res.n_cluster_best]
    thr = np.percentile(pref, 80)
    assert res.threshold == pytest.approx(thr)
    assert (pref[bests] > thr).all()
    # each cluster best is the top-preference row of its cluster, one per cluster
    assert np.unique(res.labels[bests]).size == bests.size
    for b in bests:
        members = np.flatnonzero(res.labels == res.labels[b])
        assert pref[b] == pref[members].max()
    # every cluster whose best clears the threshold contributes its best
    for c in np.unique(res.labels):
        members = np.flatnonzero(res.labels == c)
        if pref[members].max() > thr:
            assert members[np.argmax(pref[members])] in set(bests.tolist())
    # the fill is the best remaining by preference
    fill = idx[res.n_cluster_best :]
    rest = np.setdiff1d(np.arange(x.shape[0]), bests)
    assert set(fill.tolist()) == set(rest[np.argsort(-pref[rest], kind="stable")][: fill.size].tolist())
    # deterministic for a seed
    assert np.array_equal(idx, cluster_select(x, pref, 40, threshold_percentile=0.8, seed=0))


def test_cluster_select_covers_clusters_better_than_top():
    x, lab = _blobs(centers=10)
    pref = np.where(lab == 0, 1.0, 0.0) + np.random.default_rng(2).random(x.shape[0]) * 0.1  # one blob dominates preference
    idx = cluster_select(x, pref, 10, threshold_percentile=0.0, seed=0)
    top = preference_order(pref)[:10]
    assert np.unique(lab[idx]).size > np.unique(lab[top]).size


def test_cluster_select_edge_cases():
    x, _ = _blobs(n=20)
    pref = np.arange(20.0)
    assert cluster_select(x, pref, 0).size == 0
    all_rows = cluster_select(x, pref, 25)
    assert sorted(all_rows.tolist()) == list(range(20)) and all_rows[0] == 19
    assert cluster_select(x.astype(np.float16), pref, 5).size == 5
    with pytest.raises(ValueError):
        cluster_select(x, pref[:5], 3)


def test_pca_keeps_variance():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 40))
    x = (low + rng.normal(size=(500, 40)) * 1e-3).astype(np.float32)
    z, comps = pca_reduce(x, 0.99)
    assert comps == 3 and z.shape == (500, 3)


def test_embedding_store_reuses_texts_and_subsets(tmp_path):
    from laser_fast.embed import EmbeddingStore

    store = EmbeddingStore(tmp_path)
    texts = ["The cat sat on the mat.", "Quantum computers use qubits.", "The cat sat on the mat."]
    a, info = store.get(texts, show_progress=False)
    assert a.dtype == np.float16 and a.shape == (3, 384) and info["computed"] == 2 and not info["cache_hit"]
    assert np.array_equal(a[0], a[2])
    norms = np.linalg.norm(np.asarray(a, dtype=np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)
    b, info = store.get([texts[1], "A new sentence."], show_progress=False)
    assert info["computed"] == 1 and np.array_equal(b[0], a[1])
    c, info = store.get(texts, show_progress=False)
    assert info["cache_hit"] and np.array_equal(np.asarray(c), np.asarray(a))
    # a separate namespace per text field
    _, info = store.get(texts, field="instruction", show_progress=False)
    assert info["computed"] == 2
