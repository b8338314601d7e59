"""Step 3 before any stratum is sampled: candidates, per-source limits and oversampling, the
strata and their targets; and the output order of the selection."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from laser_fast.categories import CATEGORIES, DEFAULT_PROPORTIONS
from laser_fast.config import SelectOptions, SourceSpec
from laser_fast.errors import MissingScoreError
from laser_fast.sampling.allocate import allocate
from laser_fast.sampling.cluster import preference_order

logger = logging.getLogger(__name__)


def order_selection(sel: np.ndarray, order: str, *, seed: int, cats: np.ndarray, length: np.ndarray, difficulty: np.ndarray) -> np.ndarray:
    """Output order: ``shuffle`` (seeded), ``difficulty`` / ``length`` ascending, ``category``
    (curriculum by LASER category order), ``difficulty_category`` / ``length_category`` (sort,
    then group by category), or ``none`` (selection order)."""
    if sel.size == 0 or order == "none":
        return sel
    if order == "shuffle":
        return sel[np.random.default_rng(seed).permutation(sel.size)]
    out = sel
    if order.startswith("difficulty"):
        d = difficulty[out]
        if not np.isfinite(d).all():
            raise MissingScoreError("output order 'difficulty' needs the difficulty score for every selected record (scorer: difficulty)")
        out = out[np.argsort(d, kind="stable")]
    elif order.startswith("length"):
        out = out[np.argsort(length[out], kind="stable")]
    if order.endswith("category"):
        rank = {c: i for i, c in enumerate(CATEGORIES)}
        out = out[np.argsort(np.array([rank.get(c, len(rank)) for c in cats[out]]), kind="stable")]
    return out




# --------------------------------------------------------------------------------------
# candidates, per-source limits and oversampling, strata and targets
# --------------------------------------------------------------------------------------

def candidate_status(english: np.ndarray, length: np.ndarray, opts: SelectOptions, pref: np.ndarray | None = None,
                     duplicate: np.ndarray | None = None, contaminated: np.ndarray | None = None) -> np.ndarray:
    """Status per record before selection: ``candidate``, ``contaminated`` (holds a benchmark
    item, see :mod:`laser_fast.sampling.decontam`), ``duplicate`` (repeats an earlier record, see
    :mod:`laser_fast.sampling.dedup`), ``non_english`` (unless
    ``keep_non_english``), ``too_long`` (over ``max_seq_length`` tokens) or ``not_scored`` (no
    preference: a scorer that ran on it gave no score)."""
    status = np.full(english.size, "candidate", dtype=object)
    if duplicate is not None:
        status[np.asarray(duplicate, dtype=bool)] = "duplicate"
    if contaminated is not None:
        status[np.asarray(contaminated, dtype=bool)] = "contaminated"
    if not opts.keep_non_english:
        status[(status == "candidate") & ~english] = "non_english"
    if opts.max_seq_length:
        status[(status == "candidate") & (length > opts.max_seq_length)] = "too_long"
    if pref is not None:
        status[(status == "candidate") & ~np.isfinite(np.asarray(pref, dtype=np.float64))] = "not_scored"
    return status


def source_specs(inputs: list[dict], specs: list[SourceSpec]) -> list[SourceSpec | None]:
    """Spec per input index (CLI paths come first and carry no per-source options)."""
    out: list[SourceSpec | None] = [None] * len(inputs)
    offset = len(inputs) - len(specs)
    for i, s in enumerate(specs):
        out[offset + i] = s
    return out


@dataclass
class Pool:
    """The pool after per-source limits and oversampling: pool row -> record row (``row_map``),
    which copy of its record each row is (``copy``: 0 for the original), and the record status
    (``source_limit`` marks records a source's limits dropped)."""

    row_map: np.ndarray
    copy: np.ndarray
    status: np.ndarray


def apply_source_limits(status: np.ndarray, src_index: np.ndarray, specs: list[SourceSpec | None], *, pref: np.ndarray,
                        cats: np.ndarray, length: np.ndarray, seed: int) -> Pool:
    """Per-source pre-selection (``sample_size``, ``token_size``, ``setfit_limits``: best by
    preference first) and oversampling (a source's candidates repeated, best first), as the
    reference's ``data:`` entries do."""
    status = status.copy()
    n = status.size
    copy_rows: list[np.ndarray] = [np.arange(n)]
    for si, spec in enumerate(specs):
        rows = np.flatnonzero((src_index == si) & (status == "candidate"))
        if spec is None or rows.size == 0:
            continue
        if spec.sample_size is not None or spec.token_size is not None or spec.setfit_limits:
            order = rows[preference_order(pref[rows], seed)]
            keep = []
            limits = None
            size = spec.sample_size if spec.sample_size is not None else len(order)
            if spec.setfit_limits:  # the reference counts limit x sample_size down while above 0: ceil(limit x size)
                limits = {c: math.ceil(round(v * size, 9)) for c, v in spec.setfit_limits.items()}
            used_tokens = 0
            for r in order:
                if spec.sample_size is not None and len(keep) >= spec.sample_size:
                    break
                if spec.token_size is not None and used_tokens >= spec.token_size:
                    break
                if limits is not None and cats[r] in limits:  # categories not listed are not limited
                    if limits[cats[r]] <= 0:
                        continue
                    limits[cats[r]] -= 1
                keep.append(r)
                used_tokens += int(length[r])
            dropped = np.setdiff1d(rows, np.asarray(keep, dtype=np.int64))
            status[dropped] = "source_limit"
        if spec.oversampling and spec.oversampling != 1.0:
            rows = np.flatnonzero((src_index == si) & (status == "candidate"))
            rows = rows[preference_order(pref[rows], seed)] if rows.size else rows
            whole = int(spec.oversampling)
            extra_rows = [rows] * max(whole - 1, 0) + [rows[: int(rows.size * (spec.oversampling - whole))]]
            copy_rows += [e for e in extra_rows if e.size]
    row_map = np.concatenate(copy_rows)
    copy_idx = np.concatenate([np.full(r.size, i, dtype=np.int32) for i, r in enumerate(copy_rows)])
    return Pool(row_map=row_map, copy=copy_idx, status=status)


@dataclass
class StrataPlan:
    """The strata (pool rows per category, or one stratum ``all``), their proportions, what each
    holds (records or tokens) and the targets the budget was allocated into."""

    strata: dict[str, np.ndarray]
    proportions: dict[str, float]
    available: dict[str, int]
    targets: dict[str, int]
    moves: list
    budget: int
    unit_tokens: bool


def plan_strata(cats: np.ndarray, candidate: np.ndarray, length: np.ndarray, opts: SelectOptions) -> StrataPlan:
    """Split the candidates into strata and allocate the budget (records or tokens) over them
    (see :func:`laser_fast.sampling.allocate.allocate`)."""
    unit_tokens = opts.budget is None
    budget = int(opts.token_budget if unit_tokens else opts.budget)
    if opts.proportions == "none":
        strata = {"all": np.flatnonzero(candidate)}
        props = {"all": 1.0}
    else:
        strata = {c: np.flatnonzero(candidate & (cats == c)) for c in CATEGORIES}
        if opts.proportions == "natural":
            tot = max(int(candidate.sum()), 1)
            props = {c: strata[c].size / tot for c in CATEGORIES}
        else:
            props = dict(opts.proportions or DEFAULT_PROPORTIONS)
    available = {c: int(length[r].sum()) if unit_tokens else int(r.size) for c, r in strata.items()}
    limits = opts.setfit_limits if opts.proportions != "none" else None
    if opts.setfit_limits and limits is None:
        logger.warning("setfit_limits (%s) cap categories' shares of the budget, but --proportions none selects from one stratum: "
                       "they are not applied. Use --proportions natural (or shares) with them, or per-source setfit_limits in a config",
                       ", ".join(f"{c}={v}" for c, v in opts.setfit_limits.items()))
    targets, moves = allocate(budget, {c: props.get(c, 0.0) for c in strata}, available, limits)
    placed = sum(targets.values())
    if placed < budget:
        unit = "tokens" if unit_tokens else "records"
        flag = "--token-budget" if unit_tokens else "--budget"
        total = sum(available.values())
        why = (f"the candidates hold only {total} {unit}" if placed >= total else
               f"the categories with a share (proportions and limits) hold only {placed} of the {total} candidate {unit}")
        logger.warning("%s %d is more than the pool can give: %s, so %d %s are selected. Lower %s, add data, or widen "
                       "--proportions (e.g. natural)", flag, budget, why, placed, unit, flag)
    return StrataPlan(strata=strata, proportions=props, available=available, targets=targets, moves=moves, budget=budget, unit_tokens=unit_tokens)
