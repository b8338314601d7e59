"""The one registry of metrics and scorers, and every table derived from it.

Two tables hold the facts:

:data:`METRIC_SPECS`
    one :class:`MetricSpec` per LASER metric: its accepted spellings, how step 2 scales it
    (robustly, min-max), the categories it is fitted over, the categories whose dedicated quality
    it is, and the scorer named in error messages.
:data:`SCORER_SPECS`
    one :class:`ScorerSpec` per scorer: the class that implements it (imported only when it is
    built), its output columns and categories, the metrics it fills in each scoring profile, and
    the constructor arguments it takes.

Everything else is derived by :class:`Registry` (:data:`REGISTRY` is the registry of the two
tables): :data:`METRICS`, :data:`METRIC_ALIASES`, :data:`METRIC_SCORER`, :data:`ROBUST_METRICS`,
:data:`MINMAX_METRICS`, :data:`DEDICATED_QUALITY`, :func:`metric_relevant`, :data:`PROFILES`,
:data:`PROFILE_METRICS`, :data:`SCORER_OUTPUTS`, :data:`SCORER_METRICS`, :data:`SCORE_COLUMNS` and
:func:`build_scorer`. Adding a scorer is one :class:`ScorerSpec` entry plus its class.

Importing this module is cheap: no torch, transformers, numba or faiss, and no stage module.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from laser_fast.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from laser_fast.scorers.base import Scorer

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# the two tables' row types
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricSpec:
    """One LASER metric.

    Attributes:
        name: the canonical name (the reference's "clean" name).
        aliases: other spellings accepted in input data and score files.
        robust: scaled robustly (``(x - median) / (q99 - q1)``) before it is combined.
        minmax: min-max scaled to [0, 1] within each source before it is combined.
        relevant: the categories it is fitted over. None: every category. A tuple: these
            categories and every category that routes no dedicated quality (the reference's rule:
            a category with a dedicated quality metric fits only the general metrics and its own).
        dedicated: the categories whose dedicated quality this metric is (``dedicated_quality``
            and ``combination`` read it there instead of the general ``quality``).
        scorer: the scorer that produces it, as error messages name it.
    """

    name: str
    aliases: tuple[str, ...] = ()
    robust: bool = False
    minmax: bool = False
    relevant: tuple[str, ...] | None = None
    dedicated: tuple[str, ...] = ()
    scorer: str = ""


#: The settings of a run a scorer may take (:class:`ScorerSettings` fields), with the constructor
#: keyword each is passed as. ``model`` is ``settings.models[name]`` (passed when given);
#: ``tokenizer`` is ``settings.models[name]`` or else ``settings.tokenizer`` (always passed);
#: the others are passed when set.
SETTING_KEYWORDS = MappingProxyType({"model": "model", "device": "device", "batch_tokens": "batch_tokens", "judge_url": "base_url",
                                     "tokenizer": "tokenizer", "judge_backend": "backend", "judge_fallback": "fallback", "judge_max_tokens": "max_tokens",
                                     "judge_gpus": "gpus", "trust_remote_code": "trust_remote_code"})

#: The settings of the Hugging Face model scorers.
HF_SETTINGS = ("model", "device", "batch_tokens", "trust_remote_code")

#: The settings of the LLM judges.
JUDGE_SETTINGS = ("model", "judge_url", "judge_backend", "judge_fallback", "judge_max_tokens", "judge_gpus", "device", "trust_remote_code")

#: Where the judges get their answers (``--judge-backend``; see laser_fast.scorers.judge_backends).
JUDGE_BACKENDS = ("vllm", "transformers", "openai")

#: What an unparsable or failed judge answer scores (``--judge-fallback``).
JUDGE_FALLBACKS = ("reference", "missing")


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer, as the registry knows it.

    Attributes:
        name: the unique name (``--scorers NAME``, ``--scorer-model NAME=...``, the cache folder).
        cls: ``"module:Class"`` of its :class:`~laser_fast.scorers.base.Scorer`, imported when built.
        outputs: the columns its ``score`` returns (the class declares the same).
        categories: the categories it applies to (None = every record; the class declares the same).
        profiles: profile -> {metric: output column} it fills in that profile.
        fills: metric -> output column it stands for when named in ``--scorers`` (overriding the
            profile); None = every metric it fills in some profile.
        kwargs: fixed constructor arguments (e.g. DeitaScorer's ``kind``).
        settings: the run settings it takes (names in :data:`SETTING_KEYWORDS`).
        factory: name of a classmethod of ``cls`` that builds it from the same keywords (None =
            the constructor).
        doc: one line for listings.
    """

    name: str
    cls: str
    outputs: tuple[str, ...]
    categories: tuple[str, ...] | None = None
    profiles: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    fills: Mapping[str, str] | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    settings: tuple[str, ...] = ()
    factory: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        # read-only views: a spec is shared by every registry built from it
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "categories", None if self.categories is None else tuple(self.categories))
        object.__setattr__(self, "profiles", MappingProxyType({p: MappingProxyType(dict(m)) for p, m in self.profiles.items()}))
        if self.fills is not None:
            object.__setattr__(self, "fills", MappingProxyType(dict(self.fills)))
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "settings", tuple(self.settings))

    def metric_fills(self) -> dict[str, str]:
        """metric -> output column it stands for when named explicitly."""
        if self.fills is not None:
            return dict(self.fills)
        out: dict[str, str] = {}
        for table in self.profiles.values():
            out.update(table)
        return out


