"""The operator against the rest of a cluster behaving as the real components do (issue 8): the emulated
API server validates every Job (job_validation.py), the TTL-after-finished controller and the garbage
collector delete Jobs on their own schedule, the Job controller ends Jobs by deadline or failed-index
limits, Kueue admits and suspends, requests fail and watch events get lost (kmock_api.py, kueue.py).

Pods here are stubs (job_controller.stub: a short sleep, exit 0, or held until released): these tests
are about the control plane; test_operator_e2e.py runs the real CLI in the pods.
"""

from __future__ import annotations

import kubernetes
import pytest
import yaml
from plugins.k8s import SAMPLE, cond, cond_true
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod

pytestmark = pytest.mark.slow


def spec_for(name: str, **changes) -> dict:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["output"]["uri"] = f"s3://results/{name}/surface.zarr"
    body["spec"]["inference"] = {"device": "cpu"}  # the emulated nodes have no GPU (cuda would exit 69)
    body["spec"].update(changes)
    return body


def created(cluster, job: str) -> list[str]:
    """The uids a Job name was created with, in order (from the API server's stored versions)."""
    uids: list[str] = []
    for v in cluster.server.call(cluster.api.history, "batch/v1/jobs", cluster.namespace, job):
        if v is not None and (not uids or uids[-1] != v["metadata"]["uid"]):
            uids.append(v["metadata"]["uid"])
    return uids


def statuses(cluster, name: str) -> list[dict]:
    return [(v or {}).get("status") or {} for v in cluster.server.call(
        cluster.api.history, "vesuvius.dev/v1alpha1/inferencejobs", cluster.namespace, name)]


def predict_starts(controller, prefix: str) -> list[tuple[str, int | None]]:
    return [(job, i) for job, i, _ in controller.pods_started if job.startswith(prefix) and "-predict" in job]


# ---- 1 -------------------------------------------------------------------------------------------

def test_ttl_deleted_jobs_are_never_run_again(cluster, operator, stub_controller):
    """ttlSecondsAfterFinished deletes predict while blend still runs (1 s), or at once (0): each stage runs
    once, and after every Job is gone an operator restart leaves the run Succeeded."""
    stub_controller.stub(r"^ttl-blend$", sleep=4)
    cluster.create_ij(spec_for("ttl", parts=2, ttlSecondsAfterFinished=1))
    cluster.create_ij(spec_for("ttl0", ttlSecondsAfterFinished=0))
    cluster.wait("predict deleted by its TTL while blend runs", lambda: "ttl-predict" not in cluster.jobs("ttl")
                 and ("ttl-blend", 0) in stub_controller.running(), timeout=60)
    operator.settle()  # a resync and the blend Job's events come and go: nothing may re-create predict
    assert "ttl-predict" not in cluster.jobs("ttl")
    for name in ("ttl", "ttl0"):
        done = cluster.wait_phase(name, "Succeeded", timeout=90)
        assert done["status"]["parts"]["succeeded"] == done["status"]["parts"]["total"]
        assert {k: v["state"] for k, v in done["status"]["stages"].items()} == {
            "predict": "Complete", "blend": "Complete", "finalize": "Complete"}
    cluster.wait("every Job deleted by the TTL controller", lambda: cluster.jobs() == {}, timeout=30)
    deleted = {name for ns, name, _ in cluster.server.call(lambda: list(cluster.api.ttl.deleted))
               if ns == cluster.namespace}
    assert deleted == {f"{n}-{s}" for n in ("ttl", "ttl0") for s in ("predict", "blend", "finalize")}
    # Foreground deletion, as the TTL controller asks: the Job waited for its pods, then went
    history = cluster.server.call(cluster.api.history, "batch/v1/jobs", cluster.namespace, "ttl-predict")
    assert any(v and v["metadata"].get("deletionTimestamp") and "foregroundDeletion" in v["metadata"].get(
        "finalizers", []) for v in history) and history[-1] is None
    for name in ("ttl", "ttl0"):
        for stage in ("predict", "blend", "finalize"):
            assert len(created(cluster, f"{name}-{stage}")) == 1, f"{name}-{stage} created more than once"
    assert sorted(predict_starts(stub_controller, "ttl-")) == [("ttl-predict", 0), ("ttl-predict", 1)]
    assert predict_starts(stub_controller, "ttl0-") == [("ttl0-predict", 0)]
    before = {n: cluster.ij(n)["status"] for n in ("ttl", "ttl0")}
    operator.kill()
    operator.start()
    # the restarted operator's resume handlers: one pass per InferenceJob (resyncs skip finished ones)
    operator.wait_passes(2)
    for name in ("ttl", "ttl0"):
        after = cluster.ij(name)["status"]
        assert after["phase"] == "Succeeded" and after["completionTime"] == before[name]["completionTime"]
    assert cluster.jobs() == {} and "Pending" not in cluster.phases("ttl")[1:]


