"""Reference YAML compatibility, CLI behaviour and user-facing errors."""
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.cli import main
from laser_fast.config import SelectOptions, read_config
from laser_fast.errors import ConfigError

DATA = Path(__file__).parent / "data"
REF_YAML = DATA / "emnlp25_1k_clustering_cat_combination_v5.yaml"


def test_reference_yaml_is_read_unchanged(tmp_path):
    kw = read_config(REF_YAML, input_dir="/data")
    assert kw["name"] == "emnlp25_1k_clustering_cat_combination_v5"
    assert kw["budget"] == 1000 and kw["mode"] == "kmeans" and kw["threshold_percentile"] == 0.8
    assert kw["strategy"] == "combination_v2_code_quality"
    assert kw["embedding_model"] == "NovaSearch/stella_en_400M_v5"
    assert kw["proportions"]["Math"] == pytest.approx(0.25) and kw["proportions"]["Extraction"] == pytest.approx(0.025)
    assert [s.path for s in kw["sources"]] == ["/data/chat_messages.jsonl", "/data/sharegpt.jsonl.gz", "/data/alpaca.jsonl"]
    assert [s.name for s in kw["sources"]] == ["chat_messages", "sharegpt", "alpaca"]
    opts = SelectOptions(**kw).validate()
    assert opts.strategy == "combination"


