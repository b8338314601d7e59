"""The Ray engine (``--engine ray``): the units of work of a run on Ray Data actors.

Each :class:`~laser_fast.runtime.engine.UnitTask` becomes one ``Dataset.map_batches`` over the
task's units with a class UDF (:class:`_UnitWorker`: one model load per actor, then unit after
unit). Every unit travels whole inside one block, and every block is one batch: blocks are padded
with rows of no unit (``_unit`` -1, skipped by the worker) to one length, which is the batch size
(Ray wants a batch size where actors hold GPUs), so a worker computes exactly what the local loop
computes for it. Actors ask for the task's declared CPUs and GPUs
(:class:`~laser_fast.runtime.stage.Resources`; GPUs only when the cluster has some and the task
runs a model on one; fractions share a GPU). A CPU actor also reserves the task's ``memory_mb``
(Ray's ``memory`` resource: for a model scorer its estimate from the checkpoint,
:mod:`~laser_fast.runtime.model_memory`), so a node runs only as many copies as its memory holds;
GPU actors keep their weights on the GPU and reserve none. Ray
Data restarts a dead actor and retries its batch; a unit's cache shard is written atomically, so a
retry never leaves half a unit behind. A worker's own error (a LaserError: a model that does not
load, a bad input) is raised again on the driver as it was raised there.
Results come back tagged with unit and position and are put in plan order on the driver.

Needs ``ray[data]`` (``pip install 'laser_fast[ray]'``); nothing here is imported by the local
engine.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import socket
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from laser_fast.runtime.engine import UnitTask, run_named
from laser_fast.runtime.stage import Resources

logger = logging.getLogger(__name__)

#: Test hook: ``LABEL=PATH`` makes the first worker of task LABEL exit the process (``os._exit``)
#: on its first batch, once (PATH is created as the marker), to check that Ray retries the unit.
FAULT_ENV = "LASER_FAST_RAY_FAULT"
#: Blocks per actor: more than one, so a slow unit does not hold back the other actors.
BLOCKS_PER_ACTOR = 4
_META = ("_unit", "_pos", "_unit_rows")


def require_ray():
    """``ray`` with Ray Data, or an ImportError that names the install command."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise ImportError("--engine ray needs Ray Data, which is not installed here: pip install 'laser_fast[ray]' "
                          "(or pip install 'ray[data]>=2.40') on the driver and on every node of the cluster") from e
    return ray


def _whole_number(given: Any, env: str, least: int, what: str, hint: str) -> int | None:
    """A count setting: ``given``, else ``$env`` (None when neither is set), a whole number of at
    least ``least``.

    Raises:
        ValueError: anything else (text, a fraction, a bool), naming ``what`` and ``env``.
    """
    raw = given if given is not None else os.environ.get(env, "").strip() or None
    if raw is None:
        return None
    n = None
    if not isinstance(raw, bool) and not (isinstance(raw, float) and not raw.is_integer()):
        with contextlib.suppress(TypeError, ValueError):
            n = int(raw)
    if n is None or n < least:
        raise ValueError(f"{what}, ${env}) must be a whole number of at least {least}, got {raw!r}: {hint}")
    return n


def _to_arrow(frame):
    import polars as pl

    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())


def _arrow_column(v: np.ndarray):
    import pyarrow as pa

    a = np.asarray(v)
    if a.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)), a.shape[1])
    if a.dtype == object:
        return pa.array(a.tolist())
    return pa.array(a)


def _numpy_column(col) -> np.ndarray:
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_pylist(), dtype=object)
    return col.to_numpy(zero_copy_only=False)


def _padded(block, rows: int):
    """``block`` with rows of no unit (``_unit`` -1, every other column null) up to ``rows`` rows."""
    import pyarrow as pa

    extra = rows - block.num_rows
    if extra <= 0:
        return block
    pad = {f.name: pa.nulls(extra, type=f.type) for f in block.schema}
    pad["_unit"] = pa.array(np.full(extra, -1, dtype=np.int64))
    pad["_pos"] = pad["_unit_rows"] = pa.array(np.zeros(extra, dtype=np.int64))
    return pa.concat_tables([block, pa.table(pad, schema=block.schema)])


