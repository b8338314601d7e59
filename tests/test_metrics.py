"""The metric and scorer registry: derived tables, scorer classes, extension, cheap imports."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import laser_fast.metrics as M
from laser_fast.categories import CATEGORIES
from laser_fast.errors import ConfigError
from laser_fast.metrics import REGISTRY, MetricSpec, ScorerSettings, ScorerSpec, build_scorer, constructor_kwargs, scorer_class
from laser_fast.scorers.base import Scorer

ROOT = Path(__file__).resolve().parent.parent

# ---- the hand-written tables the registry replaced (laser_fast/scorers/stage.py, preference.py
# and metrics.py at e800702), kept as the expectation --------------------------------------------

OLD_PROFILES = ("lite", "lite-llm", "paper")  # lite-llm: the SmolLM2 path the lite profile was before issue 17
OLD_PROFILE_METRICS = {
    "paper": {
        "quality": ("deita_quality", "quality"),
        "complexity": ("deita_complexity", "complexity"),
        "difficulty": ("difficulty", "difficulty"),
        "process_reward": ("process_reward", "process_reward"),
        "code_quality": ("code_quality", "code_quality"),
        "if_quality": ("if_quality", "if_quality"),
    },
    "lite": {
        **{m: ("onepass", "onepass_quality") for m in ("quality", "if_quality", "process_reward", "code_quality")},
        "difficulty": ("onepass", "onepass_difficulty"),
        "complexity": ("onepass", "onepass_difficulty"),
    },
    "lite-llm": {
        "quality": ("lite_quality", "lite_quality"),
        "if_quality": ("lite_quality", "lite_quality"),
        "process_reward": ("lite_quality", "lite_quality"),
        "code_quality": ("lite_quality", "lite_quality"),
        "difficulty": ("lite_difficulty", "lite_difficulty"),
        "complexity": ("lite_difficulty", "lite_difficulty"),
    },
}
OLD_SCORER_OUTPUTS = {
    "tokens": ("inst_length", "resp_length", "last_resp_length"),
    "difficulty": ("difficulty",),
    "deita_quality": ("quality",),
    "deita_complexity": ("complexity",),
    "process_reward": ("process_reward", "process_reward_min", "process_reward_mean"),
    "code_quality": ("code_quality",),
    "if_quality": ("if_quality",),
    "ifd": ("ifd", "ifd_cond_loss", "ifd_direct_loss"),
    "lite_difficulty": ("lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss"),
    "lite_quality": ("lite_quality",),
    "onepass": ("onepass_quality", "onepass_difficulty"),
}
OLD_SCORER_METRICS = {
    "difficulty": {"difficulty": "difficulty"},
    "deita_quality": {"quality": "quality"},
    "deita_complexity": {"complexity": "complexity"},
    "process_reward": {"process_reward": "process_reward"},
    "code_quality": {"code_quality": "code_quality"},
    "if_quality": {"if_quality": "if_quality"},
    "lite_quality": {m: "lite_quality" for m in ("quality", "if_quality", "process_reward", "code_quality")},
    "lite_difficulty": {"difficulty": "lite_difficulty", "complexity": "lite_difficulty"},
    "onepass": {**{m: "onepass_quality" for m in ("quality", "if_quality", "process_reward", "code_quality")},
                "difficulty": "onepass_difficulty", "complexity": "onepass_difficulty"},
    "ifd": {},
    "tokens": {},
}
OLD_METRICS = ("quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality", "inst_length", "resp_length", "last_resp_length")
OLD_METRIC_ALIASES = {
    "difficulty_v2": "difficulty",
    "deita_quality": "quality",
    "deita_complexity": "complexity",
    "quality_scores": "quality",
    "complexity_scores": "complexity",
}
OLD_METRIC_SCORER = {
    "quality": "deita_quality (or onepass, lite_quality)",
    "complexity": "deita_complexity",
    "difficulty": "difficulty",
    "if_quality": "if_quality",
    "process_reward": "process_reward",
    "code_quality": "code_quality",
    "inst_length": "tokens",
    "resp_length": "tokens",
    "last_resp_length": "tokens",
}
OLD_ROBUST_METRICS = ("quality", "complexity", "if_quality", "process_reward", "code_quality")
OLD_MINMAX_METRICS = ("quality", "complexity", "difficulty")
OLD_STRATEGIES = ("random", "longest", "deita", "difficulty", "quality", "dedicated_quality", "combination")
OLD_DEDICATED_QUALITY = {"Generation": "if_quality", "Brainstorming": "if_quality", "Math": "process_reward", "Coding": "code_quality"}
OLD_SCORE_COLUMNS = ("quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality", "inst_length", "resp_length", "last_resp_length",
                     "lite_quality", "onepass_quality", "onepass_difficulty", "lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss",
                     "process_reward_min", "process_reward_mean")


def old_metric_relevant(category, metric):
    if category in ("Generation", "Brainstorming"):
        return metric in ("quality", "complexity", "difficulty", "if_quality")
    if category == "Math":
        return metric in ("quality", "complexity", "difficulty", "process_reward")
    if category == "Coding":
        return metric in ("quality", "complexity", "difficulty", "code_quality")
    return True


def test_derived_tables_equal_the_old_ones():
    assert M.PROFILES == OLD_PROFILES
    assert M.PROFILE_METRICS == OLD_PROFILE_METRICS
    assert M.SCORER_OUTPUTS == OLD_SCORER_OUTPUTS
    assert list(M.SCORER_OUTPUTS) == list(OLD_SCORER_OUTPUTS)  # the order error messages list them in
    assert M.SCORER_METRICS == OLD_SCORER_METRICS
    assert M.METRICS == OLD_METRICS
    assert M.METRIC_ALIASES == OLD_METRIC_ALIASES
    assert M.METRIC_SCORER == OLD_METRIC_SCORER
    assert M.ROBUST_METRICS == OLD_ROBUST_METRICS  # the order robust scalers appear in the manifest
    assert M.MINMAX_METRICS == OLD_MINMAX_METRICS
    assert M.STRATEGIES == OLD_STRATEGIES
    assert M.DEDICATED_QUALITY == OLD_DEDICATED_QUALITY
    assert M.SCORE_COLUMNS == OLD_SCORE_COLUMNS  # the order score columns are written in


def test_metric_relevant_is_the_reference_rule():
    cats = [*CATEGORIES, None, "Other", "", np.str_("Math")]
    for c in cats:
        for m in [*OLD_METRICS, "unknown_metric"]:
            assert M.metric_relevant(c, m) == old_metric_relevant(c, m), (c, m)


def test_the_old_names_stay_importable_where_they_were():
    from laser_fast.scorers import preference, stage

    for name in ("METRICS", "METRIC_ALIASES", "METRIC_SCORER", "DEDICATED_QUALITY", "ROBUST_METRICS", "MINMAX_METRICS", "STRATEGIES",
                 "metric_relevant", "canonical_strategy", "required_metrics"):
        assert getattr(preference, name) is getattr(M, name)
    for name in ("PROFILES", "PROFILE_METRICS", "SCORER_OUTPUTS", "SCORER_METRICS", "ScorerSettings", "build_scorer", "canonical_profile",
                 "metric_sources", "parse_models", "parse_scorer_list"):
        assert getattr(stage, name) is getattr(M, name)
    import laser_fast

    assert laser_fast.build_scorer is build_scorer


def test_metric_sources_and_parsers():
    assert M.metric_sources("paper") == OLD_PROFILE_METRICS["paper"]
    src = M.metric_sources("lite", ["deita_quality", "tokens"])
    assert src["quality"] == ("deita_quality", "quality") and src["if_quality"] == ("onepass", "onepass_quality")
    assert M.parse_scorer_list("tokens, ifd,tokens") == ["tokens", "ifd"]
    with pytest.raises(ConfigError, match="unknown scorer 'nope': use one of tokens, difficulty, deita_quality, deita_complexity, process_reward, "
                                          "code_quality, if_quality, ifd, lite_difficulty, lite_quality, onepass$"):
        M.parse_scorer_list("nope")
    with pytest.raises(ConfigError, match="unknown scoring profile 'big': use one of lite, lite-llm, paper \\(or 'auto'\\)"):
        M.canonical_profile("big")
    assert M.canonical_profile(" Paper ") == "paper"
    with pytest.raises(ConfigError, match="unknown scorer 'nope'"):
        build_scorer("nope")


FULL = ScorerSettings(models={n: f"/m/{n}" for n in OLD_SCORER_OUTPUTS}, device="cpu", batch_tokens=1234, judge_url="http://judge/v1", tokenizer="tok")
HF = {"device": "cpu", "batch_tokens": 1234}


@pytest.mark.parametrize(
    "name,bare,full",
    [
        ("tokens", {"tokenizer": None}, {"tokenizer": "/m/tokens"}),
        ("difficulty", {}, {"model": "/m/difficulty", **HF}),
        ("deita_quality", {"kind": "quality"}, {"kind": "quality", "model": "/m/deita_quality", **HF}),
        ("deita_complexity", {"kind": "complexity"}, {"kind": "complexity", "model": "/m/deita_complexity", **HF}),
        ("process_reward", {}, {"model": "/m/process_reward", **HF}),
        ("code_quality", {}, {"model": "/m/code_quality", "base_url": "http://judge/v1", "device": "cpu"}),  # judges now also run in process
        ("if_quality", {}, {"model": "/m/if_quality", "base_url": "http://judge/v1", "device": "cpu"}),
        ("ifd", {}, {"model": "/m/ifd", **HF}),
        ("lite_difficulty", {"max_length": 128, "max_prompt_length": 256}, {"max_length": 128, "max_prompt_length": 256, "model": "/m/lite_difficulty", **HF}),
        ("lite_quality", {}, {"device": "cpu"}),  # as before: no model override, no batch_tokens
    ],
)
def test_constructor_arguments_are_the_old_ones(name, bare, full):
    spec = REGISTRY.scorers[name]
    assert constructor_kwargs(spec, None) == bare
    assert constructor_kwargs(spec, FULL) == full
    assert constructor_kwargs(REGISTRY.scorers["tokens"], ScorerSettings(tokenizer="tok")) == {"tokenizer": "tok"}


def test_new_settings_reach_the_scorers_that_take_them():
    s = ScorerSettings(judge_backend="transformers", judge_fallback="missing", judge_max_tokens=64,
                       trust_remote_code=("IIS-NLP/difficulty-scorer-8B-v2",))
    assert constructor_kwargs(REGISTRY.scorers["code_quality"], s) == {"backend": "transformers", "fallback": "missing", "max_tokens": 64,
                                                                      "trust_remote_code": ("IIS-NLP/difficulty-scorer-8B-v2",)}
    assert constructor_kwargs(REGISTRY.scorers["difficulty"], s) == {"trust_remote_code": ("IIS-NLP/difficulty-scorer-8B-v2",)}
    assert constructor_kwargs(REGISTRY.scorers["lite_quality"], s) == {}
    built = build_scorer("if_quality", s)
    assert built.backend == "transformers" and built.fallback == "missing" and built.max_tokens == 64


@pytest.mark.parametrize("name", list(OLD_SCORER_OUTPUTS))
def test_every_scorer_class_imports_and_declares_the_registry_outputs(name):
    """Building loads no model (scorers load lazily); the instance declares what the registry says."""
    spec = REGISTRY.scorers[name]
    cls = scorer_class(spec)
    assert issubclass(cls, Scorer)
    for settings in (None, FULL):
        sc = build_scorer(name, settings)
        assert isinstance(sc, cls)
        assert sc.name == spec.name
        assert tuple(sc.outputs) == spec.outputs
        assert sc.categories == spec.categories
    if name not in ("deita_quality", "deita_complexity"):  # DeitaScorer sets them per kind
        assert cls.name == spec.name and tuple(cls.outputs) == spec.outputs


def test_built_scorers_carry_the_settings():
    assert build_scorer("difficulty", FULL).model_id == "/m/difficulty"
    d = build_scorer("deita_complexity", FULL)
    assert (d.deita_kind, d.model_id, d.device, d.batch_tokens) == ("complexity", "/m/deita_complexity", "cpu", 1234)
    lite = build_scorer("lite_difficulty", FULL)
    ifd = lite.ifd
    assert (ifd.max_length, ifd.max_prompt_length, ifd.model_id, ifd.device, ifd.batch_tokens) == (128, 256, "/m/lite_difficulty", "cpu", 1234)
    from laser_fast.runtime.devices import cpu_bf16_supported

    assert ifd.dtype == ("bfloat16" if cpu_bf16_supported() else None)
    judge = build_scorer("code_quality", FULL)
    assert (judge.model, judge.base_url) == ("/m/code_quality", "http://judge/v1")
    assert build_scorer("tokens", FULL).tokenizer_name == "/m/tokens"
    assert build_scorer("tokens", ScorerSettings(tokenizer="tok")).tokenizer_name == "tok"
    assert build_scorer("lite_quality", FULL).device == "cpu"


class ToyScorer(Scorer):
    """A registered-in-a-test scorer: the instruction's character count."""

    name = "toy"
    outputs = ("toy_len", "toy_raw")
    categories = ("Math",)

    def __init__(self, model=None, device=None, scale=1.0):
        self.model, self.device, self.scale = model, device, scale

    @property
    def fingerprint(self) -> str:
        return f"toy|{self.model}|{self.scale}"

    def score(self, batch, *, batch_size=None, show_progress=None):
        n = batch["instruction"].str.len_chars().to_numpy().astype(np.float64)
        return {"toy_len": n * self.scale, "toy_raw": n}


