"""The cached, resumable scoring run; the profiles and scorers it runs are declared in the registry
(:mod:`laser_fast.metrics`).

A *profile* says which scorer produces each LASER metric:

``paper`` (the reference models, by hub id or a local copy)
    quality <- ``deita_quality`` (hkust-nlp/deita-quality-scorer), complexity <- ``deita_complexity``,
    difficulty <- ``difficulty`` (IIS-NLP/difficulty-scorer-8B-v2), process_reward (Math) <-
    ``process_reward`` (Qwen/Qwen2.5-Math-PRM-7B), code_quality (Coding) <- ``code_quality`` and
    if_quality (Generation, Brainstorming) <- ``if_quality``, LLM judges (Qwen2.5-Coder-14B-Instruct,
    Qwen3-14B) in process through vLLM or transformers, or on an OpenAI-compatible endpoint.
``lite`` (offline, ships with the install; the default on a machine without a GPU)
    every quality metric and difficulty / complexity <- ``onepass``: linear heads over one
    all-MiniLM-L6-v2 pass per record (its instruction and its first response, the same vectors the
    classifier and k-means read from the work directory's embedding store).
``lite-llm`` (offline, slower: SmolLM2-135M-Instruct forwards per record)
    every quality metric (quality, if_quality, process_reward, code_quality) <- ``lite_quality``;
    difficulty and complexity <- ``lite_difficulty``: the instruction-following difficulty (IFD)
    of SmolLM2-135M-Instruct over the first 128 response tokens (and the last 256 prompt tokens),
    clipped to [0, 1]. IFD is the ratio of the response's loss with and
    without the instruction: near 1 the instruction hardly helps to produce the answer (a hard
    instruction for the model), near 0 the answer follows from the instruction. Values above 1
    (the instruction confuses the model, usually a mismatched pair) are clipped to 1.

Explicit ``scorers`` override the profile for the metrics they produce (``--profile lite
--scorers deita_quality`` takes quality from DEITA and everything else from the lite models).
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast.config import SelectOptions
from laser_fast.metrics import (  # noqa: F401 - the profile and scorer tables and build_scorer live in the registry; importable from here as before
    PROFILE_METRICS,
    PROFILES,
    SCORER_METRICS,
    SCORER_OUTPUTS,
    ScorerSettings,
    build_scorer,
    canonical_profile,
    default_profile,
    metric_sources,
    parse_models,
    parse_scorer_list,
)
from laser_fast.runtime.engine import UnitTask, current_executor, stat_columns, summed_stats
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats, named_rows
from laser_fast.runtime.workdir import _cached_arrays, _hash_strings, _iter_column, _iter_conversations
from laser_fast.scorers.base import Scorer
from laser_fast.scorers.cache import ScoreCache, content_keys
from laser_fast.scorers.lite_difficulty import LiteDifficulty  # also importable from here, as before

logger = logging.getLogger(__name__)


def check_model_source(who: str, model_id: str | None, revision: str | None = None, timeout: float = 3.0) -> None:
    """Check, without loading anything, that a Hugging Face model can be found: a local folder, the
    local hub cache, or a reachable hub (unless ``HF_HUB_OFFLINE=1``).

    Raises:
        ModelLoadError: naming ``who``, the model id and what to do.
    """
    from laser_fast.errors import ModelLoadError
    from laser_fast.runtime import models as hf

    src, _gguf, local, name = hf._resolve(model_id, None)
    if local or hf._cached(src, revision):
        return
    if hf._offline():
        raise ModelLoadError(f"scorer {who}: model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
                             f"forbids downloading it. {hf._hint(name)}")
    endpoint = hf.hub_endpoint()
    if not hf.hub_reachable(endpoint, timeout=min(timeout, 3.0)):
        raise ModelLoadError(f"scorer {who}: model '{name}' is not in the local Hugging Face cache and the hub "
                             f"({endpoint}) cannot be reached. {hf._hint(name)}")


def check_endpoint(scorer: Scorer, timeout: float = 5.0) -> None:
    """Check that a judge's OpenAI-compatible endpoint answers (``GET {base_url}/models``).

    Raises:
        LaserError: naming the scorer, the URL and the model, and what to do.
    """
    import urllib.error
    import urllib.request

    from laser_fast.errors import LaserError
    from laser_fast.scorers.judge_client import open_url, redact_url

    client = scorer.client
    url = client.endpoint("/models") if hasattr(client, "endpoint") else client.base_url + "/models"
    try:
        open_url(urllib.request.Request(url, method="GET"), timeout).close()
    except urllib.error.HTTPError:
        return  # the server answers (some need a key for /models): good enough
    except (OSError, ValueError) as e:
        raise LaserError(f"scorer {scorer.name}: the judge endpoint {redact_url(client.base_url)} (model '{getattr(scorer, 'model', '?')}') "
                         f"cannot be reached ({type(e).__name__}: {e}). Start an OpenAI-compatible server there (vLLM, llama.cpp "
                         f"server, `transformers serve`), point --judge-url / LASER_FAST_JUDGE_URL "
                         "at one, or run the judge in this process with --judge-backend transformers (or vllm)") from None


def preflight(scorer: Scorer, timeout: float = 5.0) -> None:
    """Check within seconds, before any work, that a scorer's model or endpoint can be reached.

    Hugging Face models: :func:`check_model_source`; LLM judges: their own ``preflight`` (the
    endpoint answers, or the in-process model can be found). Raises
    :class:`~laser_fast.errors.ModelLoadError` / :class:`~laser_fast.errors.LaserError` naming the
    model id (and URL) and what to do. Nothing is loaded.
    """
    if hasattr(scorer, "preflight"):
        scorer.preflight()
        return
    if isinstance(scorer, LiteDifficulty):
        preflight(scorer.ifd, timeout)
        return
    model_id = getattr(scorer, "model_id", None)
    if model_id is not None or type(scorer).__module__.endswith("scorers.models"):
        check_model_source(scorer.name, model_id, getattr(scorer, "revision", None), timeout)
        return
    if getattr(getattr(scorer, "client", None), "base_url", None):
        check_endpoint(scorer, timeout)


def pending(records: pl.DataFrame, categories: Sequence | np.ndarray, scorer: Scorer, workdir: str | Path, *, mask: np.ndarray | None = None) -> int:
    """How many records :func:`score_records` would have to score (not applicable or cached ones excluded)."""
    cats = np.asarray(categories, dtype=object)
    want = scorer.applies_to(cats)
    if mask is not None:
        want &= np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(want)
    if rows.size == 0:
        return 0
    sub = records[rows]
    found, _ = ScoreCache(workdir, scorer.name, scorer.fingerprint, scorer.outputs).lookup(sub["data_id"].to_list(), content_keys(sub, cats[rows]))
    return int((~found).sum())


def check_scorers(records: pl.DataFrame, categories, scorers: dict[str, Scorer], workdir: str | Path, masks: dict[str, np.ndarray] | None = None) -> None:
    """Preflight every scorer that has records left to score, before any of them starts.

    Every problem is reported at once (one line per scorer), models before judge endpoints.
    """
    from laser_fast.errors import LaserError

    problems: list[str] = []
    order = sorted(scorers, key=lambda k: (hasattr(scorers[k], "client"), k))
    for name in order:
        scorer = scorers[name]
        if pending(records, categories, scorer, workdir, mask=(masks or {}).get(name)):
            try:
                preflight(scorer)
            except LaserError as e:
                problems.append(str(e))
    if len(problems) == 1:
        raise LaserError(problems[0])
    if problems:
        raise LaserError(f"{len(problems)} scorers cannot run: " + " | ".join(problems))


def _approx_length(batch: pl.DataFrame) -> np.ndarray:
    return (batch["instruction"].str.len_chars().fill_null(0) + batch["response"].str.len_chars().fill_null(0)).to_numpy()


#: the content key of each row of a scoring unit, shipped with the unit (see :class:`ScoreTask`)
_KEY_COLUMN = "_content_key"


def score_chunks(length: np.ndarray, found: np.ndarray, chunk: int) -> list[np.ndarray]:
    """The chunks to score: every record the scorer applies to, longest first (memory problems
    show at once, and chunks of similar length pad little), cut into chunks of ``chunk``; of each
    chunk the records not cached yet, and no chunk that is all cached.

    The chunks do not depend on what is cached, and each is cached as one shard: a run killed
    midway resumes with the chunks it had not finished, scored in the same batches as an
    uninterrupted run, so the scores are the same, bit for bit (with either engine)."""
    order = np.argsort(-np.asarray(length), kind="stable")
    out = []
    for i in range(0, order.size, chunk):
        part = order[i:i + chunk]
        part = part[~found[part]]
        if part.size:
            out.append(part)
    return out


def _score_unit(scorer: Scorer, cache: ScoreCache, batch: pl.DataFrame, ids: list, keys: list, **kw) -> dict:
    """Score one chunk and append it to the cache as one atomic shard (local loop and workers)."""
    res = scorer.score(batch, show_progress=False, **kw)
    missing = [o for o in scorer.outputs if o not in res]
    if missing:
        raise RuntimeError(f"scorer {scorer.name} returned no {missing}")
    cache.append(ids, keys, res)
    return res


def scorer_device(scorer: Scorer) -> str:
    """The device a scorer was asked to run on (``""``: auto), also for one that wraps another
    (``lite_difficulty`` holds its IFD scorer)."""
    dev = getattr(scorer, "device", None)
    if dev is None and getattr(scorer, "ifd", None) is not None:
        dev = getattr(scorer.ifd, "device", None)
    return str(dev or "").strip().lower()


class ScoreTask(UnitTask):
    """One scorer's chunks on an engine's workers: each worker builds the scorer once (same name,
    settings and fingerprint as the driver's), scores its chunks and writes them to the shared
    score cache, exactly as :func:`score_records` does in this process."""

    def __init__(self, scorer: Scorer, workdir: str):
        self.name, self.fingerprint, self.outputs = scorer.name, scorer.fingerprint, tuple(scorer.outputs)
        built = getattr(scorer, "built_from", None)
        self.settings = built[1] if built is not None and built[0] == scorer.name else None
        self.workdir = str(workdir)
        self.label = f"score:{scorer.name}"
        # its model runs on a GPU when the cluster has one, unless the run pins the CPU
        share = float(getattr(scorer, "gpu_share", 0.0) or 0.0)
        self.uses_gpu = share > 0 and not scorer_device(scorer).startswith("cpu")
        base = MODEL_SCORES.resources
        self.resources = Resources(num_cpus=base.num_cpus, num_gpus=share if self.uses_gpu else 0.0)
        self._scorer = scorer if built is None else None  # a scorer not built from the registry travels as it is
        self._driver_scorer = scorer  # for memory_mb, on the driver
        # machine-dependent choices (a CPU's bf16 units) the workers take over from the driver
        self.pins = scorer.worker_pins() if hasattr(scorer, "worker_pins") else {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)
        state.pop("_driver_scorer", None)
        return state

    def memory_mb(self) -> int:  # the scorer's own estimate (Scorer.host_memory_mb), on the driver
        return self.estimated_once(getattr(getattr(self, "_driver_scorer", None), "host_memory_mb", lambda: None))

    def setup(self) -> None:
        from laser_fast.metrics import build_scorer

        if self._scorer is None:
            self._scorer = build_scorer(self.name, self.settings)  # settings None: the registry's defaults, as on the driver
        if self.pins:  # also for a scorer that travelled as it is: its own choice would be this machine's
            self._scorer.apply_pins(self.pins)
        if self._scorer.fingerprint != self.fingerprint:
            raise RuntimeError(f"scorer {self.name} has fingerprint {self._scorer.fingerprint} on this worker and {self.fingerprint} on the "
                               "driver: install the same laser_fast, models and settings on every node")
        self._cache = ScoreCache(self.workdir, self.name, self.fingerprint, self.outputs)
        if hasattr(self._scorer, "set_workdir"):
            self._scorer.set_workdir(self._cache.dir / "work")
        if hasattr(self._scorer, "set_store_root"):  # scorers that share the run's embedding store
            self._scorer.set_store_root(self.workdir)

    def run(self, unit: pl.DataFrame) -> dict[str, np.ndarray]:
        keys = unit[_KEY_COLUMN].to_list()
        batch = unit.drop(_KEY_COLUMN)
        before = _numeric_stats(self._scorer)
        res = _score_unit(self._scorer, self._cache, batch, batch["data_id"].to_list(), keys)
        out = {o: np.asarray(res[o], dtype=np.float64) for o in self.outputs}
        # what this unit added to each stat: the driver sums them over the units
        after = _numeric_stats(self._scorer)
        return {**out, **stat_columns(batch.height, {k: v - before.get(k, 0.0) for k, v in after.items()})}


def _numeric_stats(scorer) -> dict[str, float]:
    return {k: float(v) for k, v in (getattr(scorer, "stats", None) or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _warn_truncated(scorer, cut: int, records: int) -> None:
    name = scorer.name
    if cut > 0 and getattr(scorer, "short_by_design", False):  # a stand-in that reads short windows on purpose
        logger.info("%s: %d input(s) of the %d records scored were cut to its max_length (by design)", name, cut, records)
    elif cut > 0:
        logger.warning("%s: %d input(s) of the %d records scored were longer than the scorer's max_length and were cut to fit, "
                       "as the reference does (stats.truncated in the manifest; a scorer built in Python with a larger "
                       "max_length keeps them whole)", name, cut, records)


def score_records(
    records: pl.DataFrame,
    categories: Sequence | np.ndarray,
    scorer: Scorer,
    workdir: str | Path,
    *,
    mask: np.ndarray | None = None,
    chunk_records: int | None = None,
    show_progress: bool | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    check: bool = False,
    prefetch: bool | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """Score ``records`` with ``scorer`` through the cache and return its outputs (NaN where not scored).

    Records the scorer does not apply to (its categories) or outside ``mask`` are not scored.
    Cached rows (same fingerprint, data_id and content) are reused; the rest are scored in chunks
    of similar length, each written to the cache as one atomic shard before the next starts, so an
    interrupted run resumes where it stopped. A scorer with ``prepare`` and ``prefetch`` (the Hugging
    Face scorers on CUDA; ``prefetch=True`` forces it) gets the next chunk's inputs built in a
    thread while it scores the current one.

    Returns:
        ``(outputs, facts)`` with ``facts`` holding counts, time and the scorer's batching stats.
    """
    n = records.height
    cats = np.asarray(categories, dtype=object)
    want = scorer.applies_to(cats)
    if mask is not None:
        want &= np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(want)
    out = {o: np.full(n, np.nan) for o in scorer.outputs}
    facts: dict[str, Any] = {"scorer": scorer.name, "fingerprint": scorer.fingerprint, "records": int(rows.size), "cached": 0, "computed": 0}
    if rows.size == 0:
        return out, facts
    cache = ScoreCache(workdir, scorer.name, scorer.fingerprint, scorer.outputs)
    if hasattr(scorer, "set_workdir"):
        scorer.set_workdir(cache.dir / "work")
    if hasattr(scorer, "set_store_root"):
        scorer.set_store_root(str(workdir))
    sub = records[rows]
    ids = sub["data_id"].to_list()
    keys = content_keys(sub, cats[rows])
    found, vals = cache.lookup(ids, keys)
    for o in scorer.outputs:
        out[o][rows] = vals[o]
    facts["cached"] = int(found.sum())
    todo = np.flatnonzero(~found)
    facts["cache_dir"] = str(cache.dir)
    if todo.size == 0:
        return out, facts
    if check:
        preflight(scorer)
    t0 = time.perf_counter()
    chunk = int(chunk_records or os.environ.get("LASER_FAST_SCORE_CHUNK") or 0)
    if not chunk:  # the scorer's own size, or its size for this many records (never what is cached: see score_chunks)
        chunk_for = getattr(scorer, "chunk_for", None)
        chunk = int(chunk_for(int(rows.size)) if chunk_for is not None else getattr(scorer, "cache_chunk", 0) or 128)
    parts = score_chunks(_approx_length(sub), found, chunk)
    sub = sub.with_columns(pl.Series("category", [None if c is None else str(c) for c in cats[rows]], dtype=pl.Utf8))
    from laser_fast.runtime.progress import progress_bar

    ex = current_executor()
    if ex is not None:  # the same chunks, scored and cached by the engine's workers
        task = ScoreTask(scorer, str(workdir))
        units = [sub[part].with_columns(pl.Series(_KEY_COLUMN, [keys[j] for j in part], dtype=pl.Utf8)) for part in parts]
        results = ex.map_units(task, units)
        for part, res in zip(parts, results):
            for o in scorer.outputs:
                out[o][rows[part]] = np.asarray(res[o], dtype=np.float64)
        summed = summed_stats(results)
        cache.compact()
        # the workers' stats, summed (counts as integers, times as seconds of work)
        st = {k: (round(v, 4) if k == "seconds" or v != int(v) else int(v)) for k, v in summed.items()}
        facts.update(engine=ex.name, computed=int(todo.size), seconds=round(time.perf_counter() - t0, 3), stats=st)
        _warn_truncated(scorer, int(st.get("truncated", 0)), int(todo.size))
        return out, facts
    bar = progress_bar(total=int(todo.size), desc=f"score {scorer.name}", unit="rec", show=show_progress)
    done = 0
    cut_before = int((getattr(scorer, "stats", None) or {}).get("truncated", 0))
    # prepare the next chunk's inputs (templating, tokenizing) in a thread while the model runs
    ahead = prefetch if prefetch is not None else bool(getattr(scorer, "prefetch", False))
    pool = None
    if ahead and hasattr(scorer, "prepare") and len(parts) > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prepare-{scorer.name}")
        upcoming = pool.submit(scorer.prepare, sub[parts[0]])  # loads the model on first use, before any score
    try:
        for k, part in enumerate(parts):
            batch = sub[part]
            kw = {}
            if pool is not None:
                kw["prepared"] = upcoming.result()
                if k + 1 < len(parts):
                    upcoming = pool.submit(scorer.prepare, sub[parts[k + 1]])
            res = _score_unit(scorer, cache, batch, [ids[j] for j in part], [keys[j] for j in part], **kw)
            for o in scorer.outputs:
                out[o][rows[part]] = np.asarray(res[o], dtype=np.float64)
            done += part.size
            bar.update(part.size)
            if on_chunk is not None:
                on_chunk(done, int(todo.size))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    cache.compact()
    facts["device"] = getattr(scorer, "used_device", None)  # duck-typed scorers may not say
    facts["computed"] = int(todo.size)
    facts["seconds"] = round(time.perf_counter() - t0, 3)
    st = dict(getattr(scorer, "stats", {}) or {})
    _warn_truncated(scorer, int(st.get("truncated", 0)) - cut_before, int(todo.size))
    if st.get("padded_tokens"):
        st["non_padding_share"] = round(st.get("tokens", 0) / st["padded_tokens"], 4)
    facts["stats"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()}
    return out, facts


def needed_scorers(strategy: str, categories: np.ndarray, have: dict[str, np.ndarray], sources: dict[str, tuple[str, str]]) -> dict[str, tuple[np.ndarray, list[tuple[str, str, np.ndarray]]]]:
    """Which scorers a strategy needs, on which records, and which metrics they fill.

    Returns:
        scorer name -> (row mask, [(metric, output column, rows), ...]) for the records that lack
        a metric the strategy reads for their category (input columns and score files come first).
        Metrics no profile scorer produces are left out (the preference step then names them).
    """
    from laser_fast.metrics import DEDICATED_QUALITY, canonical_strategy, required_metrics

    strategy = canonical_strategy(strategy)
    cats = np.asarray(categories, dtype=object)
    n = len(cats)
    per_metric: dict[str, np.ndarray] = {}

    def need(metric: str, rows: np.ndarray) -> None:
        per_metric[metric] = per_metric.get(metric, np.zeros(n, dtype=bool)) | rows

    everyone = np.ones(n, dtype=bool)
    for m in required_metrics(strategy):
        if m != "last_resp_length":
            need(m, everyone)
    if strategy in ("dedicated_quality", "combination"):
        for c in sorted({str(c) for c in cats.tolist()}):
            need(DEDICATED_QUALITY.get(c, "quality"), cats == c)
    out: dict[str, tuple[np.ndarray, list[tuple[str, str, np.ndarray]]]] = {}
    for metric in sorted(per_metric):
        rows = per_metric[metric]
        if metric not in sources:
            continue
        scorer, col = sources[metric]
        v = have.get(metric)
        if v is not None:
            given = np.isfinite(v)
            # a stand-in (another scorer's scale) never fills gaps among given values: robust
            # scaling would mix two scales; the gaps are left for the preference step to name
            if given.any() and col != metric:
                continue
            rows = rows & ~given
        if not rows.any():
            continue
        mask, fills = out.get(scorer, (np.zeros(n, dtype=bool), []))
        out[scorer] = (mask | rows, fills + [(metric, col, rows)])
    return out


def apply_scores(scores: dict[str, np.ndarray], metric: str, values: np.ndarray, rows: np.ndarray | None = None) -> None:
    """Fill ``scores[metric]`` where it is missing (never overwrite given scores)."""
    v = np.asarray(values, dtype=np.float64)
    if metric in scores:
        gap = ~np.isfinite(scores[metric])
        if rows is not None:
            gap &= rows
        scores[metric] = scores[metric].copy()
        scores[metric][gap] = v[gap]
    else:
        new = np.full(len(v), np.nan)
        sel = np.ones(len(v), dtype=bool) if rows is None else rows
        new[sel] = v[sel]
        scores[metric] = new


def token_scores(records: pl.DataFrame, opts: SelectOptions, workdir: str) -> dict[str, np.ndarray]:
    from laser_fast.scorers.tokens import TokenCounter

    tc = TokenCounter(opts.tokenizer)
    # the counts read every turn (system, user and assistant), so the key does too
    key = _hash_strings(itertools.chain(_iter_column(records, "data_id"), _iter_conversations(records)), tc.fingerprint + str(records.height))
    return _cached_arrays(workdir, "tokens", key, lambda: _token_arrays(records, opts.tokenizer, tc))


def _token_arrays(records: pl.DataFrame, tokenizer: str | None, tc=None) -> dict[str, np.ndarray]:
    """Token counts per record, on the engine's workers for a large pool (row-wise)."""
    from laser_fast.runtime.engine import RowTask, map_rows, remote_rows
    from laser_fast.scorers.tokens import TokenCounter

    ex = remote_rows(records.height) if tc is not None else None  # workers (tc None) count here
    if ex is not None:
        return map_rows(ex, RowTask("tokens", "laser_fast.scorers.stage:_token_arrays", {"tokenizer": tokenizer}, TOKENS.resources), records)
    return (tc or TokenCounter(tokenizer)).score(records)


def release_scorer(scorer: Scorer) -> None:
    """Free what a finished scorer holds (``release`` is optional for duck-typed scorers)."""
    release = getattr(scorer, "release", None)
    if callable(release):
        release()


def scoring_order(built: Mapping[str, Scorer]) -> list[tuple[str, bool]]:
    """The order a run scores in, and whether to release each scorer after it: by name, except that
    scorers sharing an in-process engine (``engine_key``: judges naming one model) run one after
    the other and only the last of them releases it; every other scorer releases its model
    before the next one loads."""
    def key(n: str) -> str | None:
        return getattr(built[n], "engine_key", None)

    order = sorted(built, key=lambda n: (key(n) or n, n))
    return [(n, key(n) is None or k + 1 == len(order) or key(order[k + 1]) != key(n)) for k, n in enumerate(order)]


#: The raw column marking records a scorer ran on but could not score (see :func:`model_scores`).
NOT_SCORED = "_not_scored"


def model_scores(records: pl.DataFrame, cats: np.ndarray, scores: dict[str, np.ndarray], opts: SelectOptions, workdir: str,
                 skip: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run the scorers the strategy needs (profile + explicit ``opts.scorers``) through the cache.

    Fills the missing metrics in ``scores`` in place (input columns and score files win) and
    returns the raw scorer outputs (``lite_quality``, ``ifd``, ...) for the outputs, plus facts.
    Records a scorer ran on but could not score (NaN where it should have filled a metric) are
    marked in the boolean raw column :data:`NOT_SCORED`: the preference step leaves them out
    instead of stopping the run.
    """
    if opts.profile == "none":  # no profile: only the scorers named (--scorers), filling what they produce
        named = [n for n in opts.scorers if n != "tokens"]
        if not named:
            return {}, {"profile": "none"}
        profile = "none"
        sources = {m: (s, c) for s in named for m, c in SCORER_METRICS.get(s, {}).items()}
    else:
        profile = canonical_profile(opts.profile)
        sources = metric_sources(profile, opts.scorers)
    plan = needed_scorers(opts.strategy, cats, scores, sources)
    for name in opts.scorers:  # named scorers always run, on every record they apply to
        if name != "tokens":
            plan[name] = (np.ones(records.height, dtype=bool), plan.get(name, (None, []))[1])
    if skip is not None and np.any(skip):  # duplicates and benchmark items (left out before scoring): never scored
        keep = ~np.asarray(skip, dtype=bool)
        plan = {k: (m & keep, [(met, col, rows & keep) for met, col, rows in fills]) for k, (m, fills) in plan.items()}
    settings = ScorerSettings.from_options(opts)
    raw: dict[str, np.ndarray] = {}
    facts: dict[str, Any] = {"profile": profile, "metric_sources": {m: f"{s}:{c}" for m, (s, c) in sorted(sources.items())}, "scorers": []}
    failed = np.zeros(records.height, dtype=bool)
    built = {name: build_scorer(name, settings) for name in sorted(plan)}
    # every model and endpoint that has work to do is checked before any work starts
    check_scorers(records, cats, built, workdir, {k: v[0] for k, v in plan.items()})
    outs: dict[str, tuple[dict, dict]] = {}
    for name, release in scoring_order(built):
        scorer = built[name]
        outs[name] = score_records(records, cats, scorer, workdir, mask=plan[name][0], show_progress=opts.show_progress)
        if release:
            release_scorer(scorer)
    for name in built:  # results applied in name order, whatever order they ran in
        fills = plan[name][1]
        out, f = outs[name]
        f["fills"] = sorted({m for m, _, _ in fills})
        facts["scorers"].append(f)
        for metric, col, rows in fills:
            apply_scores(scores, metric, out[col], rows)
            gaps = rows & ~np.isfinite(scores[metric])
            if gaps.any():
                f.setdefault("not_scored", {})[metric] = int(gaps.sum())
            failed |= gaps
        for col, v in out.items():
            if col in raw:
                gap = ~np.isfinite(raw[col])
                raw[col][gap] = v[gap]
            else:
                raw[col] = v
    if failed.any():
        facts["not_scored"] = int(failed.sum())
        raw[NOT_SCORED] = failed
        logger.warning("%d record(s) got no score from a scorer that ran on them (empty texts, unparsable or failed judge "
                       "answers with --judge-fallback missing); they are left out of the selection as not_scored", int(failed.sum()))
    return raw, facts




# --------------------------------------------------------------------------------------
# the stages
# --------------------------------------------------------------------------------------

TOKENS = StageSpec("tokens", "laser_fast.scorers.stage:tokens_stage", reads=("data_id", "messages", "response", "<given token metrics>"),
                   writes=("inst_length", "resp_length", "last_resp_length"), resources=Resources(num_cpus=1))
MODEL_SCORES = StageSpec("model_scores", "laser_fast.scorers.stage:scores_stage", reads=("messages", "category", "<given metrics>", "duplicate_of", "contaminated_by"),
                         writes=("<metrics>", "raw:<scorer outputs>", "_not_scored"), resources=Resources(num_cpus=1, num_gpus=1.0))
# (memory: each scorer's own estimate, Scorer.host_memory_mb, in its ScoreTask)


def _metric_columns(columns: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The metric columns among ``columns``, in their order."""
    from laser_fast.metrics import METRICS

    return {k: v for k, v in (columns or {}).items() if k in METRICS}


def tokens_stage(records: pl.DataFrame, opts: SelectOptions, *, workdir, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """Token counts per record (:func:`token_scores`, cached); a given count (input field or
    score file, in ``columns``) is kept where it is finite."""
    given = _metric_columns(columns)
    out: dict[str, np.ndarray] = {}
    for k, v in token_scores(records, opts, str(workdir)).items():
        if k in given:
            filled = given[k].copy()
            gap = ~np.isfinite(filled)
            filled[gap] = v[gap]
            out[k] = filled
        else:
            out[k] = v
    return StageResult(out, StageStats("tokens", tokenizer=opts.tokenizer))


def excluded_rows(cols: Mapping[str, np.ndarray], n: int) -> np.ndarray | None:
    """Records left out before scoring: duplicates (``duplicate_of``) and benchmark items
    (``contaminated_by``); None when neither stage ran."""
    out = None
    for k in ("duplicate_of", "contaminated_by"):
        v = cols.get(k)
        if v is not None:
            m = named_rows(v)
            out = m if out is None else out | m
    return out


def _pair_margins(records: pl.DataFrame, cats, given: Mapping[str, np.ndarray], filled: dict[str, np.ndarray], raw: dict[str, np.ndarray],
                  facts: dict, opts: SelectOptions, workdir: str, skip: np.ndarray | None) -> None:
    """Score the rejected answers of preference units with the quality scorers and replace each
    quality metric the models filled by the margin, chosen minus rejected (values given with the
    data stay: they are the unit's own); both sides go to ``raw:chosen_<metric>`` and
    ``raw:rejected_<metric>``. See :mod:`laser_fast.io.pairs`."""
    from laser_fast.io.pairs import rejected_records
    from laser_fast.metrics import QUALITY_METRICS

    # the prompt's metrics (difficulty, lengths) are known: only the quality scorers run
    side = {m: v for m, v in filled.items() if m not in QUALITY_METRICS}
    raw_r, facts_r = model_scores(rejected_records(records), cats, side, opts, workdir, skip=skip)
    facts["rejected"] = facts_r
    for m in QUALITY_METRICS:
        if m not in filled or m not in side:
            continue
        mine = ~np.isfinite(given[m]) if m in given else np.ones(records.height, dtype=bool)
        raw[f"chosen_{m}"], raw[f"rejected_{m}"] = filled[m], np.where(mine, side[m], np.nan)
        filled[m] = np.where(mine, filled[m] - side[m], filled[m])
    failed = raw_r.get(NOT_SCORED)
    if failed is not None:
        raw[NOT_SCORED] = failed | raw.get(NOT_SCORED, np.zeros(records.height, dtype=bool))


def scores_stage(records: pl.DataFrame, opts: SelectOptions, *, workdir, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """The model scorers the strategy needs (:func:`model_scores`): missing metrics filled by the
    profile's scorers (given values win), and every scorer output as ``raw:<column>``.

    ``columns`` must hold ``category`` and the metric columns known so far; they are not changed.
    """
    cols = columns or {}
    metrics = _metric_columns(cols)
    filled = dict(metrics)  # model_scores replaces the arrays it fills, never writes into them
    skip = excluded_rows(cols, records.height)
    raw, facts = model_scores(records, cols["category"], filled, opts, str(workdir), skip=skip)
    if "_rejected" in records.columns:  # preference units: quality is the margin over the rejected answer
        _pair_margins(records, cols["category"], metrics, filled, raw, facts, opts, str(workdir), skip)
    out = {k: v for k, v in filled.items() if k not in metrics or v is not metrics[k]}
    failed = raw.pop(NOT_SCORED, None)
    if failed is not None:
        out[NOT_SCORED] = failed
    out.update({f"raw:{k}": v for k, v in raw.items()})
    stats = StageStats("model_scores")
    stats.update(facts)
    return StageResult(out, stats)