# --------------------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------------------

#: The metrics, in the order of :data:`METRICS` (and of the score columns in the outputs).
METRIC_SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("quality", aliases=("deita_quality", "quality_scores"), robust=True, minmax=True, scorer="deita_quality (or onepass, lite_quality)"),
    MetricSpec("complexity", aliases=("deita_complexity", "complexity_scores"), robust=True, minmax=True, scorer="deita_complexity"),
    MetricSpec("difficulty", aliases=("difficulty_v2",), minmax=True, scorer="difficulty"),
    MetricSpec("if_quality", robust=True, relevant=("Generation", "Brainstorming"), dedicated=("Generation", "Brainstorming"), scorer="if_quality"),
    MetricSpec("process_reward", robust=True, relevant=("Math",), dedicated=("Math",), scorer="process_reward"),
    MetricSpec("code_quality", robust=True, relevant=("Coding",), dedicated=("Coding",), scorer="code_quality"),
    MetricSpec("inst_length", relevant=(), scorer="tokens"),
    MetricSpec("resp_length", relevant=(), scorer="tokens"),
    MetricSpec("last_resp_length", relevant=(), scorer="tokens"),
)

#: the metrics that judge a response (a preference pair's quality is their margin, see laser_fast.io.pairs)
QUALITY_METRICS = ("quality", "if_quality", "process_reward", "code_quality")
_LITE_QUALITY_FILLS = {m: "lite_quality" for m in QUALITY_METRICS}
_ONEPASS_FILLS = {**{m: "onepass_quality" for m in QUALITY_METRICS}, "difficulty": "onepass_difficulty", "complexity": "onepass_difficulty"}

