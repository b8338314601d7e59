"""The ``lite`` profile's one pass: MiniLM reads each instruction and response once; the classifier,
the ``onepass`` heads and k-means share the vectors through the work directory's embedding store."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.classifier.models import load_classifier
from laser_fast.config import SelectOptions
from laser_fast.errors import ModelLoadError
from laser_fast.pipeline import run_selection
from laser_fast.sampling.store import EmbeddingStore
from laser_fast.scorers.onepass import DEFAULT_MODEL_DIR, OnePassScorer, instruction_views

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "pool" / "chat_messages.jsonl"

INST = ["What is 17 * 3?", "Write a short poem about the sea.", "Explain recursion to a child.", "Name three primes."]
RESP = ["17 * 3 = 51.", "Waves fold silver light\nover the patient shore.", "", "2, 3 and 5."]


def test_scores_with_and_without_a_work_directory_are_equal_and_vectors_are_stored_once(tmp_path):
    bare = OnePassScorer().score_pairs(INST, RESP)
    assert set(bare) == {"onepass_quality", "onepass_difficulty"}
    q, d = bare["onepass_quality"], bare["onepass_difficulty"]
    assert np.isnan(q[2]) and np.isnan(d[2])  # the empty response gets no score
    ok = [0, 1, 3]
    assert np.isfinite(q[ok]).all() and ((d[ok] >= 0) & (d[ok] <= 1)).all()

    sc = OnePassScorer()
    sc.set_store_root(str(tmp_path / "wd"))
    stored = sc.score_pairs(INST, RESP)
    for k in bare:
        np.testing.assert_array_equal(stored[k], bare[k])  # float16 vectors either way: the same bits
    assert sc.stats["embedded_texts"] == 6  # three instructions and three non-empty responses

    again = OnePassScorer()
    again.set_store_root(str(tmp_path / "wd"))
    out = again.score_pairs(INST, RESP)
    assert again.stats["embedded_texts"] == 0
    np.testing.assert_array_equal(out["onepass_quality"], bare["onepass_quality"])


def test_the_classifier_writes_the_instruction_vectors_the_scorer_reads(tmp_path):
    texts = [t for t, r in zip(INST, RESP) if r]
    plain = load_classifier("minilm")
    shared = load_classifier("minilm")
    shared.store_root = str(tmp_path / "wd")
    np.testing.assert_array_equal(shared.predict_proba(texts), plain.predict_proba(texts))
    _, info = EmbeddingStore(tmp_path / "wd").get(instruction_views(texts), field="instruction")
    assert info["computed"] == 0
    sc = OnePassScorer()
    sc.set_store_root(str(tmp_path / "wd"))
    sc.score_pairs(texts, [r for r in RESP if r])
    assert sc.stats["embedded_texts"] == 3  # only the responses


def test_on_a_gpu_the_plain_classifier_computes_its_own_vectors(tmp_path, monkeypatch):
    """On a GPU the store computes MiniLM in float16; the plain classifier's head reads float32
    vectors there, as it does without a work directory, so it does not take the store's."""
    import types

    import torch

    texts = [t for t, r in zip(INST, RESP) if r]
    shared = load_classifier("minilm").load()
    shared.store_root = str(tmp_path / "wd")
    want = shared.embed(texts)  # on the CPU: through the store, the same vectors
    computed = []
    monkeypatch.setattr(EmbeddingStore, "get", lambda *a, **k: pytest.fail("read the store's float16 GPU vectors"))
    monkeypatch.setattr(shared, "_st", types.SimpleNamespace(device=torch.device("cuda", 0)))
    monkeypatch.setattr(shared, "_encode", lambda views, progress=False: computed.append(views) or want)
    assert shared.embed(texts) is want and len(computed) == 1


