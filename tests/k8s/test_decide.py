"""The pure middle of a pass (decide.py, stalls.py, kueue.py, progressview.py): what the operator concludes
from Jobs, Workloads, and the small pod and Event samples, and what it plans. Shapes are as the API
server and the controllers write them (the end-to-end tests run the same situations against the
emulated controllers: test_busy_cluster.py, test_operator_lifecycle.py, test_spec_wiring_e2e.py), each once for
the wiring; the situations themselves are told apart here."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import yaml
from vesuvius_inference.contract.progress import ProgressLine, parse_line
from vesuvius_inference.k8s import kueue, manifests, progressview, stalls
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.decide import Diagnosis, Observed, Outcomes, decide
from vesuvius_inference.k8s.metrics import Registry
from vesuvius_inference.k8s.passes import Passes

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EARLIER = "2025-12-31T23:00:00Z"  # an hour before NOW


def body(name="ij", status=None, **spec):
    raw = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"]
    raw.update(spec)
    return {"metadata": {"name": name, "namespace": "ns", "uid": "uid-ij", "generation": 1, "resourceVersion": "7"},
            "spec": raw, "status": status or {}}


def predict(b, *, active=0, ready=None, failed=0, done="", parallelism=None, suspend=False, queue=None, uid="job-1"):
    s = specmod.parse(b["spec"])
    d = manifests.OperatorDefaults(queue_name=queue)
    j = manifests.predict_job(b["metadata"]["name"], "ns", "uid-ij", spec=s, defaults=d)
    j["metadata"]["uid"] = uid
    j["spec"]["suspend"] = suspend
    if parallelism is not None:
        j["spec"]["parallelism"] = parallelism
    j["status"] = {"active": active, "ready": active if ready is None else ready, "failed": failed,
                   "completedIndexes": done}
    return j


def settle(b, jobs, **kw):
    obs = Observed("ns", b, jobs, manifests.OperatorDefaults(), NOW, **kw)
    first = decide(obs)
    assert first.creates == [], [c[1]["metadata"]["name"] for c in first.creates]
    return decide(obs, Outcomes())


def cond(status, kind):
    return next((c for c in status["conditions"] if c["type"] == kind), None)


# ---- the ledger decides which reads a pass makes -------------------------------------------------------

def test_a_healthy_job_of_10000_parts_calls_for_no_reads():
    b = body(parts=10000, parallelism=64)
    healthy = predict(b, active=64, done="0-4999")
    assert not stalls.wanted_reads(healthy, failed_seen=0)
    assert stalls.expected_active(healthy) == 64
    short = predict(b, active=10, done="0-4999")  # pods not created: the Job controller's Events say why
    assert stalls.wanted_reads(short, 0) == stalls.Reads(events=True)
    waiting = predict(b, active=64, ready=60, done="0-4999")  # pods that do not start: the Pending ones
    assert stalls.wanted_reads(waiting, 0) == stalls.Reads(pending=True)
    dying = predict(b, active=64, failed=3, done="0-4999")  # pods that die: the Failed ones, once per change
    assert stalls.wanted_reads(dying, 0) == stalls.Reads(failed=True) and not stalls.wanted_reads(dying, 3)
    end = predict(b, active=3, done="0-9996")  # only 3 parts left: 3 pods is all there should be
    assert not stalls.wanted_reads(end, 0)
    assert not stalls.wanted_reads(predict(b, suspend=True), 0)


# ---- stalls: one condition per kind, with what to do ---------------------------------------------------

def quota_event(job, count=4):
    return {"reason": "FailedCreate", "count": count, "lastTimestamp": EARLIER, "involvedObject": {
        "uid": job["metadata"]["uid"]}, "message": 'Error creating: pods "ij-predict-3-" is forbidden: exceeded quota: '
            'gpu-quota, requested: nvidia.com/gpu=1, used: nvidia.com/gpu=2, limited: nvidia.com/gpu=2'}


def test_pods_not_created_becomes_a_condition_and_clears_by_the_counts_alone():
    b = body(parts=8)
    short = predict(b, active=2)
    plan = settle(b, [short], diagnoses={"job-1": Diagnosis(events=[quota_event(short)])})
    c = cond(plan.status, "PodsNotCreated")
    assert c["status"] == "True" and c["reason"] == "ResourceQuotaExceeded"
    assert "exceeded quota: gpu-quota" in c["message"] and "lower spec.parallelism" in c["message"]
    assert "(4 times)" in c["message"]
    assert ("Warning", "ResourceQuotaExceeded", c["message"]) in plan.events
    # next pass reads nothing (rate bound): the condition stays while the counts still show the stall ...
    again = settle(body(parts=8, status=plan.status), [short])
    assert cond(again.status, "PodsNotCreated")["status"] == "True" and not again.events
    # ... and resolves when the Job has every pod it wants, without a read
    ok = settle(body(parts=8, status=plan.status), [predict(b, active=8)])
    assert cond(ok.status, "PodsNotCreated")["status"] == "False"


def test_the_admission_refusals_a_batch_run_meets_each_get_their_advice():
    cases = [("error looking up service account ns/vesuvius-worker: serviceaccount \"vesuvius-worker\" not found",
              "ServiceAccountNotFound", "spec.serviceAccountName"),
             ("no PriorityClass with name batch-low was found", "PriorityClassNotFound", "spec.priorityClassName")]
    for message, reason, advice in cases:
        e = {"reason": "FailedCreate", "lastTimestamp": EARLIER,
             "message": f'Error creating: pods "ij-predict-0-" is forbidden: {message}'}
        s = stalls.not_created([e], "ij-predict")
        assert s.reason == reason and advice in s.message and message in s.message


def pending_pod(name, *, unschedulable=None, waiting=None, since=EARLIER):
    st = {"phase": "Pending", "conditions": []}
    if unschedulable:
        st["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": unschedulable, "lastTransitionTime": since})
    if waiting:
        st["containerStatuses"] = [{"name": "predict", "state": {"waiting": {"reason": waiting[0],
                                                                             "message": waiting[1]}}}]
    return {"metadata": {"name": name, "creationTimestamp": since}, "status": st}


def test_unschedulable_and_image_pull_stalls_after_the_grace_period():
    b = body(parts=4)
    job = predict(b, active=4, ready=0)
    msg = "0/12 nodes are available: 4 Insufficient nvidia.com/gpu, 8 node(s) didn't match Pod's node affinity/selector"
    pods = [pending_pod("ij-predict-0-a", unschedulable=msg),
            pending_pod("ij-predict-1-b", waiting=("ImagePullBackOff", 'Back-off pulling image "registry.invalid/x"')),
            pending_pod("ij-predict-2-c", unschedulable=msg, since="2025-12-31T23:59:58Z")]  # 2 s: not yet
    plan = settle(b, [job], diagnoses={"job-1": Diagnosis(pending=pods)})
    unsched, stuck = cond(plan.status, "PodsUnschedulable"), cond(plan.status, "PodsStuck")
    assert unsched["reason"] == "Unschedulable" and msg in unsched["message"] and "more pods" not in unsched["message"]
    assert "nodeSelector and tolerations" in unsched["message"]
    assert stuck["reason"] == "ImagePullBackOff" and "spec.image" in stuck["message"]
    assert plan.status["phase"] == "Predicting"  # a stall is not a failure: Kubernetes may still resolve it


def failed_pod(name, code, message, finished):
    return {"metadata": {"name": name, "annotations": {"batch.kubernetes.io/job-completion-index": "3"}},
            "spec": {"nodeName": "gpu-node-7"},
            "status": {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
                "exitCode": code, "message": message, "finishedAt": finished}}}]}}


def test_a_gpu_the_container_cannot_see_is_named_with_what_to_check():
    b = body(parts=4)
    job = predict(b, active=4, failed=2)
    said = "error: --device cuda: no CUDA device is visible in this container (CUDA_VISIBLE_DEVICES='')"
    pods = [failed_pod("ij-predict-3-old", 1, "transient", "2025-12-31T22:00:00Z"),
            failed_pod("ij-predict-3-new", 69, f"loading model\n{said}\n", "2025-12-31T23:00:00Z")]
    plan = settle(b, [job], diagnoses={"job-1": Diagnosis(failed=pods)})
    c = cond(plan.status, "GPUUnavailable")
    assert c["status"] == "True" and c["reason"] == "DeviceUnavailable"
    assert said in c["message"] and "gpu-node-7" in c["message"]
    for what in ("runtimeClassName", "driver", "device plugin"):
        assert what in c["message"]
    # a newer failure of another kind: the GPU is no longer the story
    newer = pods + [failed_pod("ij-predict-3-newer", 1, "connection reset", "2025-12-31T23:30:00Z")]
    later = settle(body(parts=4, status=plan.status), [predict(b, active=4, failed=3)],
                   diagnoses={"job-1": Diagnosis(failed=newer)})
    assert cond(later.status, "GPUUnavailable")["status"] == "False"


# ---- Kueue: its decisions shown, never undone ---------------------------------------------------------

def workload(active=True, conditions=(), ours=False, name="job-ij-predict-abcde"):
    meta = {"name": name, "annotations": {kueue.OURS: "ij"} if ours else {}}
    return {"metadata": meta, "spec": {"active": active},
            "status": {"conditions": [dict(type=t, status=s, reason=r, message=m) for t, s, r, m in conditions]}}


REQUEUE_LIMIT = workload(active=False, conditions=[
    ("Evicted", "True", "DeactivatedDueToRequeuingLimitExceeded",
     "The workload is deactivated due to exceeding the maximum number of re-queuing retries"),
    ("QuotaReserved", "False", "Pending", "")])


def test_kueue_deactivation_is_never_undone_and_shows_as_suspended():
    b = body(parts=2, queueName="gpu")
    job = predict(b, suspend=True, queue="gpu")
    plan = settle(b, [job], workloads={"job-1": (REQUEUE_LIMIT, "v1beta2")})
    assert plan.workload_patches == []  # spec.suspend is false, but the operator does not reactivate it
    st = plan.status
    assert st["phase"] == "Suspended" and st["reason"] == "DeactivatedByKueueRequeuingLimitExceeded"
    s = cond(st, "Suspended")
    assert s["status"] == "True" and "maximum number of re-queuing retries" in s["message"]
    assert "kubectl patch workloads.kueue.x-k8s.io job-ij-predict-abcde" in s["message"]
    # the operator's own deactivation (marked on the Workload) is undone on resume; a person's is not
    mine = workload(active=False, ours=True, conditions=[("Evicted", "True", "Deactivated", "The workload is deactivated")])
    plan = settle(b, [job], workloads={"job-1": (mine, "v1beta2")})
    assert plan.workload_patches == [("job-ij-predict-abcde", "v1beta2", {
        "metadata": {"annotations": {kueue.OURS: None}}, "spec": {"active": True}})]
    theirs = workload(active=False, conditions=[("Evicted", "True", "Deactivated", "The workload is deactivated")])
    plan = settle(b, [job], workloads={"job-1": (theirs, "v1beta1")})
    assert plan.workload_patches == [] and plan.status["reason"] == "WorkloadDeactivated"
    # suspending marks the Workload as the operator's in the same patch
    suspended = body(parts=2, queueName="gpu", suspend=True)
    plan = settle(suspended, [predict(suspended, queue="gpu", suspend=True)],
                  workloads={"job-1": (workload(), "v1beta2")})
    assert plan.workload_patches == [("job-ij-predict-abcde", "v1beta2", {
        "metadata": {"annotations": {kueue.OURS: "ij"}}, "spec": {"active": False}})]


def test_queued_and_evicted_are_conditions_with_kueues_reason():
    b = body(parts=64, queueName="gpu")
    job = predict(b, suspend=True, queue="gpu")
    msg = ("couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor default, "
           "previously considered podsets requests (0) + current podset request (64) > maximum capacity (8)")
    waiting = workload(conditions=[("QuotaReserved", "False", "ExceedsMaxQuota", msg)])
    plan = settle(b, [job], workloads={"job-1": (waiting, "v1beta2")})
    q = cond(plan.status, "Queued")
    assert q["status"] == "True" and q["reason"] == "ExceedsMaxQuota" and msg in q["message"]
    assert "lower spec.parallelism" in q["message"] and plan.status["phase"] == "Predicting"
    preempted = workload(conditions=[("Evicted", "True", "Preempted", "Preempted to accommodate a workload (UID: x)"),
                                     ("QuotaReserved", "True", "QuotaReserved", "")])
    plan = settle(b, [predict(b, queue="gpu", active=64)], workloads={"job-1": (preempted, "v1beta2")})
    e = cond(plan.status, "Evicted")
    assert e["status"] == "True" and e["reason"] == "Preempted" and "queues it again by itself" in e["message"]
    assert ("Warning", "Evicted", e["message"]) in plan.events


def test_parallelism_goes_to_a_queued_job_but_not_to_a_running_one():
    b = body(parts=64, parallelism=8, queueName="gpu")
    waiting = predict(b, suspend=True, queue="gpu", parallelism=64)
    plan = settle(b, [waiting], workloads={"job-1": (workload(conditions=[("QuotaReserved", "False", "Pending", "")]),
                                                     "v1beta2")})
    assert plan.job_patches == [("ij-predict", {"spec": {"parallelism": 8}})]
    assert cond(plan.status, "ParallelismNotApplied") is None
    running = predict(b, queue="gpu", active=64, parallelism=64)
    admitted = workload(conditions=[("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "True", "Admitted", "")])
    plan = settle(b, [running], workloads={"job-1": (admitted, "v1beta2")})
    assert plan.job_patches == [] and cond(plan.status, "ParallelismNotApplied")["status"] == "True"
    assert kueue.parallelism_allowed(waiting, None)  # no Workload yet: nothing of Kueue's to contradict


# ---- progress -----------------------------------------------------------------------------------

def test_progress_across_all_parts_from_a_sample_of_running_pods():
    lines = [ProgressLine("predict", p, 64, d, 5000, "patches", 3.0, None) for p, d in ((3, 1000), (4, 3000))]
    agg = progressview.aggregate("predict", parts=64, parts_done=16, running=8, samples=lines,
                                 now="2026-01-01T00:00:00Z")
    # 16 parts done of 5,000 patches each, 8 running at 2,000 on average; 8 x 3 patches/s
    assert (agg["done"], agg["total"], agg["percent"]) == (96000, 320000, "30.0%")
    assert agg["rate"] == "24.00/s" and agg["eta"] == "2h35m33s" and agg["summary"] == "96.0k/320.0k patches"
    no_sample = progressview.aggregate("predict", 64, 16, running=8, samples=[], now="2026-01-01T00:00:00Z")
    assert (no_sample["percent"], no_sample["eta"], no_sample["unit"]) == ("25.0%", "-", "parts")
    # the worker's own line, parsed by the same module that formats it
    line = parse_line("progress predict 3/64: 1200/5000 patches (24.0%), 3.10 patches/s, ETA 20m25s")
    assert progressview.aggregate("predict", 1, 0, running=1, samples=[line], now="t")["percent"] == "24.0%"
    # a Job status that has not caught up with its pods (active 0, two pods reporting) counts those pods
    lagging = progressview.aggregate("predict", 64, 16, running=0, samples=lines, now="2026-01-01T00:00:00Z")
    assert (lagging["done"], lagging["rate"]) == (16 * 5000 + 2 * 2000, "6.00/s")


# ---- passes and metrics ---------------------------------------------------------------------------

def test_a_burst_of_events_costs_one_pass_more_not_one_each():
    calls, started, release = [], threading.Event(), threading.Event()

    def run(ns, name, gone):
        calls.append((name, len(gone)))
        started.set()
        release.wait(5)

    passes = Passes(run, min_interval_s=0.0)
    passes.request("ns", "ij")
    assert started.wait(5)
    for _ in range(500):  # events while the first pass runs
        passes.request("ns", "ij", gone=[{"metadata": {"name": "x"}}])
    release.set()
    deadline = time.monotonic() + 5
    while passes.ran < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # and nothing after it: a third pass would be queued by now (done() re-queues a key dirtied while it ran,
    # before ``ran`` counts the pass), so no sleep is needed to give it a chance
    assert passes.queue.depth() == 0 and passes.queue.processing() == 0
    passes.shutdown()
    assert calls == [("ij", 0), ("ij", 500)]  # two passes; the second carries every deleted Job it was told of


def test_metrics_say_what_the_status_says():
    r = Registry()
    r.record("ns", "a", {"phase": "Predicting", "parts": {"succeeded": 16, "total": 64}, "progress": {
        "stage": "predict", "unit": "patches", "done": 96000, "total": 320000, "ratePerSecond": 24.0}})
    r.record("ns", "b", {"phase": "Succeeded", "parts": {"succeeded": 2, "total": 2}})
    r.counters["vesuvius_operator_reconcile_passes_total"] = lambda: 5
    text = r.render()
    for line in ('vesuvius_inferencejobs{phase="Predicting"} 1', 'vesuvius_inferencejobs{phase="Succeeded"} 1',
                 'vesuvius_inferencejob_parts_done{namespace="ns",name="a"} 16',
                 'vesuvius_inferencejob_work_total{namespace="ns",name="a",stage="predict",unit="patches"} 320000',
                 'vesuvius_inferencejob_work_per_second{namespace="ns",name="a",stage="predict",unit="patches"} 24.0',
                 "vesuvius_operator_reconcile_passes_total 5"):
        assert line in text.splitlines(), line
    r.record("ns", "b", None)
    assert 'vesuvius_inferencejobs{phase="Succeeded"} 0' in r.render()
