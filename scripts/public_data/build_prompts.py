"""Build the classifier's public prompt sets from repositories whose own labels map to LASER's
categories (issue 17): a training file from a published train split, and a held-out file from
published test sets that is never trained on.

Run: python scripts/public_data/build_prompts.py --mirror DIR --out DIR

Reads bare git clones under ``--mirror`` as ``<owner>+<name>/repo`` (``git show HEAD:<path>``):

* ``GAIR-NLP/auto-j``: ``other_resources/scenario_classifier_data/traindata.jsonl`` (train) and
  ``testdata.jsonl`` (held out): user queries labelled with Auto-J's 58 scenarios;
* ``lm-sys/FastChat``: MT-Bench's 80 questions (first turns; held out);
* ``nlpxucan/WizardLM``: the WizardLM test set (218 instructions with a skill; held out);
* ``benedictflorance/truthfulqa_experiments``: a copy of TruthfulQA's 817 questions (a seeded
  sample of 100; held out).

Writes ``prompts_train.jsonl`` and ``prompts_heldout.jsonl`` (``text``, ``category``, ``source``,
``label`` = the source's own label, ``half``) and ``prompts_stats.json``.

It also writes ``pairs_heldout.jsonl``, held-out pairs for the quality heads, from Auto-J's
pairwise **test** set (``data/test/testdata_pairwise.jsonl``: real user queries, two model
responses, a human label; ties left out): ``instruction``, ``chosen``, ``rejected``, ``source``,
``scenario``, ``category`` (the scenario's LASER category, or None), ``half`` (by
``sha1(instruction)``, so the pairs of one query share a half). Evaluation only, never trained on. The maps below were
written from the labels' names and a look at a few training queries per scenario, before any
classifier saw a held-out prompt; labels with no clear LASER category are left out. Held-out rows
are split once into halves by ``sha1(text)``: ``dev`` may guide choices, ``test`` is only reported.
Prompts that appear in the training file, in ../shared/data or in examples/pool are dropped from
the held-out file. Deterministic. The data never goes into the project.
"""
from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import io
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from build import head, show  # the mirror readers of the other builder

# Auto-J scenario -> LASER category, following the project's labelling rule (docs/classifier.md)
AUTOJ = {
    **dict.fromkeys([
        "functional_writing", "creative_writing", "writing_song_lyrics", "writing_cooking_recipe", "writing_legal_document",
        "writing_presentation_script", "writing_social_media_post", "writing_blog_post", "writing_job_application",
        "writing_personal_essay", "writing_advertisement", "writing_email", "writing_news_article",
        "writing_product_description", "writing_marketing_materials", "writing_technical_document", "writing_biography",
        "writing_scientific_paper", "roleplay", "title_generation", "question_generation", "instructional_rewriting",
        "paraphrasing", "text_to_text_translation", "language_polishing", "text_simplification", "text_correction"],
        "Generation"),
    **dict.fromkeys(["brainstorming", "seeking_advice", "explaining_general", "asking_how_to_question", "recommendation",
                     "planning", "counterfactual", "classification_identification"], "Brainstorming"),
    **dict.fromkeys(["verifying_fact", "open_question", "solving_exam_question_without_math"], "Factual QA"),
    **dict.fromkeys(["code_generation", "code_correction_rewriting", "explaining_code", "code_to_code_translation",
                     "code_simplification"], "Coding"),
    **dict.fromkeys(["math_reasoning", "solving_exam_question_with_math"], "Math"),
    **dict.fromkeys(["text_summarization", "note_summarization", "information_extraction", "reading_comprehension",
                     "keywords_extraction", "topic_modeling"], "Extraction"),
}
# left out: default, rejecting, chitchat, ranking, peer_review, value_judgement, analyzing_general, data_analysis

MT_BENCH = {"writing": "Generation", "roleplay": "Generation", "reasoning": "Reasoning", "math": "Math",
            "coding": "Coding", "extraction": "Extraction", "stem": "Brainstorming", "humanities": "Brainstorming"}

WIZARDLM = {"Math": "Math", "Code Generation": "Coding", "Code Debug": "Coding", "Writting": "Generation",
            "Academic Writing": "Generation", "Roleplay": "Generation", "Reasoning": "Reasoning",
            "Counterfactual": "Brainstorming", "TruthfulQA": "Factual QA"}
# left out: Computer Science, Complex Format, Common-Sense, Multilingual, Toxicity, Ethics and the
# subject skills (Biology, Law, History, ...), which mix explanations, opinions and facts

SOURCES = {
    "autoj": ("GAIR-NLP/auto-j", "other_resources/scenario_classifier_data/{}data.jsonl"),
    "mt_bench": ("lm-sys/FastChat", "fastchat/llm_judge/data/mt_bench/question.jsonl"),
    "wizardlm": ("nlpxucan/WizardLM", "WizardLM/data/WizardLM_testset.jsonl"),
    "truthfulqa": ("benedictflorance/truthfulqa_experiments", "datasets/TruthfulQA.csv"),
}
AUTOJ_PAIRS = "data/test/testdata_pairwise.jsonl"  # in GAIR-NLP/auto-j; label 0: response 1 preferred, 1: response 2, 2: tie


