"""Issue 18: an SFT selection loads and trains in TRL's SFTTrainer as it is written: the JSONL and
Parquet provenance files and the minimal ``train.jsonl`` (``messages`` + ``data_id``), through
``datasets.load_dataset`` and one optimisation step on a tiny random model."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from laser_fast.cli import main


def test_sft_outputs_train_in_trl(tmp_path, example_files, workdir):
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tiny_models as tm

    args = ["select", *example_files, "--budget", "6", "--strategy", "random", "--profile", "none", "--mode", "none", "-q",
            "--training-file", "--workdir", workdir]
    assert main([*args, "--output-dir", str(tmp_path / "j")]) == 0
    assert main([*args, "--format", "parquet", "--output-dir", str(tmp_path / "p")]) == 0
    tok_dir = tm.build_tokenizer(tmp_path / "tok")
    policy = tm.save_model(LlamaForCausalLM(tm.tiny_config(LlamaConfig, tok_dir)), tok_dir, tmp_path / "policy")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for kind, path in (("json", tmp_path / "j" / "selected.jsonl"), ("parquet", tmp_path / "p" / "selected.parquet"),
                       ("json", tmp_path / "j" / "train.jsonl")):
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        assert ds.num_rows == 6 and "messages" in ds.column_names
        cfg = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True,
                            save_strategy="no", max_length=128)
        trainer = trl.SFTTrainer(model=policy, args=cfg, train_dataset=ds, processing_class=tok)
        assert len(trainer.train_dataset) == 6
        assert np.isfinite(trainer.train().training_loss)
    train = [json.loads(x) for x in (tmp_path / "j" / "train.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in train] == [["data_id", "messages"]] * 6
