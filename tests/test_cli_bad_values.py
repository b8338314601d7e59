"""Issue 18, first slice: every bad value of an option or a config key is one ``laser-fast: error:``
line (exit 2) that names it, never a traceback or a silent empty selection."""
from __future__ import annotations

import pytest

from laser_fast.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
POOL = str(ROOT / "examples" / "pool" / "alpaca.jsonl")


def _run(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["select", POOL, "--budget", "5", "--strategy", "random", "--profile", "none", "-q",
               "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o"), *extra])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args,named", [
    (("--seed", "-1"), "seed"),
    (("--seed", str(2**32)), "seed"),
    (("--max-seq-length", "-1"), "max_seq_length"),
    (("--proportions", "Math=nan,Coding=1"), "--proportions.Math"),
    (("--proportions", "Math=inf"), "--proportions.Math"),
    (("--proportions", "Math=-1,Coding=1"), "--proportions.Math"),
])
def test_bad_option_values_are_one_line_errors(tmp_path, capsys, args, named):
    rc, err = _run(tmp_path, capsys, *args)
    assert rc == 2 and err.startswith("laser-fast: error:") and named in err and "Traceback" not in err
    assert not (tmp_path / "o" / "selected.jsonl").exists()


def _config(tmp_path, text: bytes) -> str:
    f = tmp_path / "c.yaml"
    f.write_bytes(text)
    return str(f)


@pytest.mark.parametrize("body,named", [
    (b"data:\n  - path: POOL\n    sample_size: abc\n", "data[0].sample_size"),
    (b"data:\n  - path: POOL\n    oversampling: lots\n", "data[0].oversampling"),
    (b"data:\n  - path: POOL\n    oversampling: -1\n", "data[0].oversampling"),
    (b"data:\n  - path: POOL\n    min_distance: .nan\n", "data[0].min_distance"),
    (b"sample_size: 5\nnote: \xff\xfe\n", "not UTF-8"),
])
def test_bad_config_values_are_one_line_errors(tmp_path, capsys, body, named):
    cfg = _config(tmp_path, body.replace(b"POOL", POOL.encode()))
    rc, err = _run(tmp_path, capsys, "--config", cfg)
    assert rc == 2 and err.startswith("laser-fast: error:") and named in err and "Traceback" not in err


def test_a_config_folder_is_named(tmp_path, capsys):
    rc, err = _run(tmp_path, capsys, "--config", str(tmp_path))
    assert rc == 2 and "is a folder" in err


def test_a_plain_file_named_gz_is_not_called_truncated(tmp_path, capsys):
    f = tmp_path / "plain.jsonl.gz"
    f.write_text('{"instruction": "a", "output": "b"}\n')
    rc = main(["select", str(f), "--budget", "1", "--strategy", "random", "--profile", "none", "-q",
               "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "not a gzip file" in err and "truncated" not in err and str(f) in err


def test_a_budget_over_the_pool_is_warned_about_on_the_console(tmp_path, capsys, caplog):
    import json
    import logging

    with caplog.at_level(logging.WARNING, logger="laser_fast"):
        rc, _ = _run(tmp_path, capsys, "--budget", "100000")
    assert rc == 0
    assert "--budget 100000 is more than the pool can give" in caplog.text and "only 130 records" in caplog.text
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["counts"]["total_selected"] == 130
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="laser_fast"):
        _run(tmp_path, capsys, "--budget", "20", "--output-dir", str(tmp_path / "o2"))
    assert "more than the pool" not in caplog.text


def test_profile_none_runs_the_scorers_named(tmp_path, capsys):
    """``--profile none --scorers NAME`` runs NAME (it was skipped with no word); without
    ``--scorers`` nothing is scored."""
    import json

    rc, err = _run(tmp_path, capsys, "--scorers", "onepass", "--strategy", "longest")
    assert rc == 0, err
    scoring = json.loads((tmp_path / "o" / "manifest.json").read_text())["scoring"]
    (s,) = scoring["scorers"]
    assert s["scorer"] == "onepass" and s["records"] == 130 and scoring["metric_sources"]["quality"] == "onepass:onepass_quality"
    rc, _ = _run(tmp_path, capsys, "--output-dir", str(tmp_path / "o2"))
    assert rc == 0 and json.loads((tmp_path / "o2" / "manifest.json").read_text())["scoring"] == {"profile": "none"}


def test_a_records_origin_cannot_read_files_outside_the_analysis_folder(tmp_path, caplog):
    import logging

    import numpy as np
    import polars as pl

    from laser_fast.io.score_files import import_reference_analysis

    root = tmp_path / "analysis"
    (root / "quality_scores").mkdir(parents=True)
    (root / "quality_scores" / "good.csv").write_text("0.5\n")
    (tmp_path / "secret.csv").write_text("0.9\n")  # outside the folder
    records = pl.DataFrame({"origin": ["good", "../../secret", "/etc/x", ".."]})
    with caplog.at_level(logging.WARNING):
        scores, _, report = import_reference_analysis(records, root, {}, None)
    assert [r["origin"] for r in report] == ["good"]
    assert scores["quality"][0] == 0.5 and np.isnan(scores["quality"][1:]).all()
    assert "3 dataset name(s) are not plain file names" in caplog.text and "'../../secret'" in caplog.text


def test_a_setfit_head_from_the_hub_is_unpickled_only_when_trusted(tmp_path, monkeypatch):
    import pickle

    import huggingface_hub

    from laser_fast.classifier.models import load_classifier
    from laser_fast.errors import ModelLoadError

    class Boom:  # what a hostile model_head.pkl does when it is unpickled
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    snap = tmp_path / "snapshot"
    snap.mkdir()
    (snap / "model_head.pkl").write_bytes(pickle.dumps(Boom()))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snap))
    with pytest.raises(ModelLoadError, match=r"pickle.*--trust-remote-code org/setfit-cls"):
        load_classifier("org/setfit-cls").load()
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ModelLoadError) as e:  # trusted: past the check (this stand-in has no body to load)
        load_classifier("org/setfit-cls", trust_remote_code=["org/setfit-cls"]).load()
    assert "--trust-remote-code" not in str(e.value)