# ---- 2 -------------------------------------------------------------------------------------------

def test_jobs_that_stop_early_fail_the_run_and_a_retry_runs_every_part_not_done(cluster, operator, stub_controller):
    """DeadlineExceeded and MaxFailedIndexesExceeded leave parts neither done nor failed."""
    stub_controller.hook("late-predict", 1, sleep=60)
    stub_controller.fail("limit-predict", 0, exit_code=3, message="error: bad input")
    cluster.create_ij(spec_for("late", parts=3, parallelism=1, activeDeadlineSeconds=4))
    cluster.create_ij(spec_for("limit", parts=3, parallelism=1, retry={"maxFailedParts": 0}))

    late = cluster.wait_phase("late", "Failed", timeout=60)["status"]
    assert late["reason"] == "DeadlineExceeded" and "2 of 3 parts not done" in late["message"], late["message"]
    assert "2 never ran" in late["message"] and late["parts"]["completedIndexes"] == "0"
    job = cluster.jobs("late")["late-predict"]
    # the Job controller's end: FailureTarget then Failed; the index it killed on its first attempt is not failed
    assert cond(job, "FailureTarget")["reason"] == cond(job, "Failed")["reason"] == "DeadlineExceeded"
    assert job["status"]["failedIndexes"] == "" and job["status"]["completedIndexes"] == "0"
    assert job["status"]["failed"] == 1 and job["status"]["active"] == 0
    assert not [i for j, i, _ in stub_controller.pods_started if j == "late-predict" and i == 2]

    limit = cluster.wait_phase("limit", "Failed", timeout=60)["status"]
    assert limit["reason"] == "MaxFailedIndexesExceeded" and limit["parts"]["failedIndexes"] == "0"
    assert "3 of 3 parts not done (1 failed: parts 0; 2 never ran)" in limit["message"], limit["message"]
    assert cluster.jobs("limit")["limit-predict"]["spec"]["maxFailedIndexes"] == 0

    for name in ("late", "limit"):
        cluster.patch_ij(name, {"spec": {"retryFailedParts": 1}})
    for name, parts in (("late", "1-2"), ("limit", "0-2")):
        done = cluster.wait_phase(name, "Succeeded", timeout=60)
        r1 = cluster.jobs(name)[f"{name}-predict-r1"]
        assert r1["metadata"]["annotations"]["vesuvius.dev/part-ids"] == parts
        assert done["status"]["parts"]["completedIndexes"] == "0-2" and done["status"]["retryAttempt"] == 1


# ---- 3 -------------------------------------------------------------------------------------------

def test_jobs_the_api_server_would_refuse_are_refused_up_front_or_fail_the_run(cluster, operator, stub_controller):
    # at admission: the CRD's CEL rules know the longest pod hostname
    long = "a" * 52
    with pytest.raises(kubernetes.client.ApiException) as e:
        cluster.create_ij(spec_for(long, parts=512, parallelism=64))
    assert e.value.status == 422 and f"{long}-predict-511 must be at most 63 characters" in e.value.body
    # an API server that did not run the CEL rules: the operator refuses the same spec (InvalidSpec, no Job)
    cluster.server.call(setattr, cluster.api, "validate_crds", False)
    cluster.create_ij(spec_for(long, parts=512, parallelism=64))
    failed = cluster.wait_phase(long, "Failed", timeout=60)["status"]
    cluster.server.call(setattr, cluster.api, "validate_crds", True)
    assert failed["reason"] == "InvalidSpec" and "predict pods' hostname" in failed["message"]
    assert cluster.jobs(long) == {}
    # the emulated API server answers an invalid Job as kube-apiserver does
    bad = {"metadata": {"name": "x" * 62}, "spec": {"completionMode": "Indexed", "completions": 100, "template": {
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}}}
    with pytest.raises(kubernetes.client.ApiException) as e:
        cluster.batch.create_namespaced_job(cluster.namespace, bad)
    assert e.value.status == 422 and "will not able to create pod with invalid DNS label" in e.value.body
    # a refusal nothing above predicts (here a policy webhook): one attempt, then Failed with the server's words
    denial = ('admission webhook "validate.kyverno.svc" denied the request: policy require-team-label: '
              'label "team" is required')
    fault = cluster.server.call(cluster.api.fail_requests, "POST", r"/jobs$", 403, denial, 100,
                                lambda body: (body or {}).get("metadata", {}).get("name") == "policy-predict")
    cluster.create_ij(spec_for("policy"))
    failed = cluster.wait_phase("policy", "Failed", timeout=60)
    assert failed["status"]["reason"] == "CreateFailed" and cond(failed, "Failed")["reason"] == "CreateFailed"
    assert denial in failed["status"]["message"] and "403 Forbidden" in failed["status"]["message"]
    operator.settle(resyncs=2)  # two resyncs and their passes: no retry storm
    assert fault.hits == 1 and cluster.jobs("policy") == {}
    assert "CreateFailed" in [e["reason"] for e in cluster.events("policy")]


