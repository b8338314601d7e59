"""Per-category targets from proportions and a budget, summing exactly to the budget.

Rule (documented in the README): ideal shares ``proportion x budget`` are rounded down and the
remaining units go to the largest fractional parts (ties: the category order of LASER). A
category with fewer available units than its target keeps what it has, and its surplus is
handed to the categories that still have room, in proportion to their shares (same rounding),
repeated until the budget is placed or nothing has room. Categories with proportion 0 get
nothing and receive nothing. ``limits`` (fractions of the budget) cap categories further.
"""
from __future__ import annotations

import math


def largest_remainder(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split integer ``total`` in proportion to ``weights`` (>= 0), summing exactly to ``total``."""
    keys = list(weights)
    wsum = sum(weights.values())
    if total <= 0 or wsum <= 0:
        return {k: 0 for k in keys}
    ideal = {k: total * weights[k] / wsum for k in keys}
    out = {k: math.floor(ideal[k]) for k in keys}
    rest = total - sum(out.values())
    order = sorted(keys, key=lambda k: (-(ideal[k] - out[k]), keys.index(k)))
    for k in order[:rest]:
        out[k] += 1
    return out


def allocate(
    budget: int,
    proportions: dict[str, float],
    available: dict[str, int],
    limits: dict[str, float] | None = None,
) -> tuple[dict[str, int], list[dict]]:
    """Targets per category.

    Args:
        budget: total units (records or tokens) to place.
        proportions: category -> share (need not sum to 1; zero shares get nothing).
        available: category -> units available.
        limits: optional category -> maximum share of the budget (the reference's setfit_limits).

    Returns:
        ``(targets, moves)``: targets sum to ``min(budget, capacity)``; ``moves`` records each
        redistribution (``{"from", "surplus", "to"}``) for the manifest.

    Example:
        >>> allocate(10, {"Math": 0.5, "Coding": 0.5}, {"Math": 2, "Coding": 100})[0]
        {'Math': 2, 'Coding': 8}
    """
    cats = list(proportions)
    cap = {c: int(available.get(c, 0)) for c in cats}
    if limits:
        for c, lim in limits.items():
            if c in cap:
                cap[c] = min(cap[c], math.floor(round(lim * budget, 9)))  # 0.29 x 100 is 29, not 28.999...
    weights = {c: float(proportions[c]) for c in cats if proportions[c] > 0}
    targets = {c: 0 for c in cats}
    moves: list[dict] = []
    to_place = budget
    active = dict(weights)
    while to_place > 0 and active:
        share = largest_remainder(to_place, active)
        surplus = 0
        short = {}
        for c, t in share.items():
            room = cap[c] - targets[c]
            give = min(t, room)
            targets[c] += give
            if t > give:
                short[c] = t - give
                surplus += t - give
        to_place = surplus
        full = [c for c in active if targets[c] >= cap[c]]
        for c in full:
            active.pop(c)
        if surplus and short:
            moves.append({"from": short, "surplus": surplus, "to": sorted(active)})
        if surplus and not active:
            break
    return targets, moves
