"""CPU and memory requests (and a memory limit) for every stage's pods, derived when the spec gives none.

A pod without requests is BestEffort, the kubelet's first victim under node memory pressure: its
eviction manager ranks pods by whether their usage exceeds their requests, then by priority, then by
how far they exceed them (kubernetes pkg/kubelet/eviction/helpers.go, rankMemoryPressure with
exceedMemoryRequests, priority and memory), and any usage exceeds a request of zero. So every stage's
container gets requests sized from what the stage holds in memory, measured on this code (README,
Benchmarks):

- predict: ``inference.cacheGb`` (the accumulation cache; on a GPU the completed chunks and their pinned
  host copies stay within it), the model (nnU-Net's default 3d_fullres network is 31.2 M parameters,
  125 MB of float32 per fold, held on the host while loading; ``MODEL_GB_PER_FOLD`` keeps room for a
  checkpoint with optimizer state), and the runtime: torch with the CUDA libraries is about 2 GiB of
  host memory, torch on the CPU about 0.7 GB (bench_storage: "model alone 708 MB").
- blend and finalize: their ``cacheGb`` plus 0.5 GiB (measured peaks at cacheGb 1: 104 and 123 MB).

The pod asks for the memory it may use: its request equals its limit, the estimate plus a quarter (at least
1 GiB). Above the limit the kernel OOM-kills the container, a failure of the part's own (exit 137, no
DisruptionTarget: counted against retry.perPartLimit). At or below its request the kubelet's node-pressure
eviction never picks it for its own use: rankMemoryPressure orders pods using more than they request first
(exceedMemoryRequests), and a pod within its request is evicted only once none of those is left, i.e. when
the node itself ran short. So every disruption of such a pod (DisruptionTarget: preemption, drain,
consolidation, a taint, node loss, or that last-resort eviction) is the cluster's doing, and none of them
counts against the part (manifests.disruptions_bounded). No CPU limit
(CFS quotas throttle the host path's bursts); the worker sizes its threads to the CPU request it is
given through the downward API (cpuquota.py). A resource the spec names, under requests or limits, is
the spec's: Kubernetes sets a missing request to its limit (pkg/apis/core/v1/defaults.go,
SetDefaults_Pod), so nothing is added for it.
"""

from __future__ import annotations

import math
from typing import Any

GIB = 1024  # MiB
MODEL_GB_PER_FOLD = 0.5
DEFAULT_FOLDS = 5  # nnU-Net's cross-validation: every fold in the folder when spec.inference.folds is unset
RUNTIME_GB = {"cuda": 2.0, "cpu": 1.0}
CPUS = {"predict-cuda": 4, "predict-cpu": 8, "blend": 2, "finalize": 2, "check": 1}
STAGE_OVERHEAD_GB = 0.5
CHECK_MEMORY_MIB = 256


def _mib(gb: float) -> int:
    return int(math.ceil(gb * GIB / 64.0)) * 64  # whole 64 MiB steps: readable, and never below the need


def predict_memory_mib(spec: Any) -> int:
    inf = spec["inference"]
    device = "cpu" if str(inf.get("device", "cuda")).startswith("cpu") else "cuda"
    folds = len(inf.get("folds") or []) or DEFAULT_FOLDS
    return _mib(float(inf["cacheGb"]) + MODEL_GB_PER_FOLD * folds + RUNTIME_GB[device])


def stage_memory_mib(spec: Any, stage: str) -> int:
    if stage == "predict":
        return predict_memory_mib(spec)
    if stage == "check":
        return CHECK_MEMORY_MIB
    return _mib(float(spec[stage]["cacheGb"]) + STAGE_OVERHEAD_GB)


def stage_cpus(spec: Any, stage: str) -> int:
    if stage == "predict":
        device = str(spec["inference"].get("device", "cuda"))
        return CPUS["predict-cpu" if device.startswith("cpu") else "predict-cuda"]
    return CPUS[stage]


def memory_limit_mib(estimate_mib: int) -> int:
    return estimate_mib + max(GIB, _mib(estimate_mib / GIB / 4))


def derived(spec: Any, stage: str) -> dict[str, dict[str, str]]:
    """The requests and limits the operator adds when the spec names neither for a resource: memory requested
    as limited (the module docstring)."""
    memory = memory_limit_mib(stage_memory_mib(spec, stage))
    return {"requests": {"cpu": str(stage_cpus(spec, stage)), "memory": f"{memory}Mi"},
            "limits": {"memory": f"{memory}Mi"}}


def memory_within_request(resources: dict[str, dict[str, str]]) -> bool:
    """Whether a container's memory can never exceed its request: a limit, and a request equal to it (or none,
    which Kubernetes sets to the limit: pkg/apis/core/v1/defaults.go, SetDefaults_Pod)."""
    from vesuvius_inference.k8s.quantity import parse_quantity

    limit = (resources.get("limits") or {}).get("memory")
    request = (resources.get("requests") or {}).get("memory")
    if limit is None:
        return False
    return request is None or parse_quantity(request) >= parse_quantity(limit)


def fill_in(user: dict[str, dict[str, str]], spec: Any, stage: str) -> dict[str, dict[str, str]]:
    """``user`` (requests/limits as the spec gives them) completed with :func:`derived` for every resource
    among cpu and memory that the spec leaves out entirely."""
    out = {"requests": dict(user.get("requests") or {}), "limits": dict(user.get("limits") or {})}
    mine = derived(spec, stage)
    for resource in ("cpu", "memory"):
        if resource in out["requests"] or resource in out["limits"]:
            continue
        for kind in ("requests", "limits"):
            if resource in mine[kind]:
                out[kind][resource] = mine[kind][resource]
    return {k: v for k, v in out.items() if v}
