"""Issue 18: pass-through fields whose JSON types differ across sources are written the same way
in JSONL and Parquet (as text), so the JSONL loads in pyarrow, polars and ``datasets`` alike."""
from __future__ import annotations

import json

import polars as pl
import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from laser_fast.cli import main
from laser_fast.io.field_types import conflicting_fields


def _pool(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}.", "id": i, "meta": {"x": 1},
                                     "score": 0.5 + i, "tags": ["t"]}) + "\n" for i in range(6)))
    b.write_text("".join(json.dumps({"instruction": f"Other {i}?", "output": f"Reply {i}.", "id": f"s{i}", "meta": {"x": "y"},
                                     "score": i, "tags": []}) + "\n" for i in range(6)))
    return [str(a), str(b)]


def test_conflicting_fields_are_text_in_both_formats_and_every_reader_loads_them(tmp_path, caplog):
    import logging

    common = ["--budget", "12", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    with caplog.at_level(logging.WARNING, logger="laser_fast"):
        assert main(["select", *_pool(tmp_path), *common, "--output-dir", str(tmp_path / "j")]) == 0
    assert "conflicting types" in caplog.text and "id (number, string)" in caplog.text
    assert main(["select", *_pool(tmp_path), *common, "--format", "parquet", "--output-dir", str(tmp_path / "p")]) == 0
    jl = tmp_path / "j" / "selected.jsonl"
    arrow = pj.read_json(jl)  # stopped with "Column(/id) changed from string to number" before
    polars_j = pl.read_ndjson(jl)
    par = pq.read_table(tmp_path / "p" / "selected.parquet")
    assert pa.types.is_string(arrow.schema.field("id").type) and pa.types.is_large_string(par.schema.field("id").type)
    ids = sorted(arrow.column("id").to_pylist())
    assert ids == sorted(par.column("id").to_pylist()) == sorted([str(i) for i in range(6)] + [f"s{i}" for i in range(6)])
    assert sorted(polars_j["meta"].to_list()) == sorted(['{"x": 1}'] * 6 + ['{"x": "y"}'] * 6)  # nested conflict: JSON text
    # numbers (ints and floats) and lists with nothing in them are not conflicts: kept as they are
    assert polars_j["score"].dtype == pl.Float64 and polars_j["tags"].dtype == pl.List(pl.String)
    man = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert man["outputs"]["retyped_fields"] == {"id": ["number", "string"], "meta": ["object"]}
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["outputs"]["retyped_fields"] == man["outputs"]["retyped_fields"]


def test_consistent_fields_are_untouched():
    assert conflicting_fields([{"a": 1, "b": None, "c": [1, 2]}, {"a": 2.5, "b": "x", "c": []}, {"d": True}]) == {}
    assert conflicting_fields([{"a": [1]}, {"a": ["x"]}]) == {"a": ["list"]}
    assert conflicting_fields([{"a": True}, {"a": 0}]) == {"a": ["boolean", "number"]}


def test_integers_beyond_int64_are_text_so_the_parquet_output_loads(tmp_path):
    """polars would write such a field as Int128, which pyarrow and datasets cannot read."""
    assert conflicting_fields([{"a": 2**63 - 1, "b": [-(2**63)]}]) == {}
    assert conflicting_fields([{"a": 2**63}, {"a": 1}]) == {"a": ["integer beyond int64", "number"]}
    f = tmp_path / "big.jsonl"
    f.write_text("".join(json.dumps({"instruction": f"Q{i}?", "output": f"A{i}.", "big": 2**70 + i, "n": i}) + "\n" for i in range(4)))
    out = tmp_path / "p"
    assert main(["select", str(f), "--budget", "4", "--strategy", "random", "--profile", "none", "-q", "--format", "parquet", "--keep-non-english",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    par = pq.read_table(out / "selected.parquet")
    assert sorted(par.column("big").to_pylist()) == [str(2**70 + i) for i in range(4)] and par.schema.field("n").type == pa.int64()


def test_outputs_load_with_datasets_and_the_training_file(tmp_path):
    datasets = __import__("pytest").importorskip("datasets")
    common = ["--budget", "12", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    assert main(["select", *_pool(tmp_path), *common, "--training-file", "--output-dir", str(tmp_path / "j")]) == 0
    assert main(["select", *_pool(tmp_path), *common, "--format", "parquet", "--output-dir", str(tmp_path / "p")]) == 0
    j = datasets.load_dataset("json", data_files=str(tmp_path / "j" / "selected.jsonl"), split="train")
    p = datasets.load_dataset("parquet", data_files=str(tmp_path / "p" / "selected.parquet"), split="train")
    assert len(j) == len(p) == 12 and j[0]["messages"][0]["role"] == "user" and sorted(j["data_id"]) == sorted(p["data_id"])
    t = datasets.load_dataset("json", data_files=str(tmp_path / "j" / "train.jsonl"), split="train")
    assert t.column_names == ["messages", "data_id"] and t["data_id"] == j["data_id"] and t["messages"] == j["messages"]
    man = json.loads((tmp_path / "j" / "manifest.json").read_text())
    assert man["outputs"]["train"]["rows"] == 12


def test_push_to_hub_uploads_the_complete_outputs_and_refuses_offline(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    common = ["--budget", "12", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["select", *_pool(tmp_path), *common, "--push-to-hub", "me/picked", "--output-dir", str(tmp_path / "o1")]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and not (tmp_path / "o1" / "manifest.json").exists() and not calls
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert main(["select", *_pool(tmp_path), *common, "--training-file", "--push-to-hub", "me/picked", "--output-dir", str(tmp_path / "o")]) == 0
    (_, repo, create), (_, _, up) = calls
    assert repo == "me/picked" and create["repo_type"] == "dataset" and create["private"] is True
    assert up["allow_patterns"] == ["selected.jsonl", "train.jsonl", "decisions.parquet", "manifest.json"]
    assert "huggingface.co/datasets/me/picked" in capsys.readouterr().out
