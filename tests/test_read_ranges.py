"""Issue 15: one large JSONL file read by several workers, each a byte range: the records, line
numbers, skipped lines, errors and manifest entry equal one reader's of the whole file."""
from __future__ import annotations

import json

import polars as pl
import pytest

from laser_fast.errors import InputError
from laser_fast.io.ingest import read_source
from laser_fast.io.ranges import plan_ranges, read_in_ranges


class _Here:
    """An executor that runs every call in this process, in order (the engine's contract)."""

    name = "here"

    def __init__(self):
        self.rounds = []

    def call_each(self, label, fn, calls, resources):
        import importlib

        self.rounds.append((label, len(calls)))
        mod, _, attr = fn.partition(":")
        f = getattr(importlib.import_module(mod), attr)
        return [f(**c) for c in calls]


def _call(path, **kw):
    return {"path": str(path), "name": None, "schema": None, "split": None, "index": 0, "skip_invalid": False,
            "max_record_bytes": 1 << 20, "show_progress": False, **kw}


def _write(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _rec(i: int, **extra) -> bytes:
    return json.dumps({"instruction": f"Question number {i}: " + "why " * (i % 17), "output": f"Answer {i}.", **extra}).encode() + b"\n"


def _same(a, b):
    fa, sa, xa = a
    fb, sb, xb = b
    assert fa.drop("_source_index").equals(fb.drop("_source_index")) and fa["_source_index"].to_list() == fb["_source_index"].to_list()
    assert sa == sb
    assert {k: v for k, v in xa.items() if k != "ranges"} == xb


def test_ranges_give_the_records_of_one_reader(tmp_path, monkeypatch):
    lines = [b"\xef\xbb\xbf" + _rec(0)]
    for i in range(1, 400):
        lines.append(_rec(i).replace(b"\n", b"\r\n") if i % 7 == 0 else _rec(i))
        if i % 50 == 0:
            lines.append(b"\n   \n")  # blank lines are not records but count as lines
    lines[123] = b"{not json\n"
    lines[200] = json.dumps({"instruction": "big", "output": "x" * 5000}).encode() + b"\n"  # over the limit below
    f = tmp_path / "pool.jsonl"
    _write(f, lines)
    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", "1500")
    ranges, schema = plan_ranges(str(f), None)
    assert len(ranges) > 10 and schema == "alpaca"
    for skip in (True, False):
        call = _call(f, skip_invalid=skip, max_record_bytes=4000)
        if not skip:
            with pytest.raises(InputError) as local:
                read_source(**call)
            with pytest.raises(InputError) as ranged:
                read_in_ranges(_Here(), [call])
            assert str(ranged.value) == str(local.value) and "invalid JSON" in str(local.value)
            continue
        ex = _Here()
        got = read_in_ranges(ex, [call])
        assert ex.rounds == [("read:count", len(ranges)), ("read", len(ranges))]
        want = read_source(**call)
        _same(got[0], want)
        file_lines = f.read_bytes().split(b"\n")
        bad = [k + 1 for k, ln in enumerate(file_lines) if ln.startswith(b"{not json") or b'"big"' in ln]
        assert [s["line"] for s in want[1]] == bad and len(bad) == 2


def test_an_explicit_id_repeated_across_ranges_is_the_later_lines_problem(tmp_path, monkeypatch):
    lines = [_rec(i, data_id=f"id{i}") for i in range(200)]
    lines[180] = _rec(180, data_id="id3")
    f = tmp_path / "ids.jsonl"
    _write(f, lines)
    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", "2000")
    with pytest.raises(InputError) as local:
        read_source(**_call(f))
    with pytest.raises(InputError) as ranged:
        read_in_ranges(_Here(), [_call(f)])
    assert str(ranged.value) == str(local.value) and "ids.jsonl:181" in str(local.value) and "first seen at" in str(local.value)
    _same(read_in_ranges(_Here(), [_call(f, skip_invalid=True)])[0], read_source(**_call(f, skip_invalid=True)))


def test_small_gzipped_and_array_files_are_read_whole(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", "500")
    plain = tmp_path / "a.jsonl"
    _write(plain, [_rec(i) for i in range(20)])
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(_rec(i) for i in range(50))))
    arr = tmp_path / "c.json"
    arr.write_text(json.dumps([json.loads(_rec(i)) for i in range(50)]))
    assert plan_ranges(str(gz), None) is None and plan_ranges(str(arr), None) is None
    assert plan_ranges(str(plain), None) is not None  # 20 records, over 500 bytes
    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", str(10 << 20))
    assert read_in_ranges(_Here(), [_call(plain), _call(gz, index=1)]) is None  # nothing to cut


def test_a_pool_of_ranged_and_whole_inputs_selects_as_the_local_reader(tmp_path, monkeypatch):
    from laser_fast.config import SelectOptions
    from laser_fast.io.ingest import load_pool
    from laser_fast.runtime import engine

    big = tmp_path / "big.jsonl"
    _write(big, [_rec(i) for i in range(300)] + [_rec(5)])  # a repeat: hashed ids numbered across ranges
    small = tmp_path / "small.jsonl"
    _write(small, [_rec(i) for i in range(3)])
    opts = SelectOptions(budget=5).validate()
    local, _, _ = load_pool([str(big), str(small)], opts)
    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", "3000")
    token = engine._CURRENT.set(_Here())
    try:
        ranged, _, facts = load_pool([str(big), str(small)], opts)
    finally:
        engine._CURRENT.reset(token)
    assert facts[0]["ranges"] > 3 and "ranges" not in facts[1]
    assert ranged.equals(local)
    assert ranged.filter(pl.col("data_id").str.ends_with("-2")).height == local.filter(pl.col("data_id").str.ends_with("-2")).height > 0
