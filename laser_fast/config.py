"""Run options, and reading configs: ours, and the reference code's ``dataset_mixer`` YAML unchanged.

A reference config has one top-level key (the experiment name) holding ``sample_size``,
``scoring_strategy``, ``clustering``, ``threshold_percentile_clustering``,
``final_setfit_proportions``, ``min_distance``, ``setfit_limits``, ``default_embedding_model`` and
``data:`` entries (``name``, ``data_path`` with ``DATA_PATH`` replaced by ``--input-dir``, ``type``,
``multi_turn``, ``language``, and per-source ``sample_size``, ``oversampling``, ``setfit_limits``,
``min_distance``). Our own YAML uses the same keys at the top level, plus the option names of
:class:`SelectOptions`. Unknown keys are reported with a warning that names them.

How reference settings map onto modes (as its ``run_sampling`` behaves):
``clustering: categories`` -> ``kmeans`` per category; ``clustering: all`` -> ``kmeans`` over the
whole pool; no clustering and a strategy name containing ``embedding`` -> ``greedy``; otherwise
``none`` (top by preference, per category when ``final_setfit_proportions`` is given, else over
the whole pool).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from laser_fast.categories import CATEGORIES, canonical_category
from laser_fast.errors import ConfigError
from laser_fast.metrics import canonical_profile, canonical_strategy, parse_scorer_list

logger = logging.getLogger(__name__)

MODES = ("kmeans", "greedy", "kmeans+greedy", "none")
ORDERS = ("shuffle", "difficulty", "length", "category", "difficulty_category", "length_category", "none")

_REF_TOP_KEYS = {
    "default_embedding_model", "scoring_strategy", "sample_size", "token_size", "clustering",
    "threshold_percentile_clustering", "final_setfit_proportions", "min_distance", "setfit_limits",
    "data", "ordering_strategy", "custom_embedder", "type_dataset",
}
_SOURCE_KEYS = {
    "name", "data_path", "path", "type", "multi_turn", "language", "sample_size", "token_size",
    "oversampling", "setfit_limits", "min_distance", "schema", "sample_scored", "allow_x_lang_duplicates",
}


#: Where a run's work executes (see :mod:`laser_fast.runtime.engine`).
ENGINES = ("local", "ray")


#: duplicate detection before scoring (see :mod:`laser_fast.sampling.dedup`)
DEDUP_MODES = ("none", "exact", "normalized", "instruction", "near")
#: which copy of a group of duplicates stays: the best preference, or the first in input order
DEDUP_KEEP = ("best", "first")

@dataclass
class SourceSpec:
    """One input source (a ``data:`` entry, or a path given on the command line)."""

    path: str
    name: str | None = None
    schema: str | None = None
    sample_size: int | None = None
    token_size: int | None = None
    oversampling: float = 1.0
    setfit_limits: dict[str, float] | None = None
    min_distance: float | None = None
    language: str | None = None


@dataclass
class SelectOptions:
    """Every option of a selection run (CLI flags and config keys map onto these)."""

    budget: int | None = None
    token_budget: int | None = None
    strategy: str = "combination"
    mode: str = "kmeans"
    proportions: dict[str, float] | str | None = None  # None = the paper's; "natural"; "none" = no strata
    threshold_percentile: float = 0.8
    min_distance: float = 0.1
    setfit_limits: dict[str, float] | None = None
    embedding_model: str | None = None
    embed_field: str = "response"
    max_seq_length: int | None = 4096
    order: str = "shuffle"
    seed: int = 0
    classifier: str | None = None
    tokenizer: str | None = None
    scores: list[str] = field(default_factory=list)
    analysis_dir: str | None = None
    keep_non_english: bool = False
    dedup: str = "exact"  # duplicates left out before scoring: none, exact, normalized, instruction, near
    dedup_keep: str = "best"  # the copy kept of each group: best (highest preference; differing copies are scored) or first (none scored)
    dedup_threshold: float = 0.8  # near: estimated Jaccard similarity of 5-word shingles at which two records are copies
    decontaminate: list[str] = field(default_factory=list)  # benchmark test sets (files or folders) whose items are left out
    decontaminate_ngram: int = 13  # words per n-gram shared with a benchmark text that flags a record
    languages: list[str] = field(default_factory=lambda: ["en"])  # instruction languages kept (ISO 639 codes; keep_non_english keeps all)
    skip_invalid: bool = False
    max_record_bytes: int = 1 << 20  # a record (JSONL line, or the turns' UTF-8 text) over this is invalid; 0 = no limit
    schema: str | None = None
    type_dataset: str | None = None  # sft, dpo or kto (the reference's key): checked against the inputs; None = as read
    split: str | None = None  # the split of a Hugging Face DatasetDict / hub dataset input
    sources: list[SourceSpec] = field(default_factory=list)
    format: str = "jsonl"
    name: str | None = None
    batch_size: int = 64
    device: str | None = None
    num_threads: int = 0
    show_progress: bool | None = None
    profile: str | None = None  # scoring profile: lite, paper, auto (None: paper with a GPU, else lite) or none
    scorers: list[str] = field(default_factory=list)  # scorers that override the profile (and always run)
    scorer_models: dict[str, str] = field(default_factory=dict)  # scorer name -> model id or local path
    judge_url: str | None = None  # OpenAI-compatible endpoint of the LLM judges
    judge_backend: str | None = None  # vllm, transformers, openai (None: openai with a URL, vllm with a GPU, else transformers)
    judge_fallback: str = "reference"  # unparsable/failed judge answers: the reference's value, or "missing" (NaN)
    judge_max_tokens: int | None = None
    judge_gpus: int = 1  # GPUs per in-process vLLM judge replica (tensor parallel)  # answer budget per judge request (None: each judge's default)
    trust_remote_code: list[str] = field(default_factory=list)  # model ids whose checkpoint code may run
    batch_tokens: int | None = None  # token budget per forward pass of the model scorers
    kmeans_backend: str = "auto"  # auto (faiss GPU > torch CUDA > faiss CPU), faiss or torch
    engine: str = "local"  # local (this process) or ray (Ray Data actors; pip install 'laser_fast[ray]')
    ray_address: str | None = None  # with engine ray: "auto", ray://host:port, or None ($RAY_ADDRESS or a local instance)

    def validate(self) -> SelectOptions:
        """Check every option and put names in canonical form (strategy, profile, scorers,
        proportions, category maps); returns ``self``.

        Imports only the registry (:mod:`laser_fast.metrics`), no stage module.

        Raises:
            ConfigError: a bad value; the message names the option and what to use instead.
        """
        if self.budget is None and self.token_budget is None:
            raise ConfigError("no budget: pass --budget N (records) or --token-budget N (tokens), or set sample_size in the config")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 0):
            raise ConfigError(f"budget (--budget) must be a non-negative integer, got {self.budget!r}")
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 0):
            raise ConfigError(f"token_budget (--token-budget) must be a non-negative integer, got {self.token_budget!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ConfigError(f"batch_size (--batch-size) must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.num_threads, int) or isinstance(self.num_threads, bool) or self.num_threads < 0:
            raise ConfigError(f"num_threads (--num-threads) must be a non-negative integer (0: every core), got {self.num_threads!r}")
        self.strategy = canonical_strategy(self.strategy)
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode '{self.mode}': use one of {', '.join(MODES)}")
        if self.order not in ORDERS:
            raise ConfigError(f"unknown output order '{self.order}': use one of {', '.join(ORDERS)}")
        self.threshold_percentile = _as_number(self.threshold_percentile, "threshold_percentile (--threshold-percentile)")
        if not 0.0 <= self.threshold_percentile <= 1.0:
            raise ConfigError(f"threshold_percentile_clustering must be in [0, 1], got {self.threshold_percentile}")
        self.min_distance = _as_number(self.min_distance, "min_distance (--min-distance)")
        if not 0.0 <= self.min_distance <= 2.0:
            raise ConfigError(f"min_distance must be in [0, 2] (cosine distance), got {self.min_distance}")
        if self.format not in ("jsonl", "parquet"):
            raise ConfigError(f"unknown output format '{self.format}': use jsonl or parquet")
        if isinstance(self.proportions, str) and self.proportions.strip().lower() in ("natural", "none", "paper"):
            self.proportions = parse_proportions_arg(self.proportions)
        if isinstance(self.proportions, dict):
            self.proportions = normalise_proportions(self.proportions, "proportions")
        elif self.proportions not in (None, "natural", "none"):
            raise ConfigError(f"proportions must be a mapping, 'paper', 'natural' or 'none', got {self.proportions!r}")
        if self.setfit_limits is not None:
            self.setfit_limits = parse_category_map(self.setfit_limits, "setfit_limits")
        if self.profile not in (None, "auto", "none"):
            self.profile = canonical_profile(self.profile)
        self.scorers = parse_scorer_list(self.scorers)
        from laser_fast.metrics import JUDGE_BACKENDS, JUDGE_FALLBACKS

        if self.judge_backend in ("", "auto"):
            self.judge_backend = None
        if self.judge_backend is not None:
            self.judge_backend = str(self.judge_backend).strip().lower()
            if self.judge_backend not in JUDGE_BACKENDS:
                raise ConfigError(f"unknown judge_backend '{self.judge_backend}': use one of {', '.join(JUDGE_BACKENDS)} (or auto)")
        if self.judge_fallback not in JUDGE_FALLBACKS:
            raise ConfigError(f"judge_fallback must be one of {', '.join(JUDGE_FALLBACKS)}, got {self.judge_fallback!r}")
        from laser_fast.runtime.devices import KMEANS_BACKENDS

        if self.kmeans_backend not in KMEANS_BACKENDS:
            raise ConfigError(f"unknown kmeans_backend '{self.kmeans_backend}': use one of {', '.join(KMEANS_BACKENDS)}")
        self.engine = str(self.engine or "local").strip().lower()
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine '{self.engine}': use one of {', '.join(ENGINES)}")
        from laser_fast.runtime.devices import check_device

        try:
            self.device = check_device(self.device, engine=self.engine)
        except ValueError as e:
            raise ConfigError(f"{e} (--device)") from None
        if self.judge_url is not None:
            self.judge_url = _check_url(self.judge_url)
        if self.split is not None and (not isinstance(self.split, str) or not self.split.strip()):
            raise ConfigError(f"split (--split) must be a split name such as train, got {self.split!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ConfigError(f"ray_address ({self.ray_address!r}) is set but the engine is '{self.engine}': add --engine ray")
        if not isinstance(self.judge_gpus, int) or isinstance(self.judge_gpus, bool) or self.judge_gpus < 1:
            raise ConfigError(f"judge_gpus must be an integer >= 1 (GPUs per vLLM judge replica), got {self.judge_gpus!r}")
        if self.judge_gpus > 1 and self.judge_backend not in (None, "vllm"):
            raise ConfigError(f"judge_gpus {self.judge_gpus} splits a judge over GPUs with vLLM's tensor parallelism; "
                              f"the {self.judge_backend} backend runs on one device: use --judge-backend vllm or drop --judge-gpus")
        if self.judge_max_tokens is not None and (not isinstance(self.judge_max_tokens, int) or self.judge_max_tokens < 8):
            raise ConfigError(f"judge_max_tokens must be an integer >= 8, got {self.judge_max_tokens!r}")
        if isinstance(self.trust_remote_code, str):
            self.trust_remote_code = [self.trust_remote_code]
        if not isinstance(self.trust_remote_code, (list, tuple)) or not all(isinstance(m, str) and m.strip() for m in self.trust_remote_code):
            raise ConfigError(f"trust_remote_code must be a list of model ids (e.g. [IIS-NLP/difficulty-scorer-8B-v2]), got {self.trust_remote_code!r}")
        self.trust_remote_code = [m.strip() for m in self.trust_remote_code]
        if self.batch_tokens is not None and (not isinstance(self.batch_tokens, int) or self.batch_tokens < 1):
            raise ConfigError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")
        if isinstance(self.decontaminate, (str, Path)):
            self.decontaminate = [str(self.decontaminate)]
        self.decontaminate = [str(x) for x in (self.decontaminate or [])]
        if (not isinstance(self.decontaminate_ngram, int) or isinstance(self.decontaminate_ngram, bool)
                or not 3 <= self.decontaminate_ngram <= 50):
            raise ConfigError(f"decontaminate_ngram (--decontaminate-ngram) must be an integer from 3 to 50 (words), got {self.decontaminate_ngram!r}")
        if (not isinstance(self.dedup_threshold, (int, float)) or isinstance(self.dedup_threshold, bool)
                or not math.isfinite(self.dedup_threshold) or not 0.5 <= self.dedup_threshold <= 1.0):
            raise ConfigError(f"dedup_threshold (--dedup-threshold) must be a number from 0.5 to 1.0 (Jaccard similarity), got {self.dedup_threshold!r}")
        self.dedup = str(self.dedup or "none").strip().lower()
        if self.dedup not in DEDUP_MODES:
            raise ConfigError(f"unknown dedup mode {self.dedup!r} (--dedup): use one of {', '.join(DEDUP_MODES)}")
        if self.type_dataset is not None:
            self.type_dataset = str(self.type_dataset).strip().lower()
            if self.type_dataset not in ("sft", "dpo", "kto"):
                raise ConfigError(f"unknown type_dataset {self.type_dataset!r}: use sft, dpo (prompt/chosen/rejected) or kto (prompt/completion/label)")
        self.dedup_keep = str(self.dedup_keep or "best").strip().lower()
        if self.dedup_keep not in DEDUP_KEEP:
            raise ConfigError(f"unknown dedup_keep {self.dedup_keep!r} (--dedup-keep): use one of {', '.join(DEDUP_KEEP)}")
        if isinstance(self.languages, str):
            self.languages = [x for x in self.languages.replace(" ", "").split(",") if x]
        if (not isinstance(self.languages, (list, tuple)) or not self.languages
                or not all(isinstance(x, str) and re.fullmatch(r"[a-z]{2,3}", x.strip().lower()) for x in self.languages)):
            raise ConfigError(f"languages must be ISO 639 codes such as en or en,de (two or three letters), got {self.languages!r}")
        self.languages = [ISO639_2_TO_1.get(x.strip().lower(), x.strip().lower()) for x in self.languages]
        if not isinstance(self.max_record_bytes, int) or isinstance(self.max_record_bytes, bool) or self.max_record_bytes < 0:
            raise ConfigError(f"max_record_bytes must be a non-negative integer (bytes per record; 0: no limit), got {self.max_record_bytes!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2^32), got {self.seed!r}")
        if self.max_seq_length is not None and (not isinstance(self.max_seq_length, int) or isinstance(self.max_seq_length, bool)
                                                or self.max_seq_length < 1):
            raise ConfigError(f"max_seq_length must be a positive integer (tokens; --max-seq-length 0 or None: no limit), got {self.max_seq_length!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The options as plain data (sources as dicts), for the manifest."""
        d = asdict(self)
        d["sources"] = [asdict(s) for s in self.sources]
        if d.get("judge_url"):  # credentials in the URL never reach the manifest
            from laser_fast.scorers.judge_client import redact_url

            d["judge_url"] = redact_url(d["judge_url"])
        return d


