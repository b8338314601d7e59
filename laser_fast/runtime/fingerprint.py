"""What a model named by a local folder is, for cache keys: the folder's files, not its path.

A classifier, embedder or scorer given as ``--embedding-model /models/mine`` and then retrained or
replaced in the same folder must not reuse the classes, vectors or scores of the model that was
there before. :func:`model_identity` is the name of a hub model unchanged, and for a local
folder its path plus :func:`folder_fingerprint`: every file's relative path and size, the bytes of
files up to 256 MiB, and for larger ones (shards of a big model) their first and last 4 MiB and
modification time. Hidden entries (``.git``, ``.cache``) are left out. The hash of one folder state
is computed once per process.

Example:
    >>> model_identity("sentence-transformers/all-MiniLM-L6-v2")
    'sentence-transformers/all-MiniLM-L6-v2'
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

#: files up to this size are hashed whole; larger ones by their ends, size and modification time
FULL_BYTES = 256 << 20
_END_BYTES = 4 << 20


def _entries(root: Path) -> tuple[tuple[str, int, int], ...]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.relative_to(root).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _hash(root: str, entries: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha1()
    for rel, size, mtime in entries:
        h.update(f"{rel}\0{size}\0".encode())
        with open(Path(root) / rel, "rb") as f:
            if size <= FULL_BYTES:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(f.read(_END_BYTES))
                f.seek(size - _END_BYTES)
                h.update(f.read(_END_BYTES))
                h.update(str(mtime).encode())
    return h.hexdigest()[:16]


def folder_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of a model folder's files (see the module docstring)."""
    root = Path(path).expanduser().resolve()
    return _hash(str(root), _entries(root))


def model_identity(model: str | os.PathLike | None) -> str | None:
    """``model`` for a cache key: a hub id (or None) as it is, a local folder as its path plus the
    :func:`folder_fingerprint` of its files, a local file as its path plus size and mtime."""
    if model is None:
        return None
    text = str(model)
    p = Path(text).expanduser()
    try:
        if p.is_dir():
            return f"{text}#{folder_fingerprint(p)}"
        if p.is_file():
            st = p.stat()
            return f"{text}#{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        pass
    return text
