"""A storage outage costs a part none of its retries in every pod, and an endless one still ends (issue 24,
points 2-3): exit 74 (storage unreachable after ``storage.waitSeconds``) is Ignore'd by every stage's
podFailurePolicy, and the run's own outage budget, ``storage.maxOutageSeconds``, bounds the outage instead of the
Job controller's per-index backoff (decide._storage_condition / _give_up).

Upstream: an Ignore rule makes matchPodFailurePolicy return countFailed false (pkg/controller/job/
pod_failure_policy.go), so the failure is neither counted in ``failed`` (nor against backoffLimitPerIndex) and
the pod is re-created (after the index's backoff, backoff_utils.go getRemainingTimePerIndex, which counts ignored
failures too); the Job controller alone would therefore retry a permanent outage for ever.
A Job whose ``activeDeadlineSeconds`` has passed fails with DeadlineExceeded (job_controller.go, syncJob,
pastActiveDeadline): how the operator stops a run it gave up on.
"""

from __future__ import annotations

import pytest
from k8s.test_busy_cluster import spec_for
from k8s.test_decide import NOW, body, predict
from k8s.test_storage_outage import LINE
from plugins.k8s import cond
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.decide import Observed, Outcomes, decide, iso

IGNORE_74 = {"action": "Ignore", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [74]}}


def _rules(job):
    return job["spec"]["podFailurePolicy"]["rules"]


def test_exit_74_costs_no_retry_in_default_pods_of_every_stage():
    s = specmod.parse(body()["spec"])  # the operator's own resources: memory request = limit
    assert not manifests.disruptions_bounded(s, "predict")
    assert IGNORE_74 in _rules(manifests.predict_job("ij", "ns", "u", spec=s))
    for make, stage in ((manifests.blend_job, "blend"), (manifests.finalize_job, "finalize")):
        assert dict(IGNORE_74, onExitCodes=dict(IGNORE_74["onExitCodes"], containerName=stage)) in _rules(
            make("ij", "ns", "u", spec=s))
    # a spec that says 74 must never be retried keeps its FailIndex
    strict = specmod.parse(dict(body()["spec"], retry={"nonRetryableExitCodes": [2, 3, 74]}))
    rules = _rules(manifests.predict_job("ij", "ns", "u", spec=strict))
    assert IGNORE_74 not in rules and any(r["action"] == "FailIndex" and 74 in r["onExitCodes"]["values"]
                                          for r in rules if "onExitCodes" in r)
    # the operator's log samples off: no budget, 74 counts as before (defaults_from_env)
    assert not manifests.defaults_from_env({"VESUVIUS_PROGRESS_SECONDS": "0"}).outage_budget
    assert manifests.defaults_from_env({}).outage_budget


def _storage(prev_cond, *, waits, answered=False, now=NOW, budget=600, jobs=None, phase="Predicting"):
    prev = {"phase": phase, "stage": "predict"}
    if prev_cond:
        prev["conditions"] = [dict({"type": "StorageUnreachable", "status": "True", "message": "earlier"}, **prev_cond)]
    b = body(status=prev, parts=2, storage={"maxOutageSeconds": budget})
    jobs = [predict(b, active=2)] if jobs is None else jobs(b)
    obs = Observed("ns", b, jobs, manifests.OperatorDefaults(), now, storage_waits=waits, storage_answered=answered)
    decide(obs)
    plan = decide(obs, Outcomes())
    return plan, cond({"status": plan.status}, "StorageUnreachable")


WAITING = {"reason": "WaitingForStorage", "lastTransitionTime": iso(NOW - 300)}


@pytest.mark.parametrize("prev_cond, waits, answered, status, reason", [
    (None, [("ij-predict-0-x", LINE)], False, "True", "WaitingForStorage"),  # the outage's clock starts
    (WAITING, [], False, "True", "WaitingForStorage"),  # nobody waits, nobody works (pods restarting): one outage
    (WAITING, None, False, "True", "WaitingForStorage"),  # no sample: kept
    (WAITING, [], True, "False", "Resolved"),  # a sampled pod works with the store again: over
    (WAITING, [("ij-predict-0-y", LINE)], True, "True", "WaitingForStorage"),  # one works, another waits
])
def test_the_outage_clock_runs_until_a_pod_works_again(prev_cond, waits, answered, status, reason):
    plan, c = _storage(prev_cond, waits=waits, answered=answered)
    assert (c["status"], c["reason"]) == (status, reason), c
    if prev_cond and status == "True":
        assert c["lastTransitionTime"] == iso(NOW - 300)  # the outage began then, whatever pods came and went
    assert not any("activeDeadlineSeconds" in (p.get("spec") or {}) for _, p in plan.job_patches)