def test_a_toy_scorer_registered_in_one_place_shows_everywhere():
    toy = ScorerSpec("toy", f"{__name__}:ToyScorer", ("toy_len", "toy_raw"), categories=("Math",),
                     profiles={"toy_profile": {"difficulty": "toy_len"}, "paper": {"toy_metric": "toy_len"}},
                     kwargs={"scale": 2.0}, settings=("model", "device"), doc="a toy")
    reg = REGISTRY.extend(toy, metrics=[MetricSpec("toy_metric", aliases=("toy_alias",), robust=True, scorer="toy")])
    assert reg.scorer_outputs["toy"] == ("toy_len", "toy_raw")
    assert reg.scorer_metrics["toy"] == {"difficulty": "toy_len", "toy_metric": "toy_len"}
    assert reg.profiles == ("lite", "lite-llm", "paper", "toy_profile")
    assert reg.profile_metrics["toy_profile"] == {"difficulty": ("toy", "toy_len")}
    assert reg.profile_metrics["paper"]["toy_metric"] == ("toy", "toy_len")
    assert reg.metrics[-1] == "toy_metric" and reg.metric_aliases["toy_alias"] == "toy_metric"
    assert reg.robust_metrics[-1] == "toy_metric" and reg.metric_scorer["toy_metric"] == "toy"
    assert reg.score_columns[: len(reg.metrics)] == reg.metrics and "toy_raw" in reg.score_columns
    sc = build_scorer("toy", ScorerSettings(models={"toy": "/m/toy"}, device="cpu", batch_tokens=9), registry=reg)
    assert isinstance(sc, ToyScorer) and (sc.model, sc.device, sc.scale) == ("/m/toy", "cpu", 2.0)
    # the shipped registry is untouched
    assert "toy" not in M.SCORER_OUTPUTS and "toy_profile" not in M.PROFILES
    with pytest.raises(ConfigError, match="unknown scorer 'toy'"):
        build_scorer("toy")


