"""Memory of a run: the record table in a mapped file, heap copies of selected rows, sliced
Parquet writing, block-wise cluster means and the greedy walk in segments. Each is checked
against the plain in-memory computation it replaces."""
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.io.output import write_parquet
from laser_fast.runtime import memory
from laser_fast.runtime.kernels import label_means_into, label_sums
from laser_fast.sampling import greedy

posix_only = pytest.mark.skipif(not memory._can_map(), reason="mapping and unlinking need POSIX madvise")


def _table(n: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    words = ["a", "short", "x" * 11, "y" * 12, "z" * 13, "a longer text that is not inlined in a view", "ünïcödé ✓"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 6))) for _ in range(n)]
    return pl.DataFrame({
        "data_id": [f"id{i:06d}" for i in range(n)],
        "messages": [[{"role": "user", "content": t}, {"role": "assistant", "content": t[::-1]}] for t in texts],
        "user_turns": [[t, t + "?"] if i % 3 == 0 else [t] for i, t in enumerate(texts)],
        "extra": [None if i % 5 == 0 else "{}" for i in range(n)],
        "n_turns": pl.Series(rng.integers(1, 4, n), dtype=pl.Int32),
        "score": rng.normal(size=n),
    })


@posix_only
def test_spilled_frame_equals_the_original_and_leaves_no_file(tmp_path):
    df = _table()
    mapped, handle = memory.spill_frame(df, tmp_path / "tmp", min_bytes=0)
    assert handle is not None and handle.nbytes > 0
    assert mapped.schema == df.schema and mapped.equals(df)
    assert os.listdir(tmp_path / "tmp") == []  # unlinked once mapped
    handle.release_pages()  # dropping pages does not lose data: they are read back
    assert mapped.equals(df)
    assert mapped[[5, 1, 2999]].equals(df[[5, 1, 2999]])


def test_small_frames_stay_in_memory(tmp_path):
    df = _table(50)
    same, handle = memory.spill_frame(df, tmp_path, min_bytes=1 << 40)
    assert handle is None and same is df


@posix_only
@pytest.mark.parametrize("chunk_rows", [7, 100, 5000])
def test_gather_owned_equals_a_plain_gather(tmp_path, chunk_rows):
    df = _table()
    mapped, _ = memory.spill_frame(df, tmp_path, min_bytes=0)
    rows = np.random.default_rng(1).choice(df.height, 700, replace=False)  # not sorted
    calls = []
    got = memory.gather_owned(mapped, rows, chunk_rows=chunk_rows, release=lambda: calls.append(1))
    assert got.schema == df.schema and got.equals(df[rows.tolist()])
    assert len(calls) == -(-rows.size // chunk_rows)
    assert memory.gather_owned(mapped, np.sort(rows), chunk_rows=chunk_rows).equals(df[np.sort(rows).tolist()])
    assert memory.gather_owned(mapped, np.zeros(0, np.int64)).height == 0


def test_sliced_parquet_reads_back_like_the_frame(tmp_path):
    df = _table(1000).with_columns(pl.Series("maybe", [None if i % 2 else i for i in range(1000)], dtype=pl.Int64))
    calls = []
    write_parquet(tmp_path / "a.parquet", df, slice_rows=128, release=lambda: calls.append(1))
    write_parquet(tmp_path / "b.parquet", df)
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert a.schema == b.schema == df.schema
    assert a.equals(df) and b.equals(df)
    assert len(calls) == 8
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_block_means_equal_the_one_pass_sums(dtype):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5000, 24)).astype(dtype)
    lab = rng.integers(0, 700, 5000)
    lab[lab == 11] = 12  # an empty cluster
    sums, counts = label_sums(x, lab, 700)
    want = np.full((700, 24), 7.0, dtype=np.float32)
    full = counts > 0
    want[full] = sums[full] / counts[full, None]
    for block_rows in (1, 64, 100_000):
        out = np.full((700, 24), 7.0, dtype=np.float32)
        got = label_means_into(x, lab, out, block_rows=block_rows)
        assert np.array_equal(got, counts)
        assert np.array_equal(out, want)  # bit for bit: the same sums in the same order
        assert (out[11] == 7.0).all()  # an empty cluster keeps its row
    with pytest.raises(ValueError, match="labels must lie"):
        label_means_into(x, lab, np.zeros((10, 24), np.float32))


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n // 30, d)).astype(np.float32)
    return (c[rng.integers(0, c.shape[0], n)] + 0.35 * rng.normal(size=(n, d))).astype(np.float16)


