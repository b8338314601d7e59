"""Strata, targets and the output order."""
from __future__ import annotations

import logging

import numpy as np

from laser_fast.categories import CATEGORIES
from laser_fast.errors import MissingScoreError

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


