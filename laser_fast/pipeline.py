"""The LASER selection run: ingest -> classify -> score -> preference -> stratified selection.

:func:`run_selection` does the work and returns a :class:`SelectionRun` (the pool table with
every decision, the selected rows in output order, and the manifest); :func:`select` is the
Python API on polars; :func:`write_outputs` writes ``selected.jsonl|parquet``,
``decisions.parquet``, ``manifest.json`` and ``report.html`` atomically.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import polars as pl

from ._version import __version__
from .allocate import allocate
from .categories import CATEGORIES, DEFAULT_PROPORTIONS
from .config import SelectOptions, SourceSpec
from .errors import ConfigError, LaserError, MissingScoreError
from .preference import compute_preference

logger = logging.getLogger(__name__)

SCORE_COLUMNS = ("quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality", "inst_length", "resp_length", "last_resp_length",
                 # raw outputs of the model scorers (the metrics above may be filled from them by the profile)
                 "lite_quality", "lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss", "process_reward_min", "process_reward_mean")


def default_workdir() -> str:
    return os.environ.get("LASER_FAST_WORKDIR") or str(Path.home() / ".cache" / "laser_fast")


@dataclass
class SelectionRun:
    """Everything a run decided (see :func:`run_selection`)."""

    pool: pl.DataFrame  #: one row per pool record (after oversampling) with all decisions
    selected_rows: np.ndarray  #: row indices into ``pool`` in output order
    manifest: dict
    options: SelectOptions
    timings: dict = field(default_factory=dict)
    #: drops the resident pages of a pool held in a mapped file (see :mod:`laser_fast.memory`)
    release: Any = field(default=None, repr=False, compare=False)

    def selected_frame(self) -> pl.DataFrame:
        return output_frame(self.pool, self.selected_rows, release=self.release)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far in MiB (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(r / 2**20 if sys.platform == "darwin" else r / 1024, 1)
    except (ImportError, OSError):  # pragma: no cover - no resource module
        return None


class _Timer:
    """Seconds per stage, and the process's peak resident memory when each stage ended."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.peak_mb: dict[str, float | None] = {}
        self.after_stage: list[Any] = []  # called when any stage ends (e.g. drop mapped pages)

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        logger.info("stage %s ...", name)
        try:
            yield
        finally:
            for hook in self.after_stage:
                hook()
            self.t[name] = round(self.t.get(name, 0.0) + time.perf_counter() - t0, 3)
            self.peak_mb[name] = peak_rss_mb()


def _iter_column(records: pl.DataFrame, name: str, chunk: int = 65536):
    """The values of one column, converted to Python 65,536 at a time (a million-row list of
    strings is a large transient)."""
    col = records[name]
    for s in range(0, col.len(), chunk):
        yield from col.slice(s, chunk).to_list()


def _hash_strings(parts: Iterable[str], prefix: str) -> str:
    from .embed import text_hash

    h = hashlib.sha256(prefix.encode())
    for s in parts:
        h.update(text_hash(s))
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- ingest
def _map_records(recs: pl.DataFrame, workdir: str, timer: _Timer) -> tuple[pl.DataFrame, Any]:
    """The records moved to a mapped file in the workdir when they are large (see
    :mod:`laser_fast.memory`); the pages each stage reads are dropped when it ends. Returns the
    records and the function that drops their pages (None when they stay on the heap)."""
    from .memory import release_free_heap, spill_frame

    recs, handle = spill_frame(recs, Path(workdir) / "tmp")
    if handle is not None:
        timer.after_stage.append(handle.release_pages)
    # what a stage freed goes back to the OS before the next one allocates
    timer.after_stage.append(release_free_heap)
    release_free_heap()
    return recs, handle.release_pages if handle is not None else None


def load_pool(data, opts: SelectOptions) -> tuple[pl.DataFrame, list[dict], list[dict]]:
    """Read the inputs into one records table; returns (records, skipped, input facts)."""
    from . import ingest

    inputs: list[dict] = []
    skipped: list[dict] = []
    if isinstance(data, (pl.DataFrame,)) or type(data).__name__ == "Table":
        recs, sk = ingest.records_from_frame(data, origin=opts.name or "dataframe", schema=opts.schema, skip_invalid=opts.skip_invalid)
        inputs.append({"path": None, "kind": type(data).__name__, "rows": recs.height, "skipped": len(sk)})
        return recs, sk, inputs
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    specs: list[SourceSpec] = []
    for d in data or []:
        specs.append(d if isinstance(d, SourceSpec) else SourceSpec(path=str(d)))
    specs += list(opts.sources)
    if not specs:
        raise ConfigError("no input: give input files (JSONL, JSONL.gz or Parquet) or a config with data: entries")
    frames = []
    from .scores import file_sha256

    for spec in specs:
        recs, sk = ingest.read_records([spec.path], schema=spec.schema or opts.schema, origin=spec.name, skip_invalid=opts.skip_invalid, show_progress=opts.show_progress)
        skipped += sk
        inputs.append(
            {
                "path": str(spec.path),
                "name": spec.name or (recs["origin"][0] if recs.height else None),
                "sha256": file_sha256(spec.path),
                "bytes": os.path.getsize(spec.path),
                "rows": recs.height,
                "skipped": len(sk),
                "schema": recs["schema"][0] if recs.height else None,
            }
        )
        frames.append(recs.with_columns(pl.lit(len(frames), dtype=pl.Int32).alias("_source_index")))
    recs = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
    dup = recs.filter(pl.col("data_id").is_duplicated())
    if dup.height:
        first = dup["data_id"][0]
        locs = recs.filter(pl.col("data_id") == first)["source"].to_list()
        raise LaserError(f"data_id '{first}' appears in more than one record ({', '.join(locs[:3])}): data_ids must be unique across inputs; rename them or drop the field so ids are hashed from content")
    return recs, skipped, inputs


