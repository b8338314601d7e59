"""The work directory: every cache of a run, written, checked and shared the same way.

Layout (:data:`LAYOUT_VERSION` 2)::

    <root>/
        VERSION                              layout marker ("laser_fast work directory\\nlayout 2\\n")
        cache/<stage>-<key>-v2.npz           categories, language mask, token counts (:meth:`WorkDir.cached_arrays`)
        embeddings/<key>.npy                 one (n, d) float16 matrix per request (EmbeddingStore)
        embeddings/<ns>/shard-<id>.f16.npy   vectors of one shard of texts (EmbeddingStore)
        embeddings/<ns>/shard-<id>.hashes.npy  the sha1 of each of those texts
        scores/<scorer>-<fp>/FINGERPRINT     the scorer's full fingerprint (ScoreCache)
        scores/<scorer>-<fp>/part-*.parquet  cached scores (ScoreCache); work/ holds judge responses
        tmp/records-<host>-<pid>-<rand>.arrow  a spilled record table (unlinked as soon as it is mapped)
        locks/<name>.lock                    ``fcntl.flock`` files

Every entry ``<file>`` written through :meth:`WorkDir.atomic` has a sidecar ``<file>.meta.json``
(``layout``, ``bytes``, ``checksum`` and, for ``.npy`` files, ``shape`` and ``dtype``). An entry
is present once its sidecar is: the file is written to a unique temporary name
(``.<name>.tmp-<host>-<pid>-<rand>``), fsynced, then renamed into place and its sidecar written,
both under the entry's lock. A reader checks the size and the checksum (:meth:`WorkDir.verify`);
an entry that fails (truncated, garbled, a changed value, a missing sidecar) is confirmed under
the entry's lock (a concurrent writer may be between the two renames), logged as a warning with
its path, removed, and the caller recomputes it. Keys hold :data:`LAYOUT_VERSION` (in the file
name or the hashed key), so entries of another layout are never read.

Two runs may share a work directory: every name a run writes is unique or content-keyed (two runs
computing the same entry write the same content; the last rename wins), and temporary files of
dead processes of this host are removed when a run first uses the directory
(:meth:`WorkDir.clean_stale`), never those of live ones.

A work directory given as a URI (``s3://bucket/laser``, ``gs://…``, ``file:///nfs/…``, any fsspec
protocol) is shared storage (:mod:`laser_fast.runtime.storage`): each machine keeps a local copy
of the same layout (``$LASER_FAST_SCRATCH/<hash of the URI>``), every entry written through
:meth:`WorkDir.atomic` is uploaded under the same relative path, then its integrity record, and a
reader missing an entry here fetches it from there (:meth:`WorkDir.check`, :meth:`WorkDir.entries`).
Locks stay per machine; the names (unique or content-keyed) make them unnecessary between machines.

The checksum (:class:`Checksum`, :mod:`laser_fast.runtime.checksum`) reads the bytes as little-endian uint64 words (the tail padded
with zeros) and keeps ``sum(x_i)`` and ``sum(x_i * (2i + 1))`` mod 2**64: a changed word changes
the first sum, two swapped words or rows change the second. It runs at ~0.16 s per GB from the
page cache (0.12 s for the 768 MB memmap of 1M x 384 float16; sha256 ~0.7 s per GB on the same
machine), reading 8 MB at a time into one buffer, so the process maps nothing and its resident
memory grows by ~9 MB while it runs.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from laser_fast.errors import LaserError
from laser_fast.runtime.checksum import CHECKSUM_BLOCK, CHECKSUM_PART, Checksum, checksum_file  # noqa: F401 - re-exported
from laser_fast.runtime.storage import RemoteStore, is_uri, scratch_for

logger = logging.getLogger(__name__)

#: Version of the layout and of every entry format; part of every key.
LAYOUT_VERSION = 2
#: The layout marker file's content.
MARKER = f"laser_fast work directory\nlayout {LAYOUT_VERSION}\n"
#: Entry locks are striped over this many lock files.
ENTRY_LOCKS = 64

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMP_RE = re.compile(r"^\..+\.tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}$")
_SPILL_RE = re.compile(r"^records-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}\.arrow$")
_READY: set[str] = set()
#: local copies of URI work directories made by this process -> their URIs (:meth:`WorkDir.owning`)
_REMOTE: dict[str, str] = {}


def default_workdir() -> str:
    """The default work directory: ``$LASER_FAST_WORKDIR`` or ``~/.cache/laser_fast``."""
    return os.environ.get("LASER_FAST_WORKDIR") or str(Path.home() / ".cache" / "laser_fast")


def unique_suffix() -> str:
    """``<host>-<pid>-<random>``: what makes a temporary name unique to one process and one
    call, and lets :meth:`WorkDir.clean_stale` tell whether its writer is still alive."""
    return f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def temp_path(final: str | os.PathLike) -> Path:
    """A unique temporary name beside ``final`` (same folder, so a rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{unique_suffix()}")


def sidecar(path: str | os.PathLike) -> Path:
    """The integrity record of an entry: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: alive, another user's
        return True
    return True


def npy_header(path: Path) -> tuple[list[int], str]:
    """Shape and dtype (``dtype.str``) from a ``.npy`` file's header."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:  # 3.0 (utf-8 field names): no public reader
            shape, _, dtype = fmt._read_array_header(f, version)
    return list(shape), dtype.str


# --------------------------------------------------------------------------- the work directory


class WorkDir:
    """The work directory of runs: its layout, atomic writes, locks and checked reads.

    Args:
        root: the folder (None: :func:`default_workdir`). Nothing is created until it is used.

    Example:
        >>> wd = WorkDir("/tmp/work")                                          # doctest: +SKIP
        >>> arrays = wd.cached_arrays("stage", "key123", lambda: {"x": np.arange(3)})  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike | None = None):
        spec = root if root is not None else default_workdir()
        spec = spec if isinstance(spec, str) else os.fspath(spec)
        #: the shared storage's URI, None for a local folder (see :mod:`laser_fast.runtime.storage`)
        self.uri: str | None = None
        self.remote: RemoteStore | None = None
        if is_uri(spec):
            self.uri = spec.rstrip("/")
            self.remote = RemoteStore(self.uri)
            self.root = scratch_for(self.uri)  # this machine's copy
            _REMOTE[str(self.root)] = self.uri
        else:
            self.root = Path(spec).expanduser()
        self._ready = False

    @classmethod
    def owning(cls, path: str | os.PathLike) -> WorkDir | None:
        """The URI work directory whose local copy holds ``path`` (None: none does, ``path`` is
        plain local storage). Lets code that was handed a folder inside the work directory (a
        judge's answer cache) share what it writes."""
        p = Path(path)
        for root, uri in _REMOTE.items():
            if p == Path(root) or Path(root) in p.parents:
                return cls(uri)
        return None

    @classmethod
    def of(cls, x: WorkDir | str | os.PathLike | None) -> WorkDir:
        """``x`` itself when it is a WorkDir, else ``WorkDir(x)`` (None: the default folder)."""
        return x if isinstance(x, WorkDir) else cls(x)

    def __str__(self) -> str:
        """The URI of a shared work directory, else the folder: ``WorkDir(str(wd)) == wd``."""
        return self.uri or str(self.root)

    def __fspath__(self) -> str:
        """The local folder (for a URI work directory, this machine's copy)."""
        return str(self.root)

    def __repr__(self) -> str:
        return f"WorkDir({str(self)!r})"

    def __truediv__(self, other: str) -> Path:
        return self.root / other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WorkDir) and (other.uri, other.root) == (self.uri, self.root)

    def __hash__(self) -> int:
        return hash((self.uri, self.root))

    cache = property(lambda self: self.root / "cache", doc="``cache/``: small arrays per stage and key")
    embeddings = property(lambda self: self.root / "embeddings", doc="``embeddings/``: the embedding store")
    scores = property(lambda self: self.root / "scores", doc="``scores/``: the score caches")
    tmp = property(lambda self: self.root / "tmp", doc="``tmp/``: spilled record tables")
    locks = property(lambda self: self.root / "locks", doc="``locks/``: lock files")

    # ---- layout -----------------------------------------------------------------------------

    def ensure(self) -> WorkDir:
        """Create the layout and the marker, and remove stale temporary files (once per process).

        Returns:
            self.

        Raises:
            LaserError: the folder cannot be created or written.
        """
        if self._ready:
            return self
        key = os.path.abspath(self.root)
        if key in _READY:
            self._ready = True
            return self
        try:
            for d in (self.cache, self.embeddings, self.scores, self.tmp, self.locks):
                d.mkdir(parents=True, exist_ok=True)
            marker = self.root / "VERSION"
            try:
                found = marker.read_text(encoding="utf-8")
            except FileNotFoundError:
                found = None
                tmp = temp_path(marker)
                tmp.write_text(MARKER, encoding="utf-8")
                os.replace(tmp, marker)
            if found is not None and found != MARKER:
                logger.warning("work directory %s was laid out by another version (%s); entries are keyed by layout, "
                               "so this run reads none of its entries and adds its own", self.root, found.strip().replace("\n", " "))
        except OSError as e:
            raise LaserError(f"work directory {self.root}: cannot be created or written ({e}); pass a writable folder with --workdir "
                             "(or set LASER_FAST_WORKDIR)") from e
        if self.remote is not None and self.remote.size("VERSION") is None:
            self.remote.upload(self.root / "VERSION", "VERSION")
        _READY.add(key)
        self._ready = True
        self.clean_stale()
        return self

    def clean_stale(self) -> list[Path]:
        """Remove the temporary files that processes of this host left behind when they died.

        Files of live processes (and of other hosts sharing the folder) are kept.

        Returns:
            The removed paths.
        """
        removed = []
        for sub in (self.cache, self.embeddings, self.scores, self.tmp, self.root):
            if not sub.is_dir():
                continue
            walk = os.walk(sub) if sub != self.root else [(str(sub), [], os.listdir(sub))]
            for folder, _, names in walk:
                for name in names:
                    m = _TEMP_RE.match(name) or _SPILL_RE.match(name)
                    if m is None or m.group(1) != _HOST or _pid_alive(int(m.group(2))):
                        continue
                    p = Path(folder) / name
                    try:
                        p.unlink()
                        removed.append(p)
                    except FileNotFoundError:
                        pass
                    except OSError as e:
                        logger.warning("work directory: cannot remove the stale temporary file %s (%s)", p, e)
        if removed:
            logger.info("work directory %s: removed %d temporary files of ended runs", self.root, len(removed))
        return removed

    # ---- locks --------------------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
        """Hold ``locks/<name>.lock`` (``fcntl.flock``; released when the block ends or the
        process dies). Without ``fcntl`` (Windows) nothing is locked.

        Args:
            name: lock name (letters, digits, ``.-_``; anything else becomes ``_``).
            shared: a shared lock instead of an exclusive one.
            blocking: wait for the lock; otherwise yield False at once when it is held.

        Returns:
            A context manager yielding whether the lock is held.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield True
            return
        self.locks.mkdir(parents=True, exist_ok=True)
        path = self.locks / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(fd, flags)
                held = True
            except BlockingIOError:
                held = False
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _entry_lock(self, path: Path):
        try:
            rel = str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            rel = str(path.resolve())
        return self.lock(f"entry-{int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % ENTRY_LOCKS:02d}")

    # ---- writes -------------------------------------------------------------------------------

    @staticmethod
    def _fsync(path: Path, directory: bool = False) -> None:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover - some filesystems refuse fsync on folders
            if not directory:
                raise
        finally:
            os.close(fd)

    @contextmanager
    def atomic(self, final: str | os.PathLike, *, record: bool = True, share: bool = True, keep: bool = True) -> Iterator[Path]:
        """Write ``final`` atomically: the block writes the yielded temporary path (same folder,
        unique name, normal file mode); when it ends the file is fsynced, renamed to ``final``
        and, with ``record``, its integrity record written. On an error the temporary file is
        removed and ``final`` is left as it was.

        Args:
            final: the entry's path.
            record: write the integrity record ``<final>.meta.json`` (size, checksum, npy shape
                and dtype).
            share: in a URI work directory, upload the entry (then its record) once it is in
                place; False keeps it on this machine (a per-request assembly of shared entries).
            keep: False: once uploaded, the entry is removed from this machine (the shared form
                of an entry kept here in another form); only with shared storage.

        Returns:
            A context manager yielding the temporary path.
        """
        self.ensure()
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(final)
        try:
            yield tmp
            if not tmp.exists():
                raise LaserError(f"work directory: nothing was written to {tmp} for {final}")
            self._fsync(tmp)
            meta = None
            if record:
                nbytes, digest = checksum_file(tmp)
                meta = {"layout": LAYOUT_VERSION, "bytes": nbytes, "checksum": digest}
                if final.suffix == ".npy":
                    meta["shape"], meta["dtype"] = npy_header(tmp)
            with self._entry_lock(final):
                os.replace(tmp, final)
                if meta is not None:
                    self._write_sidecar(final, meta)
            self._fsync(final.parent, directory=True)
            if share:
                self._push(final, record=meta is not None)
                if not keep and self.remote is not None:
                    for p in (final, sidecar(final)):
                        p.unlink(missing_ok=True)
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    # ---- shared storage (URI work directories) ------------------------------------------------

    def _rel(self, path: str | os.PathLike) -> str | None:
        """``path`` relative to the root (``/``-separated); None outside it or without shared storage."""
        if self.remote is None:
            return None
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def _push(self, path: Path, *, record: bool = True) -> None:
        """Upload the entry at ``path``, then its integrity record (which makes it present there)."""
        rel = self._rel(path)
        if rel is None:
            return
        self.remote.upload(path, rel)
        if record:
            self.remote.upload(sidecar(path), rel + ".meta.json")

    def _pull(self, path: Path) -> bool:
        """Copy the entry at ``path`` (file, then integrity record) from the shared storage when it
        is present there; whether it was."""
        rel = self._rel(path)
        if rel is None or self.remote.size(rel + ".meta.json") is None:
            return False
        with self._entry_lock(path):
            if sidecar(path).exists() and path.exists():
                return True
            if not self.remote.download(rel, path):
                return False
            return self.remote.download(rel + ".meta.json", sidecar(path))

    def entries(self, folder: str | os.PathLike, pattern: str) -> list[Path]:
        """The entries in ``folder`` whose names match ``pattern``, sorted by name: those on this
        machine and, in a URI work directory, those on the shared storage (fetched when they are
        read through :meth:`check`, :meth:`verify` or :meth:`load_array`)."""
        folder = Path(folder)
        names = {p.name for p in folder.glob(pattern)} if folder.is_dir() else set()
        rel = self._rel(folder)
        if rel is not None:
            there = self.remote.listdir(rel)
            names |= {n for n in there if fnmatch.fnmatchcase(n, pattern) and n + ".meta.json" in there}
        return [folder / n for n in sorted(names)]

    def sync_files(self, folder: str | os.PathLike, pattern: str) -> None:
        """Make ``folder``'s growing files (append-only logs, named per writer) the same here and
        on the shared storage: each side takes the other's copy where it is larger. Nothing
        happens for a local work directory."""
        folder = Path(folder)
        rel = self._rel(folder)
        if rel is None:
            return
        there = self.remote.listdir(rel, pattern)
        here = {p.name: p.stat().st_size for p in folder.glob(pattern)} if folder.is_dir() else {}
        for name, size in there.items():
            if size > here.get(name, -1):
                self.remote.download(f"{rel}/{name}", folder / name)
        for name, size in here.items():
            if size > there.get(name, -1):
                self.remote.upload(folder / name, f"{rel}/{name}")

    def remove_entry(self, path: str | os.PathLike) -> None:
        """Remove the entry at ``path`` and its integrity record, here and on the shared storage.

        Here the file goes first (a concurrent reader then finds it missing, not a file without
        its record, which it would take for damage); there the record goes first (the record is
        what makes an entry present on the storage)."""
        path = Path(path)
        rel = self._rel(path)
        if rel is not None:
            self.remote.delete(rel + ".meta.json")
            self.remote.delete(rel)
        for p in (path, sidecar(path)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    @staticmethod
    def _write_sidecar(final: Path, meta: dict) -> None:
        side = sidecar(final)
        tmp = temp_path(side)
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, side)
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass

    def save_array(self, path: str | os.PathLike, arr: np.ndarray, *, share: bool = True) -> Path:
        """Write ``arr`` as ``.npy`` to ``path`` atomically, with its integrity record (``share``:
        see :meth:`atomic`).

        Returns:
            The path.
        """
        path = Path(path)
        with self.atomic(path, share=share) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        return path

    # ---- checked reads ------------------------------------------------------------------------

    @staticmethod
    def _problem(path: Path) -> tuple[str | None, dict | None]:
        """``(None, meta)`` for an intact entry, ``("missing", None)`` when the file is absent,
        else ``(what is wrong, meta or None)``."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return "missing", None
        try:
            meta = json.loads(sidecar(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"it has no integrity record {sidecar(path).name}", None
        except (OSError, ValueError) as e:
            return f"its integrity record {sidecar(path).name} is unreadable ({e})", None
        if not isinstance(meta, dict) or meta.get("layout") != LAYOUT_VERSION or not isinstance(meta.get("bytes"), int):
            return f"its integrity record {sidecar(path).name} is not of layout {LAYOUT_VERSION}", None
        if size != meta["bytes"]:
            return f"it holds {size} bytes, {meta['bytes']} were written", meta
        try:
            _, digest = checksum_file(path)
        except FileNotFoundError:
            return "missing", None
        except OSError as e:
            return f"it cannot be read ({e})", meta
        if digest != meta.get("checksum"):
            return "its checksum does not match what was written", meta
        return None, meta

    def check(self, path: str | os.PathLike, *, shared: bool = True) -> dict | None:
        """The integrity record of an intact entry, or None when it is absent or damaged (a
        damaged entry is logged as a warning with its path and removed).

        ``shared=False``: the entry is only ever kept on this machine (written with
        ``share=False``), so a missing one is not looked up on the shared storage.

        Raises:
            LaserError: a damaged entry cannot be removed.
        """
        self.ensure()
        path = Path(path)
        problem, meta = self._problem(path)
        shared = shared and self._rel(path) is not None
        if problem is not None and problem != "missing" and shared:
            with self._entry_lock(path):  # a damaged copy here (a fetch cut short...): drop it, take the shared one
                problem, meta = self._problem(path)
                if problem is not None and problem != "missing":
                    logger.info("work directory: the local copy %s is damaged (%s); fetching it again", path, problem)
                    for p in (path, sidecar(path)):
                        p.unlink(missing_ok=True)
                    problem = "missing"
        if problem == "missing" and shared and self._pull(path):
            problem, meta = self._problem(path)
        if problem is None:
            return meta
        if problem == "missing":
            return None
        with self._entry_lock(path):  # a writer may be between its two renames: look again
            problem, meta = self._problem(path)
            if problem is None:
                return meta
            if problem != "missing":
                self._remove(path, problem)  # in a URI work directory: the shared copy is damaged too
        return None

    def verify(self, path: str | os.PathLike, *, shared: bool = True) -> bool:
        """Whether the entry at ``path`` is present and intact (see :meth:`check`)."""
        return self.check(path, shared=shared) is not None

    def discard(self, path: str | os.PathLike, problem: str) -> None:
        """Log ``path`` as damaged (``problem``) and remove it with its integrity record.

        Raises:
            LaserError: it cannot be removed.
        """
        with self._entry_lock(Path(path)):
            self._remove(Path(path), problem)

    def _remove(self, path: Path, problem: str) -> None:
        logger.warning("work directory: %s is damaged (%s); removed, it is computed again", path, problem)
        try:  # on shared storage too: a copy that arrived damaged must not be taken again by any run
            self.remove_entry(path)
        except OSError as e:
            raise LaserError(f"work directory: {path} is damaged ({problem}) and cannot be removed ({e}); delete it and rerun") from e

    def load_array(self, path: str | os.PathLike, *, mmap: bool = True, shared: bool = True) -> np.ndarray | None:
        """The ``.npy`` array at ``path`` once its size, checksum, shape and dtype match its
        integrity record (memory-mapped read-only with ``mmap``); None when it is absent or
        damaged (then logged and removed, see :meth:`check`, also for ``shared``)."""
        path = Path(path)
        meta = self.check(path, shared=shared)
        if meta is None:
            return None
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            self.discard(path, f"it cannot be read as an array ({e})")
            return None
        if list(arr.shape) != meta.get("shape") or arr.dtype.str != meta.get("dtype"):
            self.discard(path, f"it holds a {arr.dtype.str} array of shape {tuple(arr.shape)}, its record says {meta.get('dtype')} {meta.get('shape')}")
            return None
        return arr

    def cached_arrays(self, stage: str, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``compute()``'s arrays, from ``cache/<stage>-<key>-v<layout>.npz`` when a run stored
        them there intact; otherwise computed and stored (a damaged entry is logged, removed and
        computed again).

        Args:
            stage: the stage's name (the file name's first part).
            key: content key of the inputs (whatever changes the result must change it).
            compute: returns the arrays (numeric or string; no objects).

        Returns:
            The arrays by name.

        Raises:
            TypeError: ``compute`` returned an object array (it could not be read back safely).
        """
        self.ensure()
        path = self.cache / f"{stage}-{key}-v{LAYOUT_VERSION}.npz"
        if self.verify(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                self.discard(path, f"it cannot be read as arrays ({e})")
        out = compute()
        bad = [k for k, v in out.items() if np.asarray(v).dtype == object]
        if bad:
            raise TypeError(f"cache {stage}: arrays {bad} hold Python objects; convert them (e.g. labels to str) before caching")
        with self.atomic(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **out)
        return out


# --------------------------------------------------------------------------- keys of inputs


def text_hash(t: str) -> bytes:
    """The SHA-1 digest of a text (UTF-8; lone surrogates kept): the content key of one text in
    every cache of the work directory."""
    return hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest()


def _iter_column(records: pl.DataFrame, name: str, chunk: int = 65536):
    """The values of one column, converted to Python 65,536 at a time (a million-row list of
    strings is a large transient)."""
    col = records[name]
    for s in range(0, col.len(), chunk):
        yield from col.slice(s, chunk).to_list()


def _iter_conversations(records: pl.DataFrame, chunk: int = 65536):
    """Each record's whole conversation (every turn's role and text) as one string, for cache
    keys of stages that read more than one turn."""
    e = pl.element()
    turn = e.struct.field("role") + "\x1f" + e.struct.field("content")
    for s in range(0, records.height, chunk):
        part = records.slice(s, chunk).select(pl.col("messages").list.eval(turn).list.join("\x1e"))
        yield from part.to_series().to_list()


def _hash_strings(parts: Iterable[str], prefix: str) -> str:
    h = hashlib.sha256(prefix.encode())
    for s in parts:
        h.update(text_hash(s))
    return h.hexdigest()[:32]


def _cache_path(workdir: WorkDir | str | os.PathLike, stage: str, key: str) -> Path:
    """Where :meth:`WorkDir.cached_arrays` keeps ``stage``'s arrays for ``key``."""
    return WorkDir.of(workdir).cache / f"{stage}-{key}-v{LAYOUT_VERSION}.npz"


def _cached_arrays(workdir: WorkDir | str | os.PathLike, stage: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, np.ndarray]:
    """:meth:`WorkDir.cached_arrays` of ``WorkDir.of(workdir)`` (for callers holding a path)."""
    return WorkDir.of(workdir).cached_arrays(stage, key, compute)
