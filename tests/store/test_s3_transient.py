"""Transient S3 errors (503 SlowDown) are retried with backoff and change nothing; a permanent
one (403 on every write) fails the stage with one line and exit 3. Faults come from a proxy in
front of moto, so the client is the real s3fs stack."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import zarr
from helpers import run_cli, smooth_volume, write_zarr

from store.flaky_proxy import ACCESS_DENIED, SLOW_DOWN, FlakyProxy


def cli(*args, endpoint):
    """In-process, with the endpoint (moto's, or the proxy's) in the environment for the call."""
    return run_cli(*args, env={"AWS_ENDPOINT_URL": endpoint})


def real_process(*args, endpoint):
    """A failed storage write as its own interpreter: the exit status, and nothing printed at its exit."""
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_slow_down_is_retried_and_gives_the_same_bytes(s3, s3_server, model2, volume_factory, reference_run):
    inp = write_zarr(f"{s3}/in.zarr", smooth_volume((32, 64, 64), seed=4), chunks=(16, 32, 32))
    common = ["--input", inp, "--model", model2, "--parts-per-gpu", "2", "--disable-tta", "--quiet", "--levels", "1"]
    # the bytes without faults: the same volume's plain local run (conftest.reference_run; S3 and local
    # disk give the same bytes: test_s3_pipeline.py)
    direct = reference_run(model2, volume_factory((32, 64, 64), seed=4, chunks=(16, 32, 32))).output
    # every 4th request of the run fails once with 503 (the first 40 of them: each retry waits botocore's
    # backoff, most of this test's time); the retry (a new request) goes through
    with FlakyProxy(s3_server, lambda method, path, n: SLOW_DOWN if n % 4 == 1 and n < 160 else None) as proxy:
        r = cli("pipeline", *common, "--output", f"{s3}/flaky.zarr", endpoint=proxy.url)
    assert r.returncode == 0, r.stderr
    methods = {m for m, _, _ in proxy.injected}
    assert len(proxy.injected) > 30 and {"GET", "PUT"} <= methods, (len(proxy.injected), methods)
    flaky = zarr.open_group(f"{s3}/flaky.zarr", mode="r")
    assert np.array_equal(direct, flaky["0"][:])
    assert flaky.attrs["vesuvius"]["complete"] is True


def test_denied_writes_fail_at_once_with_exit_3(s3, s3_server, model2):
    inp = write_zarr(f"{s3}/in.zarr", smooth_volume((24, 32, 32), seed=5), chunks=(24, 32, 32))

    def deny_puts(method, path, n):
        return ACCESS_DENIED if method == "PUT" and "/parts/" in path else None

    with FlakyProxy(s3_server, deny_puts) as proxy:
        r = real_process("predict", "--model_path", model2, "--input_dir", inp, "--output_dir", f"{s3}/parts", "--device",
                "cpu", "--disable_tta", "--quiet", endpoint=proxy.url)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert last.startswith("error:") and ("denied" in last.lower() or "permission" in last.lower()), last
    # a permanent error is not retried: one denied PUT per object at most, a handful in all
    assert 0 < len(proxy.injected) <= 10, proxy.injected