def test_reference_mode_mapping_and_unknown_keys(tmp_path, caplog):
    p = tmp_path / "c.yaml"
    p.write_text("exp:\n  scoring_strategy: deita_embedding\n  sample_size: 10\n  min_distance: 0.2\n  fancy_key: 1\n  setfit_limits:\n    - Math: 0.1\n    - Coding: 0.2\n  data:\n    - name: a\n      data_path: DATA_PATH/a.jsonl\n      oversampling: 2\n      weird: 3\n")
    with caplog.at_level(logging.WARNING):
        kw = read_config(p, input_dir="/in")
    assert kw["mode"] == "greedy" and kw["min_distance"] == 0.2 and kw["proportions"] == "none"
    assert kw["setfit_limits"] == {"Math": 0.1, "Coding": 0.2}
    assert kw["sources"][0].oversampling == 2.0
    assert "fancy_key" in caplog.text and "weird" in caplog.text
    p.write_text("exp:\n  scoring_strategy: longest\n  sample_size: 10\n  data:\n    - name: a\n      data_path: DATA_PATH/a.jsonl\n")
    kw = read_config(p, input_dir="/in")
    assert kw["mode"] == "none" and kw["proportions"] == "none"
    with pytest.raises(ConfigError, match="--input-dir"):
        read_config(p)
    p.write_text("exp:\n  sample_size: [1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        read_config(p)
    p.write_text("exp:\n  clustering: weird\n  sample_size: 3\n")
    with pytest.raises(ConfigError, match="clustering 'weird'"):
        read_config(p)


def test_our_keys_in_a_config(tmp_path, caplog, monkeypatch):
    """Our option names as config keys: input paths from the config's folder (as data_path),
    bad values named, two budgets refused, 'sources' named in a warning, and the command line
    overriding the config's engine."""
    from laser_fast.cli import _options_from_args, build_parser

    sub = tmp_path / "cfgs" / "sub"
    sub.mkdir(parents=True)
    p = sub / "e.yaml"
    p.write_text("budget: 5\nproportions: paper\nscores: [labels.tsv, /abs/s.tsv, s3://b/k.tsv]\ndecontaminate: bench.jsonl\n"
                 "engine: ray\nray_address: auto\nsources: [x]\n")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING):
        kw = read_config(p)
    assert "ignoring key 'sources'" in caplog.text and "sources" not in kw
    assert kw["scores"] == [str(sub / "labels.tsv"), "/abs/s.tsv", "s3://b/k.tsv"] and kw["decontaminate"] == [str(sub / "bench.jsonl")]
    assert SelectOptions(**kw).validate().proportions is None  # 'paper': the paper's shares
    a = build_parser().parse_args(["select", "x.jsonl", "--output-dir", "o", "--config", str(p), "--engine", "local"])
    opts = _options_from_args(a).validate()
    assert opts.engine == "local" and opts.ray_address is None
    for bad, match in (("threshold_percentile: abc", r"threshold_percentile \(--threshold-percentile\) must be a number, got 'abc'"),
                       ("min_distance: [1]", r"e.yaml: key 'min_distance' has a bad value \[1\]")):
        p.write_text(f"budget: 5\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            SelectOptions(**read_config(p)).validate()
    p.write_text("budget: 50\nsample_size: 70\n")
    with pytest.raises(ConfigError, match=r"e.yaml: 'budget: 50' and 'sample_size: 70' give two budgets"):
        read_config(p)


def test_cli_reference_config_runs(tmp_path, workdir, example_files, capsys):
    """A verbatim reference config (only data paths changed) runs through --config; the
    reference's stella embedder is not on this offline machine, so --embedding-model overrides it;
    the combination strategy's scores come from a reference-style analysis folder."""
    from laser_fast.io.ingest import read_records

    analysis = tmp_path / "analysis"
    rng = np.random.default_rng(0)
    for path, name in zip(example_files, ["chat_messages", "sharegpt", "alpaca"]):
        recs, _ = read_records([path])
        for folder in ("quality_scores", "difficulty_v2_scores", "if_quality_scores", "process_reward_modelling_scores", "code_quality_scores"):
            (analysis / folder).mkdir(parents=True, exist_ok=True)
            vals = rng.random(recs.height)
            vals_txt = [f"{v:.6f}" for v in vals]
            vals_txt[0] = "None"  # a missing value as the reference writes it
            (analysis / folder / f"{name}.csv").write_text("\n".join(vals_txt) + "\n")
    out = tmp_path / "out"
    rc = main(["select", "--config", str(REF_YAML), "--input-dir", str(Path(example_files[0]).parent), "--analysis-dir", str(analysis),
               "--budget", "80", "--embedding-model", "minilm", "--output-dir", str(out), "--workdir", workdir, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "missing for" in err and "scorer" in err  # the 'None' first lines leave gaps: named, not guessed
    # fill the gaps and rerun
    for f in analysis.rglob("*.csv"):
        lines = f.read_text().splitlines()
        lines[0] = "0.5"
        f.write_text("\n".join(lines) + "\n")
    rc = main(["select", "--config", str(REF_YAML), "--input-dir", str(Path(example_files[0]).parent), "--analysis-dir", str(analysis),
               "--budget", "80", "--embedding-model", "minilm", "--output-dir", str(out), "--workdir", workdir, "-q"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    assert man["name"] == "emnlp25_1k_clustering_cat_combination_v5"
    assert man["options"]["strategy"] == "combination" and man["options"]["mode"] == "kmeans"
    assert man["counts"]["total_selected"] == 80
    sel = [json.loads(l) for l in (out / "selected.jsonl").read_text().splitlines()]
    assert {r["origin"] for r in sel} <= {"chat_messages", "sharegpt", "alpaca"}
    assert all("difficulty" in r and "quality" in r for r in sel)
    # a misaligned analysis file is refused, naming the file
    f = analysis / "quality_scores" / "alpaca.csv"
    f.write_text("\n".join(f.read_text().splitlines()[:-1]) + "\n")
    rc = main(["select", "--config", str(REF_YAML), "--input-dir", str(Path(example_files[0]).parent), "--analysis-dir", str(analysis),
               "--budget", "80", "--embedding-model", "minilm", "--output-dir", str(tmp_path / "o2"), "--workdir", workdir, "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "alpaca.csv" in err and "lines" in err
    assert not (tmp_path / "o2" / "selected.jsonl").exists()


def test_bundled_example_config(tmp_path, workdir, capsys):
    root = Path(__file__).resolve().parent.parent
    rc = main(["select", "--config", str(root / "examples" / "laser_config.yaml"), "--input-dir", str(root / "examples" / "pool"),
               "--output-dir", str(tmp_path), "--workdir", workdir, "-q"])
    assert rc == 0, capsys.readouterr().err
    assert len((tmp_path / "selected.jsonl").read_text().splitlines()) == 120


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{"messages": [\n')
    rc = main(["select", str(bad), "--budget", "1", "--output-dir", str(tmp_path / "o"), "--workdir", str(tmp_path / "w"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:2" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "selected.jsonl").exists()
    rc = main(["select", str(tmp_path / "nope.jsonl"), "--budget", "1", "--output-dir", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "nope.jsonl" in capsys.readouterr().err
    rc = main(["select", str(bad), "--output-dir", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "budget" in capsys.readouterr().err
    rc = main(["select", str(bad), "--budget", "1", "--proportions", "Maths=1", "--output-dir", str(tmp_path / "o"), "-q"])
    assert rc == 2 and "Maths" in capsys.readouterr().err


def test_skip_invalid_is_counted_in_manifest(tmp_path, workdir, capsys):
    good = {"messages": [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7"}]})]
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(lines) + "\n")
    rc = main(["select", str(f), "--budget", "2", "--strategy", "longest", "--mode", "none", "--skip-invalid", "--output-dir", str(tmp_path / "o"), "--workdir", workdir, "-q"])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["skipped_invalid"]["count"] == 1 and man["skipped_invalid"]["records"][0]["line"] == 2


def test_cli_classify_and_report(tmp_path, example_files, workdir, capsys):
    out = tmp_path / "cats.jsonl"
    assert main(["classify", example_files[2], "--output", str(out), "-q"]) == 0
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(rows) == 130 and all(r["category"] for r in rows)
    sel = tmp_path / "sel"
    assert main(["select", *example_files, "--budget", "50", "--strategy", "longest", "--mode", "none", "--output-dir", str(sel), "--workdir", workdir, "--no-report", "-q"]) == 0
    assert not (sel / "report.html").exists()
    assert main(["report", str(sel), "-q"]) == 0
    assert (sel / "report.html").stat().st_size > 1000


def test_the_report_speaks_in_the_runs_own_strata_and_units(tmp_path, example_files, workdir):
    """With --proportions none there is one stratum (no target per category, clusters over all
    categories); with a token budget targets and selected shares are in tokens."""
    import re

    common = [*example_files, "--strategy", "longest", "--output-dir"]
    assert main(["select", *common, str(tmp_path / "one"), "--budget", "40", "--proportions", "none", "--mode", "kmeans",
                 "--workdir", workdir, "-q"]) == 0
    page = (tmp_path / "one" / "report.html").read_text()
    assert "One stratum over every category" in page and "target 40 records in all" in page
    assert "all categories (one stratum)" in page and "<th>target (records)</th>" in page
    assert main(["select", *common, str(tmp_path / "tok"), "--token-budget", "6000", "--mode", "none",
                 "--workdir", workdir, "-q"]) == 0
    page = (tmp_path / "tok" / "report.html").read_text()
    assert "<th>target (tokens)</th>" in page and "<th>selected tokens</th>" in page and "selected share (tokens)" in page
    dec = pl.read_parquet(tmp_path / "tok" / "decisions.parquet").filter(pl.col("status") == "selected")
    total = int((dec["inst_length"] + dec["resp_length"]).sum())
    shares = [float(x) for x in re.findall(r"<td>([0-9.]+)%</td></tr>", page)]
    assert total <= 6000 and abs(sum(shares) - 100) < 0.5
    # whether torch saw CUDA is unknown on a run answered from its caches: not on the page
    from laser_fast.io.report import build_report

    man = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    dec = pl.read_parquet(tmp_path / "tok" / "decisions.parquet")
    pages = [build_report(dec, {**man, "devices": {**man["devices"], "torch_cuda": v}}) for v in (None, False)]
    assert pages[0] == pages[1] and "torch_cuda" not in pages[0]


def test_console_script_installed():
    exe = shutil.which("laser-fast") or str(Path(sys.executable).parent / "laser-fast")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "select" in r.stdout


def test_per_source_sample_size_limits_and_oversampling(tmp_path, workdir, example_files):
    from laser_fast.config import SelectOptions
    from laser_fast.pipeline import run_selection

    root = Path(example_files[0]).parent
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "exp:\n  scoring_strategy: longest\n  sample_size: 100\n  final_setfit_proportions:\n    Math: 0.5\n    Factual QA: 0.5\n"
        "  data:\n    - name: chat\n      data_path: DATA_PATH/chat_messages.jsonl\n      sample_size: 40\n      setfit_limits:\n        - Math: 0.5\n"
        "    - name: alp\n      data_path: DATA_PATH/alpaca.jsonl\n      oversampling: 2.5\n"
    )
    kw = read_config(cfg, input_dir=str(root))
    run = run_selection([], SelectOptions(**kw, show_progress=False), workdir=workdir)
    pool = run.pool
    chat = pool.filter(pl.col("origin") == "chat")
    kept = chat.filter(pl.col("status") != "source_limit")
    kept = kept.filter(pl.col("status").is_in(["selected", "not_selected", "zero_target"]))
    assert kept.height == 40
    assert kept.filter(pl.col("category") == "Math").height <= 20
    alp = pool.filter(pl.col("origin") == "alp")
    n_alp = 130 - alp.filter((pl.col("copy") == 0) & (pl.col("status") == "non_english")).height
    assert alp.filter(pl.col("copy") == 1).height == n_alp  # the whole source once more
    assert alp.filter(pl.col("copy") == 2).height == int(n_alp * 0.5)  # plus the best half
    assert run.manifest["counts"]["total_selected"] == 100


def test_oversampling_alone(tmp_path, workdir, example_files):
    from laser_fast.config import SelectOptions, SourceSpec
    from laser_fast.pipeline import run_selection

    spec = SourceSpec(path=example_files[2], name="alp", oversampling=2.0)
    run = run_selection([], SelectOptions(budget=10, strategy="longest", mode="none", proportions="none", sources=[spec], show_progress=False), workdir=workdir)
    assert (run.pool["copy"] == 1).sum() == (run.pool["copy"] == 0).sum() - (run.pool["status"] == "non_english").sum()


def test_ctrl_c_still_raises_after_a_cli_run(tmp_path):
    """After a whole ``select`` run in a fresh process (polars' runtime installs its own C-level
    SIGINT handler on the way), Ctrl-C still reaches Python as KeyboardInterrupt."""
    import json
    import sys

    rows = [{"data_id": f"r{i}", "instruction": f"Question number {i} about topic {i % 7}?", "output": f"Answer {i} " * (1 + i % 5),
             "category": ["Math", "Coding", "Generation"][i % 3]} for i in range(60)]
    src = tmp_path / "pool.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    code = (
        "import signal, sys, time\n"
        "from laser_fast.cli import main\n"
        f"rc = main(['select', {str(src)!r}, '--budget', '12', '--strategy', 'longest', '--profile', 'none', '--mode', 'none',"
        f" '--workdir', {str(tmp_path / 'w')!r}, '--output-dir', {str(tmp_path / 'o')!r}, '-q', '--no-report'])\n"
        "assert rc == 0, rc\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    time.sleep(0.5)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("interrupted"), (r.stdout[-500:], r.stderr[-1000:])
