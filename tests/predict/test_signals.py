"""SIGTERM and SIGINT stop predict after the batch in flight, with a checkpoint, exit 80 (errors.EXIT_STOPPED);
the rerun resumes there and gives an uninterrupted run's bytes. The local pipeline's workers never
outlive it: SIGTERM to the pipeline stops them through the same checkpoint, and ``kill -9`` of the
pipeline leaves no worker running and no claim held.

Real processes: signals, exit codes and orphans are what is under test. Every wait is on a condition
(a progress line, files on storage, a pid), with a bound."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import smooth_volume, write_zarr

STOPPED = 80
CHUNKS = "16,32,32"


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_factory):
    tmp = tmp_path_factory.mktemp("signals")
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(tmp / "in.zarr", smooth_volume((32, 96, 96), seed=5), chunks=(16, 32, 32))
    return tmp, model, vol


def _predict_args(setup, root: Path, *extra) -> list:
    _, model, vol = setup
    return ["--model_path", model, "--input_dir", vol, "--output_dir", root / "parts", "--device", "cpu",
            "--disable_tta", "--chunk_size", CHUNKS, "--final_output", root / "out.zarr", "--batch_size", 2, *extra]


def _level0(root: Path) -> np.ndarray:
    return zarr.open_group(str(root / "out.zarr"), mode="r")["0"][:]


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run's output (in this process)."""
    from vesuvius_inference.cli import main

    root = setup[0] / "reference"
    assert main(["predict", *map(str, _predict_args(setup, root, "--quiet"))]) == 0
    return _level0(root)


