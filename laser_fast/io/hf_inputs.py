"""Hugging Face ``datasets`` as inputs: a ``Dataset``, an ``IterableDataset`` (streamed in
batches), a ``DatasetDict`` with a split, a ``save_to_disk`` folder, or a hub name (``org/name``
or ``hf://datasets/org/name``, online only). Each is read with the same normalisation and errors
as a Parquet file; rows are located as ``<name>:row N``.

Example:
    >>> import datasets, laser_fast  # doctest: +SKIP
    >>> ds = datasets.load_dataset("tatsu-lab/alpaca", split="train")  # doctest: +SKIP
    >>> laser_fast.select(ds, budget=1000)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from laser_fast.errors import InputError

#: Rows read per batch from a streamed dataset.
STREAM_BATCH = 8192
_FILE_SUFFIXES = (".jsonl", ".json", ".gz", ".parquet", ".csv", ".tsv", ".txt")
_HUB_NAME = re.compile(r"^(?:hf://datasets/)?([A-Za-z0-9][\w.-]*/[\w.-]+)$")


def is_hf_dataset(data: Any) -> bool:
    """Whether ``data`` is a ``datasets`` object (checked by module, without importing datasets)."""
    return type(data).__module__.split(".")[0] == "datasets"


def _disk_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json", "dataset_info.json"))


def hf_source(spec: str, split: str | None) -> tuple[Any, str] | None:
    """The dataset ``spec`` names when it is a ``save_to_disk`` folder or a hub name that is no
    local path (``(dataset, name)``), else None (a file: read as one).

    Raises:
        InputError: ``datasets`` is not installed, or a hub name is given offline or cannot be loaded.
    """
    p = Path(spec).expanduser()
    if "://" not in spec and _disk_folder(p):
        ds = _datasets(spec).load_from_disk(str(p))
        return ds, p.name
    m = _HUB_NAME.match(spec)
    if m is None or ("://" not in spec and (p.exists() or spec.startswith((".", "/", "~")) or spec.lower().endswith(_FILE_SUFFIXES))):
        return None  # a file (a missing one is reported as such by the file reader)
    name = m.group(1)
    lib = _datasets(spec)
    from laser_fast.runtime.models import hub_offline

    if hub_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise InputError(spec, "is neither a local file nor a folder, and hub datasets need the network (HF_HUB_OFFLINE is set)",
                         "Download it where the hub is reachable (datasets.load_dataset(NAME).save_to_disk(DIR)) and pass DIR")
    try:
        ds = lib.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - the hub's many errors: one clear message
        raise InputError(spec, f"cannot load the hub dataset {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                         "Check the name, the split (--split) and the network, or pass a local file") from None
    return ds, name


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise InputError(what, "reading Hugging Face datasets needs the datasets package",
                         "pip install datasets (or: pip install 'laser_fast[hf]')") from None
    return datasets


def pick_split(ds: Any, split: str | None, name: str) -> Any:
    """The split of a ``DatasetDict`` / ``IterableDatasetDict`` (``split``, or its only one)."""
    if type(ds).__name__ not in ("DatasetDict", "IterableDatasetDict"):
        if split is not None and type(ds).__name__ in ("Dataset", "IterableDataset") and getattr(ds, "split", None) not in (None, split):
            raise InputError(name, f"is the split {ds.split!r}, not {split!r}", "Drop --split or pass the right dataset")
        return ds
    splits = list(ds.keys())
    if split is None:
        if len(splits) == 1:
            return ds[splits[0]]
        raise InputError(name, f"holds the splits {', '.join(splits)}: choose one", "Pass --split NAME (split='NAME' in Python)")
    if split not in ds:
        raise InputError(name, f"has no split {split!r} (it has {', '.join(splits)})", "Pass one of those with --split")
    return ds[split]


def hf_batches(ds: Any, name: str):
    """``(arrow table, first row number)`` batches of a ``Dataset`` or ``IterableDataset`` in order."""
    kind = type(ds).__name__
    if kind == "Dataset":
        n = len(ds)
        arrow = ds.with_format("arrow")
        step = 65536
        for s in range(0, n, step):
            yield arrow[s : s + step], s  # selections, shuffles and filters of the dataset respected
        return
    if kind == "IterableDataset":
        row = 0
        for batch in ds.iter(batch_size=STREAM_BATCH):
            t = pa.Table.from_pydict(batch) if isinstance(batch, dict) else batch
            yield t, row
            row += t.num_rows
        return
    raise InputError(name, f"expected a datasets Dataset, IterableDataset or DatasetDict, got {kind}")


def hf_facts(ds: Any, name: str, rows: int, skipped: int, split: str | None = None) -> dict:
    """The manifest's input entry of a dataset."""
    info = {"path": name, "kind": type(ds).__name__, "rows": rows, "skipped": skipped}
    fp = getattr(ds, "_fingerprint", None)
    if fp:
        info["fingerprint"] = str(fp)
    split = split or getattr(ds, "split", None)
    if split is not None:
        info["split"] = str(split)
    return info
