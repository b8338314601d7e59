"""Exact greedy diversity filter: the compiled core against a plain numpy loop."""
from __future__ import annotations

import signal

import numpy as np
import pytest

from laser_fast import _core
from laser_fast.sampling.greedy import greedy_diverse


def clustered(n: int, d: int, seed: int = 0, centers: int = 50, unit: bool = True) -> np.ndarray:
    """Points around random unit centres with noise of several scales (no exact ties)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    label = rng.integers(0, centers, n)
    scale = rng.choice(np.array([0.03, 0.1, 0.3, 0.6, 1.2], dtype=np.float32), n)
    x = c[label] + scale[:, None] * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    x = x.astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference(x: np.ndarray, min_distance: float, order=None, budget=None) -> np.ndarray:
    """The plain loop: accept iff cosine distance to every accepted row > min_distance. The
    distances are taken in float64: a float32 dot product's rounding depends on the BLAS numpy
    calls (numpy 1.24's put a pair of the d=8 case at 0.0009999871, which is 0.0010000436)."""
    order = range(len(x)) if order is None else order
    kept: list[int] = []
    x = np.asarray(x, dtype=np.float64)
    rows = np.empty_like(x)
    for i in order:
        if budget is not None and len(kept) >= budget:
            break
        if not kept or np.all(1.0 - rows[: len(kept)] @ x[i] > min_distance):
            rows[len(kept)] = x[i]
            kept.append(int(i))
    return np.array(kept, dtype=np.int64)


@pytest.fixture(scope="module", params=[64, 384])
def data(request) -> np.ndarray:
    return clustered(1500 if request.param == 64 else 1200, request.param, seed=request.param)


@pytest.mark.parametrize("min_distance", [0.02, 0.1, 0.3, 0.6])
def test_matches_reference(data, min_distance):
    got = greedy_diverse(data, min_distance=min_distance)
    want = reference(data, min_distance)
    assert got.dtype == np.int64
    assert 1 < len(want) < len(data)  # the threshold actually filters
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_thread_count_does_not_change_result(data, num_threads):
    want = reference(data, 0.1)
    np.testing.assert_array_equal(greedy_diverse(data, min_distance=0.1, num_threads=num_threads), want)


@pytest.mark.parametrize("block_size", [0, 1, 3, 7, 64, 5000])
def test_block_size_does_not_change_result(block_size):
    x = clustered(300 if block_size < 5 else 700, 40, seed=5)  # d: not a multiple of the lanes
    want = reference(x, 0.15)
    got = _core.greedy_diverse(x, min_distance=0.15, block_size=block_size)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 13, 17])
def test_small_dimensions(d):
    x = clustered(400, d, seed=d)
    for md in (0.001, 0.05, 0.5):
        np.testing.assert_array_equal(greedy_diverse(x, min_distance=md), reference(x, md))


@pytest.mark.parametrize("min_distance", [0.02, 0.1, 0.3, 0.6])
def test_float16_input(min_distance):
    x16 = clustered(1000, 64, seed=3).astype(np.float16)
    x32 = normalise(x16.astype(np.float32))  # the same converted + normalised matrix
    np.testing.assert_array_equal(
        greedy_diverse(x16, min_distance=min_distance), reference(x32, min_distance)
    )


def test_custom_order(data):
    order = np.random.default_rng(7).permutation(len(data))
    for md in (0.1, 0.3):
        got = greedy_diverse(data, min_distance=md, order=order)
        np.testing.assert_array_equal(got, reference(data, md, order=order))
    # a subset of the rows, as a Python list of ints
    subset = [int(i) for i in order[: len(order) // 3]]
    np.testing.assert_array_equal(
        greedy_diverse(data, min_distance=0.1, order=subset), reference(data, 0.1, order=subset)
    )
    # other integer dtypes
    np.testing.assert_array_equal(
        greedy_diverse(data, min_distance=0.1, order=order.astype(np.int32)),
        reference(data, 0.1, order=order),
    )


def test_budget(data):
    full = reference(data, 0.1)
    for budget in (0, 1, 5, 255, 256, 257, len(full) - 1, len(full), len(full) + 10):
        got = greedy_diverse(data, min_distance=0.1, budget=budget)
        np.testing.assert_array_equal(got, full[:budget])
    order = np.arange(len(data))[::-1].copy()
    np.testing.assert_array_equal(
        greedy_diverse(data, min_distance=0.3, order=order, budget=17),
        reference(data, 0.3, order=order, budget=17),
    )


def test_extreme_scales_are_normalised():
    x = clustered(200, 32, seed=9)
    y = x.copy()
    y[3] *= 1e30  # float32 norm overflows
    y[7] *= 1e-30  # float32 norm underflows to zero
    np.testing.assert_array_equal(greedy_diverse(y, min_distance=0.2), greedy_diverse(x, min_distance=0.2))


def test_non_unit_input_is_normalised():
    raw = clustered(1000, 64, seed=11, unit=False)
    raw *= np.random.default_rng(1).uniform(0.1, 10.0, size=(len(raw), 1)).astype(np.float32)
    before = raw.copy()
    got = greedy_diverse(raw, min_distance=0.1)
    np.testing.assert_array_equal(got, reference(normalise(raw), 0.1))
    np.testing.assert_array_equal(raw, before)  # the caller's array is untouched


def test_memmap_input(tmp_path, data):
    path = tmp_path / "emb.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    np.testing.assert_array_equal(greedy_diverse(ro, min_distance=0.1), reference(data, 0.1))


def test_non_contiguous_input(data):
    x = np.asfortranarray(data)
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.1), reference(data, 0.1))