def _half(text: str) -> str:
    return "dev" if int(hashlib.sha1(text.encode()).hexdigest(), 16) % 2 == 0 else "test"


def heldout_pairs(mirror: Path) -> list[dict]:
    """Auto-J's human-labelled pairwise test set without ties (see the module docstring)."""
    rows = []
    for line in show(SOURCES["autoj"][0], AUTOJ_PAIRS, mirror).splitlines():
        d = json.loads(line)
        if d["label"] not in (0, 1):
            continue
        good, bad = (d["response 1"], d["response 2"]) if d["label"] == 0 else (d["response 2"], d["response 1"])
        rows.append({"instruction": d["prompt"], "chosen": good, "rejected": bad, "source": "autoj_pairwise_test",
                     "scenario": d["scenario"], "category": AUTOJ.get(d["scenario"]), "half": _half(d["prompt"])})
    return rows


def _norm(s: str) -> str:
    return re.sub(r"\W+", " ", s.lower()).strip()


def _known_texts(root: Path) -> set[str]:
    """Normalised prompts of ../shared/data and examples/pool (never in the held-out file)."""
    import gzip

    seen = set()
    for p in [*(root.parent / "shared" / "data").glob("*.jsonl*"), *(root / "examples" / "pool").glob("*.jsonl*")]:
        op = gzip.open if p.name.endswith(".gz") else open
        with op(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                for k in ("instruction", "prompt", "question", "text"):
                    if isinstance(d.get(k), str):
                        seen.add(_norm(d[k]))
                for m in d.get("messages") or d.get("conversations") or []:
                    if isinstance(m, dict) and isinstance(m.get("content") or m.get("value"), str):
                        seen.add(_norm(m.get("content") or m.get("value")))
    return seen


def build(mirror: Path, out: Path, root: Path) -> dict:
    stats: dict = {"commits": {}, "kept": {}, "left_out_labels": {}, "dropped_overlap": 0}
    for key, (repo, _) in SOURCES.items():
        stats["commits"][key] = head(repo, mirror)

    def autoj(split: str) -> list[dict]:
        rows = []
        for line in show(SOURCES["autoj"][0], SOURCES["autoj"][1].format(split), mirror).splitlines():
            d = json.loads(line)
            text = d["instruction"] + ("\n\n" + d["input"] if (d.get("input") or "").strip() else "")
            cat = AUTOJ.get(d["category"])
            if cat is None:
                stats["left_out_labels"][f"autoj:{d['category']}"] = stats["left_out_labels"].get(f"autoj:{d['category']}", 0) + 1
                continue
            rows.append({"text": text, "category": cat, "source": f"autoj_{split}", "label": d["category"]})
        return rows

    train = autoj("train")
    held = autoj("test")
    for line in show(*SOURCES["mt_bench"], mirror).splitlines():
        d = json.loads(line)
        held.append({"text": d["turns"][0], "category": MT_BENCH[d["category"]], "source": "mt_bench", "label": d["category"]})
    for line in show(*SOURCES["wizardlm"], mirror).splitlines():
        d = json.loads(line)
        cat = WIZARDLM.get(d["Skill"])
        if cat is None:
            stats["left_out_labels"][f"wizardlm:{d['Skill']}"] = stats["left_out_labels"].get(f"wizardlm:{d['Skill']}", 0) + 1
            continue
        held.append({"text": d["Instruction"], "category": cat, "source": "wizardlm", "label": d["Skill"]})
    tqa = list(csv.DictReader(io.StringIO(show(*SOURCES["truthfulqa"], mirror))))
    for d in random.Random(0).sample(tqa, 100):
        held.append({"text": d["Question"], "category": "Factual QA", "source": "truthfulqa", "label": d["Category"]})

    known = _known_texts(root) | {_norm(r["text"]) for r in train}
    kept, seen = [], set()
    for r in held:
        n = _norm(r["text"])
        if n in known or n in seen:
            stats["dropped_overlap"] += 1
            continue
        seen.add(n)
        r["half"] = _half(r["text"])
        kept.append(r)
    for r in train:
        r["half"] = "train"
    pairs = heldout_pairs(mirror)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("prompts_train.jsonl", train), ("prompts_heldout.jsonl", kept), ("pairs_heldout.jsonl", pairs)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        stats["kept"][name] = dict(sorted(collections.Counter(f"{r['half']}:{r['category']}" for r in rows).items()))
    (out / "prompts_stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n")
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror", type=Path, default=Path(".mirror"))
    ap.add_argument("--out", type=Path, default=Path("public_data"))
    a = ap.parse_args()
    print(json.dumps(build(a.mirror, a.out, Path(__file__).resolve().parents[2]), indent=1))


if __name__ == "__main__":
    main()
