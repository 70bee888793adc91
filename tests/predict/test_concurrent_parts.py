"""Two runs of one predict part at once: one works, the other stops with a clear line (exit 75), and
the output is always a clean run's. Also a kill and restart while another run is alive, and a frozen
run (a partitioned node) whose claim is taken over and which then must not write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr

LEASE = "2"
BUSY = 75


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)]


def _run(argv: list[str]):
    """The run beside the live (or killed, or frozen) process: the entry function in this process, another
    pid on the same host, like a second process (helpers.run_cli)."""
    return run_cli(*argv[3:])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, model_factory):
    tmp = tmp_path_factory.mktemp("concurrent")
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(tmp / "in.zarr", smooth_volume((48, 96, 96), seed=31), chunks=(16, 32, 32))
    return tmp, model, vol


def _predict(setup, root: Path, part: int, *extra: str) -> list[str]:
    tmp, model, vol = setup
    return _cmd("predict", "--model_path", model, "--input_dir", vol, "--output_dir", root / "parts",
                "--part_id", part, "--num_parts", 2, "--device", "cpu", "--disable_tta", "--checkpoint_s", "0",
                "--final_output", root / "out.zarr", "--lease_s", LEASE, "--chunk_size", "16,32,32", *extra)


def _in_process(setup, root: Path, part: int) -> None:
    from vesuvius_inference.contract.config import PredictConfig
    from vesuvius_inference.predict.stage import run_predict

    tmp, model, vol = setup
    run_predict(PredictConfig(model_path=str(model), input_dir=vol, output_dir=str(root / "parts"), part_id=part, num_parts=2, device="cpu",
                              do_tta=False, final_output=str(root / "out.zarr"), chunk_size=(16, 32, 32),
                              quiet=True, lease_s=float(LEASE)))


def _finish(setup, root: Path) -> np.ndarray:
    """Part 1 and blend, in this process (the races under test are all about part 0)."""
    from vesuvius_inference.contract.config import BlendConfig
    from vesuvius_inference.stages.finish import finish_from_blend

    _in_process(setup, root, 1)
    finish_from_blend(BlendConfig(parts_dir=str(root / "parts"), output=str(root / "out.zarr"), quiet=True))
    return zarr.open_group(str(root / "out.zarr"), mode="r")["0"][:]


@pytest.fixture(scope="module")
def clean(setup):
    root = setup[0] / "clean"
    _in_process(setup, root, 0)
    return _finish(setup, root)


def _wait_for(pred, proc, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline and not pred():
        assert proc.poll() is None, "the run ended before the moment the test waits for"
        time.sleep(0.02)
    assert pred()


def _checkpointed(root: Path) -> bool:
    return any((root / "parts" / "part_00000").glob("*/checkpoint.json"))


@pytest.mark.parametrize("offset", ["at-once", "mid-run"])
def test_second_run_of_a_live_part_stops_and_the_result_is_clean(setup, clean, offset, tmp_path):
    root = tmp_path / offset
    first = subprocess.Popen(_predict(setup, root, 0), stderr=subprocess.PIPE, text=True)
    if offset == "mid-run":
        _wait_for(lambda: _checkpointed(root), first)
    second = _run(_predict(setup, root, 0))
    first_err = first.communicate()[1]
    codes = sorted([first.returncode, second.returncode])
    if offset == "at-once" and codes == [0, 0]:
        # Started together, the winner can finish this small part before the other reaches the claim (a
        # stock model loads in ~4 s): then the other finds the part complete and does nothing, never twice.
        done = ["is already complete" in err for err in (first_err, second.stderr)]
        assert sorted(done) == [False, True], (first_err, second.stderr)
        assert np.array_equal(_finish(setup, root), clean)
        return
    assert codes == [0, BUSY], (first_err, second.stderr)
    loser = second if second.returncode == BUSY else None
    lines = (loser.stderr if loser else first_err).strip().splitlines()
    assert "is being worked on by another run" in lines[-1] and lines[-1].startswith("error: ")
    assert np.array_equal(_finish(setup, root), clean)


def test_kill_and_restart_while_another_run_is_alive(setup, clean, tmp_path):
    root = tmp_path / "kill"
    first = subprocess.Popen(_predict(setup, root, 0, "--quiet"), stderr=subprocess.DEVNULL)
    _wait_for(lambda: _checkpointed(root), first)
    busy = _run(_predict(setup, root, 0, "--quiet"))
    assert busy.returncode == BUSY, busy.stderr
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    restart = _run(_predict(setup, root, 0))
    assert restart.returncode == 0, restart.stderr
    assert "taking over" in restart.stderr and "resuming after patch" in restart.stderr
    marker = json.loads((root / "parts" / "part_00000.json").read_text())
    assert marker["patches"]["resumed_at"] > 0
    assert np.array_equal(_finish(setup, root), clean)
    # a marker whose run does not hold the part's claim (a run that lost it) is not trusted
    marker_path = root / "parts" / "part_00001.json"
    tampered = dict(json.loads(marker_path.read_text()), run="a-run-that-lost-its-claim")
    marker_path.write_text(json.dumps(tampered))
    r = _run(_cmd("blend", root / "parts", root / "out.zarr"))
    assert r.returncode == 3 and "does not hold its claim" in r.stderr.strip().splitlines()[-1]
    r = _run(_predict(setup, root, 1))
    assert r.returncode == 0 and "does not hold the claim as complete: doing predict part 1" in r.stderr


def test_a_frozen_run_loses_its_claim_and_cannot_complete_the_part(setup, clean, tmp_path):
    """SIGSTOP plays a partitioned node: the run stops renewing; another run waits one lease, takes the
    part over and finishes it; the frozen run, woken up, stops without a marker (or its marker is not
    trusted) and the output is still a clean run's."""
    root = tmp_path / "frozen"
    frozen = subprocess.Popen(_predict(setup, root, 0, "--quiet"), stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _checkpointed(root), frozen)
    os.kill(frozen.pid, signal.SIGSTOP)
    claim = json.loads((root / "parts" / "part_00000.claim.json").read_text())
    claim["host"] = "partitioned-node"  # its death cannot be seen from here: only the lease tells
    (root / "parts" / "part_00000.claim.json").write_text(json.dumps(claim))
    t = time.monotonic()
    taker = _run(_predict(setup, root, 0))
    assert taker.returncode == 0, taker.stderr
    assert time.monotonic() - t >= float(LEASE) and "has not renewed its claim" in taker.stderr
    marker = json.loads((root / "parts" / "part_00000.json").read_text())
    os.kill(frozen.pid, signal.SIGCONT)
    err = frozen.communicate(timeout=120)[1]
    assert frozen.returncode == BUSY, err
    assert "took the claim over" in err or "not renewed" in err
    assert json.loads((root / "parts" / "part_00000.json").read_text()) == marker  # the frozen run wrote no marker
    assert np.array_equal(_finish(setup, root), clean)