# ---- 4 -------------------------------------------------------------------------------------------

def test_a_recreated_inferencejob_never_adopts_its_predecessors_jobs(cluster, operator, stub_controller):
    """Cascade deletion takes a few seconds; the old finalize Job must not make the new object Succeeded."""
    cluster.server.call(setattr, cluster.api.gc, "delay", 4.0)
    first = cluster.create_ij(spec_for("again"))
    cluster.wait_phase("again", "Succeeded", timeout=60)
    cluster.custom.delete_namespaced_custom_object("vesuvius.dev", "v1alpha1", cluster.namespace, "inferencejobs",
                                                   "again")
    second = cluster.create_ij(spec_for("again"))
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    waiting = cluster.wait("the conflict reported", lambda: (o := cluster.ij("again")) and cond_true(
        o, "ChildJobConflict") and o, timeout=30)
    assert "again-predict exists but belongs to another owner" in cond(waiting, "ChildJobConflict")["message"]
    assert waiting["status"]["phase"] == "Pending"
    done = cluster.wait_phase("again", "Succeeded", timeout=60)
    assert not cond_true(done, "ChildJobConflict")
    for name, job in cluster.jobs("again").items():
        assert job["metadata"]["ownerReferences"][0]["uid"] == second["metadata"]["uid"], name
    assert predict_starts(stub_controller, "again") == [("again-predict", 0), ("again-predict", 0)]
    assert [p for p in cluster.phases("again") if p != "Pending"][-1] == "Succeeded"


# ---- 5 -------------------------------------------------------------------------------------------

def test_a_lost_event_or_a_failed_request_is_caught_by_the_resync(cluster, operator, stub_controller):
    """kopf never retries an event handler and does not re-list: the periodic reconcile does the work."""
    def ended(name):
        return lambda kind, obj: obj.get("kind") == "Job" and obj["metadata"]["name"] == name and int(
            (obj.get("status") or {}).get("succeeded") or 0) > 0

    dropped = cluster.server.call(cluster.api.drop_watch_events, ended("dropped-predict"), 10)
    fault = cluster.server.call(cluster.api.fail_requests, "POST", r"/jobs$", 500, "etcdserver: request timed out",
                                1, lambda body: (body or {}).get("metadata", {}).get("name") == "flaky-blend")
    cluster.create_ij(spec_for("dropped"))
    cluster.create_ij(spec_for("flaky"))
    for name in ("dropped", "flaky"):
        assert cluster.wait_phase(name, "Succeeded", timeout=60)["status"]["stages"]["finalize"]["state"] == "Complete"
    assert dropped.hits >= 1 and fault.hits == 1
    assert len(created(cluster, "flaky-blend")) == 1


# ---- 6 and 9 (status keys) ------------------------------------------------------------------------