#: The scorers, in the order error messages and listings name them.
SCORER_SPECS: tuple[ScorerSpec, ...] = (
    ScorerSpec("tokens", "laser_fast.scorers.tokens:TokenCounter", ("inst_length", "resp_length", "last_resp_length"),
               settings=("tokenizer",),
               doc="token counts of the instructions, the responses and the last response (MiniLM tokenizer by default)"),
    ScorerSpec("difficulty", "laser_fast.scorers.models:DifficultyScorer", ("difficulty",),
               profiles={"paper": {"difficulty": "difficulty"}}, settings=HF_SETTINGS,
               doc="IIS-NLP/difficulty-scorer-8B-v2"),
    ScorerSpec("deita_quality", "laser_fast.scorers.models:DeitaScorer", ("quality",),
               profiles={"paper": {"quality": "quality"}}, kwargs={"kind": "quality"}, settings=HF_SETTINGS,
               doc="hkust-nlp/deita-quality-scorer"),
    ScorerSpec("deita_complexity", "laser_fast.scorers.models:DeitaScorer", ("complexity",),
               profiles={"paper": {"complexity": "complexity"}}, kwargs={"kind": "complexity"}, settings=HF_SETTINGS,
               doc="hkust-nlp/deita-complexity-scorer"),
    ScorerSpec("process_reward", "laser_fast.scorers.models:ProcessRewardScorer", ("process_reward", "process_reward_min", "process_reward_mean"),
               categories=("Math",), profiles={"paper": {"process_reward": "process_reward"}}, settings=HF_SETTINGS,
               doc="Qwen/Qwen2.5-Math-PRM-7B on Math records"),
    ScorerSpec("code_quality", "laser_fast.scorers.judges:CodeQualityScorer", ("code_quality",),
               categories=("Coding",), profiles={"paper": {"code_quality": "code_quality"}}, settings=JUDGE_SETTINGS,
               doc="LLM judge (Qwen2.5-Coder-14B-Instruct) on Coding records"),
    ScorerSpec("if_quality", "laser_fast.scorers.judges:IFQualityScorer", ("if_quality",),
               categories=("Generation", "Brainstorming"), profiles={"paper": {"if_quality": "if_quality"}}, settings=JUDGE_SETTINGS,
               doc="LLM judge (Qwen3-14B) on Generation and Brainstorming records"),
    ScorerSpec("ifd", "laser_fast.scorers.models:IFDScorer", ("ifd", "ifd_cond_loss", "ifd_direct_loss"),
               settings=HF_SETTINGS,
               doc="instruction-following difficulty of SmolLM2-135M-Instruct"),
    ScorerSpec("lite_difficulty", "laser_fast.scorers.lite_difficulty:LiteDifficulty", ("lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss"),
               profiles={"lite-llm": {"difficulty": "lite_difficulty", "complexity": "lite_difficulty"}},
               # short windows keep it CPU-friendly: the first 128 response tokens, the last 256 prompt tokens
               kwargs={"max_length": 128, "max_prompt_length": 256}, settings=HF_SETTINGS, factory="build",
               doc="the lite-llm stand-in for difficulty and complexity: IFD of SmolLM2-135M-Instruct clipped to [0, 1]"),
    ScorerSpec("lite_quality", "laser_fast.scorers.lite:LiteQualityScorer", ("lite_quality",),
               profiles={"lite-llm": _LITE_QUALITY_FILLS}, settings=("device",),
               doc="the lite-llm stand-in for every quality metric: a linear head on SmolLM2 and MiniLM features (CPU)"),
    ScorerSpec("onepass", "laser_fast.scorers.onepass:OnePassScorer", ("onepass_quality", "onepass_difficulty"),
               profiles={"lite": _ONEPASS_FILLS}, settings=("model", "device"),
               doc="the lite profile's quality and difficulty: linear heads on one MiniLM pass over instruction and response"),
)


# --------------------------------------------------------------------------------------
# the registry: checks and derived tables
# --------------------------------------------------------------------------------------

