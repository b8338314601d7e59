import numpy as np
import pytest

from laser_fast.errors import ConfigError, MissingScoreError
from laser_fast.sampling.allocate import allocate, largest_remainder
from laser_fast.scorers.preference import RobustScaler, canonical_strategy, compute_preference, metric_relevant, minmax


def test_canonical_strategy_reference_names():
    assert canonical_strategy("combination_v2_code_quality") == "combination"
    assert canonical_strategy("deita_embedding") == "deita"
    assert canonical_strategy("difficulty_v2") == "difficulty"
    assert canonical_strategy("dedicated_quality_code_quality") == "dedicated_quality"
    assert canonical_strategy("quality") == "quality"
    with pytest.raises(ConfigError, match="unknown scoring strategy"):
        canonical_strategy("best")


def test_robust_scaler_matches_definition():
    v = np.arange(101, dtype=float)
    sc = RobustScaler.fit(v)
    lo, med, hi = np.percentile(v, [1, 50, 99])
    assert sc.center == med and sc.scale == pytest.approx(hi - lo)
    assert RobustScaler.fit(np.ones(5)).scale == 1.0  # zero range scales by 1


def test_minmax_keeps_nan_and_constant_is_one():
    out = minmax(np.array([1.0, np.nan, 3.0]))
    assert out[0] == 0 and out[2] == 1 and np.isnan(out[1])
    assert minmax(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]


def _pool():
    cats = np.array(["Math", "Coding", "Generation", "Brainstorming", "Reasoning", "Factual QA", "Extraction", "Math"], dtype=object)
    rng = np.random.default_rng(0)
    n = cats.size
    scores = {m: rng.normal(size=n) for m in ("quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality")}
    scores["last_resp_length"] = rng.integers(1, 100, n).astype(float)
    return scores, cats


def test_combination_routes_dedicated_quality_and_multiplies():
    scores, cats = _pool()
    pref, used, info = compute_preference(scores, cats, "combination_v2_code_quality")
    # expected by hand: robust scale each metric on relevant records, route, min-max, multiply
    scaled = {}
    for m in ("quality", "if_quality", "process_reward", "code_quality"):
        rel = np.array([metric_relevant(c, m) for c in cats])
        sc = RobustScaler.fit(scores[m][rel])
        scaled[m] = (scores[m] - sc.center) / sc.scale
    route = {"Generation": "if_quality", "Brainstorming": "if_quality", "Math": "process_reward", "Coding": "code_quality"}
    q = np.array([scaled[route.get(c, "quality")][i] for i, c in enumerate(cats)])
    expected = minmax(q) * minmax(scores["difficulty"])
    np.testing.assert_allclose(pref, expected)
    assert info["robust_scalers"]["process_reward"]["fitted_on"] == 5  # Math + the 3 non-dedicated categories
    assert info["robust_scalers"]["if_quality"]["fitted_on"] == 5  # Generation, Brainstorming + the 3 non-dedicated


def test_strategies():
    scores, cats = _pool()
    assert compute_preference(scores, cats, "longest")[0].tolist() == scores["last_resp_length"].tolist()
    r1 = compute_preference(scores, cats, "random", seed=1)[0]
    r2 = compute_preference(scores, cats, "random", seed=1)[0]
    assert np.array_equal(r1, r2) and not np.array_equal(r1, compute_preference(scores, cats, "random", seed=2)[0])
    d = compute_preference(scores, cats, "deita")[0]
    q = minmax(RobustScaler.fit(scores["quality"]).transform(scores["quality"]))
    c = minmax(RobustScaler.fit(scores["complexity"]).transform(scores["complexity"]))
    np.testing.assert_allclose(d, q * c)
    np.testing.assert_allclose(compute_preference(scores, cats, "difficulty")[0], minmax(scores["difficulty"]))
    np.testing.assert_allclose(compute_preference(scores, cats, "quality")[0], q)


def test_missing_score_names_scorer():
    scores, cats = _pool()
    del scores["process_reward"]
    with pytest.raises(MissingScoreError, match="process_reward.*Math"):
        compute_preference(scores, cats, "combination")
    with pytest.raises(MissingScoreError, match="'difficulty' \\(scorer: difficulty\\)"):
        compute_preference({"quality": np.ones(2)}, np.array(["Reasoning", "Reasoning"], dtype=object), "difficulty")


