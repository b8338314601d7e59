"""The LASER selection run: ingest -> classify -> score -> preference -> stratified selection.

:func:`run_selection` does the work and returns a :class:`SelectionRun` (the pool table with
every decision, the selected rows in output order, and the manifest); :func:`select` is the
Python API on polars; :func:`write_outputs` writes ``selected.jsonl|parquet``,
``decisions.parquet``, ``manifest.json`` and ``report.html`` atomically.
"""
from __future__ import annotations

import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl

from laser_fast._version import __version__
from laser_fast.categories import CATEGORIES, DEFAULT_PROPORTIONS
from laser_fast.classifier.stage import classify_pool, english_mask
from laser_fast.config import SelectOptions, SourceSpec
from laser_fast.errors import LaserError
from laser_fast.io.ingest import load_pool
from laser_fast.io.output import output_frame
from laser_fast.metrics import SCORE_COLUMNS
from laser_fast.runtime.stats import _Timer
from laser_fast.runtime.workdir import default_workdir
from laser_fast.scorers.preference import compute_preference
from laser_fast.scorers.stage import model_scores, token_scores
from laser_fast.sampling.allocate import allocate
from laser_fast.sampling.strata import order_selection
from laser_fast.sampling.stratum import StoreRows, select_stratum

logger = logging.getLogger(__name__)


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


def _map_records(recs: pl.DataFrame, workdir: str, timer: _Timer) -> tuple[pl.DataFrame, Any]:
    """The records moved to a mapped file in the workdir when they are large (see
    :mod:`laser_fast.memory`); the pages each stage reads are dropped when it ends. Returns the
    records and the function that drops their pages (None when they stay on the heap)."""
    from laser_fast.runtime.memory import release_free_heap, spill_frame

    recs, handle = spill_frame(recs, Path(workdir) / "tmp")
    if handle is not None:
        timer.after_stage.append(handle.release_pages)
    # what a stage freed goes back to the OS before the next one allocates
    timer.after_stage.append(release_free_heap)
    release_free_heap()
    return recs, handle.release_pages if handle is not None else None


def run_scoring(data, opts: SelectOptions, *, workdir: str | None = None) -> tuple[pl.DataFrame, dict]:
    """Score ``data`` with the profile's scorers (or ``opts.scorers``) through the score cache.

    Categories come from the input (``category`` / ``setfit_label``) or the task classifier.

    Returns:
        ``(scores, facts)``: a table with ``data_id``, ``category`` and one float column per
        scorer output (NaN where a scorer does not apply to the record's category), and run facts.
    """
    from laser_fast.io.score_files import scores_from_extra
    from laser_fast.scorers.stage import PROFILE_METRICS, ScorerSettings, build_scorer, canonical_profile, check_scorers, score_records

    workdir = workdir or default_workdir()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    from laser_fast.runtime.memory import limit_heap_arenas

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


def run_selection(data, opts: SelectOptions, *, workdir: str | None = None) -> SelectionRun:
    """Run the three LASER steps over ``data`` (paths, a polars DataFrame or an Arrow table).

    Raises:
        LaserError (and subclasses): bad input, bad options, missing scores or models.
    """
    opts.validate()
    workdir = workdir or default_workdir()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    from laser_fast.runtime.memory import limit_heap_arenas

    limit_heap_arenas()
    timer = _Timer()
    facts: dict[str, Any] = {}

    with timer.stage("ingest"):
        recs, skipped, inputs = load_pool(data, opts)
        recs, release = _map_records(recs, workdir, timer)
    if recs.height == 0:
        raise LaserError("the inputs hold no valid records (all were skipped); nothing to select")
    n = recs.height

    from laser_fast.io.score_files import import_reference_analysis, merge_score_files, scores_from_extra

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
    from laser_fast.sampling.cluster import preference_order

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
                from laser_fast.sampling.embed import TEXT_COLUMNS, RecordTexts
                from laser_fast.sampling.store import EmbeddingStore

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
    from laser_fast.runtime.memory import release_free_heap
    from laser_fast.runtime.progress import progress_bar

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

    from laser_fast.runtime.devices import faiss_device

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
