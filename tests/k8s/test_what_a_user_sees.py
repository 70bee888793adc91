"""The README's "What a user sees" during a preemption, a storage outage and a stuck node (issue 24, Must
show) is what these tests capture: real kubectl against the emulated API server (its Tables apply the CRD's
additionalPrinterColumns JSONPaths, as kube-apiserver's tableconvertor does: kmock_api.py), the real
operator, the Job controller fixture and Kueue's emulation. Pods are stubs that print the lines the worker's
own code formats (progress.ProgressLine for progress, storagewait.Outage for a wait on storage).

Each situation's text must be the README's block between its ``observed-k8s:<name>`` markers, compared
after the parts that differ from run to run are blanked (numbers, pods' random suffixes, uids, event
counts, column padding; Events in any order). When a message changes, regenerate:

    VESUVIUS_WRITE_K8S_VIEWS=1 pytest tests/k8s/test_what_a_user_sees.py

which rewrites the blocks from this run (and still fails, so that a stale README never passes silently).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from job_controller import Node
from k8s.test_busy_cluster import KUBECTL, condition, spec_for
from plugins.k8s import cond, run_kueue
from vesuvius_inference.contract.progress import ProgressLine

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
WRITE = "VESUVIUS_WRITE_K8S_VIEWS"
LOOSE = {"resources": {"requests": {"memory": "8Gi"}}}  # a bounded disruption count: exit 74 costs no retry


# ---- what the pods print: the worker's own formats ------------------------------------------------------

def progress(part: int, parts: int, done: int, total: int = 5000, rate: float = 3.1) -> str:
    return ProgressLine("predict", part, parts, done, total, "patches", rate, (total - done) / rate).format()


def storage_wait_line(url: str = "s3://scrolls/PHerc0332/volume.zarr/0/c/1/0/2") -> str:
    """The line a worker logs when its store stops answering: storagewait.Outage's own, for a refused
    connection to the endpoint (botocore's EndpointConnectionError, which errors.is_transient waits out)."""
    import botocore.exceptions
    from vesuvius_inference.store import storagewait

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep()
    storagewait.log.addHandler(keep)
    try:
        outage = storagewait.Outage(300, clock=lambda: 50.0)
        outage.began = 0.0  # 50 s into the outage
        outage.delay(botocore.exceptions.EndpointConnectionError(endpoint_url="http://minio:9000/" + url[5:]),
                     doing=f"reading {url}")
    finally:
        storagewait.log.removeHandler(keep)
    assert seen and seen[0].startswith(storagewait.PREFIX), seen
    return seen[0]


# ---- kubectl, and the README blocks --------------------------------------------------------------------

class Transcript:
    """Commands and what kubectl printed, as a person would paste them."""

    def __init__(self, cluster) -> None:
        self.cluster, self.parts = cluster, []

    def run(self, *args: str, keep=None) -> str:
        r = subprocess.run([KUBECTL, "--kubeconfig", self.cluster.kubeconfig, "-n", self.cluster.namespace, *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        shown = keep(r.stdout) if keep else r.stdout
        self.parts.append(f"$ kubectl {' '.join(args)}\n{shown.rstrip()}")
        return r.stdout

    def note(self, text: str) -> None:
        self.parts.append(f"# {text}")

    def text(self) -> str:
        return "\n".join(self.parts) + "\n"


def describe_excerpt(text: str) -> str:
    """``kubectl describe ij``: the conditions that hold (True) and the Events; the rest as ``...``."""
    lines = text.splitlines()
    out, i = ["..."], 0
    start = next(n for n, ln in enumerate(lines) if ln.strip() == "Conditions:")
    out.append(lines[start])
    i = start + 1
    block: list[str] = []
    while i < len(lines) and lines[i].startswith("    "):
        ln = lines[i]
        if ln.lstrip().startswith("Last Transition Time:") and block:
            if any(b.split() == ["Status:", "True"] for b in block):
                out += block
            block = []
        if not re.match(r"\s+(Last Transition Time|Observed Generation):", ln):
            block.append(ln)
        i += 1
    if any(b.split() == ["Status:", "True"] for b in block):
        out += block
    out.append("...")
    events = next(n for n, ln in enumerate(lines) if ln.startswith("Events:"))
    out += [ln for ln in lines[events:] if ln.strip() and not set(ln.strip()) <= {"-", " "}]
    return "\n".join(out)


def normalized(text: str) -> list[str]:
    """What must match: the words; not the numbers, random names, padding or the order of the Events, nor
    the Normal ``Queued`` Event, which depends on whether a pass saw the new Workload before Kueue admitted
    it."""
    out = []
    for ln in text.strip().splitlines():
        if re.match(r"\s*Normal\s+Queued\s", ln):
            continue
        ln = re.sub(r"\(x\d+ over [^)]*\)", "", ln)
        ln = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UID", ln)
        ln = re.sub(r"(-predict-\d+|-predict|-blend|-finalize)-[a-z0-9]{5}\b", r"\1-xxxxx", ln)
        ln = re.sub(r"\d+(\.\d+)?", "9", ln)
        out.append(" ".join(ln.split()))
    head = [ln for ln in out]
    if "Events:" in head:  # Events of the same second may come in either order
        n = head.index("Events:")
        end = next((k for k in range(n + 1, len(head)) if head[k].startswith("$ ")), len(head))
        head[n + 2:end] = sorted(head[n + 2:end])
    return head


def check_readme(name: str, text: str) -> None:
    begin, end = f"<!-- observed-k8s:{name}:begin -->", f"<!-- observed-k8s:{name}:end -->"
    readme = README.read_text()
    assert begin in readme and end in readme, f"README.md has no {begin} ... {end} block"
    head, rest = readme.split(begin, 1)
    block, tail = rest.split(end, 1)
    fresh = f"\n```console\n{text}```\n"
    if os.environ.get(WRITE):
        if block != fresh:
            README.write_text(head + begin + fresh + end + tail)
            pytest.fail(f"README.md's {name} block rewritten from this run: check the diff, then run again")
        return
    shown = block.strip().removeprefix("```console").removesuffix("```")
    assert normalized(shown) == normalized(text), (
        f"README.md's {name} block is not what the cluster shows now; regenerate with {WRITE}=1:\n{text}")


def workload_of(kueue, job: str) -> dict:
    return next(w for w in kueue.workloads() if any(r["name"] == job for r in w["metadata"]["ownerReferences"]))


def preempt_workload(kueue, wl: dict, preemptor_uid: str, job_uid: str) -> None:
    """Kueue's scheduler preempting a Workload for a higher-priority one in the same ClusterQueue
    (kueue pkg/scheduler/preemption/preemption.go, applyPreemptionWithSSA -> workload.SetEvictedCondition with
    reason ``Preempted`` and preemptionMessage; the ``Preempted`` condition with reason ``InClusterQueue``):
    the job reconciler then suspends the Job, which deletes every pod of it at once."""
    conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
    message = (f"Preempted to accommodate a workload (UID: {preemptor_uid}, JobUID: {job_uid}) due to "
               "prioritization in the ClusterQueue")
    from k8s.kueue import _set

    _set(conds, "Evicted", "True", "Preempted", message)
    _set(conds, "Preempted", "True", "InClusterQueue", message)
    kueue._status(wl, {"conditions": conds})


# ---- the situations ------------------------------------------------------------------------------------

@pytest.mark.own_cluster("Kueue is installed cluster-wide (run_kueue): its CRDs and webhook are the server's")
def test_a_preemption(cluster, operator, stub_controller):
    """Kueue preempts the run's Workload: every predict pod is deleted at once; the run shows Evicted with
    Kueue's reason and message, is admitted again by itself, and the new pods resume."""
    ctl, t = stub_controller, Transcript(cluster)
    ctl.stub(r"-predict$", held=True, lines=("loading model", progress(0, 2, 1240)))
    with run_kueue(cluster) as kueue:
        cluster.create_ij(spec_for("scroll1", parts=2, queueName="gpu-queue"))
        cluster.wait("both parts report", lambda: (o := cluster.ij("scroll1")) and (
            (o.get("status") or {}).get("progress") or {}).get("sampledPods") == 2 and o, timeout=60)
        t.run("get", "ij")
        job = cluster.jobs("scroll1")["scroll1-predict"]
        preempt_workload(kueue, workload_of(kueue, "scroll1-predict"), str(uuid.uuid4()), job["metadata"]["uid"])
        condition(cluster, "scroll1", "Evicted", timeout=60)
        t.run("get", "ij")
        described = t.run("describe", "ij", "scroll1", keep=describe_excerpt)
        assert "Preempted to accommodate a workload" in described
        # kopf's last-handled configuration is a line of digests, not the spec as JSON (annotation or status)
        assert "Last - Handled - Configuration" not in described and '{"spec"' not in described, described
        cluster.wait("admitted again, pods running", lambda: (o := cluster.ij("scroll1")) and
                     cond(o, "Evicted") and cond(o, "Evicted")["status"] == "False" and
                     o["status"].get("reason") == "Predicting" and (o["status"].get("run") or {}).get("eta") != "-"
                     and len([k for k in ctl.running() if k[0] == "scroll1-predict"]) == 2, timeout=60)
        t.run("get", "ij")
        pod = next(p["metadata"]["name"] for p in cluster.pods("scroll1-predict")
                   if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running")
        t.run("logs", pod)
        ctl.release()
        cluster.wait_phase("scroll1", "Succeeded", timeout=90)
        t.run("get", "ij")
    assert [r.action for r in ctl.results_of("scroll1-predict")].count("Failed") == 0
    check_readme("preemption", t.text())


def test_a_storage_outage(cluster, operator, stub_controller):
    """The store stops answering: pods wait (their log says until when), the run shows StorageUnreachable; a
    pod that gave up (exit 74) is replaced at once, costing the part none of its retries."""
    ctl, t = stub_controller, Transcript(cluster)
    line = storage_wait_line()
    ctl.hook("scroll2-predict", 0, attempt=0, exit_code=74, held=True, lines=(progress(0, 2, 2100), line),
             message="error: reading s3://scrolls/PHerc0332/volume.zarr/0/c/1/0/2: storage unreachable for longer "
                     "than --storage_wait_s 300 (EndpointConnectionError: ...)")
    ctl.hook("scroll2-predict", 0, attempt=1, sleep=0.2)
    ctl.stub(r"-predict$", held=True, lines=(progress(1, 2, 2300),))  # part 1 reads chunks it had cached
    cluster.create_ij(spec_for("scroll2", parts=2, retry={"perPartLimit": 0}, predict=LOOSE))
    obj = condition(cluster, "scroll2", "StorageUnreachable", timeout=60)
    assert cond(obj, "StorageUnreachable")["reason"] == "WaitingForStorage"
    t.run("get", "ij")
    t.run("describe", "ij", "scroll2", keep=describe_excerpt)
    pod = next(p["metadata"]["name"] for p in cluster.pods("scroll2-predict")
               if p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index") == "0")
    t.run("logs", pod)
    ctl.release()
    done = cluster.wait_phase("scroll2", "Succeeded", timeout=90)
    assert done["status"]["parts"]["failed"] == 0
    t.run("get", "ij")
    check_readme("outage", t.text())


def test_a_stuck_node(cluster, operator, stub_controller):
    """A node stops answering with a pod on it: the pod stays Terminating and no replacement starts; the run
    names the pod, the node and the taint that frees it; once a person applies it the part runs elsewhere."""
    ctl, t = stub_controller, Transcript(cluster)
    ctl.nodes = [Node("gpu-a", gpus=1), Node("gpu-b", gpus=1)]
    ctl.stub(r"^scroll3-predict$", held=True, lines=(progress(0, 2, 800),))
    ctl.hook("scroll3-predict", 1, attempt=0, sleep=0.2)
    cluster.create_ij(spec_for("scroll3", parts=2))
    cluster.wait("part 1 done, part 0 running", lambda: (o := cluster.ij("scroll3")) and
                 (o.get("status") or {}).get("parts", {}).get("succeeded") == 1 and ctl.running())
    ctl.lose_node("gpu-a")
    obj = condition(cluster, "scroll3", "PodsStuckTerminating", timeout=60)
    remedy = re.search(r"kubectl (taint nodes \S+ \S+)", cond(obj, "PodsStuckTerminating")["message"])
    t.run("get", "ij")
    t.run("describe", "ij", "scroll3", keep=describe_excerpt)
    t.run(*remedy.group(1).split())
    ctl.release()
    done = cluster.wait_phase("scroll3", "Succeeded", timeout=90)
    assert done["status"]["parts"]["failed"] == 0
    t.run("get", "ij")
    check_readme("stuck-node", t.text())
