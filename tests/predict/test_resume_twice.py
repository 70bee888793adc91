"""A part stopped twice on S3 (issue 24's spot run: two evictions in a row): the third run resumes from the
second run's checkpoint, which had itself resumed from the first's, and gives an uninterrupted run's bytes.

The spot bench once saw the third run fail at once with ``GroupNotFoundError: No group found in store
.../part_00003/<its own run>`` (exit 3, which fails the index): the resume-of-a-resume path on S3. Real
processes and SIGTERM (the stop is what is under test), moto's S3 server for the parts and the output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import zarr
from helpers import smooth_volume, write_zarr

from predict.test_signals import STOPPED, Log, _patches_done


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)]


def test_a_part_stopped_twice_on_s3_resumes_from_the_resumed_run(s3, model_factory, tmp_path):
    from vesuvius_inference.cli import main

    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((32, 96, 96), seed=5), chunks=(16, 32, 32))

    def args(root: str, *extra) -> list[str]:
        return ["--model_path", str(model), "--input_dir", str(vol), "--output_dir", f"{root}/parts", "--device",
                "cpu", "--disable_tta", "--chunk_size", "16,32,32", "--final_output", f"{root}/out.zarr",
                "--batch_size", "2", *extra]

    ref = str(tmp_path / "ref")
    assert main(["predict", *args(ref, "--quiet")]) == 0
    want = zarr.open_group(f"{ref}/out.zarr", mode="r")["0"][:]

    root = f"{s3}/spot"
    stops = []
    for _ in range(2):
        proc = subprocess.Popen(_cmd("predict", *args(root, "--progress_s", "0.05")), stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ))
        log = Log(proc)
        since = stops[-1] if stops else 0
        log.wait_for(lambda log=log, since=since: _patches_done(log) > since)
        os.kill(proc.pid, signal.SIGTERM)
        assert log.finish() == STOPPED, log.text()
        m = re.search(r"stopped by SIGTERM after patch (\d+) of (\d+)", log.lines[-1])
        assert m, log.text()
        if stops:
            assert f"resuming after patch {stops[-1]}" in log.text()
        stops.append(int(m.group(1)))
    assert stops[0] < stops[1]
    last = subprocess.run(_cmd("predict", *args(root)), capture_output=True, text=True)
    assert last.returncode == 0, last.stderr
    assert f"resuming after patch {stops[1]}" in last.stderr
    got = zarr.open_group(f"{root}/out.zarr", mode="r", storage_options={
        "endpoint_url": os.environ["AWS_ENDPOINT_URL"]})["0"][:]
    assert np.array_equal(got, want)