def test_repeated_retry_bumps_and_replays_never_run_a_part_twice(cluster, operator, stub_controller):
    from vesuvius_inference.k8s import act, handlers

    stub_controller.fail("twice-predict", 1, exit_code=3)
    stub_controller.stub(r"-predict-r\d+$", held=True)
    cluster.create_ij(spec_for("twice", parts=2))
    failed = cluster.wait_phase("twice", "Failed", timeout=60)
    assert failed["status"]["completionTime"]
    cluster.patch_ij("twice", {"spec": {"retryFailedParts": 1}})
    cluster.wait("r1 running", lambda: ("twice-predict-r1", 0) in stub_controller.running(), timeout=30)
    cluster.patch_ij("twice", {"spec": {"retryFailedParts": 2}})  # part 1 is covered by r1
    cluster.wait("the second bump handled", lambda: (cluster.ij("twice")["status"].get(
        "retryFailedPartsHandled") == 2) or "twice-predict-r2" in cluster.jobs("twice"), timeout=30)
    assert set(cluster.jobs("twice")) == {"twice-predict", "twice-predict-r1"}, "a second Job over part 1"
    assert "NothingToRetry" in [e["reason"] for e in cluster.events("twice")]
    # a repeated create of the same retry Job (kopf retrying a pass, a crash before the status write) is a 409
    # that counts only if the Job is this object's
    body = cluster.ij("twice")
    again = manifests.predict_job("twice", cluster.namespace, body["metadata"]["uid"], spec=specmod.parse(body["spec"]),
                                  defaults=manifests.defaults_from_env(), part_ids=[1], attempt=1)
    batch = kubernetes.client.BatchV1Api(cluster.client)
    assert act.create_job(batch, cluster.namespace, again, uid=body["metadata"]["uid"])[0] == "exists"
    assert act.create_job(batch, cluster.namespace, again, uid="another-uid")[0] == "foreign"
    # a crash after creating r2's Job but before the status said so, replayed: the name is the value, so a 409
    cluster.custom.patch_namespaced_custom_object_status(
        "vesuvius.dev", "v1alpha1", cluster.namespace, "inferencejobs", "twice",
        {"status": {"retryFailedPartsHandled": 0}}, _content_type="application/merge-patch+json")
    handlers.reconcile(cluster.namespace, "twice")
    assert set(cluster.jobs("twice")) == {"twice-predict", "twice-predict-r1"}
    running = cluster.ij("twice")["status"]
    assert running["phase"] == "Predicting" and "completionTime" not in running  # the old one did not survive
    stub_controller.release()
    done = cluster.wait_phase("twice", "Succeeded", timeout=60)
    assert done["status"]["retryAttempt"] == 1 and done["status"]["jobs"]["retries"] == ["twice-predict-r1"]
    assert sorted(predict_starts(stub_controller, "twice")) == [
        ("twice-predict", 0), ("twice-predict", 1), ("twice-predict-r1", 0)]
    after_failure = statuses(cluster, "twice")
    first_failed = next(i for i, st in enumerate(after_failure) if st.get("phase") == "Failed")
    assert not [st for st in after_failure[first_failed:] if st.get("phase") == "Predicting" and "completionTime" in st]


# ---- 7 -------------------------------------------------------------------------------------------

