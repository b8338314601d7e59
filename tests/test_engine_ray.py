"""The Ray engine (``--engine ray``) against the local engine, on a real local Ray instance.

Units are made small (a few records per scoring chunk, classification and embedding window) so
every stage runs as many units on both Ray workers; the local engine runs with the same sizes.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laser_fast.config import SelectOptions
from laser_fast.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = [str(ROOT / "examples" / "pool" / n) for n in ("chat_messages.jsonl", "sharegpt.jsonl.gz", "alpaca.jsonl")]
#: small units, the same for both engines (they are read on the driver only)
SMALL_UNITS = {"LASER_FAST_SCORE_CHUNK": "16", "LASER_FAST_CLASSIFY_WINDOW": "96", "LASER_FAST_EMBED_WINDOW": "150",
               "LASER_FAST_RAY_MIN_ROWS": "1", "LASER_FAST_RAY_ROW_UNIT": "250"}


def test_engine_options_are_checked():
    with pytest.raises(ConfigError, match="unknown engine 'spark'"):
        SelectOptions(budget=1, engine="spark").validate()
    with pytest.raises(ConfigError, match="--engine ray"):
        SelectOptions(budget=1, ray_address="auto").validate()
    assert SelectOptions(budget=1, engine="RAY", ray_address="auto").validate().engine == "ray"


def test_missing_ray_names_the_install_command(monkeypatch):
    from laser_fast.runtime import ray_engine

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'laser_fast\[ray\]'"):
        ray_engine.require_ray()


def test_cli_takes_the_engine_flags():
    from laser_fast.cli import _options_from_args, build_parser

    a = build_parser().parse_args(["select", "x.jsonl", "--budget", "5", "--output-dir", "o", "--engine", "ray", "--ray-address", "auto"])
    opts = _options_from_args(a).validate()
    assert (opts.engine, opts.ray_address) == ("ray", "auto")
    for cmd in (["score", "x.jsonl", "--output-dir", "o"], ["classify", "x.jsonl", "--output", "o.jsonl"]):
        assert build_parser().parse_args([*cmd, "--engine", "ray"]).engine == "ray"


def test_score_chunks_do_not_depend_on_the_cache():
    import numpy as np

    from laser_fast.scorers.stage import score_chunks

    length = np.array([5, 9, 1, 7, 3, 8, 2])
    fresh = score_chunks(length, np.zeros(7, dtype=bool), 3)
    assert [p.tolist() for p in fresh] == [[1, 5, 3], [0, 4, 6], [2]]
    # a run killed after its first chunk resumes with the same second and third chunks
    found = np.zeros(7, dtype=bool)
    found[[1, 5, 3]] = True
    assert [p.tolist() for p in score_chunks(length, found, 3)] == [[0, 4, 6], [2]]
    # rows cached by another run: only the missing rows of a chunk are scored
    found[:] = False
    found[[4, 2]] = True
    assert [p.tolist() for p in score_chunks(length, found, 3)] == [[1, 5, 3], [0, 6]]


def test_embedding_windows_do_not_depend_on_the_store(monkeypatch):
    import numpy as np

    from laser_fast.sampling.embed import hash_texts
    from laser_fast.sampling.store import embed_windows

    monkeypatch.setenv("LASER_FAST_EMBED_WINDOW", "3")
    digs = hash_texts(["a", "b", "a", "c", "d", "e", "b", "f"])  # 6 distinct texts, first seen at 0 1 3 4 5 7
    missing = np.full(8, -1)
    assert [w.tolist() for w in embed_windows(missing, digs)] == [[0, 1, 3], [4, 5, 7]]
    stored = missing.copy()
    stored[[0, 2, 1, 6, 3]] = 0  # the first window was stored before a crash
    assert [w.tolist() for w in embed_windows(stored, digs)] == [[4, 5, 7]]
    stored[[5]] = 0  # part of a window stored: the rest of that window only
    assert [w.tolist() for w in embed_windows(stored, digs)] == [[4, 7]]


def test_classification_is_the_same_in_every_process(tmp_path):
    """The default classifier gives the same bits in two processes with different string hash
    seeds and thread counts: unique instructions of equal length were ordered by the process's
    string hash (so processes cut different windows and batches), and the numpy head's matrix
    product split its rows by BLAS thread (an engine's worker runs one thread)."""
    script = ("import sys, json, numpy as np\n"
              "from laser_fast.classifier.models import load_classifier\n"
              "texts = [json.loads(l)['instruction'] for l in open(sys.argv[1])]\n"
              "np.save(sys.argv[2], load_classifier().predict(texts, batch_size=8)[1])\n")
    texts = tmp_path / "texts.jsonl"
    import polars as pl

    from laser_fast.io.ingest import read_records

    recs, _ = read_records(EXAMPLE)
    with open(texts, "w") as f:  # the bundled example's instructions: many share a length in characters
        for t in recs["instruction"].to_list()[:240]:
            f.write(json.dumps({"instruction": t}) + "\n")
    assert pl.Series([len(t) for t in recs["instruction"].to_list()[:240]]).is_duplicated().sum() > 20
    out = []
    for seed, threads in (("1", None), ("2", "1")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "LASER_FAST_CLASSIFY_WINDOW": "24", "HF_HUB_OFFLINE": "1"}
        env.pop("OMP_NUM_THREADS", None)
        if threads:
            env["OMP_NUM_THREADS"] = threads
        subprocess.run([sys.executable, "-c", script, str(texts), str(tmp_path / f"c{seed}.npy")], env=env, check=True, cwd=str(ROOT))
        out.append((tmp_path / f"c{seed}.npy").read_bytes())
    assert out[0] == out[1]


# --------------------------------------------------------------------------------------
# a real local Ray instance
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    started = not ray.is_initialized()
    before = os.environ.get("LASER_FAST_SCRATCH")
    if started:  # the workers' local copies of URI work directories: their own "machine"
        os.environ["LASER_FAST_SCRATCH"] = str(tmp_path_factory.mktemp("ray-workers-scratch"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        if before is None:
            os.environ.pop("LASER_FAST_SCRATCH")
        else:
            os.environ["LASER_FAST_SCRATCH"] = before
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def small_units(monkeypatch):
    for k, v in SMALL_UNITS.items():
        monkeypatch.setenv(k, v)


def _select(inputs, out: Path, workdir: Path, **options) -> dict:
    from laser_fast.io.output import write_outputs
    from laser_fast.pipeline import run_selection

    opts = SelectOptions(**{"budget": 60, "mode": "kmeans", "seed": 0, "show_progress": False, **options})
    run = run_selection(inputs, opts, workdir=str(workdir))
    write_outputs(run, str(out), report=False)
    return run.manifest


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sample(tmp_path: Path, n: int) -> str:
    from conftest import shared_or_skip

    from benchmarks.common import head_jsonl

    return str(head_jsonl(shared_or_skip("alpaca_eval_pool.jsonl.gz"), tmp_path / f"pool{n}.jsonl", n))


def _both_engines(tmp_path: Path, inputs, **options) -> tuple[dict, dict]:
    local = _select(inputs, tmp_path / "local", tmp_path / "wl", **options)
    remote = _select(inputs, tmp_path / "ray", tmp_path / "wr", engine="ray", **options)
    for name in ("selected.jsonl", "decisions.parquet"):
        assert _digest(tmp_path / "local" / name) == _digest(tmp_path / "ray" / name), name
    return local, remote


@pytest.mark.ray
def test_bundled_example_is_byte_identical(ray_local, small_units, tmp_path):
    local, remote = _both_engines(tmp_path, EXAMPLE, profile="none", strategy="longest", classifier="minilm", budget=120)
    assert local["engine"] == {"name": "local"}
    eng = remote["engine"]
    assert eng["name"] == "ray" and eng["cluster"]["CPU"] == 2.0
    # every record-wise stage ran as several units on the workers
    for label in ("language", "classify", "tokens", "embed"):
        assert eng["tasks"][label]["units"] > 1, label
        assert sum(w["rows"] for w in eng["tasks"][label]["workers"].values()) == eng["tasks"][label]["rows"]
    # the CPU workers with a model reserve its estimate (the classifier's MiniLM, the embedder), the others nothing
    assert eng["tasks"]["classify"]["memory_mb"] > 0 and eng["tasks"]["embed"]["memory_mb"] > 0
    assert eng["tasks"]["language"]["memory_mb"] == eng["tasks"]["tokens"]["memory_mb"] == 0
    assert remote["counts"] == local["counts"]


@pytest.mark.ray
def test_alpaca_eval_sample_is_byte_identical(ray_local, small_units, tmp_path):
    pool = _sample(tmp_path, 2000)
    _, remote = _both_engines(tmp_path, [pool], profile="none", strategy="longest", classifier="minilm", budget=300, mode="kmeans+greedy")
    assert remote["engine"]["tasks"]["classify"]["units"] >= 2


@pytest.mark.ray
def test_lite_profile_is_byte_identical_and_a_killed_worker_is_retried(ray_local, small_units, tmp_path, monkeypatch):
    pool = _sample(tmp_path, 120)
    marker = tmp_path / "worker-killed"
    # the first worker of the onepass scorer exits its process on its first batch, once
    monkeypatch.setenv("LASER_FAST_RAY_FAULT", f"score:onepass={marker}")
    _, remote = _both_engines(tmp_path, [pool], profile="lite", classifier="minilm", budget=40)
    assert marker.exists(), "the fault hook never fired"
    task = remote["engine"]["tasks"]["score:onepass"]
    assert task["rows"] == sum(w["rows"] for w in task["workers"].values())  # every unit once, none lost or doubled
    scored = {f["scorer"]: f for f in remote["scoring"]["scorers"]}
    assert scored["onepass"]["engine"] == "ray" and scored["onepass"]["computed"] == task["rows"]
    # its CPU actors reserved the scorer's estimated memory (Ray took the reservation)
    from laser_fast.scorers.onepass import OnePassScorer

    assert task["memory_mb"] == OnePassScorer().host_memory_mb() > 0 and task["num_gpus"] == 0.0


@pytest.mark.ray
def test_rerun_after_the_driver_is_killed_reuses_the_caches(ray_local, tmp_path, monkeypatch):
    pool = _sample(tmp_path, 160)
    wd, out = tmp_path / "wd", tmp_path / "out"
    for k, v in {**SMALL_UNITS, "LASER_FAST_SCORE_CHUNK": "4"}.items():  # the killed run, the rerun and the local run alike
        monkeypatch.setenv(k, v)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "laser_fast.cli", "select", pool, "--budget", "40", "--profile", "lite", "--classifier", "minilm",
           "--engine", "ray", "--workdir", str(wd), "--output-dir", str(out), "--no-report", "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((wd / "scores").glob("onepass-*/part-*.parquet"))) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
            killed = True
            break
        time.sleep(0.2)
    proc.wait(timeout=60)
    if not killed:
        pytest.fail(f"the driver ended (rc {proc.returncode}) before any score was cached: {proc.stderr.read().decode()[-2000:]}")
    assert not (out / "selected.jsonl").exists()  # nothing half-written
    manifest = _select([pool], out, wd, profile="lite", classifier="minilm", budget=40, engine="ray")
    lq = {f["scorer"]: f for f in manifest["scoring"]["scorers"]}["onepass"]
    assert lq["cached"] >= 8, lq  # the killed run's shards were found, not scored again
    assert lq["cached"] + lq.get("computed", 0) == lq["records"]
    # and the result is the local engine's
    _select([pool], tmp_path / "local", tmp_path / "wl", profile="lite", classifier="minilm", budget=40)
    assert _digest(out / "selected.jsonl") == _digest(tmp_path / "local" / "selected.jsonl")
    json.loads((out / "manifest.json").read_text())  # complete


@pytest.mark.ray
def test_a_ray_run_and_a_local_run_share_caches_on_shared_storage(ray_local, small_units, tmp_path, monkeypatch):
    """``--workdir`` as a URI: the Ray workers score, classify and embed into their own local
    copies and upload; a local run on another 'machine' (an empty local copy) then computes nothing
    and selects the same bytes."""
    pool = _sample(tmp_path, 120)
    uri = (tmp_path / "shared").as_uri()
    monkeypatch.setenv("LASER_FAST_SCRATCH", str(tmp_path / "driver-scratch"))
    remote = _select([pool], tmp_path / "ray", uri, profile="lite", classifier="minilm", budget=40, engine="ray")
    shared = tmp_path / "shared"
    assert list(shared.glob("scores/onepass-*/part-*.parquet")) and list(shared.glob("embeddings/*/shard-*.parquet"))
    assert list(shared.glob("scores/categories-*/part-*.parquet"))
    monkeypatch.setenv("LASER_FAST_SCRATCH", str(tmp_path / "other-machine"))
    local = _select([pool], tmp_path / "local", uri, profile="lite", classifier="minilm", budget=40)
    assert _digest(tmp_path / "ray" / "selected.jsonl") == _digest(tmp_path / "local" / "selected.jsonl")
    for f in local["scoring"]["scorers"]:
        assert f.get("computed", 0) == 0 and f["cached"] == f["records"], f
    assert local["embedding"]["computed"] == 0
    assert {f["scorer"]: f for f in remote["scoring"]["scorers"]}["onepass"]["computed"] > 0


@pytest.mark.ray
def test_inputs_are_read_by_workers_with_the_local_ids_and_errors(ray_local, tmp_path):
    """Each input file is read by a Ray task: the same records and ids as the local engine (a
    conversation in two files numbered h..., h...-2 across them), and a bad record stops the run
    with the same file:line message."""
    from laser_fast.errors import InputError
    from laser_fast.io.ingest import load_pool
    from laser_fast.runtime.engine import use_engine

    dup = tmp_path / "dup.jsonl"
    dup.write_text(Path(EXAMPLE[2]).read_text().splitlines()[0] + "\n" + json.dumps({"instruction": "Name a river.", "output": "Nile."}) + "\n")
    inputs = [*EXAMPLE, str(dup)]
    opts = SelectOptions(budget=1, show_progress=False).validate()
    local, _, local_facts = load_pool(inputs, opts)
    with use_engine("ray") as ex:
        remote, _, remote_facts = load_pool(inputs, opts)
        assert ex.describe()["tasks"]["read"]["units"] == 4
    assert remote.equals(local) and remote_facts == local_facts
    assert local["data_id"].to_list()[-2].endswith("-2")  # the alpaca file's first record, again in dup.jsonl
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Fine?", "output": "Yes."}) + "\n" + json.dumps({"instruction": "Broken?", "output": 3}) + "\n")
    for engine in ("local", "ray"):
        with use_engine(engine), pytest.raises(InputError, match=r"bad\.jsonl:2.*output must be a string"):
            load_pool([EXAMPLE[0], str(bad)], opts)


@pytest.mark.ray
def test_a_preference_pool_is_byte_identical(ray_local, small_units, tmp_path):
    """40 DPO pairs of real AlpacaEval answers with the lite profile: both sides of each pair are
    embedded (in other batches on the two engines) and the outputs agree to the byte. (This pool
    also agreed before vectors stopped depending on their batch; that property itself is tested
    in tests/test_embed_batching.py.)"""
    import gzip

    from conftest import shared_or_skip

    by_instruction: dict[str, list[str]] = {}
    with gzip.open(shared_or_skip("alpaca_eval_pool.jsonl.gz"), "rt") as fh:
        for line in fh:
            r = json.loads(line)
            by_instruction.setdefault(r["instruction"], []).append(r["output"])
    pairs = [{"prompt": p, "chosen": outs[-1], "rejected": outs[0]} for p, outs in list(by_instruction.items())[:40]]
    pool = tmp_path / "pairs.jsonl"
    pool.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    local, remote = _both_engines(tmp_path, [str(pool)], profile="lite", classifier="minilm", budget=12)
    assert local["counts"]["total_selected"] == 12 and remote["engine"]["name"] == "ray"


@pytest.mark.ray
def test_one_large_file_is_read_in_byte_ranges_by_the_workers(ray_local, small_units, tmp_path, monkeypatch):
    pool = _sample(tmp_path, 2000)
    monkeypatch.setenv("LASER_FAST_READ_RANGE_BYTES", str(512 << 10))
    local, remote = _both_engines(tmp_path, [pool], profile="none", strategy="longest", classifier="minilm", budget=200)
    assert remote["inputs"][0]["ranges"] > 2 and "ranges" not in local["inputs"][0]
    assert remote["engine"]["tasks"]["read"]["units"] == remote["inputs"][0]["ranges"]
    for k in ("sha256", "bytes", "rows", "skipped", "schema"):
        assert remote["inputs"][0][k] == local["inputs"][0][k], k


def test_the_actor_cap_is_checked(ray_local, monkeypatch):
    from laser_fast.runtime.ray_engine import RayExecutor

    for bad in ("0", "two"):
        monkeypatch.setenv("LASER_FAST_RAY_MAX_ACTORS", bad)
        with pytest.raises(ValueError, match=r"LASER_FAST_RAY_MAX_ACTORS.*got '" + bad):
            RayExecutor()
    monkeypatch.setenv("LASER_FAST_RAY_MAX_ACTORS", "1")
    assert RayExecutor().describe()["max_actors"] == 1


def test_gpus_an_autoscaler_adds_are_planned_for(ray_local, monkeypatch):
    """A cluster whose GPU nodes join when actors ask for GPUs has none when the run starts:
    LASER_FAST_RAY_GPUS makes the driver plan for CUDA workers and ask for GPU actors."""
    from laser_fast.errors import ConfigError, LaserError
    from laser_fast.runtime.engine import UnitTask, check_engine_device
    from laser_fast.runtime.ray_engine import RayExecutor
    from laser_fast.runtime.stage import Resources

    for bad in ("-1", "two"):
        monkeypatch.setenv("LASER_FAST_RAY_GPUS", bad)
        with pytest.raises(ValueError, match=r"LASER_FAST_RAY_GPUS.*got '" + bad):
            RayExecutor()
    monkeypatch.delenv("LASER_FAST_RAY_GPUS")
    for bad in (0.5, True):
        with pytest.raises(ValueError, match=r"a whole number of at least 0, got " + repr(bad)):
            RayExecutor(gpus=bad)
    now = {"CPU": 2.0, "GPU": 0.0}  # no GPU node has joined yet
    plain = RayExecutor()
    plain.cluster = lambda: now
    assert plain.worker_device == "cpu" and plain.describe()["gpus"] is None
    with pytest.raises(ConfigError, match="set LASER_FAST_RAY_GPUS"):
        check_engine_device(plain, "cuda")
    monkeypatch.setenv("LASER_FAST_RAY_GPUS", "4")
    ex = RayExecutor()
    ex.cluster = lambda: now
    ex._node_resources = lambda: [now]
    assert ex.worker_device == "cuda" and ex.describe()["gpus"] == 4
    check_engine_device(ex, "cuda")

    class Task(UnitTask):
        label = "score:m"
        uses_gpu = True

    task = Task()
    for share, actors in ((1.0, 4), (0.25, 16), (2.0, 2)):  # a judge over 2 GPUs: nodes still to join are not checked
        task.resources = Resources(num_cpus=1, num_gpus=share, memory_mb=3 * 1024)
        assert ex.plan(task, 100) == (actors, 1.0, share, 0)
    assert ex.plan(task, 1)[0] == 1
    task.resources = Resources(num_cpus=1, num_gpus=8.0)  # more than the run plans for: Ray would wait for ever
    with pytest.raises(LaserError, match=r"needs 8 GPUs on one node \(--judge-gpus\) and the run plans for 4 \(LASER_FAST_RAY_GPUS\)"):
        ex.plan(task, 100)
    assert RayExecutor(gpus=0).gpus == 0  # the argument wins over the environment


@pytest.mark.ray
def test_cpu_actors_reserve_memory_on_a_real_instance(ray_local):
    """A task whose worker needs over half the node's Ray memory gets one actor, and still runs every
    unit; one that needs more than the node has is refused before any actor starts."""
    import numpy as np
    import polars as pl

    from laser_fast.errors import LaserError
    from laser_fast.runtime.engine import UnitTask
    from laser_fast.runtime.ray_engine import RayExecutor
    from laser_fast.runtime.stage import Resources

    node_mb = int(max(n["Resources"]["memory"] for n in ray_local.nodes() if n["Alive"]) // 2**20)

    class Double(UnitTask):
        label = "double"

        def run(self, unit):
            return {"y": unit["x"].to_numpy() * 2}

    task = Double()
    task.resources = Resources(num_cpus=1, memory_mb=node_mb // 2 + 1)
    ex = RayExecutor()
    units = [pl.DataFrame({"x": np.arange(5, dtype=np.int64) + 10 * i}) for i in range(4)]
    out = ex.map_units(task, units)
    assert all(np.array_equal(o["y"], u["x"].to_numpy() * 2) for o, u in zip(out, units))
    got = ex.describe()["tasks"]["double"]
    assert (got["actors"], got["memory_mb"], len(got["workers"])) == (1, node_mb // 2 + 1, 1)
    task.resources = Resources(num_cpus=1, memory_mb=node_mb + 1)
    with pytest.raises(LaserError, match=r"a CPU worker of double needs about .* MB of memory"):
        ex.map_units(task, units)


def test_units_may_count_different_figures(ray_local):
    """A figure first counted part-way through a run (``oom_splits``: a batch that ran out of GPU
    memory) is missing from the earlier units' stats: the units still come back, and the figure
    is summed over the units that have it."""
    import numpy as np
    import polars as pl

    from laser_fast.runtime.engine import UnitTask, stat_columns, summed_stats
    from laser_fast.runtime.ray_engine import RayExecutor

    class Counts(UnitTask):
        label = "counts"

        def run(self, unit):
            x = unit["x"].to_numpy()
            figures = {"records": x.size, **({"oom_splits": 1} if x[0] % 2 else {})}
            return {"y": x + 1, **stat_columns(x.size, figures)}

    units = [pl.DataFrame({"x": np.arange(3, dtype=np.int64) + 10 * i + (i % 2)}) for i in range(4)]
    out = RayExecutor(max_actors=1).map_units(Counts(), units)
    assert all(np.array_equal(o["y"], u["x"].to_numpy() + 1) for o, u in zip(out, units))
    assert summed_stats(out) == {"records": 12.0, "oom_splits": 2.0}


def test_scaling_over_workers_keeps_every_score(ray_local, monkeypatch):
    """The ``ray`` benchmark's scaling part: the same chunks on 1 and 2 capped actor pools use that
    many actors and give the same scores bit for bit (tiny models of the GPU benchmark on CPUs)."""
    from conftest import shared_or_skip

    shared_or_skip("alpaca_eval_pool.jsonl.gz")
    from benchmarks import ray_scale

    monkeypatch.setenv("LASER_BENCH_RAY_SCALE_RECORDS", "64")
    rows = ray_scale.run(True)
    assert [(r["workers"], r["actors_used"]) for r in rows] == [(1, 1), (2, 2)]
    assert all(r["identical"] and r["records"] == 64 and r["units"] == 4 and r["busy_rec_s"] > 0 for r in rows)
    assert rows[0]["efficiency"] == 1.0 and rows[1]["efficiency"] > 0


GPU_CLUSTER_SCRIPT = r'''
import os, sys
import numpy as np, polars as pl, ray
from laser_fast.errors import ModelLoadError
from laser_fast.runtime.engine import UnitTask
from laser_fast.runtime.ray_engine import RayExecutor
from laser_fast.runtime.stage import Resources


class OnGpu(UnitTask):
    label = "on_gpu"
    resources = Resources(num_cpus=1.0, num_gpus=0.5)
    uses_gpu = True

    def run(self, unit):
        from laser_fast.runtime import batching

        return {"y": unit["x"].to_numpy() * 2, "gpu": np.array([os.environ.get("CUDA_VISIBLE_DEVICES")] * unit.height, dtype=object),
                "share": np.full(unit.height, batching._GPU_SHARE)}


class OnCpu(OnGpu):
    label = "on_cpu"
    resources = Resources(num_cpus=1.0)
    uses_gpu = False


class NoModel(OnGpu):
    label = "no_model"

    def setup(self):
        raise ModelLoadError("model '/nope' not found: give a local folder or a hub id")


ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
ex = RayExecutor()
sizes = [5, 0, 17, 1, 30, 8, 0, 2, 40, 3]
units = [pl.DataFrame({"x": np.arange(s, dtype=np.int64) + 100 * i}) for i, s in enumerate(sizes)]
out = ex.map_units(OnGpu(), units)
assert [len(o["y"]) for o in out] == sizes
assert all(np.array_equal(o["y"], u["x"].to_numpy() * 2) for o, u in zip(out, units))
assert ex.describe()["tasks"]["on_gpu"]["num_gpus"] == 0.5 and {g for o in out for g in o["gpu"]} == {"0"}
# an actor with half a GPU plans its batches within half; one with none sees no GPU (Ray 2.60 no longer hides them)
assert ex.worker_device == "cuda" and {float(s) for o in out for s in o["share"]} == {0.5}
cpu = ex.map_units(OnCpu(), units)
assert {g for o in cpu for g in o["gpu"]} == {""} and {float(s) for o in cpu for s in o["share"]} == {1.0}
try:
    ex.map_units(NoModel(), units)
except ModelLoadError as e:
    print("raised:", e)
print("OK")
'''


@pytest.mark.ray
def test_gpu_stages_run_on_a_cluster_with_gpus(tmp_path):
    """Ray refuses ``map_batches`` without a batch size where actors ask for GPUs: blocks are padded
    to one length, which is the batch size, so units stay whole. A worker's own error (a model that
    does not load) reaches the driver as itself. An actor of half a GPU plans its batches within
    half; an actor of none sees no GPU. A logical GPU of a fresh local Ray instance."""
    pytest.importorskip("ray", reason="the [ray] extra is not installed (make test installs it)")
    script = tmp_path / "gpu_cluster.py"
    script.write_text(GPU_CLUSTER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "RAY_ADDRESS": ""}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout[-2000:] + res.stderr[-3000:]
    assert "raised: model '/nope' not found: give a local folder or a hub id" in res.stdout


# --------------------------------------------------------------------------------------
# a driver that plans for GPU workers it does not have (no Ray needed)
# --------------------------------------------------------------------------------------

class _GpuWorkers:
    """An engine whose workers hold GPUs, seen from a driver that has none (this machine)."""

    name = "ray"
    worker_device = "cuda"


def test_a_driver_without_a_gpu_plans_for_its_gpu_workers(tmp_path, monkeypatch):
    """On a Ray driver with no GPU, ``auto`` means the workers' GPUs: the default profile, the
    scorers' dtype in their fingerprints, their chunk sizes and the judges' backend are chosen
    for them. A worker whose own choice would differ (another kind of GPU, vLLM missing there)
    takes the driver's over, so its fingerprint matches; a ``--device cpu`` scorer asks for no GPU."""
    import pickle

    import torch

    from laser_fast.metrics import ScorerSettings, build_scorer, default_profile
    from laser_fast.runtime import engine
    from laser_fast.runtime.devices import planned_device
    from laser_fast.scorers import judge_backends
    from laser_fast.scorers.stage import ScoreTask

    if torch.cuda.is_available():
        pytest.skip("the driver must see no GPU")
    model = tmp_path / "deita"
    model.mkdir()
    (model / "config.json").write_text("{}")
    settings = ScorerSettings(models={"deita_quality": str(model)})
    monkeypatch.setattr(judge_backends, "vllm_installed", lambda: True)  # on the driver
    here = build_scorer("deita_quality", settings)
    assert (planned_device(), default_profile(), here.cache_chunk) == ("cpu", "lite", 128)
    local_judge = build_scorer("if_quality", ScorerSettings(judge_backend="transformers"))
    assert "|dtype=float32|" in here.fingerprint and "|backend=transformers|dtype=float32|" in local_judge.fingerprint
    token = engine._CURRENT.set(_GpuWorkers())
    try:
        assert (planned_device(), planned_device("cpu"), default_profile()) == ("cuda", "cpu", "paper")
        deita, judge = build_scorer("deita_quality", settings), build_scorer("if_quality", settings)
        assert deita.cache_chunk == 8192 and judge.cache_chunk == 4096
        assert "|dtype=bfloat16|" in deita.fingerprint and judge.backend == "vllm"
        # the transformers backend named: its model's dtype is the workers' too
        tjudge = build_scorer("code_quality", ScorerSettings(judge_backend="transformers"))
        assert "|backend=transformers|dtype=bfloat16|" in tjudge.fingerprint
        tasks = [ScoreTask(s, str(tmp_path / "wd")) for s in (deita, tjudge, judge)]
        lite = ScoreTask(build_scorer("lite_difficulty", ScorerSettings(device="cpu")), str(tmp_path / "wd"))
    finally:
        engine._CURRENT.reset(token)
    assert all(t.uses_gpu for t in tasks) and not lite.uses_gpu and lite.resources.num_gpus == 0
    # a worker: no engine of its own, and no vLLM there; it builds the scorers from the settings
    monkeypatch.setattr(judge_backends, "vllm_installed", lambda: False)
    for task in tasks:
        worker = pickle.loads(pickle.dumps(task))
        worker.setup()  # raises when the fingerprints differ
        assert worker._scorer.fingerprint == task.fingerprint
        if task.label == "score:code_quality":
            assert worker._scorer.client.dtype == "bfloat16"  # the engine it would load (not loaded here)
    assert (worker._scorer.backend, pickle.loads(pickle.dumps(tasks[0])).pins) == ("vllm", {"dtype": "bfloat16"})


def test_a_driver_with_an_older_gpu_plans_bfloat16_for_its_workers(monkeypatch):
    """The driver's own GPU (a T4: float32 by the policy) says nothing of its workers' GPUs."""
    import torch

    from laser_fast.runtime import devices, engine
    from laser_fast.scorers.lite_features import auto_dtype

    monkeypatch.setattr(devices, "torch_dtype", lambda device: torch.float32)  # a T4 here
    monkeypatch.setattr(devices, "cuda_available", lambda **kw: True)
    assert devices.planned_dtype(None) == "float32" == auto_dtype(None)  # this machine's card
    token = engine._CURRENT.set(_GpuWorkers())
    try:
        assert devices.planned_dtype(None) == devices.planned_dtype("cuda") == "bfloat16" == auto_dtype(None)
    finally:
        engine._CURRENT.reset(token)


def test_ray_runs_take_cuda_from_the_cluster_not_this_machine():
    """``--device cuda`` with ``--engine ray`` is checked against the cluster's GPUs, not the
    driver's; ``cuda:N`` is refused (every actor sees only its own GPU, as cuda:0)."""
    import types

    from laser_fast.runtime.devices import check_device
    from laser_fast.runtime.engine import check_engine_device

    assert check_device("cuda", engine="ray") == "cuda" == check_device("cuda:0", engine="ray")
    with pytest.raises(ConfigError, match=r"device 'cuda:1': with --engine ray every worker sees only the GPU Ray gives it, as "
                                          r"cuda:0; use cuda or auto \(--device\)"):
        SelectOptions(engine="ray", device="cuda:1", budget=10).validate()
    check_engine_device(_GpuWorkers(), "cuda")
    check_engine_device(None, "cuda")  # the local engine: check_device looked at this machine
    with pytest.raises(ConfigError, match="--device cuda: the ray cluster has no GPU; use --device cpu or auto"):
        check_engine_device(types.SimpleNamespace(name="ray", worker_device="cpu"), "cuda")


def test_the_driver_leaves_the_classifier_to_the_workers(tmp_path, monkeypatch):
    """With an engine, the classifier is loaded by the workers (here: in this process, with no
    engine of their own) and not by the driver, which may have no GPU; same categories as the
    local engine's. The stage's stats say where it ran."""
    import numpy as np

    from laser_fast.classifier import models as C
    from laser_fast.classifier.stage import classify_pool
    from laser_fast.io.ingest import read_records
    from laser_fast.runtime import engine

    class Here:
        name = "here"

        def map_units(self, task, units):
            token = engine._CURRENT.set(None)  # a worker's process: no engine of its own
            try:
                task.setup()
                return [task.run(u) for u in units]
            finally:
                engine._CURRENT.reset(token)

    loads = []
    real = C.DefaultClassifier._load

    def load(self):
        loads.append("driver" if engine.current_executor() is not None else "worker")
        return real(self)

    monkeypatch.setattr(C.DefaultClassifier, "_load", load)
    recs, _ = read_records(EXAMPLE[:1])
    opts = SelectOptions(budget=1, classifier="minilm", device="cpu", show_progress=False).validate()
    local = classify_pool(recs, None, opts, str(tmp_path / "local"))
    assert loads == ["worker"]  # no engine: this process is the worker
    token = engine._CURRENT.set(Here())
    try:
        remote = classify_pool(recs, None, opts, str(tmp_path / "remote"))
    finally:
        engine._CURRENT.reset(token)
    assert loads == ["worker", "worker"]
    assert list(remote[0]) == list(local[0]) and np.array_equal(remote[1], local[1])
    assert (local[2]["device"], remote[2]["device"]) == ("cpu", "here workers (their device)")  # for the manifest


def test_a_classifier_run_by_workers_is_not_loaded_on_the_driver():
    """The engine's workers load the classifier; the driver (which may have no GPU) does not."""
    import numpy as np

    from laser_fast.classifier.models import CATEGORIES, TaskClassifier

    class Remote(TaskClassifier):
        fingerprint = "remote"

        def _load(self):
            raise AssertionError("loaded on the driver")

    probs = np.eye(len(CATEGORIES), dtype=np.float32)[[1, 2]]
    got = Remote(device="cuda").predict_proba(["b text", "a text", "b text"], runner=lambda windows: [probs[: len(w)] for w in windows])
    assert np.array_equal(got, probs[[1, 0, 1]])