def test_allocation_sums_exactly_and_redistributes():
    props = {"Coding": 0.25, "Math": 0.25, "Generation": 0.25, "Reasoning": 0.1, "Brainstorming": 0.1, "Extraction": 0.025, "Factual QA": 0.025}
    big = {c: 10_000 for c in props}
    for budget in (0, 1, 7, 999, 1000, 2001):
        t, moves = allocate(budget, props, big)
        assert sum(t.values()) == budget and not moves
    t, _ = allocate(1000, props, big)
    assert t == {"Coding": 250, "Math": 250, "Generation": 250, "Reasoning": 100, "Brainstorming": 100, "Extraction": 25, "Factual QA": 25}
    short = dict(big, Math=100)
    t, moves = allocate(1000, props, short)
    assert t["Math"] == 100 and sum(t.values()) == 1000 and moves[0]["surplus"] == 150
    # the surplus goes to the others in proportion to their shares
    assert t["Coding"] == t["Generation"] and t["Coding"] > t["Reasoning"] > t["Extraction"]
    # not enough records anywhere: everything available
    t, _ = allocate(1000, props, {c: 10 for c in props})
    assert all(v == 10 for v in t.values())
    # zero shares get nothing; limits cap
    t, _ = allocate(100, {"Math": 1.0, "Coding": 0.0}, {"Math": 500, "Coding": 500})
    assert t == {"Math": 100, "Coding": 0}
    t, _ = allocate(100, {"Math": 0.5, "Coding": 0.5}, {"Math": 500, "Coding": 500}, limits={"Math": 0.2})
    assert t == {"Math": 20, "Coding": 80}
    # 0.29 x 100 and 0.35 x 180 are 28.999... and 62.999... in floating point: the caps are 29 and 63
    t, _ = allocate(100, {"Math": 0.5, "Coding": 0.5}, {"Math": 500, "Coding": 500}, limits={"Math": 0.29})
    assert t == {"Math": 29, "Coding": 71}
    t, _ = allocate(180, {"Math": 0.5, "Coding": 0.5}, {"Math": 500, "Coding": 500}, limits={"Math": 0.35})
    assert t["Math"] == 63
    assert sum(largest_remainder(10, {"a": 1, "b": 1, "c": 1}).values()) == 10


def test_minmax_runs_within_each_source():
    cats = np.array(["Reasoning"] * 4, dtype=object)
    d = np.array([0.0, 10.0, 100.0, 200.0])
    pref, _, info = compute_preference({"difficulty": d}, cats, "difficulty", groups=np.array([0, 0, 1, 1]))
    assert pref.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert set(info["minmax"]["difficulty"]) == {"0", "1"}


def test_per_source_limits_round_up_and_top_level_ones_are_not_dropped_silently(caplog):
    """A data entry's setfit_limits keep ceil(limit x sample_size) records of a category (the
    reference counts the float down while it is above 0); top-level limits with --proportions none
    cannot apply, which a warning says."""
    import logging

    from laser_fast.config import SelectOptions, SourceSpec
    from laser_fast.sampling.strata import apply_source_limits, plan_strata

    n = 40
    cats = np.array(["Math"] * 20 + ["Coding"] * 20, dtype=object)
    status = np.full(n, "candidate", dtype=object)
    pref = np.linspace(1.0, 0.0, n)
    for limit, size, kept in ((0.25, 10, 3), (0.29, 100, 29), (0.1, 30, 3)):
        spec = SourceSpec(path="x", sample_size=size, setfit_limits={"Math": limit})
        pool = apply_source_limits(status, np.zeros(n, dtype=np.int32), [spec], pref=pref, cats=cats, length=np.ones(n), seed=0)
        assert int(((pool.status == "candidate") & (cats == "Math")).sum()) == min(kept, 20), (limit, size)
    opts = SelectOptions(budget=10, proportions="none", setfit_limits={"Math": 0.1}).validate()
    with caplog.at_level(logging.WARNING):
        plan = plan_strata(cats, np.ones(n, dtype=bool), np.ones(n), opts)
    assert plan.targets == {"all": 10} and "Math=0.1" in caplog.text and "not applied" in caplog.text
