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


def test_csv_text_is_kept_as_written(tmp_path):
    """No type is guessed from a CSV's values: leading zeros and trailing decimals stay; a file
    that is not UTF-8 is refused naming the file."""
    f = tmp_path / "nums.csv"
    f.write_bytes(b'\xef\xbb\xbfinstruction,output,id\r\n"Code?",007,0012\r\nPrice?,"1.50\nper unit",1\r\n')
    got, _ = read_records(str(f))
    assert got["response"].to_list() == ["007", "1.50\nper unit"]
    assert [json.loads(e) for e in got["extra"]] == [{"id": "0012"}, {"id": "1"}]
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("instruction,output\nCaf\u00e9?,Oui\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.csv: cannot read the CSV file.*UTF8.*save the file as UTF-8"):
        read_records(str(bad))


TOOL_CONV = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What is 6 times 7?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                           "function": {"name": "mul", "arguments": "{\"a\": 6, \"b\": 7}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "assistant", "content": "6 times 7 is 42."},
]


def test_tool_turns_pass_through_to_the_outputs(tmp_path):
    import polars as pl

    from laser_fast.cli import main

    f = tmp_path / "tools.jsonl"
    rows = [{"messages": TOOL_CONV}, {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]},
            {"messages": [*TOOL_CONV[:3], {"role": "function", "name": "mul", "content": "42"}, TOOL_CONV[4]]}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs, _ = read_records(str(f))
    assert recs["instruction"].to_list() == ["What is 6 times 7?", "Name a colour.", "What is 6 times 7?"]
    assert recs["response"].to_list() == ["6 times 7 is 42.", "Blue.", "6 times 7 is 42."]
    assert recs["data_id"][0] != recs["data_id"][2]  # the tool turns differ, so do the hashed ids
    common = ["--budget", "3", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    assert main(["select", str(f), *common, "--keep-non-english", "--output-dir", str(tmp_path / "j")]) == 0
    assert main(["select", str(f), *common, "--keep-non-english", "--format", "parquet", "--output-dir", str(tmp_path / "p")]) == 0
    out = {json.dumps(r["messages"]): r for r in map(json.loads, (tmp_path / "j" / "selected.jsonl").read_text().splitlines())}
    assert json.dumps(TOOL_CONV) in out and json.dumps(rows[1]["messages"]) in out  # as they came, tool calls and all
    par = pl.read_parquet(tmp_path / "p" / "selected.parquet")
    tool_row = next(m for m in par["messages"].to_list() if len(m) == 5 and m[3]["role"] == "tool")
    assert tool_row[2]["tool_calls"][0]["function"]["name"] == "mul" and tool_row[3]["tool_call_id"] == "c1"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": TOOL_CONV[:4]}) + "\n")  # ends with the tool's result: no answer
    with pytest.raises(InputError, match="no assistant answer"):
        read_records(str(bad))
