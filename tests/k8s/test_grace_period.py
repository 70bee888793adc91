"""The emulated kubelet stops a deleted pod as the real one does (issue 24, point 2): SIGTERM, then SIGKILL once
the pod's own ``terminationGracePeriodSeconds`` is over (pkg/kubelet/kuberuntime/kuberuntime_container.go,
killContainer; minimumGracePeriodInSeconds 2 s), here on a time-scaled cluster (``grace_scale``).

A preempted pod whose stop (the batch in flight and its checkpoint) fits in its grace exits 80, which the
podFailurePolicy ignores; one whose stop outlasts the grace is SIGKILLed (137): what the operator's derived grace
(k8s/grace.py) is there to prevent. Stub pods (job_controller.Hook ``stop_s``) play predict's SIGTERM handler:
the real one is tested in tests/predict/test_signals.py.
"""

from __future__ import annotations

import time

GRACE_S = 20  # the pod's terminationGracePeriodSeconds
SCALE = 0.1  # 2 s here


def _job(name: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimitPerIndex": 0,
                     "podReplacementPolicy": "Failed",
                     "podFailurePolicy": {"rules": [
                         {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]},
                     "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": GRACE_S,
                                           "containers": [{"name": "predict", "image": "worker:test"}]}}}}


def test_a_pod_gets_its_own_grace_period_then_sigkill(cluster, stub_controller):
    ctl = stub_controller
    ctl.grace_scale = SCALE
    # index 0 checkpoints in 0.3 s (within its 2 s grace), index 1 would take 30 s: SIGKILLed at the grace's end
    ctl.hook("graceful", 0, sleep=60, stop_s=0.3, preempt_after=0.5)
    ctl.hook("graceful", 1, sleep=60, stop_s=30, preempt_after=0.5)
    ctl.hook("graceful", 0, attempt=1, sleep=0.1)
    ctl.hook("graceful", 1, attempt=1, sleep=0.1)
    cluster.batch.create_namespaced_job(cluster.namespace, _job("graceful"))
    first = cluster.wait("both first pods ended", lambda: (lambda r: r if len(r) >= 2 else None)(
        [r for r in ctl.results_of("graceful") if r.attempt == 0]), timeout=60)
    by_index = {r.index: r for r in first}
    assert (by_index[0].exit_code, by_index[0].action) == (80, "Ignore"), first
    assert (by_index[1].exit_code, by_index[1].action) == (137, "Ignore"), first
    # SIGKILL came at the end of the scaled grace, not at once and not after the 30 s stop
    lived = by_index[1].seconds - 0.5
    assert GRACE_S * SCALE - 0.2 <= lived < GRACE_S * SCALE + 5, lived
    assert by_index[0].seconds < by_index[1].seconds
    cluster.wait("the Job complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in (cluster.jobs()["graceful"].get("status") or {}).get("conditions") or []), timeout=30)


def test_a_terminating_pod_counts_as_terminating_not_active(cluster, stub_controller):
    """While its grace runs the pod is Terminating: the Job's status counts it in ``terminating`` (syncJob,
    countTerminatingPods) and, with podReplacementPolicy Failed, no replacement starts before it ends."""
    ctl = stub_controller
    ctl.grace_scale = SCALE
    ctl.hook("slowstop", 0, sleep=60, stop_s=1.5, preempt_after=0.3)
    ctl.hook("slowstop", 1, sleep=0.1)
    ctl.hook("slowstop", 0, attempt=1, sleep=0.1)
    cluster.batch.create_namespaced_job(cluster.namespace, _job("slowstop"))
    st = cluster.wait("index 0 terminating", lambda: (lambda s: s if s.get("terminating") else None)(
        cluster.jobs()["slowstop"].get("status") or {}), timeout=30)
    assert st.get("terminating") == 1
    assert not any(i == 0 and a == 1 for j, i, a in ctl.pods_started if j == "slowstop")  # no replacement yet
    t0 = time.monotonic()
    cluster.wait("the replacement of index 0", lambda: any(
        j == "slowstop" and i == 0 and a == 1 for j, i, a in ctl.pods_started), timeout=30)
    assert time.monotonic() - t0 < 10
