"""Where the work of a run executes: in this process (the ``local`` engine, the default) or on a
Ray cluster (``--engine ray``, :mod:`laser_fast.runtime.ray_engine`).

The stages plan their work on the driver and cut it into **units**: a chunk of records to score,
a window of texts to classify or embed. A unit is the same in both engines (the same records in
the same order), so a unit computed on a Ray worker gives bit for bit what the local loop gives,
and the driver assembles units in plan order: the same inputs and seed give the same selection
with either engine. Caches stay the single source of truth: workers write score and embedding
shards to the shared work directory, and a rerun (local or Ray) finds them.

A stage asks :func:`current_executor` for a remote executor; None means the stage runs its own
loop in this process. :func:`use_engine` sets the executor for the duration of a run.

Example:
    >>> from laser_fast.runtime.engine import current_executor
    >>> current_executor() is None  # the local engine: stages run their own loops
    True
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from laser_fast.config import ENGINES  # the engines a run can use, defined with the options
from laser_fast.runtime.stage import Resources

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

logger = logging.getLogger(__name__)


class UnitTask:
    """One kind of work unit, sent to workers by value (it must pickle).

    Subclasses set :attr:`label` (the manifest key, e.g. ``"score:lite_quality"``) and
    :attr:`resources`, and implement :meth:`setup` (once per worker: load the model) and
    :meth:`run` (one unit). :attr:`uses_gpu` says whether a worker asks the cluster for GPUs.
    """

    label: str = "unit"
    resources: Resources = Resources()
    uses_gpu: bool = False

    def memory_mb(self) -> int:
        """Host memory one CPU worker needs in MB, which the Ray engine reserves: by default what
        :attr:`resources` declares. Asked on the driver only where CPU actors are planned, so a
        task may work it out then (a model scorer reads its checkpoint's headers), through
        :meth:`estimated_once`."""
        return int(self.resources.memory_mb)

    def estimated_once(self, estimate: Callable[[], int | None]) -> int:
        """For a :meth:`memory_mb` worked out from a model: ``estimate()`` on the first call, kept
        for the next; 0 (nothing reserved) when it is unknown or fails
        (:func:`~laser_fast.runtime.model_memory.reserved_mb`)."""
        if self.__dict__.get("_memory") is None:
            from laser_fast.runtime.model_memory import reserved_mb

            self._memory = reserved_mb(self.label, estimate)
        return self._memory

    def setup(self) -> None:
        """Load what the units need (called once per worker, before its first unit)."""

    def run(self, unit: pl.DataFrame) -> dict[str, np.ndarray]:
        """The outputs of one unit: arrays with one row per unit row (2-D arrays allowed)."""
        raise NotImplementedError  # pragma: no cover


class Executor(Protocol):
    """Runs units of work somewhere else than this process."""

    name: str

    def map_units(self, task: UnitTask, units: Sequence[pl.DataFrame]) -> list[dict[str, np.ndarray]]:
        """Each unit's outputs, in the order of ``units``."""
        ...  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the engine: name, cluster, per-task stats."""
        ...  # pragma: no cover

    def call_each(self, label: str, fn: str, calls: Sequence[dict], resources: Resources) -> list[Any]:
        """``fn`` (``"module:function"``) once per keyword dict of ``calls`` on the workers, each
        call one task; the results in the order of ``calls``. An exception a call raises is
        raised here as it was raised there."""
        ...  # pragma: no cover


_CURRENT: ContextVar[Executor | None] = ContextVar("laser_fast_executor", default=None)


def run_named(fn: str, kwargs: dict) -> Any:
    """Run ``fn`` (``"module:function"``) with ``kwargs``: the body of one :meth:`Executor.call_each`
    task, and a way to mix functions in one round (``call_each(..., "laser_fast.runtime.engine:run_named",
    [{"fn": ..., "kwargs": ...}, ...])``)."""
    import importlib

    mod, _, attr = fn.partition(":")
    return getattr(importlib.import_module(mod), attr)(**kwargs)


def current_executor() -> Executor | None:
    """The executor of the running run (None: the local engine)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use_engine(engine: str | None, *, address: str | None = None) -> Iterator[Executor | None]:
    """Run the body with ``engine``'s executor (``"local"``/None: none, stages run here).

    Raises:
        ImportError: ``ray`` is asked for and Ray Data is not installed (names the pip command).
    """
    if engine in (None, "local"):
        yield None
        return
    if engine != "ray":  # validated in SelectOptions; a direct caller gets the same message
        from laser_fast.errors import ConfigError

        raise ConfigError(f"unknown engine '{engine}': use one of {', '.join(ENGINES)}")
    from laser_fast.runtime.ray_engine import RayExecutor

    ex = RayExecutor(address)
    token = _CURRENT.set(ex)
    try:
        yield ex
    finally:
        _CURRENT.reset(token)


def check_engine_device(ex: Executor | None, device: str | None) -> None:
    """With a remote engine, an explicit CUDA device needs GPUs where the models run (the driver
    may have none: :func:`~laser_fast.runtime.devices.check_device` left that to here).

    Raises:
        ConfigError: the engine's workers have no GPU; names what to use instead.
    """
    worker = getattr(ex, "worker_device", None)
    if worker and str(device or "").startswith("cuda") and not str(worker).startswith("cuda"):
        from laser_fast.errors import ConfigError

        raise ConfigError(f"--device {device}: the {getattr(ex, 'name', 'engine')} cluster has no GPU; use --device cpu or auto, "
                          "add nodes with GPUs, or, where an autoscaler adds them when asked, set LASER_FAST_RAY_GPUS to how many")


def describe_engine(ex: Executor | None) -> dict[str, Any]:
    """The manifest's ``engine`` entry."""
    return {"name": "local"} if ex is None else ex.describe()


def concat_units(parts: Sequence[dict[str, np.ndarray]], key: str) -> np.ndarray:
    """One output column over all units, in unit order."""
    return np.concatenate([np.asarray(p[key]) for p in parts]) if parts else np.zeros(0)


#: Row-wise CPU stages (language, token counts) go to the engine's workers from this many records
#: on (``$LASER_FAST_RAY_MIN_ROWS``); below, they take well under a second here, less than
#: starting workers costs.
REMOTE_MIN_ROWS = 50_000
#: Records per unit of a row-wise CPU stage.
ROW_UNIT = 20_000


class RowTask(UnitTask):
    """A row-wise function over units of records on an engine's workers; its result per row does
    not depend on the other rows, so any split gives the local result.

    Args:
        label: manifest key.
        fn: ``"module:function"`` taking ``(records, **kwargs)`` and returning row-aligned arrays.
        kwargs: picklable keyword arguments.
        resources: what one worker needs.
    """

    def __init__(self, label: str, fn: str, kwargs: dict | None = None, resources: Resources | None = None):
        self.label, self.fn, self.kwargs, self.resources = label, fn, dict(kwargs or {}), resources or Resources()

    def setup(self) -> None:
        import importlib

        mod, _, attr = self.fn.partition(":")
        self._fn = getattr(importlib.import_module(mod), attr)

    def run(self, unit: pl.DataFrame) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._fn(unit, **self.kwargs).items()}


