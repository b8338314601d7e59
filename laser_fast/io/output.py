"""Atomic output writers: each file goes to a temporary file in the same folder, then a rename;
a run's output folder is written as one set (:class:`~laser_fast.io.output_set.OutputSet`).

``check_output_dir``, ``OutputSet`` and the output name lists are re-exported from
:mod:`laser_fast.io.output_set`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from laser_fast.io.field_types import conflicting_fields, retype
from laser_fast.io.output_set import OUTPUT_NAMES, SCORE_OUTPUT_NAMES, SELECT_OUTPUT_NAMES, OutputSet, check_output_dir, clean_stale_temps, fsync_path, temp_name  # noqa: F401
from laser_fast.io.pairs import PAIR_COLUMNS, PAIR_SCORE_PREFIXES, TRL_FIELDS, pair_format, unit_rows
from laser_fast.metrics import SCORE_COLUMNS
from laser_fast.runtime.stats import peak_rss_mb

if TYPE_CHECKING:
    from laser_fast.pipeline import SelectionRun

logger = logging.getLogger(__name__)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        f = float(o)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(v: Any) -> Any:
    """NaN/inf -> None recursively (JSON has no NaN)."""
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, dict):
        return {k: clean_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean_json(x) for x in v]
    return v


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; on success the file is synced
    to disk and renamed onto ``path``, on failure removed, so readers never see a partial file.

    The temporary file is created with the usual mode (``0o666`` less the umask, as ``open()``
    makes files; not ``mkstemp``'s ``0o600``) under a unique name (:func:`temp_name`: host,
    process id, random hex); temporaries that dead processes left in the folder are removed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with atomic_path(d / "x.txt") as tmp:
        ...     _ = tmp.write_text("hi")
        >>> (d / "x.txt").read_text()
        'hi'
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.path.parent)
        self.tmp = self.path.parent / temp_name(self.path.name)
        os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                fsync_path(self.tmp)
                os.replace(self.tmp, self.path)
            except BaseException:
                self.tmp.unlink(missing_ok=True)
                raise
            fsync_path(self.path.parent, directory=True)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj) -> None:
    write_text(path, json.dumps(clean_json(obj), indent=2, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(clean_json(r), ensure_ascii=False, default=_json_default))
            f.write("\n")


def write_parquet(path, df, *, slice_rows: int | None = None, release=None) -> None:
    """Write ``df`` atomically. With ``slice_rows``, a larger frame is written one row group of
    that many rows at a time and ``release()`` runs after each (for a frame read from a mapped
    file: the pages each slice touched leave the process again)."""
    with atomic_path(path) as tmp:
        if not slice_rows or df.height <= slice_rows:
            df.write_parquet(tmp, statistics=False)
            return
        import polars as pl
        import pyarrow.parquet as pq

        from laser_fast.runtime.memory import owned_schema

        schema = owned_schema(df.head(0).to_arrow(compat_level=pl.CompatLevel.newest()).schema)
        with pq.ParquetWriter(tmp, schema, write_statistics=False) as writer:
            for s in range(0, df.height, slice_rows):
                part = df.slice(s, slice_rows).to_arrow(compat_level=pl.CompatLevel.newest())
                writer.write_table(part.cast(schema))
                del part
                if release is not None:
                    release()


#: selected records turned into Python objects at a time when writing the outputs
OUTPUT_CHUNK_ROWS = 4096
#: rows of ``decisions.parquet`` written at a time when the pool lives in a mapped file
DECISION_SLICE_ROWS = 131072


def iter_output_rows(pool: pl.DataFrame, rows: np.ndarray, *, chunk_rows: int = OUTPUT_CHUNK_ROWS, release=None,
                     retyped: frozenset[str] = frozenset()) -> Iterator[dict]:
    """Selected records as dicts (``messages``, every input field, then provenance columns),
    converted ``chunk_rows`` at a time so a large selection never lives as Python objects at once;
    ``release()`` (when given) runs after each chunk (see :class:`SelectionRun`). Input fields in
    ``retyped`` are written as text (see :mod:`laser_fast.io.field_types`)."""
    pairs = "_rejected" in pool.columns  # preference units: TRL's format (see laser_fast.io.pairs)
    score_cols = [c for c in SCORE_COLUMNS if c in pool.columns] + [c for c in pool.columns if c.startswith(PAIR_SCORE_PREFIXES)]
    for s in range(0, rows.size, chunk_rows):
        sub = pool[rows[s : s + chunk_rows].tolist()]
        for r in sub.iter_rows(named=True):
            extra = retype(json.loads(r["extra"]), retyped) if r["extra"] else {}
            whole = extra.pop("messages", None)  # a conversation with tool turns, as it came
            d: dict[str, Any] = {"messages": whole if whole is not None else [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
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
            if pairs:
                yield from unit_rows(d, r["_rejected_record"])
            else:
                yield d
        if release is not None:
            release()  # the pages this chunk's gather and rows touched


def output_rows(pool: pl.DataFrame, rows: np.ndarray) -> list[dict]:
    """Selected records as dicts: ``messages``, every input field, then provenance columns."""
    return list(iter_output_rows(pool, rows, retyped=retyped_fields(pool, rows)[0]))


def retyped_fields(pool: pl.DataFrame, rows: np.ndarray) -> tuple[frozenset[str], dict[str, list[str]]]:
    """The input fields of the records at ``rows`` whose JSON types conflict (written as text in
    either output format), and the kinds each had."""
    ex = pool["extra"].gather(np.asarray(rows, dtype=np.int64)) if rows.size else pool["extra"].head(0)
    found = conflicting_fields({k: v for k, v in json.loads(e).items() if k != "messages"} for e in ex if e)
    return frozenset(found), found


def output_frame(pool: pl.DataFrame, rows: np.ndarray, *, release=None, retyped: frozenset[str] = frozenset()) -> pl.DataFrame:
    """The selected records as a frame: the same columns, order and types as a frame built from
    :func:`output_rows`, but assembled column by column from ``pool`` (a frame built from a
    list of nested dicts costs several kB per row); only the ``extra`` JSON goes through Python.
    The selected texts are copied out of ``pool`` (see :func:`laser_fast.runtime.memory.gather_owned`,
    which calls ``release``)."""
    from laser_fast.runtime.memory import gather_owned

    if not rows.size:
        return pl.DataFrame({"messages": [], "data_id": [], "category": [], "preference": [], "selected_by": []})
    if "_rejected" in pool.columns:  # preference units in TRL's format: few enough to build from their dicts
        return pl.DataFrame(list(iter_output_rows(pool, rows, release=release, retyped=retyped)), infer_schema_length=None)
    sub = gather_owned(pool.select([c for c in pool.columns if c not in ("instruction", "response", "user_turns", "responses")]), rows, release=release)
    extras = [retype(json.loads(e), retyped) if e else {} for e in sub["extra"].to_list()]
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
    if any("messages" in ex for ex in extras):  # conversations with tool turns go out as they came
        plain = sub["messages"].to_list()
        cols["messages"] = pl.Series([ex["messages"] if "messages" in ex else [{"role": m["role"], "content": m["content"]} for m in p]
                                      for ex, p in zip(extras, plain)], strict=False)
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


def run_input_paths(manifest: dict) -> list[str]:
    """The files a run read, from its manifest: ``inputs[i].path`` and ``score_sources[i].path``
    (in-memory frames have no path and are left out).

    Args:
        manifest: a :class:`SelectionRun` manifest.

    Returns:
        The paths, in manifest order.
    """
    out = []
    for key in ("inputs", "score_sources"):
        for e in manifest.get(key) or []:
            if isinstance(e, dict) and e.get("path"):
                out.append(str(e["path"]))
    return out


def write_outputs(run: SelectionRun, output_dir: str | Path, *, fmt: str | None = None, report: bool = True,
                  training_file: bool = False) -> dict[str, str]:
    """Write the run's outputs into ``output_dir`` as one set.

    ``selected.jsonl`` (or ``selected.parquet``), ``decisions.parquet``, ``report.html`` (unless
    ``report=False``) and ``manifest.json`` are written into a temporary folder inside
    ``output_dir`` and moved into place together, ``manifest.json`` last, after the previous
    run's manifest and any of its files this run does not produce were removed (see
    :class:`~laser_fast.io.output_set.OutputSet`). Guarantee: whenever ``manifest.json`` exists,
    every file it lists under ``outputs`` is the one this manifest describes (the selected file's
    sha256 is recorded there), whatever instant the writer was killed at; without a manifest the
    folder is incomplete. The contents of the files do not depend on how they are written.

    Args:
        run: the result of :func:`laser_fast.pipeline.run_selection`.
        output_dir: the output folder (created when missing).
        fmt: ``"jsonl"`` or ``"parquet"`` (default: the run's ``format`` option).
        report: also write ``report.html``.
        training_file: also write ``train.jsonl``: ``messages`` and ``data_id`` only, the minimal
            file a trainer reads (``selected.*`` keeps the provenance).

    Returns:
        Output name (``selected``, ``decisions``, ``report``, ``train``, ``manifest``) -> final path.

    Raises:
        LaserError: the folder cannot take the outputs (see :func:`check_output_dir`: a file, not
            writable, a full disk), one of the run's input files would be overwritten, or writing
            failed (the message says what state the folder was left in).
    """
    from laser_fast.io.score_files import file_sha256
    from laser_fast.runtime.memory import release_free_heap

    out = check_output_dir(output_dir, run_input_paths(run.manifest), names=SELECT_OUTPUT_NAMES)
    release_free_heap()  # what the run freed, before the outputs allocate
    fmt = fmt or run.options.format
    sel_name = "selected.jsonl" if fmt == "jsonl" else "selected.parquet"
    names = {"selected": sel_name, "decisions": "decisions.parquet"}
    with OutputSet(out, SELECT_OUTPUT_NAMES, "manifest.json") as s:
        t0 = time.perf_counter()
        retyped, kinds = retyped_fields(run.pool, run.selected_rows)
        if kinds:
            logger.warning("input field(s) with conflicting types across records (or integers beyond int64) are written as text "
                           "(in JSONL and Parquet alike, so every reader loads them): %s", "; ".join(f"{k} ({', '.join(v)})" for k, v in kinds.items()))
        if fmt == "jsonl":
            write_jsonl(s.path(sel_name), iter_output_rows(run.pool, run.selected_rows, release=run.release, retyped=retyped))
        else:
            write_parquet(s.path(sel_name), output_frame(run.pool, run.selected_rows, release=run.release, retyped=retyped))
        if training_file:
            fields = TRL_FIELDS.get(pair_format(run.pool) or "", ("messages",))
            write_jsonl(s.path("train.jsonl"), ({**{k: d[k] for k in fields if k in d}, "data_id": d["data_id"]}
                                                for d in iter_output_rows(run.pool, run.selected_rows, release=run.release)))
            names["train"] = "train.jsonl"
        dec = run.pool.drop(["messages", "user_turns", "responses", "extra", "instruction", "response", *PAIR_COLUMNS], strict=False)
        # a pool read from a mapped file is written a slice at a time, its pages dropped after each
        write_parquet(s.path("decisions.parquet"), dec, slice_rows=DECISION_SLICE_ROWS if run.release is not None else None, release=run.release)
        run.timings["write"] = round(time.perf_counter() - t0, 3)
        run.manifest.setdefault("peak_rss_mb_after_stage", {})["write"] = peak_rss_mb()
        units, fmt_pairs = int(run.selected_rows.size), pair_format(run.pool)
        sel_entry = {"path": sel_name, "sha256": file_sha256(s.path(sel_name)), "rows": units * 2 if fmt_pairs == "kto" else units}  # a KTO unit: two lines
        if fmt_pairs:
            sel_entry["units"] = units
        run.manifest["outputs"] = {"selected": sel_entry,
                                   "decisions": {"path": "decisions.parquet"}}
        if kinds:
            run.manifest["outputs"]["retyped_fields"] = kinds
        if training_file:
            run.manifest["outputs"]["train"] = {"path": "train.jsonl", "sha256": file_sha256(s.path("train.jsonl")),
                                                "rows": sel_entry["rows"]}  # a KTO unit: two lines here too
        if report:
            from laser_fast.io.report import write_report

            t1 = time.perf_counter()
            write_report(s.path("report.html"), dec, run.manifest)
            names["report"] = "report.html"
            run.manifest["outputs"]["report"] = {"path": "report.html"}
            run.timings["report"] = round(time.perf_counter() - t1, 3)
        run.manifest["timings_seconds"] = run.timings
        write_json(s.path("manifest.json"), run.manifest)
        names["manifest"] = "manifest.json"
    return {k: str(out / n) for k, n in names.items()}


def push_to_hub(output_dir: str | Path, repo: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload a selection's output folder to the Hugging Face dataset repository ``repo``
    (created when missing, private by default): ``selected.*``, ``train.jsonl`` when written,
    ``decisions.parquet`` and ``manifest.json`` (no report, no work files). Online only.

    Returns:
        The repository's URL.

    Raises:
        LaserError: offline (``HF_HUB_OFFLINE``), no manifest in ``output_dir`` (an incomplete
            folder is never pushed), or the hub refused (its message, with what to do).
    """
    from laser_fast.errors import LaserError
    from laser_fast.runtime.models import hub_offline

    out = Path(output_dir)
    if hub_offline():
        raise LaserError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing can be uploaded; the outputs are in {out}: "
                         "push them later (hf upload --repo-type dataset REPO DIR) or unset HF_HUB_OFFLINE")
    if not (out / "manifest.json").is_file():
        raise LaserError(f"--push-to-hub {repo}: {out} has no manifest.json, so its outputs are incomplete: run the selection again")
    names = [n for n in ("selected.jsonl", "selected.parquet", "train.jsonl", "decisions.parquet", "manifest.json") if (out / n).is_file()]
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(out), allow_patterns=names,
                          commit_message=f"laser_fast selection ({len(names)} files)")
    except Exception as e:  # noqa: BLE001 - the hub's many errors (auth, network, names): one clear message
        raise LaserError(f"--push-to-hub {repo}: the upload failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                         f"the outputs stay in {out}. Log in (hf auth login or HF_TOKEN) and check the repository name") from None
    return f"https://huggingface.co/datasets/{repo}"
