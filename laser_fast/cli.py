"""The ``laser-fast`` command line: ``select``, ``score``, ``classify``, ``report``, ``show-config``.

User errors print one line ``laser-fast: error: ...`` and exit with status 2 (no traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from laser_fast.errors import ConfigError, LaserError

logger = logging.getLogger("laser_fast")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors: ``laser-fast: error: ...`` and where to look (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"laser-fast: error: {message} (see `{self.prog} --help`)\n")


_MAX_RECORD_HELP = ("a record larger than N bytes (a JSONL line, checked before it is parsed; or the UTF-8 text of a Parquet "
                    "record's turns) is invalid: it stops the run, or is dropped and listed with --skip-invalid "
                    "(default 1048576; 0: no limit)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _select_parser(sub) -> None:
    p = sub.add_parser("select", help="classify, score and select the LASER subset", description="Run the three LASER steps and write the selection.")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="JSONL(.gz), JSON-array, CSV/TSV or Parquet files (messages, ShareGPT or Alpaca schema)")
    p.add_argument("--budget", type=int, help="number of records to select (config: sample_size)")
    p.add_argument("--token-budget", type=int, help="select up to this many tokens instead (config: token_size)")
    p.add_argument("--output-dir", required=True, help="where selected.jsonl|parquet, decisions.parquet, manifest.json and report.html go")
    p.add_argument("--config", help="YAML config: ours, or a LASER reference dataset_mixer config unchanged")
    p.add_argument("--input-dir", help="replaces DATA_PATH in the config's data_path entries")
    p.add_argument("--strategy", help="random, longest, deita, difficulty, quality, dedicated_quality, combination (default)")
    p.add_argument("--mode", choices=["kmeans", "greedy", "kmeans+greedy", "none"], help="selection mode (default kmeans)")
    p.add_argument("--proportions", help="'Math=0.3,Coding=0.3,...', 'natural' (the pool's own mix), 'none' (no strata) or 'paper' (default)")
    p.add_argument("--threshold-percentile", type=float, help="cluster-best preference percentile in [0,1] (default 0.8)")
    p.add_argument("--min-distance", type=float, help="greedy: minimum cosine distance to every accepted record (default 0.1)")
    p.add_argument("--setfit-limits", help="cap per category as a share of the budget, e.g. 'Math=0.2'")
    p.add_argument("--embedding-model", help="sentence-transformers id or local path (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--embed-field", choices=["response", "instruction", "both"], help="text to embed (default response, as the reference)")
    p.add_argument("--max-seq-length", type=int, help="drop records whose instruction+response tokens exceed this (default 4096; 0 = off)")
    p.add_argument("--order", choices=["shuffle", "difficulty", "length", "category", "difficulty_category", "length_category", "none"], help="output order (default shuffle)")
    p.add_argument("--seed", type=int, help="seed for k-means, ties, shuffling and the random strategy (default 0)")
    p.add_argument("--classifier", help="task classifier: tuned (the default: MiniLM with fine-tuned top layers), minilm (frozen MiniLM; "
                   "shares the onepass scorer's instruction vectors), smollm, or a SetFit / Hugging Face sequence-classification model (id or path)")
    p.add_argument("--tokenizer", "--train-tokenizer", dest="tokenizer", metavar="MODEL",
                   help="the tokenizer of the model you will train (hub id or folder): --token-budget and --max-seq-length count "
                        "its tokens (default: the bundled MiniLM WordPiece tokenizer, which only approximates them)")
    p.add_argument("--scores", action="append", default=None, metavar="FILE", help="score file keyed by data_id (CSV/TSV/JSONL/Parquet); repeatable")
    p.add_argument("--analysis-dir", help="import the reference code's line-aligned analysis CSVs from this folder")
    p.add_argument("--schema", choices=["messages", "sharegpt", "alpaca", "dpo", "kto"], help="force the input schema (default: detected per file)")
    p.add_argument("--split", help="the split of a Hugging Face dataset input (a save_to_disk folder or a hub name; default: its only split)")
    p.add_argument("--skip-invalid", action="store_true", help="drop invalid records (counted and listed in the manifest) instead of stopping")
    p.add_argument("--max-record-bytes", type=int, metavar="N", help=_MAX_RECORD_HELP)
    p.add_argument("--keep-non-english", action="store_true", help="keep records flagged as non-English (LASER keeps English only)")
    p.add_argument("--dedup", choices=["none", "exact", "normalized", "instruction", "near"],
                   help="leave out repeated conversations (default exact; normalized: "
                        "NFKC, case, punctuation and whitespace ignored; instruction: the same user turns; near: MinHash near-copies)")
    p.add_argument("--dedup-keep", choices=["best", "first"],
                   help="the copy of each group of duplicates that stays: best (highest preference, default; copies whose texts differ "
                        "are scored to find it) or first (the first in input order; no copy is scored)")
    p.add_argument("--dedup-threshold", type=float, metavar="J", help="--dedup near: Jaccard similarity of 5-word shingles that makes a copy (default 0.8)")
    p.add_argument("--decontaminate", nargs="+", action="extend", default=None, metavar="FILE|DIR",
                   help="benchmark test sets (JSONL/Parquet with prompt and/or answer fields; a folder: its files): records sharing "
                        "a 13-word n-gram with an item, or whose instruction equals a prompt, are left out")
    p.add_argument("--decontaminate-ngram", type=int, metavar="N", help="words per n-gram for --decontaminate (default 13)")
    p.add_argument("--languages", metavar="CODES", help="instruction languages to keep, ISO 639 codes (default en, as LASER; e.g. en,de)")
    p.add_argument("--workdir", help="cache folder for embeddings and scores (default $LASER_FAST_WORKDIR or ~/.cache/laser_fast)")
    p.add_argument("--format", choices=["jsonl", "parquet"], help="output format (default jsonl)")
    p.add_argument("--batch-size", type=int, help="model batch size (default 64)")
    p.add_argument("--device", help="torch device for models (default: best available)")
    p.add_argument("--num-threads", type=int, help="CPU threads for the compiled core and faiss (0 = all)")
    p.add_argument("--kmeans-backend", choices=["auto", "faiss", "torch"],
                   help="k-means on faiss or torch (default auto: faiss on a GPU faiss sees, else torch on CUDA, else faiss on the CPU)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the outputs (not the report) to this Hugging Face dataset repository "
                                                         "(created private when missing; online only)")
    p.add_argument("--training-file", action="store_true",
                   help="also write train.jsonl: messages and data_id only, the minimal file a trainer reads")
    _scoring_flags(p)
    _engine_flags(p)
    _add_common(p)


def _scoring_flags(p: argparse.ArgumentParser) -> None:
    from laser_fast.metrics import PROFILES, SCORER_OUTPUTS

    g = p.add_argument_group("model scorers (step 2)")
    g.add_argument("--profile", choices=[*PROFILES, "auto", "none"],
                   help="scorer set: lite (offline, one MiniLM pass per record; default without a GPU), lite-llm (offline, SmolLM2-135M features: slower), paper (the reference models, default with a GPU), "
                        "none (no model scoring: scores must come from inputs or --scores)")
    g.add_argument("--scorers", help="comma-separated scorers that override the profile for the metrics they produce and always run: "
                                     + ", ".join(SCORER_OUTPUTS))
    g.add_argument("--scorer-model", action="append", default=None, metavar="SCORER=MODEL",
                   help="model id or local path for a scorer, e.g. difficulty=/models/difficulty-scorer-8B-v2; repeatable")
    g.add_argument("--judge-url", help="OpenAI-compatible endpoint of the LLM judges (default $LASER_FAST_JUDGE_URL or http://127.0.0.1:8000/v1); "
                                       "the API key is read from $LASER_FAST_JUDGE_API_KEY or $OPENAI_API_KEY")
    g.add_argument("--judge-backend", choices=["vllm", "transformers", "openai", "auto"],
                   help="where the LLM judges (code_quality, if_quality) get their answers: vllm (in-process, pip install "
                        "'laser_fast[vllm]'), transformers (in-process batched generation with constrained JSON decoding; CPU too) "
                        "or openai (the endpoint of --judge-url). Default: openai when a judge URL is given, else vllm when "
                        "installed with a GPU, else transformers")
    g.add_argument("--judge-model", action="append", default=None, metavar="JUDGE=MODEL",
                   help="the model of a judge, e.g. code_quality=Qwen/Qwen2.5-Coder-14B-Instruct or if_quality=smollm2 (hub id, "
                        "local folder, or the served name with --judge-backend openai); repeatable")
    g.add_argument("--judge-fallback", choices=["reference", "missing"],
                   help="an unparsable or failed judge answer scores the reference's fallback (code_quality 1.0, if_quality 0.5; "
                        "default) or is missing (the record is left out of the selection as not_scored; a multi-turn record keeps the "
                        "average of its judged exchanges); counted in the manifest")
    g.add_argument("--judge-gpus", type=int, metavar="N",
                   help="GPUs per in-process vLLM judge replica (tensor parallel; default 1). With --engine ray each replica is one "
                        "actor holding N GPUs, so a node of 8 GPUs runs 8/N replicas")
    g.add_argument("--judge-max-tokens", type=int, metavar="N",
                   help="answer budget per judge request (default: code_quality 2048, if_quality 1024 tokens, as in the reference)")
    g.add_argument("--trust-remote-code", action="append", default=None, metavar="MODEL_ID",
                   help="let this model's checkpoint run its own code (e.g. IIS-NLP/difficulty-scorer-8B-v2, whose published "
                        "head needs it); only for models you name; repeatable")
    g.add_argument("--batch-tokens", type=int, help="token budget per forward pass of the model scorers (default: per scorer)")


def _engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=["local", "ray"],
                   help="where the work runs: local (this process, default) or ray (Ray Data actors on every CPU/GPU of the cluster; "
                        "pip install 'laser_fast[ray]')")
    g.add_argument("--ray-address", help="with --engine ray: the cluster ('auto' for the one started with 'ray start --head' on this node, "
                                         "or ray://HOST:10001); default $RAY_ADDRESS or a new local instance")


def _engine_kw(a) -> dict:
    kw = {}
    if getattr(a, "engine", None) is not None:
        kw["engine"] = a.engine
    if getattr(a, "ray_address", None) is not None:
        kw["ray_address"] = a.ray_address
    return kw


def _scoring_kw(a) -> dict:
    from laser_fast.metrics import parse_models, parse_scorer_list

    kw: dict = {}
    if a.profile is not None:
        kw["profile"] = a.profile
    if a.scorers is not None:
        kw["scorers"] = parse_scorer_list(a.scorers)
    if a.scorer_model:
        kw["scorer_models"] = parse_models(a.scorer_model)
    if a.judge_model:
        from laser_fast.metrics import parse_judge_models

        kw["scorer_models"] = {**kw.get("scorer_models", {}), **parse_judge_models(a.judge_model)}
    if a.judge_url is not None:
        kw["judge_url"] = a.judge_url
    if a.judge_backend is not None:
        kw["judge_backend"] = None if a.judge_backend == "auto" else a.judge_backend
    if a.judge_fallback is not None:
        kw["judge_fallback"] = a.judge_fallback
    if a.trust_remote_code:
        kw["trust_remote_code"] = list(a.trust_remote_code)
    if a.judge_max_tokens is not None:
        kw["judge_max_tokens"] = a.judge_max_tokens
    if a.judge_gpus is not None:
        kw["judge_gpus"] = a.judge_gpus
    if a.batch_tokens is not None:
        kw["batch_tokens"] = a.batch_tokens
    return kw


def _options_from_args(a) -> tuple:
    from laser_fast.config import SelectOptions, parse_category_map, parse_proportions_arg, read_config

    kw = {}
    input_dir = getattr(a, "input_dir", None)
    if input_dir is not None and not Path(input_dir).is_dir():
        what = "is a file" if Path(input_dir).exists() else "does not exist"
        hint = (f" (input files take no flag: laser-fast {a.command} {input_dir} ...; a shortened option such as "
                "--input is read as --input-dir)") if Path(input_dir).is_file() else ""
        raise ConfigError(f"--input-dir {input_dir}: {what}; give the folder that DATA_PATH (and relative inputs) stand for{hint}")
    if a.config:
        kw.update(read_config(a.config, input_dir=input_dir))
    cli = {
        "budget": a.budget,
        "token_budget": a.token_budget,
        "strategy": a.strategy,
        "mode": a.mode,
        "threshold_percentile": a.threshold_percentile,
        "min_distance": a.min_distance,
        "embedding_model": a.embedding_model,
        "embed_field": a.embed_field,
        "order": a.order,
        "seed": a.seed,
        "classifier": a.classifier,
        "tokenizer": a.tokenizer,
        "analysis_dir": a.analysis_dir,
        "schema": a.schema,
        "split": a.split,
        "max_record_bytes": a.max_record_bytes,
        "languages": a.languages,
        "dedup": a.dedup,
        "dedup_keep": a.dedup_keep,
        "dedup_threshold": a.dedup_threshold,
        "decontaminate_ngram": a.decontaminate_ngram,
        "format": a.format,
        "batch_size": a.batch_size,
        "device": a.device,
        "num_threads": a.num_threads,
        "kmeans_backend": getattr(a, "kmeans_backend", None),
    }
    kw.update({k: v for k, v in cli.items() if v is not None})
    # a budget given on the command line replaces the config's budget of the other unit
    if a.budget is not None and a.token_budget is None:
        kw.pop("token_budget", None)
    if a.token_budget is not None and a.budget is None:
        kw.pop("budget", None)
    if a.max_seq_length is not None:
        kw["max_seq_length"] = a.max_seq_length or None
    if a.proportions is not None:
        kw["proportions"] = parse_proportions_arg(a.proportions)
    if a.setfit_limits is not None:
        kw["setfit_limits"] = parse_category_map(a.setfit_limits, "--setfit-limits")
    if a.scores:
        kw["scores"] = list(kw.get("scores") or []) + a.scores
    if a.skip_invalid:
        kw["skip_invalid"] = True
    if a.keep_non_english:
        kw["keep_non_english"] = True
    if a.decontaminate:
        kw["decontaminate"] = [*(kw.get("decontaminate") or []), *a.decontaminate]
    if a.quiet:
        kw["show_progress"] = False
    sk = _scoring_kw(a)
    if "scorer_models" in sk:
        sk["scorer_models"] = {**(kw.get("scorer_models") or {}), **sk["scorer_models"]}
    if "trust_remote_code" in sk:
        sk["trust_remote_code"] = [*(kw.get("trust_remote_code") or []), *sk["trust_remote_code"]]
    kw.update(sk)
    kw.update(_engine_kw(a))
    if getattr(a, "engine", None) == "local" and getattr(a, "ray_address", None) is None:
        kw.pop("ray_address", None)  # --engine local overrides a config's Ray cluster
    return SelectOptions(**kw)


def cmd_select(a) -> int:
    from laser_fast.io.output import SELECT_OUTPUT_NAMES, check_output_dir, write_outputs
    from laser_fast.pipeline import run_selection
    from laser_fast.runtime.models import hub_offline
    from laser_fast.runtime.workdir import default_workdir

    opts = _options_from_args(a)
    for flag, v in (("--budget", opts.budget), ("--token-budget", opts.token_budget)):
        if v == 0:
            raise ConfigError(f"{flag} 0 selects nothing: give at least 1 ({flag.lstrip('-').replace('-', '_')} in a config)")
    if not a.inputs and not opts.sources:
        raise LaserError("no input: give INPUT files or --config with data: entries")
    inputs = list(a.inputs)
    if a.input_dir:  # relative INPUTs that do not exist here are looked up in --input-dir
        inputs = [str(Path(a.input_dir) / p) if "://" not in p and not Path(p).is_absolute() and not Path(p).exists() else p for p in inputs]
    # before any work: the output folder takes files, and no input or score file is one it replaces
    check_output_dir(a.output_dir, [*inputs, *(s.path for s in opts.sources), *(opts.scores or [])], names=SELECT_OUTPUT_NAMES)
    if a.push_to_hub:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(a.push_to_hub)
        except HFValidationError as e:
            raise ConfigError(f"--push-to-hub {a.push_to_hub!r} is not a repository id ({e}); write ORG/NAME or NAME") from None
    if a.push_to_hub and hub_offline():
        raise LaserError(f"--push-to-hub {a.push_to_hub} needs the hub, and HF_HUB_OFFLINE is set: unset it, or drop --push-to-hub "
                         "and upload the output folder later (hf upload --repo-type dataset REPO DIR)")
    run = run_selection(inputs, opts, workdir=a.workdir or default_workdir())
    paths = write_outputs(run, a.output_dir, report=not a.no_report, training_file=a.training_file)
    m = run.manifest
    logger.info("selected %d of %d records: %s", m["counts"]["total_selected"], m["counts"]["total_pool"], m["counts"]["selected"])
    print(f"selection: {paths['selected']}")
    if "report" in paths:
        print(f"report:    {paths['report']}")
    if "train" in paths:
        print(f"train:     {paths['train']}")
    print(f"manifest:  {paths['manifest']}")
    if a.push_to_hub:
        from laser_fast.io.output import push_to_hub

        print(f"hub:       {push_to_hub(a.output_dir, a.push_to_hub)}")
    return 0


def cmd_score(a) -> int:
    from laser_fast.config import SelectOptions
    from laser_fast.io.output import SCORE_OUTPUT_NAMES, OutputSet, check_output_dir, write_json, write_parquet
    from laser_fast.pipeline import run_scoring
    from laser_fast.runtime.workdir import default_workdir

    kw = {k: v for k, v in {"classifier": a.classifier, "tokenizer": a.tokenizer, "schema": a.schema, "split": a.split,
                            "device": a.device}.items() if v is not None}
    kw.update(_scoring_kw(a))
    kw.update(_engine_kw(a))
    if a.skip_invalid:
        kw["skip_invalid"] = True
    if a.max_record_bytes is not None:
        kw["max_record_bytes"] = a.max_record_bytes
    if a.quiet:
        kw["show_progress"] = False
    opts = SelectOptions(budget=0, **kw).validate()
    out = check_output_dir(a.output_dir, a.inputs, names=SCORE_OUTPUT_NAMES)  # before any work
    table, facts = run_scoring(list(a.inputs), opts, workdir=a.workdir or default_workdir())
    with OutputSet(out, SCORE_OUTPUT_NAMES, "scores_manifest.json") as s:  # both files or neither
        write_parquet(s.path("scores.parquet"), table)
        write_json(s.path("scores_manifest.json"), facts)
    for f in facts["scorers"]:
        st = f.get("stats", {})
        logger.info("%-16s %d records (%d cached, %d computed)%s", f["scorer"], f["records"], f["cached"], f["computed"],
                    f", non-padding share {st['non_padding_share']:.3f}" if "non_padding_share" in st else "")
    print(f"scores:   {out / 'scores.parquet'}")
    return 0


def cmd_classify(a) -> int:
    import numpy as np
    import polars as pl

    from laser_fast.classifier.language import detect_languages, keep_languages
    from laser_fast.classifier.models import load_classifier
    from laser_fast.classifier.stage import classify_conversations
    from laser_fast.io.ingest import read_records
    from laser_fast.io.output import check_output_dir, write_jsonl, write_parquet

    out = Path(a.output)
    check_output_dir(out.parent, a.inputs, names=[out.name], option="--output")  # before any work: writable, not an input
    from laser_fast.config import SelectOptions
    from laser_fast.runtime.engine import check_engine_device, use_engine

    kw = {} if a.max_record_bytes is None else {"max_record_bytes": a.max_record_bytes}
    if a.batch_size is not None:
        kw["batch_size"] = a.batch_size
    opts = SelectOptions(budget=0, device=a.device, **_engine_kw(a), **kw).validate()
    recs, skipped = read_records(a.inputs, schema=a.schema, skip_invalid=a.skip_invalid, max_record_bytes=opts.max_record_bytes)
    trust = tuple(a.trust_remote_code or ())
    clf = load_classifier(a.classifier, device=opts.device, trust_remote_code=trust)
    with use_engine(opts.engine, address=opts.ray_address) as ex:  # the classifier's windows run on the engine's workers
        check_engine_device(ex, opts.device)
        labels, conf = classify_conversations(recs["user_turns"].to_list(), classifier=clf, batch_size=opts.batch_size,
                                              source=(a.classifier, opts.device, trust))
    detected = detect_languages(recs["instruction"].to_list())
    codes = detected[0]
    eng = keep_languages(recs["instruction"].to_list(), ("en",), detected=detected)
    df = pl.DataFrame({"data_id": recs["data_id"], "origin": recs["origin"], "category": list(labels), "confidence": np.asarray(conf, dtype=float),
                       "is_english": np.asarray(eng, dtype=bool), "language": codes.astype(str).tolist(), "source": recs["source"]})
    try:  # atomic: on a failure the previous file (if any) stays
        if out.suffix == ".parquet":
            write_parquet(out, df)
        else:
            write_jsonl(out, df.iter_rows(named=True))
    except OSError as e:
        raise LaserError(f"{out}: writing the categories failed ({e.strerror or e}); free some space or choose another --output") from e
    counts = df.group_by("category").len().sort("category")
    for c, k in counts.iter_rows():
        logger.info("%-14s %d", c, k)
    if skipped:
        logger.warning("skipped %d invalid record(s)", len(skipped))
    print(f"categories: {out}")
    return 0


def cmd_report(a) -> int:
    from laser_fast.io.report import report_from_dir

    p = report_from_dir(a.output_dir)
    print(f"report: {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from laser_fast._version import __version__

    ap = _Parser(prog="laser-fast", description="Fast LASER data selection for instruction tuning.")
    ap.add_argument("--version", action="version", version=f"laser-fast {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    _select_parser(sub)
    c = sub.add_parser("classify", help="classify records into the 7 LASER categories")
    c.add_argument("inputs", nargs="+", metavar="INPUT")
    c.add_argument("--output", required=True, help="categories file (.jsonl or .parquet)")
    c.add_argument("--classifier", help="tuned (default), minilm, smollm, or a model id or path")
    c.add_argument("--schema", choices=["messages", "sharegpt", "alpaca", "dpo", "kto"])
    c.add_argument("--skip-invalid", action="store_true")
    c.add_argument("--max-record-bytes", type=int, metavar="N", help=_MAX_RECORD_HELP)
    c.add_argument("--batch-size", type=int)
    c.add_argument("--device")
    c.add_argument("--trust-remote-code", action="append", default=None, metavar="MODEL_ID",
                   help="let this hub classifier run its own code (a SetFit head is a pickle); repeatable")
    _engine_flags(c)
    _add_common(c)
    s = sub.add_parser("score", help="run the step-2 scorers (cached, resumable) and write scores.parquet")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="JSONL(.gz), JSON-array, CSV/TSV or Parquet files")
    s.add_argument("--output-dir", required=True, help="where scores.parquet (data_id, category, one column per score) and scores_manifest.json go")
    s.add_argument("--workdir", help="cache folder (default $LASER_FAST_WORKDIR or ~/.cache/laser_fast); scores are cached per scorer fingerprint and data_id")
    s.add_argument("--classifier", help="task classifier (tuned, the default; minilm; smollm; an id or path) for records without a category column")
    s.add_argument("--tokenizer", "--train-tokenizer", dest="tokenizer", metavar="MODEL",
                   help="the tokenizer of the model you will train, for the token counts (default: the bundled MiniLM tokenizer)")
    s.add_argument("--schema", choices=["messages", "sharegpt", "alpaca", "dpo", "kto"])
    s.add_argument("--split", help="the split of a Hugging Face dataset input")
    s.add_argument("--skip-invalid", action="store_true")
    s.add_argument("--max-record-bytes", type=int, metavar="N", help=_MAX_RECORD_HELP)
    s.add_argument("--device", help="torch device for models (default: best available)")
    _scoring_flags(s)
    _engine_flags(s)
    _add_common(s)
    r = sub.add_parser("report", help="rebuild report.html from a selection's output folder")
    r.add_argument("output_dir")
    _add_common(r)
    sc = sub.add_parser("show-config", help="print build and device facts for bug reports")
    _add_common(sc)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "serve":
        print("laser-fast: error: `laser-fast serve` is gone: it was a test fixture (one request at a time, no guided "
              "decoding). Serve a judge with vLLM (`vllm serve MODEL`), llama.cpp (`llama-server -m MODEL.gguf`) or "
              "`transformers serve` and pass --judge-url, or run the judges in this process with --judge-backend transformers",
              file=sys.stderr)
        return 2
    ap = build_parser()
    try:
        a = ap.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, one line already printed)
        return e.code if isinstance(e.code, int) else 2
    level = logging.WARNING if a.quiet else logging.DEBUG if a.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("laser_fast").setLevel(level)
    if a.quiet:  # model-loading bars of transformers / the hub follow -q too
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    for noisy in ("sentence_transformers", "transformers", "faiss", "numba", "httpx", "urllib3", "huggingface_hub", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        if a.command == "select":
            return cmd_select(a)
        if a.command == "classify":
            return cmd_classify(a)
        if a.command == "score":
            return cmd_score(a)
        if a.command == "report":
            return cmd_report(a)
        if a.command == "show-config":
            from laser_fast import show_config

            show_config()
            return 0
    except LaserError as e:
        print(f"laser-fast: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("laser-fast: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
