"""Resume on S3: predict and blend killed mid-way finish on rerun with identical bytes; blend does
not redo the chunks it had finished (counted in moto's request log)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import requests
import zarr
from helpers import parse_recording, run_cli, smooth_volume, write_zarr


def cli(*args):
    return [sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)]


def kill_when(proc, ready, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kill_predict_and_blend_on_s3(s3, s3_server, model2):
    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = s3[5:]
    inp = write_zarr(f"{s3}/in.zarr", smooth_volume((32, 96, 96), seed=12), chunks=(16, 32, 32))
    pred = ["predict", "--model_path", model2, "--input_dir", inp, "--device", "cpu", "--disable_tta", "--quiet",
            "--chunk_size", "8,16,16"]
    # the runs that are not killed run in this process (helpers.run_cli)
    assert run_cli(*pred, "--output_dir", f"{s3}/clean").returncode == 0
    assert run_cli("blend", f"{s3}/clean", f"{s3}/clean.zarr", "--quiet").returncode == 0
    # predict killed once it has checkpointed (after every batch here), then rerun: it resumes
    proc = subprocess.Popen(cli(*pred, "--output_dir", f"{s3}/work", "--checkpoint_s", "0"))
    ckpts = lambda: fs.invalidate_cache() or fs.glob(f"{bucket}/work/part_00000/*/checkpoint.json")  # noqa: E731
    kill_when(proc, lambda: bool(ckpts()))
    assert not fs.exists(f"{bucket}/work/part_00000.json")
    loud = [a for a in pred if a != "--quiet"]
    r = run_cli(*loud, "--output_dir", f"{s3}/work")
    assert r.returncode == 0 and "resuming after patch" in r.stderr, r.stderr
    marker = json.loads(fs.cat(f"{bucket}/work/part_00000.json"))
    clean_marker = json.loads(fs.cat(f"{bucket}/clean/part_00000.json"))
    # the rerun ran only the patches after the checkpoint; the totals are the clean run's
    assert 0 < marker["patches"]["resumed_at"] and marker["patches"]["run_by_last_run"] < clean_marker["patches"]["run"]
    assert marker["patches"]["run"] == clean_marker["patches"]["run"]
    # the rerun copied the killed run's store, finished it under its own run id, and removed the old one
    assert not ckpts() and not fs.glob(f"{bucket}/work/part_00000/*/spill0")
    assert fs.ls(f"{bucket}/work/part_00000") == [marker["store"][5:]]
    a = zarr.open_array(f"{clean_marker['store']}/final", mode="r")[:]
    b = zarr.open_array(f"{marker['store']}/final", mode="r")[:]
    assert np.array_equal(a, b, equal_nan=True)
    # blend killed once its journal shows progress, then rerun. The journal is written after every
    # chunk here, so the kill lands early among the 144 chunks whatever the machine's speed.
    env = {**os.environ, "VESUVIUS_JOURNAL_INTERVAL_S": "0"}
    proc = subprocess.Popen(cli("blend", f"{s3}/work", f"{s3}/out.zarr", "--quiet"), env=env)
    journal = f"{bucket}/work/_blend/_vesuvius/blend_00000.progress.json"
    kill_when(proc, lambda: bool(fs.invalidate_cache() or fs.exists(journal)))
    out = zarr.open_array(f"{s3}/out.zarr", mode="r")
    assert out.attrs["vesuvius"]["complete"] is False
    requests.post(f"{s3_server}/moto-api/recorder/reset-recording")
    requests.post(f"{s3_server}/moto-api/recorder/start-recording")
    r = run_cli("blend", f"{s3}/work", f"{s3}/out.zarr")
    requests.post(f"{s3_server}/moto-api/recorder/stop-recording")
    assert r.returncode == 0 and "resuming after" in r.stderr, r.stderr
    log = parse_recording(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    rewritten = {x["url"] for x in log if x.get("method") == "PUT" and "/out.zarr/c/" in x.get("url", "")}
    total = len(fs.glob(f"{bucket}/out.zarr/c/*/*/*/*"))
    assert 0 < len(rewritten) < total
    clean = zarr.open_array(f"{s3}/clean.zarr", mode="r")[:]
    resumed = zarr.open_array(f"{s3}/out.zarr", mode="r")
    assert resumed.attrs["vesuvius"]["complete"] is True
    assert np.array_equal(clean, resumed[:], equal_nan=True)