class Registry:
    """Metric and scorer specs, checked, with every table derived from them.

    Args:
        scorers: the scorer specs, in listing order.
        metrics: the metric specs, in column order.

    Raises:
        ValueError: the specs contradict each other (duplicate names, a metric filled from a
            column the scorer does not output, two scorers filling one metric in one profile...).

    Attributes:
        scorers: name -> :class:`ScorerSpec`.
        metric_specs: name -> :class:`MetricSpec`.
        metrics: canonical metric names.
        metric_aliases: alias -> canonical metric name.
        metric_scorer: metric -> producing scorer, for error messages.
        robust_metrics / minmax_metrics: the metrics scaled that way, in metric order.
        dedicated_quality: category -> the quality metric routed there.
        profiles: profile names, sorted.
        profile_metrics: profile -> metric -> (scorer, output column).
        scorer_outputs: scorer -> output columns.
        scorer_metrics: scorer -> metric -> output column, when the scorer is named explicitly.
        score_columns: the columns written to outputs: the metrics, then the scorers' other
            outputs, grouped by scorer, scorers ordered by the first metric they fill (then by
            listing order; scorers that fill no metric last).
    """

    def __init__(self, scorers: Iterable[ScorerSpec], metrics: Iterable[MetricSpec]):
        self.scorers: dict[str, ScorerSpec] = {}
        for s in scorers:
            if s.name in self.scorers:
                raise ValueError(f"scorer '{s.name}' is registered twice")
            self.scorers[s.name] = s
        self.metric_specs: dict[str, MetricSpec] = {}
        for m in metrics:
            if m.name in self.metric_specs:
                raise ValueError(f"metric '{m.name}' is registered twice")
            self.metric_specs[m.name] = m
        self.metrics: tuple[str, ...] = tuple(self.metric_specs)
        self.metric_aliases: dict[str, str] = {}
        for m in self.metric_specs.values():
            for a in m.aliases:
                if a in self.metric_specs or a in self.metric_aliases:
                    raise ValueError(f"metric alias '{a}' of '{m.name}' is already a metric or another metric's alias")
                self.metric_aliases[a] = m.name
        self.metric_scorer: dict[str, str] = {m.name: m.scorer or m.name for m in self.metric_specs.values()}
        self.robust_metrics: tuple[str, ...] = tuple(m.name for m in self.metric_specs.values() if m.robust)
        self.minmax_metrics: tuple[str, ...] = tuple(m.name for m in self.metric_specs.values() if m.minmax)
        self.dedicated_quality: dict[str, str] = {}
        for m in self.metric_specs.values():
            for c in m.dedicated:
                if c in self.dedicated_quality:
                    raise ValueError(f"category '{c}' routes two dedicated quality metrics: {self.dedicated_quality[c]} and {m.name}")
                self.dedicated_quality[c] = m.name
        # per category with a dedicated quality: the metrics fitted over its records (elsewhere: all)
        self._fitted_in: dict[str, frozenset[str]] = {
            c: frozenset(m.name for m in self.metric_specs.values() if m.relevant is None or c in m.relevant) for c in self.dedicated_quality
        }

        self.scorer_outputs: dict[str, tuple[str, ...]] = {s.name: s.outputs for s in self.scorers.values()}
        self.scorer_metrics: dict[str, dict[str, str]] = {s.name: s.metric_fills() for s in self.scorers.values()}
        self.profiles: tuple[str, ...] = tuple(sorted({p for s in self.scorers.values() for p in s.profiles}))
        self.profile_metrics: dict[str, dict[str, tuple[str, str]]] = {}
        for p in self.profiles:
            table: dict[str, tuple[str, str]] = {}
            for s in self.scorers.values():
                for metric, col in s.profiles.get(p, {}).items():
                    if metric in table:
                        raise ValueError(f"profile '{p}': metric '{metric}' is filled by both {table[metric][0]} and {s.name}")
                    table[metric] = (s.name, col)
            order = {m: i for i, m in enumerate(self.metrics)}
            self.profile_metrics[p] = dict(sorted(table.items(), key=lambda kv: order.get(kv[0], len(order))))
        for s in self.scorers.values():
            self._check_scorer(s)
        self.score_columns: tuple[str, ...] = self._score_columns()

    def _check_scorer(self, s: ScorerSpec) -> None:
        if ":" not in s.cls:
            raise ValueError(f"scorer '{s.name}': cls must be 'module:Class', got {s.cls!r}")
        if not s.outputs:
            raise ValueError(f"scorer '{s.name}' declares no outputs")
        tables = [("fills", dict(s.fills or {}))] + [(f"profile '{p}'", dict(t)) for p, t in s.profiles.items()]
        for where, table in tables:
            for metric, col in table.items():
                if metric not in self.metric_specs:
                    raise ValueError(f"scorer '{s.name}' ({where}) fills the unknown metric '{metric}'")
                if col not in s.outputs:
                    raise ValueError(f"scorer '{s.name}' ({where}) fills '{metric}' from '{col}', which is not one of its outputs {s.outputs}")
        bad = [k for k in s.settings if k not in SETTING_KEYWORDS]
        if bad:
            raise ValueError(f"scorer '{s.name}': unknown settings {bad} (use {', '.join(SETTING_KEYWORDS)})")

    def _score_columns(self) -> tuple[str, ...]:
        order = {m: i for i, m in enumerate(self.metrics)}
        last = len(order)
        ranked = sorted(self.scorers.values(), key=lambda s: min((order[m] for m in self.scorer_metrics[s.name]), default=last))
        cols = list(self.metrics)
        for s in ranked:
            cols.extend(c for c in s.outputs if c not in cols)
        return tuple(cols)

    def extend(self, *scorers: ScorerSpec, metrics: Iterable[MetricSpec] = ()) -> Registry:
        """A new registry with these scorers (and metrics) added after the present ones."""
        return Registry([*self.scorers.values(), *scorers], [*self.metric_specs.values(), *metrics])

    def metric_relevant(self, category: str | None, metric: str) -> bool:
        """Whether ``metric`` is fitted over records of ``category`` (see :attr:`MetricSpec.relevant`)."""
        fitted = self._fitted_in.get(category)  # type: ignore[arg-type]
        return True if fitted is None else metric in fitted


