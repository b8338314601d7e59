"""Issue 18: bounded memory on hostile records. A record over ``--max-record-bytes`` (default
1 MiB) is an invalid record (an error naming file:line, or skipped and listed with
``--skip-invalid``); a JSONL line is measured before it is parsed and read past in pieces, so a
200 MB line does not raise peak memory by more than a small constant."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from laser_fast.errors import InputError
from laser_fast.io.ingest import read_records, records_from_frame

ROOT = Path(__file__).resolve().parents[1]


def _line(text: str) -> bytes:
    return json.dumps({"instruction": "Summarise this.", "output": text}).encode() + b"\n"


@pytest.mark.parametrize("gz", [False, True])
def test_a_record_over_the_limit_is_named_skipped_or_allowed(tmp_path, gz):
    data = _line("short one") + _line("x" * 3_000_000) + _line("short two")
    f = tmp_path / ("p.jsonl.gz" if gz else "p.jsonl")
    f.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(InputError, match=r"p\.jsonl(\.gz)?:2.*line 2 is 3,000,0\d\d bytes, more than the --max-record-bytes limit of 1,048,576"):
        read_records(str(f))
    recs, skipped = read_records(str(f), skip_invalid=True)
    assert recs["response"].to_list() == ["short one", "short two"]
    assert [s["line"] for s in skipped] == [2] and "--max-record-bytes" in skipped[0]["reason"]
    assert read_records(str(f), max_record_bytes=0)[0].height == 3
    assert read_records(str(f), max_record_bytes=4_000_000)[0].height == 3
    # the limit is on the line's content: a line of exactly the limit is kept
    n = len(_line("y")) - 1
    exact = tmp_path / "exact.jsonl"
    exact.write_bytes(_line("y") + _line("z"))
    assert read_records(str(exact), max_record_bytes=n)[0].height == 2
    with pytest.raises(InputError, match="exact.jsonl:1"):
        read_records(str(exact), max_record_bytes=n - 1)


def test_parquet_and_frames_count_the_turns_bytes(tmp_path):
    df = pl.DataFrame({"instruction": ["a", "b"], "output": ["fine", "é" * 600_000]})  # 1.2 MB of UTF-8 in 600k characters
    with pytest.raises(InputError, match=r"row 1.*string values, UTF-8\) is 1,200,001 bytes.*--max-record-bytes"):
        records_from_frame(df)
    recs, skipped = records_from_frame(df, skip_invalid=True)
    assert recs.height == 1 and skipped[0]["line"] == 1
    assert records_from_frame(df, max_record_bytes=0)[0].height == 2
    pq = tmp_path / "p.parquet"
    df.write_parquet(pq)
    with pytest.raises(InputError, match=r"p\.parquet:row 1"):
        read_records(str(pq))


def test_the_cli_flag_and_the_config_key(tmp_path, capsys):
    from laser_fast.cli import main

    f = tmp_path / "p.jsonl"
    f.write_bytes(b"".join(_line(f"record {i} " + "w" * (3000 if i == 4 else 10)) for i in range(30)))
    common = ["--budget", "5", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    assert main(["select", str(f), *common, "--max-record-bytes", "1000", "--output-dir", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laser-fast: error:") and "p.jsonl:5" in err and "--max-record-bytes" in err
    assert main(["select", str(f), *common, "--max-record-bytes", "1000", "--skip-invalid", "--output-dir", str(tmp_path / "o2")]) == 0
    man = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert man["counts"]["total_pool"] == 29
    assert main(["select", str(f), *common, "--max-record-bytes", "-1", "--output-dir", str(tmp_path / "o3")]) == 2
    assert "max_record_bytes" in capsys.readouterr().err


_PEAK = """
import resource, sys
from laser_fast.io.ingest import read_records
recs, skipped = read_records(sys.argv[1], skip_invalid=True, show_progress=False)
assert recs.height == 2 and len(skipped) == 1, (recs.height, skipped)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_200_mb_line_does_not_raise_peak_memory(tmp_path):
    def peak(size: int) -> int:
        f = tmp_path / f"p{size}.jsonl"
        with open(f, "wb") as fh:
            fh.write(_line("short one"))
            fh.write(b'{"instruction": "Summarise this.", "output": "')
            chunk = b"x" * (1 << 20)
            fh.writelines(chunk for _ in range(size >> 20))
            fh.write(b'"}\n')
            fh.write(_line("short two"))
        out = subprocess.run([sys.executable, "-c", _PEAK, str(f)], capture_output=True, text=True, cwd=ROOT, check=True)
        f.unlink()
        return int(out.stdout.strip())  # KiB

    small, huge = peak(2 << 20), peak(200 << 20)
    assert huge - small < 32 * 1024, (small, huge)  # KiB: within 32 MB of a 2 MB line's run


