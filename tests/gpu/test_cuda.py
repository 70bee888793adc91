"""The numerical contract on a CUDA GPU (run by tools/gpu_check.sh; skipped without one).

Under autocast nnU-Net's own predictor is the reference: our blended logits must lie within that
predictor's own error, measured against its float32-accumulated twin on the same GPU (tests/oracle.py),
and the device path must keep part-count invariance (identical bytes) and resume after a kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from helpers import smooth_volume, write_zarr
from oracle import nnunet_logits, normalize_like_nnunet
from vesuvius_inference.contract.config import BlendConfig, PredictConfig
from vesuvius_inference.predict.stage import run_predict
from vesuvius_inference.stages.blend import run_blend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: run tools/gpu_check.sh on one")
SHAPE = (96, 160, 128)


def _ours(tmp, model, inp, parts, tta):
    out = tmp / f"b_{parts}_{tta}.zarr"
    for p in range(parts):
        run_predict(PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(tmp / f"p_{parts}_{tta}"), part_id=p, num_parts=parts,
                                  device="cuda:0", do_tta=tta, batch_size=2, blended_output=str(out), quiet=True,
                                  chunk_size=(32, 48, 48)))
    run_blend(BlendConfig(parts_dir=str(tmp / f"p_{parts}_{tta}"), output=str(out), quiet=True))
    return zarr.open_array(str(out), mode="r")[:]


@pytest.fixture(scope="module")
def case(tmp_path_factory, model_factory):
    tmp = tmp_path_factory.mktemp("cuda")
    model = model_factory(patch=(64, 64, 64), folds=(0,), features=(8, 16, 32, 64))
    vol = smooth_volume(SHAPE, seed=3)
    return tmp, model, write_zarr(tmp / "in.zarr", vol, chunks=(32, 64, 64)), vol


@pytest.mark.parametrize("tta", [False, True])
def test_blended_logits_within_nnunets_own_error_on_the_gpu(case, tta):
    tmp, model, inp, vol = case
    normalized = normalize_like_nnunet(model, vol[None])
    ref32 = nnunet_logits(model, normalized, mirroring=tta, folds=(0,), fp32_accumulation=True, device="cuda")
    ref16 = nnunet_logits(model, normalized, mirroring=tta, folds=(0,), fp32_accumulation=False, device="cuda")
    ours = _ours(tmp, model, inp, 1, tta).astype(np.float32)
    m = 8
    inner = (slice(None), slice(m, -m), slice(m, -m), slice(m, -m))
    own = np.abs(ref16[inner] - ref32[inner]).max()
    err = np.abs(ours[inner] - ref32[inner]).max()
    print(f"cuda tta={tta}: ours vs nnU-Net fp32-accumulated {err:.4f}, nnU-Net's own fp16 error {own:.4f}")
    assert err <= max(1e-2, 2 * own)


def test_part_count_invariance_on_the_gpu(case):
    tmp, model, inp, _ = case
    one, three = _ours(tmp, model, inp, 1, False), _ours(tmp, model, inp, 3, False)
    assert np.array_equal(one, three, equal_nan=True)


def test_kill_and_resume_on_the_gpu(case):
    tmp, model, inp, _ = case
    common = ["--model_path", str(model), "--input_dir", inp, "--device", "cuda:0", "--disable_tta",
              "--chunk_size", "32,48,48", "--batch_size", "2", "--quiet"]
    cmd = [sys.executable, "-m", "vesuvius_inference.cli", "predict", *common]
    assert subprocess.run(cmd + ["--output_dir", str(tmp / "clean")]).returncode == 0
    proc = subprocess.Popen(cmd + ["--output_dir", str(tmp / "killed"), "--checkpoint_s", "0"])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((tmp / "killed").glob("part_00000/*/checkpoint.json")):
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "predict finished before a checkpoint could be killed"
    assert subprocess.run(cmd + ["--output_dir", str(tmp / "killed")]).returncode == 0
    for d in ("clean", "killed"):
        run_blend(BlendConfig(parts_dir=str(tmp / d), output=str(tmp / f"{d}.zarr"), quiet=True))
    assert np.array_equal(zarr.open_array(str(tmp / "clean.zarr"), mode="r")[:],
                          zarr.open_array(str(tmp / "killed.zarr"), mode="r")[:], equal_nan=True)
