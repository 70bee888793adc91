"""A device asked for is a device used: ``--device cuda``/``cuda:N`` that this process cannot use exits 69
(EX_UNAVAILABLE, retried elsewhere by Kubernetes) with one line saying what to check, before anything is
written; it never runs on the CPU instead. Without a device asked for, the CPU is chosen with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import run_cli, smooth_volume, write_zarr

cli = run_cli  # in-process; the first unusable device runs as a real process (its exit status, its termination log)


def real_process(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def unusable_devices() -> list[str]:
    n = _visible_gpus()
    return ["cuda", "cuda:3"] if n == 0 else [f"cuda:{n}", f"cuda:{n + 7}"]


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    return write_zarr(tmp_path_factory.mktemp("dev") / "in.zarr", smooth_volume((16, 32, 32), seed=2), chunks=(16, 32, 32))


@pytest.mark.parametrize("device", unusable_devices())
def test_a_gpu_asked_for_and_not_usable_exits_69_before_writing(volume, model2, tmp_path, device):
    term = tmp_path / "termination-log"
    run = real_process if device == unusable_devices()[0] else cli
    r = run("predict", "--model_path", model2, "--input_dir", volume, "--output_dir", tmp_path / "parts",
            "--device", device, "--disable_tta", env={"VESUVIUS_TERMINATION_LOG": str(term)})
    assert r.returncode == 69, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "running on the CPU" not in r.stderr
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert last.startswith(f"error: --device {device}:"), last
    for what in ("CUDA_VISIBLE_DEVICES", "driver", "runtimeClassName", "device plugin"):
        assert what in last, (what, last)
    assert term.read_text() == last + "\n"  # the operator reads it as the pod's termination message
    assert not (tmp_path / "parts").exists()  # not even the part's claim


@pytest.mark.skipif(_visible_gpus() > 0, reason="GPUs named with --gpus are usable on this machine")
def test_pipeline_gpus_named_on_a_machine_without_them_exit_69(volume, model2, tmp_path):
    out = tmp_path / "out.zarr"
    r = cli("pipeline", "--input", volume, "--output", out, "--model", model2, "--gpus", "0,1", "--disable-tta")
    assert r.returncode == 69, (r.returncode, r.stderr[-2000:])
    assert [x for x in r.stderr.splitlines() if x.strip()][-1].startswith("error: --gpus 0,1:")
    assert not out.exists() and not (tmp_path / "out.zarr_work").exists()


def test_argument_errors_reach_the_termination_message_too(tmp_path):
    term = tmp_path / "termination-log"
    r = cli("predict", "--model_path", "m", env={"VESUVIUS_TERMINATION_LOG": str(term)})
    assert r.returncode == 2
    assert term.read_text().startswith("error: vesuvius.predict: the following arguments are required")