# --------------------------------------------------------------------------- steps
def _cache_path(workdir: str, stage: str, key: str) -> Path:
    return Path(workdir) / "cache" / f"{stage}-{key}.npz"


def classify_pool(records: pl.DataFrame, known: np.ndarray | None, opts: SelectOptions, workdir: str, facts: dict) -> tuple[np.ndarray, np.ndarray]:
    """Category and confidence per record: given categories are kept, the rest classified
    (cached in the work directory by classifier fingerprint and content)."""
    n = records.height
    cats = np.full(n, None, dtype=object) if known is None else known.copy()
    conf = np.where(cats != None, 1.0, np.nan)  # noqa: E711
    todo = np.flatnonzero(cats == None)  # noqa: E711
    facts["given"] = int(n - todo.size)
    facts["classified"] = int(todo.size)
    if todo.size == 0:
        return cats, conf
    from .classify import classify_conversations, load_classifier

    clf = load_classifier(opts.classifier, device=opts.device)
    facts["classifier"] = clf.fingerprint
    turns = records["user_turns"].to_list()
    sub = [turns[i] for i in todo]
    key = _hash_strings(["\x1f".join(t) for t in sub], clf.fingerprint)
    cp = _cache_path(workdir, "categories", key)
    if cp.exists():
        z = np.load(cp, allow_pickle=False)
        labels, c = z["labels"].astype(object), z["conf"]
        facts["cache_hit"] = True
    else:
        labels, c = classify_conversations(sub, classifier=clf, batch_size=opts.batch_size, show_progress=opts.show_progress)
        labels = np.asarray(labels, dtype=object)
        cp.parent.mkdir(parents=True, exist_ok=True)
        tmp = cp.with_name(cp.name + ".tmp.npz")
        np.savez(tmp, labels=labels.astype(str), conf=np.asarray(c, dtype=np.float64))
        os.replace(tmp, cp)
        facts["cache_hit"] = False
    cats[todo] = labels
    conf[todo] = c
    return cats, conf


def english_mask(records: pl.DataFrame, workdir: str | None = None) -> np.ndarray:
    """Whether each record's instruction looks English (:func:`laser_fast.classify.is_english`).

    With a ``workdir`` the mask is cached under ``cache/language-<key>.npz``, keyed by every
    instruction's hash and the package version: the heuristic runs in Python at ~9 us a text
    (9 s at a million records), hashing the texts for the key takes about a tenth of that."""
    from .classify import is_english

    if workdir is None:
        return np.asarray(is_english(_iter_column(records, "instruction")), dtype=bool)
    key = _hash_strings(_iter_column(records, "instruction"), f"language|v{__version__}|{records.height}")
    return _cached_arrays(workdir, "language", key, lambda: {"english": english_mask(records)})["english"]


