"""How long a predict pod may take to stop: its ``terminationGracePeriodSeconds``. Pure.

A pod being preempted, drained or evicted gets SIGTERM, then SIGKILL once the grace period is over
(kubelet, pkg/kubelet/kuberuntime/kuberuntime_container.go, killContainer; the default is 30 s). On
SIGTERM a predict part finishes the batch in flight, writes its checkpoint, releases its claim and
exits EXIT_STOPPED (signals.py), which the Job's podFailurePolicy ignores. All of it must fit in the
grace period, or the SIGKILL throws the work since the last periodic checkpoint away. So::

    grace = EXIT_S + batch + checkpoint                        (rounded up, at least the default 30 s)
    batch = batchSize x passes per patch (8 with mirroring TTA, else 1) x folds (5 when not given)
            x PASS_S at 128^3 (by device) x patch voxels / 128^3
    checkpoint = inference.cacheGb GiB / WRITE_BYTES_PER_S

- The batch: at most one batch is in flight when the signal comes. PASS_S is one forward pass of
  nnU-Net's default 3d_fullres network (31.2 M parameters, 0.95 TFLOP per 128^3 patch, NOTES.md) with
  a wide margin: a few ms of compute on an H100/H200, taken as 0.1 s with the host path; about 10 s on
  16 CPU cores (``device: cpu`` pods).
- The checkpoint: a stop's checkpoint is one journal delta (checkpoint.py; measured at a few hundred
  bytes and ~10-40 ms on a test part, whatever the part's size) plus the partial sums of the cached
  chunks changed since the last checkpoint, at most the whole accumulation cache (``cacheGb``). They are
  written by the part's writer threads; WRITE_BYTES_PER_S = 100 MiB/s is a conservative rate for one
  pod writing to S3-compatible storage (compressed int64 sums; local disks are much faster).
- EXIT_S: noticing the signal at the batch boundary, releasing the claim (one conditional write),
  cancelling the I/O still in flight (failure.cancel_pending_io waits up to 2 s) and exiting.

Default spec (batch 1, TTA, 5 folds, 128^3 assumed when the plans decide, cacheGb 4, cuda): 10 + 4 +
41 = 55 s. A lower ``cacheGb`` or a shorter ``checkpointSeconds`` does not change the bound's form: the
dirty part of the cache is what the stop writes.
"""

from __future__ import annotations

import math
from typing import Any

EXIT_S = 10.0
PASS_S = {"cuda": 0.1, "cpu": 10.0}  # seconds per 128^3 forward pass of the default 3d_fullres network
REFERENCE_VOXELS = 128 ** 3
DEFAULT_FOLDS = 5  # nnU-Net trains five folds; a model folder's folds are not known to the operator
WRITE_BYTES_PER_S = 100 * (1 << 20)
MIN_GRACE_S = 30  # Kubernetes' default: never shorter
MAX_GRACE_S = 3600


def predict_grace_seconds(spec: Any) -> int:
    """``terminationGracePeriodSeconds`` of a predict pod (see the module docstring for the derivation); ``spec``
    has its defaults applied (spec.parse: the settings' own, never repeated here)."""
    inf = spec["inference"]
    patch = inf.get("patchSize") or [128, 128, 128]
    voxels = int(patch[0]) * int(patch[1]) * int(patch[2])
    passes = 8 if inf["tta"] else 1
    folds = len(inf.get("folds") or []) or DEFAULT_FOLDS
    device = "cpu" if str(inf["device"]).startswith("cpu") else "cuda"
    batch = int(inf["batchSize"]) * passes * folds * PASS_S[device] * voxels / REFERENCE_VOXELS
    checkpoint = float(inf["cacheGb"]) * (1 << 30) / WRITE_BYTES_PER_S
    return int(min(MAX_GRACE_S, max(MIN_GRACE_S, math.ceil(EXIT_S + batch + checkpoint))))
