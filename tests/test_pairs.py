"""Issue 19: preference data (TRL's DPO and KTO formats) selected as units: the prompt classified
and scored for difficulty once, quality scored on both answers and the margin the unit's quality,
the output in TRL's format (checked through TRL's own trainers when TRL is installed), and the
reference's ``type_dataset: dpo`` config read unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.cli import main
from laser_fast.errors import LaserError
from laser_fast.io.pairs import attach_pairs, rejected_records

TOPICS = ["photosynthesis", "the French revolution", "binary search", "prime numbers", "how vaccines work",
          "the water cycle", "recursion in Python", "inflation", "black holes", "the stock market"]


def _dpo_rows(n=24):
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        rows.append({"prompt": f"Explain {t} to a student (question {i}).",
                     "chosen": f"{t.capitalize()}, step by step: the key ideas, one worked example and a short summary at the end. ({i})",
                     "rejected": "I don't know." if i % 2 else f"{t}.",
                     "source_tag": f"t{i}"})
    return rows


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_dpo_units_are_scored_on_both_answers_and_selected_whole(tmp_path):
    f = _write(tmp_path / "dpo.jsonl", _dpo_rows())
    out = tmp_path / "o"
    assert main(["select", str(f), "--budget", "6", "--profile", "lite", "--proportions", "natural", "-q", "--training-file",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["pairs"] == {"format": "dpo", "units": 24, "records_read": 24}
    assert man["scoring"]["scorers"][0]["records"] == 24 and man["scoring"]["rejected"]["scorers"][0]["records"] == 24
    dec = pl.read_parquet(out / "decisions.parquet")
    assert "_rejected" not in dec.columns
    # the unit's quality is the margin, chosen minus rejected, of the scorer's quality
    scored = 0
    metrics = [m for m in ("quality", "if_quality", "process_reward", "code_quality") if m in dec.columns]
    assert metrics  # each category's own quality metric; a metric no unit's category uses has no column
    for m in metrics:
        c, r = dec[f"chosen_{m}"].to_numpy(), dec[f"rejected_{m}"].to_numpy()
        np.testing.assert_allclose(dec[m].to_numpy(), c - r)
        scored += int(np.isfinite(c - r).sum())
        assert (c[np.isfinite(c)] != r[np.isfinite(c)]).all()
    assert scored >= 24  # every unit has its margin
    sel = _lines(out / "selected.jsonl")
    src = {r["source_tag"]: r for r in _dpo_rows()}
    assert len(sel) == 6
    for r in sel:  # every unit whole and as it came, in TRL's format, no messages
        assert "messages" not in r
        assert {k: r[k] for k in ("prompt", "chosen", "rejected")} == {k: src[r["source_tag"]][k] for k in ("prompt", "chosen", "rejected")}
        m = next(m for m in metrics if r[f"chosen_{m}"] is not None)
        assert r[m] == pytest.approx(r[f"chosen_{m}"] - r[f"rejected_{m}"])
    train = _lines(out / "train.jsonl")
    assert [sorted(t) for t in train] == [["chosen", "data_id", "prompt", "rejected"]] * 6
    assert [t["data_id"] for t in train] == [r["data_id"] for r in sel]


def test_a_second_run_reuses_both_sides_scores(tmp_path):
    f = _write(tmp_path / "dpo.jsonl", _dpo_rows(12))
    args = ["select", str(f), "--budget", "4", "--profile", "lite", "--proportions", "natural", "-q", "--workdir", str(tmp_path / "w")]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*args, "--output-dir", str(tmp_path / "b")]) == 0
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["scoring"]["scorers"][0]["cached"] == 12 and man["scoring"]["rejected"]["scorers"][0]["cached"] == 12
    assert (tmp_path / "a" / "selected.jsonl").read_bytes() == (tmp_path / "b" / "selected.jsonl").read_bytes()


def test_multi_turn_units_are_judged_on_the_answers_they_differ_in(tmp_path):
    """The lite quality of a multi-turn DPO unit reads each side's last answer, where chosen and
    rejected differ (the first answer, which the sides share, gave every unit a margin of 0)."""
    rows = []
    for i, t in enumerate(TOPICS[:6]):
        first = [{"role": "user", "content": f"Tell me about {t}."}, {"role": "assistant", "content": f"{t.capitalize()} is a topic in science."},
                 {"role": "user", "content": f"Explain {t} in more detail, with an example."}]
        rows.append({"prompt": first,
                     "chosen": [{"role": "assistant", "content": f"In more detail: {t} works in three steps, and here is a worked example of each. ({i})"}],
                     "rejected": [{"role": "assistant", "content": "I don't know, lol."}]})
    f = _write(tmp_path / "multi.jsonl", rows)
    out = tmp_path / "o"
    assert main(["select", str(f), "--budget", "3", "--profile", "lite", "--proportions", "natural", "-q",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    dec = pl.read_parquet(out / "decisions.parquet")
    pairs = []
    for m in [c[len("chosen_"):] for c in dec.columns if c.startswith("chosen_")]:
        c, r = dec[f"chosen_{m}"].to_numpy(), dec[f"rejected_{m}"].to_numpy()
        ok = np.isfinite(c) & np.isfinite(r)
        pairs += list(zip(c[ok], r[ok]))
    assert len(pairs) >= 4 and all(abs(c - r) > 1e-6 for c, r in pairs), pairs


def test_conversational_and_implicit_prompt_forms(tmp_path):
    from laser_fast.io.ingest import read_records

    conv = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Lyon."}]}
    implicit = {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    recs, _ = read_records(_write(tmp_path / "p.jsonl", [conv, implicit]))
    recs = attach_pairs(recs)
    assert recs["instruction"].to_list() == ["Capital of France?", "2+2?"]
    assert recs["response"].to_list() == ["Paris.", "4"] and recs["_rejected"].to_list() == ["Lyon.", "5"]
    rej = rejected_records(recs)
    assert rej["response"].to_list() == ["Lyon.", "5"]
    assert [m[-1]["content"] for m in rej["messages"].to_list()] == ["Lyon.", "5"]
    assert [m[0]["content"] for m in rej["messages"].to_list()] == ["Be brief.", "2+2?"]
    assert all(i.endswith(":rejected") for i in rej["data_id"].to_list())


@pytest.mark.parametrize("rec,msg", [
    ({"chosen": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "x"}],
      "rejected": [{"role": "user", "content": "b?"}, {"role": "assistant", "content": "y"}]}, "differ before their last answer"),
    ({"prompt": "q?", "chosen": "x", "rejected": ""}, "empty rejected answer"),
    ({"prompt": "q?", "chosen": "x", "rejected": 3}, "'rejected' must be a string or a list"),
    ({"prompt": "q?", "chosen": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}], "rejected": "z"},
     "must be one assistant answer"),
])
def test_bad_pairs_name_the_line_and_key(tmp_path, rec, msg):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "ok?", "chosen": "yes", "rejected": "no"}, rec])
    assert main(["select", str(f), "--budget", "1", "--profile", "none", "--strategy", "random", "-q",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_bad_pairs_message(tmp_path, capsys):
    f = _write(tmp_path / "bad.jsonl", [{"prompt": "ok?", "chosen": "yes", "rejected": "no"}, {"prompt": "q?", "chosen": "x", "rejected": ""}])
    assert main(["select", str(f), "--budget", "1", "--profile", "none", "--strategy", "random", "-q",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "empty rejected answer" in err


def _kto_rows(n=8):
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        p = [{"role": "user", "content": f"Explain {t} (question {i})."}]
        rows.append({"prompt": p, "completion": [{"role": "assistant", "content": f"{t.capitalize()}: the key ideas, one example and a summary. ({i})"}], "label": True})
        rows.append({"prompt": p, "completion": [{"role": "assistant", "content": "No idea."}], "label": False})
    return rows


def test_kto_couples_are_units_and_come_out_as_two_lines(tmp_path):
    f = _write(tmp_path / "kto.jsonl", _kto_rows())
    out = tmp_path / "o"
    assert main(["select", str(f), "--budget", "3", "--profile", "lite", "--proportions", "natural", "-q", "--training-file",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["pairs"] == {"format": "kto", "units": 8, "records_read": 16}
    assert man["outputs"]["selected"]["rows"] == 6 and man["outputs"]["selected"]["units"] == 3
    sel = _lines(out / "selected.jsonl")
    assert len(sel) == 6 and [r["label"] for r in sel] == [True, False] * 3
    for a, b in zip(sel[::2], sel[1::2]):
        assert a["prompt"] == b["prompt"] and b["completion"][0]["content"] == "No idea."
        assert a["data_id"] != b["data_id"] and a["preference"] == b["preference"]
        assert int(b["input_location"].rsplit(":", 1)[1]) == int(a["input_location"].rsplit(":", 1)[1]) + 1
    train = _lines(out / "train.jsonl")
    assert [sorted(t) for t in train] == [["completion", "data_id", "label", "prompt"]] * 6


@pytest.mark.parametrize("rows,msg", [
    (lambda r: r[1:], "label false has no desirable partner"),
    (lambda r: r[:-1], "not followed by its undesirable partner"),
    (lambda r: r[:1] + [{**r[1], "prompt": "another prompt"}] + r[2:], "prompt differs"),
])
def test_kto_layout_errors_name_the_line(tmp_path, rows, msg):
    f = _write(tmp_path / "kto.jsonl", rows(_kto_rows(2)))
    from laser_fast.config import SelectOptions
    from laser_fast.io.ingest import load_pool

    with pytest.raises(LaserError, match=msg) as e:
        load_pool([str(f)], SelectOptions(budget=1).validate())
    assert "kto.jsonl:" in str(e.value)


def test_pairs_and_sft_records_do_not_mix(tmp_path):
    from laser_fast.config import SelectOptions
    from laser_fast.io.ingest import load_pool

    a = _write(tmp_path / "dpo.jsonl", _dpo_rows(2))
    b = _write(tmp_path / "sft.jsonl", [{"instruction": "Hi?", "output": "Hello."}])
    with pytest.raises(LaserError, match="separate runs"):
        load_pool([str(a), str(b)], SelectOptions(budget=1).validate())
    with pytest.raises(LaserError, match="type_dataset is 'kto'"):
        load_pool([str(a)], SelectOptions(budget=1, type_dataset="kto").validate())
    with pytest.raises(LaserError, match="type_dataset is 'sft'"):
        load_pool([str(a)], SelectOptions(budget=1, type_dataset="sft").validate())


def test_the_reference_dpo_config_runs_unchanged(tmp_path):
    """A config in the reference dataset_mixer's layout (its keys, ``type_dataset: dpo``, a
    ``DATA_PATH`` data entry) runs as written; the reference's stella embedder is not on this
    offline machine, so --embedding-model overrides it."""
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "ultrafeedback_dpo.jsonl", _dpo_rows(16))
    cfg = tmp_path / "1k_dpo.yaml"
    cfg.write_text("""emnlp25_dpo_combination:
  default_embedding_model: NovaSearch/stella_en_400M_v5
  scoring_strategy: combination_v2_code_quality
  type_dataset: dpo
  sample_size: 5
  clustering: categories
  threshold_percentile_clustering: 0.8
  data:
    - name: ultrafeedback_dpo
      data_path: DATA_PATH/ultrafeedback_dpo.jsonl
      type: chat
      multi_turn: True
      language: en
