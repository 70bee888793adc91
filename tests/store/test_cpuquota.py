"""Thread counts follow the container's CPU quota (cgroup v2 and v1), then the pod's CPU request, then the
CPUs the process may run on: cgroup trees written the way the kernel presents them."""

from __future__ import annotations

from pathlib import Path

from vesuvius_inference.store import cpuquota


def v2(tmp: Path, cpu_max: str, nested: str | None = None) -> tuple[str, str]:
    root = tmp / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cpu.max").write_text("max 100000\n")
    own = root / "kubepods" / "pod1" / "ctr"
    own.mkdir(parents=True)
    (own / "cpu.max").write_text(cpu_max + "\n")
    if nested:
        (root / "kubepods" / "cpu.max").write_text(nested + "\n")
    return str(root), "0::/kubepods/pod1/ctr\n"


def test_cgroup_v2_quota_rounds_up_and_never_exceeds_the_affinity(tmp_path):
    root, proc = v2(tmp_path, "250000 100000")  # 2.5 CPUs
    assert cpuquota.available_cpus({}, root, proc, affinity=64) == 3
    assert cpuquota.available_cpus({}, root, proc, affinity=2) == 2


def test_cgroup_v2_a_parents_limit_counts_and_max_means_none(tmp_path):
    root, proc = v2(tmp_path, "max 100000", nested="400000 100000")
    assert cpuquota.available_cpus({"VESUVIUS_CPUS": "8"}, root, proc, affinity=64) == 4
    (tmp_path / "x").mkdir()
    root2, proc2 = v2(tmp_path / "x", "max 100000")
    # no quota anywhere: the request the pod was given (downward API), else every CPU it may run on
    assert cpuquota.available_cpus({"VESUVIUS_CPUS": "8"}, root2, proc2, affinity=64) == 8
    assert cpuquota.available_cpus({}, root2, proc2, affinity=64) == 64


def test_cgroup_v1_quota(tmp_path):
    root = tmp_path / "cg1"
    own = root / "cpu,cpuacct" / "kubepods" / "burstable" / "pod1"
    own.mkdir(parents=True)
    (own / "cpu.cfs_quota_us").write_text("400000\n")
    (own / "cpu.cfs_period_us").write_text("100000\n")
    proc = "12:cpu,cpuacct:/kubepods/burstable/pod1\n11:memory:/kubepods/burstable/pod1\n"
    assert cpuquota.available_cpus({}, str(root), proc, affinity=64) == 4
    (own / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert cpuquota.available_cpus({"VESUVIUS_CPUS": "2"}, str(root), proc, affinity=64) == 2


def test_threads_follow_the_cpus():
    small, big = cpuquota.plan(1), cpuquota.plan(64)
    assert (small.torch_intra, small.torch_interop, small.io_threads, small.writers) == (1, 1, 2, 1)
    assert (big.torch_intra, big.torch_interop, big.io_threads, big.writers) == (64, 4, 16, 4)
    assert cpuquota.plan().cpus >= 1  # this machine, whatever it is


def test_torch_threads_wait_passively_unless_told_otherwise():
    """The package sets OMP_WAIT_POLICY before torch can load (a default: an explicit setting wins)."""
    import os
    import subprocess
    import sys

    code = "import os, vesuvius_inference; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, OMP_WAIT_POLICY="ACTIVE"), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
