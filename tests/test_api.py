"""The public API and the house: names resolve, functions stay functions, stages are declared."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import laser_fast

ROOT = Path(__file__).resolve().parent.parent


def _run_py(code: str) -> str:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_every_public_name_resolves():
    for name in laser_fast.__all__:
        assert getattr(laser_fast, name) is not None, name


def test_classify_and_select_stay_functions_after_a_selection(tmp_path):
    """The README's own example: laser_fast.classify([...]) after a select in the same process
    (a submodule called 'classify' used to replace the function on the package)."""
    out = _run_py(
        "import json, laser_fast\n"
        "df = laser_fast.select(['examples/pool/chat_messages.jsonl'], budget=10, strategy='longest', mode='none', profile='none',\n"
        f"                      classifier='minilm', workdir={str(tmp_path)!r})\n"
        "labels = laser_fast.classify(['Solve 2x + 3 = 7.', 'Write a haiku about rain.'])\n"
        "print(json.dumps({'rows': df.height, 'labels': labels, 'classify': callable(laser_fast.classify),\n"
        "                  'select': callable(laser_fast.select), 'kind': type(laser_fast.classify).__name__}))\n")
    res = json.loads(out.strip().splitlines()[-1])
    assert res["rows"] == 10
    assert res["classify"] and res["select"] and res["kind"] == "function"
    assert len(res["labels"]) == 2 and all(lab in laser_fast.CATEGORIES for lab in res["labels"])


def test_public_functions_survive_importing_every_module():
    """No submodule shadows a public function of the package, whatever is imported."""
    out = _run_py(
        "import importlib, pkgutil, laser_fast, json\n"
        "for m in pkgutil.walk_packages(laser_fast.__path__, 'laser_fast.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(json.dumps({n: type(getattr(laser_fast, n)).__name__ for n in laser_fast.__all__}))\n")
    kinds = json.loads(out.strip().splitlines()[-1])
    modules = {n for n, k in kinds.items() if k == "module"}
    assert not modules, f"public names that are modules: {modules}"
    for name in ("select", "classify", "score", "allocate", "write_outputs", "read_records"):
        assert kinds[name] == "function", (name, kinds[name])


def test_import_is_light():
    """`import laser_fast` loads no torch, transformers, faiss, numba or polars."""
    out = _run_py("import sys, laser_fast\nprint(sorted(m for m in ('torch', 'transformers', 'faiss', 'numba', 'polars') if m in sys.modules))")
    assert out.strip() == "[]"


def test_stages_are_declared():
    from laser_fast.pipeline import STAGES
    from laser_fast.runtime.stage import StageResult

    names = [s.name for s in STAGES]
    assert names == ["scores_load", "dedup", "decontaminate", "language", "classify", "tokens", "model_scores", "preference", "dedup_best"]
    for spec in STAGES:
        fn = spec.load()
        assert callable(fn) and spec.reads and spec.writes
        sig = inspect.signature(fn)
        assert list(sig.parameters)[:2] == ["records", "opts"], spec.name
        assert {"workdir", "columns"} <= set(sig.parameters), spec.name
        assert sig.parameters["workdir"].kind == inspect.Parameter.KEYWORD_ONLY
        assert spec.resources.num_cpus > 0
    assert StageResult


def test_stage_results_are_columns_and_stats(tmp_path):
    """A stage returns new columns aligned with its table and its own stats; its inputs are not
    changed (the language and preference stages over the bundled example)."""
    import numpy as np
    import polars as pl

    from laser_fast.classifier.stage import language_stage
    from laser_fast.config import SelectOptions
    from laser_fast.io.ingest import read_records
    from laser_fast.scorers.preference import preference_stage

    recs, _ = read_records(str(ROOT / "examples" / "pool" / "alpaca.jsonl"))
    opts = SelectOptions(budget=5, strategy="deita").validate()
    res = language_stage(recs, opts, workdir=str(tmp_path), columns={})
    assert set(res.columns) == {"is_english", "language"} and res.columns["is_english"].shape == (recs.height,)
    assert res.stats.name == "language" and res.stats["english"] + res.stats["other"] == recs.height
    rng = np.random.default_rng(0)
    given = {"quality": rng.random(recs.height), "complexity": rng.random(recs.height),
             "category": np.array(["Generation"] * recs.height, dtype=object)}
    before = {k: v.copy() for k, v in given.items()}
    out = preference_stage(recs.with_columns(pl.lit(0, dtype=pl.Int32).alias("_source_index")), opts, workdir=None, columns=given)
    assert out.columns["preference"].shape == (recs.height,)
    assert {"quality_scaled", "complexity_scaled"} <= set(out.columns)
    for k in given:
        assert np.array_equal(given[k], before[k]), f"{k} was changed"


@pytest.mark.parametrize("pkg", ["classifier", "scorers", "sampling", "io", "runtime"])
def test_layout_modules_stay_small(pkg):
    """No module of the package over ~700 lines (the house target is ~600)."""
    base = Path(laser_fast.__file__).parent / pkg
    for f in base.glob("*.py"):
        n = len(f.read_text().splitlines())
        assert n <= 700, f"{f.relative_to(base.parent)} has {n} lines"


def test_stages_import_no_other_stage_package():
    """Stages import runtime, metrics and io; only pipeline and cli import the stage packages
    (the classifier's lite scorer features are the one shared model of two steps)."""
    stage_pkgs = ("classifier", "scorers", "sampling")
    for m in pkgutil.walk_packages(laser_fast.__path__, "laser_fast."):
        parts = m.name.split(".")
        if len(parts) < 3 or parts[1] not in stage_pkgs + ("io", "runtime"):
            continue
        mod = importlib.import_module(m.name)
        src = Path(mod.__file__).read_text()
        for other in stage_pkgs:
            if other == parts[1]:
                continue
            for line in src.splitlines():
                s = line.strip()
                if s.startswith(f"from laser_fast.{other}") or s.startswith(f"import laser_fast.{other}"):
                    assert (m.name, other) in ALLOWED, f"{m.name} imports laser_fast.{other}: {s}"


#: known cross-package imports, each for a reason
ALLOWED = {
    # the lite quality scorer reads instructions through the classifier's text view (one definition
    # of "the part of a long text a small model sees")
    ("laser_fast.scorers.lite_features", "classifier"),
    # the lite profile's one pass: the classifier and the onepass scorer read and write the run's
    # MiniLM vectors through the embedding store of the sampling step (each text embedded once per
    # run), and the scorer reads instructions through the classifier's text view
    ("laser_fast.scorers.onepass", "classifier"),
    ("laser_fast.scorers.onepass", "sampling"),
    ("laser_fast.classifier.models", "sampling"),
    # the tuned classifier's pass shares MiniLM's bottom layers with the store's vectors, so it
    # batches as the sampling step's encoder does (the same vectors, bit for bit)
    ("laser_fast.classifier.branched", "sampling"),
    # the classifier's memory estimate counts MiniLM's batches at the sampling encoder's CPU budget,
    # which the classifier's MiniLM pass runs with
    ("laser_fast.classifier.memory", "sampling"),
    # lite_quality (lite-llm) embeds with the sampling step's encoder, whose CPU vectors do not
    # depend on the batch or the thread count (one definition of how a text becomes a vector), and
    # its fingerprint names that encoder's vector scheme
    ("laser_fast.scorers.lite_features", "sampling"),
    ("laser_fast.scorers.lite", "sampling"),
    # classifications are cached per conversation in the score cache's shards (one per-record
    # store for every model output)
    ("laser_fast.classifier.stage", "scorers"),
}