@pytest.mark.parametrize(
    "spec,problem",
    [
        (ScorerSpec("ifd", "m:C", ("x",)), "registered twice"),
        (ScorerSpec("bad", "m:C", ("x",), fills={"quality": "y"}), "not one of its outputs"),
        (ScorerSpec("bad", "m:C", ("x",), fills={"nope": "x"}), "unknown metric 'nope'"),
        (ScorerSpec("bad", "m:C", ("x",), profiles={"lite": {"quality": "x"}}), "filled by both onepass and bad"),
        (ScorerSpec("bad", "m:C", ("x",), settings=("gpu",)), "unknown settings"),
        (ScorerSpec("bad", "no_colon", ("x",)), "module:Class"),
    ],
)
def test_contradicting_specs_are_refused(spec, problem):
    with pytest.raises(ValueError, match=problem):
        REGISTRY.extend(spec)


def test_metrics_and_config_validate_import_no_stage_module():
    code = (
        "import sys, json\n"
        "import laser_fast.metrics\n"
        "first = sorted(sys.modules)\n"
        "from laser_fast.config import SelectOptions\n"
        "o = SelectOptions(budget=5, strategy='combination_v2', profile='lite', scorers='tokens, ifd').validate()\n"
        "assert o.profile == 'lite' and o.scorers == ['tokens', 'ifd'] and o.strategy == 'combination'\n"
        "print(json.dumps({'first': first, 'after': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, r.stderr
    mods = json.loads(r.stdout.strip().splitlines()[-1])
    heavy = ("torch", "transformers", "numba", "faiss", "numpy", "polars")
    for key in ("first", "after"):
        loaded = set(mods[key])
        assert not [m for m in loaded if m.split(".")[0] in heavy], key
        assert not [m for m in loaded if m.startswith("laser_fast.scorers")], key