@pytest.mark.parametrize("budget", [None, 700, 4000])
@pytest.mark.parametrize("md", [0.05, 0.25])
def test_greedy_in_segments_is_the_single_walk(tmp_path, monkeypatch, budget, md):
    from laser_fast.sampling.stratum import StoreRows

    x = _clustered(12000, 32, 5)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    order = np.random.default_rng(2).permutation(12000)[:10000]
    want = greedy.greedy_diverse(x.astype(np.float32), min_distance=md, order=order, budget=budget)
    monkeypatch.setattr(greedy, "SEGMENT_BYTES", 1500 * 32 * 4)  # segments of 4096 rows (the floor)
    st: dict = {}
    got = greedy.greedy_diverse(StoreRows(mm, np.arange(12000)), min_distance=md, order=order, budget=budget, stats=st)
    assert np.array_equal(got, want)
    assert st["segment_rows"] == 4096 and 1 <= st["segments"] <= 3
    assert np.array_equal(greedy.greedy_diverse(mm, min_distance=md, order=order, budget=budget), want)
    assert np.array_equal(greedy.greedy_diverse(x, min_distance=md, budget=budget), greedy.greedy_diverse(x.astype(np.float32), min_distance=md, budget=budget))


def test_greedy_segment_errors_name_the_input_row(monkeypatch):
    x = _clustered(9000, 16, 1)
    x[7777] = np.nan
    monkeypatch.setattr(greedy, "SEGMENT_BYTES", 1000 * 16 * 4)
    with pytest.raises(ValueError, match="row 7777 contains NaN"):
        greedy.greedy_diverse(x, min_distance=0.1)
    x[7777] = 0
    with pytest.raises(ValueError, match="row 7777 is all zeros"):
        greedy.greedy_diverse(x, min_distance=0.1)


def test_heap_arena_limit_is_set_once_and_respects_the_user(monkeypatch):
    monkeypatch.setattr(memory, "_ARENAS_SET", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_heap_arenas() is False  # the user's own setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    first = memory.limit_heap_arenas()
    assert memory.limit_heap_arenas() is False  # once per process
    assert isinstance(first, bool)
    memory.release_free_heap()  # a no-op outside glibc, never an error


@posix_only
def test_selection_with_the_pool_in_a_mapped_file_is_the_same(example_files, workdir, tmp_path, monkeypatch):
    from laser_fast.config import SelectOptions
    from laser_fast.io.output import write_outputs
    from laser_fast.pipeline import run_selection

    opts = {"budget": 120, "strategy": "longest", "mode": "kmeans", "show_progress": False}
    plain = run_selection(example_files, SelectOptions(**opts), workdir=workdir)
    assert plain.release is None  # the example pool is far below SPILL_MIN_BYTES
    monkeypatch.setattr(memory, "SPILL_MIN_BYTES", 0)
    monkeypatch.setattr("laser_fast.io.output.DECISION_SLICE_ROWS", 100)
    mapped = run_selection(example_files, SelectOptions(**opts), workdir=workdir)
    assert mapped.release is not None
    assert np.array_equal(plain.selected_rows, mapped.selected_rows)
    assert mapped.pool.equals(plain.pool)
    for run, name in ((plain, "plain"), (mapped, "mapped")):
        for fmt in ("parquet", "jsonl"):
            write_outputs(run, tmp_path / name / fmt, fmt=fmt, report=False)
    for fmt, f in (("parquet", "selected.parquet"), ("parquet", "decisions.parquet"), ("jsonl", "selected.jsonl")):
        a, b = tmp_path / "plain" / fmt / f, tmp_path / "mapped" / fmt / f
        if f.endswith(".jsonl"):
            assert a.read_text() == b.read_text()
        else:
            assert pl.read_parquet(a).equals(pl.read_parquet(b))
    assert not list(Path(workdir).glob("tmp/records-*"))  # the mapped file was unlinked


@posix_only
def test_a_failed_spill_keeps_the_table_in_memory_with_a_warning(tmp_path, caplog):
    df = _table(200)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level("WARNING", logger="laser_fast.runtime.memory"):
        same, handle = memory.spill_frame(df, blocker / "tmp", min_bytes=0)
    assert handle is None and same is df
    assert "stays in memory" in caplog.text and "not-a-dir" in caplog.text


def test_heap_helpers_are_no_ops_off_linux(monkeypatch):
    monkeypatch.setattr("sys.platform", "win32")
    monkeypatch.setattr(memory, "_MALLOC_TRIM", None)
    monkeypatch.setattr(memory, "_ARENAS_SET", False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory._libc_function("malloc_trim") is None
    memory.release_free_heap()  # nothing to call, nothing raised
    assert memory._MALLOC_TRIM is False
    assert memory.limit_heap_arenas() is False
