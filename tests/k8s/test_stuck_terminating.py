"""A pod stuck Terminating (issue 24, point 3): its node stopped answering, so nothing confirms that the
container ended, and the Job (podReplacementPolicy: Failed) does not replace it: its part waits for ever,
"3/4 parts done, 0 running". The operator shows it as the ``PodsStuckTerminating`` condition naming the pod,
its node and the remedy (the out-of-service taint), and the run completes once a person applies it.

The situation is emulated as Kubernetes makes it (job_controller.py: the node lifecycle controller's
unreachable taint, the taint manager's deletion, the Job controller's ``status.terminating`` and its
tracking finalizer, PodGC's gcTerminating on out-of-service nodes); the remedy is run with real kubectl.
"""

from __future__ import annotations

import pytest
from job_controller import Node
from k8s.test_busy_cluster import condition, kubectl, spec_for
from k8s.test_decide import NOW, body, predict
from plugins.k8s import cond
from vesuvius_inference.k8s import stalls
from vesuvius_inference.k8s.decide import iso

GRACE = 300.0


def pod(name="ij-predict-2-abcde", node="gpu-7", deleted_ago=600.0, phase="Running", index="2"):
    meta = {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": index}}
    if deleted_ago is not None:
        meta["deletionTimestamp"] = iso(NOW - deleted_ago)
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase}}


def test_terminating_pods_are_read_only_when_the_job_counts_some():
    b = body(parts=4, parallelism=4)
    job = predict(b, active=1, done="0,1,3")
    assert not stalls.wanted_reads(job, 0)
    job["status"].update(active=0, ready=0, terminating=1)  # part 2's pod is being deleted; none replaces it
    assert stalls.wanted_reads(job, 0) == stalls.Reads(terminating=True)  # (today: no read at all)


@pytest.mark.parametrize("pods, found", [
    ([pod()], True),  # ten minutes past its grace period
    ([pod(deleted_ago=20.0)], False),  # a normal termination in progress
    ([pod(phase="Failed")], False),  # ended: the kubelet (or PodGC) confirmed it
    ([pod(deleted_ago=None)], False),  # not being deleted at all
])
def test_a_pod_terminating_past_the_grace_is_a_stall(pods, found):
    s = stalls.stuck_terminating(pods, NOW, GRACE)
    assert (s is not None) == found
    if found:
        assert s.kind == "PodsStuckTerminating" and s.reason == "StuckTerminating"
        assert "pod ij-predict-2-abcde on node gpu-7" in s.message and "part 2 waits" in s.message
        assert "kubectl taint nodes gpu-7 node.kubernetes.io/out-of-service=nodeshutdown:NoExecute" in s.message


def test_the_condition_clears_when_nothing_terminates():
    b = body(parts=4)
    job = predict(b, active=1, done="0,1")
    job["status"]["terminating"] = 1
    assert not stalls.cleared("PodsStuckTerminating", [job])
    job["status"]["terminating"] = 0
    assert stalls.cleared("PodsStuckTerminating", [job])


@pytest.mark.slow
def test_a_pod_stuck_terminating_names_its_node_and_the_taint_that_frees_it(cluster, operator, stub_controller):
    ctl = stub_controller
    ctl.nodes = [Node("gpu-a", gpus=1), Node("gpu-b", gpus=1)]
    ctl.stub(r"^stranded-predict$", held=True)
    ctl.hook("stranded-predict", 1, attempt=0, sleep=0.2)  # part 1 (on gpu-b) ends; part 0 (gpu-a) runs on
    cluster.create_ij(spec_for("stranded", parts=2))
    cluster.wait("part 1 done, part 0 running", lambda: (o := cluster.ij("stranded")) and
                 (o.get("status") or {}).get("parts", {}).get("succeeded") == 1 and ctl.running())
    ctl.lose_node("gpu-a")  # the node goes dark: its pod is deleted but never confirmed gone
    obj = condition(cluster, "stranded", "PodsStuckTerminating", timeout=60)
    c = cond(obj, "PodsStuckTerminating")
    stuck = [p for p in cluster.pods("stranded-predict") if p["metadata"].get("deletionTimestamp")]
    assert len(stuck) == 1 and stuck[0]["spec"]["nodeName"] == "gpu-a"
    assert f"pod {stuck[0]['metadata']['name']} on node gpu-a" in c["message"], c["message"]
    remedy = "kubectl taint nodes gpu-a node.kubernetes.io/out-of-service=nodeshutdown:NoExecute"
    assert remedy in c["message"] and "part 0 waits" in c["message"]
    assert "StuckTerminating" in [e["reason"] for e in cluster.events("stranded")]
    kubectl(cluster, *remedy.split()[1:])  # what the condition says to do, as a person would
    ctl.release()
    done = cluster.wait_phase("stranded", "Succeeded", timeout=120)
    assert cond(done, "PodsStuckTerminating")["status"] == "False"
    assert done["status"]["parts"]["failed"] == 0
    runs = [(r.index, r.attempt, r.action) for r in ctl.results_of("stranded-predict")]
    assert (0, 0, "Ignore") in runs and (0, 1, "Succeeded") in runs, runs  # PodGC freed it; a disruption
