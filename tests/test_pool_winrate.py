"""Issue 17: scripts/pool_winrate.py writes the AlpacaEval pool as a selection input (optionally
with the win-rate oracle as every quality metric) and scores a selection by the mean win rate of
its rows' generators, on the whole and on each fixed half of the instructions."""
from __future__ import annotations

import gzip
import hashlib
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


def _board(n: int) -> dict[str, float]:
    return {f"g{i:02d}": float(i) for i in range(n)} | {"NullModel": 0.0}


def test_generator_halves_deal_the_ranking_alternately_and_hold_nullmodel_out():
    from benchmarks.data import generator_halves

    lc = _board(9)
    trained, held = generator_halves(lc)
    assert trained == {"g00", "g02", "g04", "g06", "g08"} and held == {"g01", "g03", "g05", "g07", "NullModel"}
    assert generator_halves(dict(reversed(list(lc.items())))) == (trained, held)  # the file's order does not matter


def test_the_unseen_pool_holds_only_test_half_answers_by_held_out_generators(data, tmp_path, capsys):
    d, rows = data
    mod = _module()
    f = tmp_path / "unseen.jsonl"
    mod.main(["--data", str(d), "pool", str(f), "--unseen"])
    got = [json.loads(line) for line in f.read_text().splitlines()]
    # three generators: "weak" (10) is dealt to the trained half, "strong" and NullModel are held out
    want = [f"r{i}" for i, r in enumerate(rows) if not mod.dev_half(r["instruction"]) and r["generator"] in ("strong", "NullModel")]
    assert [g["id"] for g in got] == want and want
    assert f"wrote {len(want)} rows" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="leave out --unseen"):
        mod.main(["--data", str(d), "pool", str(f), "--unseen", "--oracle-quality", "--difficulty-from", str(tmp_path / "x.parquet")])


def test_a_missing_selection_folder_is_named(data, tmp_path):
    with pytest.raises(SystemExit, match=r"nothing/selected.jsonl not found"):
        _module().main(["--data", str(data[0]), "score", str(tmp_path / "nothing")])


def test_ifd_teacher_takes_development_half_answers_by_trained_generators(tmp_path):
    """scripts/public_data/ifd_teacher.py --alpaca-eval-dev: N answers to each development-half
    instruction, by trained-half generators only (never NullModel or a blank answer), seeded."""
    import importlib.util

    from benchmarks.data import dev_half, generator_halves

    d = tmp_path / "data"
    d.mkdir()
    lc = _board(8)  # NullModel included
    insts = [f"instruction number {k}" for k in range(12)]
    rows = [{"instruction": t, "output": f"{g} answers {t}" if g != "g06" else " ", "generator": g} for t in insts for g in lc]
    with gzip.open(d / "alpaca_eval_pool.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (d / "alpaca_eval_leaderboard.jsonl").write_text("".join(json.dumps({"generator": g, "length_controlled_winrate": v}) + "\n" for g, v in lc.items()))
    spec = importlib.util.spec_from_file_location("ifd_teacher", ROOT / "scripts" / "public_data" / "ifd_teacher.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    items = mod.pool_items(d, 3)
    trained, _ = generator_halves(lc)
    dev = [t for t in insts if dev_half(t)]
    assert dev and len(items) == 3 * len(dev)
    for inst, resp, src, grp in items:
        g = resp.split(" answers ")[0]
        assert dev_half(inst) and grp == inst and src == "alpaca_eval"
        assert g in trained and g not in ("NullModel", "g06")
    assert {i for i, *_ in items} == set(dev)
    assert mod.pool_items(d, 3) == items and mod.pool_items(d, 3, seed=1) != items


def test_onepass_trains_on_alpacaeval_pairs_of_the_development_half_and_the_trained_generators(tmp_path):
    """scripts/train_onepass.py's AlpacaEval pairs: development-half instructions only, both answers
    by trained-half generators whose win rates differ by more than the gap, at most N per instruction."""
    import sys

    from benchmarks.data import dev_half, generator_halves

    d = tmp_path / "data"
    d.mkdir()
    lc = _board(8)
    insts = [f"instruction number {k}" for k in range(12)]
    rows = [{"instruction": t, "output": f"{g} answers {t}" if g != "g06" else " ", "generator": g} for t in insts for g in lc]
    with gzip.open(d / "alpaca_eval_pool.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (d / "alpaca_eval_leaderboard.jsonl").write_text("".join(json.dumps({"generator": g, "length_controlled_winrate": v}) + "\n" for g, v in lc.items()))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_lite_quality as tlq
        import train_onepass
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    p = tlq.Pairs()
    info = train_onepass.load_alpaca_eval_dev_half(d, p, gap=1.5, per_instruction=2, seed=0)
    trained, _ = generator_halves(lc)
    dev = [t for t in insts if dev_half(t)]
    assert dev and len(dev) < len(insts)
    assert info["instructions"] == len(dev) and info["pairs"] == len(p.better) == 2 * len(dev)
    for b, w, src, grp in zip(p.better, p.worse, p.source, p.group):
        (ib, rb), (iw, rw) = p.texts[b], p.texts[w]
        gb, gw = rb.split(" answers ")[0], rw.split(" answers ")[0]
        assert src == "alpaca_eval" and ib == iw and dev_half(ib)
        assert grp == "alpaca_eval:" + hashlib.sha1(ib.encode()).hexdigest()[:16]  # grouped by instruction
        assert gb in trained and gw in trained and lc[gb] - lc[gw] > 1.5  # g06's blank answers never enter
    again = tlq.Pairs()
    train_onepass.load_alpaca_eval_dev_half(d, again, gap=1.5, per_instruction=2, seed=0)
    assert again.texts == p.texts and again.better == p.better  # seeded
