"""Issue 18: Hugging Face datasets in: ``laser_fast.select(<Dataset>)``, an ``IterableDataset``
(streamed), a ``DatasetDict`` with a split, a ``save_to_disk`` folder on the command line, and a
hub name offline (a clear error)."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

datasets = pytest.importorskip("datasets")

from laser_fast.errors import InputError
from laser_fast.io.ingest import read_records, records_from_dataset

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT / "examples" / "pool" / "alpaca.jsonl"
COLS = ["data_id", "instruction", "response"]


def _ds():
    rows = [json.loads(line) for line in ALPACA.read_text().splitlines() if line.strip()]
    return datasets.Dataset.from_list(rows)


def test_every_kind_of_dataset_reads_like_the_file():
    base, _ = read_records(str(ALPACA))
    ds = _ds()
    for given in (ds, ds.to_iterable_dataset(num_shards=2), datasets.DatasetDict({"train": ds})):
        recs, skipped, _ = records_from_dataset(given, name="alpaca")
        assert recs.select(COLS).equals(base.select(COLS)) and not skipped, type(given).__name__
        assert recs["source"][5] == "alpaca:row 5"
    # a selection / shuffle of a dataset is read as it is seen, not its underlying table
    sub, _, _ = records_from_dataset(ds.select([9, 3]), name="alpaca")
    assert sub["data_id"].to_list() == [base["data_id"][9], base["data_id"][3]]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(4))})
    with pytest.raises(InputError, match=r"holds the splits train, test.*--split"):
        records_from_dataset(dd, name="alpaca")
    assert records_from_dataset(dd, name="alpaca", split="test")[0].height == 4
    with pytest.raises(InputError, match="has no split 'dev'"):
        records_from_dataset(dd, name="alpaca", split="dev")


def test_python_select_takes_a_dataset(tmp_path):
    import laser_fast

    out = laser_fast.select(_ds(), budget=10, strategy="longest", profile="none", workdir=str(tmp_path / "w"))
    assert out.height == 10
    ref = laser_fast.select(str(ALPACA), budget=10, strategy="longest", profile="none", workdir=str(tmp_path / "w"))
    assert sorted(out["data_id"].to_list()) == sorted(ref["data_id"].to_list())


def test_cli_reads_a_save_to_disk_folder_with_a_split_and_refuses_hub_names_offline(tmp_path, capsys, monkeypatch):
    from laser_fast.cli import main

    folder = tmp_path / "alpaca_hf"
    datasets.DatasetDict({"train": _ds(), "test": _ds().select(range(20))}).save_to_disk(str(folder))
    common = ["--budget", "5", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    assert main(["select", str(folder), "--split", "test", *common, "--output-dir", str(tmp_path / "o")]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["inputs"][0]["kind"] == "Dataset" and man["inputs"][0]["rows"] == 20 and man["inputs"][0]["split"] == "test"
    assert pl.read_ndjson(tmp_path / "o" / "selected.jsonl")["origin"].unique().to_list() == ["alpaca_hf"]
    assert main(["select", str(folder), *common, "--output-dir", str(tmp_path / "o2")]) == 2
    assert "--split" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["select", "some-org/some-dataset", "--split", "train", *common, "--output-dir", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("laser-fast: error:") and "some-org/some-dataset" in err and "save_to_disk" in err


def test_a_missing_data_file_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    from laser_fast.io.hf_inputs import hf_source

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hf_source("data/missing.jsonl", None) is None  # read as a file: "file not found"
    with pytest.raises(InputError, match="file not found"):
        read_records("data/missing.jsonl")
    with pytest.raises(InputError, match="hub datasets need the network"):
        hf_source("org/name", None)
