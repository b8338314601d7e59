"""Issue 19: benchmark decontamination. Benchmark items planted in a pool (verbatim, re-spaced,
embedded in a longer prompt, or in the answer) are flagged with the item they match and left
out; a clean pool loses nothing."""
from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import EXAMPLE_FILES, shared_or_skip

from laser_fast.cli import main
from laser_fast.errors import InputError
from laser_fast.io.ingest import read_records
from laser_fast.sampling.decontam import Benchmarks

# the five evaluation sets of ../shared/data: the ready list of benchmark files
BENCHMARK_FILES = ("gsm8k_test.jsonl", "humaneval.jsonl", "vicuna_bench.jsonl", "koala_test_set.jsonl", "self_instruct_user_oriented.jsonl")


def _bench(tmp_path):
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    f = tmp_path / "benchmarks" / "mini_bench.jsonl"
    items = [{"id": "q1", "question": "A train leaves the station at nine and travels sixty miles per hour for three hours "
                                      "before it stops; how far has it gone by noon?", "answer": "180 miles"},
             {"id": "q2", "question": "What is the boiling point of water at sea level?", "answer": "100 degrees Celsius."}]
    f.write_text("".join(json.dumps(i) + "\n" for i in items))
    return f, items


def test_planted_items_are_found_and_a_clean_pool_loses_nothing(tmp_path):
    f, items = _bench(tmp_path)
    b = Benchmarks([str(f)])
    long_q, short_q = items[0]["question"], items[1]["question"]
    ins = [long_q, "  ".join(long_q.upper().split()), f"Please solve this for me. {long_q} Show your work.", short_q,
           "What is the boiling point of water on a mountain?", "Tell me a joke.", "Summarise the story."]
    res = ["It went 180 miles.", "180", "180", "100 C", "Lower than 100 C.", "Why did the chicken...", f"The story: {long_q}"]
    got = b.match(pl.Series(ins), pl.Series(res)).tolist()
    assert got == ["mini_bench.jsonl:q1"] * 3 + ["mini_bench.jsonl:q2", None, None, "mini_bench.jsonl:q1"]
    recs, _ = read_records([str(p) for p in EXAMPLE_FILES])
    assert (b.match(recs["instruction"], recs["response"]) == None).all()  # noqa: E711


def test_the_shared_benchmarks_flag_gsm8k_and_humaneval_planted_in_a_pool(tmp_path):
    files = [str(shared_or_skip(n)) for n in BENCHMARK_FILES]
    b = Benchmarks(files)
    assert b.files == {"gsm8k_test.jsonl": 1319, "humaneval.jsonl": 164, "vicuna_bench.jsonl": 80, "koala_test_set.jsonl": 180,
                       "self_instruct_user_oriented.jsonl": 252}
    g = [json.loads(x) for x in shared_or_skip("gsm8k_test.jsonl").read_text().splitlines()[:3]]
    h = [json.loads(x) for x in shared_or_skip("humaneval.jsonl").read_text().splitlines()[:2]]
    planted = [g[0]["instruction"], "\n".join(g[1]["instruction"].split(" ")), f"My homework: {g[2]['instruction']} Thanks a lot!",
               "Finish this code.", "Write the body."]
    answers = ["?", "?", "?", h[0]["instruction"] + h[0]["output"], h[1]["output"]]
    recs, _ = read_records([str(p) for p in EXAMPLE_FILES])
    got = b.match(pl.concat([recs["instruction"], pl.Series(planted)]), pl.concat([recs["response"], pl.Series(answers)]))
    assert (got[: recs.height] == None).all()  # noqa: E711 - the clean example pool loses nothing
    assert got[recs.height:].tolist() == ["gsm8k_test.jsonl:gsm8k-0000", "gsm8k_test.jsonl:gsm8k-0001", "gsm8k_test.jsonl:gsm8k-0002",
                                          "humaneval.jsonl:HumanEval-0", "humaneval.jsonl:HumanEval-1"]


def test_the_cli_leaves_contaminated_records_out_unscored_and_counts_them(tmp_path):
    _, items = _bench(tmp_path)
    pool = tmp_path / "pool.jsonl"
    rows = [{"instruction": items[0]["question"], "output": "180 miles."}, {"instruction": "Name a colour.", "output": "Blue."},
            {"instruction": "Write a haiku about rain.", "output": "Rain taps on the roof."}]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["select", str(pool), "--budget", "3", "--profile", "lite", "--strategy", "combination", "--proportions", "natural",
            "-q", "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o"), "--decontaminate", str(tmp_path / "benchmarks")]
    assert "--no-report" not in args
    assert main(args) == 0  # a folder: every benchmark file in it
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    d = man["decontamination"]
    assert d["contaminated"] == 1 and d["per_benchmark"] == {"mini_bench.jsonl": 1} and d["benchmarks"]["mini_bench.jsonl"] == 2
    assert man["scoring"]["scorers"][0]["records"] == 2 and man["counts"]["total_selected"] == 2
    dec = pl.read_parquet(tmp_path / "o" / "decisions.parquet")
    assert dec.filter(pl.col("status") == "contaminated")["contaminated_by"].to_list() == ["mini_bench.jsonl:q1"]
    html = (tmp_path / "o" / "report.html").read_text()
    assert "Removed before scoring" in html and "mini_bench.jsonl: 1" in html
    with pytest.raises(InputError, match="benchmark file not found"):
        Benchmarks([str(tmp_path / "nope.jsonl")])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl").write_text('{"foo": "bar"}\n')
    with pytest.raises(InputError, match="no prompt or answer field"):
        Benchmarks([str(tmp_path / "bad")])


def test_scores_given_for_left_out_records_do_not_shape_the_others(tmp_path):
    """A contaminated record's quality given with the data (an outlier here) stays out of the
    robust scaling and min-max of the rest, and its preference is NaN."""
    _, items = _bench(tmp_path)
    rows = [{"instruction": f"Explain topic number {i} in a few sentences for a student.", "output": f"Topic {i} is explained here.",
             "category": "Reasoning", "quality": q, "difficulty": 1.0} for i, q in enumerate([0.5, 0.6, 0.0])]
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dirty = tmp_path / "dirty.jsonl"
    bad = {"instruction": items[0]["question"], "output": "180 miles.", "category": "Reasoning", "quality": -100.0, "difficulty": 1.0}
    dirty.write_text("".join(json.dumps(r) + "\n" for r in [*rows, bad]))
    common = ["--budget", "3", "--profile", "none", "--strategy", "combination", "--proportions", "natural", "--mode", "none",
              "--keep-non-english", "-q", "--decontaminate", str(tmp_path / "benchmarks")]
    prefs = []
    for name, f in (("c", clean), ("d", dirty)):
        assert main(["select", str(f), *common, "--workdir", str(tmp_path / f"w{name}"), "--output-dir", str(tmp_path / name)]) == 0
        prefs.append(pl.read_parquet(tmp_path / name / "decisions.parquet")["preference"].to_list())
    assert prefs[1][:3] == prefs[0] and prefs[1][3] != prefs[1][3]  # NaN
