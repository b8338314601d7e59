"""Shared storage for the work directory: a URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``,
or any fsspec protocol such as ``memory://`` or ``hf://``) behind one small interface.

A work directory given as a URI (``--workdir s3://bucket/laser``) keeps a local scratch copy on each
machine (``$LASER_FAST_SCRATCH/<hash of the URI>``, default ``~/.cache/laser_fast/scratch``): entries
are read from there (memory-mapped, checked against their integrity record) and every entry a run
writes is uploaded beside the same relative path under the URI, then its integrity record
(``<file>.meta.json``). An entry exists on the shared storage once its record does, so a reader
never takes a half-uploaded file. Every name is unique or content-keyed, and an object PUT is
atomic, so runs on many machines (a Ray cluster's workers and a local run alike) add to the same
caches without locks; two runs computing the same entry upload the same bytes.

Filesystems come from ``pyarrow.fs.FileSystem.from_uri`` (native S3, GCS, HDFS, local) and, for
any other protocol, from fsspec (``pip install s3fs gcsfs`` is not needed for s3/gs).
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
from pathlib import Path

from laser_fast.errors import LaserError

logger = logging.getLogger(__name__)

#: Bytes copied per read while uploading or downloading.
COPY_BLOCK = 8 << 20


def is_uri(x) -> bool:
    """Whether ``x`` names shared storage by URI (``scheme://...``) rather than a local folder."""
    return isinstance(x, str) and "://" in x and not x.startswith("/")


def scratch_root() -> Path:
    """Where URI work directories keep their local copies: ``$LASER_FAST_SCRATCH`` or
    ``~/.cache/laser_fast/scratch``."""
    return Path(os.environ.get("LASER_FAST_SCRATCH") or Path.home() / ".cache" / "laser_fast" / "scratch").expanduser()


def scratch_for(uri: str) -> Path:
    """The local copy of the work directory at ``uri`` on this machine."""
    return scratch_root() / hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]


class RemoteStore:
    """Files under one URI, addressed by paths relative to it (``scores/x/part-1.parquet``).

    The filesystem is opened on first use and not pickled (a Ray worker opens its own).

    Args:
        uri: the folder's URI.

    Raises:
        LaserError: (on first use) no filesystem serves the URI's scheme.
    """

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self._fs = None
        self._base = ""

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"])

    def __repr__(self) -> str:
        return f"RemoteStore({self.uri!r})"

    @property
    def fs(self):
        if self._fs is None:
            import pyarrow.fs as pafs

            try:
                self._fs, self._base = pafs.FileSystem.from_uri(self.uri)
            except Exception as first:  # noqa: BLE001 - pyarrow names unknown schemes with ArrowInvalid; try fsspec
                try:
                    import fsspec
                except ImportError:
                    raise LaserError(f"work directory {self.uri}: pyarrow cannot open it ({first}); for other protocols "
                                     "pip install fsspec (and the protocol's package, e.g. s3fs, gcsfs)") from first
                try:
                    f, base = fsspec.core.url_to_fs(self.uri)
                except Exception as e:
                    raise LaserError(f"work directory {self.uri}: no filesystem serves it (pyarrow: {first}; fsspec: {e}); "
                                     "install the protocol's package (e.g. pip install s3fs) or pass a local folder") from e
                self._fs, self._base = pafs.PyFileSystem(pafs.FSSpecHandler(f)), base
            self._base = self._base.rstrip("/")
        return self._fs

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel``."""
        self.fs  # noqa: B018 - opens the filesystem, which sets the base path
        return f"{self._base}/{rel}" if rel else self._base

    def _error(self, what: str, rel: str, e: BaseException) -> LaserError:
        return LaserError(f"work directory {self.uri}: cannot {what} {rel} ({e}); check the URI, its credentials "
                          "and that the storage is reachable from every machine of the run")

    # ---- reads --------------------------------------------------------------------------------

    def listdir(self, rel: str, pattern: str = "*") -> dict[str, int]:
        """``{name: size}`` of the files directly in folder ``rel`` whose names match ``pattern``
        (an absent folder is empty)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        except OSError as e:
            raise self._error("list", rel or ".", e) from e
        out = {}
        for i in infos:
            name = i.path.rstrip("/").rsplit("/", 1)[-1]
            if i.type == pafs.FileType.File and fnmatch.fnmatchcase(name, pattern):
                out[name] = int(i.size) if i.size is not None else -1
        return out

    def size(self, rel: str) -> int | None:
        """The file's size, None when it is absent."""
        import pyarrow.fs as pafs

        try:
            info = self.fs.get_file_info(self.path(rel))
        except OSError as e:
            raise self._error("look up", rel, e) from e
        return int(info.size) if info.type == pafs.FileType.File else None

    def download(self, rel: str, local: Path) -> bool:
        """Copy ``rel`` to ``local`` (unique temporary name, then rename); False when it is absent."""
        from laser_fast.runtime.workdir import temp_path

        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(local)
        try:
            try:
                src = self.fs.open_input_stream(self.path(rel))
            except FileNotFoundError:
                return False
            with src, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, COPY_BLOCK)
            os.replace(tmp, local)
            return True
        except FileNotFoundError:
            return False
        except OSError as e:
            raise self._error("download", rel, e) from e
        finally:
            tmp.unlink(missing_ok=True)

    # ---- writes -------------------------------------------------------------------------------

    def upload(self, local: Path, rel: str) -> None:
        """Copy ``local`` to ``rel`` so that it appears whole or not at all: one object PUT on an
        object store, a temporary name and a rename on a filesystem with folders."""
        from laser_fast.runtime.workdir import unique_suffix

        fs, dest = self.fs, self.path(rel)
        direct = fs.type_name not in ("local", "hdfs")
        try:
            if not direct:
                fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            target = dest if direct else f"{dest.rsplit('/', 1)[0]}/.{dest.rsplit('/', 1)[1]}.tmp-{unique_suffix()}"
            with open(local, "rb") as f, fs.open_output_stream(target) as out:
                shutil.copyfileobj(f, out, COPY_BLOCK)
            if not direct:
                fs.move(target, dest)
        except OSError as e:
            raise self._error("upload", rel, e) from e

    def delete(self, rel: str) -> None:
        """Remove ``rel`` (absent is fine)."""
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error("remove", rel, e) from e
