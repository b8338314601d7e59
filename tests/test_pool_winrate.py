"""Issue 17: scripts/pool_winrate.py writes the AlpacaEval pool as a selection input (optionally
with the win-rate oracle as every quality metric) and scores a selection by the mean win rate of
its rows' generators, on the whole and on each fixed half of the instructions."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("pool_winrate", ROOT / "scripts" / "pool_winrate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = [{"instruction": f"task {i // 3}", "output": f"answer {i}", "generator": g}
            for i, g in enumerate(["strong", "weak", "NullModel"] * 4)]
    with gzip.open(d / "alpaca_eval_pool.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    board = [{"generator": "strong", "length_controlled_winrate": 40.0}, {"generator": "weak", "length_controlled_winrate": 10.0},
             {"generator": "NullModel", "length_controlled_winrate": 86.5}]  # the junk's board figure is not used
    (d / "alpaca_eval_leaderboard.jsonl").write_text("".join(json.dumps(b) + "\n" for b in board))
    return d, rows


def test_score_gives_the_mean_generator_win_rate_with_nullmodel_as_zero(data, tmp_path, capsys):
    d, rows = data
    mod = _module()
    out = tmp_path / "out"
    out.mkdir()
    (out / "selected.jsonl").write_text("".join(json.dumps({"id": f"r{i}"}) + "\n" for i in (0, 1, 2, 3)))
    mod.main(["--data", str(d), "score", str(out)])
    line = capsys.readouterr().out
    assert "4 rows, 2 instructions" in line and "mean LC win rate 22.50" in line and "NullModel rows 1" in line
    dev = [mod.dev_half(rows[i]["instruction"]) for i in (0, 1, 2, 3)]
    want = {True: [], False: []}
    for i, h in zip((0, 1, 2, 3), dev):
        want[h].append({"strong": 40.0, "weak": 10.0, "NullModel": 0.0}[rows[i]["generator"]])
    for h, name in ((True, "development half"), (False, "test half")):
        if want[h]:
            assert f"{name} {np.mean(want[h]):.2f} over {len(want[h])} rows" in line


def test_a_selection_not_written_from_the_pool_is_refused_with_its_line(data, tmp_path):
    d, _ = data
    out = tmp_path / "out"
    out.mkdir()
    (out / "selected.jsonl").write_text(json.dumps({"id": "r0"}) + "\n" + json.dumps({"id": "abc"}) + "\n")
    with pytest.raises(SystemExit, match=r"selected.jsonl line 2: id 'abc'"):
        _module().main(["--data", str(d), "score", str(out)])


def test_the_oracle_pool_carries_the_win_rate_as_every_quality_metric(data, tmp_path):
    d, rows = data
    mod = _module()
    dec = tmp_path / "decisions.parquet"
    pl.DataFrame({"difficulty": [0.5] * (len(rows) - 1) + [None]}).write_parquet(dec)
    f = tmp_path / "pool.jsonl"
    mod.main(["--data", str(d), "pool", str(f), "--oracle-quality", "--difficulty-from", str(dec)])
    got = [json.loads(line) for line in f.read_text().splitlines()]
    assert [g["id"] for g in got] == [f"r{i}" for i in range(len(rows))]
    assert got[0]["quality"] == got[0]["process_reward"] == got[0]["code_quality"] == got[0]["if_quality"] == 40.0
    assert got[2]["quality"] == 0.0 and got[-1]["difficulty"] == 0.0 and got[0]["difficulty"] == 0.5
    pl.DataFrame({"difficulty": [0.5]}).write_parquet(dec)
    with pytest.raises(SystemExit, match="1 rows, the pool has 12"):
        mod.main(["--data", str(d), "pool", str(f), "--oracle-quality", "--difficulty-from", str(dec)])
    plain = tmp_path / "plain.jsonl"
    mod.main(["--data", str(d), "pool", str(plain)])
    assert set(json.loads(plain.read_text().splitlines()[0])) == {"id", "instruction", "output"}
