"""Spec fields passed through to the Jobs and pods (issue 24, points 2 and 5): labels and annotations,
runtimeClassName, affinity, imagePullSecrets, the autoscalers' annotations (cluster-autoscaler's
safe-to-evict, Karpenter's do-not-disrupt) and Kueue's Job-level knobs (the priority-class label, partial
admission's job-min-parallelism annotation); and the pure middle's answers to a run being deleted, a queue
without Kueue, and Kueue's partial admission. Jobs are validated as the API server would (the schema and the
ported Job and pod rules); Kueue's own check of job-min-parallelism (kueue pkg/controller/jobs/job/
job_webhook.go, validatePartialAdmissionCreate: 0 < v < parallelism) is repeated here."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crd_check import validate as crd_validate
from job_validation import validate_job
from kmock_api import default_job
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.checks import refusals
from vesuvius_inference.k8s.decide import Observed, Outcomes, decide

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
NOW = 1_767_225_600.0
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "gpu.example.com/class", "operator": "In", "values": ["h100", "h200"]}]}]}}}
SPREAD = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": {
    "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"vesuvius.dev/stage": "blend"}}}}]}}


def doc(**changes):
    d = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())
    d["spec"].update(changes)
    return d


def jobs(spec):
    s = specmod.parse(spec)
    return {"predict": manifests.predict_job("ij", "ns", "u", spec=s), "blend": manifests.blend_job("ij", "ns", "u", spec=s),
            "finalize": manifests.finalize_job("ij", "ns", "u", spec=s),
            "retry": manifests.predict_job("ij", "ns", "u", spec=s, part_ids=[1, 3], attempt=1)}


def api_server_errors(job):
    obj = copy.deepcopy(job)
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    default_job(obj)
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    errs = validate_job(obj)
    low = (obj["metadata"].get("annotations") or {}).get(manifests.KUEUE_MIN_PARALLELISM)
    if low is not None and not 0 < int(low) < int(obj["spec"]["parallelism"]):
        errs.append(f"kueue: job-min-parallelism {low} should be between 0 and {obj['spec']['parallelism'] - 1}")
    return errs


# ---- what reaches the Jobs and pods -----------------------------------------------------------------------

@pytest.mark.parametrize("changes, stage, check", [
    ({"runtimeClassName": "nvidia"}, "finalize", lambda j, p: p["runtimeClassName"] == "nvidia"),
    ({"runtimeClassName": "kata", "predict": {"runtimeClassName": "nvidia"}}, "predict",
     lambda j, p: p["runtimeClassName"] == "nvidia"),
    ({"runtimeClassName": "kata", "predict": {"runtimeClassName": "nvidia"}}, "blend",
     lambda j, p: p["runtimeClassName"] == "kata"),
    ({"affinity": AFFINITY}, "predict", lambda j, p: p["affinity"] == AFFINITY),
    ({"affinity": AFFINITY, "blend": {"affinity": SPREAD}}, "blend", lambda j, p: p["affinity"] == SPREAD),
    ({"imagePullSecrets": [{"name": "ghcr"}]}, "blend", lambda j, p: p["imagePullSecrets"] == [{"name": "ghcr"}]),
    ({"labels": {"team": "scrolls", "example.com/cost-centre": "c-42"}}, "predict",
     lambda j, p: j["metadata"]["labels"]["team"] == "scrolls"
     and j["spec"]["template"]["metadata"]["labels"]["example.com/cost-centre"] == "c-42"),
    ({"annotations": {"example.com/owner": "ana"}}, "retry",
     lambda j, p: j["metadata"]["annotations"]["example.com/owner"] == "ana"
     and j["spec"]["template"]["metadata"]["annotations"]["example.com/owner"] == "ana"
     and "vesuvius.dev/part-ids" in j["spec"]["template"]["metadata"]["annotations"]),
    ({"safeToEvict": False}, "predict",
     lambda j, p: j["spec"]["template"]["metadata"]["annotations"][manifests.SAFE_TO_EVICT] == "false"),
    ({"safeToEvict": True}, "finalize",
     lambda j, p: j["spec"]["template"]["metadata"]["annotations"][manifests.SAFE_TO_EVICT] == "true"),
    ({"doNotDisrupt": True}, "predict",
     lambda j, p: j["spec"]["template"]["metadata"]["annotations"][manifests.DO_NOT_DISRUPT] == "true"),
    ({"workloadPriorityClassName": "urgent"}, "blend",
     lambda j, p: j["metadata"]["labels"][manifests.KUEUE_PRIORITY] == "urgent"),
    ({"parts": 8, "minParallelism": 2}, "predict",
     lambda j, p: j["metadata"]["annotations"][manifests.KUEUE_MIN_PARALLELISM] == "2"),
    # a retry Job over 2 parts cannot start with fewer than 2: no partial admission there (Kueue would refuse)
    ({"parts": 8, "minParallelism": 2}, "retry", lambda j, p: manifests.KUEUE_MIN_PARALLELISM not in j["metadata"].get(
        "annotations", {})),
    ({"parts": 8, "minParallelism": 2}, "blend", lambda j, p: manifests.KUEUE_MIN_PARALLELISM not in j["metadata"].get(
        "annotations", {})),
])
def test_spec_fields_reach_the_jobs_and_pods(changes, stage, check):
    d = doc(**changes)
    assert crd_validate(d) == [] and refusals("ij", specmod.parse(d["spec"])) == []
    job = jobs(d["spec"])[stage]
    assert check(job, job["spec"]["template"]["spec"])
    assert api_server_errors(job) == []


def test_nothing_is_passed_through_unless_asked():
    for job in jobs(doc()["spec"]).values():
        p = job["spec"]["template"]["spec"]
        assert not {"runtimeClassName", "affinity", "imagePullSecrets"} & set(p)
        notes = job["spec"]["template"]["metadata"].get("annotations") or {}
        assert manifests.SAFE_TO_EVICT not in notes and manifests.DO_NOT_DISRUPT not in notes


@pytest.mark.parametrize("changes, fragment", [
    ({"labels": {"vesuvius.dev/stage": "x"}}, "to set"),
    ({"labels": {"kueue.x-k8s.io/queue-name": "q"}}, "to set"),
    ({"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}}, "spec.safeToEvict"),
    ({"annotations": {"karpenter.sh/do-not-disrupt": "true"}}, "spec.doNotDisrupt"),
    ({"labels": {"team": "two words"}}, None),
    ({"runtimeClassName": "Not_A_Name"}, None),
    ({"imagePullSecrets": [{"name": "Bad Name"}]}, None),
    ({"parts": 4, "minParallelism": 4}, "minParallelism"),
    ({"parts": 4, "parallelism": 2, "minParallelism": 3}, "minParallelism"),
])
def test_fields_the_api_server_or_kueue_would_refuse_are_refused_first(changes, fragment):
    d = doc(**changes)
    assert crd_validate(d) != []
    said = refusals("ij", specmod.parse(d["spec"]))
    assert said and (fragment is None or any(fragment in m for m in said)), said


def test_new_fields_are_immutable_like_the_rest():
    old = doc(labels={"team": "a"})
    new = doc(labels={"team": "b"})
    assert any("immutable" in e for e in crd_validate(new, old))
    assert any("cannot be added" in e for e in crd_validate(doc(doNotDisrupt=True), doc()))


# ---- the pure middle: deletion, a queue without Kueue, partial admission -----------------------------------------

def ij(status=None, meta=None, **spec):
    d = doc(**spec)
    return {"metadata": {"name": "ij", "namespace": "ns", "uid": "uid-ij", "generation": 1, "resourceVersion": "7",
                         **(meta or {})}, "spec": d["spec"], "status": status or {}}


def job_of(body, *, active=0, suspend=False, parallelism=None, queue=None):
    j = manifests.predict_job("ij", "ns", "uid-ij", spec=specmod.parse(body["spec"]),
                              defaults=manifests.OperatorDefaults(queue_name=queue))
    j["metadata"]["uid"] = "job-1"
    j["spec"]["suspend"] = suspend
    if parallelism is not None:
        j["spec"]["parallelism"] = parallelism
    j["status"] = {"active": active, "ready": active}
    return j


def cond(status, kind):
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def test_a_run_being_deleted_creates_and_patches_nothing():
    """Foreground deletion keeps the InferenceJob (deletionTimestamp set) until the garbage collector has
    deleted its Jobs: a pass then must not create the Jobs again."""
    body = ij(meta={"deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]})
    obs = Observed("ns", body, [], manifests.OperatorDefaults(), NOW)
    assert decide(obs).creates == [] and decide(obs, Outcomes()).job_patches == []
    alive = Observed("ns", ij(), [], manifests.OperatorDefaults(), NOW)
    assert [c[0] for c in decide(alive).creates] == ["predict"]


def test_a_queue_without_kueue_is_a_condition_and_suspend_still_works():
    body = ij(queueName="gpu", suspend=True)
    running = job_of(body, active=1)
    obs = Observed("ns", body, [running], manifests.OperatorDefaults(), NOW,
                   workloads={"job-1": (None, None)}, kueue_missing=True)
    plan = decide(obs, Outcomes())
    c = cond(plan.status, "KueueMissing")
    assert c["status"] == "True" and c["reason"] == "KueueNotInstalled" and "gpu" in c["message"]
    assert ("ij-predict", {"spec": {"suspend": True}}) in plan.job_patches  # nobody else would suspend it
    assert ("Warning", "KueueMissing", c["message"]) in plan.events


@pytest.mark.parametrize("kind, extra_obs, reason", [
    ("queued", {"workloads": {"job-1": ({"metadata": {"name": "wl"}, "spec": {"active": True}, "status": {
        "conditions": [{"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no quota"}]}},
        "v1beta2")}}, "Queued"),
    ("no kueue", {"workloads": {"job-1": (None, None)}, "kueue_missing": True}, "KueueMissing"),
])
def test_a_waiting_run_says_why_in_its_reason(kind, extra_obs, reason):
    """status.reason is the Reason column of kubectl get ij: a queued or stalled run reads as such."""
    body = ij(queueName="gpu")
    obs = Observed("ns", body, [job_of(body, suspend=True)], manifests.OperatorDefaults(), NOW, **extra_obs)
    status = decide(obs, Outcomes()).status
    assert status["phase"] == "Predicting" and status["reason"] == reason, (kind, status["reason"])


def test_kueues_partial_admission_is_not_a_parallelism_the_operator_fights():
    """Kueue admitted 3 of 8 pods (minParallelism 2) and lowered the running Job's parallelism: neither a patch
    back to 8 nor a ParallelismNotApplied condition."""
    body = ij(parts=8, minParallelism=2, queueName="gpu")
    admitted = job_of(body, active=3, parallelism=3)
    wl = {"metadata": {"name": "wl"}, "spec": {"active": True}, "status": {"conditions": [
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": ""},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "message": ""}]}}
    plan = decide(Observed("ns", body, [admitted], manifests.OperatorDefaults(), NOW,
                           workloads={"job-1": (wl, "v1beta2")}), Outcomes())
    assert plan.job_patches == []
    assert (cond(plan.status, "ParallelismNotApplied") or {}).get("status") != "True"


def test_a_job_kueue_deleted_after_deactivating_it_is_reported_as_such():
    """Kueue's retention policy (afterDeactivatedByKueue) deletes the Job of a Workload it deactivated. The run
    was shown Suspended with Kueue's reason; the Job's disappearance is Kueue's decision, not a lost Job: no
    check Job, Failed with reason DeletedByKueue and what to do, and it stays so."""
    held = {"phase": "Suspended", "stage": "predict", "reason": "DeactivatedByKueueRequeuingLimitExceeded",
            "message": "Kueue deactivated Workload job-ij-predict-1 of ij-predict (RequeuingLimitExceeded: ...)",
            "stages": {"predict": {"job": "ij-predict", "uid": "job-1", "state": "Running"}},
            "parts": {"total": 1, "succeeded": 0, "failed": 0, "completedIndexes": "", "failedIndexes": ""}}
    body = ij(status=held, queueName="gpu")
    last = job_of(body, suspend=True)
    obs = Observed("ns", body, [], manifests.OperatorDefaults(), NOW, gone=[last])
    assert decide(obs).creates == []
    plan = decide(obs, Outcomes())
    st = plan.status
    assert st["phase"] == "Failed" and st["reason"] == "DeletedByKueue"
    assert "Kueue deleted ij-predict" in st["message"] and "retryFailedParts" in st["message"]
    assert cond(st, "Failed")["reason"] == "DeletedByKueue"
    assert [e[1] for e in plan.events if e[0] == "Warning"] == ["DeletedByKueue"]
    # the next pass: still so, and still no check Job of the "lost" stage
    after = Observed("ns", ij(status=st, queueName="gpu"), [], manifests.OperatorDefaults(), NOW + 5)
    assert decide(after).creates == []
    assert decide(after, Outcomes()).status["reason"] == "DeletedByKueue"
