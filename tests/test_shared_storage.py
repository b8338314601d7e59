"""A work directory on shared storage (``--workdir file:///…``, ``s3://…``, ``memory://…``): every
cache written on one machine is read on another, entries appear whole or not at all, and damaged
copies are removed everywhere.

"Another machine" is a second local copy (``LASER_FAST_SCRATCH``) of the same URI; the URIs are
``file://`` folders (pyarrow's local filesystem, the same calls as S3 or GCS) and fsspec's
``memory://`` (the fsspec fallback every other protocol takes).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.errors import LaserError
from laser_fast.runtime import workdir as W
from laser_fast.runtime.storage import RemoteStore, is_uri, scratch_for
from laser_fast.runtime.workdir import WorkDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """``machine(name)``: the work directory as that machine sees it (its own local copy)."""
    def on(name: str, uri: str) -> WorkDir:
        monkeypatch.setenv("LASER_FAST_SCRATCH", str(tmp_path / f"scratch-{name}"))
        W._READY.discard(str(scratch_for(uri)))
        return WorkDir(uri).ensure()
    return on


def _uri(tmp_path: Path) -> str:
    return (tmp_path / "shared").as_uri()


def test_a_uri_names_shared_storage_and_round_trips(tmp_path, machine):
    uri = _uri(tmp_path)
    wd = machine("a", uri)
    assert is_uri(uri) and not is_uri(str(tmp_path)) and wd.uri == uri
    assert str(wd) == uri and WorkDir(str(wd)) == wd  # tasks get str(workdir) and rebuild it
    assert Path(wd).is_relative_to(tmp_path / "scratch-a")
    assert (tmp_path / "shared" / "VERSION").read_text() == W.MARKER
    assert WorkDir.owning(wd.scores / "x" / "work") == wd and WorkDir.owning(tmp_path) is None


def test_entries_written_on_one_machine_are_read_on_another(tmp_path, machine):
    uri = _uri(tmp_path)
    a = machine("a", uri)
    calls = []
    out = a.cached_arrays("stage", "k1", lambda: calls.append(1) or {"x": np.arange(5), "s": np.array(["a", "b"])})
    assert (tmp_path / "shared" / "cache" / f"stage-k1-v{W.LAYOUT_VERSION}.npz.meta.json").exists()
    b = machine("b", uri)
    back = b.cached_arrays("stage", "k1", lambda: calls.append(2) or {"x": np.zeros(1)})
    assert calls == [1] and np.array_equal(back["x"], out["x"]) and back["s"].tolist() == ["a", "b"]
    # an entry whose integrity record was never uploaded does not exist there
    (tmp_path / "shared" / "cache" / "half.npy").write_bytes(b"partial")
    assert b.load_array(b.cache / "half.npy") is None and not (b.cache / "half.npy").exists()


def test_a_damaged_shared_copy_is_removed_everywhere_and_computed_again(tmp_path, machine, caplog):
    uri = _uri(tmp_path)
    a = machine("a", uri)
    a.save_array(a.cache / "v.npy", np.arange(1000, dtype=np.float32))
    shared = tmp_path / "shared" / "cache" / "v.npy"
    raw = bytearray(shared.read_bytes())
    raw[-8:] = b"\xff" * 8
    shared.write_bytes(bytes(raw))
    b = machine("b", uri)
    with caplog.at_level(logging.WARNING):
        assert b.load_array(b.cache / "v.npy") is None
    assert "checksum does not match" in caplog.text and str(b.cache / "v.npy") in caplog.text
    assert not shared.exists() and not Path(str(shared) + ".meta.json").exists()
    b.save_array(b.cache / "v.npy", np.arange(3))
    assert machine("c", uri).load_array(WorkDir(uri).cache / "v.npy").tolist() == [0, 1, 2]


def test_score_cache_is_shared_and_compaction_removes_the_shared_parts(tmp_path, machine):
    from laser_fast.scorers.cache import ScoreCache

    uri = _uri(tmp_path)
    ca = ScoreCache(machine("a", uri), "s", "fp", ["q"])
    ca.append(["1", "2"], ["k1", "k2"], {"q": np.array([0.5, 0.25])})
    cb = ScoreCache(machine("b", uri), "s", "fp", ["q"])
    found, vals = cb.lookup(["2", "1", "3"], ["k2", "k1", "k3"])
    assert found.tolist() == [True, True, False] and vals["q"][:2].tolist() == [0.25, 0.5]
    cb.append(["3"], ["k3"], {"q": np.array([1.0])})
    cb.compact(force=True)
    shared = sorted(p.name for p in (tmp_path / "shared" / "scores" / cb.dir.name).glob("part-*.parquet"))
    assert len(shared) == 1 and shared[0].endswith("-compact.parquet")
    cc = ScoreCache(machine("c", uri), "s", "fp", ["q"])
    assert cc.lookup(["1", "2", "3"], ["k1", "k2", "k3"])[0].all()


def test_embedding_shards_are_shared_as_parquet(tmp_path, machine):
    from laser_fast.sampling.store import EmbeddingStore

    texts = [f"text number {i} about {w}" for i, w in enumerate(["cats", "maths", "code", "rivers", "songs"] * 4)]
    uri = _uri(tmp_path)
    a = EmbeddingStore(machine("a", uri))
    emb_a, info_a = a.get(texts, model=None)
    assert info_a["computed"] == len(texts)
    shards = list((tmp_path / "shared" / "embeddings").rglob("shard-*.parquet"))
    assert len(shards) >= 1 and not list((tmp_path / "shared" / "embeddings").rglob("*.npy"))
    frame = pl.read_parquet(shards[0])
    assert frame.schema["embedding"] == pl.Array(pl.Float16, emb_a.shape[1]) and frame["sha1"].dtype == pl.Binary
    b = EmbeddingStore(machine("b", uri))
    emb_b, info_b = b.get(list(reversed(texts)) + ["a new text"], model=None)
    assert info_b["computed"] == 1  # only the text no machine had embedded
    assert np.array_equal(np.asarray(emb_b[:-1]), np.asarray(emb_a)[::-1])


def test_a_damaged_parquet_shard_is_embedded_again(tmp_path, machine, caplog):
    from laser_fast.sampling.store import EmbeddingStore

    texts = ["one text", "another text", "a third"]
    uri = _uri(tmp_path)
    EmbeddingStore(machine("a", uri)).get(texts, model=None)
    (shard,) = (tmp_path / "shared" / "embeddings").rglob("shard-*.parquet")
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    with caplog.at_level(logging.WARNING):
        emb, info = EmbeddingStore(machine("b", uri)).get(texts, model=None)
    assert info["computed"] == 3 and "checksum does not match" in caplog.text and not shard.exists()
    assert emb.shape[0] == 3


def test_fsspec_protocols_work_too():
    import fsspec

    wd = WorkDir("memory://laser-test/wd").ensure()
    wd.save_array(wd.cache / "m.npy", np.arange(4))
    assert fsspec.filesystem("memory").exists("/laser-test/wd/cache/m.npy.meta.json")
    (wd.cache / "m.npy").unlink()
    (wd.cache / "m.npy.meta.json").unlink()
    assert wd.load_array(wd.cache / "m.npy").tolist() == [0, 1, 2, 3]


def test_an_unknown_scheme_is_a_clear_error():
    with pytest.raises(LaserError, match=r"nosuchproto://x.*no filesystem serves it"):
        RemoteStore("nosuchproto://x/y").listdir("")


def test_judge_answers_are_shared(tmp_path, machine, monkeypatch):
    from laser_fast.scorers import judge_client
    from laser_fast.scorers.judge_client import JudgeClient

    monkeypatch.setattr(judge_client, "SHARE_EVERY", 2)
    uri = _uri(tmp_path)
    folder = machine("a", uri).scores / "judge-x" / "work"
    c = JudgeClient("http://127.0.0.1:9/v1", "m", cache_dir=folder)
    shared = tmp_path / "shared" / "scores" / "judge-x" / "work"
    with c._lock:
        c._load_cache()
        for i in range(3):
            c._store(f"k{i}", f"answer {i}")
    assert len(list(shared.glob("responses-*.jsonl"))) == 1  # the full shard, uploaded once; the third answer not yet
    c.close()
    shards = sorted(shared.glob("responses-*.jsonl"))
    assert len(shards) == 2 and sum(len(p.read_text().splitlines()) for p in shards) == 3
    d = JudgeClient("http://127.0.0.1:9/v1", "m", cache_dir=machine("b", uri).scores / "judge-x" / "work")
    with d._lock:
        assert d._load_cache() == {f"k{i}": f"answer {i}" for i in range(3)}


def test_cli_select_shares_every_cache(tmp_path, monkeypatch):
    """Two runs of the bundled example on two 'machines' (local copies): the second embeds and
    classifies nothing and writes the same selection."""
    from laser_fast.cli import main

    uri = _uri(tmp_path)
    pool = [str(ROOT / "examples" / "pool" / n) for n in ("chat_messages.jsonl", "alpaca.jsonl")]
    manifests = []
    for name in ("a", "b"):
        monkeypatch.setenv("LASER_FAST_SCRATCH", str(tmp_path / f"scratch-{name}"))
        out = tmp_path / f"out-{name}"
        assert main(["select", *pool, "--budget", "40", "--profile", "none", "--strategy", "longest", "--classifier", "minilm",
                     "--workdir", uri, "--output-dir", str(out), "--no-report", "-q"]) == 0
        manifests.append(json.loads((out / "manifest.json").read_text()))
    assert (tmp_path / "out-a" / "selected.jsonl").read_bytes() == (tmp_path / "out-b" / "selected.jsonl").read_bytes()
    assert manifests[0]["embedding"]["computed"] > 0 and manifests[1]["embedding"]["computed"] == 0


# --------------------------------------------------------------------------- inputs by URI


def test_inputs_are_read_by_uri_with_the_same_records_and_errors(tmp_path):
    import fsspec

    from laser_fast.errors import InputError
    from laser_fast.io.ingest import read_records

    pool = ROOT / "examples" / "pool"
    for name in ("sharegpt.jsonl.gz", "alpaca.jsonl", "chat_messages.jsonl"):
        local, _ = read_records(str(pool / name))
        remote, _ = read_records((pool / name).as_uri())
        assert remote.drop("source").equals(local.drop("source")), name
        assert remote["source"][0] == f"{(pool / name).as_uri()}:1"
    pq = tmp_path / "a.parquet"
    pl.read_ndjson(pool / "alpaca.jsonl").write_parquet(pq)
    assert read_records(pq.as_uri())[0].height == 130
    # an fsspec protocol, and a bad line named by URI and line
    lines = (pool / "alpaca.jsonl").read_bytes().split(b"\n")
    lines[6] = b"{not json"
    fsspec.filesystem("memory").pipe("/inputs/bad.jsonl", b"\n".join(lines))
    with pytest.raises(InputError, match=r"memory://inputs/bad.jsonl:7.*invalid JSON on line 7"):
        read_records("memory://inputs/bad.jsonl")
    with pytest.raises(InputError, match="file not found"):
        read_records((tmp_path / "missing.jsonl").as_uri())
    with pytest.raises(InputError, match="is a directory"):
        read_records(tmp_path.as_uri())


def test_cli_select_reads_inputs_by_uri(tmp_path):
    from laser_fast.cli import main

    pool = [(ROOT / "examples" / "pool" / n) for n in ("alpaca.jsonl", "sharegpt.jsonl.gz")]
    outs = []
    for tag, inputs in (("path", [str(p) for p in pool]), ("uri", [p.as_uri() for p in pool])):
        out = tmp_path / tag
        assert main(["select", *inputs, "--budget", "30", "--profile", "none", "--strategy", "longest", "--classifier", "minilm",
                     "--workdir", str(tmp_path / "wd"), "--output-dir", str(out), "--no-report", "-q"]) == 0
        outs.append(out)
    sel = [pl.read_ndjson(o / "selected.jsonl").drop("input_location") for o in outs]
    assert sel[0].equals(sel[1])
    man = json.loads((outs[1] / "manifest.json").read_text())
    assert man["inputs"][0]["path"] == pool[0].as_uri() and man["inputs"][0]["bytes"] == pool[0].stat().st_size


def test_a_damaged_local_copy_is_fetched_again_and_the_shared_one_kept(tmp_path, machine):
    uri = _uri(tmp_path)
    a = machine("a", uri)
    a.save_array(a.cache / "w.npy", np.arange(100))
    local = a.cache / "w.npy"
    local.write_bytes(local.read_bytes()[:-16])  # e.g. a copy cut short
    assert a.load_array(local).tolist() == list(range(100))
    assert (tmp_path / "shared" / "cache" / "w.npy.meta.json").exists()


def test_an_input_by_uri_is_downloaded_once_and_hashed_as_it_is_parsed(tmp_path, monkeypatch):
    import gzip
    import hashlib

    import fsspec

    from laser_fast.config import SelectOptions
    from laser_fast.io import sources
    from laser_fast.io.ingest import load_pool

    read = []
    orig = sources._RawStream.readinto
    monkeypatch.setattr(sources._RawStream, "readinto", lambda self, b: read.append(orig(self, b)) or read[-1])
    plain = (ROOT / "examples" / "pool" / "alpaca.jsonl").read_bytes()
    for name, data in (("a.jsonl", plain), ("a.jsonl.gz", gzip.compress(plain, mtime=0))):
        fsspec.filesystem("memory").pipe(f"/in/{name}", data)
        read.clear()
        recs, _, inputs = load_pool(f"memory://in/{name}", SelectOptions())
        assert recs.height == 130 and inputs[0]["sha256"] == hashlib.sha256(data).hexdigest()
        assert inputs[0]["bytes"] == len(data)
        assert sum(read) == len(data), name  # every byte once: parsed and hashed in one pass (the sniff reads 4 bytes unbuffered, elsewhere)


def test_a_uri_work_directory_asks_the_storage_only_for_shared_entries(tmp_path, machine, monkeypatch):
    from laser_fast.sampling.store import EmbeddingStore

    texts = ["one text", "another text", "a third"]
    uri = _uri(tmp_path)
    EmbeddingStore(machine("a", uri)).get(texts, model=None)
    asked = []
    orig = RemoteStore.size
    monkeypatch.setattr(RemoteStore, "size", lambda self, rel: asked.append(rel) or orig(self, rel))
    emb, info = EmbeddingStore(machine("b", uri)).get(texts[::-1], model=None)
    assert info["computed"] == 0 and emb.shape[0] == 3
    # the request matrix and the shards' .npy pairs are kept on each machine only: never looked up there
    assert asked and not [r for r in asked if ".npy" in r], asked
