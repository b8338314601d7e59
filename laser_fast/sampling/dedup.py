"""Duplicates before scoring (issue 19, first slice): records whose conversation repeats an
earlier one are left out of scoring and selection, each naming the copy it repeats.

Modes (``--dedup``, config ``dedup``):

* ``exact``: the same conversation, role by role and character by character (the default);
* ``normalized``: the same after Unicode NFKC, lower case, punctuation and symbols removed and
  whitespace runs collapsed (``"Hello,  World!"`` repeats ``"hello world"``);
* ``instruction``: the same user turns after that normalisation (the answers may differ);
* ``near``: near-copies by MinHash (128 permutations) over 5-word shingles of the normalised
  conversation, LSH in bands sized for the threshold (16 of 8 rows at 0.8, see :func:`lsh_rows`),
  then each candidate pair's estimated Jaccard similarity checked against ``--dedup-threshold``
  (default 0.8); groups are transitive;
* ``none``: nothing is removed.

Which copy stays (``--dedup-keep``, config ``dedup_keep``):

* ``best`` (the default): the copy with the highest preference. Copies of one conversation,
  character for character, are identical, so only the first of them is scored; the other members
  of a group (``normalized``, ``instruction`` and ``near`` copies: different texts) are scored,
  and after the preference step (:data:`DEDUP_BEST`) every member but the best names the kept one
  in ``duplicate_of``. Ties, and groups none of whose members has a preference (a ``random``
  strategy's preference is noise, so it keeps the first), keep the first copy in input order;
* ``first``: the first copy in input order, found before any model runs, so no copy is scored.

Keys of the other modes are two 64-bit hashes of the text computed in polars (column-wise, no
Python object per record); two different texts share both with a probability of about 2^-128 per
pair.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from laser_fast.config import DEDUP_KEEP, DEDUP_MODES  # noqa: F401 - the choices, importable from here
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats, named_rows


def normalized_text(e: pl.Expr) -> pl.Expr:
    """The text as ``normalized`` compares it: Unicode NFKC, lower case, punctuation and symbols
    dropped, whitespace runs collapsed (also what decontamination matches on)."""
    return (e.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]+", "")
            .str.replace_all(r"\s+", " ").str.strip_chars())


def dedup_keys(records: pl.DataFrame, mode: str) -> pl.DataFrame:
    """Two 64-bit hashes per record of what ``mode`` compares (columns ``k1``, ``k2``)."""
    msgs = pl.col("messages")
    pairs = "_rejected" in records.columns  # preference units: a copy repeats the rejected answer too
    if mode == "exact":  # the list of (role, content) structs hashed as it is
        key = pl.struct(msgs, pl.col("_rejected")) if pairs else msgs
        return records.select(key.hash(seed=1).alias("k1"), key.hash(seed=2).alias("k2"))
    if mode == "normalized":
        text = msgs.list.eval(pl.element().struct.field("role") + "\x1f" + normalized_text(pl.element().struct.field("content"))).list.join("\x1e")
        if pairs:
            text = text + "\x1d" + normalized_text(pl.col("_rejected"))
    elif mode == "instruction":
        text = pl.col("user_turns").list.eval(normalized_text(pl.element())).list.join("\x1e")
    else:
        raise ValueError(f"unknown dedup mode {mode!r}")
    return records.select(text.hash(seed=1).alias("k1"), text.hash(seed=2).alias("k2"))


def duplicate_groups(records: pl.DataFrame, mode: str, threshold: float = 0.8) -> np.ndarray:
    """Per record, the index of the first record of its group of copies (its own index when it
    repeats nothing); ``near``: see :func:`near_duplicate_groups` (``threshold``)."""
    n = records.height
    if mode == "none" or n == 0:
        return np.arange(n, dtype=np.int64)
    if mode == "near":
        return near_duplicate_groups(records, threshold)
    keys = dedup_keys(records, mode).with_row_index("i")
    return keys.select(pl.col("i").first().over(["k1", "k2"]))["i"].to_numpy().astype(np.int64)


def _named(records: pl.DataFrame, root: np.ndarray) -> np.ndarray:
    """The ``data_id`` of ``root[i]`` where it is not ``i`` (None elsewhere), as an object array."""
    out = np.full(root.size, None, dtype=object)
    dup = root != np.arange(root.size)
    if dup.any():
        out[dup] = np.asarray(records["data_id"].gather(root[dup]).to_list(), dtype=object)
    return out


def find_duplicates(records: pl.DataFrame, mode: str, threshold: float = 0.8) -> np.ndarray:
    """Per record, the ``data_id`` of the earlier copy it repeats (None for the first copy);
    ``near``: see :func:`find_near_duplicates` (``threshold``)."""
    return _named(records, duplicate_groups(records, mode, threshold))


def _per_origin(records: pl.DataFrame, dup: np.ndarray) -> dict[str, int]:
    is_dup = named_rows(dup)
    if not is_dup.any():
        return {}
    vals, cnt = np.unique(records["origin"].to_numpy()[is_dup].astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, cnt)}


DEDUP = StageSpec("dedup", "laser_fast.sampling.dedup:dedup_stage", reads=("messages", "user_turns", "data_id"),
                  writes=("duplicate_of", "dedup_group"), resources=Resources(num_cpus=1, row_wise=False))


def dedup_stage(records: pl.DataFrame, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """``duplicate_of`` per record (see :func:`find_duplicates`); stats: the mode and how many
    copies were found per source file.

    With ``dedup_keep="best"`` and a mode whose copies can differ (``normalized``,
    ``instruction``, ``near``), only the exact repeats are named here (they are never scored);
    ``dedup_group`` (the first member's index per record) lets :data:`DEDUP_BEST` pick the kept
    copy once preferences are known."""
    root = duplicate_groups(records, opts.dedup, opts.dedup_threshold)
    n_dup = int((root != np.arange(records.height)).sum())
    keep = opts.dedup_keep
    if keep == "first" or opts.dedup in ("none", "exact") or n_dup == 0:
        dup = _named(records, root)
        return StageResult({"duplicate_of": dup}, StageStats("dedup", mode=opts.dedup, keep=keep, duplicates=n_dup, per_origin=_per_origin(records, dup)))
    exact = _named(records, duplicate_groups(records, "exact"))
    return StageResult({"duplicate_of": exact, "dedup_group": root},
                       StageStats("dedup", mode=opts.dedup, keep=keep, duplicates=n_dup, per_origin=_per_origin(records, _named(records, root))))


def keep_best(root: np.ndarray, preference: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Per record, the index of the copy its group keeps: among the ``eligible`` members (those the
    selection could take), the one with the highest finite ``preference``, else the first eligible
    one in input order; the first member when none is eligible. ``root``: the first member's index
    per record (:func:`duplicate_groups`)."""
    n = root.size
    idx = np.arange(n)
    ok = np.ones(n, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    p = np.where(np.isfinite(preference) & ok, preference, -np.inf)
    order = np.lexsort((idx, -p, ~ok, root))  # by group, eligible first, best first, then input order
    r = root[order]
    starts = np.r_[True, r[1:] != r[:-1]]
    best = np.empty(n, dtype=np.int64)
    best[r[starts]] = order[starts]
    return best[root]


DEDUP_BEST = StageSpec("dedup_best", "laser_fast.sampling.dedup:dedup_best_stage",
                       reads=("dedup_group", "preference", "duplicate_of", "contaminated_by", "is_english", "inst_length", "resp_length"),
                       writes=("duplicate_of",), resources=Resources(num_cpus=1, row_wise=False))


def dedup_best_stage(records: pl.DataFrame, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """The kept copy of each group of copies (``dedup_keep="best"``, see the module notes): every
    other member's ``duplicate_of`` names it. Nothing to do when the dedup stage found no group
    whose members differ. Stats: how many groups keep a copy other than their first, and the
    copies left out per source file."""
    from laser_fast.metrics import canonical_strategy

    cols = columns or {}
    root = cols.get("dedup_group")
    if root is None:
        return StageResult({}, StageStats("dedup_best", ran=False))
    n = records.height
    noise = canonical_strategy(opts.strategy) == "random"  # not a preference: the first eligible copy stays
    pref = np.full(n, np.nan) if noise else np.asarray(cols["preference"], dtype=np.float64)
    # the copies the selection could take: a kept copy that is too long, in another language or
    # unscored would be dropped after its copies were, and the group lost
    from laser_fast.sampling.strata import candidate_status

    contaminated = cols.get("contaminated_by")
    english = cols.get("is_english")
    english = np.ones(n, dtype=bool) if english is None else np.asarray(english, dtype=bool)
    length = (np.asarray(cols["inst_length"]) + np.asarray(cols["resp_length"]) if "inst_length" in cols and "resp_length" in cols
              else np.zeros(n))
    eligible = candidate_status(english, length, opts, None if noise else pref,
                                contaminated=None if contaminated is None else named_rows(contaminated)) == "candidate"
    kept = keep_best(root, pref, eligible)
    dup = _named(records, kept)
    moved = int(((kept == np.arange(n)) & (root != np.arange(n))).sum())
    return StageResult({"duplicate_of": dup}, StageStats("dedup_best", ran=True, kept_not_first=moved, per_origin=_per_origin(records, dup)))


# --------------------------------------------------------------------------------------------
# near-duplicates: MinHash over word shingles, LSH bands, then the estimated Jaccard checked
# --------------------------------------------------------------------------------------------

#: MinHash defaults: 128 permutations (at 0.8, 16 LSH bands of 8 rows: see :func:`lsh_rows`);
#: 5-word shingles; pairs whose estimated Jaccard similarity (share of equal signature values) is
#: at least 0.8 are copies.
NEAR_PERMUTATIONS, NEAR_BANDS, NEAR_SHINGLE, NEAR_THRESHOLD = 128, 16, 5, 0.8
_MASK61 = np.uint64((1 << 61) - 1)
_NEAR_CHUNK = 20_000  # records whose shingles are built at once


def nfkc(texts: pl.Series) -> pl.Series:
    """Unicode NFKC of each text; texts of ASCII only are left as they are (NFKC does not change
    them), so a mostly English column skips most of the work."""
    wide = texts.str.contains(r"[^\x00-\x7F]").fill_null(False)
    if not wide.any():
        return texts
    return texts.scatter(wide.arg_true(), texts.filter(wide).str.normalize("NFKC"))


def _fmix64(k: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (spreads a polynomial's bits), in place on uint64."""
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xFF51AFD7ED558CCD)
    k ^= k >> np.uint64(33)
    k *= np.uint64(0xC4CEB9FE1A85EC53)
    k ^= k >> np.uint64(33)
    return k


def word_ngrams(texts: pl.Series, n: int, seed: int, *, short: bool = False) -> pl.DataFrame:
    """``(row, h)``: the 64-bit hash of every n-word sequence of each normalised text (the words
    of :func:`normalized_text`), in row order. ``short``: a text of fewer than n words gives one
    hash of all its words (otherwise none).

    Each word is hashed once by polars (``seed``); an n-gram's hash is a polynomial over its
    words' hashes mod 2^64 (then :func:`_fmix64`), so no n-word string is ever built."""
    t = nfkc(texts.cast(pl.String))
    words = (pl.DataFrame({"t": t}).with_row_index("row")
             .select("row", pl.col("t").str.to_lowercase().str.replace_all(r"[\p{P}\p{S}]+", "").str.replace_all(r"[^\S ]", " ")
                     .str.split(" ").alias("w"))
             .explode("w").filter(pl.col("w").is_not_null() & (pl.col("w") != "")))
    row = words["row"].to_numpy()
    wh = words["w"].hash(seed=seed).to_numpy()
    m = wh.size - n + 1
    if m > 0:
        g = wh[:m].copy()
        for i in range(1, n):  # the n words from each position; kept where the n-th is still in the same text
            g *= np.uint64(0x9E3779B97F4A7C15)
            g += wh[i:i + m]
        ok = row[n - 1:] == row[:m]
        out = pl.DataFrame({"row": row[:m][ok], "h": _fmix64(g[ok])}, schema={"row": pl.UInt32, "h": pl.UInt64})
    else:
        out = pl.DataFrame({"row": [], "h": []}, schema={"row": pl.UInt32, "h": pl.UInt64})
    if short:
        few = words.group_by("row").agg(pl.col("w").str.join(" ").alias("g"), pl.len().alias("k")).filter(pl.col("k") < n)
        out = pl.concat([out, few.select(pl.col("row").cast(pl.UInt32), pl.col("g").hash(seed=seed).alias("h"))])
    return out


def _shingles(records: pl.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(row, hash)`` of every k-word shingle of each record's conversation, each record's in one
    run (repeats kept: a minimum does not change when a value comes twice, so no sort or
    distinct pass is needed)."""
    text = records.select(pl.col("messages").list.eval(pl.element().struct.field("content")).list.join(" ").alias("t"))["t"]
    out = word_ngrams(text, k, 11, short=True)
    return out["row"].to_numpy(), out["h"].to_numpy()


def minhash_signatures(rows: np.ndarray, hashes: np.ndarray, n: int, perms: int = NEAR_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """(n, perms) uint64 MinHash signatures from ``(row, shingle hash)`` pairs (each row's pairs
    in one run, as :func:`word_ngrams` gives them): per
    permutation, the minimum over a record's shingles of ``(a * h + b) mod 2^61`` (random
    ``a``, ``b`` from ``seed``; rows without shingles keep 2^64-1). Computed by the compiled
    :func:`laser_fast.runtime.kernels.minhash_into`."""
    from laser_fast.runtime.kernels import minhash_into

    rng = np.random.default_rng(seed)
    a = rng.integers(1, (1 << 61) - 1, size=perms, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=perms, dtype=np.uint64)
    sig = np.full((n, perms), np.iinfo(np.uint64).max, dtype=np.uint64)
    minhash_into(hashes.astype(np.uint64) & _MASK61, rows, a, b, sig)
    return sig


def _chunk_signatures(part: pl.DataFrame, shingle: int, perms: int) -> tuple[np.ndarray, np.ndarray]:
    """``(signatures, rows that have shingles)`` of a chunk of records (:func:`minhash_signatures`)."""
    rows, hashes = _shingles(part, shingle)
    return minhash_signatures(rows, hashes, part.height, perms), rows


def band_keys(sig: np.ndarray, rows: int) -> np.ndarray:
    """(n, perms // rows) uint64: one key per LSH band of ``rows`` signature values (a polynomial
    over the band's values mod 2^64, then a 64-bit finaliser). Two records with equal bands get
    equal keys; unequal bands share a key with a probability of about 2^-64, and every candidate
    pair is checked on its whole signature anyway."""
    k = sig[:, 0::rows].copy()
    for j in range(1, rows):
        k *= np.uint64(0x9E3779B97F4A7C15)
        k += sig[:, j::rows]
    return _fmix64(k)


def _components(n: int, edges_a: np.ndarray, edges_b: np.ndarray) -> np.ndarray:
    """The smallest index of each record's connected component (label propagation)."""
    label = np.arange(n, dtype=np.int64)
    if edges_a.size == 0:
        return label
    while True:
        m = np.minimum(label[edges_a], label[edges_b])
        new = label.copy()
        np.minimum.at(new, edges_a, m)
        np.minimum.at(new, edges_b, m)
        new = new[new]  # jump to the label's own label
        if np.array_equal(new, label):
            return label
        label = new


def lsh_rows(threshold: float, perms: int = NEAR_PERMUTATIONS) -> int:
    """Rows per LSH band for ``threshold``: the most rows (fewest false candidates) whose S-curve
    midpoint (1/bands)^(1/rows) lies at least 0.05 below the threshold, so pairs at the threshold
    become candidates with probability 0.9 or more (0.8: 16 bands of 8; 0.5: 32 bands of 4)."""
    best = 1
    for r in (2, 4, 8, 16, 32):
        if perms % r == 0 and (r / perms) ** (1 / r) <= threshold - 0.05:
            best = r
    return best


def find_near_duplicates(records: pl.DataFrame, threshold: float = NEAR_THRESHOLD, **kw) -> np.ndarray:
    """Per record, the ``data_id`` of the first record of its group of near-copies (None for that
    first record and for records without one); see :func:`near_duplicate_groups`."""
    return _named(records, near_duplicate_groups(records, threshold, **kw))


def near_duplicate_groups(records: pl.DataFrame, threshold: float = NEAR_THRESHOLD, *, perms: int = NEAR_PERMUTATIONS,
                          bands: int | None = None, shingle: int = NEAR_SHINGLE) -> np.ndarray:
    """Per record, the index of the first record of its group of near-copies (its own index when
    it has none): pairs that share an LSH band and whose estimated Jaccard similarity of
    ``shingle``-word shingles is at least ``threshold``, grouped transitively."""
    n = records.height
    if n < 2:
        return np.arange(n, dtype=np.int64)
    r = perms // bands if bands else lsh_rows(threshold, perms)
    bands = perms // r
    # pass 1: per record one 64-bit key per LSH band (bands x 8 bytes: 128 B at the default, so
    # 1.3 GB at 10M records, where whole signatures would take 10 GB)
    keys = np.empty((n, bands), dtype=np.uint64)
    has = np.zeros(n, dtype=bool)  # a record without words has no signature: never a near-copy
    for s in range(0, n, _NEAR_CHUNK):  # shingles of a chunk of records at a time: memory stays bounded
        part = records.slice(s, _NEAR_CHUNK)
        sig, rows = _chunk_signatures(part, shingle, perms)
        keys[s:s + part.height] = band_keys(sig, r)
        has[s + rows] = True
    ea, eb = [], []
    idx = np.arange(n)
    for band in range(bands):
        _, first_idx, inv = np.unique(keys[:, band], return_index=True, return_inverse=True)
        f = first_idx[inv.ravel()]  # the first record in this record's bucket
        m = (f != idx) & has & has[f]
        if m.any():
            ea.append(f[m])
            eb.append(np.flatnonzero(m))
    del keys
    if not ea:
        return idx.astype(np.int64)
    a, b = np.concatenate(ea), np.concatenate(eb)
    pair = np.unique(np.stack([a, b], axis=1), axis=0)
    a, b = pair[:, 0], pair[:, 1]
    # pass 2: the whole signatures of the candidates only, to check each pair's estimated Jaccard
    need = np.unique(pair)
    sig = np.empty((need.size, perms), dtype=np.uint64)
    for s in range(0, need.size, _NEAR_CHUNK):
        part = records[need[s:s + _NEAR_CHUNK].tolist()]
        sig[s:s + part.height] = _chunk_signatures(part, shingle, perms)[0]
    ia, ib = np.searchsorted(need, a), np.searchsorted(need, b)
    sim = np.empty(a.size)
    for s in range(0, a.size, 1 << 20):  # pairs compared in blocks: no (pairs, perms) temporary of the whole set
        sim[s:s + (1 << 20)] = (sig[ia[s:s + (1 << 20)]] == sig[ib[s:s + (1 << 20)]]).mean(axis=1)
    keep = sim >= threshold
    return _components(n, a[keep], b[keep])