#: The registry of :data:`SCORER_SPECS` and :data:`METRIC_SPECS`.
REGISTRY = Registry(SCORER_SPECS, METRIC_SPECS)

#: Canonical metric names (the reference's "clean" names, with ``difficulty`` for its difficulty_v2).
METRICS: tuple[str, ...] = REGISTRY.metrics
#: Accepted spellings of metric columns in input data and score files.
METRIC_ALIASES: dict[str, str] = REGISTRY.metric_aliases
#: The scorer that produces each metric, for error messages.
METRIC_SCORER: dict[str, str] = REGISTRY.metric_scorer
#: Metrics scaled robustly before they are combined.
ROBUST_METRICS: tuple[str, ...] = REGISTRY.robust_metrics
#: Metrics min-max scaled to [0, 1] within each source.
MINMAX_METRICS: tuple[str, ...] = REGISTRY.minmax_metrics
#: category -> the quality metric ``dedicated_quality`` and ``combination`` read there.
DEDICATED_QUALITY: dict[str, str] = REGISTRY.dedicated_quality
#: Scoring profiles.
PROFILES: tuple[str, ...] = REGISTRY.profiles
#: metric -> (scorer name, output column) per profile.
PROFILE_METRICS: dict[str, dict[str, tuple[str, str]]] = REGISTRY.profile_metrics
#: Every scorer name the registry builds, with its output columns.
SCORER_OUTPUTS: dict[str, tuple[str, ...]] = REGISTRY.scorer_outputs
#: Metrics each scorer can stand for when named in ``scorers`` (override of the profile).
SCORER_METRICS: dict[str, dict[str, str]] = REGISTRY.scorer_metrics
#: Columns written to outputs: the metrics, then the raw outputs of the model scorers (the metrics
#: may be filled from them by the profile).
SCORE_COLUMNS: tuple[str, ...] = REGISTRY.score_columns
_FITTED_IN = REGISTRY._fitted_in


def metric_relevant(category: str | None, metric: str) -> bool:
    """Whether ``metric`` is fitted over records of ``category`` (the reference's rule).

    Example:
        >>> metric_relevant("Math", "process_reward"), metric_relevant("Math", "code_quality")
        (True, False)
    """
    fitted = _FITTED_IN.get(category)  # type: ignore[arg-type]
    return True if fitted is None else metric in fitted


# --------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------

STRATEGIES = ("random", "longest", "deita", "difficulty", "quality", "dedicated_quality", "combination")

