"""Issue 17: the classifier's public prompt sets (scripts/public_data/build_prompts.py) map each
source's own labels to LASER's categories, leave unmapped labels out, never put a training prompt
into the held-out file, and split that file into fixed halves."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("build_prompts", ROOT / "scripts" / "public_data" / "build_prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _repo(mirror: Path, name: str, files: dict[str, str]) -> None:
    d = mirror / name.replace("/", "+") / "repo"
    d.mkdir(parents=True)
    for path, text in files.items():
        (d / path).parent.mkdir(parents=True, exist_ok=True)
        (d / path).write_text(text, encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(d)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "data"], check=True)


def _jl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_labels_map_to_laser_categories_and_train_prompts_never_reach_the_held_out_file(tmp_path):
    mod = _module()
    mirror = tmp_path / "mirror"
    autoj = "other_resources/scenario_classifier_data/{}data.jsonl"
    _repo(mirror, "GAIR-NLP/auto-j", {
        autoj.format("train"): _jl([
            {"category": "code_generation", "instruction": "Write a Python function that reverses a list.", "input": ""},
            {"category": "text_summarization", "instruction": "Summarize this:", "input": "A long passage."},
            {"category": "chitchat", "instruction": "hi there", "input": ""}]),
        autoj.format("test"): _jl([
            {"category": "math_reasoning", "instruction": "What is 17 times 23?", "input": ""},
            {"category": "code_generation", "instruction": "Write a Python function that reverses a list.", "input": ""},
            {"category": "default", "instruction": "something", "input": ""}]),
        "data/test/testdata_pairwise.jsonl": _jl([
            {"scenario": "code_generation", "label": 0, "prompt": "Reverse a list in Python.", "response 1": "a[::-1]", "response 2": "no"},
            {"scenario": "chitchat", "label": 1, "prompt": "hello", "response 1": "go away", "response 2": "Hi! How can I help?"},
            {"scenario": "brainstorming", "label": 2, "prompt": "Name a colour.", "response 1": "red", "response 2": "blue"}])})
    _repo(mirror, "lm-sys/FastChat", {"fastchat/llm_judge/data/mt_bench/question.jsonl": _jl([
        {"question_id": 81, "category": "writing", "turns": ["Compose a travel blog post about Hawaii.", "Rewrite it."]},
        {"question_id": 131, "category": "extraction", "turns": ["Extract the dates from the text below.\nOn May 3...", "x"]}])})
    _repo(mirror, "nlpxucan/WizardLM", {"WizardLM/data/WizardLM_testset.jsonl": _jl([
        {"idx": 1, "Skill": "Reasoning", "Instruction": "If all bloops are razzies, are some razzies bloops?"},
        {"idx": 2, "Skill": "Biology", "Instruction": "Explain photosynthesis."}])})
    rows = ["Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source"]
    rows += [f"Adversarial,Misconceptions,What is fact number {i}?,a,a,b,s" for i in range(120)]
    _repo(mirror, "benedictflorance/truthfulqa_experiments", {"datasets/TruthfulQA.csv": "\n".join(rows) + "\n"})

    out = tmp_path / "out"
    stats = mod.build(mirror, out, tmp_path / "project")
    train = [json.loads(x) for x in (out / "prompts_train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "prompts_heldout.jsonl").read_text().splitlines()]
    assert [(r["category"], r["label"]) for r in train] == [("Coding", "code_generation"), ("Extraction", "text_summarization")]
    assert train[1]["text"] == "Summarize this:\n\nA long passage."
    by_source = {}
    for r in held:
        by_source.setdefault(r["source"], []).append(r)
    assert [(r["category"], r["label"]) for r in by_source["autoj_test"]] == [("Math", "math_reasoning")]  # the train prompt is dropped
    assert [r["category"] for r in by_source["mt_bench"]] == ["Generation", "Extraction"]
    assert by_source["mt_bench"][0]["text"] == "Compose a travel blog post about Hawaii."  # first turn only
    assert [r["category"] for r in by_source["wizardlm"]] == ["Reasoning"]
    assert len(by_source["truthfulqa"]) == 100 and {r["category"] for r in by_source["truthfulqa"]} == {"Factual QA"}
    assert stats["dropped_overlap"] == 1
    assert stats["left_out_labels"] == {"autoj:chitchat": 1, "autoj:default": 1, "wizardlm:Biology": 1}
    for r in held:
        assert r["half"] == ("dev" if int(hashlib.sha1(r["text"].encode()).hexdigest(), 16) % 2 == 0 else "test")
    assert {r["half"] for r in held} == {"dev", "test"}
    pairs = [json.loads(x) for x in (out / "pairs_heldout.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"], p["category"]) for p in pairs] == [("a[::-1]", "no", "Coding"), ("Hi! How can I help?", "go away", None)]
    assert all(p["half"] == mod._half(p["instruction"]) and p["source"] == "autoj_pairwise_test" for p in pairs)  # the tie is left out
    # deterministic: a second build writes the same bytes
    again = tmp_path / "again"
    mod.build(mirror, again, tmp_path / "project")
    assert (again / "prompts_heldout.jsonl").read_bytes() == (out / "prompts_heldout.jsonl").read_bytes()