def test_tiny_inputs():
    one = np.array([[3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(greedy_diverse(one), [0])
    empty = np.zeros((0, 8), dtype=np.float32)
    out = greedy_diverse(empty)
    assert out.dtype == np.int64 and out.shape == (0,)
    assert greedy_diverse(one, order=[]).shape == (0,)
    assert greedy_diverse(one, budget=0).shape == (0,)


def test_thresholds_at_the_ends():
    x = clustered(300, 16, seed=2)
    # min_distance 2: nothing is farther than 2, only the first candidate is kept
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=2.0), [0])
    # min_distance 0: distinct rows are all kept
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.0), reference(x, 0.0))
    # repeated rows are dropped by any small positive threshold
    dup = np.vstack([x, x[:10]])
    got = greedy_diverse(dup, min_distance=1e-4)
    np.testing.assert_array_equal(got, reference(dup, 1e-4))
    assert got.max() < 300


def test_docstring_example():
    x = np.array([[1, 0], [0.999, 0.04], [0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.1), [0, 2])
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.1, order=[2, 1, 0], budget=1), [2])


def test_progress_callback_is_called():
    x = clustered(2000, 32, seed=4)
    seen = []
    got = _core.greedy_diverse(x, min_distance=0.1, block_size=256, progress=lambda v, a: seen.append((v, a)))
    np.testing.assert_array_equal(got, reference(x, 0.1))
    assert len(seen) == 8 and seen[-1] == (2000, len(got))
    assert all(v1 < v2 for (v1, _), (v2, _) in zip(seen, seen[1:]))
    # show_progress=True goes through a tqdm bar and gives the same result
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.1, show_progress=True), got)


def test_callback_exception_propagates():
    x = clustered(1000, 16, seed=6)

    def boom(visited, accepted):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _core.greedy_diverse(x, min_distance=0.1, block_size=100, progress=boom)


def test_keyboard_interrupt_propagates():
    x = clustered(3000, 16, seed=8)

    def interrupt(visited, accepted):
        signal.raise_signal(signal.SIGINT)

    # Python's own Ctrl-C handler, whatever an earlier test in this process left installed
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _core.greedy_diverse(x, min_distance=0.1, block_size=128, progress=interrupt)
    finally:
        signal.signal(signal.SIGINT, old)


def test_dot_summation_order_matches_kernel():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 37)).astype(np.float32)
    assert abs(_core.dot(a, b) - float(a.astype(np.float64) @ b.astype(np.float64))) < 1e-4


def test_build_info():
    info = _core.build_info()
    assert isinstance(info["openmp"], bool)
    assert info["omp_max_threads"] >= 1
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["simd"], list)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"order": [0, 1, 1]}, "more than once"),
        ({"order": [0, 5]}, "out of range"),
        ({"order": [-1]}, "out of range"),
        ({"order": [[0, 1]]}, "1-D"),
        ({"order": [0.0, 1.0]}, "integer"),
        ({"order": [True, False]}, "integer"),
        ({"min_distance": -0.1}, r"\[0, 2\]"),
        ({"min_distance": 2.5}, r"\[0, 2\]"),
        ({"min_distance": float("nan")}, r"\[0, 2\]"),
        ({"min_distance": "0.1"}, "number"),
        ({"budget": -1}, "budget"),
        ({"budget": 1.5}, "budget"),
        ({"num_threads": -2}, "num_threads"),
    ],
)
def test_bad_arguments(kwargs, match):
    x = clustered(5, 8, seed=1)
    with pytest.raises(ValueError, match=match):
        greedy_diverse(x, **kwargs)


