"""Issue 15: a work directory and inputs on S3 itself, not a stand-in: a moto S3 server on
loopback, reached through pyarrow's native S3 filesystem (``AWS_ENDPOINT_URL``), as a cluster
reaches a bucket. Two "machines" (two local copies) share every cache through the bucket, and the
selection equals a run on local paths."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "laser-fast-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = pytest.importorskip("moto.server")
    srv = server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="test", secret_key="test", region="us-east-1",
                            allow_bucket_creation=True)
    fs.create_dir(BUCKET)
    yield fs
    mp.undo()
    srv.stop()


def test_select_with_inputs_and_work_directory_on_s3(tmp_path, monkeypatch, s3):
    from laser_fast.cli import main

    names = ("chat_messages.jsonl", "alpaca.jsonl")
    for n in names:
        with s3.open_output_stream(f"{BUCKET}/inputs/{n}") as f:
            f.write((ROOT / "examples" / "pool" / n).read_bytes())
    remote = [f"s3://{BUCKET}/inputs/{n}" for n in names]
    local = [str(ROOT / "examples" / "pool" / n) for n in names]
    common = ["--budget", "40", "--profile", "none", "--strategy", "longest", "--classifier", "minilm", "--no-report", "-q"]
    manifests = {}
    for name, inputs, wd in (("a", remote, f"s3://{BUCKET}/wd"), ("b", remote, f"s3://{BUCKET}/wd"),
                             ("local", local, str(tmp_path / "wd"))):
        monkeypatch.setenv("LASER_FAST_SCRATCH", str(tmp_path / f"scratch-{name}"))
        out = tmp_path / f"out-{name}"
        assert main(["select", *inputs, *common, "--workdir", wd, "--output-dir", str(out)]) == 0
        manifests[name] = json.loads((out / "manifest.json").read_text())

    def selected(name):
        return pl.read_ndjson(tmp_path / f"out-{name}" / "selected.jsonl").drop("input_location")

    assert (tmp_path / "out-a" / "selected.jsonl").read_bytes() == (tmp_path / "out-b" / "selected.jsonl").read_bytes()
    assert selected("a").equals(selected("local"))
    assert manifests["a"]["embedding"]["computed"] > 0 and manifests["b"]["embedding"]["computed"] == 0
    assert manifests["a"]["inputs"][1]["path"] == remote[1]
    assert manifests["a"]["inputs"][1]["sha256"] == manifests["local"]["inputs"][1]["sha256"]
    import pyarrow.fs as pafs

    stored = [i.path for i in s3.get_file_info(pafs.FileSelector(f"{BUCKET}/wd", recursive=True)) if i.type == pafs.FileType.File]
    assert any(p.endswith(".parquet") for p in stored), stored  # the embedding store's shards are objects in the bucket
