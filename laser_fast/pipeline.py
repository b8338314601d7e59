"""The LASER run, wired from its stages: ingest -> scores given with the data -> duplicates ->
benchmark decontamination -> language -> classify -> token counts -> model scores -> preference ->
the kept copy of each group of duplicates -> sampling -> outputs.

This module only connects stages; each lives with its kind (see docs/architecture.md):
:mod:`laser_fast.io` reads inputs and writes outputs, :mod:`laser_fast.classifier`,
:mod:`laser_fast.scorers` and :mod:`laser_fast.sampling` hold steps 1-3, :mod:`laser_fast.runtime`
the services they share. :func:`run_selection` returns a :class:`SelectionRun` (the pool table
with every decision, the selected rows in output order, and the manifest); :func:`select` is the
Python API on polars; :func:`laser_fast.io.output.write_outputs` writes the output set.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import polars as pl

from laser_fast.classifier.stage import CLASSIFY, LANGUAGE
from laser_fast.config import SelectOptions
from laser_fast.errors import LaserError
from laser_fast.io.decisions import decision_columns, pool_table, run_manifest
from laser_fast.io.ingest import load_pool
from laser_fast.io.output import output_frame
from laser_fast.io.pairs import pair_facts
from laser_fast.io.score_files import SCORES_LOAD, scores_from_extra
from laser_fast.metrics import METRICS
from laser_fast.runtime.devices import cuda_available, kmeans_device_label, resolve_kmeans_backend
from laser_fast.runtime.memory import limit_heap_arenas, release_free_heap, spill_frame
from laser_fast.runtime.stage import StageSpec, StageStats, named_rows
from laser_fast.runtime.stats import _Timer
from laser_fast.runtime.workdir import WorkDir
from laser_fast.sampling.decontam import DECONTAMINATE
from laser_fast.sampling.dedup import DEDUP, DEDUP_BEST
from laser_fast.sampling.embed import PoolEmbeddings
from laser_fast.sampling.strata import apply_source_limits, candidate_status, order_selection, plan_strata, source_specs
from laser_fast.sampling.stratum import select_strata
from laser_fast.scorers.preference import PREFERENCE
from laser_fast.scorers.stage import MODEL_SCORES, TOKENS

logger = logging.getLogger(__name__)


@dataclass
class SelectionRun:
    """Everything a run decided (see :func:`run_selection`)."""

    pool: pl.DataFrame  #: one row per pool record (after oversampling) with all decisions
    selected_rows: np.ndarray  #: row indices into ``pool`` in output order
    manifest: dict
    options: SelectOptions
    timings: dict = field(default_factory=dict)
    #: drops the resident pages of a pool held in a mapped file (see :mod:`laser_fast.runtime.memory`)
    release: Any = field(default=None, repr=False, compare=False)

    def selected_frame(self) -> pl.DataFrame:
        from laser_fast.io.output import retyped_fields

        return output_frame(self.pool, self.selected_rows, release=self.release, retyped=retyped_fields(self.pool, self.selected_rows)[0])


def _start_run(data, opts, workdir: str | None, verb: str):
    """The start every run shares: the work directory ready, the records read (and mapped when
    large). Returns ``(wd, timer, recs, skipped, inputs, release)``; no valid record is an error."""
    wd = WorkDir.of(workdir).ensure()  # creates the layout, clears dead runs' temp files, fails early when unwritable
    limit_heap_arenas()
    timer = _Timer()
    with timer.stage("ingest"):
        recs, skipped, inputs = load_pool(data, opts)
        recs, release = _map_records(recs, wd, timer)
    if recs.height == 0:
        raise LaserError(f"the inputs hold no valid records (all were skipped); nothing to {verb}")
    return wd, timer, recs, skipped, inputs, release


def _map_records(recs: pl.DataFrame, workdir: WorkDir, timer: _Timer) -> tuple[pl.DataFrame, Any]:
    """The records moved to a mapped file in the workdir when they are large (see
    :mod:`laser_fast.runtime.memory`); the pages each stage reads are dropped when it ends.
    Returns the records and the function that drops their pages (None when they stay on the heap)."""
    recs, handle = spill_frame(recs, workdir.root / "tmp")
    if handle is not None:
        timer.after_stage.append(handle.release_pages)
    # what a stage freed goes back to the OS before the next one allocates
    timer.after_stage.append(release_free_heap)
    release_free_heap()
    return recs, handle.release_pages if handle is not None else None


def run_scoring(data, opts: SelectOptions, *, workdir: str | None = None) -> tuple[pl.DataFrame, dict]:
    """:func:`_run_scoring` on ``opts.engine`` (facts get an ``engine`` entry)."""
    from laser_fast.runtime.engine import check_engine_device, describe_engine, use_engine

    with use_engine(opts.engine, address=opts.ray_address) as ex:
        check_engine_device(ex, opts.device)
        table, facts = _run_scoring(data, opts, workdir=workdir)
        facts["engine"] = describe_engine(ex)
    return table, facts


def _run_scoring(data, opts: SelectOptions, *, workdir: str | None = None) -> tuple[pl.DataFrame, dict]:
    """Score ``data`` with the profile's scorers (or ``opts.scorers``) through the score cache.

    Categories come from the input (``category`` / ``setfit_label``) or the task classifier.

    Returns:
        ``(scores, facts)``: a table with ``data_id``, ``category`` and one float column per
        scorer output (NaN where a scorer does not apply to the record's category), and run facts.
    """
    from laser_fast.metrics import PROFILE_METRICS, ScorerSettings, build_scorer, canonical_profile
    from laser_fast.scorers.stage import check_scorers, release_scorer, score_records, scoring_order

    wd, timer, recs, skipped, inputs, _ = _start_run(data, opts, workdir, "score")
    profile = canonical_profile(None if opts.profile in (None, "none") else opts.profile)
    names = list(opts.scorers) or ["tokens"] + sorted({s for s, _ in PROFILE_METRICS[profile].values()})
    facts: dict[str, Any] = {"profile": profile, "scorers": [], "inputs": inputs, "skipped": len(skipped)}
    with timer.stage("classify"):
        _, known = scores_from_extra(recs)
        res = CLASSIFY.load()(recs, opts, workdir=wd, columns={} if known is None else {"category": known})
    cats = res.columns["category"]
    facts["classification"] = res.stats.to_dict()
    settings = ScorerSettings.from_options(opts)
    out_cols: dict[str, Any] = {"data_id": recs["data_id"], "category": pl.Series("category", [str(c) for c in cats], dtype=pl.Utf8)}
    built = {name: build_scorer(name, settings) for name in names}
    check_scorers(recs, cats, built, str(wd))  # every model and endpoint with work to do, before any work starts
    outs: dict[str, tuple[dict, dict]] = {}
    for name, release in scoring_order(built):
        scorer = built[name]
        with timer.stage(f"score_{name}"):
            outs[name] = score_records(recs, cats, scorer, str(wd), show_progress=opts.show_progress)
            if release:
                release_scorer(scorer)  # its model leaves the GPU before the next scorer loads
    for name in names:  # facts and columns in the order the scorers were named
        out, f = outs[name]
        facts["scorers"].append(f)
        for col, v in out.items():
            if col not in out_cols:
                out_cols[col] = pl.Series(col, v, dtype=pl.Float64)
    facts["timings_s"] = dict(timer.t)
    return pl.DataFrame(out_cols), facts


#: The stages of a selection run, in order (each declared once, next to its function).
STAGES: tuple[StageSpec, ...] = (SCORES_LOAD, DEDUP, DECONTAMINATE, LANGUAGE, CLASSIFY, TOKENS, MODEL_SCORES, PREFERENCE, DEDUP_BEST)
#: manifest key of each stage's stats (as the manifest has always named them)
_MANIFEST_KEYS = {"dedup": "dedup", "decontaminate": "decontamination", "language": "language", "classify": "classification", "model_scores": "scoring", "preference": "preference"}


def run_stages(records: pl.DataFrame, opts: SelectOptions, *, workdir: WorkDir, timer: _Timer,
               stages: Sequence[StageSpec] = STAGES) -> tuple[dict[str, np.ndarray], dict[str, StageStats]]:
    """Run ``stages`` in order over ``records``; each sees the columns of the stages before it.

    Returns:
        ``(columns, stats)``: every column the stages produced (a later stage's column of the same
        name replaces an earlier one, in place) and each stage's stats by stage name.
    """
    columns: dict[str, np.ndarray] = {}
    stats: dict[str, StageStats] = {}
    for spec in stages:
        with timer.stage(spec.name):
            res = spec.load()(records, opts, workdir=workdir, columns=MappingProxyType(columns))  # read only
        columns.update(res.columns)
        stats[spec.name] = res.stats
    return columns, stats


def run_selection(data, opts: SelectOptions, *, workdir: str | None = None) -> SelectionRun:
    """Run the three LASER steps over ``data`` (paths, a polars DataFrame or an Arrow table) on
    ``opts.engine``: ``local`` (this process) or ``ray`` (the units of work of every record-wise
    stage on Ray Data actors, see :mod:`laser_fast.runtime.engine`; the same selection, byte for byte).

    Raises:
        LaserError (and subclasses): bad input, bad options, missing scores or models.
        ImportError: ``engine="ray"`` without Ray Data installed (names the pip command).
    """
    from laser_fast.runtime.engine import check_engine_device, describe_engine, use_engine

    opts.validate()
    with use_engine(opts.engine, address=opts.ray_address) as ex:
        check_engine_device(ex, opts.device)
        run = _run_selection(data, opts, workdir=workdir)
        run.manifest["engine"] = describe_engine(ex)
    return run


def _run_selection(data, opts: SelectOptions, *, workdir: str | None = None) -> SelectionRun:
    """The run itself (see :func:`run_selection`)."""
    wd, timer, recs, skipped, inputs, release = _start_run(data, opts, workdir, "select")
    n = recs.height

    # steps 1 and 2: record-wise stages, then the preference over the whole pool
    cols, stage_stats = run_stages(recs, opts, workdir=wd, timer=timer)
    best = stage_stats.pop("dedup_best")
    if best["ran"]:  # the copies left out once the best of each group was known
        stage_stats["dedup"].update({"per_origin": best["per_origin"], "kept_not_first": best["kept_not_first"]})
    metrics = {k: v for k, v in cols.items() if k in METRICS}
    raw = {k[4:]: v for k, v in cols.items() if k.startswith("raw:")}
    scaled = {k[: -len("_scaled")]: v for k, v in cols.items() if k.endswith("_scaled")}
    cats, conf, english, pref = cols["category"], cols["category_confidence"], cols["is_english"], cols["preference"]

    # step 3: candidates, per-source limits and oversampling, strata, then each stratum
    length = metrics["inst_length"] + metrics["resp_length"]
    src_index = recs["_source_index"].to_numpy() if "_source_index" in recs.columns else np.zeros(n, dtype=np.int32)
    duplicate_of, contaminated_by = cols.get("duplicate_of"), cols.get("contaminated_by")
    named = {k: None if v is None else named_rows(v) for k, v in (("duplicate", duplicate_of), ("contaminated", contaminated_by))}
    pool = apply_source_limits(candidate_status(english, length, opts, pref, **named), src_index, source_specs(inputs, list(opts.sources or [])),
                               pref=pref, cats=cats, length=length, seed=opts.seed)
    row_map = pool.row_map
    p_cats, p_pref, p_len = cats[row_map], pref[row_map], length[row_map]
    p_status = pool.status[row_map]
    eligible = p_status == "candidate"
    plan = plan_strata(p_cats, eligible, p_len, opts)
    embeddings = PoolEmbeddings(recs, pool.status == "candidate", row_map, opts, wd, timer)
    with timer.stage("select"):
        sel = select_strata(plan, p_pref, p_len, p_status, embeddings, opts)
    with timer.stage("order"):
        difficulty = metrics.get("difficulty", np.full(n, np.nan))[row_map]
        selected = order_selection(sel.rows, opts.order, seed=opts.seed, cats=p_cats, length=p_len, difficulty=difficulty)

    table = pool_table(recs, row_map, decision_columns(n_records=n, row_map=row_map, copy=pool.copy, cats=p_cats, conf=conf, english=english,
                                                        pref=p_pref, status=sel.status, selected_by=sel.selected_by, cluster=sel.cluster,
                                                        metrics=metrics, raw=raw, scaled=scaled, language=cols.get("language"),
                                                        duplicate_of=duplicate_of, contaminated_by=contaminated_by))
    emb_info = embeddings.info
    devices = {"embedding": emb_info.get("device") if emb_info else None,
               "kmeans": kmeans_device_label(*resolve_kmeans_backend(opts.kmeans_backend, opts.device)) if opts.mode in ("kmeans", "kmeans+greedy") else None,
               "torch_cuda": cuda_available(only_if_loaded=True)}
    manifest = run_manifest(opts=opts, inputs=inputs, skipped=skipped, score_files=stage_stats["scores_load"]["score_sources"], plan=plan,
                            cats=p_cats, status=sel.status, eligible=eligible, n_selected=selected.size, strata_stats=sel.stats,
                            embedding=emb_info, devices=devices, timer=timer,
                            stages={key: stage_stats[name].to_dict() for name, key in _MANIFEST_KEYS.items()})
    pairs = pair_facts(recs)
    if pairs is not None:
        manifest["pairs"] = pairs
    return SelectionRun(pool=table, selected_rows=selected, manifest=manifest, options=opts, timings=timer.t, release=release)


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
