"""Storage that is down, or goes away mid-run, is a transient failure: one ``error:`` line, exit 74
(retried by Kubernetes, never the permanent 3), nothing that looks complete, no traceback or
interpreter-exit noise; the line is also the container's termination message. A rerun once the store
is back resumes from the last checkpoint and gives the clean run's bytes.

The stores are real servers on 127.0.0.1 (outage.py): an HTTP server over the Zarr folder, and a
proxy in front of moto's S3 server, each resetting connections after N requests and then refusing
them, and started again on the same port for the rerun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr

from store.outage import Outage, free_port, proxy, serve_folder

# small enough for a few seconds of model time, large enough for checkpoints between batches
SHAPE, CHUNKS = (16, 64, 96), (8, 32, 32)
# --storage_wait_s 0: fail at the first outage, as these tests are about (test_storage_wait.py: the wait)
PREDICT = ["--device", "cpu", "--disable_tta", "--checkpoint_s", "0", "--chunk_size", "8,16,16",
           "--input_cache_gb", "0", "--intensity_check", "off", "--storage_wait_s", "0"]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def predict(model, inp, out, *extra, env=None, run=cli):
    """A run that fails on storage is a real process (its exit and what it prints at exit are checked);
    the clean runs and the reruns pass ``run=run_cli`` (in-process)."""
    return run("predict", "--model_path", model, "--input_dir", inp, "--output_dir", out, *PREDICT, *extra, env=env)


def assert_transient(r, *needles):
    """Exit 74, the last line an error: line naming the cause, and nothing else that looks like a failure."""
    assert r.returncode == 74, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert last.startswith("error:") and "storage unreachable" in last, last
    for n in needles:
        assert n in last, (n, last)
    return last


def final_of(parts_dir: str, so=None) -> np.ndarray:
    marker = json.loads(_cat(f"{parts_dir}/part_00000.json", so))
    return zarr.open_array(f"{marker['store']}/final", mode="r", storage_options=so)[:]


def _cat(url: str, so=None) -> bytes:
    import fsspec

    with fsspec.open(url, "rb", **(so or {})) as f:
        return f.read()


@pytest.fixture(scope="module")
def tiny_model(model_factory):
    """One fold, patch 16x32x32, a few thousand weights: model time is not what these tests are about."""
    return model_factory(patch=(16, 32, 32), folds=(0,), features=(2, 4, 8))


@pytest.fixture
def http_input(tmp_path):
    root = tmp_path / "www"
    write_zarr(root / "in.zarr", smooth_volume(SHAPE, seed=31), chunks=CHUNKS)
    return root


def test_http_input_down_at_start_and_gone_mid_run(http_input, tmp_path, tiny_model):
    port = free_port()
    url = f"http://127.0.0.1:{port}/in.zarr"
    term = tmp_path / "termination-log"
    # down when predict starts: transient, nothing written, the line is the termination message
    r = predict(tiny_model, url, tmp_path / "clean", env={"VESUVIUS_TERMINATION_LOG": str(term)})
    last = assert_transient(r, url, "Connect")
    assert term.read_text() == last + "\n"  # what Kubernetes shows as the container's termination message
    assert not (tmp_path / "clean").exists()
    # back on the same port: the rerun works (the clean run of this test)
    with serve_folder(http_input, port) as store:
        r = predict(tiny_model, url, tmp_path / "clean", "--quiet", run=run_cli)
        requests = store.outage.count
    assert r.returncode == 0, r.stderr[-2000:]
    # gone half-way through a run: connections reset, then refused
    with serve_folder(http_input, port, Outage(after=requests // 2)):
        r = predict(tiny_model, url, tmp_path / "work", "--quiet")
    assert_transient(r, "reading the input", url)
    assert not (tmp_path / "work" / "part_00000.json").exists()  # no marker: nothing looks complete
    assert list((tmp_path / "work").glob("part_00000/*/checkpoint.json")), "the outage came before any checkpoint"
    # back again: the rerun resumes from the checkpoint and gives the clean run's bytes
    with serve_folder(http_input, port):
        r = predict(tiny_model, url, tmp_path / "work", run=run_cli)
    assert r.returncode == 0 and "resuming after patch" in r.stderr, r.stderr[-2000:]
    np.testing.assert_array_equal(final_of(str(tmp_path / "work")), final_of(str(tmp_path / "clean")))


def test_s3_down_at_start_and_gone_mid_run(s3, s3_server, tiny_model):
    import s3fs

    inp = write_zarr(f"{s3}/in.zarr", smooth_volume(SHAPE, seed=32), chunks=CHUNKS)
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    fewer_retries = {**env, "AWS_MAX_ATTEMPTS": "2"}  # botocore's own retries (5 by default) cost only time here
    r = predict(tiny_model, inp, f"{s3}/clean", env=fewer_retries)
    assert_transient(r, "EndpointConnectionError")
    with proxy(s3_server, port):
        r = predict(tiny_model, inp, f"{s3}/clean", "--quiet", env=env, run=run_cli)
    assert r.returncode == 0, r.stderr[-2000:]
    # gone a few requests after the run's first checkpoint: reads, writes and the claim's renewals all fail
    bucket = s3[5:]
    with proxy(s3_server, port, Outage(after=8, armed_by=(f"PUT /{bucket}/work/part_00000/", "checkpoint.json"))):
        r = predict(tiny_model, inp, f"{s3}/work", "--quiet", env=fewer_retries)
    assert_transient(r)
    fs = s3fs.S3FileSystem()
    assert not fs.exists(f"{bucket}/work/part_00000.json")
    assert fs.glob(f"{bucket}/work/part_00000/*/checkpoint.json")
    with proxy(s3_server, port):
        r = predict(tiny_model, inp, f"{s3}/work", env=env, run=run_cli)
    assert r.returncode == 0 and "resuming after patch" in r.stderr, r.stderr[-2000:]
    np.testing.assert_array_equal(final_of(f"{s3}/work"), final_of(f"{s3}/clean"))