def test_an_outage_past_its_budget_stops_the_run_and_fails_it_with_the_reason():
    plan, c = _storage({"reason": "WaitingForStorage", "lastTransitionTime": iso(NOW - 600)}, waits=None)
    assert c["status"] == "True" and c["reason"] == "OutageTooLong"
    assert "unreachable for 10m00s" in c["message"] and "storage.maxOutageSeconds=600" in c["message"]
    assert "retryFailedParts" in c["message"]
    assert ("ij-predict", {"spec": {"activeDeadlineSeconds": 1}}) in plan.job_patches
    assert ("Warning", "StorageUnreachable", c["message"]) in plan.events

    def failed(b):  # the Job controller failed it: DeadlineExceeded, part 0 done, part 1 not
        j = predict(b, done="0")
        j["spec"]["activeDeadlineSeconds"] = 1
        j["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                      "message": "Job was active longer than specified deadline"}]
        return [j]

    plan, c2 = _storage({"reason": "OutageTooLong", "message": c["message"], "lastTransitionTime": iso(NOW - 600)},
                        waits=None, now=NOW + 5, jobs=failed)
    assert plan.status["phase"] == "Failed" and plan.status["reason"] == "StorageUnreachable", plan.status
    assert plan.status["message"] == c["message"] and c2["reason"] == "OutageTooLong"
    assert cond({"status": plan.status}, "Failed")["reason"] == "StorageUnreachable"
    assert not plan.job_patches  # nothing left to stop


def test_a_retry_after_giving_up_starts_a_new_clock():
    def retried(b):
        old = predict(b, done="0")
        old["spec"]["activeDeadlineSeconds"] = 1
        old["status"]["conditions"] = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        new = predict(b, active=1, uid="job-2")
        new["metadata"]["name"] = "ij-predict-r1"
        return [old, new]

    plan, c = _storage({"reason": "OutageTooLong", "lastTransitionTime": iso(NOW - 4000)}, waits=[], jobs=retried)
    assert c["status"] == "False", c
    assert not plan.job_patches


# ---- end to end: the real operator, the Job controller fixture ------------------------------------------------

@pytest.mark.slow
def test_an_outage_longer_than_the_retries_costs_nothing_and_an_endless_one_ends(cluster, operator, stub_controller):
    """Part 0 of ``short`` waits for storage and gives up three times in a row (exit 74) with no retry to spare
    (perPartLimit 0) and the operator's own resources (no disruption count): it used to fail at the first 74; now
    it completes. Every pod of ``endless`` waits and exits 74: the run fails with reason StorageUnreachable once
    its outage has lasted storage.maxOutageSeconds (4 s here), instead of re-creating pods for ever."""
    ctl = stub_controller
    for attempt in range(3):
        ctl.hook("short-predict", 0, attempt=attempt, exit_code=74, sleep=1.0, lines=(LINE,),
                 message="error: reading s3://scrolls/in.zarr/c/0/1/2: storage unreachable for longer than ...")
    ctl.stub("^endless-predict$", exit_code=74, sleep=1.0, lines=(LINE,))
    cluster.create_ij(spec_for("short", parts=2, retry={"perPartLimit": 0}))
    cluster.create_ij(spec_for("endless", parts=1, retry={"perPartLimit": 0}, storage={"maxOutageSeconds": 4}))
    done = cluster.wait_phase("short", "Succeeded", timeout=120)
    assert done["status"]["parts"]["failed"] == 0
    runs = [(r.index, r.attempt, r.exit_code, r.action) for r in ctl.results_of("short-predict")]
    assert [(0, a, 74, "Ignore") for a in range(3)] == [r for r in runs if r[0] == 0 and r[2] == 74], runs

    failed = cluster.wait_phase("endless", "Failed", timeout=120)
    assert failed["status"]["reason"] == "StorageUnreachable", failed["status"]
    c = cond(failed, "StorageUnreachable")
    assert c["reason"] == "OutageTooLong" and "storage.maxOutageSeconds=4" in c["message"]
    job = cluster.jobs("endless")["endless-predict"]
    assert job["spec"]["activeDeadlineSeconds"] == 1 and cond(job, "Failed")["reason"] == "DeadlineExceeded"
    assert {r.action for r in ctl.results_of("endless-predict") if r.exit_code == 74} == {"Ignore"}
    assert "StorageUnreachable" in [e["reason"] for e in cluster.events("endless")]
