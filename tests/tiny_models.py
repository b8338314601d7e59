"""Tiny random-init models of the paper's scorers in their published formats, built by tests.

* a byte-level BPE tokenizer trained here on a few sentences, with a ChatML template, the PRM
  step token ``<extra_0>`` and the digits as single tokens;
* ``difficulty``: a standard ``Qwen3ForSequenceClassification`` checkpoint with one label;
* ``difficulty_remote``: the published difficulty scorer's format: a checkpoint whose config maps
  ``AutoModelForCausalLM`` to a class in a Python file it ships (``auto_map``), which returns one
  ``logits`` value per sequence (read at the last position) and hands out its tokenizer with
  ``get_tokenizer()``; it loads only with ``trust_remote_code``;
* ``deita``: ``LlamaForCausalLM``; ``prm``: Qwen2 + the PRM head, ``architectures =
  ["Qwen2ForProcessRewardModel"]``; ``ifd``: ``Qwen2ForCausalLM``.
"""
from __future__ import annotations

import json
from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]

CORPUS = [
    "What is the sum of 1 and 2? The answer is 3.",
    "Solve 2x + 3 = 7. Subtract 3 from both sides: 2x = 4. Divide by 2: x = 2.",
    "Write a short poem about the sea and the wind and the rain.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "Explain why the sky is blue: sunlight scatters off molecules in the air.",
    "Step 1: compute 4 * 5 = 20.\n\nStep 2: add 6 to get 26.\n\nSo the result is 26.",
] * 20

#: The code of the remote-code difficulty checkpoint (written next to its weights).
REMOTE_MODELING = '''
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, Qwen3Config, Qwen3Model


class DifficultyHeadConfig(Qwen3Config):
    model_type = "difficulty_head_test"


class DifficultyHeadModel(PreTrainedModel):
    config_class = DifficultyHeadConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen3Model(config)
        self.head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def get_tokenizer(self):
        return AutoTokenizer.from_pretrained(self.config._name_or_path, trust_remote_code=True)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        hidden = self.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return {"logits": self.head(hidden[:, -1]).float()}
'''


def build_tokenizer(out: Path) -> Path:
    """Train the tiny tokenizer and save it to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<extra_0>"])
    fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def save_model(model, tok_dir: Path, out: Path, architectures=None) -> str:
    """Save ``model`` and the tokenizer of ``tok_dir`` to ``out`` (optionally rewriting ``architectures``)."""
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    if architectures:
        cfg = json.loads((out / "config.json").read_text())
        cfg["architectures"] = architectures
        (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


def tiny_config(cls, tok_dir: Path, **kw):
    """A 2-layer, 32-wide config of ``cls`` sized to the tokenizer of ``tok_dir``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "initializer_range": 0.2, "pad_token_id": tok.pad_token_id, "tie_word_embeddings": False}
    base.update(kw)
    return cls(**base)


def build_remote_difficulty(tok_dir: Path, out: Path) -> str:
    """The published difficulty scorer's format (see the module doc), random-init, saved to ``out``."""
    import importlib.util
    import sys

    out.mkdir(parents=True, exist_ok=True)
    code = out / "modeling_difficulty_head.py"
    code.write_text(REMOTE_MODELING)
    spec = importlib.util.spec_from_file_location(f"_tiny_remote_{abs(hash(str(out)))}", code)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    cfg = tiny_config(mod.DifficultyHeadConfig, tok_dir, head_dim=8)
    model = mod.DifficultyHeadModel(cfg)
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(out)
    c = json.loads((out / "config.json").read_text())
    c["architectures"] = ["DifficultyHeadModel"]
    c["model_type"] = "difficulty_head_test"
    c["auto_map"] = {"AutoConfig": "modeling_difficulty_head.DifficultyHeadConfig",
                     "AutoModelForCausalLM": "modeling_difficulty_head.DifficultyHeadModel"}
    (out / "config.json").write_text(json.dumps(c))
    return str(out)


def build_models(root: Path, tok_dir: Path) -> dict[str, str]:
    """Every tiny scorer model under ``root``: name -> folder."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForTokenClassification,
        Qwen3Config,
        Qwen3ForSequenceClassification,
    )

    from laser_fast.runtime.models import prm_model_class

    torch.manual_seed(0)
    out = {}
    out["difficulty"] = save_model(Qwen3ForSequenceClassification(tiny_config(Qwen3Config, tok_dir, num_labels=1, head_dim=8)),
                                   tok_dir, root / "difficulty")
    out["deita"] = save_model(LlamaForCausalLM(tiny_config(LlamaConfig, tok_dir)), tok_dir, root / "deita")
    out["prm_tc"] = save_model(Qwen2ForTokenClassification(tiny_config(Qwen2Config, tok_dir, num_labels=2)), tok_dir, root / "prm_tc")
    out["prm"] = save_model(prm_model_class()(tiny_config(Qwen2Config, tok_dir, num_labels=2)), tok_dir, root / "prm",
                            architectures=["Qwen2ForProcessRewardModel"])
    out["ifd"] = save_model(Qwen2ForCausalLM(tiny_config(Qwen2Config, tok_dir)), tok_dir, root / "ifd")
    out["difficulty_remote"] = build_remote_difficulty(tok_dir, root / "difficulty_remote")
    return out