def test_a_lite_selection_embeds_every_text_once(tmp_path):
    rows = [json.loads(line) for line in POOL.read_text().splitlines()[:40]]
    f = tmp_path / "pool.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    opts = SelectOptions(budget=6, strategy="combination", mode="kmeans", profile="lite", seed=0, show_progress=False)
    run = run_selection([str(f)], opts, workdir=str(tmp_path / "w"))
    ran = {s["scorer"]: s for s in run.manifest["scoring"]["scorers"]}
    assert set(ran) == {"onepass"}
    # k-means found every response vector in the store: the onepass scorer had embedded them
    assert run.manifest["embedding"]["computed"] == 0
    # and the onepass scorer found every instruction vector there: the default classifier's one
    # pass (plain bottom layers, then its fine-tuned and the plain top layers) had stored them
    assert ran["onepass"]["stats"]["embedded_texts"] == len(rows)  # the responses only
    assert len(run.selected_rows) == 6
    again = run_selection([str(f)], opts, workdir=str(tmp_path / "w"))
    assert again.pool[again.selected_rows.tolist()]["data_id"].to_list() == run.pool[run.selected_rows.tolist()]["data_id"].to_list()


def test_a_record_table_is_read_as_first_instruction_and_first_answer():
    batch = pl.DataFrame({"instruction": ["What is 17 * 3?"], "response": ["the last answer"],
                          "responses": [["17 * 3 = 51.", "the last answer"]]})
    a = OnePassScorer().score(batch)
    b = OnePassScorer().score_pairs(["What is 17 * 3?"], ["17 * 3 = 51."])
    np.testing.assert_array_equal(a["onepass_quality"], b["onepass_quality"])


def test_heads_of_another_feature_version_are_refused_with_the_retrain_command(tmp_path):
    d = tmp_path / "heads"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    meta = json.loads((d / "meta.json").read_text())
    meta["onepass_version"] = 0
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="train_onepass.py"):
        _ = OnePassScorer(d).fingerprint
    with pytest.raises(ModelLoadError, match="train_onepass.py"):
        OnePassScorer(tmp_path / "nowhere").score_pairs(["a"], ["b"])


def test_the_shipped_quality_is_the_bradley_terry_strength_of_the_head(tmp_path):
    """``onepass_quality`` is ``exp(logit)`` of the pairwise head: the same order as the logit,
    positive, and twice the odds of winning score twice as high. A heads folder may ask for the
    logit instead (``"output": "linear"``), and an unknown output is refused with the retrain command."""
    assert json.loads((DEFAULT_MODEL_DIR / "meta.json").read_text())["quality"]["output"] == "strength"
    ok = [0, 1, 3]
    strength = OnePassScorer().score_pairs(INST, RESP)
    d = tmp_path / "linear"
    shutil.copytree(DEFAULT_MODEL_DIR, d)
    meta = json.loads((d / "meta.json").read_text())
    meta["quality"]["output"] = "linear"
    (d / "meta.json").write_text(json.dumps(meta))
    linear = OnePassScorer(d).score_pairs(INST, RESP)
    assert OnePassScorer(d).fingerprint != OnePassScorer().fingerprint  # cached scores of one are not read as the other's
    assert (strength["onepass_quality"][ok] > 0).all() and np.isnan(strength["onepass_quality"][2])
    np.testing.assert_allclose(np.log(strength["onepass_quality"][ok]), linear["onepass_quality"][ok], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(strength["onepass_difficulty"], linear["onepass_difficulty"])  # only the quality head's output changes
    meta["quality"]["output"] = "sigmoid"
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"meta.json: the quality head's output 'sigmoid'.*train_onepass.py"):
        OnePassScorer(d).score_pairs(["a"], ["b"])


def test_cpu_bf16_can_be_turned_off_for_float32_runs(monkeypatch):
    from laser_fast.runtime.devices import cpu_bf16_supported

    monkeypatch.setenv("LASER_FAST_CPU_BF16", "0")
    assert cpu_bf16_supported() is False
    monkeypatch.setenv("LASER_FAST_CPU_BF16", "1")
    assert cpu_bf16_supported() is True