#: The metrics each strategy needs before routing (dedicated ones are checked per category).
_REQUIRED = {
    "random": (),
    "longest": ("last_resp_length",),
    "deita": ("quality", "complexity"),
    "difficulty": ("difficulty",),
    "quality": ("quality",),
    "dedicated_quality": (),
    "combination": ("difficulty",),
}


def canonical_strategy(name: str) -> str:
    """Map a strategy name, including the reference's variants, to one of :data:`STRATEGIES`.

    The reference matches by prefix (``combination_v2_code_quality`` is ``combination``,
    ``deita_embedding`` is ``deita``, ``difficulty_v2`` is ``difficulty``).
    """
    s = str(name).strip().lower()
    if s == "default":
        return "combination"
    for prefix in ("random", "longest", "deita", "difficulty", "dedicated_quality", "quality", "combination"):
        if s.startswith(prefix):
            return prefix
    raise ConfigError(
        f"unknown scoring strategy '{name}': use one of {', '.join(STRATEGIES)} "
        "(reference names such as 'combination_v2_code_quality' or 'deita_embedding' are accepted too)"
    )


def required_metrics(strategy: str) -> tuple[str, ...]:
    """The metrics a strategy needs before routing (dedicated ones are checked per category)."""
    return _REQUIRED[strategy]


# --------------------------------------------------------------------------------------
# profiles, scorer names and building scorers
# --------------------------------------------------------------------------------------

def default_profile() -> str:
    """``paper`` when the run's models get a GPU, else ``lite``: when torch sees one here, or, with
    the Ray engine, when its cluster has GPUs (:func:`~laser_fast.runtime.devices.planned_device`)."""
    from laser_fast.runtime.devices import planned_device

    return "paper" if planned_device(None).startswith("cuda") else "lite"


def canonical_profile(profile: str | None) -> str:
    """A profile name checked against :data:`PROFILES`; None or ``"auto"`` -> :func:`default_profile`."""
    if profile is None or profile == "auto":
        return default_profile()
    p = str(profile).strip().lower()
    if p not in PROFILES:
        raise ConfigError(f"unknown scoring profile '{profile}': use one of {', '.join(PROFILES)} (or 'auto')")
    return p