def _cached_arrays(workdir: str, stage: str, key: str, compute) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, from ``cache/<stage>-<key>.npz`` when a run stored them there
    (written to a temporary file and renamed)."""
    cp = _cache_path(workdir, stage, key)
    if cp.exists():
        z = np.load(cp)
        return {k: z[k] for k in z.files}
    out = compute()
    cp.parent.mkdir(parents=True, exist_ok=True)
    tmp = cp.with_name(cp.name + ".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, cp)
    return out


def token_scores(records: pl.DataFrame, opts: SelectOptions, workdir: str) -> dict[str, np.ndarray]:
    from .scores import TokenCounter

    tc = TokenCounter(opts.tokenizer)
    key = _hash_strings(itertools.chain(_iter_column(records, "data_id"), _iter_column(records, "response")), tc.fingerprint + str(records.height))
    return _cached_arrays(workdir, "tokens", key, lambda: tc.score(records))


def model_scores(records: pl.DataFrame, cats: np.ndarray, scores: dict[str, np.ndarray], opts: SelectOptions, workdir: str) -> tuple[dict[str, np.ndarray], dict]:
    """Run the scorers the strategy needs (profile + explicit ``opts.scorers``) through the cache.

    Fills the missing metrics in ``scores`` in place (input columns and score files win) and
    returns the raw scorer outputs (``lite_quality``, ``ifd``, ...) for the outputs, plus facts.
    """
    from .scorers.run import ScorerSettings, apply_scores, build_scorer, canonical_profile, metric_sources, needed_scorers, check_scorers, score_records

    if opts.profile == "none":
        return {}, {"profile": "none"}
    profile = canonical_profile(opts.profile)
    sources = metric_sources(profile, opts.scorers)
    plan = needed_scorers(opts.strategy, cats, scores, sources)
    for name in opts.scorers:  # named scorers always run, on every record they apply to
        if name != "tokens":
            plan[name] = (np.ones(records.height, dtype=bool), plan.get(name, (None, []))[1])
    settings = ScorerSettings(models=dict(opts.scorer_models), device=opts.device, batch_tokens=opts.batch_tokens,
                              judge_url=opts.judge_url, tokenizer=opts.tokenizer)
    raw: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {"profile": profile, "metric_sources": {m: f"{s}:{c}" for m, (s, c) in sorted(sources.items())}, "scorers": []}
    built = {name: build_scorer(name, settings) for name in sorted(plan)}
    # every model and endpoint that has work to do is checked before any work starts
    check_scorers(records, cats, built, workdir, {k: v[0] for k, v in plan.items()})
    for name, scorer in built.items():
        mask, fills = plan[name]
        out, f = score_records(records, cats, scorer, workdir, mask=mask, show_progress=opts.show_progress)
        f["fills"] = sorted({m for m, _, _ in fills})
        facts["scorers"].append(f)
        for metric, col, rows in fills:
            apply_scores(scores, metric, out[col], rows)
        for col, v in out.items():
            if col in raw:
                gap = ~np.isfinite(raw[col])
                raw[col][gap] = v[gap]
            else:
                raw[col] = v
    return raw, facts


def run_scoring(data, opts: SelectOptions, *, workdir: str | None = None) -> tuple[pl.DataFrame, dict]:
    """Score ``data`` with the profile's scorers (or ``opts.scorers``) through the score cache.

    Categories come from the input (``category`` / ``setfit_label``) or the task classifier.

    Returns:
        ``(scores, facts)``: a table with ``data_id``, ``category`` and one float column per
        scorer output (NaN where a scorer does not apply to the record's category), and run facts.
    """
    from .scorers.run import PROFILE_METRICS, ScorerSettings, build_scorer, canonical_profile, check_scorers, score_records
    from .scores import scores_from_extra

    workdir = workdir or default_workdir()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    from .memory import limit_heap_arenas

    limit_heap_arenas()
    timer = _Timer()
    with timer.stage("ingest"):
        recs, skipped, inputs = load_pool(data, opts)
        recs, _ = _map_records(recs, workdir, timer)
    if recs.height == 0:
        raise LaserError("the inputs hold no valid records (all were skipped); nothing to score")
    profile = canonical_profile(None if opts.profile in (None, "none") else opts.profile)
    names = list(opts.scorers) or ["tokens"] + sorted({s for s, _ in PROFILE_METRICS[profile].values()})
    facts: dict[str, Any] = {"profile": profile, "scorers": [], "inputs": inputs, "skipped": len(skipped)}
    with timer.stage("classify"):
        _, known_cats = scores_from_extra(recs)
        cfacts: dict[str, Any] = {}
        cats, _ = classify_pool(recs, known_cats, opts, workdir, cfacts)
        facts["classification"] = cfacts
    settings = ScorerSettings(models=dict(opts.scorer_models), device=opts.device, batch_tokens=opts.batch_tokens,
                              judge_url=opts.judge_url, tokenizer=opts.tokenizer)
    cols: dict[str, Any] = {"data_id": recs["data_id"], "category": pl.Series("category", [str(c) for c in cats], dtype=pl.Utf8)}
    built = {name: build_scorer(name, settings) for name in names}
    check_scorers(recs, cats, built, workdir)  # every model and endpoint with work to do, before any work starts
    for name, scorer in built.items():
        with timer.stage(f"score_{name}"):
            out, f = score_records(recs, cats, scorer, workdir, show_progress=opts.show_progress)
        facts["scorers"].append(f)
        for col, v in out.items():
            if col not in cols:
                cols[col] = pl.Series(col, v, dtype=pl.Float64)
    facts["timings_s"] = dict(timer.t)
    return pl.DataFrame(cols), facts


def _take_budget(order: np.ndarray, target: int, lengths: np.ndarray | None) -> np.ndarray:
    """First ``target`` entries of ``order`` (records), or, with token ``lengths``, every entry in
    order that still fits into ``target`` tokens."""
    if lengths is None:
        return order[:target]
    ln = lengths[order]
    keep = np.zeros(order.size, dtype=bool)
    used = 0
    for i, l in enumerate(ln):
        if used + l <= target:
            keep[i] = True
            used += l
            if used == target:
                break
    return order[keep]


class StoreRows:
    """Rows ``idx`` of a (memory-mapped) float16 store, read on demand.

    A stand-in for the gathered array that never holds all of it as float16: slicing
    (``view[a:b]``) reads just those rows, and ``np.asarray(view, dtype)`` fills one array of the
    requested dtype chunk by chunk. Rows are read in ascending file order and the memmap's pages
    are handed back to the kernel after each read (``MADV_DONTNEED``), so reading a stratum does
    not leave the store resident in this process. PCA streams over it in chunks; greedy converts
    it once, straight to float32.
    """

    ndim = 2

    def __init__(self, arr: np.ndarray, idx: np.ndarray, *, chunk_rows: int = 4096):
        self.arr = arr
        self.idx = np.asarray(idx, dtype=np.int64)
        self.chunk_rows = int(chunk_rows)
        self.shape = (int(self.idx.size), int(arr.shape[1]))
        self.dtype = np.dtype(np.float16) if arr.dtype == np.float16 else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, rows: np.ndarray, out: np.ndarray) -> None:
        from .embed import release_pages

        order = np.argsort(rows, kind="stable")
        for s in range(0, rows.size, self.chunk_rows):
            o = order[s : s + self.chunk_rows]
            out[o] = self.arr[rows[o]]
            release_pages(self.arr)  # the file pages just read leave this process's RSS

    def subset(self, rows: np.ndarray) -> StoreRows:
        """The rows ``rows`` of this view, as a view (nothing is read)."""
        return StoreRows(self.arr, self.idx[np.asarray(rows, dtype=np.int64)], chunk_rows=self.chunk_rows)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice):
            raise TypeError("StoreRows supports row slices (view[a:b]) and np.asarray(view)")
        rows = self.idx[key]
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        self._read(rows, out)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, dtype=self.dtype if dtype is None else dtype)
        self._read(self.idx, out)
        return out


def gather_rows(arr: np.ndarray, idx: np.ndarray, *, chunk_rows: int = 16384) -> np.ndarray:
    """Rows ``idx`` of a (memory-mapped) float16 store as one float16 array, in ``idx``'s order
    (see :class:`StoreRows`, which reads the same rows without holding them all)."""
    return np.asarray(StoreRows(arr, idx, chunk_rows=chunk_rows))


def select_stratum(
    emb_fn,
    pref: np.ndarray,
    target: int,
    *,
    mode: str,
    strategy: str,
    opts: SelectOptions,
    lengths: np.ndarray | None,
    min_distance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Select within one stratum. Returns (chosen local indices in selection order,
    selected_by per chosen, cluster label per local row (-1 = none), stats)."""
    from .cluster import cluster_select_detailed, preference_order

    n = pref.size
    labels = np.full(n, -1, dtype=np.int64)
    stats: dict[str, Any] = {"mode": mode, "n": int(n), "target": int(target)}
    if target <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object), labels, stats
    by_pref = preference_order(pref, opts.seed)
    if mode == "none":
        chosen = _take_budget(by_pref, target, lengths)
        return chosen, np.full(chosen.size, "top", dtype=object), labels, stats
    if lengths is None:
        k = min(target, n)
    else:
        mean_len = max(float(lengths.mean()), 1.0)
        k = int(min(n, max(1, round(target / mean_len))))
    stats["k"] = int(k)
    emb = emb_fn()
    if mode in ("kmeans", "kmeans+greedy"):
        thr = None if strategy == "random" else opts.threshold_percentile
        res = cluster_select_detailed(emb, pref, k, threshold_percentile=thr, seed=opts.seed, num_threads=opts.num_threads)
        labels = res.labels
        stats.update(res.stats)
        stats["threshold"] = res.threshold
        best = np.zeros(n, dtype=bool)
        best[res.order[: res.n_cluster_best]] = True
        if mode == "kmeans":
            chosen = _take_budget(res.order, target, lengths)
            by = np.where(best[chosen], "cluster_best", "fill").astype(object)
            return chosen, by, labels, stats
        order = res.order
    else:
        order = by_pref
        best = np.zeros(n, dtype=bool)
    from .greedy import greedy_diverse

    acc = greedy_diverse(emb, min_distance=min_distance, order=order, budget=(target if lengths is None else None), num_threads=opts.num_threads, show_progress=opts.show_progress)
    chosen = _take_budget(acc, target, lengths)
    stats["greedy_accepted"] = int(acc.size)
    by = np.where(best[chosen], "cluster_best", "greedy").astype(object)
    return chosen, by, labels, stats


