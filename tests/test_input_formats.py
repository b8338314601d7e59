"""Issue 18: the usual release formats besides JSONL and Parquet: one JSON array of records (the
Alpaca / DEITA format, also gzipped) and CSV / TSV with instruction/input/output columns; the same
records as the JSONL form, errors located by item or row."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from laser_fast.errors import InputError
from laser_fast.io.ingest import read_records

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT / "examples" / "pool" / "alpaca.jsonl"


def _rows():
    return [json.loads(line) for line in ALPACA.read_text().splitlines() if line.strip()]


def _same(a, b) -> bool:
    cols = ["data_id", "instruction", "response", "origin"]
    return a.select(cols).equals(b.select(cols))


def test_a_json_array_reads_like_its_jsonl(tmp_path):
    base, _ = read_records(str(ALPACA), origin="pool")
    arr = tmp_path / "alpaca_data.json"
    arr.write_text("\n  " + json.dumps(_rows(), indent=2))
    got, _ = read_records(str(arr), origin="pool")
    assert _same(got, base)
    gz = tmp_path / "alpaca_data.json.gz"
    gz.write_bytes(gzip.compress(("\ufeff" + json.dumps(_rows())).encode()))
    assert _same(read_records(str(gz), origin="pool")[0], base)
    rows = _rows()
    rows[3] = ["not", "an", "object"]
    rows[5] = {"instruction": 5, "output": "x"}
    arr.write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"alpaca_data\.json:item 3.*item 3 is JSON but not an object"):
        read_records(str(arr))
    recs, skipped = read_records(str(arr), skip_invalid=True)
    assert recs.height == len(rows) - 2 and [s["line"] for s in skipped] == [3, 5]
    arr.write_text('{"instruction": "a", "output": "b"}')  # one object, no array: read as JSONL, one record
    assert read_records(str(arr))[0].height == 1
    arr.write_text("[1, 2")
    with pytest.raises(InputError, match="invalid JSON array"):
        read_records(str(arr))


def test_csv_and_tsv(tmp_path):
    import csv

    base, _ = read_records(str(ALPACA), origin="pool")
    for name, delim in (("pool.csv", ","), ("pool.tsv", "\t")):
        f = tmp_path / name
        with open(f, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["instruction", "input", "output", "id"], delimiter=delim)
            w.writeheader()
            for i, r in enumerate(_rows()):
                w.writerow({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"], "id": i})
        got, _ = read_records(str(f), origin="pool")
        assert _same(got, base), name
        assert json.loads(got["extra"][7]) == {"id": "7"}  # CSV has no types: text, as written
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nwhat?,that\n")
    with pytest.raises(InputError, match=r"bad\.csv.*unrecognised table schema.*'question'"):
        read_records(str(bad))
