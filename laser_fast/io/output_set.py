"""Output folders written as one set, and the checks made before a run starts.

A run's output files (``selected.jsonl``, ``decisions.parquet``, ``report.html``,
``manifest.json``; or ``scores.parquet`` and ``scores_manifest.json``) are written into a fresh
temporary folder inside the output folder and moved into place only once all of them are
complete, the manifest last (see :class:`OutputSet` for the exact guarantee).
:func:`check_output_dir` runs before any work, so a folder that cannot take the outputs, or
an input that the outputs would overwrite, is reported in seconds rather than after the run.

Temporary names start with :data:`TMP_PREFIX` and carry the host and process id, so a later run
removes those left behind by a process that died (``kill -9``, power loss) on the same host.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from laser_fast.errors import LaserError

logger = logging.getLogger(__name__)

#: files ``laser-fast select`` (:func:`laser_fast.io.output.write_outputs`) writes or replaces
SELECT_OUTPUT_NAMES = ("selected.jsonl", "selected.parquet", "train.jsonl", "decisions.parquet", "report.html", "manifest.json")
#: files ``laser-fast score`` writes or replaces
SCORE_OUTPUT_NAMES = ("scores.parquet", "scores_manifest.json")
#: every output name of the commands that write an output folder
OUTPUT_NAMES = SELECT_OUTPUT_NAMES + SCORE_OUTPUT_NAMES
#: start of every temporary file or folder name laser_fast creates beside its outputs
TMP_PREFIX = ".laser-fast-tmp-"

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname() or "host")[:64]
_TMP_RE = re.compile(r"^" + re.escape(TMP_PREFIX) + r"(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]+)(?:\..*)?$")


def temp_name(suffix: str = "") -> str:
    """A unique temporary name: :data:`TMP_PREFIX`, host, process id, random hex, ``suffix``.

    Args:
        suffix: appended after a dot when given (e.g. the name of the file it will become).

    Returns:
        The name (no folder).
    """
    name = f"{TMP_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(6)}"
    return f"{name}.{suffix}" if suffix else name


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def clean_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files and folders (:data:`TMP_PREFIX`) that a process which is no longer
    alive left in ``folder``. Only names made on this host are considered (a folder shared over
    the network may hold those of live processes elsewhere); nothing else is touched.

    Args:
        folder: the folder to tidy; a missing or unreadable folder is left alone.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or m["host"] != _HOST or _pid_alive(int(m["pid"])):
            continue
        p = Path(e.path)
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except OSError as exc:
            logger.warning("could not remove the stale temporary %s: %s", p, exc)
            continue
        logger.info("removed %s, left by process %s that is no longer running", p, m["pid"])
        removed.append(p)
    return removed


def fsync_path(path: str | Path, *, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk.

    Args:
        path: the file or folder.
        directory: ``path`` is a folder; a file system that cannot sync folders is not an error.

    Raises:
        OSError: a file could not be synced (its data may not be on disk).
    """
    if directory and os.name != "posix":
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not directory or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _os_reason(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "the disk is full (or the disk quota is used up)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (the folder is not writable for this user)"
    if e.errno == errno.EROFS:
        return "the file system is read-only"
    return e.strerror or str(e)


def _probe_writable(out: Path, option: str = "--output-dir") -> None:
    """Create, fill (one block, synced) and remove a small file in ``out``."""
    probe = out / temp_name("probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        try:
            os.unlink(probe)
        except OSError:
            pass
        raise LaserError(f"{out}: cannot write to the output folder: {_os_reason(e)}; "
                         f"free some space, fix its permissions or choose another output folder ({option})") from e
    os.unlink(probe)


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_output_dir(output_dir: str | Path, inputs: Iterable[str | os.PathLike | None] = (), *,
                     names: Iterable[str] = OUTPUT_NAMES, option: str = "--output-dir") -> Path:
    """Check, before any work, that ``output_dir`` can take a run's outputs.

    Verifies that the folder exists or can be created (a missing folder is created for the test
    and removed again, so the check leaves nothing behind), that it is not a file, that it is
    writable (a small probe file is created, synced and removed: this also catches a full disk
    or a read-only file system), that no output name in it is a folder, and that no input is
    one of the files the run writes or replaces there (paths are resolved, symlinks followed,
    and existing files compared with :func:`os.path.samefile`).

    Args:
        output_dir: the output folder.
        inputs: paths the run reads (inputs, score files); ``None`` entries (in-memory frames)
            are skipped.
        names: the file names the run writes or replaces in ``output_dir``.
        option: the command-line option the messages tell the user to change.

    Returns:
        ``output_dir`` as a :class:`~pathlib.Path`.

    Raises:
        LaserError: the folder is a file, cannot be created or written, an output name is a
            folder, or an input would be overwritten; the message names the path and what to do.
    """
    out = Path(output_dir)
    names = tuple(names)
    if out.exists() and not out.is_dir():
        raise LaserError(f"{out}: the output folder is a file, not a folder; give {option} a new or existing folder")
    if out.is_dir():
        _probe_writable(out, option)
    else:
        missing, p = [], out
        while not os.path.lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            raise LaserError(f"{out}: cannot create the output folder: {p} is not a folder; give {option} a path under an existing folder")
        created: list[Path] = []
        try:
            for m in reversed(missing):
                os.mkdir(m)
                created.append(m)
            _probe_writable(out, option)
        except OSError as e:
            raise LaserError(f"{out}: cannot create the output folder: {_os_reason(e)}; choose a folder you can write to ({option})") from e
        finally:
            for m in reversed(created):
                try:
                    os.rmdir(m)
                except OSError:
                    pass
    for n in names:
        t = out / n
        if t.is_dir():
            raise LaserError(f"{t}: is a folder where the run writes the file {n}; move it out of {out} or choose another output folder ({option})")
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp)
        for n in names:
            t = out / n
            if _same_file(ip, t):
                raise LaserError(f"{inp}: this input is {t}, a file the run writes in its output folder, so it would be overwritten; "
                                 f"move the input out of {out} or choose another output folder ({option})")
    return out


class OutputSet:
    """Write a folder's output files as one set: all or (as far as a reader of the manifest can
    tell) nothing.

    Use ``with OutputSet(out, names, manifest) as s:`` and write each file at ``s.path(name)``
    (a path in the temporary folder ``<out>/.laser-fast-tmp-<host>-<pid>-<hex>/``). When the
    block ends without an exception the set is committed:

    1. every new file is synced to disk;
    2. the previous run's manifest is removed from ``out`` (the folder then holds no manifest);
    3. files of ``names`` that the new set does not produce are removed (e.g. ``selected.parquet``
       when the new set writes ``selected.jsonl``, or ``report.html`` without a report);
    4. the new files are moved in with :func:`os.replace`, the folder synced;
    5. the new manifest is moved in last, the folder synced, the temporary folder removed.

    Guarantee (``kill -9``, a crash or a full disk at any instant): ``out`` holds either the
    previous complete set with its manifest, or the new complete set with its manifest, or no
    manifest at all (an incomplete state; run again). A reader that trusts only the manifest
    therefore never sees a mix of two runs. Files outside ``names`` are never touched. On an
    exception the temporary folder is removed (and the previous set is unchanged unless the
    failure came during steps 2-5); temporary folders of dead processes are removed by the next
    run writing into ``out``. Two processes committing into the same folder at once are
    serialised with a lock on the folder where the file system supports it.

    Args:
        output_dir: the output folder (created when missing).
        names: every file name this kind of set may hold (the family whose stale members are
            removed); the manifest among them.
        manifest: the manifest's file name; it must be written in every set.

    Raises:
        LaserError: on leaving the block, when writing or moving the files failed with an
            :class:`OSError` (full disk, permissions); the message says which folder and what state
            it was left in.
    """

    def __init__(self, output_dir: str | Path, names: Iterable[str], manifest: str):
        self.out = Path(output_dir)
        self.names = tuple(names)
        self.manifest = manifest
        if manifest not in self.names:
            raise ValueError(f"manifest {manifest!r} is not one of {self.names}")
        self.tmp: Path | None = None
        self.written: list[str] = []
        self._phase = "before"  # "swapping" once the old manifest is gone, "done" once the new one is in

    def __enter__(self) -> OutputSet:  # noqa: PYI034 (typing.Self needs Python 3.11)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            clean_stale_temps(self.out)
            self.tmp = self.out / temp_name()
            os.mkdir(self.tmp)  # mode 0o777 & ~umask; files inside are made with the usual mode too
        except OSError as e:
            raise LaserError(f"{self.out}: cannot write to the output folder: {_os_reason(e)}; "
                             "free some space, fix its permissions or choose another output folder (--output-dir)") from e
        return self

    def path(self, name: str) -> Path:
        """Where to write the output file ``name`` (inside the temporary folder).

        Args:
            name: one of the set's names.

        Returns:
            The temporary path.

        Raises:
            ValueError: ``name`` is not one of the set's names.
        """
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this output set's names {self.names}")
        if name not in self.written:
            self.written.append(name)
        assert self.tmp is not None, "use OutputSet in a with block"
        return self.tmp / name

    def _commit(self) -> None:
        assert self.tmp is not None
        if self.manifest not in self.written or not (self.tmp / self.manifest).is_file():
            raise RuntimeError(f"output set in {self.out}: the manifest {self.manifest} was not written")
        files = [n for n in self.written if n != self.manifest]
        for n in files + [self.manifest]:
            fsync_path(self.tmp / n)
        lock = _lock_folder(self.out)
        try:
            old = self.out / self.manifest
            if os.path.lexists(old):
                os.unlink(old)
                self._phase = "swapping"
                fsync_path(self.out, directory=True)  # no manifest before anything of the new set appears
            self._phase = "swapping"
            for n in self.names:
                if n not in self.written and os.path.lexists(self.out / n):
                    os.unlink(self.out / n)
            for n in files:
                os.replace(self.tmp / n, self.out / n)
            fsync_path(self.out, directory=True)
            os.replace(self.tmp / self.manifest, self.out / self.manifest)
            self._phase = "done"
            fsync_path(self.out, directory=True)
        finally:
            _unlock_folder(lock)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self._commit()
            except OSError as e:
                self._discard()
                state = {"before": "the previous outputs there, if any, are unchanged",
                         "swapping": f"the folder now holds no {self.manifest} (its outputs are incomplete)",
                         "done": "the new outputs are in place but may not all be on disk"}[self._phase]
                raise LaserError(f"{self.out}: moving the outputs into place failed ({_os_reason(e)}: {e.filename}); "
                                 f"{state}; free some space or fix the folder's permissions and run again") from e
            except BaseException:
                self._discard()
                raise
            return False
        self._discard()
        if isinstance(exc, OSError):
            raise LaserError(f"{self.out}: writing the outputs failed ({_os_reason(exc)}: {exc.filename}); the previous outputs "
                             "there, if any, are unchanged; free some space or choose another output folder (--output-dir) and run again") from exc
        return False

    def _discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _lock_folder(folder: Path):
    """An exclusive ``flock`` on the folder (None where unsupported)."""
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # e.g. some network file systems
        os.close(fd)
        return None
    return fd


def _unlock_folder(fd) -> None:
    if fd is not None:
        os.close(fd)  # closing releases the lock