def remote_rows(n: int) -> Executor | None:
    """The executor to run a row-wise CPU stage over ``n`` records on (None: run it here)."""
    import os

    ex = current_executor()
    if ex is None or n < int(os.environ.get("LASER_FAST_RAY_MIN_ROWS") or REMOTE_MIN_ROWS):
        return None
    return ex


def map_rows(ex: Executor, task: RowTask, records: pl.DataFrame, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``task`` over ``records`` (only ``columns``, when given) in units of :data:`ROW_UNIT` rows;
    the outputs in row order."""
    import os

    frame = records.select(list(columns)) if columns else records
    unit = max(1, int(os.environ.get("LASER_FAST_RAY_ROW_UNIT") or ROW_UNIT))
    parts = ex.map_units(task, [frame.slice(i, unit) for i in range(0, frame.height, unit)])
    return {k: concat_units(parts, k) for k in (parts[0] if parts else {})}


#: the prefix of the columns that carry a unit's figures beside its outputs (:func:`stat_columns`)
STAT_PREFIX = "_stat:"


def stat_columns(n: int, stats: Mapping[str, float]) -> dict[str, np.ndarray]:
    """A unit's figures (counts, seconds of work) as columns of its ``n`` rows: each value in the
    first row, zeros below, so :func:`summed_stats` adds them up over the units on the driver."""
    out = {}
    for k, v in stats.items():
        col = out[STAT_PREFIX + k] = np.zeros(n)
        col[:1] = float(v)
    return out


def summed_stats(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """The figures of :func:`stat_columns`, summed over the units' results."""
    tot: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            if k.startswith(STAT_PREFIX):
                # nansum: a figure a unit did not name came back as nulls (NaN) from the engine
                tot[k[len(STAT_PREFIX):]] = tot.get(k[len(STAT_PREFIX):], 0.0) + float(np.nansum(np.asarray(v, dtype=np.float64)))
    return tot


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread for the body. OpenBLAS splits a matrix product's rows between
    its threads, and a row's last bits depend on where the split falls; an engine's worker runs
    one thread, the local engine all cores. Used around the small numpy heads (onepass, lite
    quality), so both engines give the same bits."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