def test_bad_embeddings():
    x = clustered(6, 8, seed=1)
    x[4] = 0.0
    with pytest.raises(ValueError, match="row 4"):
        greedy_diverse(x)
    y = clustered(6, 8, seed=1)
    y[2, 3] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        greedy_diverse(y)
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        greedy_diverse(y, order=[0, 1])  # every row is checked, not only the candidates
    with pytest.raises(ValueError, match="2-D"):
        greedy_diverse(np.ones(8, dtype=np.float32))
    with pytest.raises(ValueError, match="float32 or float16"):
        greedy_diverse(np.ones((3, 8), dtype=np.int32))


def test_core_validates_too():
    x = clustered(5, 8, seed=1)
    with pytest.raises(ValueError, match="out of range"):
        _core.greedy_diverse(x, order=np.array([0, 9]))
    with pytest.raises(ValueError, match="duplicate"):
        _core.greedy_diverse(x, order=np.array([1, 1]))
    with pytest.raises(ValueError, match="min_distance"):
        _core.greedy_diverse(x, min_distance=3.0)


# --- cell index (method="cells" / "auto"): pruned == brute force == plain loop ---------------


def spread_clusters(n: int, d: int, seed: int = 0, centers: int = 40) -> np.ndarray:
    """Unit vectors around random unit centres, each centre with its own spread (tight clusters
    full of near-duplicates next to loose ones where nearly everything is kept)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    label = rng.integers(0, centers, n)
    spread = rng.choice(np.array([0.05, 0.15, 0.3, 0.6, 0.9], dtype=np.float32), centers)[label]
    x = c[label] + spread[:, None] * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return normalise(x)


def all_methods(x, min_distance, **kw):
    """Results of brute force, cells from the start, and auto switching early (core API)."""
    out = {}
    for method, extra in (("brute", {}), ("cells", {}), ("auto", {"switch_at": 40})):
        st: dict = {}
        out[method] = _core.greedy_diverse(x, min_distance=min_distance, method=method, stats=st, **extra, **kw)
        out[method + "_stats"] = st
    return out


@pytest.fixture(scope="module")
def spread_data() -> np.ndarray:
    return spread_clusters(4000, 48, seed=21)


@pytest.mark.parametrize("min_distance", [0.0, 1e-6, 0.01, 0.05, 0.15, 0.4, 1.0, 1.7])
def test_cells_match_brute_and_reference(spread_data, min_distance):
    want = reference(spread_data, min_distance)
    got = all_methods(spread_data, min_distance)
    for method in ("brute", "cells", "auto"):
        np.testing.assert_array_equal(got[method], want, err_msg=method)
    assert got["cells_stats"]["method"] == "cells" and got["brute_stats"]["method"] == "brute"
    if len(want) > 200:
        assert got["auto_stats"]["method"] == "cells" and got["auto_stats"]["switched_at"] >= 40


def test_cells_prune_most_pairs(spread_data):
    st: dict = {}
    got = greedy_diverse(spread_data, min_distance=0.1, method="cells", stats=st)
    np.testing.assert_array_equal(got, reference(spread_data, 0.1))
    assert st["cells"] > 1 and st["centroid_dots"] > 0
    assert 0 < st["pairs_scheduled"] < 0.5 * st["pairs_total"]  # the bound excludes most cells


def test_cells_float16_order_subset_budget(spread_data):
    x16 = spread_data.astype(np.float16)
    x32 = normalise(x16.astype(np.float32))
    for md in (0.02, 0.2):
        want = reference(x32, md)
        for method in ("brute", "cells", "auto"):
            np.testing.assert_array_equal(greedy_diverse(x16, min_distance=md, method=method), want)
    order = np.random.default_rng(3).permutation(len(spread_data))
    subset = order[: len(order) // 2]
    full = reference(spread_data, 0.1, order=order)
    for method in ("cells", "auto"):
        np.testing.assert_array_equal(greedy_diverse(spread_data, min_distance=0.1, order=order, method=method), full)
        np.testing.assert_array_equal(
            greedy_diverse(spread_data, min_distance=0.1, order=subset, method=method),
            reference(spread_data, 0.1, order=subset),
        )
        for budget in (1, 7, len(full) // 2, len(full) - 1, len(full) + 3):
            np.testing.assert_array_equal(
                _core.greedy_diverse(spread_data, min_distance=0.1, order=order, budget=budget, method=method, switch_at=30),
                full[:budget],
            )


def test_cells_duplicates():
    x = spread_clusters(1500, 24, seed=4)
    rng = np.random.default_rng(5)
    dup = np.vstack([x, x[rng.integers(0, len(x), 700)], x[:50], x[:50]])  # exact repeats
    order = rng.permutation(len(dup))
    for md in (1e-4, 0.05, 0.3):
        want = reference(dup, md, order=order)
        got = all_methods(dup, md, order=order)
        for method in ("brute", "cells", "auto"):
            np.testing.assert_array_equal(got[method], want, err_msg=f"{method} {md}")
    # min_distance 0: a repeat is kept or dropped by the rounding of x . x; every method agrees
    got = all_methods(dup, 0.0, order=order)
    np.testing.assert_array_equal(got["cells"], got["brute"])
    np.testing.assert_array_equal(got["auto"], got["brute"])


@pytest.mark.parametrize("d", [2, 3])
def test_cells_pairs_at_the_threshold(d):
    """Points on a circle spaced by exactly the threshold angle: many similarities lie within
    float rounding of the threshold, the case the bound's margins are there for."""
    rng = np.random.default_rng(d)
    out = []
    for md in (0.01, 0.1, 0.5):
        step = np.arccos(1.0 - md)
        ang = np.concatenate([np.arange(400) * step, rng.uniform(0, 2 * np.pi, 600)])
        x = np.zeros((len(ang), d))
        x[:, 0], x[:, 1] = np.cos(ang), np.sin(ang)
        if d == 3:
            x[:, 2] = rng.choice([0.0, 1e-4], len(ang))
        x = normalise(x)
        order = rng.permutation(len(x))
        got = all_methods(x, md, order=order)
        np.testing.assert_array_equal(got["cells"], got["brute"])
        np.testing.assert_array_equal(got["auto"], got["brute"])
        out.append(len(got["brute"]))
    assert min(out) > 1


