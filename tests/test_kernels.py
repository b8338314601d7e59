"""Every kernel against a plain numpy per-record loop on random ragged data."""
import numpy as np
import pytest

from laser_fast.runtime import kernels as K
from laser_fast.scorers.preference import RobustScaler
from laser_fast.scorers.preference import minmax as pref_minmax


def ragged(seed: int, n: int = 300, nan_rate: float = 0.05):
    rng = np.random.default_rng(seed)
    lens = rng.integers(0, 9, n)
    lens[:5] = 0  # several empty segments, including the first
    vals = rng.normal(size=int(lens.sum())) * 10
    vals[rng.random(vals.size) < nan_rate] = np.nan
    return vals, K.offsets_from_lengths(lens), lens


def loop(vals, off, fn, empty):
    out = []
    for i in range(len(off) - 1):
        seg = vals[off[i]:off[i + 1]]
        out.append(fn(seg) if seg.size else empty)
    return np.array(out, dtype=np.float64)


def nan_fn(fn, empty):
    def f(seg):
        seg = seg[~np.isnan(seg)]
        return fn(seg) if seg.size else empty
    return f


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segment_reductions_match_numpy(seed):
    vals, off, _ = ragged(seed)
    cases = [
        (K.segment_sum, np.sum, 0.0),
        (K.segment_mean, np.mean, np.nan),
        (K.segment_min, np.min, np.nan),
        (K.segment_max, np.max, np.nan),
    ]
    for kern, fn, empty in cases:
        np.testing.assert_allclose(kern(vals, off), loop(vals, off, fn, empty), rtol=1e-12, equal_nan=True)
        np.testing.assert_allclose(kern(vals, off, skipna=True), loop(vals, off, nan_fn(fn, empty), empty),
                                   rtol=1e-12, equal_nan=True)


def test_nan_propagates_and_empty_is_nan():
    v = np.array([1.0, np.nan, 3.0, 5.0])
    off = np.array([0, 2, 2, 4])
    assert np.isnan(K.segment_mean(v, off)[0]) and np.isnan(K.segment_min(v, off)[0])
    assert np.isnan(K.segment_mean(v, off)[1]) and K.segment_sum(v, off)[1] == 0.0
    assert K.segment_max(v, off)[2] == 5.0 and K.segment_min(v, off, skipna=True)[0] == 1.0


def test_bad_offsets_raise():
    with pytest.raises(ValueError):
        K.segment_sum(np.ones(3), np.array([0, 2]))
    with pytest.raises(ValueError):
        K.segment_sum(np.ones(3), np.array([0, 2, 1, 3]))


def test_step_min_mean_matches_loop():
    vals, off, _ = ragged(5, nan_rate=0.02)
    vals = np.abs(vals) / 30
    mn, mean = K.step_min_mean(vals, off)
    np.testing.assert_allclose(mn, loop(vals, off, np.min, np.nan), equal_nan=True)
    np.testing.assert_allclose(mean, loop(vals, off, np.mean, np.nan), equal_nan=True)


def test_expected_score_matches_softmax_loop():
    rng = np.random.default_rng(3)
    lp = rng.normal(size=(50, 6)) * 5
    lp[0] += 1000.0  # huge logits: must stay stable
    lp[1, 2] = -np.inf
    lp[2] = -np.inf  # nothing finite
    lp[3, 1] = np.nan
    values = np.arange(1, 7, dtype=np.float64)
    got = K.expected_score(lp, values)
    want = []
    for row in lp:
        if np.isnan(row).any() or not np.isfinite(row).any():
            want.append(np.nan)
            continue
        r = row - row[np.isfinite(row)].max()
        p = np.exp(r) / np.exp(r).sum()
        want.append(float((p * values).sum()))
    np.testing.assert_allclose(got, np.array(want), rtol=1e-12, equal_nan=True)
    assert np.all((got[np.isfinite(got)] >= 1) & (got[np.isfinite(got)] <= 6))
    # log-probabilities vs logits give the same expectation (renormalised over the score tokens)
    lse = np.log(np.exp(lp[4:]).sum(axis=1, keepdims=True) + 7.0)
    np.testing.assert_allclose(K.expected_score(lp[4:] - lse, values), got[4:], rtol=1e-10)


def test_ifd_ratio_matches_loop():
    rng = np.random.default_rng(4)
    n = 40
    cs, ds = rng.random(n) * 50, rng.random(n) * 50
    cc, dc = rng.integers(0, 20, n), rng.integers(0, 20, n)
    ds[0] = 0.0
    got = K.ifd_ratio(cs, cc, ds, dc)
    want = []
    for a, b, c, d in zip(cs, cc, ds, dc):
        if b == 0 or d == 0 or c / d <= 0:
            want.append(np.nan)
        else:
            want.append((a / b) / (c / d))
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_robust_scale_matches_preference_scaler():
    rng = np.random.default_rng(6)
    x = rng.normal(size=500)
    x[::17] = np.nan
    mask = rng.random(500) < 0.7
    sc = RobustScaler.fit(x[mask])
    np.testing.assert_allclose(K.robust_scale(x, mask), sc.transform(x), equal_nan=True)
    const = np.full(10, 2.0)
    np.testing.assert_allclose(K.robust_scale(const), np.zeros(10))


@pytest.mark.parametrize("labels", ["int", "str", "none"])
def test_minmax_per_group_matches_loop(labels):
    rng = np.random.default_rng(7)
    n = 400
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    g = rng.integers(0, 6, n)
    x[g == 5] = 3.0  # a constant group -> 1.0
    if labels == "str":
        gid = np.array([f"src{k}" for k in g], dtype=object)
    elif labels == "int":
        gid = g
    else:
        gid, g = None, np.zeros(n, dtype=int)
    got = K.minmax(x, gid)
    want = np.empty(n)
    for k in np.unique(g):
        sel = g == k
        want[sel] = pref_minmax(x[sel])
    np.testing.assert_allclose(got, want, equal_nan=True)
