"""What the local Hugging Face cache and a model folder hold, file by file: whether a hub model is
cached, whether a first download stopped between its loading steps, and which files a sharded
checkpoint's index names. The model loaders and the memory estimate share them."""
from __future__ import annotations

import json
from pathlib import Path

#: the files of each loading step: once its download is done, one of them is in the cache
_STEP_FILES = {"weights": ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin"),
               "tokenizer": ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")}


def cached_file(repo_id: str, name: str, revision: str | None = None) -> Path | None:
    """The local path of file ``name`` of hub model ``repo_id`` in the Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, name, revision=revision)
    except Exception:  # noqa: BLE001 - an invalid id or name is simply not cached
        return None
    return Path(hit) if isinstance(hit, str) else None


def index_files(folder: Path, index: str) -> list[Path] | None:
    """The weight files a sharded checkpoint's index names (a folder may hold a single-file copy of
    the same weights beside the shards); [] without an index, None when one of them is missing."""
    try:
        names = set(json.loads((folder / index).read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    files = [folder / n for n in sorted(names)]
    return files if all(f.is_file() for f in files) else None


def step_not_cached(repo_id: str, what: str, kw: dict) -> bool:
    """Whether the cached snapshot of ``repo_id`` (its ``config.json`` is there) lacks what loading
    step ``what`` needs: none of its files, or not every shard a cached index names (an
    interrupted download)."""
    config = cached_file(repo_id, "config.json", kw.get("revision"))
    if config is None:
        return True
    snapshot = config.parent
    files = (kw["gguf_file"],) if kw.get("gguf_file") else _STEP_FILES.get(what, ())
    for name in files:
        if (snapshot / name).is_file():
            return name.endswith(".index.json") and index_files(snapshot, name) is None
    return bool(files)
