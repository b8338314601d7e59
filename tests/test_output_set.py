"""Output folders written as one set: kill -9 at every step, preflight checks before any work,
file modes that follow the umask, stale temporary folders of dead processes."""
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from laser_fast.cli import main
from laser_fast.errors import LaserError
from laser_fast.io.output import OutputSet, atomic_path, check_output_dir, write_outputs
from laser_fast.io.output_set import SELECT_OUTPUT_NAMES, TMP_PREFIX, clean_stale_temps, temp_name

ROOT = Path(__file__).resolve().parent.parent
CHEAP = ["--strategy", "longest", "--profile", "none", "--mode", "none", "-q"]

# Runs ``laser-fast`` in a fresh process under the umask argv[1]. With argv[2] = N > 0, the process
# SIGKILLs itself at the N-th file-system step (os.replace, rename, unlink, remove, rmdir) made once
# write_outputs has started; it prints the number of steps it made when it was not killed.
WRAPPER = r"""
import os, signal, sys
os.umask(int(sys.argv[1], 8))
kill_at = int(sys.argv[2])
steps, armed = [0], [False]
def counted(real):
    def f(*a, **k):
        if armed[0]:
            steps[0] += 1
            if steps[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    return f
for name in ("replace", "rename", "unlink", "remove", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
import laser_fast.io.output as out_mod
real_write_outputs = out_mod.write_outputs
def write_outputs(*a, **k):
    armed[0] = True
    return real_write_outputs(*a, **k)
out_mod.write_outputs = write_outputs
from laser_fast.cli import main
rc = main(sys.argv[3:])
print("STEPS", steps[0])
sys.exit(rc)
"""


def _cli(args, *, umask=0o022, kill_at=0):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", WRAPPER, oct(umask)[2:], str(kill_at), *map(str, args)],
                          check=False, capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))