def test_with_kueue_suspend_goes_through_the_workload_and_a_running_jobs_parallelism_is_left_to_kueue(
        cluster, operator, stub_controller, kueue):
    """That a queued Job's parallelism follows the spec (and Kueue's Workload follows the Job) is
    test_busy_cluster.py's queue-too-small run end to end (it was run here too, on a Job the suspension had
    queued again), and a table case in test_decide.py (test_parallelism_goes_to_a_queued_job_but_not_to_a_running_one)."""
    stub_controller.stub(r"^queued-predict$", held=True)
    cluster.create_ij(spec_for("queued", parts=2, queueName="team-q"))
    cluster.wait("both predict pods admitted and running", lambda: sorted(
        i for j, i in stub_controller.running() if j == "queued-predict") == [0, 1], timeout=60)
    job = cluster.jobs("queued")["queued-predict"]
    assert ("started", "queued-predict", "Admitted by clusterQueue cluster-queue") in kueue.actions

    def workload(version: str = "v1beta2") -> dict:
        items = cluster.custom.list_namespaced_custom_object("kueue.x-k8s.io", version, cluster.namespace,
                                                             "workloads")["items"]
        return next(w for w in items if w["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == job["metadata"]["uid"])

    cluster.patch_ij("queued", {"spec": {"suspend": True}})
    cluster.wait_phase("queued", "Suspended", timeout=30)
    cluster.wait("the predict pods gone", lambda: not stub_controller.running(), timeout=30)
    rounds = kueue.ticks  # Kueue would restart a Job that the operator had suspended itself
    operator.settle()
    kueue.wait_ticks(rounds + 2)
    assert not stub_controller.running(), "Kueue restarted the suspended Job: its GPUs keep running"
    assert cluster.jobs("queued")["queued-predict"]["spec"]["suspend"] is True
    wl = workload()
    assert wl["spec"]["active"] is False and cond(wl, "Evicted")["reason"] == "Deactivated"  # today's reason
    assert wl["metadata"]["annotations"]["vesuvius.dev/deactivated-by"] == "queued"  # marked as the operator's
    assert workload("v1beta1")["apiVersion"] == "kueue.x-k8s.io/v1beta1"  # the same object, both versions
    assert ("stopped", "queued-predict", "Workload evicted") in kueue.actions
    cluster.patch_ij("queued", {"spec": {"suspend": False}})
    cluster.wait("re-admitted and running", lambda: len([1 for j, _ in stub_controller.running()
                                                         if j == "queued-predict"]) == 2, timeout=30)
    assert "vesuvius.dev/deactivated-by" not in (workload()["metadata"].get("annotations") or {})
    stops = len([a for a in kueue.actions if a[0] == "stopped"])
    cluster.patch_ij("queued", {"spec": {"parallelism": 1}})  # while it runs: not applied, said why
    note = cluster.wait("parallelism refused with a condition", lambda: (o := cluster.ij("queued")) and cond_true(
        o, "ParallelismNotApplied") and o, timeout=30)
    assert "while Kueue runs it" in cond(note, "ParallelismNotApplied")["message"]
    rounds = kueue.ticks
    operator.settle()  # a resync's pass would apply it, and Kueue would then stop the Job to re-queue it
    kueue.wait_ticks(rounds + 2)
    assert cluster.jobs("queued")["queued-predict"]["spec"]["parallelism"] == 2
    assert workload()["spec"]["podSets"][0]["count"] == 2
    assert len([a for a in kueue.actions if a[0] == "stopped"]) == stops  # never re-queued
    stub_controller.release()
    done = cluster.wait_phase("queued", "Succeeded", timeout=60)
    assert not cond_true(done, "ParallelismNotApplied")
    labels = {n: j["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") for n, j in cluster.jobs("queued").items()}
    # the CPU stages do not inherit the GPU queue: they ran without Kueue
    assert labels == {"queued-predict": "team-q", "queued-blend": None, "queued-finalize": None}


# ---- 9 -------------------------------------------------------------------------------------------

def test_pods_that_cannot_start_are_reported_with_the_pods_reason(cluster, operator, stub_controller):
    """The wiring of the pending pods' read: the pod's waiting reason and message reach the condition and an
    Event, and the condition clears once the pod starts. Which waiting reasons are stalls, after which grace,
    with what advice (ImagePullBackOff, which a second run here used to show the same way, included) are table
    cases: test_status.py's test_pods_that_cannot_start_are_reported_after_the_grace_period and test_decide.py's
    test_unschedulable_and_image_pull_stalls_after_the_grace_period."""
    cluster.create_ij(spec_for("nosecret", storage={"secretName": "scroll-credentials"}))
    stuck = cluster.wait("PodsStuck on nosecret", lambda: (o := cluster.ij("nosecret")) and cond_true(
        o, "PodsStuck") and o, timeout=30)
    c = cond(stuck, "PodsStuck")
    assert c["reason"] == "CreateContainerConfigError" and 'secret "scroll-credentials" not found' in c["message"]
    assert stuck["status"]["phase"] == "Predicting"
    assert "CreateContainerConfigError" in [e["reason"] for e in cluster.events("nosecret")]
    cluster.core.create_namespaced_secret(cluster.namespace, {"metadata": {"name": "scroll-credentials"},
                                                              "stringData": {"AWS_ACCESS_KEY_ID": "x"}})
    done = cluster.wait_phase("nosecret", "Succeeded", timeout=60)
    assert cond(done, "PodsStuck")["status"] == "False"


def test_parallelism_follows_the_spec_even_when_removed(cluster, operator):
    """No Job controller: the predict Job just exists."""
    cluster.create_ij(spec_for("wide", parts=4, parallelism=4))
    cluster.wait("the predict Job", lambda: "wide-predict" in cluster.jobs("wide"), timeout=60)
    cluster.patch_ij("wide", {"spec": {"parallelism": 1}})
    cluster.wait("parallelism 1", lambda: cluster.jobs("wide")["wide-predict"]["spec"]["parallelism"] == 1, timeout=30)
    cluster.patch_ij("wide", {"spec": {"parallelism": None}})  # back to the default: every part at once
    cluster.wait("parallelism 4 again", lambda: cluster.jobs("wide")["wide-predict"]["spec"]["parallelism"] == 4,
                 timeout=30)
    assert set(cluster.jobs("wide")) == {"wide-predict"}