# --------------------------------------------------------------------------- main
def run_selection(data, opts: SelectOptions, *, workdir: str | None = None) -> SelectionRun:
    """Run the three LASER steps over ``data`` (paths, a polars DataFrame or an Arrow table).

    Raises:
        LaserError (and subclasses): bad input, bad options, missing scores or models.
    """
    opts.validate()
    workdir = workdir or default_workdir()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    from .memory import limit_heap_arenas

    limit_heap_arenas()
    timer = _Timer()
    facts: dict[str, Any] = {}

    with timer.stage("ingest"):
        recs, skipped, inputs = load_pool(data, opts)
        recs, release = _map_records(recs, workdir, timer)
    if recs.height == 0:
        raise LaserError("the inputs hold no valid records (all were skipped); nothing to select")
    n = recs.height

    from .scores import import_reference_analysis, merge_score_files, scores_from_extra

    with timer.stage("scores_load"):
        scores, known_cats = scores_from_extra(recs)
        score_files = []
        if opts.scores:
            scores, known_cats, score_files = merge_score_files(recs, opts.scores, scores, known_cats)
        if opts.analysis_dir:
            scores, known_cats, rep = import_reference_analysis(recs, opts.analysis_dir, scores, known_cats)
            score_files += rep

    with timer.stage("language"):
        english = english_mask(recs, workdir)

    with timer.stage("classify"):
        cfacts: dict[str, Any] = {}
        cats, conf = classify_pool(recs, known_cats, opts, workdir, cfacts)
        facts["classification"] = cfacts

    with timer.stage("tokens"):
        tok = token_scores(recs, opts, workdir)
        for k, v in tok.items():
            if k in scores:
                gap = ~np.isfinite(scores[k])
                scores[k][gap] = v[gap]
            else:
                scores[k] = v

    with timer.stage("model_scores"):
        raw_scores, sfacts = model_scores(recs, cats, scores, opts, workdir)
        facts["scoring"] = sfacts

    src_index = recs["_source_index"].to_numpy() if "_source_index" in recs.columns else np.zeros(n, dtype=np.int32)
    with timer.stage("preference"):
        pref, scaled, pinfo = compute_preference(scores, cats, opts.strategy, seed=opts.seed, groups=src_index)
        facts["preference"] = pinfo

    status = np.full(n, "candidate", dtype=object)
    if not opts.keep_non_english:
        status[~english] = "non_english"
    length = scores["inst_length"] + scores["resp_length"]
    if opts.max_seq_length:
        status[(status == "candidate") & (length > opts.max_seq_length)] = "too_long"

    # per-source pre-selection and oversampling (reference data: entries)
    from .cluster import preference_order

    specs = list(opts.sources) if opts.sources else []
    copy_rows: list[np.ndarray] = [np.arange(n)]
    all_specs = _source_specs(inputs, specs)
    for si, spec in enumerate(all_specs):
        rows = np.flatnonzero((src_index == si) & (status == "candidate"))
        if spec is None or rows.size == 0:
            continue
        if spec.sample_size is not None or spec.token_size is not None or spec.setfit_limits:
            order = rows[preference_order(pref[rows], opts.seed)]
            keep = []
            limits = None
            size = spec.sample_size if spec.sample_size is not None else len(order)
            if spec.setfit_limits:
                limits = {c: int(v * size) for c, v in spec.setfit_limits.items()}
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
            rows = rows[preference_order(pref[rows], opts.seed)] if rows.size else rows
            whole = int(spec.oversampling)
            extra_rows = [rows] * max(whole - 1, 0) + [rows[: int(rows.size * (spec.oversampling - whole))]]
            copy_rows += [e for e in extra_rows if e.size]
    row_map = np.concatenate(copy_rows)  # pool row -> record row
    copy_idx = np.concatenate([np.full(r.size, i, dtype=np.int32) for i, r in enumerate(copy_rows)])
    N = row_map.size
    p_cats = cats[row_map]
    p_pref = pref[row_map]
    p_status = status[row_map].copy()
    p_len = length[row_map]

    # strata and targets
    cand = p_status == "candidate"
    unit_tokens = opts.budget is None
    budget = int(opts.token_budget if unit_tokens else opts.budget)
    if opts.proportions == "none":
        strata = {"all": np.flatnonzero(cand)}
        props = {"all": 1.0}
    else:
        strata = {c: np.flatnonzero(cand & (p_cats == c)) for c in CATEGORIES}
        if opts.proportions == "natural":
            tot = max(int(cand.sum()), 1)
            props = {c: strata[c].size / tot for c in CATEGORIES}
        else:
            props = dict(opts.proportions or DEFAULT_PROPORTIONS)
    available = {c: int(p_len[r].sum()) if unit_tokens else int(r.size) for c, r in strata.items()}
    limits = opts.setfit_limits if opts.proportions != "none" else None
    targets, moves = allocate(budget, {c: props.get(c, 0.0) for c in strata}, available, limits)
    for c, r in strata.items():
        if targets.get(c, 0) == 0 and r.size:
            p_status[r] = "zero_target"

    # embeddings: loaded on first use, only when a stratum must choose among more records than its target
    emb_info: dict[str, Any] = {}
    emb_cache: dict[str, Any] = {}

    def embeddings_for(rows: np.ndarray):
        if "emb" not in emb_cache:
            with timer.stage("embed"):
                from .embed import TEXT_COLUMNS, EmbeddingStore, RecordTexts

                emb_rows = np.flatnonzero(status == "candidate")  # record rows (copies share them)
                # only the text columns, and no row copy when every record is a candidate
                sub = recs.select([c for c in TEXT_COLUMNS if c in recs.columns])
                if emb_rows.size != n:
                    sub = sub[emb_rows]
                store = EmbeddingStore(workdir)
                # the texts are built and hashed 65k at a time, never all at once
                arr, info = store.get(RecordTexts(sub, opts.embed_field), model=opts.embedding_model, field=opts.embed_field, batch_size=opts.batch_size, batch_tokens=opts.batch_tokens, device=opts.device, show_progress=opts.show_progress)
                pos = np.full(n, -1, dtype=np.int64)
                pos[emb_rows] = np.arange(emb_rows.size)
                emb_cache["emb"], emb_cache["pos"] = arr, pos
                emb_info.update(info)
        arr, pos = emb_cache["emb"], emb_cache["pos"]
        return StoreRows(arr, pos[row_map[rows]])

    selected_by = np.full(N, None, dtype=object)
    cluster = np.full(N, -1, dtype=np.int64)
    sel_order: list[np.ndarray] = []
    strata_stats = {}
    from .memory import release_free_heap
    from .progress import progress_bar

    with timer.stage("select"), progress_bar(total=len(strata), desc=f"select ({opts.mode})", unit="stratum", show=opts.show_progress) as bar:
        for c, rows in strata.items():
            bar.update(1)
            t = targets.get(c, 0)
            if t <= 0 or rows.size == 0:
                strata_stats[c] = {"n": int(rows.size), "target": int(t), "selected": 0}
                continue
            if available[c] <= t and opts.mode != "greedy" and opts.mode != "kmeans+greedy":
                # everything fits: no clustering needed
                chosen = rows[np.argsort(-p_pref[rows], kind="stable")]
                by = np.full(chosen.size, "top", dtype=object)  # everything fits: taken by preference
                st = {"mode": opts.mode, "n": int(rows.size), "target": int(t), "note": "stratum smaller than its target: all taken"}
                labels = None
            else:
                loc, by, labels, st = select_stratum(
                    lambda rows=rows: embeddings_for(rows),
                    p_pref[rows],
                    t,
                    mode=opts.mode,
                    strategy=opts.strategy,
                    opts=opts,
                    lengths=p_len[rows] if unit_tokens else None,
                    min_distance=opts.min_distance,
                )
                chosen = rows[loc]
                if labels is not None:
                    cluster[rows] = labels
                del loc, labels
                release_free_heap()  # the stratum's working set, before the next one allocates
            selected_by[chosen] = by
            p_status[chosen] = "selected"
            st["selected"] = int(chosen.size)
            if unit_tokens:
                st["selected_tokens"] = int(p_len[chosen].sum())
            if chosen.size < (t if not unit_tokens else 1) and not unit_tokens:
                logger.warning("%s: selected %d of a target of %d (%s mode ran out of candidates)", c, chosen.size, t, opts.mode)
            strata_stats[c] = st
            sel_order.append(chosen)
    rest = (p_status == "candidate")
    p_status[rest] = "not_selected"
    selected = np.concatenate(sel_order) if sel_order else np.zeros(0, dtype=np.int64)

    # output order
    with timer.stage("order"):
        selected = order_selection(selected, opts.order, seed=opts.seed, cats=p_cats, length=p_len, difficulty=scores.get("difficulty", np.full(n, np.nan))[row_map])

    # the pool table with every decision
    pool = recs.select([c for c in recs.columns if c != "_source_index"])[row_map.tolist()] if N != n else recs.select([c for c in recs.columns if c != "_source_index"])
    # one column at a time, straight from the arrays (float arrays are shared with polars, not
    # copied, when no record is oversampled; strings from the object arrays' str values, not a fixed-width copy)
    ident = N == n

    def per_row(a: np.ndarray) -> np.ndarray:
        return a if ident else a[row_map]

    cols: dict[str, Any] = {
        "copy": lambda: copy_idx,
        "category": lambda: pl.Series(p_cats.tolist(), dtype=pl.Utf8),
        "category_confidence": lambda: per_row(conf),
        "is_english": lambda: per_row(english),
        "preference": lambda: p_pref,
        "status": lambda: pl.Series(p_status.tolist(), dtype=pl.Utf8),
        "selected_by": lambda: pl.Series(selected_by.tolist(), dtype=pl.Utf8),
        "cluster": lambda: np.where(cluster >= 0, cluster, -1),
    }
    for m in SCORE_COLUMNS:
        if m in scores:
            cols[m] = lambda m=m: per_row(scores[m])
        elif m in raw_scores:
            cols[m] = lambda m=m: per_row(raw_scores[m])
    for m in scaled:
        cols[f"{m}_scaled"] = lambda m=m: per_row(scaled[m])
    pool = pool.with_columns([pl.Series(k, make()) for k, make in cols.items()])
    pool = pool.with_columns(pl.when(pl.col("cluster") < 0).then(None).otherwise(pl.col("cluster")).alias("cluster"))

    def counts(mask):
        vals, cnt = np.unique(p_cats[mask].astype(str), return_counts=True)
        return {str(a): int(b) for a, b in zip(vals, cnt)}

    from .cluster import faiss_device

    manifest = {
        "laser_fast": __version__,
        "name": opts.name,
        "seed": opts.seed,
        "options": opts.to_dict(),
        "inputs": inputs,
        "skipped_invalid": {"count": len(skipped), "records": skipped},
        "score_sources": score_files,
        "budget": {"unit": "tokens" if unit_tokens else "records", "value": budget},
        "proportions": props,
        "targets": targets,
        "redistribution": moves,
        "counts": {
            "pool": counts(np.ones(N, dtype=bool)),
            "non_english_excluded": counts(p_status == "non_english"),
            "too_long_excluded": counts(p_status == "too_long"),
            "source_limit_excluded": counts(p_status == "source_limit"),
            "eligible": counts(cand),
            "selected": counts(p_status == "selected"),
            "total_pool": int(N),
            "total_selected": int(selected.size),
        },
        "strata": strata_stats,
        "embedding": emb_info or None,
        "devices": {"embedding": emb_info.get("device") if emb_info else None, "kmeans": faiss_device() if opts.mode in ("kmeans", "kmeans+greedy") else None, "torch_cuda": _torch_cuda()},
        "versions": _versions(),
        **facts,
        "timings_seconds": timer.t,
        "peak_rss_mb_after_stage": timer.peak_mb,
    }
    return SelectionRun(pool=pool, selected_rows=selected, manifest=manifest, options=opts, timings=timer.t, release=release)