def parse_category_map(value, key: str) -> dict[str, float]:
    """``{Math: 0.3, ...}``, a list of one-key dicts (the reference's setfit_limits), or
    ``"Math=0.3,Coding=0.3"`` -> canonical category -> float."""
    items: list[tuple[Any, Any]] = []
    if isinstance(value, str):
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ConfigError(f"{key}: '{part}' is not CATEGORY=VALUE (e.g. Math=0.3,Coding=0.3)")
            a, b = part.split("=", 1)
            items.append((a, b))
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        for entry in value:
            if not isinstance(entry, dict):
                raise ConfigError(f"{key}: expected a list of {{category: value}} entries, got {entry!r}")
            items.extend(entry.items())
    else:
        raise ConfigError(f"{key}: expected a mapping of category to number, got {value!r}")
    out: dict[str, float] = {}
    for a, b in items:
        c = canonical_category(str(a))
        if c is None:
            raise ConfigError(f"{key}: unknown category '{a}' (use {', '.join(CATEGORIES)})")
        try:
            v = float(b)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{a}: '{b}' is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{key}.{a}: must be a finite number >= 0, got {b!r}")
        out[c] = v
    return out


def normalise_proportions(value, key: str) -> dict[str, float]:
    props = parse_category_map(value, key)
    total = sum(props.values())
    if total <= 0:
        raise ConfigError(f"{key}: proportions sum to {total}; give at least one positive share")
    if abs(total - 1.0) > 1e-6:
        logger.warning("%s sum to %.4f, not 1: using them as relative weights", key, total)
    return {c: props.get(c, 0.0) / total for c in CATEGORIES}