def test_the_avx2_script_sets_the_caps_the_lite_benchmark_records(monkeypatch):
    """``scripts/avx2_env.sh`` (bash) and ``benchmarks/case_lite.py`` (Python) name the same
    instruction-set caps: every variable the script adds is recorded in the benchmark's rows."""
    import subprocess

    from benchmarks.case_lite import ISA_CAP_VARS, isa_cap

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ISA_CAP_VARS and k != "LASER_FAST_CPU_BF16"}
    out = subprocess.run(["bash", str(root / "scripts" / "avx2_env.sh"), "env"], env=env, capture_output=True, text=True, check=True).stdout
    after = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    added = {k: v for k, v in after.items() if k not in env}
    assert added.pop("LASER_FAST_CPU_BF16") == "0"
    assert set(added) == set(ISA_CAP_VARS)
    for k, v in added.items():
        monkeypatch.setenv(k, v)
    assert all(f"{k}={v}" in isa_cap() for k, v in added.items())


def test_a_one_off_store_request_writes_no_request_file_and_equals_a_kept_one(tmp_path):
    store = EmbeddingStore(tmp_path / "wd")
    texts = ["one text", "another text", "one text"]
    loose, info = store.get(texts, field="response", keep=False)
    assert info["computed"] == 2 and not list(store.root.glob("*.npy"))  # shards only, in their namespace
    kept, info2 = store.get(texts, field="response")
    assert info2["computed"] == 0 and len(list(store.root.glob("*.npy"))) == 1
    np.testing.assert_array_equal(np.asarray(kept), loose)


def test_the_onepass_bold_cue_counts_markdown_bold_only():
    """Version 3: ``**`` as Python's power or ``**kwargs`` operator, or stray asterisks in junk, is
    not bold; the lite-llm cue (any ``**``) stays as its weights were fitted."""
    from laser_fast.scorers.lite_features import BOLD, bold_markup, cheap_features
    from laser_fast.scorers.onepass import features

    bold = ["Use **this** one.", "1. **Step**: mix", "(**note**)"]
    not_bold = ["return x**2 + y**3", "def f(*args, **kwargs): pass", "} } ***!\n } }", "** spaced **", "a ** b"]
    assert [bold_markup(t) for t in bold] == [1.0] * 3 and [bold_markup(t) for t in not_bold] == [0.0] * 5
    texts = bold + not_bold
    vec = np.zeros((len(texts), 384), dtype=np.float32)
    got = features(["q"] * len(texts), texts, vec, vec)["cheap"][:, BOLD]
    np.testing.assert_array_equal(got, [1.0] * 3 + [0.0] * 5)
    assert [cheap_features("q", t)[BOLD] for t in not_bold] == [1.0, 1.0, 1.0, 1.0, 1.0]  # the lite-llm cue


def test_training_with_misaligned_rows_taught_easy_needs_the_teachers_losses(tmp_path):
    """scripts/train_onepass.py --misaligned zero (the default) finds IFD > 1 from each teacher
    row's ``cond`` and ``direct`` losses; a file without them is refused with its line."""
    import argparse
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_onepass
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    teacher = tmp_path / "teacher.jsonl"
    row = {"instruction": "q", "response": "a", "source": "s", "lite_difficulty": 0.5, "cond": 1.0, "direct": 2.0}
    teacher.write_text(json.dumps(row) + "\n" + json.dumps({k: v for k, v in row.items() if k != "cond"}) + "\n")
    (tmp_path / "fine.jsonl").write_text(json.dumps(row) + "\n")  # several --teacher files: the bad one is named
    with pytest.raises(SystemExit, match=r"teacher.jsonl line 2: no numeric 'cond' and 'direct'.*--misaligned clip"):
        train_onepass.difficulty(argparse.Namespace(teacher=[tmp_path / "fine.jsonl", teacher], misaligned="zero"))