def _pool(path: Path, n: int = 24) -> Path:
    rows = [{"data_id": f"r{i}", "instruction": f"Question number {i} about topic {i % 7}?", "output": f"Answer {i} " * (1 + i % 5),
             "category": ["Math", "Coding", "Generation"][i % 3]} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _visible(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if not p.name.startswith(".")}


def _assert_complete(out: Path, budget: int, fmt: str, report: bool) -> dict:
    """The folder holds exactly one complete set described by its manifest."""
    man = json.loads((out / "manifest.json").read_text())
    o = man["outputs"]
    sel = out / f"selected.{fmt}"
    assert o["selected"]["path"] == sel.name and o["selected"]["sha256"] == _sha(sel) and o["selected"]["rows"] == budget
    n = len(sel.read_text().splitlines()) if fmt == "jsonl" else pl.read_parquet(sel).height
    assert n == budget
    assert (pl.read_parquet(out / "decisions.parquet")["status"] == "selected").sum() == budget
    expected = {sel.name, "decisions.parquet", "manifest.json"} | ({"report.html"} if report else set())
    assert _visible(out) == expected, _visible(out)
    assert ("report" in o) == report
    if report:
        assert f"budget {budget} records" in (out / "report.html").read_text()
    return man


@pytest.fixture()
def pool(tmp_path):
    return _pool(tmp_path / "in" / "pool.jsonl")


def test_kill_at_every_step_never_leaves_a_mix(tmp_path, pool, workdir):
    """The previous set (jsonl, report, 5 records) is replaced by a new one (parquet, no report,
    8 records); the writer is killed at each file-system step in turn. Afterwards the folder holds
    the previous set, the new set, or no manifest, never a manifest beside another run's files."""
    out, pristine = tmp_path / "out", tmp_path / "pristine"
    r = _cli(["select", pool, "--budget", 5, *CHEAP, "--workdir", workdir, "--output-dir", pristine])
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_complete(pristine, 5, "jsonl", True)
    old = {n: _sha(pristine / n) for n in _visible(pristine)}
    pool_sha = _sha(pool)
    new_args = ["select", pool, "--budget", 8, *CHEAP, "--format", "parquet", "--no-report", "--workdir", workdir, "--output-dir", out]
    seen, total = set(), None
    for n in range(1, 60):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(pristine, out)
        r = _cli(new_args, kill_at=n)
        if r.returncode == 0:
            total = int(re.search(r"STEPS (\d+)", r.stdout)[1])
            print(f"{total} steps; states after a kill: {sorted(seen)}")
            assert total < n, (total, n)
            _assert_complete(out, 8, "parquet", False)
            seen.add("final")
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr[-2000:])
        hidden = {p.name for p in out.iterdir() if p.name.startswith(".")}
        assert all(h.startswith(TMP_PREFIX) for h in hidden), hidden
        if (out / "manifest.json").exists():
            if _sha(out / "manifest.json") == old["manifest.json"]:
                assert {f: _sha(out / f) for f in _visible(out)} == old, f"step {n}: the previous manifest beside changed files"
                seen.add("previous")
            else:
                _assert_complete(out, 8, "parquet", False)
                seen.add("new")
        else:
            seen.add("no manifest")
        assert _sha(pool) == pool_sha
    assert total is not None, "the run never completed"
    assert {"previous", "no manifest", "final"} <= seen, seen
    # a killed writer leaves its temporary folder; the next run removes it (its process is dead)
    shutil.rmtree(out)
    shutil.copytree(pristine, out)
    r = _cli(new_args, kill_at=total - 2)
    assert r.returncode == -signal.SIGKILL
    assert any(p.name.startswith(TMP_PREFIX) for p in out.iterdir())
    r = _cli(new_args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    _assert_complete(out, 8, "parquet", False)
    assert all(stat.S_IMODE((out / f).stat().st_mode) == 0o644 for f in _visible(out))


@pytest.mark.parametrize("umask,fmt,mode", [(0o022, "jsonl", 0o644), (0o027, "parquet", 0o640)])
def test_output_files_follow_the_umask(tmp_path, pool, workdir, umask, fmt, mode):
    out = tmp_path / "out"
    r = _cli(["select", pool, "--budget", 5, *CHEAP, "--format", fmt, "--workdir", workdir, "--output-dir", out], umask=umask)
    assert r.returncode == 0, r.stderr[-2000:]
    _assert_complete(out, 5, fmt, True)
    assert {f: oct(stat.S_IMODE((out / f).stat().st_mode)) for f in _visible(out)} == {f: oct(mode) for f in _visible(out)}


def test_atomic_path_mode_and_unique_names(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as t1, atomic_path(tmp_path / "a.txt") as t2:
            assert t1 != t2 and t1.parent == tmp_path and t1.name.startswith(TMP_PREFIX) and str(os.getpid()) in t1.name
            t1.write_text("one")
            t2.write_text("two")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").read_text() == "one"  # the outer block ends last
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as t:
        t.write_text("partial")
        raise RuntimeError("boom")
    assert (tmp_path / "a.txt").read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def _refused(capsys, argv, *needles):
    t0 = time.perf_counter()
    rc = main(argv)
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 20
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for s in needles:
        assert str(s) in err, (s, err)
    return err


@pytest.mark.parametrize("name", SELECT_OUTPUT_NAMES)
def test_input_named_like_an_output_is_refused_before_any_work(tmp_path, capsys, name):
    out, work = tmp_path / "out", tmp_path / "work"
    src = _pool(out / name)
    before = _sha(src)
    _refused(capsys, ["select", str(src), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(out)], src, "overwritten")
    assert _sha(src) == before and _visible(out) == {name} and not work.exists()


def test_aliases_of_outputs_are_refused(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    real = _pool(out / "selected.jsonl")
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(real)
    _refused(capsys, ["select", str(alias), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(out)], alias)
    # the output folder given through a symlink, the input by its real path
    link_out = tmp_path / "link_out"
    link_out.symlink_to(out, target_is_directory=True)
    _refused(capsys, ["select", str(real), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(link_out)], real)
    # a score file that the run would replace
    other = _pool(tmp_path / "in" / "p.jsonl")
    dec = out / "decisions.parquet"
    pl.DataFrame({"data_id": ["r1"], "quality": [1.0]}).write_parquet(dec)
    _refused(capsys, ["select", str(other), "--budget", "3", *CHEAP, "--scores", str(dec), "--workdir", str(work), "--output-dir", str(out)], dec)
    # laser-fast score and classify
    sc = _pool(out / "scores.parquet")
    _refused(capsys, ["score", str(sc), "--profile", "none", "--workdir", str(work), "--output-dir", str(out), "-q"], sc)
    _refused(capsys, ["classify", str(other), "--output", str(other), "-q"], other, "--output")
    assert not work.exists() and json.loads(other.read_text().splitlines()[0])["data_id"] == "r0"


def test_unusable_output_dir_fails_before_any_work(tmp_path, pool, capsys):
    work = tmp_path / "work"
    f = tmp_path / "afile"
    f.write_text("x")
    _refused(capsys, ["select", str(pool), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(f)], f, "is a file")
    _refused(capsys, ["select", str(pool), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(f / "sub")], f, "not a folder")
    out = tmp_path / "out"
    (out / "report.html").mkdir(parents=True)
    _refused(capsys, ["select", str(pool), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(out)], out / "report.html", "is a folder")
    assert not work.exists() and f.read_text() == "x"
    # a missing folder is checked without being left behind
    check_output_dir(tmp_path / "new" / "deeper", [pool])
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into a 0o555 folder anyway; the probe is tested with an emulated EACCES")
def test_read_only_output_dir_fails_before_any_work(tmp_path, pool, capsys):
    out, work = tmp_path / "ro", tmp_path / "work"
    out.mkdir()
    out.chmod(0o555)
    try:
        _refused(capsys, ["select", str(pool), "--budget", "3", *CHEAP, "--workdir", str(work), "--output-dir", str(out)], out, "permission denied")
    finally:
        out.chmod(0o755)
    assert not work.exists()


@pytest.mark.parametrize("code,words", [(errno.EACCES, "permission denied"), (errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only")])
def test_probe_failures_name_the_folder_and_the_cause(tmp_path, monkeypatch, code, words):
    real_open = os.open

    def fake_open(path, flags, *a, **k):
        if str(path).endswith(".probe") and Path(path).name.startswith(TMP_PREFIX):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    for target in (tmp_path, tmp_path / "missing"):
        with pytest.raises(LaserError, match=words) as e:
            check_output_dir(target, [])
        assert str(target) in str(e.value) and "--output-dir" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host, _pid, _rand = re.match(re.escape(TMP_PREFIX) + r"(.+)-(\d+)-([0-9a-f]+)$", temp_name()).groups()
    stale_dir = tmp_path / f"{TMP_PREFIX}{host}-{dead.pid}-abc123"
    stale_dir.mkdir()
    (stale_dir / "selected.jsonl").write_text("partial")
    stale_file = tmp_path / f"{TMP_PREFIX}{host}-{dead.pid}-def456.selected.jsonl"
    stale_file.write_text("partial")
    live = tmp_path / f"{TMP_PREFIX}{host}-{os.getpid()}-abc123"
    live.mkdir()
    elsewhere = tmp_path / f"{TMP_PREFIX}otherhost-{dead.pid}-abc123"
    elsewhere.mkdir()
    mine = tmp_path / "selected.jsonl"
    mine.write_text("keep")
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale_dir, stale_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, elsewhere.name, "selected.jsonl"])


def test_output_set_failures_keep_the_previous_set(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    for n, t in (("scores.parquet", "old"), ("scores_manifest.json", "{}")):
        (out / n).write_text(t)
    names = ("scores.parquet", "scores_manifest.json")
    with pytest.raises(LaserError, match="disk is full") as e, OutputSet(out, names, "scores_manifest.json") as s:
        s.path("scores.parquet").write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device", str(s.path("scores_manifest.json")))
    assert str(out) in str(e.value) and "unchanged" in str(e.value)
    assert {p.name: p.read_text() for p in out.iterdir()} == {"scores.parquet": "old", "scores_manifest.json": "{}"}
    # a failure while the files are moved in leaves no manifest (an incomplete folder, said so)
    real_replace = os.replace

    def failing_replace(a, b):
        if Path(b).parent == out:
            raise OSError(errno.EIO, "Input/output error", str(b))
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(LaserError, match="no scores_manifest.json"), OutputSet(out, names, "scores_manifest.json") as s:
        s.path("scores.parquet").write_text("new")
        s.path("scores_manifest.json").write_text("{\"new\": 1}")
    monkeypatch.undo()
    assert not (out / "scores_manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_python_api_write_outputs(tmp_path, workdir):
    from laser_fast.config import SelectOptions
    from laser_fast.pipeline import run_selection

    opts = {"budget": 6, "strategy": "longest", "mode": "none", "proportions": "none", "profile": "none", "show_progress": False}
    out = tmp_path / "out"
    src = _pool(tmp_path / "in" / "pool.jsonl")
    run = run_selection([str(src)], SelectOptions(**opts), workdir=workdir)
    paths = write_outputs(run, out, fmt="parquet")
    assert paths == {k: str(out / n) for k, n in (("selected", "selected.parquet"), ("decisions", "decisions.parquet"),
                                                  ("report", "report.html"), ("manifest", "manifest.json"))}
    _assert_complete(out, 6, "parquet", True)
    paths = write_outputs(run, out, fmt="jsonl", report=False)  # the previous parquet and report go
    _assert_complete(out, 6, "jsonl", False)
    assert set(paths) == {"selected", "decisions", "manifest"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # an input of the run that sits in the output folder under an output name is refused
    inside = out / "selected.parquet"
    pl.read_ndjson(src).write_parquet(inside)
    before = _sha(inside)
    run2 = run_selection([str(inside)], SelectOptions(**opts), workdir=workdir)
    with pytest.raises(LaserError, match="overwritten"):
        write_outputs(run2, out, fmt="jsonl")
    assert _sha(inside) == before
    assert json.loads((out / "manifest.json").read_text())["outputs"]["selected"]["path"] == "selected.jsonl"  # the previous set stays