_PEAK_PARQUET = """
import resource, sys
import pyarrow.parquet as pq
from laser_fast.io.ingest import read_records
if sys.argv[2] == "pyarrow":  # pyarrow's own decoding of the file, nothing else
    for _ in pq.ParquetFile(sys.argv[1], memory_map=True).iter_batches(batch_size=65536):
        pass
else:
    recs, skipped = read_records(sys.argv[1], skip_invalid=True, show_progress=False)
    assert recs["response"].to_list() == ["short one", "short two"] and skipped[0]["line"] == 1, skipped
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_a_200_mb_parquet_value_costs_only_pyarrows_decoding(tmp_path):
    """Parquet cannot skip a value unread: pyarrow decodes the column chunk that holds it. The
    reader measures rows in Arrow and never turns the oversized value into a Python string, so
    its peak stays within a small constant of pyarrow's decoding alone (it used to add ~1.5x
    the record)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"instruction": ["Summarise this."] * 3,
                             "output": ["short one", "x" * (200 << 20), "short two"]}), f)

    def peak(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK_PARQUET, str(f), mode], capture_output=True, text=True,
                             cwd=ROOT, check=True)
        return int(out.stdout.strip())  # KiB

    ours, decode = peak("ours"), peak("pyarrow")
    assert ours - decode < 48 * 1024, (ours, decode)


def test_nested_turns_are_measured_in_arrow(tmp_path):
    import pyarrow as pa

    from laser_fast.io.sources import _row_text_bytes

    msgs = [[{"role": "user", "content": "hé"}, {"role": "assistant", "content": "abc"}], None,
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x" * 50}]]
    arr = pa.array(msgs)
    assert _row_text_bytes(arr, 3).tolist() == [4 + 3 + 9 + 3, 0, 4 + 1 + 9 + 50]
    assert _row_text_bytes(arr.slice(1), 2).tolist() == [0, 4 + 1 + 9 + 50]  # offsets of a slice
    df = pl.DataFrame({"messages": msgs[:1] + msgs[2:]})
    with pytest.raises(InputError, match=r"row 1.*is 64 bytes"):
        records_from_frame(df, max_record_bytes=60)
    assert records_from_frame(df, max_record_bytes=64)[0].height == 2


def test_long_texts_are_counted_in_pieces_with_the_same_count():
    from laser_fast.scorers.tokens import PIECE_CHARS, TokenCounter, _pieces

    words = "The quick brown fox jumps over the lazy dog; naïve café, 3.14159!\n".split(" ")
    text = " ".join(words[i % len(words)] for i in range(60_000))  # ~330k characters
    pieces = _pieces(text)
    assert "".join(pieces) == text and len(pieces) > 4 and max(map(len, pieces)) <= PIECE_CHARS
    assert all(p[0].isspace() for p in pieces[1:])  # cut before whitespace
    assert _pieces("z" * (PIECE_CHARS * 2 + 5)) == ["z" * PIECE_CHARS] * 2 + ["z" * 5]  # no whitespace: hard cuts
    scorer = TokenCounter()
    tok = scorer._load()
    backend = tok.backend_tokenizer.__class__.from_str(tok.backend_tokenizer.to_str())
    backend.no_truncation()
    whole = len(backend.encode(text, add_special_tokens=False).ids)  # the whole text at once
    assert whole > 60_000
    assert scorer.count([text, "short text", text[:1000]]).tolist() == [
        whole, len(tok.encode("short text", add_special_tokens=False)), len(tok.encode(text[:1000], add_special_tokens=False))]