# every numeric option of select, with the invalid values of each kind; the run never starts
_NUMERIC = {
    "--budget": ["0", "-5", "abc", "nan"],
    "--token-budget": ["-1", "1.5", "inf"],
    "--threshold-percentile": ["nan", "inf", "-1", "101", "abc"],
    "--min-distance": ["nan", "-0.5", "inf", "abc"],
    "--max-seq-length": ["-1", "abc"],
    "--seed": ["-1", "abc", str(2**32)],
    "--max-record-bytes": ["-1", "abc"],
    "--batch-size": ["0", "-3", "abc"],
    "--num-threads": ["-2", "abc"],
    "--judge-gpus": ["0", "abc"],
    "--judge-max-tokens": ["2", "abc"],
    "--batch-tokens": ["0", "abc"],
    "--decontaminate-ngram": ["2", "abc", "-13"],
    "--dedup-threshold": ["nan", "inf", "0.2", "1.5", "abc"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, vs in _NUMERIC.items() for v in vs])
def test_every_numeric_option_rejects_bad_values_in_one_line(tmp_path, capsys, flag, value):
    args = ["select", POOL, "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w"),
            "--output-dir", str(tmp_path / "o"), flag, value]
    if flag != "--budget":
        args += ["--budget", "5"] if flag != "--token-budget" else []
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (flag, value, err)
    assert lines and lines[-1].startswith("laser-fast: error:") and "Traceback" not in err, (flag, value, err)
    assert flag.lstrip("-").replace("-", "_") in lines[-1].replace("-", "_"), (flag, value, lines[-1])
    assert not (tmp_path / "o" / "selected.jsonl").exists()


# every option that takes a name, a path or a URL, with a value of the wrong kind
_TEXT = {
    "--output-dir": ["FILE"],
    "--input-dir": ["FILE", "MISSING"],
    "--workdir": ["FILE"],
    "--config": ["MISSING", "DIR"],
    "--scores": ["MISSING"],
    "--analysis-dir": ["MISSING", "FILE"],
    "--decontaminate": ["MISSING"],
    "--classifier": ["MISSING"],
    "--embedding-model": ["MISSING"],
    "--train-tokenizer": ["MISSING"],
    "--strategy": ["bogus"],
    "--proportions": ["Math", "Bogus=1", "Math=abc"],
    "--setfit-limits": ["x", "Math=abc"],
    "--device": ["tpu", "cuda:99"],
    "--split": ["train"],  # no input is a Hugging Face dataset
    "--languages": ["xx!", ","],
    "--scorers": ["bogus"],
    "--scorer-model": ["nonsense", "bogus=x"],
    "--judge-url": ["notaurl", "ftp://host/v1", "http://"],
    "--judge-model": ["nonsense", "bogus=x"],
    "--push-to-hub": ["bad name!"],
    "--trust-remote-code": [""],
    "--ray-address": ["auto"],  # without --engine ray
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, vs in _TEXT.items() for v in vs])
def test_every_text_option_rejects_values_of_the_wrong_kind(tmp_path, capsys, flag, value):
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "a_dir").mkdir()
    value = {"FILE": str(tmp_path / "a_file"), "DIR": str(tmp_path / "a_dir"), "MISSING": str(tmp_path / "missing")}.get(value, value)
    rc = main(["select", POOL, "--strategy", "random", "--profile", "none", "-q", "--budget", "5",
               "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o"), flag, value])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (flag, value, err)
    assert lines and lines[-1].startswith("laser-fast: error:") and "Traceback" not in err, (flag, value, err)
    assert not (tmp_path / "o" / "selected.jsonl").exists()


def test_the_tables_cover_every_option_of_select():
    """A new option of ``select`` that takes a value must get its bad values in one of the tables."""
    import argparse

    from laser_fast.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    valued = {a.option_strings[-1] for a in sub.choices["select"]._actions
              if a.option_strings and a.nargs != 0 and not a.choices}
    uncovered = valued - set(_NUMERIC) - set(_TEXT)
    assert not uncovered, sorted(uncovered)


@pytest.mark.parametrize("flag,value", [("--output", "DIR"), ("--device", "tpu"), ("--batch-size", "0"),
                                        ("--max-record-bytes", "-1"), ("--engine", "spark")])
def test_classify_rejects_bad_values_in_one_line_and_leaves_no_file(tmp_path, capsys, flag, value):
    (tmp_path / "a_dir").mkdir()
    value = str(tmp_path / "a_dir") if value == "DIR" else value
    args = ["classify", POOL, "-q", "--output", str(tmp_path / "labels.jsonl")]
    args = args[:-2] + [flag, value] if flag == "--output" else args + [flag, value]
    rc = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and lines[-1].startswith("laser-fast: error:") and "Traceback" not in err, (flag, value, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir"] and not any((tmp_path / "a_dir").iterdir())


def test_input_file_behind_a_shortened_flag_says_files_take_none(tmp_path, capsys):
    """``--input FILE`` (argparse reads it as ``--input-dir``) is refused with the way to pass files."""
    rc = main(["select", "--input", POOL, "--strategy", "random", "--profile", "none", "-q", "--budget", "5",
               "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o")])
    last = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()][-1]
    assert rc == 2 and last.startswith("laser-fast: error: --input-dir")
    assert f"input files take no flag: laser-fast select {POOL} ..." in last
    assert not (tmp_path / "o").exists()
