"""The work directory: atomic writes, checked reads, damaged entries recomputed, runs sharing it."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.runtime.workdir import LAYOUT_VERSION, Checksum, WorkDir, checksum_file, sidecar, temp_path, unique_suffix
from laser_fast.sampling.store_index import INDEX_CACHE

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- damage


def truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size - 37)


def garble(p: Path) -> None:
    """Overwrite 64 bytes in the middle with other bytes (same size)."""
    b = bytearray(p.read_bytes())
    mid = len(b) // 2
    b[mid:mid + 64] = bytes((x ^ 0x5A) for x in b[mid:mid + 64])
    p.write_bytes(bytes(b))


def bump_value(p: Path) -> None:
    """Add 1.0 to one float16 value of a .npy file (a finite value, same size)."""
    a = np.load(p, mmap_mode="r+")
    a[1, 2] = np.float16(float(a[1, 2]) + 1.0)
    assert np.isfinite(a).all()
    a.flush()
    del a


def swap_rows(p: Path) -> None:
    a = np.load(p, mmap_mode="r+")
    assert not np.array_equal(a[0], a[1])
    a[[0, 1]] = a[[1, 0]]
    a.flush()
    del a


def append_zeros(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"\0" * 8)


DAMAGE = {"truncated": truncate, "garbled": garble, "value+1": bump_value, "rows swapped": swap_rows, "zeros appended": append_zeros}


def _warned(caplog, path: Path) -> bool:
    return any(str(path) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# --------------------------------------------------------------------------- WorkDir


def test_of_str_and_layout(tmp_path):
    wd = WorkDir.of(str(tmp_path / "w"))
    assert WorkDir.of(wd) is wd and isinstance(wd.root, Path) and str(wd) == str(tmp_path / "w")
    assert Path(wd) == tmp_path / "w" and wd / "tmp" == tmp_path / "w" / "tmp"
    assert not wd.root.exists()  # nothing is created until it is used
    wd.ensure()
    assert sorted(p.name for p in wd.root.iterdir()) == ["VERSION", "cache", "embeddings", "locks", "scores", "tmp"]
    assert f"layout {LAYOUT_VERSION}" in (wd.root / "VERSION").read_text()


def test_atomic_write_is_unique_removes_its_temp_on_error_and_has_normal_modes(tmp_path):
    wd = WorkDir(tmp_path / "w")
    final = wd.cache / "x.bin"
    assert temp_path(final) != temp_path(final) and temp_path(final).parent == final.parent
    with pytest.raises(RuntimeError, match="boom"), wd.atomic(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert sorted(os.listdir(wd.cache)) == []  # neither the entry nor its temporary file
    old = os.umask(0o022)
    try:
        with wd.atomic(final) as tmp:
            tmp.write_bytes(b"whole")
        wd.save_array(wd.cache / "a.npy", np.arange(5))
    finally:
        os.umask(old)
    assert sorted(os.listdir(wd.cache)) == ["a.npy", "a.npy.meta.json", "x.bin", "x.bin.meta.json"]
    for name in os.listdir(wd.cache):
        assert (wd.cache / name).stat().st_mode & 0o777 == 0o644, name
    meta = json.loads(sidecar(final).read_text())
    assert meta["bytes"] == 5 and meta["checksum"] == checksum_file(final)[1] and meta["layout"] == LAYOUT_VERSION
    assert wd.verify(final) and np.array_equal(wd.load_array(wd.cache / "a.npy"), np.arange(5))


def test_checksum_streams_and_detects_changed_and_swapped_words():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    whole = Checksum()
    whole.update(data)
    parts = Checksum()
    i = 0
    for k in (1, 3, 7, 8, 13, 999, 50_000):
        parts.update(data[i:i + k])
        i += k
    parts.update(data[i:])
    assert parts.hexdigest() == whole.hexdigest() and parts.nbytes == len(data)

    def digest(b: bytes) -> str:
        c = Checksum()
        c.update(b)
        return c.hexdigest()

    words = np.frombuffer(data[:80_000], dtype="<u8").copy()
    base = digest(words.tobytes())
    for i in (0, 17, 9_999):  # any change of one word
        w = words.copy()
        w[i] ^= np.uint64(1 << 40)
        assert digest(w.tobytes()) != base
    w = words.copy()
    w[[3, 4000]] = w[[4000, 3]]  # swapped words keep the plain sum, not the weighted one
    assert digest(w.tobytes()) != base and digest(w.tobytes())[5:21] == base[5:21]
    rows = words.reshape(100, 100).copy()
    rows[[2, 50]] = rows[[50, 2]]
    assert digest(rows.tobytes()) != base
    assert digest(data + b"\0") == digest(data)  # the tail is zero-padded: the integrity record keeps the size too


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_array_is_logged_with_its_path_and_removed(tmp_path, caplog, damage):
    wd = WorkDir(tmp_path)
    p = wd.embeddings / "x.npy"
    wd.save_array(p, np.random.default_rng(1).standard_normal((40, 16)).astype(np.float16))
    assert wd.load_array(p) is not None
    DAMAGE[damage](p)
    with caplog.at_level(logging.WARNING):
        assert wd.load_array(p) is None
    assert _warned(caplog, p) and not p.exists() and not sidecar(p).exists()


def test_cached_arrays_recomputes_damaged_and_sidecarless_entries(tmp_path, caplog):
    wd = WorkDir(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(1000, dtype=np.float64) / 7, "labels": np.array(["Math", "Coding"])}

    first = wd.cached_arrays("stage", "k1", compute)
    again = wd.cached_arrays("stage", "k1", compute)
    assert len(calls) == 1 and np.array_equal(first["x"], again["x"]) and again["labels"].tolist() == ["Math", "Coding"]
    path = wd.cache / f"stage-k1-v{LAYOUT_VERSION}.npz"
    for damage in (garble, truncate, lambda p: sidecar(p).unlink()):
        n = len(calls)
        damage(path)
        with caplog.at_level(logging.WARNING):
            out = wd.cached_arrays("stage", "k1", compute)
        assert len(calls) == n + 1 and np.array_equal(out["x"], first["x"]) and _warned(caplog, path)
        caplog.clear()
        assert wd.verify(path)  # stored again, intact


def test_clean_stale_removes_temp_files_of_dead_processes_only(tmp_path):
    wd = WorkDir(tmp_path).ensure()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = temp_path(wd.cache / "a.npz")
    host = unique_suffix().split("-")[0]
    theirs = wd.embeddings / "ns" / f".shard-1.f16.npy.tmp-{host}-{dead.pid}-0123abcd"
    spill = wd.tmp / f"records-{host}-{dead.pid}-0123abcd.arrow"
    other_host = wd.cache / f".b.npz.tmp-ffffffff-{dead.pid}-0123abcd"
    theirs.parent.mkdir()
    for p in (mine, theirs, spill, other_host):
        p.write_bytes(b"x")
    removed = wd.clean_stale()
    assert sorted(removed) == sorted([theirs, spill])
    assert mine.exists() and other_host.exists()


def test_lock_excludes_until_released(tmp_path):
    wd = WorkDir(tmp_path)
    with wd.lock("embeddings-ns") as held:
        assert held
        with wd.lock("embeddings-ns", blocking=False) as second:
            assert not second
        with wd.lock("other", blocking=False) as other:
            assert other
    with wd.lock("embeddings-ns", blocking=False) as again:
        assert again


# --------------------------------------------------------------------------- the embedding store

#: strictly decreasing lengths: the store's length-sorted chunks of 4 are the texts in this order,
#: as ``put``'s chunks of 4 are, so a re-embedded shard is one batch of the same texts as before
#: (bit-identical vectors; other batch compositions pad differently and differ in the last bit)
TEXTS = [f"answer {i}: " + "token " * (40 - 3 * i) for i in range(12)]


@pytest.fixture(scope="module")
def clean_vectors(tmp_path_factory):
    """The 12 texts embedded by the bundled MiniLM in shards of 4 (the reference)."""
    from laser_fast.sampling.store import EmbeddingStore

    store = EmbeddingStore(tmp_path_factory.mktemp("clean"))
    a, info = store.get(TEXTS, chunk_rows=4, show_progress=False)
    assert info["computed"] == 12
    shards = [np.load(p) for p in _shards(store)]
    assert [s.shape[0] for s in shards] == [4, 4, 4] and np.array_equal(np.concatenate(shards), np.asarray(a))  # chunks in text order
    return np.asarray(a).copy()


def _shards(store) -> list[Path]:
    return sorted(store.root.glob("*/shard-*.f16.npy"))


@pytest.mark.parametrize("damage", ["truncated", "garbled", "value+1"])
@pytest.mark.parametrize("half", ["f16", "hashes"])
def test_a_damaged_embedding_shard_is_embedded_again(tmp_path, caplog, clean_vectors, damage, half):
    """A shard stored by ``put`` is damaged: ``get`` logs it, drops both its files and embeds its
    texts again with the bundled model, giving the clean run's vectors."""
    from laser_fast.sampling.store import EmbeddingStore

    store = EmbeddingStore(tmp_path)
    assert store.put(TEXTS, clean_vectors, chunk_rows=4)["shards"] == 3
    vec_path = _shards(store)[1]
    target = vec_path if half == "f16" else vec_path.with_name(vec_path.name.replace(".f16.npy", ".hashes.npy"))
    if damage == "value+1" and half == "hashes":
        a = np.load(target, mmap_mode="r+")
        a[1, 2] ^= 1  # a digest byte changed
        a.flush()
        del a
    else:
        DAMAGE[damage](target)
    if half == "hashes":  # checked once per process (the index cache): the next process finds it
        INDEX_CACHE.clear()
    with caplog.at_level(logging.WARNING):
        assert store.stored(TEXTS).tolist() == [i // 4 != 1 for i in range(12)]  # the damaged shard's texts are not stored
        got, info = store.get(TEXTS, model=None, chunk_rows=4, show_progress=False)
    assert _warned(caplog, target) and info["computed"] == 4 and not info["cache_hit"]
    assert not vec_path.exists() and len(_shards(store)) == 3
    np.testing.assert_array_equal(np.asarray(got), clean_vectors)
    assert store.get(TEXTS, show_progress=False)[1]["cache_hit"]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_request_memmap_is_assembled_again(tmp_path, caplog, clean_vectors, damage, monkeypatch):
    from laser_fast.sampling import store as ES

    store = ES.EmbeddingStore(tmp_path)
    info = store.put(TEXTS, clean_vectors, chunk_rows=4, assemble=True)
    final = store.root / f"{info['key']}.npy"
    assert final.exists() and store.get(TEXTS, show_progress=False)[1]["cache_hit"]
    DAMAGE[damage](final)
    monkeypatch.setattr(ES, "load_sentence_model", lambda *a, **k: pytest.fail("the shards are intact: nothing to embed"))
    with caplog.at_level(logging.WARNING):
        got, ginfo = store.get(TEXTS, show_progress=False)
    assert _warned(caplog, final) and not ginfo["cache_hit"] and ginfo["computed"] == 0
    np.testing.assert_array_equal(np.asarray(got), clean_vectors)
    assert store.wd.verify(final)


# --------------------------------------------------------------------------- the score cache


def _records(n: int) -> pl.DataFrame:
    from laser_fast.io.ingest import records_from_frame

    rows = [{"instruction": f"question {i} " + "x" * (i % 17 + 1), "output": f"answer {i} " + "y" * (i * 7 % 61 + 1)} for i in range(n)]
    return records_from_frame(pl.DataFrame(rows), origin="t")[0]


class _LenScorer:
    """A cheap deterministic scorer (stands in for a model)."""

    name = "lens"
    outputs = ("chars",)
    fingerprint = "lens|v1"

    def __init__(self):
        self.seen = 0

    def applies_to(self, cats):
        return np.ones(len(cats), dtype=bool)

    def score(self, batch, *, batch_size=None, show_progress=None):
        self.seen += batch.height
        return {"chars": (batch["instruction"].str.len_chars() + batch["response"].str.len_chars()).to_numpy().astype(float)}


def _rewrite_one_value(p: Path) -> None:
    """A valid Parquet file with one score changed by 1.0 (what a bad disk or a stray write could leave)."""
    f = pl.read_parquet(p)
    f = f.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("chars") + 1.0).otherwise(pl.col("chars")).alias("chars"))
    f.write_parquet(p)


