"""Issue 18: ``--max-seq-length`` and token budgets count the tokens of the model being trained
when ``--train-tokenizer MODEL`` names it (by default MiniLM's WordPiece, as documented)."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from laser_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "examples" / "pool" / "alpaca.jsonl"


def test_max_seq_length_counts_the_training_tokenizers_tokens(tmp_path, capsys):
    from tiny_models import build_tokenizer
    from transformers import AutoTokenizer

    tok_dir = build_tokenizer(tmp_path / "tok")  # a byte-level BPE trained on a few sentences: many tokens per word
    common = ["--budget", "20", "--strategy", "random", "--profile", "none", "-q", "--max-seq-length", "300"]
    runs = {}
    for name, extra in (("default", []), ("train", ["--train-tokenizer", str(tok_dir)])):
        out = tmp_path / name
        assert main(["select", str(POOL), *common, *extra, "--workdir", str(tmp_path / f"w_{name}"), "--output-dir", str(out)]) == 0
        runs[name] = (pl.read_parquet(out / "decisions.parquet"), json.loads((out / "manifest.json").read_text()))
    capsys.readouterr()

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    rec = json.loads(POOL.read_text().splitlines()[0])
    dec = runs["train"][0].row(0, named=True)
    assert dec["inst_length"] == len(tok.encode(rec["instruction"] + "\n\n" + rec["input"], add_special_tokens=False))
    assert dec["resp_length"] == len(tok.encode(rec["output"], add_special_tokens=False))
    too_long = {k: d.filter(pl.col("status") == "too_long").height for k, (d, _) in runs.items()}
    assert too_long["train"] > too_long["default"], too_long
    assert runs["train"][1]["options"]["tokenizer"] == str(tok_dir) and runs["default"][1]["options"]["tokenizer"] is None