""")
    out = tmp_path / "o"
    assert main(["select", "--config", str(cfg), "--input-dir", str(data), "--profile", "lite", "--proportions", "natural", "-q", "--embedding-model", "minilm",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    sel = _lines(out / "selected.jsonl")
    assert len(sel) == 5 and all({"prompt", "chosen", "rejected"} <= set(r) for r in sel)
    assert json.loads((out / "manifest.json").read_text())["options"]["type_dataset"] == "dpo"


def _tiny_policy(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tiny_models as tm
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_dir = tm.build_tokenizer(tmp_path / "tok")
    return tm.save_model(LlamaForCausalLM(tm.tiny_config(LlamaConfig, tok_dir)), tok_dir, tmp_path / "policy"), tok_dir


@pytest.mark.parametrize("kind", ["dpo", "kto"])
def test_the_output_trains_in_trl(tmp_path, kind):
    """The selection (and train.jsonl) go through TRL's own data path: DPOTrainer / KTOTrainer
    tokenise them and take one optimisation step on a tiny random model."""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoTokenizer

    f = _write(tmp_path / f"{kind}.jsonl", _dpo_rows(12) if kind == "dpo" else _kto_rows(6))
    out = tmp_path / "o"
    assert main(["select", str(f), "--budget", "4", "--profile", "lite", "--proportions", "natural", "-q", "--training-file",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    for name, entry in (("selected.jsonl", "selected"), ("train.jsonl", "train")):  # the manifest counts lines (KTO: two per unit)
        assert man["outputs"][entry]["rows"] == len((out / name).read_text().splitlines()), name
    policy, tok_dir = _tiny_policy(tmp_path)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for name in ("selected.jsonl", "train.jsonl"):
        ds = datasets.load_dataset("json", data_files=str(out / name), split="train")
        common = {"output_dir": str(tmp_path / "trl"), "max_steps": 1, "per_device_train_batch_size": 2, "report_to": [], "use_cpu": True,
                  "save_strategy": "no", "max_length": 128}
        if kind == "dpo":
            trainer = trl.DPOTrainer(model=policy, args=trl.DPOConfig(**common), train_dataset=ds, processing_class=tok)
        else:
            trainer = trl.KTOTrainer(model=policy, args=trl.KTOConfig(**common), train_dataset=ds, processing_class=tok)
        assert len(trainer.train_dataset) == ds.num_rows
        loss = trainer.train().training_loss
        assert np.isfinite(loss)