class Log:
    """A child's stderr, read in a thread, so the test can wait on what it printed."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pred, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert self.proc.poll() is None, "the run ended before the moment the test waits for:\n" + self.text()
            assert time.monotonic() < deadline, "timed out waiting:\n" + self.text()
            time.sleep(0.01)

    def finish(self, timeout: float = 120.0) -> int:
        code = self.proc.wait(timeout)
        self.thread.join(10)
        return code

    def text(self) -> str:
        return "\n".join(self.lines)


def _patches_done(log: Log) -> int:
    done = [int(m.group(1)) for line in log.lines for m in [re.search(r"predict \S+: (\d+)/\d+ patches", line)] if m]
    return max(done, default=0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_predict_after_a_checkpoint_and_the_rerun_gives_the_same_bytes(setup, reference, signum,
                                                                                      tmp_path):
    """No periodic checkpoint (the default --checkpoint_s 600): the one the rerun resumes from is the stop's."""
    proc = subprocess.Popen(_cmd("predict", *_predict_args(setup, tmp_path, "--progress_s", "0.05")),
                            stderr=subprocess.PIPE, text=True)
    log = Log(proc)
    log.wait_for(lambda: _patches_done(log) > 0)
    os.kill(proc.pid, signum)
    assert log.finish() == STOPPED, log.text()
    last = log.lines[-1]
    name = signal.Signals(signum).name
    m = re.fullmatch(rf"stopped by {name} after patch (\d+) of (\d+) \(predict part 0/1\); checkpoint written "
                     r"\([\d.]+ s, \d+ bytes\); rerun resumes", last)
    assert m, log.text()
    stopped_at, total = int(m.group(1)), int(m.group(2))
    assert 0 < stopped_at < total
    parts = tmp_path / "parts"
    assert not (parts / "part_00000.json").exists()
    (store,) = (parts / "part_00000").iterdir()
    head = json.loads((store / "checkpoint.json").read_text())
    assert head["position"] == stopped_at  # every patch up to there is in the checkpoint (no listed-empty here)
    claim = json.loads((parts / "part_00000.claim.json").read_text())
    assert claim["state"] == "released"  # the rerun takes over at once, without waiting out the lease
    rerun = subprocess.run(_cmd("predict", *_predict_args(setup, tmp_path)), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming after patch {stopped_at}" in rerun.stderr and "waiting" not in rerun.stderr
    marker = json.loads((parts / "part_00000.json").read_text())
    assert marker["patches"]["resumed_at"] == stopped_at
    assert marker["patches"]["run_by_last_run"] <= total - stopped_at  # nothing before the stop ran again
    assert np.array_equal(_level0(tmp_path), reference)
    assert not (store / "checkpoint.json").exists()  # scratch (the journal included) is gone once complete


def test_a_second_signal_during_the_stop_changes_nothing(setup, reference, tmp_path):
    """SIGTERM then SIGINT and SIGTERM again at once: one stop, one checkpoint, the same bytes after the rerun."""
    proc = subprocess.Popen(_cmd("predict", *_predict_args(setup, tmp_path, "--progress_s", "0.05")),
                            stderr=subprocess.PIPE, text=True)
    log = Log(proc)
    log.wait_for(lambda: _patches_done(log) > 0)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        os.kill(proc.pid, s)
    assert log.finish() == STOPPED, log.text()
    # pending signals are handled in signal-number order, so SIGINT may be the one named; there is one stop
    assert re.fullmatch(r"stopped by SIG(TERM|INT) after patch \d+ of 75 .*; rerun resumes", log.lines[-1]), log.text()
    assert sum(line.startswith("stopped by") for line in log.lines) == 1
    assert "Traceback" not in log.text()
    rerun = subprocess.run(_cmd("predict", *_predict_args(setup, tmp_path, "--quiet")), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert np.array_equal(_level0(tmp_path), reference)


# ---- the local pipeline -------------------------------------------------------------------------------

def _pipeline(setup, root: Path, *extra) -> list[str]:
    _, model, vol = setup
    return _cmd("pipeline", "--input", vol, "--output", root / "out.zarr", "--model", model, "--devices", "cpu,cpu",
                "--disable_tta", "--chunk_size", CHUNKS, "--keep-intermediates", "--checkpoint_s", "0", *extra)


@pytest.fixture(scope="module")
def pipeline_reference(setup):
    """The pipeline's output over the same two parts, both in this process (one device, two parts)."""
    from vesuvius_inference.cli import main

    _, model, vol = setup
    out = setup[0] / "pipeline-reference.zarr"
    assert main(["pipeline", "--input", vol, "--output", str(out), "--model", str(model), "--devices", "cpu",
                 "--parts-per-gpu", "2", "--disable_tta", "--chunk_size", CHUNKS, "--quiet"]) == 0
    return zarr.open_group(str(out), mode="r")["0"][:]


def _both_parts_checkpointed(root: Path) -> bool:
    parts = root / "out.zarr_work" / "parts"
    return all(any((parts / f"part_0000{p}").glob("*/checkpoint.json")) for p in (0, 1))


def _workers(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_to_the_pipeline_stops_its_workers_through_their_checkpoint(setup, pipeline_reference, tmp_path):
    proc = subprocess.Popen(_pipeline(setup, tmp_path), stderr=subprocess.PIPE, text=True)
    log = Log(proc)
    log.wait_for(lambda: _both_parts_checkpointed(tmp_path), timeout=180)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGTERM)
    assert log.finish() == STOPPED, log.text()
    text = log.text()
    assert len(re.findall(r"^stopped by SIGTERM after patch \d+ of \d+ \(predict part [01]/2\); checkpoint written",
                          text, re.M)) == 2, text
    assert re.fullmatch(r"stopped by SIGTERM: 2 worker\(s\) checkpointed and stopped \(part 0, 1\); 0 of 2 predict "
                        r"parts complete; rerun resumes", log.lines[-1]), text
    assert not any(_running(w) for w in workers)
    parts = tmp_path / "out.zarr_work" / "parts"
    for p in (0, 1):
        assert json.loads((parts / f"part_0000{p}.claim.json").read_text())["state"] == "released"
    rerun = subprocess.run(_pipeline(setup, tmp_path, "--quiet"), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    for p in (0, 1):  # each resumed from the checkpoint its stop wrote
        assert json.loads((parts / f"part_0000{p}.json").read_text())["patches"]["resumed_at"] > 0
    assert np.array_equal(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][:], pipeline_reference)


def test_kill_9_of_the_pipeline_leaves_no_worker_and_no_claim(setup, tmp_path):
    """--quiet: workers that print nothing never notice a dead pipe on their stderr (before, those ran on as
    orphans to the end of their parts, holding their claims and devices all along)."""
    proc = subprocess.Popen(_pipeline(setup, tmp_path, "--quiet"), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not _both_parts_checkpointed(tmp_path):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60  # a batch and a checkpoint, on a busy machine
    while any(_running(w) for w in workers):
        assert time.monotonic() < deadline, f"workers {[w for w in workers if _running(w)]} outlived the pipeline"
        time.sleep(0.05)
    parts = tmp_path / "out.zarr_work" / "parts"
    for p in (0, 1):  # each stopped through its checkpoint and gave its claim up (an orphan would have run on
        # to the end of its part): a rerun need not wait
        claim = json.loads((parts / f"part_0000{p}.claim.json").read_text())
        assert claim["state"] == "released" and not (parts / f"part_0000{p}.json").exists(), claim
        assert any((parts / f"part_0000{p}").glob("*/checkpoint.json"))