def _torch_cuda() -> bool | None:
    """Whether torch sees a GPU, asked only when a stage already imported torch (importing it
    only for the manifest costs ~200 MB of memory); None when torch was not loaded."""
    import sys

    torch = sys.modules.get("torch")
    return bool(torch.cuda.is_available()) if torch is not None else None


def _source_specs(inputs: list[dict], specs: list[SourceSpec]) -> list[SourceSpec | None]:
    """Spec per input index (CLI paths come first and carry no per-source options)."""
    out: list[SourceSpec | None] = [None] * len(inputs)
    offset = len(inputs) - len(specs)
    for i, s in enumerate(specs):
        out[offset + i] = s
    return out


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


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("numpy", "polars", "torch", "transformers", "sentence-transformers", "faiss-cpu", "faiss-gpu", "numba"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------- outputs
#: selected records turned into Python objects at a time when writing the outputs
OUTPUT_CHUNK_ROWS = 4096
#: rows of ``decisions.parquet`` written at a time when the pool lives in a mapped file
DECISION_SLICE_ROWS = 131072


def iter_output_rows(pool: pl.DataFrame, rows: np.ndarray, *, chunk_rows: int = OUTPUT_CHUNK_ROWS, release=None) -> Iterator[dict]:
    """Selected records as dicts (``messages``, every input field, then provenance columns),
    converted ``chunk_rows`` at a time so a large selection never lives as Python objects at once;
    ``release()`` (when given) runs after each chunk (see :class:`SelectionRun`)."""
    score_cols = [c for c in SCORE_COLUMNS if c in pool.columns]
    for s in range(0, rows.size, chunk_rows):
        sub = pool[rows[s : s + chunk_rows].tolist()]
        for r in sub.iter_rows(named=True):
            d: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
            extra = json.loads(r["extra"]) if r["extra"] else {}
            for k, v in extra.items():
                if k not in d:
                    d[k] = v
            d["data_id"] = r["data_id"]
            d["origin"] = r["origin"]
            d["category"] = r["category"]
            d["category_confidence"] = r["category_confidence"]
            for c in score_cols:
                d[c] = r[c]
            d["preference"] = r["preference"]
            d["cluster"] = r["cluster"]
            d["selected_by"] = r["selected_by"]
            if r["copy"]:
                d["copy"] = r["copy"]
            d["input_location"] = r["source"]
            yield d
        if release is not None:
            release()  # the pages this chunk's gather and rows touched


def output_rows(pool: pl.DataFrame, rows: np.ndarray) -> list[dict]:
    """Selected records as dicts: ``messages``, every input field, then provenance columns."""
    return list(iter_output_rows(pool, rows))


def output_frame(pool: pl.DataFrame, rows: np.ndarray, *, release=None) -> pl.DataFrame:
    """The selected records as a frame: the same columns, order and types as a frame built from
    :func:`output_rows`, but assembled column by column from ``pool`` (a frame built from a
    list of nested dicts costs several kB per row); only the ``extra`` JSON goes through Python.
    The selected texts are copied out of ``pool`` (see :func:`laser_fast.memory.gather_owned`,
    which calls ``release``)."""
    from .memory import gather_owned

    if not rows.size:
        return pl.DataFrame({"messages": [], "data_id": [], "category": [], "preference": [], "selected_by": []})
    sub = gather_owned(pool.select([c for c in pool.columns if c not in ("instruction", "response", "user_turns", "responses")]), rows, release=release)
    extras = [json.loads(e) if e else {} for e in sub["extra"].to_list()]
    score_cols = [c for c in SCORE_COLUMNS if c in sub.columns]
    fixed = {"data_id": sub["data_id"], "origin": sub["origin"], "category": sub["category"], "category_confidence": sub["category_confidence"],
             **{c: sub[c] for c in score_cols}, "preference": sub["preference"], "cluster": sub["cluster"], "selected_by": sub["selected_by"]}
    copy = sub["copy"].to_numpy()
    # column order as a frame from dicts has it: every key in order of first appearance, where each
    # record's keys are messages, its extra fields, the fixed columns (copy only when not 0), input_location
    order: dict[str, None] = {"messages": None}
    seen: set[tuple] = set()
    for ex, cp in zip(extras, copy.tolist()):
        sig = (tuple(ex), bool(cp))
        if sig in seen:
            continue
        seen.add(sig)
        order.update(dict.fromkeys([k for k in ex if k != "messages"]))
        order.update(dict.fromkeys(fixed))
        if cp:
            order["copy"] = None
        order["input_location"] = None
    ex_keys = [k for k in dict.fromkeys(k for ex in extras for k in ex) if k != "messages"]
    ex_frame = pl.DataFrame([{k: ex.get(k) for k in ex_keys} for ex in extras], infer_schema_length=None) if ex_keys else None
    cols: dict[str, pl.Series] = {"messages": sub["messages"]}
    for k in order:
        if k == "messages":
            continue
        if k in fixed:
            cols[k] = fixed[k]
        elif k == "input_location":
            cols[k] = sub["source"]
        elif k == "copy":
            if "copy" in ex_keys:  # a record's own "copy" field stays where the record is not a copy
                vals = [int(c) if c else e.get("copy") for c, e in zip(copy.tolist(), extras)]
                cols[k] = pl.Series(vals, strict=False)
            else:
                cols[k] = pl.Series(copy).cast(pl.Int64).replace(0, None)
        else:
            assert ex_frame is not None
            cols[k] = ex_frame[k]
    return pl.DataFrame([v.alias(k) for k, v in cols.items()])


def write_outputs(run: SelectionRun, output_dir: str | Path, *, fmt: str | None = None, report: bool = True) -> dict[str, str]:
    """Write the run's outputs atomically into ``output_dir``; returns name -> path."""
    from .memory import release_free_heap
    from .output import write_json, write_jsonl, write_parquet

    release_free_heap()  # what the run freed, before the outputs allocate
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = fmt or run.options.format
    paths = {}
    t0 = time.perf_counter()
    if fmt == "jsonl":
        p = out / "selected.jsonl"
        write_jsonl(p, iter_output_rows(run.pool, run.selected_rows, release=run.release))
    else:
        p = out / "selected.parquet"
        write_parquet(p, output_frame(run.pool, run.selected_rows, release=run.release))
    paths["selected"] = str(p)
    dec = run.pool.drop(["messages", "user_turns", "responses", "extra", "instruction", "response"])
    # a pool read from a mapped file is written a slice at a time, its pages dropped after each
    write_parquet(out / "decisions.parquet", dec, slice_rows=DECISION_SLICE_ROWS if run.release is not None else None, release=run.release)
    paths["decisions"] = str(out / "decisions.parquet")
    run.timings["write"] = round(time.perf_counter() - t0, 3)
    run.manifest.setdefault("peak_rss_mb_after_stage", {})["write"] = peak_rss_mb()
    from .scores import file_sha256

    run.manifest["outputs"] = {"selected": {"path": p.name, "sha256": file_sha256(p), "rows": int(run.selected_rows.size)}, "decisions": {"path": "decisions.parquet"}}
    if report:
        from .report import write_report

        t1 = time.perf_counter()
        write_report(out / "report.html", dec, run.manifest)
        paths["report"] = str(out / "report.html")
        run.timings["report"] = round(time.perf_counter() - t1, 3)
    run.manifest["timings_seconds"] = run.timings
    write_json(out / "manifest.json", run.manifest)
    paths["manifest"] = str(out / "manifest.json")
    return paths


def select(data, budget: int | None = None, *, workdir: str | None = None, **options) -> pl.DataFrame:
    """Select the LASER subset of ``data`` and return it as a polars DataFrame.

    Args:
        data: a polars DataFrame, an Arrow table, or input path(s) (JSONL, JSONL.gz, Parquet).
        budget: number of records to select (or pass ``token_budget=`` for tokens).
        workdir: where embeddings and caches live (default ``$LASER_FAST_WORKDIR`` or
            ``~/.cache/laser_fast``).
        **options: any field of :class:`~laser_fast.config.SelectOptions` (``strategy``, ``mode``,
            ``proportions``, ``seed``, ``min_distance``, ...).

    Returns:
        The selected records in output order: ``messages``, every input field, and the
        provenance columns (``data_id``, ``origin``, ``category``, scores, ``preference``,
        ``cluster``, ``selected_by``).

    Raises:
        LaserError: bad input, options, missing scores or models.

    Example:
        >>> import laser_fast                                                    # doctest: +SKIP
        >>> df = laser_fast.select("pool.jsonl", budget=100, strategy="longest")  # doctest: +SKIP
    """
    opts = SelectOptions(budget=budget, **options)
    return run_selection(data, opts, workdir=workdir).selected_frame()


def score(data, *, profile: str | None = None, scorers: Sequence[str] | str | None = None, workdir: str | None = None, **options) -> pl.DataFrame:
    """Score ``data`` with the step-2 scorers (cached per scorer fingerprint and ``data_id``).

    Args:
        data: a polars DataFrame, an Arrow table, or input path(s).
        profile: ``lite`` (offline models; default without a GPU) or ``paper`` (reference models).
        scorers: scorer names to run instead of the whole profile (e.g. ``["lite_quality", "tokens"]``).
        workdir: cache folder (default ``$LASER_FAST_WORKDIR`` or ``~/.cache/laser_fast``).
        **options: other :class:`~laser_fast.config.SelectOptions` fields (``scorer_models``,
            ``judge_url``, ``device``, ``batch_tokens``, ``classifier``, ...).

    Returns:
        ``data_id``, ``category`` and one float64 column per scorer output.

    Example:
        >>> import laser_fast                                                     # doctest: +SKIP
        >>> laser_fast.score("pool.jsonl", scorers="lite_quality,tokens")        # doctest: +SKIP
    """
    opts = SelectOptions(budget=0, profile=profile, scorers=scorers or [], **options).validate()
    return run_scoring(data, opts, workdir=workdir)[0]
