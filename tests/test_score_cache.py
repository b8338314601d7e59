"""The score cache and the resumable scoring run (orchestration; the model scorers have their own tests)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from laser_fast.errors import ConfigError
from laser_fast.io.ingest import records_from_frame
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.cache import ScoreCache, content_keys
from laser_fast.scorers.stage import PROFILE_METRICS, SCORER_OUTPUTS, apply_scores, metric_sources, needed_scorers, parse_models, parse_scorer_list, score_records


def _records(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"instruction": f"question {i} " + "x" * int(rng.integers(1, 50)), "output": f"answer {i} " + "y" * int(rng.integers(1, 200))} for i in range(n)]
    recs, _ = records_from_frame(pl.DataFrame(rows), origin="t")
    return recs


class CharScorer(Scorer):
    """A deterministic scorer over the text (stands in for a model to test the orchestration)."""

    name = "chars"
    outputs = ("chars", "ratio")

    def __init__(self, salt: str = "", categories=None, fail_after: int | None = None):
        self.salt = salt
        self.calls = 0
        self.seen = 0
        self.categories = categories
        self.fail_after = fail_after

    @property
    def fingerprint(self) -> str:
        return f"chars|{self.salt}"

    def score(self, batch, *, batch_size=None, show_progress=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.seen += batch.height
        ins = batch["instruction"].str.len_chars().to_numpy().astype(float)
        res = batch["response"].str.len_chars().to_numpy().astype(float)
        return {"chars": ins + res, "ratio": res / ins}


def test_cache_append_lookup_and_compact(tmp_path):
    c = ScoreCache(tmp_path, "s", "fp1", ("a",))
    c.append(["x", "y"], ["k1", "k2"], {"a": np.array([1.0, 2.0])})
    c.append(["z"], ["k3"], {"a": np.array([np.nan])})
    found, vals = c.lookup(["y", "z", "x", "w", "x"], ["k2", "k3", "k1", "k4", "other-content"])
    assert found.tolist() == [True, True, True, False, False]
    assert vals["a"][0] == 2.0 and np.isnan(vals["a"][1]) and vals["a"][2] == 1.0
    assert len(c.shards()) == 2 and not list(c.dir.glob(".*tmp"))
    c.compact(force=True)
    assert len(c.shards()) == 1
    found2, vals2 = c.lookup(["y", "z", "x"], ["k2", "k3", "k1"])
    assert found2.all() and vals2["a"][0] == 2.0
    # another fingerprint is another folder: nothing is reused
    other = ScoreCache(tmp_path, "s", "fp2", ("a",))
    assert other.dir != c.dir and not other.lookup(["x"], ["k1"])[0].any()
    assert (c.dir / "FINGERPRINT").read_text().count("fp1") == 1


def test_content_keys_follow_messages_and_category():
    recs = _records(3)
    k = content_keys(recs, ["Math"] * 3)
    assert len(set(k)) == 3
    assert content_keys(recs, ["Math"] * 3) == k
    assert content_keys(recs, ["Coding", "Math", "Math"])[0] != k[0]


def test_score_records_resumes_and_matches_uninterrupted(tmp_path):
    recs = _records(50)
    cats = np.array(["Math"] * 50, dtype=object)
    full, _ = score_records(recs, cats, CharScorer(), tmp_path / "a", chunk_records=7)
    # interrupted after 3 chunks, then resumed: only the rest is scored, same result
    s1 = CharScorer(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        score_records(recs, cats, s1, tmp_path / "b", chunk_records=7)
    assert s1.seen == 21
    s2 = CharScorer()
    resumed, facts = score_records(recs, cats, s2, tmp_path / "b", chunk_records=7)
    assert s2.seen == 29 and facts["cached"] == 21 and facts["computed"] == 29
    for o in ("chars", "ratio"):
        np.testing.assert_array_equal(full[o], resumed[o])
    np.testing.assert_array_equal(full["chars"], (recs["instruction"].str.len_chars() + recs["response"].str.len_chars()).to_numpy())
    # a third run is all cache
    s3 = CharScorer()
    again, facts3 = score_records(recs, cats, s3, tmp_path / "b", chunk_records=7)
    assert s3.seen == 0 and facts3["cached"] == 50
    # a changed fingerprint recomputes
    s4 = CharScorer(salt="v2")
    score_records(recs, cats, s4, tmp_path / "b", chunk_records=7)
    assert s4.seen == 50


def test_score_records_respects_categories_and_mask(tmp_path):
    recs = _records(10)
    cats = np.array(["Math", "Coding"] * 5, dtype=object)
    s = CharScorer(categories=("Math",))
    mask = np.arange(10) < 8
    out, facts = score_records(recs, cats, s, tmp_path, mask=mask)
    assert s.seen == 4 and facts["records"] == 4
    assert np.isfinite(out["chars"][[0, 2, 4, 6]]).all()
    assert np.isnan(out["chars"][[1, 3, 5, 7, 8, 9]]).all()
    # the category is part of the key: a record re-labelled Math later is scored then
    cats2 = cats.copy()
    cats2[1] = "Math"
    s2 = CharScorer(categories=("Math",))
    score_records(recs, cats2, s2, tmp_path, mask=mask)
    assert s2.seen == 1


def test_needed_scorers_routes_by_category_and_skips_given_scores():
    cats = np.array(["Math", "Coding", "Generation", "Factual QA", "Math"], dtype=object)
    src = metric_sources("paper")
    plan = needed_scorers("combination", cats, {}, src)
    assert set(plan) == {"difficulty", "process_reward", "code_quality", "if_quality", "deita_quality"}
    assert plan["process_reward"][0].tolist() == [True, False, False, False, True]
    assert plan["deita_quality"][0].tolist() == [False, False, False, True, False]
    # a given difficulty for all records: the difficulty scorer is not needed
    plan2 = needed_scorers("combination", cats, {"difficulty": np.arange(5.0)}, src)
    assert "difficulty" not in plan2
    # lite: one scorer stands in for every quality metric
    lite = needed_scorers("combination", cats, {}, metric_sources("lite-llm"))
    assert set(lite) == {"lite_quality", "lite_difficulty"} and lite["lite_quality"][0].all()
    assert {m for m, _, _ in lite["lite_quality"][1]} == {"process_reward", "code_quality", "if_quality", "quality"}
    # lite: one scorer, one pass, stands in for every quality metric and for difficulty
    one = needed_scorers("combination", cats, {}, metric_sources("lite"))
    assert set(one) == {"onepass"} and one["onepass"][0].all()
    assert {m for m, _, _ in one["onepass"][1]} == {"process_reward", "code_quality", "if_quality", "quality", "difficulty"}
    assert needed_scorers("longest", cats, {}, src) == {}
    # a stand-in never fills gaps among given values (two scales would be mixed); the native scorer does
    gappy = {"difficulty": np.array([1.0, np.nan, 2.0, 3.0, 4.0])}
    assert "lite_difficulty" not in needed_scorers("combination", cats, gappy, metric_sources("lite-llm"))
    assert needed_scorers("combination", cats, gappy, src)["difficulty"][0].tolist() == [False, True, False, False, False]
    # explicit scorers override the profile for the metrics they produce
    assert metric_sources("lite", ["deita_quality"])["quality"] == ("deita_quality", "quality")
    assert metric_sources("lite", ["deita_quality"])["if_quality"] == ("onepass", "onepass_quality")


def test_apply_scores_never_overwrites():
    s = {"quality": np.array([1.0, np.nan, 3.0])}
    apply_scores(s, "quality", np.array([9.0, 9.0, 9.0]))
    assert s["quality"].tolist() == [1.0, 9.0, 3.0]
    apply_scores(s, "difficulty", np.array([1.0, 2.0, 3.0]), rows=np.array([True, False, True]))
    assert s["difficulty"][0] == 1.0 and np.isnan(s["difficulty"][1])


def test_profiles_and_parsers():
    for prof in PROFILE_METRICS.values():
        for scorer, col in prof.values():
            assert col in SCORER_OUTPUTS[scorer]
    assert parse_scorer_list("tokens, ifd,tokens") == ["tokens", "ifd"]
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        parse_scorer_list("nope")
    assert parse_models(["difficulty=/m/d"]) == {"difficulty": "/m/d"}
    with pytest.raises(ConfigError, match="SCORER=MODEL"):
        parse_models(["difficulty"])


def test_score_file_categories_map_per_label_and_bad_labels_name_the_record(tmp_path):
    """Category labels of a score file are canonicalised (aliases and case), fill only records
    without a category, and an unknown label on such a record stops with the file and data_id."""
    import json

    from laser_fast.errors import InputError
    from laser_fast.io.score_files import merge_score_files

    recs, _ = records_from_frame(pl.DataFrame({"data_id": ["a", "b", "c", "d"], "instruction": ["q1", "q2", "q3", "q4"], "output": ["r1", "r2", "r3", "r4"]}), origin="t")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [{"data_id": "a", "category": "math"}, {"data_id": "b", "category": "Coding"},
                                                        {"data_id": "d", "category": "Factual QA", "quality": 0.5}]))
    known = np.array([None, None, None, "Reasoning"], dtype=object)
    _, cats, rep = merge_score_files(recs, [good], {}, known.copy())
    assert cats.tolist() == ["Math", "Coding", None, "Reasoning"]  # d keeps its known category
    assert rep[0]["matched"] == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [{"data_id": "a", "category": "Math"}, {"data_id": "c", "category": "Cooking"}]))
    with pytest.raises(InputError, match=r"unknown category 'Cooking' for data_id c") as e:
        merge_score_files(recs, [bad], {}, None)
    assert "bad.jsonl" in str(e.value)
    # the same bad label on a record whose category is already known is not used, so not checked
    bad2 = tmp_path / "bad2.jsonl"
    bad2.write_text(json.dumps({"data_id": "d", "category": "Cooking"}))
    _, cats2, _ = merge_score_files(recs, [bad2], {}, known.copy())
    assert cats2.tolist() == [None, None, None, "Reasoning"]


def test_token_counter_chunks_give_the_same_counts(monkeypatch):
    """Token counts are computed 65k records at a time; any chunking gives the same counts,
    and multi-turn records count every user turn / every answer."""
    from laser_fast.scorers.tokens import TokenCounter

    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q {i} " + "w " * i},
                          {"role": "assistant", "content": "a " * (i + 1)}] + ([{"role": "user", "content": "more"}, {"role": "assistant", "content": "ok then"}] if i % 2 else [])}
            for i in range(11)]
    recs, _ = records_from_frame(pl.DataFrame(rows), origin="t")
    tc = TokenCounter()
    whole = tc.score(recs)
    monkeypatch.setattr(TokenCounter, "chunk_rows", 3)
    parts = tc.score(recs)
    for k in tc.outputs:
        assert np.array_equal(whole[k], parts[k])
    tok = tc._load()
    n0 = lambda t: len(tok.encode(t, add_special_tokens=False))
    assert whole["inst_length"][1] == n0("be brief\nq 1 w \nmore")
    assert whole["resp_length"][1] == n0("a a \nok then") and whole["last_resp_length"][1] == n0("ok then")