#: ISO 639-2 codes (B and T) of common languages -> the ISO 639-1 codes the language detector gives
#: (fastText lid.176 uses two letters where a language has them, so ``eng`` would match nothing)
ISO639_2_TO_1 = {
    "eng": "en", "deu": "de", "ger": "de", "fra": "fr", "fre": "fr", "spa": "es", "ita": "it", "por": "pt",
    "rus": "ru", "zho": "zh", "chi": "zh", "jpn": "ja", "kor": "ko", "ara": "ar", "nld": "nl", "dut": "nl",
    "pol": "pl", "tur": "tr", "hin": "hi", "vie": "vi", "swe": "sv", "dan": "da", "fin": "fi", "nor": "no",
    "ces": "cs", "cze": "cs", "ell": "el", "gre": "el", "heb": "he", "hun": "hu", "ind": "id", "ukr": "uk",
    "ron": "ro", "rum": "ro", "tha": "th", "fas": "fa", "per": "fa", "ben": "bn", "msa": "ms", "may": "ms",
    "cat": "ca", "bul": "bg", "hrv": "hr", "srp": "sr", "slk": "sk", "slo": "sk", "slv": "sl", "est": "et",
    "lav": "lv", "lit": "lt", "urd": "ur", "tam": "ta", "tel": "te", "mar": "mr", "guj": "gu", "kan": "kn",
    "mal": "ml", "pan": "pa", "swa": "sw", "tgl": "tl", "afr": "af", "eus": "eu", "baq": "eu", "glg": "gl",
    "isl": "is", "ice": "is", "gle": "ga", "cym": "cy", "wel": "cy", "sqi": "sq", "alb": "sq", "mkd": "mk",
    "mac": "mk", "bel": "be", "kaz": "kk", "uzb": "uz", "aze": "az", "hye": "hy", "arm": "hy", "kat": "ka",
    "geo": "ka", "mon": "mn", "nep": "ne", "sin": "si", "khm": "km", "lao": "lo", "mya": "my", "bur": "my",
    "amh": "am", "som": "so", "hau": "ha", "yor": "yo", "ibo": "ig", "zul": "zu", "xho": "xh", "epo": "eo",
    "lat": "la", "ltz": "lb", "bos": "bs", "tat": "tt", "kir": "ky", "tgk": "tg", "tuk": "tk", "pus": "ps",
    "kur": "ku", "snd": "sd", "uig": "ug", "yid": "yi", "fry": "fy", "gla": "gd", "bre": "br", "cos": "co",
    "oci": "oc", "nob": "no", "nno": "nn",
}