class _UnitWorker:
    """The class UDF: one per actor; sets the task up once and runs every unit of each batch."""

    def __init__(self, task: UnitTask, fault: str | None = None, gpu_share: float = 0.0):
        self.task = task
        self.fault = fault
        from laser_fast.runtime.batching import hold_gpu_share

        hold_gpu_share(gpu_share)  # a fraction of a GPU: its batches plan within it, not with all that is free now
        self.ready = False
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _maybe_fail(self) -> None:
        label, _, marker = (self.fault or "").partition("=")
        if label == self.task.label and marker and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(self.worker)
            os._exit(17)

    def __call__(self, batch):
        import pyarrow as pa

        from laser_fast.errors import LaserError

        self._maybe_fail()
        try:
            return self._run(batch)
        except LaserError as e:  # the package's own clear error, raised again on the driver (Ray's wrapper drops it)
            return pa.table({"_unit": pa.array([-1], type=pa.int64()), "_error": pa.array([pickle.dumps(e)], type=pa.binary())})

    def _run(self, batch):
        import polars as pl
        import pyarrow as pa

        if not self.ready:
            self.task.setup()
            self.ready = True
        df = pl.from_arrow(batch).filter(pl.col("_unit") >= 0)  # the padding rows of the block: no unit's
        out = []
        for uid in sorted(set(df["_unit"].to_list())):
            u = df.filter(pl.col("_unit") == uid).sort("_pos")
            want = int(u["_unit_rows"][0])
            if u.height != want:  # a unit split across blocks would not compute what the local loop does
                raise RuntimeError(f"unit {uid} of {self.task.label} arrived with {u.height} of its {want} rows")
            t0 = time.perf_counter()
            res = self.task.run(u.drop(list(_META)))
            dt = time.perf_counter() - t0
            cols: dict[str, Any] = {"_unit": pa.array(np.full(want, uid, dtype=np.int64)), "_pos": pa.array(np.arange(want, dtype=np.int64)),
                                    "_worker": pa.array([self.worker] * want), "_seconds": pa.array(np.full(want, dt / max(want, 1)))}
            for k, v in res.items():
                if len(v) != want:
                    raise RuntimeError(f"{self.task.label} returned {len(v)} values of {k} for a unit of {want} rows")
                cols[k] = _arrow_column(v)
            out.append(pa.table(cols))
        # units may name different figures (one first counted mid-run): missing ones come as nulls, summed as 0
        return pa.concat_tables(out, promote_options="default") if out else pa.table({"_unit": pa.array([], type=pa.int64())})


