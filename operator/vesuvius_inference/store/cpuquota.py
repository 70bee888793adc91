"""How many CPUs this process may use, and the thread counts that follow: the container's CPU quota, not
the machine's cores. Torch-free.

A pod limited to 4 CPUs on a 64-core GPU node sees 64 cores in ``os.cpu_count()``; torch sizes its
intra-op pool to them and the CFS quota then throttles the container every period (100 ms) once 64
threads burned its 4 CPUs' worth, so it runs in bursts. Parallel regions wait for their slowest thread,
so oversubscription costs far more than the share lost. Where the CPUs come from, first found wins:

1. the cgroup's CPU quota: v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD"), v1 ``cpu.cfs_quota_us`` /
   ``cpu.cfs_period_us`` (-1: none), the smallest along this process's own cgroup (``/proc/self/cgroup``)
   and its parents, rounded up;
2. ``VESUVIUS_CPUS``: the CPU request the operator's pods get through the downward API (a pod without a
   CPU limit has no quota, but it asked for this many);
3. the CPUs this process may run on (``os.sched_getaffinity``: cpusets, taskset).

The quota and the request never raise the count above the affinity. And torch's OpenMP threads wait
passively (``OMP_WAIT_POLICY=PASSIVE``, set by the package before torch loads): on CPUs shared with other
work a spinning waiter takes the time slices the thread it waits for needs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _own_cgroup(proc_cgroup: str, controller: str | None) -> str:
    """This process's cgroup path for ``controller`` (None: the v2 unified hierarchy, ``0::/path``)."""
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controller is None and hid == "0" and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return "/"


def _candidates(root: Path, path: str) -> list[Path]:
    """The cgroup's own directory, then its parents up to the mount (inside a container the namespace's
    root is the container's cgroup, so "/" is the one to read)."""
    out, p = [], Path(path.strip("/"))
    while True:
        out.append(root / p)
        if str(p) in ("", "."):
            return out
        p = p.parent


def quota_v2(root: Path, proc_cgroup: str) -> float | None:
    """The smallest ``cpu.max`` quota along this cgroup and its parents (each limits what is below it)."""
    found = []
    for d in _candidates(root, _own_cgroup(proc_cgroup, None)):
        words = (d / "cpu.max").read_text().split() if (d / "cpu.max").is_file() else []
        if len(words) >= 2 and words[0] != "max":
            found.append(int(words[0]) / int(words[1]))
    return min(found) if found else None


def quota_v1(root: Path, proc_cgroup: str) -> float | None:
    found = []
    for d in _candidates(root, _own_cgroup(proc_cgroup, "cpu")):
        q, p = d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us"
        if q.is_file() and p.is_file():
            quota, period = int(q.read_text().strip()), int(p.read_text().strip())
            if quota > 0 and period > 0:
                found.append(quota / period)
    return min(found) if found else None


def available_cpus(env: Mapping[str, str] | None = None, root: str = "/sys/fs/cgroup",
                   proc_cgroup: str | None = None, affinity: int | None = None) -> int:
    """The CPUs this process should plan for (module docstring)."""
    env = os.environ if env is None else env
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    base = Path(root)
    quota = quota_v2(base, proc_cgroup) if (base / "cgroup.controllers").exists() else None
    if quota is None:
        quota = quota_v1(base / "cpu", proc_cgroup) or quota_v1(base / "cpu,cpuacct", proc_cgroup)
    if quota is not None:
        return max(1, min(affinity, math.ceil(quota - 1e-9)))
    try:
        request = float(env.get("VESUVIUS_CPUS") or 0)
    except ValueError:
        request = 0.0
    if request > 0:
        return max(1, min(affinity, math.ceil(request)))
    return max(1, affinity)


@dataclass(frozen=True)
class ThreadPlan:
    cpus: int
    torch_intra: int  # torch.set_num_threads: the compute on the host (normalisation on the CPU, the host path)
    torch_interop: int
    io_threads: int  # input chunk fetches: mostly waiting on storage, a few more than the CPUs
    writers: int  # output and part-store writes (compression holds a CPU)


def plan(cpus: int | None = None) -> ThreadPlan:
    n = available_cpus() if cpus is None else max(1, int(cpus))
    return ThreadPlan(cpus=n, torch_intra=n, torch_interop=min(n, 4), io_threads=min(16, max(2, 2 * n)),
                      writers=min(4, n))


def size_torch(p: ThreadPlan | None = None) -> ThreadPlan:
    """Set torch's pools to the plan (torch is imported by the caller already: the engine's)."""
    import torch

    p = p or plan()
    torch.set_num_threads(p.torch_intra)
    try:
        torch.set_num_interop_threads(p.torch_interop)
    except RuntimeError:  # only before the first inter-op parallel work; later it keeps what it has
        pass
    return p
