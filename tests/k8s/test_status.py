"""Status derivation as a ledger (pure): what the operator concludes from its Jobs, including Jobs that are
gone, and what it therefore creates next. The Job bodies here are shaped as the Job controller writes
them (conditions, completedIndexes, failedIndexes); tests/k8s/test_operator_lifecycle.py runs the same
situations end to end against the emulated controllers."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from vesuvius_inference.contract.ranges import format_ranges, parse_ranges
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.stalls import stuck as stuck_pods
from vesuvius_inference.k8s.status import (
    checks_needed,
    compute_status,
    missing_parts,
    part_sets,
    sort_children,
    stage_to_create,
    status_patch,
)

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
UID = "uid-ij"
T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:10:00Z", "2025-01-01T00:20:00Z"


def spec(**changes):
    raw = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"]
    raw.update(changes)
    return specmod.parse(raw)


def job(kind, s, *, done="", failed=None, condition=None, active=0, part_ids=None, attempt=0, uid=UID,
        reason="", message=""):
    """A child Job as the API server returns it, with the status the Job controller writes."""
    make = {"predict": manifests.predict_job, "blend": manifests.blend_job, "finalize": manifests.finalize_job}[kind]
    extra = {"part_ids": part_ids, "attempt": attempt} if kind == "predict" and part_ids is not None else {}
    j = make("ij", "ns", uid, spec=s, **extra)
    j["metadata"]["uid"] = f"{j['metadata']['name']}-{uid}"
    st = {"active": active, "completedIndexes": done}
    if failed is not None:
        st["failedIndexes"] = failed
    if condition == "Complete":
        st["conditions"] = [{"type": "SuccessCriteriaMet", "status": "True"},
                            {"type": "Complete", "status": "True", "lastTransitionTime": T1}]
        st["completionTime"] = T1
    elif condition == "Failed":
        st["conditions"] = [{"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
                            {"type": "Failed", "status": "True", "reason": reason, "message": message,
                             "lastTransitionTime": T1}]
    j["status"] = st
    return j


def run(s, jobs, prev=None, now=T2, gone=(), **kw):
    children = sort_children(jobs, UID)
    status = compute_status(s, children, prev, now=now, generation=1, gone=gone, **kw)
    return status, stage_to_create(status, children)


# ---- 1: ttlSecondsAfterFinished -------------------------------------------------------------------

def test_a_deleted_predict_job_is_never_created_again():
    """TTL deletes the finished predict Job while blend runs: the ledger keeps its parts, predict is done."""
    s = spec(parts=2, ttlSecondsAfterFinished=0)
    predict = job("predict", s, done="0-1", condition="Complete")
    status, nxt = run(s, [predict], now=T1)
    assert nxt == "blend" and status["stages"]["predict"]["state"] == "Complete"
    blend = job("blend", s, active=1)
    status, nxt = run(s, [predict, blend], prev=status)
    status, nxt = run(s, [blend], prev=status)  # predict deleted by its TTL
    assert nxt is None and status["phase"] == "Blending"
    assert status["parts"]["completedIndexes"] == "0-1" and status["jobs"] == {"blend": "ij-blend"}
    assert status["stages"]["predict"] == {"job": "ij-predict", "uid": predict["metadata"]["uid"],
                                           "state": "Complete", "completionTime": T1, "parts": "2/2"}


def test_a_predict_job_deleted_before_its_end_was_seen_is_read_from_its_deleted_event():
    """ttlSecondsAfterFinished: 0 can delete a Job before any list shows it Complete: the DELETED event's body."""
    s = spec(parts=2)
    status, _ = run(s, [job("predict", s, active=2)], now=T0)
    gone = job("predict", s, done="0-1", condition="Complete")
    status, nxt = run(s, [], prev=status, gone=[gone])
    assert nxt == "blend" and status["parts"]["succeeded"] == 2
    # and without that event (operator down): Lost, judged by a check Job, nothing re-created behind the user's back
    status, _ = run(s, [job("predict", s, active=2)], now=T0)
    status, nxt = run(s, [], prev=status)
    assert nxt is None and status["phase"] == "Predicting" and status["reason"] == "CheckingLostStage"
    lost = status["stages"]["predict"]
    assert lost["state"] == "Lost" and checks_needed(status, sort_children([], UID)) == [("predict", lost["uid"])]


def test_succeeded_stays_succeeded_when_every_job_is_gone():
    s = spec()
    jobs = [job("predict", s, done="0", condition="Complete"), job("blend", s, condition="Complete"),
            job("finalize", s, condition="Complete")]
    status, _ = run(s, jobs, now=T1)
    assert status["phase"] == "Succeeded"
    after, nxt = run(s, [], prev=status)  # an operator restart after the TTL removed them all
    assert after["phase"] == "Succeeded" and nxt is None and after["completionTime"] == status["completionTime"]
    assert {k: v["state"] for k, v in after["stages"].items()} == {"predict": "Complete", "blend": "Complete",
                                                                    "finalize": "Complete"}