def parse_scorer_list(value: str | Sequence[str] | None) -> list[str]:
    """``"tokens, ifd"`` or a list -> checked scorer names without repeats."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for s in items:
        s = s.strip()
        if not s:
            continue
        if s not in SCORER_OUTPUTS:
            raise ConfigError(f"unknown scorer '{s}': use one of {', '.join(SCORER_OUTPUTS)}")
        if s not in out:
            out.append(s)
    return out


def parse_models(values: Sequence[str] | None) -> dict[str, str]:
    """``["difficulty=/models/diff", ...]`` -> dict; names are checked."""
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise ConfigError(f"--scorer-model '{v}': write SCORER=MODEL, e.g. difficulty=/models/difficulty-scorer-8B-v2")
        k, m = v.split("=", 1)
        k = k.strip()
        if k not in SCORER_OUTPUTS:
            raise ConfigError(f"--scorer-model '{v}': unknown scorer '{k}' (use one of {', '.join(SCORER_OUTPUTS)})")
        out[k] = m.strip()
    return out


def parse_judge_models(values: Sequence[str] | None) -> dict[str, str]:
    """``["code_quality=MODEL", ...]`` (``--judge-model``) -> dict; the names must be LLM judges."""
    judges = [s.name for s in SCORER_SPECS if "judge_url" in s.settings]
    out: dict[str, str] = {}
    for v in values or []:
        if "=" not in v:
            raise ConfigError(f"--judge-model '{v}': write JUDGE=MODEL, e.g. code_quality=Qwen/Qwen2.5-Coder-14B-Instruct")
        k, m = (x.strip() for x in v.split("=", 1))
        if k not in judges:
            raise ConfigError(f"--judge-model '{v}': '{k}' is not an LLM judge (use one of {', '.join(judges)})")
        if not m:
            raise ConfigError(f"--judge-model '{v}': the model is empty")
        out[k] = m
    return out


def metric_sources(profile: str | None, scorers: Sequence[str] = ()) -> dict[str, tuple[str, str]]:
    """metric -> (scorer, output column) for a profile with explicit scorers overriding it."""
    table = dict(PROFILE_METRICS[canonical_profile(profile)])
    for s in scorers:
        for metric, col in SCORER_METRICS.get(s, {}).items():
            table[metric] = (s, col)
    return table


@dataclass
class ScorerSettings:
    """Settings shared by the scorers a run builds.

    Attributes:
        models: scorer name -> model id or local path (overrides the default model).
        device: torch device (None = best available).
        batch_tokens: token budget per forward pass (None = each scorer's default).
        judge_url: OpenAI-compatible endpoint for the LLM judges (None = $LASER_FAST_JUDGE_URL
            or http://127.0.0.1:8000/v1).
        tokenizer: tokenizer for ``tokens``.
        judge_backend: where the judges get their answers (None = openai with a URL, vllm with a
            GPU, else transformers).
        judge_fallback: what an unparsable or failed judge answer scores (``reference`` / ``missing``).
        judge_max_tokens: answer budget per judge request (None = each judge's default).
        judge_gpus: GPUs per in-process vLLM judge replica (tensor parallel; None = 1).
        trust_remote_code: model ids whose checkpoint code may run.
    """

    models: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    batch_tokens: int | None = None
    judge_url: str | None = None
    tokenizer: str | None = None
    judge_backend: str | None = None
    judge_fallback: str | None = None
    judge_max_tokens: int | None = None
    judge_gpus: int | None = None
    trust_remote_code: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, opts: Any) -> ScorerSettings:
        """The settings a run's :class:`~laser_fast.config.SelectOptions` give the scorers."""
        return cls(models=dict(opts.scorer_models), device=opts.device, batch_tokens=opts.batch_tokens,
                   judge_url=opts.judge_url, tokenizer=opts.tokenizer, judge_backend=opts.judge_backend,
                   judge_fallback=opts.judge_fallback, judge_max_tokens=opts.judge_max_tokens,
                   judge_gpus=opts.judge_gpus if opts.judge_gpus > 1 else None, trust_remote_code=tuple(opts.trust_remote_code or ()))


def constructor_kwargs(spec: ScorerSpec, settings: ScorerSettings | None = None) -> dict[str, Any]:
    """The keyword arguments :func:`build_scorer` passes for ``spec`` under ``settings``."""
    s = settings or ScorerSettings()
    kw: dict[str, Any] = dict(spec.kwargs)
    for key in spec.settings:
        if key == "model":
            if spec.name in s.models:
                kw["model"] = s.models[spec.name]
        elif key == "tokenizer":
            kw["tokenizer"] = s.models.get(spec.name) or s.tokenizer
        else:
            value = getattr(s, key)
            if value:
                kw[SETTING_KEYWORDS[key]] = value
    return kw


def scorer_class(spec: ScorerSpec) -> type:
    """Import and return the class of ``spec`` (``"module:Class"``)."""
    module, _, attr = spec.cls.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_scorer(name: str, settings: ScorerSettings | None = None, *, registry: Registry | None = None) -> Scorer:
    """Build the scorer called ``name`` (models load lazily, at the first batch).

    Args:
        name: a registered scorer name.
        settings: models, device, batch size and judge endpoint of the run.
        registry: the registry to look ``name`` up in (default :data:`REGISTRY`).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    reg = registry or REGISTRY
    spec = reg.scorers.get(name)
    if spec is None:
        raise ConfigError(f"unknown scorer '{name}': use one of {', '.join(reg.scorer_outputs)}")
    cls = scorer_class(spec)
    make = getattr(cls, spec.factory) if spec.factory else cls
    scorer = make(**constructor_kwargs(spec, settings))
    if registry is None:  # how to build it again elsewhere (an engine's worker builds its own copy)
        scorer.built_from = (name, settings)
    return scorer