class RayExecutor:
    """Runs units on Ray Data actors (see the module docstring).

    Args:
        address: the cluster (``"auto"``: the running cluster of this node; ``ray://host:10001``;
            None: ``$RAY_ADDRESS`` or a new local instance). An already initialised Ray in this
            process is used as it is.
        max_actors: at most this many actors per kind of work (None: as many as the cluster's
            CPUs or GPUs hold; ``$LASER_FAST_RAY_MAX_ACTORS`` sets it too), e.g. to leave part of a
            shared cluster free or to measure scaling over 1..N GPUs.
        reserve_memory: CPU actors reserve their task's ``memory_mb`` (default True;
            ``$LASER_FAST_RAY_RESERVE_MEMORY=0`` turns it off, for an estimate that is too high).
        gpus: plan for this many GPUs where the cluster has fewer when the run starts
            (``$LASER_FAST_RAY_GPUS`` sets it too): an autoscaling cluster whose GPU nodes join
            when actors ask for GPUs. The run then plans for CUDA workers (see ``worker_device``)
            and asks for GPU actors that Ray places as the nodes join.
    """

    name = "ray"
    #: the actor cap (None: none); see ``max_actors`` above
    max_actors: int | None = None
    #: whether CPU actors reserve their task's memory; see ``reserve_memory`` above
    reserve_memory: bool = True
    #: the GPUs to plan for at least (None: those the cluster has); see ``gpus`` above
    gpus: int | None = None
    _worker_device: str | None = None

    def __init__(self, address: str | None = None, max_actors: int | None = None, reserve_memory: bool | None = None,
                 gpus: int | None = None):
        ray = require_ray()
        self.address = address
        if reserve_memory is None:
            flag = os.environ.get("LASER_FAST_RAY_RESERVE_MEMORY", "").strip() or "1"
            if flag not in ("0", "1"):
                raise ValueError(f"$LASER_FAST_RAY_RESERVE_MEMORY must be 1 (CPU actors reserve their estimated memory, the "
                                 f"default) or 0 (they reserve none), got {flag!r}")
            reserve_memory = flag == "1"
        self.reserve_memory = bool(reserve_memory)
        self.max_actors = _whole_number(max_actors, "LASER_FAST_RAY_MAX_ACTORS", 1, "the Ray engine's actor cap (max_actors",
                                        "set it to the most actors per kind of work, or leave it unset for no cap")
        self.gpus = _whole_number(gpus, "LASER_FAST_RAY_GPUS", 0, "the GPUs the Ray engine plans for (gpus",
                                  "set it to the GPUs an autoscaler will add, or leave it unset to plan for the cluster's")
        if not ray.is_initialized():
            # no address and no $RAY_ADDRESS: a new instance on this machine, as documented (Ray itself would
            # join whatever cluster /tmp/ray last recorded, even a dead one); 'auto' joins `ray start`'s
            target = address or os.environ.get("RAY_ADDRESS") or "local"
            try:
                ray.init(address=target, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
            except ConnectionError as e:
                from laser_fast.errors import LaserError

                raise LaserError(f"--engine ray: no Ray cluster answers at --ray-address {address or '$RAY_ADDRESS'} ({e}); start one with "
                                 "'ray start --head' on this node (then --ray-address auto), give the head's ray://HOST:10001 address, "
                                 "or leave --ray-address out for a Ray instance on this machine only") from e
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = logger.isEnabledFor(logging.INFO) and os.environ.get("CI") is None
        ctx.verbose_stats_logs = False
        if not logger.isEnabledFor(logging.DEBUG):  # Ray Data's per-dataset INFO lines only with --verbose
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        self.fault = os.environ.get(FAULT_ENV)
        self.tasks: dict[str, dict[str, Any]] = {}
        self._worker_device: str | None = None

    @property
    def worker_device(self) -> str:
        """Where this run's models run: ``cuda`` when the cluster has GPUs, or is to have them
        (``gpus``; the model tasks' actors then hold one, or a share of one), else ``cpu``; read
        once per executor, so every scorer of a run plans for the same
        (:func:`~laser_fast.runtime.devices.planned_device`)."""
        if self._worker_device is None:
            self._worker_device = "cuda" if self._planned_gpus(self.cluster()) > 0 else "cpu"
        return self._worker_device

    def _planned_gpus(self, cluster: dict[str, Any]) -> float:
        """The GPUs this run plans for: the cluster's, or ``gpus`` where more are to join."""
        return max(float(cluster["GPU"]), float(self.gpus or 0))

    def cluster(self) -> dict[str, Any]:
        import ray

        res = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        return {"nodes": len(nodes), "CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0)),
                "memory_gb": round(float(res.get("memory", 0)) / 2**30, 1), "ray_version": ray.__version__}

    def _node_resources(self) -> list[dict[str, float]]:
        """The resources of each live node of the cluster (``CPU``, ``GPU``, ``memory``, ...)."""
        import ray

        return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def plan(self, task: UnitTask, n_units: int) -> tuple[int, float, float, int]:
        """``(actors, num_cpus, num_gpus, memory_mb)`` for ``n_units`` units of ``task`` on this
        cluster. CPU actors reserve the task's memory: on each node as many fit as both its CPUs
        and its Ray memory hold.

        Raises:
            LaserError: no node's Ray memory holds one CPU actor of the task.
        """
        c = self.cluster()
        r = task.resources
        gpus = self._planned_gpus(c)
        use_gpu = task.uses_gpu and gpus > 0 and r.num_gpus > 0
        ngpu = float(r.num_gpus) if use_gpu else 0.0
        ncpu = float(r.num_cpus)
        mem = int(task.memory_mb()) if self.reserve_memory and not use_gpu else 0
        if use_gpu:
            slots = int(gpus // ngpu)
            if slots == 0 and gpus > c["GPU"]:  # GPUs still to join, fewer than one worker holds
                from laser_fast.errors import LaserError

                raise LaserError(f"--engine ray: a worker of {task.label} needs {ngpu:g} GPUs on one node (--judge-gpus) and the run "
                                 f"plans for {gpus:g} (LASER_FAST_RAY_GPUS): raise LASER_FAST_RAY_GPUS or lower --judge-gpus")
            # an actor's GPUs come from one node (Ray would wait for such a node for ever); nodes
            # still to join (``gpus``) cannot be checked
            if ngpu > 1 and gpus <= c["GPU"]:
                per_node = [float(n.get("GPU", 0)) for n in self._node_resources()]
                most = max(per_node, default=0.0)
                if most < ngpu:
                    from laser_fast.errors import LaserError

                    raise LaserError(f"--engine ray: a worker of {task.label} needs {ngpu:g} GPUs on one node (--judge-gpus) and "
                                     f"the cluster's nodes have at most {most:g}: lower --judge-gpus to {max(int(most), 1)} or add a "
                                     "node with that many GPUs")
                slots = sum(int(g // ngpu) for g in per_node)
        elif mem:
            # the nodes that can run a CPU actor at all (a head node may have no CPUs for work)
            nodes = [n for n in self._node_resources() if float(n.get("CPU", 0)) >= ncpu]
            slots = sum(min(int(n.get("CPU", 0) // max(ncpu, 1e-3)), int(n.get("memory", 0) // (mem * 2**20))) for n in nodes)
            if not nodes:  # none yet (an autoscaling cluster): one actor, which Ray places when a node joins
                slots = 1
            elif slots == 0:
                from laser_fast.errors import LaserError

                most = max(float(n.get("memory", 0)) for n in nodes) / 2**20
                raise LaserError(f"--engine ray: a CPU worker of {task.label} needs about {mem:,} MB of memory (its model and one "
                                 f"batch, estimated from the checkpoint), and no node of the cluster offers that much to Ray "
                                 f"(the most a node with CPUs has is {most:,.0f} MB): add a node with more memory or GPUs, run this step with "
                                 "--engine local, or set LASER_FAST_RAY_RESERVE_MEMORY=0 to schedule without reserving memory")
        else:
            slots = int(max(1.0, c["CPU"] // max(ncpu, 1e-3)))
        if self.max_actors is not None:
            slots = min(slots, self.max_actors)
        return max(1, min(slots, n_units)), ncpu, ngpu, mem

    def map_units(self, task: UnitTask, units: Sequence) -> list[dict[str, np.ndarray]]:
        import polars as pl
        import pyarrow as pa
        import ray

        n = len(units)
        if n == 0:
            return []
        t0 = time.perf_counter()
        actors, ncpu, ngpu, mem = self.plan(task, n)
        per_block = max(1, math.ceil(n / (actors * BLOCKS_PER_ACTOR)))
        blocks = []
        for b in range(0, n, per_block):
            tabs = [_to_arrow(u.with_columns(pl.lit(i, dtype=pl.Int64).alias("_unit"), pl.int_range(u.height, dtype=pl.Int64).alias("_pos"),
                                             pl.lit(u.height, dtype=pl.Int64).alias("_unit_rows")))
                    for i, u in enumerate(units[b:b + per_block], start=b)]
            blocks.append(pa.concat_tables(tabs))
        rows = max(1, max(b.num_rows for b in blocks))
        blocks = [_padded(b, rows) for b in blocks]
        remote: dict[str, Any] = {"memory": mem * 2**20} if mem else {}
        if not ngpu and self.worker_device == "cuda":
            # Ray (2.60 on) no longer hides the GPUs from an actor that asks for none: a CPU worker
            # would compute on a GPU it did not reserve (torch or faiss-gpu k-means, a model on auto)
            remote["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
        ds = ray.data.from_arrow(blocks).map_batches(
            _UnitWorker, fn_constructor_kwargs={"task": task, "fault": self.fault, "gpu_share": ngpu}, batch_size=rows,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=ncpu, num_gpus=ngpu, **remote)
        got = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        for t in got:
            if "_error" in t.column_names:
                raise pickle.loads(t["_error"][0].as_py())
        table = pa.concat_tables(got, promote_options="default").sort_by([("_unit", "ascending"), ("_pos", "ascending")]) if got else None
        counts = np.bincount(_numpy_column(table["_unit"]), minlength=n) if table is not None else np.zeros(n, dtype=np.int64)
        expected = np.array([u.height for u in units])
        if not np.array_equal(counts, expected):
            bad = int(np.flatnonzero(counts != expected)[0])
            raise RuntimeError(f"{task.label}: unit {bad} came back with {counts[bad]} of its {expected[bad]} rows")
        cols = [c for c in table.column_names if c not in ("_unit", "_pos", "_worker", "_seconds")]
        arrays = {c: _numpy_column(table[c]) for c in cols}
        bounds = np.concatenate([[0], np.cumsum(expected)])
        parts = [{c: a[bounds[i]:bounds[i + 1]] for c, a in arrays.items()} for i in range(n)]
        self._record(task, table, (actors, ncpu, ngpu, mem), n, time.perf_counter() - t0)
        return parts

    def _record(self, task: UnitTask, table, plan: tuple[int, float, float, int], n_units: int, wall: float) -> None:
        actors, ncpu, ngpu, mem = plan
        workers = _numpy_column(table["_worker"])
        secs = _numpy_column(table["_seconds"]).astype(np.float64)
        per: dict[str, dict[str, Any]] = {}
        for w in sorted(set(workers.tolist())):
            m = workers == w
            busy = float(secs[m].sum())
            per[w] = {"rows": int(m.sum()), "busy_s": round(busy, 3), "rows_per_s": round(float(m.sum()) / busy, 1) if busy > 0 else None}
        entry = self.tasks.setdefault(task.label, {"runs": 0, "units": 0, "rows": 0, "wall_s": 0.0})
        entry.update(runs=entry["runs"] + 1, units=entry["units"] + n_units, rows=entry["rows"] + int(table.num_rows),
                     wall_s=round(entry["wall_s"] + wall, 3), actors=actors, num_cpus=ncpu, num_gpus=ngpu, memory_mb=mem, workers=per)
        logger.info("ray: %s: %d units, %d rows on %d actor(s) in %.1f s", task.label, n_units, table.num_rows, actors, wall)

    def call_each(self, label: str, fn: str, calls: Sequence[dict], resources: Resources) -> list[Any]:
        """See :meth:`laser_fast.runtime.engine.Executor.call_each` (one Ray task per call)."""
        import ray

        t0 = time.perf_counter()
        remote = ray.remote(num_cpus=float(resources.num_cpus), max_retries=3)(run_named)
        refs = [remote.remote(fn, kw) for kw in calls]
        try:
            out = ray.get(refs)
        except ray.exceptions.RayTaskError as e:  # the worker's own exception, with its own message
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        wall = time.perf_counter() - t0
        entry = self.tasks.setdefault(label, {"runs": 0, "units": 0, "wall_s": 0.0})
        entry.update(runs=entry["runs"] + 1, units=entry["units"] + len(calls), wall_s=round(entry["wall_s"] + wall, 3), num_cpus=float(resources.num_cpus))
        logger.info("ray: %s: %d task(s) in %.1f s", label, len(calls), wall)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": "ray", "address": self.address, "max_actors": self.max_actors, "reserve_memory": self.reserve_memory,
                "gpus": self.gpus, "cluster": self.cluster(), "tasks": self.tasks}