def test_cells_non_unit_rows_core():
    """The core does not normalise; rows a little off unit length must not break exactness."""
    x = spread_clusters(3000, 32, seed=8)
    x *= np.random.default_rng(2).uniform(0.99, 1.01, (len(x), 1)).astype(np.float32)
    for md in (0.02, 0.2):
        got = all_methods(x, md)
        np.testing.assert_array_equal(got["cells"], got["brute"])
        np.testing.assert_array_equal(got["auto"], got["brute"])


@pytest.mark.parametrize("num_threads", [1, 2])
def test_cells_threads_and_block_sizes(spread_data, num_threads):
    want = reference(spread_data, 0.1)
    for bs, k in ((0, 0), (100, 1), (333, 64), (5000, 4000)):
        got = _core.greedy_diverse(spread_data, min_distance=0.1, method="cells", num_threads=num_threads, block_size=bs, n_cells=k)
        np.testing.assert_array_equal(got, want, err_msg=f"block {bs} cells {k}")
    small = spread_data[:500]  # one candidate per block: many tiny parallel regions, keep it short
    got = _core.greedy_diverse(small, min_distance=0.1, method="cells", num_threads=num_threads, block_size=1, n_cells=5)
    np.testing.assert_array_equal(got, reference(small, 0.1))


def test_cells_large_n():
    x = spread_clusters(20_000, 32, seed=13, centers=80)
    st: dict = {}
    got = greedy_diverse(x, min_distance=0.12, stats=st)  # auto
    np.testing.assert_array_equal(got, reference(x, 0.12))
    np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.12, method="brute"), got)
    assert st["method"] == "cells" and st["switched_at"] >= 2048


def test_cells_tiny_inputs():
    x = spread_clusters(5, 8, seed=1)
    for method in ("cells", "auto"):
        np.testing.assert_array_equal(greedy_diverse(x, min_distance=0.1, method=method), reference(x, 0.1))
        np.testing.assert_array_equal(greedy_diverse(x[:1], method=method), [0])
        np.testing.assert_array_equal(greedy_diverse(x, min_distance=2.0, method=method), [0])


def test_bad_method():
    x = spread_clusters(5, 8, seed=1)
    with pytest.raises(ValueError, match="method"):
        greedy_diverse(x, method="fast")
    with pytest.raises(ValueError, match="method"):
        _core.greedy_diverse(x, method="fast")
    with pytest.raises(ValueError, match="stats"):
        greedy_diverse(x, stats=[])