def check(s, stage, lost_uid, verdict):
    """A check Job as the Job controller leaves it: Complete (exit 0), or Failed by its FailJob rule (exit 10)."""
    j = manifests.check_job("ij", "ns", UID, spec=s, stage=stage, lost_uid=lost_uid)
    j["metadata"]["uid"] = f"check-{stage}-{verdict}"
    conds = {"Complete": [{"type": "Complete", "status": "True"}],
             "Incomplete": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
             "Failed": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], "Running": []}
    j["status"] = {"conditions": conds[verdict], "active": int(verdict == "Running")}
    return j


def test_lost_blend_is_created_again_and_lost_finalize_is_checked_on_storage():
    """blend re-runs from parts that stay until finalize; a finalize whose end nobody saw is judged by what it left
    on storage: complete -> Succeeded, incomplete -> finalize again, no answer -> Failed with what to check."""
    s = spec()
    predict = job("predict", s, done="0", condition="Complete")
    status, _ = run(s, [predict, job("blend", s, active=1)], now=T0)
    status, nxt = run(s, [predict], prev=status)
    assert status["stages"]["blend"]["state"] == "Lost" and nxt == "blend"
    blend = job("blend", s, condition="Complete")
    status, _ = run(s, [predict, blend, job("finalize", s, active=1)], prev=status)
    lost, nxt = run(s, [predict, blend], prev=status)
    uid = lost["stages"]["finalize"]["uid"]
    assert (lost["phase"], lost["reason"], nxt) == ("Finalizing", "CheckingLostStage", None)
    assert checks_needed(lost, sort_children([predict, blend], UID)) == [("finalize", uid)]
    running = [predict, blend, check(s, "finalize", uid, "Running")]
    assert checks_needed(run(s, running, prev=lost)[0], sort_children(running, UID)) == []  # one check at a time
    done, nxt = run(s, [predict, blend, check(s, "finalize", uid, "Complete")], prev=lost)
    assert done["phase"] == "Succeeded" and "verified on storage by ij-check-f" in done["message"] and nxt is None
    again, nxt = run(s, [predict, blend, check(s, "finalize", uid, "Incomplete")], prev=lost,
                     notes={"check-finalize-Incomplete": "incomplete: s3://x is not marked complete"})
    assert (again["phase"], again["reason"], nxt) == ("Finalizing", "RerunningFinalize", "finalize")
    assert "is not marked complete" in again["message"]
    failed, nxt = run(s, [predict, blend, check(s, "finalize", uid, "Failed")], prev=lost)
    assert (failed["phase"], failed["reason"], nxt) == ("Failed", "CheckFailed", None)
    # a check Job of an earlier loss (another lost uid) is no verdict on this one
    stale, _ = run(s, [predict, blend, check(s, "finalize", "some-other-uid", "Complete")], prev=lost)
    assert stale["phase"] == "Finalizing" and stale["stages"]["finalize"]["state"] == "Lost"


def test_a_lost_predict_job_is_judged_by_the_parts_markers():
    s = spec(parts=3)
    status, _ = run(s, [job("predict", s, done="0", active=2)], now=T0)
    lost, _ = run(s, [], prev=status)
    uid = lost["stages"]["predict"]["uid"]
    done, nxt = run(s, [check(s, "predict", uid, "Complete")], prev=lost)
    assert done["parts"]["completedIndexes"] == "0-2" and nxt == "blend"
    missing, nxt = run(s, [check(s, "predict", uid, "Incomplete")], prev=lost,
                       notes={"check-predict-Incomplete": "incomplete: 2 of 3 predict parts have no marker: parts 1-2"})
    assert (missing["phase"], missing["reason"], nxt) == ("Failed", "PartsIncomplete", None)
    assert "parts 1-2" in missing["message"] and "bump spec.retryFailedParts" in missing["message"]


# ---- 2: failures without failed indexes -------------------------------------------------------------

@pytest.mark.parametrize("reason, failed", [("DeadlineExceeded", ""), ("MaxFailedIndexesExceeded", "0"),
                                            ("BackoffLimitExceeded", None)])
def test_a_finished_predict_job_with_parts_not_done_fails_the_run(reason, failed):
    s = spec(parts=4)
    done = "1" if failed == "0" else "0"
    predict = job("predict", s, done=done, failed=failed, condition="Failed", reason=reason,
                  message="Job was active longer than specified deadline")
    status, nxt = run(s, [predict])
    assert status["phase"] == "Failed" and status["reason"] == reason and nxt is None
    assert reason in status["message"] and "3 of 4 parts not done" in status["message"]
    assert "never ran" in status["message"]
    # retryFailedParts re-runs every part not done, failed or never run
    assert missing_parts(status, part_sets(s, sort_children([predict], UID)).covered) == {0, 1, 2, 3} - {int(done)}


def test_failed_indexes_still_read_parts_failed():
    s = spec(parts=2)
    status, _ = run(s, [job("predict", s, done="0", failed="1", condition="Failed", reason="FailedIndexes",
                            message="Job has failed indexes")])
    assert status["reason"] == "PartsFailed" and "1 failed: parts 1" in status["message"]


# ---- 4: adoption ---------------------------------------------------------------------------------