def _as_number(value: Any, name: str) -> float:
    """``value`` as a float, or a ConfigError naming the option."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None


def parse_proportions_arg(text: str) -> dict[str, float] | str:
    t = text.strip().lower()
    if t in ("natural", "none", "paper"):
        return None if t == "paper" else t  # type: ignore[return-value]
    return normalise_proportions(text, "--proportions")


def _check_url(url: Any) -> str:
    """An http(s) URL with a host (``--judge-url``), credentials masked in the message."""
    from urllib.parse import urlsplit

    from laser_fast.scorers.judge_client import redact_url

    text = str(url).strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"judge_url (--judge-url) {redact_url(text)!r} is not an http(s) URL with a host: give the "
                          "endpoint's base URL, e.g. http://127.0.0.1:8000/v1")
    return text


def _beside(config: Path, path: Any) -> Any:
    """A relative path of a config, taken from the config's folder (URIs and absolute paths as given)."""
    if not isinstance(path, str) or "://" in path or Path(path).expanduser().is_absolute():
        return path
    return str(config.parent / path)


def read_config(path: str | Path, *, input_dir: str | None = None) -> dict[str, Any]:
    """Read a YAML config (reference style or ours) into SelectOptions keyword arguments.

    Raises:
        ConfigError: missing file, bad YAML, bad values; the message names the file and key.
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a config file: give the path of a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); save the config as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{p}: expected a mapping of settings")
    name = None
    if len(raw) == 1 and isinstance(next(iter(raw.values())), dict):
        name, cfg = next(iter(raw.items()))  # reference style: {experiment_name: {...}}
    else:
        cfg = raw
    known_ours = {f.name for f in fields(SelectOptions)}
    unknown = sorted(k for k in cfg if k not in _REF_TOP_KEYS and k not in known_ours)
    if unknown:
        logger.warning("%s: ignoring unknown config key(s): %s", p, ", ".join(map(str, unknown)))
    if "custom_embedder" in cfg:
        logger.warning("%s: custom_embedder (one embedding model per category) is not supported; using default_embedding_model for every category", p)

    if "sources" in cfg:
        logger.warning("%s: ignoring key 'sources': list the inputs under 'data' (name, data_path, ...)", p)
    for ours, theirs in (("budget", "sample_size"), ("token_budget", "token_size")):
        if cfg.get(ours) is not None and cfg.get(theirs) is not None and cfg[ours] != cfg[theirs]:
            raise ConfigError(f"{p}: '{ours}: {cfg[ours]}' and '{theirs}: {cfg[theirs]}' give two budgets; keep one of the keys")
    out: dict[str, Any] = {"name": str(name) if name is not None else p.stem}
    for k in known_ours & set(cfg):
        if k != "sources":
            out[k] = cfg[k]
    # input files named in the config are taken from the config's folder, as data_path is
    for k in ("scores", "decontaminate"):
        if isinstance(out.get(k), str):
            out[k] = [out[k]]
        if isinstance(out.get(k), list):
            out[k] = [_beside(p, v) for v in out[k]]

    def take(src_key, dst_key, conv=lambda v: v):
        if src_key in cfg and cfg[src_key] is not None:
            try:
                out[dst_key] = conv(cfg[src_key])
            except (TypeError, ValueError):
                raise ConfigError(f"{p}: key '{src_key}' has a bad value {cfg[src_key]!r}") from None

    take("sample_size", "budget", int)
    take("token_size", "token_budget", int)
    take("scoring_strategy", "strategy", str)
    take("threshold_percentile_clustering", "threshold_percentile", float)
    take("min_distance", "min_distance", float)
    take("default_embedding_model", "embedding_model", str)
    take("ordering_strategy", "order", str)
    if "setfit_limits" in cfg:
        out["setfit_limits"] = parse_category_map(cfg["setfit_limits"], f"{p}: setfit_limits")
    if "final_setfit_proportions" in cfg:
        out["proportions"] = normalise_proportions(cfg["final_setfit_proportions"], f"{p}: final_setfit_proportions")
    elif "proportions" in cfg and isinstance(cfg["proportions"], (dict, list)):
        out["proportions"] = normalise_proportions(cfg["proportions"], f"{p}: proportions")

    is_reference = name is not None or any(k in cfg for k in ("scoring_strategy", "clustering", "final_setfit_proportions"))
    if "mode" not in cfg and is_reference:
        clustering = cfg.get("clustering")
        strategy = str(cfg.get("scoring_strategy", "default"))
        if clustering in ("categories", "all"):
            out["mode"] = "kmeans"
            if clustering == "all":
                out["proportions"] = "none"
        elif clustering is not None:
            raise ConfigError(f"{p}: clustering '{clustering}' is not one of: categories, all (or leave it out)")
        elif "embedding" in strategy:
            out["mode"] = "greedy"
            out.setdefault("proportions", "none")
        else:
            out["mode"] = "none"
            out.setdefault("proportions", "none")
    if "threshold_percentile_clustering" not in cfg and is_reference and "threshold_percentile" not in cfg:
        out["threshold_percentile"] = 0.0  # the reference's default when the key is absent

    sources = []
    for i, entry in enumerate(cfg.get("data") or []):
        where = f"{p}: data[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with name and data_path")
        if "subsets" in entry:
            raise ConfigError(f"{where}: 'subsets' entries are not supported; list each subset as its own data entry")
        bad = sorted(set(entry) - _SOURCE_KEYS)
        if bad:
            logger.warning("%s: ignoring unknown key(s): %s", where, ", ".join(bad))
        path = entry.get("data_path", entry.get("path"))
        if not path:
            raise ConfigError(f"{where}: missing 'data_path'")
        path = str(path)
        if "DATA_PATH" in path:
            if input_dir is None:
                raise ConfigError(f"{where}: data_path '{path}' uses DATA_PATH: pass --input-dir DIR to say where the data lies")
            path = path.replace("DATA_PATH", str(input_dir))
        elif not Path(path).is_absolute() and "://" not in path:  # a URI (s3://, hf://, ...) is taken as given
            base = Path(input_dir) if input_dir else p.parent
            path = str(base / path)
        if entry.get("min_distance") is not None:
            logger.warning("%s: min_distance per data entry is not applied (the greedy filter runs per category over all "
                           "sources): set min_distance at the top level", where)
        schema = entry.get("schema")
        if schema is None and entry.get("multi_turn") is False:
            schema = None  # the reference converts Alpaca records; auto-detection does the same
        def num(key: str, conv, default=None, low: float = 0.0, entry=entry, where=where):
            value = entry.get(key, default)
            if value is None:
                return None
            try:
                v = conv(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.{key}: {value!r} is not a number") from None
            if isinstance(value, bool) or not math.isfinite(v) or v < low:
                raise ConfigError(f"{where}.{key}: must be a finite number >= {low:g}, got {value!r}")
            return v

        sources.append(
            SourceSpec(
                path=path,
                name=str(entry["name"]) if entry.get("name") is not None else None,
                schema=schema,
                sample_size=num("sample_size", int),
                token_size=num("token_size", int),
                oversampling=num("oversampling", float, 1.0),
                setfit_limits=parse_category_map(entry["setfit_limits"], f"{where}.setfit_limits") if entry.get("setfit_limits") else None,
                min_distance=num("min_distance", float),
                language=str(entry["language"]) if entry.get("language") is not None else None,
            )
        )
    if sources:
        out["sources"] = sources
    return out