@pytest.mark.parametrize("damage", ["truncated", "garbled", "value+1", "no record"])
def test_a_damaged_score_shard_is_scored_again(tmp_path, caplog, damage):
    from laser_fast.scorers.base import Scorer
    from laser_fast.scorers.cache import ScoreCache
    from laser_fast.scorers.stage import score_records

    Scorer.register(_LenScorer)
    recs = _records(30)
    cats = np.array(["Math"] * 30, dtype=object)
    first, _ = score_records(recs, cats, _LenScorer(), tmp_path, chunk_records=7)
    cache = ScoreCache(tmp_path, "lens", "lens|v1", ("chars",))
    shard = cache.shards()[1]
    rows_in = pl.read_parquet(shard).height
    {"truncated": truncate, "garbled": garble, "value+1": _rewrite_one_value, "no record": lambda p: sidecar(p).unlink()}[damage](shard)
    s = _LenScorer()
    with caplog.at_level(logging.WARNING):
        again, facts = score_records(recs, cats, s, tmp_path, chunk_records=7)
    assert _warned(caplog, shard) and not shard.exists()
    assert s.seen == rows_in == facts["computed"] and facts["cached"] == 30 - rows_in
    np.testing.assert_array_equal(again["chars"], first["chars"])
    s3 = _LenScorer()
    score_records(recs, cats, s3, tmp_path, chunk_records=7)
    assert s3.seen == 0
    assert not [p for p in cache.dir.iterdir() if ".tmp-" in p.name]


