"""What the local Hugging Face cache holds of a hub model, file by file: the model loaders ask it
whether a cached model failed to load because a first download stopped between its steps."""
from __future__ import annotations

import json
from pathlib import Path

#: the files of each loading step: once its download is done, one of them is in the cache
_STEP_FILES = {"weights": ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"),
               "tokenizer": ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")}


def step_not_cached(repo_id: str, what: str, kw: dict) -> bool:
    """Whether the hub cache lacks what loading step ``what`` needs of ``repo_id``: none of its
    files, or not every shard a cached index names (an interrupted download)."""
    from huggingface_hub import try_to_load_from_cache

    revision = kw.get("revision")
    files = (kw["gguf_file"],) if kw.get("gguf_file") else _STEP_FILES.get(what, ())
    for name in files:
        try:
            hit = try_to_load_from_cache(repo_id, name, revision=revision)
        except Exception:  # noqa: BLE001 - an invalid name is simply not cached
            hit = None
        if not isinstance(hit, str):
            continue
        if not name.endswith(".index.json"):
            return False
        try:
            shards = set(json.loads(Path(hit).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return not all(isinstance(try_to_load_from_cache(repo_id, s, revision=revision), str) for s in shards)
    return bool(files)