def test_jobs_of_another_owner_are_never_adopted():
    """A deleted InferenceJob's finalize Job, not yet collected, must not make its successor Succeeded."""
    s = spec()
    old = [job(k, s, done="0", condition="Complete", uid="uid-old") for k in ("predict", "blend", "finalize")]
    children = sort_children(old, UID)
    assert children.predict is None and len(children.foreign) == 3
    status, nxt = run(s, old)
    assert status["phase"] == "Pending" and nxt == "predict"


# ---- 6: retries ----------------------------------------------------------------------------------

def test_parts_a_running_retry_covers_are_not_handed_out_again():
    s = spec(parts=3)
    first = job("predict", s, done="0", failed="1-2", condition="Failed", reason="FailedIndexes")
    status, _ = run(s, [first])
    assert missing_parts(status, part_sets(s, sort_children([first], UID)).covered) == {1, 2}
    r1 = job("predict", s, part_ids=[1, 2], attempt=1, active=2)
    jobs = [first, r1]
    status, _ = run(s, jobs, prev=status)
    assert status["phase"] == "Predicting" and status["parts"]["failed"] == 0  # being re-run, not failed
    assert missing_parts(status, part_sets(s, sort_children(jobs, UID)).covered) == set()
    assert "completionTime" not in status
    # r1 fails part 2 (its index 1): that part is free again, part 1 is done
    r1 = job("predict", s, part_ids=[1, 2], attempt=1, done="0", failed="1", condition="Failed",
             reason="FailedIndexes")
    status, _ = run(s, [first, r1], prev=status)
    assert status["phase"] == "Failed" and status["parts"]["failedIndexes"] == "2"
    assert missing_parts(status, part_sets(s, sort_children([first, r1], UID)).covered) == {2}


# ---- 9: bounded messages, patches that remove, pods that cannot start ------------------------------

def test_failed_message_stays_bounded_with_scattered_failures():
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "inferencejob.yaml").read_text())
    cond_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"]["items"]
    s = spec(parts=100000)
    failed = format_ranges(range(0, 100000, 2))
    status, _ = run(s, [job("predict", s, done=format_ranges(range(1, 100000, 2)), failed=failed,
                            condition="Failed", reason="FailedIndexes", message="Job has failed indexes")])
    assert len(failed) > 32768 and len(status["message"]) <= 1024
    assert "50000 failed: parts 0,2,4" in status["message"] and "more ranges" in status["message"]
    for c in status["conditions"]:
        jsonschema.validate(c, cond_schema)
    assert parse_ranges(status["parts"]["failedIndexes"]) == set(range(0, 100000, 2))  # the full set stays


def test_status_patch_removes_what_the_new_status_lacks():
    prev = {"phase": "Failed", "completionTime": T1, "parts": {"failed": 1, "failedIndexes": "1"},
            "jobs": {"predict": "x", "retries": ["x-r1"]}}
    new = {"phase": "Predicting", "parts": {"failed": 0, "failedIndexes": ""}, "jobs": {"retries": ["x-r2"]}}
    patch = status_patch(prev, new)
    assert patch == {"phase": "Predicting", "completionTime": None, "parts": {"failed": 0, "failedIndexes": ""},
                     "jobs": {"predict": None, "retries": ["x-r2"]}}
    from k8s.kmock_api import merge_patch  # RFC 7386, as the API server applies it

    assert merge_patch(prev, patch) == new
    assert status_patch(new, copy.deepcopy(new)) == {}


def test_pods_that_cannot_start_are_reported_after_the_grace_period():
    import datetime as dt

    def pod(name, reason, age):
        created = (dt.datetime(2025, 1, 1, tzinfo=dt.UTC) - dt.timedelta(seconds=age)).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        return {"metadata": {"name": name, "creationTimestamp": created}, "status": {
            "phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": reason, "message": "m"}}}]}}

    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
    pods = [pod("a", "CreateContainerConfigError", 600), pod("b", "ImagePullBackOff", 10),
            pod("c", "ContainerCreating", 600)]
    assert stuck_pods(pods, now, 300) == [("a", "CreateContainerConfigError", "m")]
    assert [p for p, _, _ in stuck_pods(pods, now, 5)] == ["a", "b"]


def test_the_operator_creates_stages_in_the_pipelines_order():
    """The operator's next Job follows stages.STAGES, the order the local pipeline runs: each stage's Job
    appears only once every earlier stage is complete, and each one exactly once."""
    from vesuvius_inference.contract import stageplan as stages

    s = spec(parts=2)
    jobs: list = []
    seen = []
    status, nxt = run(s, jobs, now=T0)
    while nxt is not None:
        seen.append(nxt)
        done = "0,1" if nxt == "predict" else ""
        jobs.append(job(nxt, s, done=done, condition="Complete"))
        status, nxt = run(s, jobs, prev=status, now=T1)
        assert nxt not in seen, f"{nxt} created twice"
    assert tuple(seen) == stages.STAGES and status["phase"] == "Succeeded"
    half, nxt = run(s, [job("predict", s, done="0", active=1)], now=T1)
    assert nxt is None and half["phase"] == "Predicting"  # blend waits for every part