def test_fingerprint_written_once_and_compaction(tmp_path):
    from laser_fast.scorers.cache import ScoreCache

    c = ScoreCache(WorkDir(tmp_path), "s", "fp", ("a",))
    for i in range(3):
        c.append([f"id{i}"], [f"k{i}"], {"a": np.array([float(i)])})
    assert json.loads((c.dir / "FINGERPRINT").read_text())["fingerprint"] == "fp"
    with c.wd.lock(f"scores-{c.dir.name}"):  # another run is compacting: this one skips
        c.compact(force=True)
        assert len(c.shards()) == 3
    c.compact(force=True)
    assert len(c.shards()) == 1 and c.wd.verify(c.shards()[0])
    assert c.lookup(["id0", "id2"], ["k0", "k2"])[1]["a"].tolist() == [0.0, 2.0]


def test_unreadable_judge_responses_are_reported_with_their_file(tmp_path, caplog):
    from laser_fast.scorers.judge_client import JudgeClient

    shard = tmp_path / "responses-1-abc.jsonl"
    shard.write_bytes(json.dumps({"key": "k1", "content": "fine"}).encode() + b"\n" + b'{"key": "k2", "cont\xff\xfe' + b"\n")
    client = JudgeClient("http://127.0.0.1:9", cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        assert client._load_cache() == {"k1": "fine"}  # the good line is kept, the damaged one is sent again
    assert _warned(caplog, shard) and "1 unreadable lines" in caplog.text


# --------------------------------------------------------------------------- runs sharing a work directory

_WORKER = r'''
import json, sys, time, traceback
from pathlib import Path
from laser_fast.cli import main

base, me, rounds, pool = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
other = "b" if me == "a" else "a"
rcs = []
for r in range(rounds):
    (base / f"ready-{r}-{me}").touch()  # both runs of a round start together, on a fresh work directory
    t0 = time.time()
    while not (base / f"ready-{r}-{other}").exists():
        if time.time() - t0 > 600:
            sys.exit(f"worker {other} never reached round {r}")
        time.sleep(0.002)
    try:
        rcs.append(main(["select", pool, *sys.argv[5:], "--workdir", str(base / f"w{r}"), "--output-dir", str(base / f"o{r}-{me}")]))
    except BaseException:  # a crash is reported, and the other run is not left waiting for this one
        traceback.print_exc()
        rcs.append(f"crashed in round {r}")
print(json.dumps(rcs))
'''

SELECT_ARGS = ["--classifier", "minilm", "--profile", "none", "--strategy", "longest", "--mode", "kmeans", "--budget", "20", "-q", "--no-report"]


def test_two_runs_sharing_a_work_directory_agree(tmp_path):
    """Two runs start together on one fresh work directory, 10 times: both exit 0 with the
    selection of a run alone (every cache is computed and written by both at once).

    Each worker process runs the CLI's ``main`` once per round (``python -m laser_fast.cli`` is
    ``main``; importing torch and loading MiniLM 20 times would take minutes on 2 cores); the
    reference is one real ``python -m laser_fast.cli`` run."""
    pool = tmp_path / "pool.jsonl"
    lines = (ROOT / "examples" / "pool" / "chat_messages.jsonl").read_text().splitlines()[:40]
    pool.write_text("\n".join(lines) + "\n")
    # one thread per run (two runs on a 2-core machine), the same in all three runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **{k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    rounds = 10
    base = tmp_path / "shared"
    base.mkdir()
    procs = {me: subprocess.Popen([sys.executable, str(script), str(base), me, str(rounds), str(pool), *SELECT_ARGS],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for me in ("a", "b")}
    ref = subprocess.run([sys.executable, "-m", "laser_fast.cli", "select", str(pool), *SELECT_ARGS, "--workdir", str(tmp_path / "w_ref"),
                          "--output-dir", str(tmp_path / "o_ref")], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert ref.returncode == 0, ref.stderr
    outs = {me: p.communicate(timeout=1800) for me, p in procs.items()}
    for me, p in procs.items():
        assert p.returncode == 0, outs[me][1][-3000:]
        assert json.loads(outs[me][0].strip().splitlines()[-1]) == [0] * rounds, outs[me][1][-3000:]
        assert "Traceback" not in outs[me][1] and "damaged" not in outs[me][1], outs[me][1][-3000:]
    want = (tmp_path / "o_ref" / "selected.jsonl").read_bytes()
    assert want.count(b"\n") == 20
    for r in range(rounds):
        for me in ("a", "b"):
            assert (base / f"o{r}-{me}" / "selected.jsonl").read_bytes() == want, f"round {r}, run {me}"
        w = base / f"w{r}"
        entries = [p for p in w.rglob("*") if p.is_file() and p.parent.name != "locks" and not p.name.endswith(".meta.json")
                   and p.name not in ("VERSION", "FINGERPRINT")]  # FINGERPRINT: a score folder's description, no record
        assert all(WorkDir(w).verify(p) for p in entries), r  # every entry intact, with its record
        assert sorted(p.name.split("-")[0] for p in (w / "cache").glob("*.npz")) == ["language", "tokens"], r
        assert list(w.glob("scores/categories-*/part-*.parquet")), r  # classifications, per conversation
        assert list(w.glob("embeddings/*.npy")) and list(w.glob("embeddings/*/shard-*.hashes.npy")), r
        assert not [p for p in w.rglob("*") if ".tmp-" in p.name or p.name.startswith("records-")]


_SCORE_WORKER = r'''
import json, sys, time, traceback
from pathlib import Path
import numpy as np
import polars as pl
import laser_fast.scorers.cache as sc
from laser_fast.io.ingest import records_from_frame
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.stage import score_records

sc.COMPACT_AFTER = 4  # compact often: runs read while the other compacts

class LenScorer(Scorer):
    name, outputs, fingerprint = "lens", ("chars",), "lens|v1"
    def score(self, batch, *, batch_size=None, show_progress=None):
        time.sleep(0.002)
        return {"chars": (batch["instruction"].str.len_chars() * 1000 + batch["response"].str.len_chars()).to_numpy().astype(float)}

base, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
other = "b" if me == "a" else "a"
rows = [{"instruction": f"q{i} " + "x" * (i % 13), "output": f"a{i} " + "y" * (i * 7 % 31)} for i in range(60)]
recs = records_from_frame(pl.DataFrame(rows), origin="t")[0]
cats = np.array(["Math"] * 60, dtype=object)
want = (recs["instruction"].str.len_chars() * 1000 + recs["response"].str.len_chars()).to_numpy().astype(float)
ok = []
for r in range(rounds):
    (base / f"ready-{r}-{me}").touch()
    while not (base / f"ready-{r}-{other}").exists():
        time.sleep(0.001)
    try:
        out, _ = score_records(recs, cats, LenScorer(), base / f"w{r}", chunk_records=3)
        again, facts = score_records(recs, cats, LenScorer(), base / f"w{r}", chunk_records=3)
        ok.append(bool(np.array_equal(out["chars"], want) and np.array_equal(again["chars"], want)) and facts["cached"] == 60)
    except BaseException:
        traceback.print_exc()
        ok.append(f"crashed in round {r}")
print(json.dumps(ok))
'''


def test_two_runs_scoring_into_one_score_cache_agree(tmp_path):
    """Two processes score the same records into one fresh score cache at once (appending and
    compacting while the other reads), 10 times: both get every score right, twice."""
    script = tmp_path / "score_worker.py"
    script.write_text(_SCORE_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = {me: subprocess.Popen([sys.executable, str(script), str(tmp_path), me, "10"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for me in ("a", "b")}
    for p in procs.values():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and json.loads(out.strip().splitlines()[-1]) == [True] * 10, err[-3000:]
        assert "damaged" not in err and "Traceback" not in err, err[-3000:]
    for r in range(10):
        w = WorkDir(tmp_path / f"w{r}")
        shards = list(w.scores.glob("*/part-*.parquet"))
        assert shards and all(w.verify(p) for p in shards)
