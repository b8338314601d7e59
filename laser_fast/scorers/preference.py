"""Step 2 (combine): robust scaling, dedicated-quality routing, min-max, and the preference per strategy.

The arithmetic follows the LASER reference exactly:

1. ``quality``, ``complexity``, ``if_quality``, ``process_reward`` and ``code_quality`` are scaled
   robustly: ``(x - median) / (q99 - q1)``, with median and the 1-99 percentile range fitted over
   the records of the categories where that metric is relevant (see :func:`metric_relevant`).
   A zero range scales by 1 (as scikit-learn's RobustScaler does). Missing values are left out
   of the fit (the reference reads them as 0.0 there, which shifts the median towards 0).
2. For ``dedicated_quality`` and ``combination`` the quality is routed by category: Generation and
   Brainstorming take ``if_quality``, Math ``process_reward``, Coding ``code_quality``, every other
   category the general ``quality``.
3. ``quality``, ``complexity`` and ``difficulty`` are min-max scaled to [0, 1] over the records
   that have them, within each source (the reference combines scores per dataset entry); a
   constant column becomes 1.0: it carries no preference.
4. The preference per strategy: ``random`` uniform noise from the seed, ``longest`` the token count
   of the last response, ``deita`` quality x complexity, ``difficulty``, ``quality`` (general),
   ``dedicated_quality`` (routed), ``combination`` routed quality x difficulty.

Missing values are NaN. A strategy that needs a metric the records do not have raises
:class:`~laser_fast.errors.MissingScoreError` naming the metric, its scorer and the category.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from laser_fast.categories import CATEGORIES
from laser_fast.errors import MissingScoreError
from laser_fast.metrics import (  # noqa: F401 - the metric tables live in the registry; importable from here as before
    DEDICATED_QUALITY,
    METRIC_ALIASES,
    METRIC_SCORER,
    METRICS,
    MINMAX_METRICS,
    ROBUST_METRICS,
    STRATEGIES,
    canonical_strategy,
    metric_relevant,
    required_metrics,
)
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats


@dataclass
class RobustScaler:
    """Median / (q_hi - q_lo) scaler fitted on finite values."""

    center: float
    scale: float

    @classmethod
    def fit(cls, values: np.ndarray, q_lo: float = 1.0, q_hi: float = 99.0) -> RobustScaler:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(0.0, 1.0)
        lo, med, hi = np.percentile(v, [q_lo, 50.0, q_hi])
        scale = float(hi - lo)
        return cls(float(med), scale if scale > 0 else 1.0)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.center) / self.scale


def minmax(values: np.ndarray) -> np.ndarray:
    """Min-max scale finite values to [0, 1]; NaN stays NaN; a constant column becomes 1.0."""
    v = np.asarray(values, dtype=np.float64).copy()
    finite = np.isfinite(v)
    if not finite.any():
        return v
    lo, hi = v[finite].min(), v[finite].max()
    v[finite] = (v[finite] - lo) / (hi - lo) if hi > lo else 1.0
    return v


def _require(metric: str, values: np.ndarray | None, mask: np.ndarray, strategy: str, categories: np.ndarray) -> np.ndarray:
    missing = mask.copy() if values is None else mask & ~np.isfinite(values)
    n = int(missing.sum())
    if n == 0:
        return values if values is not None else np.full(mask.shape, np.nan)
    cats = sorted({str(c) for c in categories[missing]})
    inf = int(np.isinf(values[missing]).sum()) if values is not None else 0
    what = f"missing for {n} record(s)" if not inf else f"missing or infinite ({inf} infinite) for {n} record(s)"
    raise MissingScoreError(
        f"strategy '{strategy}' needs the metric '{metric}' (scorer: {METRIC_SCORER.get(metric, metric)}) "
        f"but it is {what} of categories {', '.join(cats)}. Let a scoring profile compute it "
        f"(--profile lite or paper, or --scorers NAME), provide it as an input column "
        f"or in a score file keyed by data_id (--scores FILE), import the reference's analysis folder "
        f"(--analysis-dir DIR), or choose another --strategy (e.g. 'longest' or 'random', which need no model scores)"
    )


def compute_preference(
    scores: dict[str, np.ndarray],
    categories: np.ndarray,
    strategy: str,
    *,
    seed: int = 0,
    fit_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    not_scored: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """Combine raw scores into one preference per record.

    Args:
        scores: metric name -> float array (n,), NaN where missing.
        categories: category name per record, shape (n,).
        strategy: a strategy name (reference variants accepted).
        seed: seeds the ``random`` strategy.
        fit_mask: records used to fit the robust scalers (default: all).
        groups: source id per record; min-max scaling runs within each source, as the reference
            combines scores per dataset entry (its robust scalers are fitted over all sources).
            None = one group.
        not_scored: records a scorer ran on but could not score: a metric missing there does not
            raise; their preference is NaN (the selection leaves them out) and ``info["not_scored"]``
            counts them.

    Returns:
        ``(preference, scaled, info)``: preference (n,) float64; the scaled ``quality``,
        ``complexity`` and ``difficulty`` columns actually used; and fitting facts for the manifest.

    Raises:
        MissingScoreError: a needed metric is absent for some records.

    Example:
        >>> import numpy as np
        >>> p, _, _ = compute_preference({"last_resp_length": np.array([3., 9.])},
        ...                              np.array(["Math", "Coding"]), "longest")
        >>> p.tolist()
        [3.0, 9.0]
    """
    strategy = canonical_strategy(strategy)
    categories = np.asarray(categories, dtype=object)
    n = len(categories)
    fit_mask = np.ones(n, dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    info: dict = {"strategy": strategy, "robust_scalers": {}, "minmax": {}}
    skip = np.zeros(n, dtype=bool) if not_scored is None else np.asarray(not_scored, dtype=bool)
    everyone = ~skip

    if strategy == "random":
        return np.random.default_rng(seed).random(n), {}, info
    if strategy == "longest":
        v = _require("last_resp_length", scores.get("last_resp_length"), everyone, strategy, categories)
        return np.asarray(v, dtype=np.float64), {}, info

    # 1. robust scaling fitted on relevant records
    scaled: dict[str, np.ndarray] = {}
    for m in ROBUST_METRICS:
        if m not in scores:
            continue
        rel = np.array([metric_relevant(c, m) for c in categories], dtype=bool) & fit_mask
        sc = RobustScaler.fit(scores[m][rel])
        info["robust_scalers"][m] = {"center": sc.center, "scale": sc.scale, "fitted_on": int(rel.sum())}
        scaled[m] = sc.transform(scores[m])
    if "difficulty" in scores:
        scaled["difficulty"] = np.asarray(scores["difficulty"], dtype=np.float64)

    # 2. route dedicated quality by category
    if strategy in ("dedicated_quality", "combination"):
        quality = np.full(n, np.nan)
        for cat in list(CATEGORIES) + sorted({str(c) for c in categories} - set(CATEGORIES)):
            mask = categories == cat
            if not mask.any():
                continue
            metric = DEDICATED_QUALITY.get(cat, "quality")
            v = _require(metric, scaled.get(metric), mask & ~skip, strategy, categories)
            quality[mask] = v[mask]
        scaled["quality"] = quality

    for m in required_metrics(strategy):
        scaled[m] = _require(m, scaled.get(m), everyone, strategy, categories)

    # 3. min-max to [0, 1]
    used = {}
    group_ids = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
    for m in MINMAX_METRICS:
        if m in scaled:
            from laser_fast.runtime.kernels import minmax as grouped_minmax

            out = grouped_minmax(scaled[m], group_ids)  # numba, one pass over all groups (same values as minmax per group)
            info["minmax"][m] = {}
            for g in np.unique(group_ids):
                sel = group_ids == g
                v = scaled[m][sel]
                fin = np.isfinite(v)
                if fin.any():
                    info["minmax"][m][str(g)] = {"min": float(v[fin].min()), "max": float(v[fin].max())}
            used[m] = out

    # 4. preference
    if strategy == "deita":
        pref = used["quality"] * used["complexity"]
    elif strategy == "difficulty":
        pref = used["difficulty"]
    elif strategy in ("quality", "dedicated_quality"):
        pref = used["quality"]
    else:  # combination
        pref = used["quality"] * used["difficulty"]
    pref = np.asarray(pref, dtype=np.float64)
    if skip.any():
        pref = pref.copy()
        pref[skip & ~np.isfinite(pref)] = np.nan
        info["not_scored"] = int((skip & ~np.isfinite(pref)).sum())
    return pref, used, info


PREFERENCE = StageSpec("preference", "laser_fast.scorers.preference:preference_stage", reads=("category", "_source_index", "<metrics>", "_not_scored", "duplicate_of", "contaminated_by"),
                       writes=("preference", "<metric>_scaled"), resources=Resources(num_cpus=1, row_wise=False))


def preference_stage(records, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """The preference per record for ``opts.strategy`` (:func:`compute_preference`), scaled per
    source (``_source_index``); ``columns`` holds ``category`` and the metric columns.

    Returns:
        ``preference`` and ``<metric>_scaled`` columns; stats: what :func:`compute_preference` reports.
    """
    cols = columns or {}
    scores = {k: v for k, v in cols.items() if k in METRICS}
    n = records.height
    src = records["_source_index"].to_numpy() if "_source_index" in records.columns else np.zeros(n, dtype=np.int32)
    from laser_fast.scorers.stage import excluded_rows

    not_scored = cols.get("_not_scored")
    d = excluded_rows(cols, n)
    if d is not None:  # duplicates and benchmark items were not scored: their preference is NaN, nothing is missing
        not_scored = d if not_scored is None else np.asarray(not_scored, dtype=bool) | d
        # and scores given with the data for them do not shape the scaling of the others
        scores = {k: np.where(d, np.nan, np.asarray(v, dtype=np.float64)) for k, v in scores.items()}
    pref, scaled, info = compute_preference(scores, cols["category"], opts.strategy, seed=opts.seed, groups=src,
                                            not_scored=not_scored)
    out = {"preference": pref, **{f"{m}_scaled": v for m, v in scaled.items()}}
    stats = StageStats("preference")
    stats.update(info)
    return StageResult(out, stats)
