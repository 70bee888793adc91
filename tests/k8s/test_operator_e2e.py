"""End to end on Kubernetes, as far as it goes without a cluster: the real kopf operator (the product's
``vesuvius-inference operator`` process) against KMock as the API server (tests/k8s/kmock_api.py), a
test fixture playing the Job controller that runs every pod's container command locally
(tests/k8s/job_controller.py), and moto's S3 server holding the input volume, the model and the output.

Inference runs on the CPU: the emulated nodes have no GPU, so specs say ``inference.device: cpu``. With
the CRD's default device (cuda) a predict pod here exits 69 before writing anything, as it does on a
GPU node whose GPU the container cannot see (tests/predict/test_devices.py).
"""

from __future__ import annotations

import copy

import kubernetes
import numpy as np
import pytest
import yaml
from helpers import run_cli
from plugins.k8s import SAMPLE, VOLUME_SHAPE, cond, cond_true

pytestmark = pytest.mark.slow


def sample() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


def spec_for(name: str, **changes) -> dict:
    """The minimal sample under another name and output, with small, fast settings."""
    body = sample()
    body["metadata"]["name"] = name
    body["spec"]["output"]["uri"] = f"s3://results/{name}/surface.zarr"
    body["spec"]["inference"] = {"tta": False, "device": "cpu"}  # the emulated nodes have no GPU
    for key, value in changes.items():
        body["spec"][key] = value
    return body


def open_output(uri: str):
    import zarr

    return zarr.open_group(uri, mode="r", zarr_format=3)


def arrays(group) -> dict[str, np.ndarray]:
    return {path: arr[...] for path, arr in group.arrays()}


def s3_exists(uri: str) -> bool:
    import s3fs

    return s3fs.S3FileSystem().exists(uri[len("s3://"):])


# ---- 1 ------------------------------------------------------------------------------------------

def test_minimal_sample_runs_to_success_and_matches_the_local_pipeline(cluster, operator, controller, s3_env,
                                                                       tmp_path):
    body = sample()
    assert set(body["spec"]) == {"input", "output", "model"}  # applied as-is, but for the device:
    body["spec"]["inference"] = {"device": "cpu"}  # the emulated nodes have no GPU (cuda would exit 69)
    created = cluster.create_ij(body)
    uid = created["metadata"]["uid"]
    assert created["spec"]["inference"]["overlap"] == 0.5 and created["spec"]["parts"] == 1  # CRD defaults

    done = cluster.wait_phase("minimal", "Succeeded", timeout=240)
    st = done["status"]
    assert st["parts"] == {"total": 1, "succeeded": 1, "failed": 0, "active": 0, "completedIndexes": "0",
                           "failedIndexes": "", "summary": "1/1"}
    assert st["jobs"] == {"predict": "minimal-predict", "blend": "minimal-blend", "finalize": "minimal-finalize"}
    assert st["reason"] == "Completed" and st["stage"] == "finalize" and st["retryAttempt"] == 0
    assert st["observedGeneration"] == done["metadata"]["generation"] == 1
    assert st["startTime"] and st["completionTime"]
    for kind in ("PredictComplete", "BlendComplete", "Complete"):
        assert cond_true(done, kind), kind
    assert cond(done, "Failed")["status"] == "False" and cond(done, "Suspended")["status"] == "False"
    phases = cluster.phases("minimal")
    assert phases[-1] == "Succeeded" and "Failed" not in phases and "Suspended" not in phases
    assert [p for p in ("Predicting", "Blending", "Finalizing", "Succeeded") if p in phases] == \
        [p for p in phases if p in ("Predicting", "Blending", "Finalizing", "Succeeded")]
    assert {"Blending", "Finalizing", "Succeeded"} <= set(phases)

    jobs = cluster.jobs("minimal")
    assert set(jobs) == {"minimal-predict", "minimal-blend", "minimal-finalize"}
    for name, job in jobs.items():
        assert cond_true(job, "Complete"), name
        owner = job["metadata"]["ownerReferences"]
        assert owner == [{"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "name": "minimal",
                          "uid": uid, "controller": True, "blockOwnerDeletion": True}]
    assert jobs["minimal-predict"]["spec"]["completionMode"] == "Indexed"
    assert jobs["minimal-predict"]["status"]["completedIndexes"] == "0"
    assert [(r.job, r.index, r.exit_code) for r in controller.results] == [
        ("minimal-predict", 0, 0), ("minimal-blend", None, 0), ("minimal-finalize", None, 0)]

    events = cluster.events("minimal")
    reasons = [e["reason"] for e in events]
    for reason in ("PredictStarted", "BlendStarted", "FinalizeStarted", "Succeeded"):
        assert reason in reasons, reasons
    assert all(e["type"] == "Normal" for e in events), events

    # the output equals what the local pipeline makes of the same input, model and settings
    ref = tmp_path / "reference.zarr"
    r = run_cli("pipeline", "--input", "s3://scrolls/PHerc0332/volume.zarr", "--model", "s3://models/surface-nnunet",
                "--output", ref, "--workdir", tmp_path / "work", "--overlap", "0.5", "--quiet")  # in-process
    assert r.returncode == 0, r.stderr
    out, local = arrays(open_output("s3://results/PHerc0332/surface.zarr")), arrays(open_output(str(ref)))
    assert set(out) == set(local) and "0" in out
    for path in out:
        assert out[path].dtype == local[path].dtype and out[path].shape == local[path].shape
        assert out[path].tobytes() == local[path].tobytes(), path
    assert out["0"].shape[-3:] == VOLUME_SHAPE and out["0"].max() > 0
    # finalize --delete_intermediates removed the predict parts (seams, staging): there is no blended intermediate
    assert not s3_exists("s3://results/PHerc0332/surface.zarr_work/parts")


# ---- 2 ------------------------------------------------------------------------------------------

def test_failed_part_fails_the_run_and_retry_reruns_only_that_part(cluster, operator, controller, s3_env):
    # credentials reach the pods only through the Secret named in the spec (envFrom), not the test's env
    cluster.core.create_namespaced_secret(cluster.namespace, {
        "metadata": {"name": "s3-credentials"},
        "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}})
    controller.base_env = {k: v for k, v in controller.base_env.items() if not k.startswith("AWS_")}
    controller.fail("retry-predict", index=1, exit_code=3, message="error: bad input: chunk 0/1/1 is corrupt")
    cluster.create_ij(spec_for("retry", parts=2, storage={
        "secretName": "s3-credentials", "endpointUrl": s3_env.endpoint, "region": "us-east-1"}))

    failed = cluster.wait_phase("retry", "Failed")
    st = failed["status"]
    assert st["reason"] == "PartsFailed" and st["stage"] == "predict"
    assert "1 of 2 parts not done (1 failed: parts 1)" in st["message"], st["message"]
    assert st["parts"]["failedIndexes"] == "1" and st["parts"]["completedIndexes"] == "0"
    assert st["parts"]["failed"] == 1 and st["parts"]["succeeded"] == 1
    assert cond_true(failed, "Failed") and cond(failed, "Failed")["reason"] == "PartsFailed"
    job = cluster.jobs("retry")["retry-predict"]
    assert cond_true(job, "Failed") and cond(job, "Failed")["reason"] == "FailedIndexes"
    assert job["status"]["failedIndexes"] == "1" and job["status"]["completedIndexes"] == "0"
    # exit 3 is non-retryable: FailIndex at once, although perPartLimit allows 2 retries
    assert [(r.index, r.exit_code, r.action) for r in controller.results_of("retry-predict")
            if r.index == 1] == [(1, 3, "FailIndex")]
    assert "retry-blend" not in cluster.jobs("retry")
    warning = cluster.wait("the PartsFailed event", lambda: [
        e for e in cluster.events("retry") if e["reason"] == "PartsFailed"])[0]
    assert warning["type"] == "Warning"
    assert "parts 1)" in warning["message"] and "index 1 exit 3" in warning["message"], warning["message"]
    assert "chunk 0/1/1 is corrupt" in warning["message"]  # the pod's last output line, from its termination message

    cluster.patch_ij("retry", {"spec": {"retryFailedParts": 1}})
    done = cluster.wait_phase("retry", "Succeeded", timeout=240)
    st = done["status"]
    assert st["parts"] == {"total": 2, "succeeded": 2, "failed": 0, "active": 0, "completedIndexes": "0-1",
                           "failedIndexes": "", "summary": "2/2"}
    assert st["jobs"]["retries"] == ["retry-predict-r1"] and st["retryAttempt"] == 1
    jobs = cluster.jobs("retry")
    assert set(jobs) == {"retry-predict", "retry-predict-r1", "retry-blend", "retry-finalize"}
    r1 = jobs["retry-predict-r1"]
    args = r1["spec"]["template"]["spec"]["containers"][0]["args"]
    # the part id travels in the Job's annotation, read by the pod through the downward API (the real CLI here)
    assert r1["spec"]["completions"] == 1 and r1["metadata"]["annotations"]["vesuvius.dev/part-ids"] == "1"
    assert args[args.index("--part_ids_file") + 1] == "/etc/vesuvius/part-ids"
    assert cond_true(r1, "Complete") and r1["status"]["completedIndexes"] == "0"
    # part 0 ran once, in the first Job; the retry Job ran only part 1 (its index 0)
    predict_runs = [(r.job, r.index, r.exit_code) for r in controller.results if "predict" in r.job]
    assert sorted(predict_runs) == [("retry-predict", 0, 0), ("retry-predict", 1, 3), ("retry-predict-r1", 0, 0)]
    assert "RetryingParts" in [e["reason"] for e in cluster.events("retry")]
    assert cluster.phases("retry")[-1] == "Succeeded" and "Failed" in cluster.phases("retry")
    out = open_output("s3://results/retry/surface.zarr")["0"][...]
    assert out.shape[-3:] == VOLUME_SHAPE and out.max() > 0


# ---- 3 ------------------------------------------------------------------------------------------
# A transient failure retried and counted once, a preemption not counted: with the drains of the same podFailurePolicy
# wiring in test_disruptions.py's test_a_part_drained_and_preempted_past_the_old_bound_completes (one run of real
# pods for both; the rules themselves are tables in test_manifests.py and test_stop_policy.py).


# ---- 4 and 5 --------------------------------------------------------------------------------------

def test_suspend_resume_and_operator_restarts_mid_predict_and_mid_blend(cluster, operator, controller, s3_env):
    """One run: suspended and resumed mid-predict, the operator SIGKILLed mid-predict and mid-blend."""
    starts = operator.starts
    cluster.create_ij(spec_for("pause"))
    cluster.wait("a running predict pod", lambda: ("pause-predict", 0) in controller.running(), timeout=60)

    # 4: suspend mid-predict -> the child Job is suspended, its pod goes, phase Suspended
    cluster.patch_ij("pause", {"spec": {"suspend": True}})
    suspended = cluster.wait_phase("pause", "Suspended", timeout=60)
    assert cond_true(suspended, "Suspended") and suspended["status"]["stage"] == "predict"
    job = cluster.wait("the predict Job suspended by the controller", lambda: (
        j := cluster.jobs("pause").get("pause-predict")) and cond_true(j, "Suspended") and j, timeout=60)
    assert job["spec"]["suspend"] is True and job["status"]["active"] == 0
    assert cond(job, "Suspended")["reason"] == "JobSuspended"
    assert controller.running() == [] and cluster.pods("pause-predict") == []
    operator.wait_passes(operator.passes() + 2)  # passes over the suspended object (resyncs): nothing starts
    assert controller.running() == [] and "pause-blend" not in cluster.jobs("pause")
    cluster.patch_ij("pause", {"spec": {"suspend": False}})
    cluster.wait("a predict pod again", lambda: ("pause-predict", 0) in controller.running(), timeout=60)
    resumed = cluster.wait_phase("pause", "Predicting", timeout=60)
    assert not cond_true(resumed, "Suspended")
    job = cluster.wait("the predict Job resumed", lambda: (j := cluster.jobs("pause")["pause-predict"]) and cond(
        j, "Suspended")["status"] == "False" and j, timeout=30)
    assert job["spec"]["suspend"] is False and cond(job, "Suspended")["reason"] == "JobResumed"
    assert "Suspended" in [e["reason"] for e in cluster.events("pause")]
    predict_uid = job["metadata"]["uid"]

    # 5a: the operator dies mid-predict; the Job runs on; back, it picks up where things are
    operator.kill()
    cluster.wait("predict complete (operator down)", lambda: cond_true(cluster.jobs("pause")["pause-predict"],
                                                                       "Complete"), timeout=120)
    assert set(cluster.jobs("pause")) == {"pause-predict"}  # nobody to create the blend Job
    operator.start()
    cluster.wait("the blend Job", lambda: "pause-blend" in cluster.jobs("pause"), timeout=60)
    # 5b: and dies again mid-blend
    operator.kill()
    blend_uid = cluster.jobs("pause")["pause-blend"]["metadata"]["uid"]
    operator.start()
    done = cluster.wait_phase("pause", "Succeeded", timeout=120)
    assert not cond_true(done, "Suspended") and done["status"]["parts"]["succeeded"] == 1

    jobs = cluster.jobs("pause")
    assert set(jobs) == {"pause-predict", "pause-blend", "pause-finalize"}  # exactly one Job per stage
    assert jobs["pause-predict"]["metadata"]["uid"] == predict_uid and jobs["pause-blend"]["metadata"]["uid"] == blend_uid
    for name in jobs:  # each created once, never deleted and re-created
        history = cluster.server.call(cluster.api.history, "batch/v1/jobs", cluster.namespace, name)
        assert None not in history and history[0]["metadata"]["uid"] == jobs[name]["metadata"]["uid"], name
    started = [(job, i) for job, i, _ in controller.pods_started]
    # predict: once before the suspension, once after; blend and finalize once each
    assert started == [("pause-predict", 0), ("pause-predict", 0), ("pause-blend", None), ("pause-finalize", None)]
    assert operator.starts == starts + 2


# ---- 6 ------------------------------------------------------------------------------------------

def test_deleting_the_inferencejob_cascades_to_its_jobs_and_pods(cluster, operator, controller, s3_env):
    created = cluster.create_ij(spec_for("doomed"))
    cluster.wait("a running predict pod", lambda: ("doomed-predict", 0) in controller.running(), timeout=60)
    job = cluster.jobs("doomed")["doomed-predict"]
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "name": "doomed",
        "uid": created["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    pods = cluster.pods("doomed-predict")
    assert len(pods) == 1 and pods[0]["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert not cluster.ij("doomed")["metadata"].get("finalizers")  # nothing for a stopped operator to block

    operator.kill()
    cluster.custom.delete_namespaced_custom_object("vesuvius.dev", "v1alpha1", cluster.namespace, "inferencejobs",
                                                   "doomed")
    assert cluster.ij("doomed") is None  # gone at once: no finalizer waits for the (stopped) operator
    cluster.wait("the Jobs garbage-collected", lambda: cluster.jobs() == {}, timeout=30)
    cluster.wait("the pods garbage-collected", lambda: cluster.pods() == [], timeout=30)
    cluster.wait("the pod's process killed", lambda: controller.running() == [], timeout=30)
    collected = cluster.server.call(lambda: list(cluster.api.gc.collected))
    assert ("jobs", cluster.namespace, "doomed-predict") in collected
    assert ("pods", cluster.namespace, pods[0]["metadata"]["name"]) in collected


# ---- 7 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, changes, expected", [
    ("dupfolds", {"inference": {"tta": False, "folds": [0, 0]}}, "inference.folds has duplicates"),
    ("nested", {"workdir": "s3://results/nested", "output": {"uri": "s3://results/nested/out.zarr"}},
     "output.uri s3://results/nested/out.zarr lies inside workdir s3://results/nested"),
])
def test_invalid_spec_that_the_schema_admits_fails_without_jobs(cluster, operator, name, changes, expected):
    body = spec_for(name)
    body["spec"].update(copy.deepcopy(changes))
    cluster.create_ij(body)  # the API server's schema and CEL rules accept it
    failed = cluster.wait_phase(name, "Failed", timeout=60)
    st = failed["status"]
    assert st["reason"] == "InvalidSpec" and expected in st["message"], st
    assert st["observedGeneration"] == failed["metadata"]["generation"]
    assert cond_true(failed, "Failed") and cond(failed, "Failed")["reason"] == "InvalidSpec"
    warning = cluster.wait("the InvalidSpec event", lambda: [e for e in cluster.events(name)
                                                             if e["reason"] == "InvalidSpec"])[0]
    assert warning["type"] == "Warning" and expected in warning["message"]
    operator.settle()  # a resync and every pass queued: a wrong operator had its chance to create something
    assert cluster.jobs() == {}
    requests = [r for r in cluster.server.call(lambda: list(cluster.api))  # KMock's log of every request it
                if f"/namespaces/{cluster.namespace}/" in r.url.path]  # served, this test's namespace
    assert [r for r in requests if r.method == "POST" and r.url.path.endswith("/jobs")] == []
    assert any(r.method == "PATCH" and r.url.path.endswith(f"/inferencejobs/{name}/status") for r in requests)


def test_schema_rejects_what_it_can_before_the_operator_sees_it(cluster):
    body = spec_for("same")
    body["spec"]["workdir"] = body["spec"]["output"]["uri"]
    with pytest.raises(kubernetes.client.ApiException) as e:
        cluster.create_ij(body)
    assert e.value.status == 422 and "workdir must differ from output.uri" in e.value.body
    assert cluster.ij("same") is None


# ---- the harness itself ---------------------------------------------------------------------------

def test_api_server_behaves_like_kube_apiserver_where_the_operator_relies_on_it(cluster):
    """resourceVersion, generation, status subresource, label selectors, JSON-patch test, watch replay."""
    created = cluster.create_ij(spec_for("probe"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    rv0 = int(meta["resourceVersion"])
    st = cluster.custom.patch_namespaced_custom_object_status(
        "vesuvius.dev", "v1alpha1", cluster.namespace, "inferencejobs", "probe",
        {"status": {"phase": "Pending"}, "spec": {"parts": 7}}, _content_type="application/merge-patch+json")
    assert st["status"] == {"phase": "Pending"} and st["spec"]["parts"] == 1  # /status changes only status
    assert st["metadata"]["generation"] == 1 and int(st["metadata"]["resourceVersion"]) > rv0
    main = cluster.patch_ij("probe", {"metadata": {"labels": {"team": "a"}}, "status": {"phase": "Failed"}})
    assert main["status"] == {"phase": "Pending"} and main["metadata"]["generation"] == 1  # metadata only
    same = cluster.patch_ij("probe", {"metadata": {"labels": {"team": "a"}}})
    assert same["metadata"]["resourceVersion"] == main["metadata"]["resourceVersion"]  # a no-op changes nothing
    spec = cluster.patch_ij("probe", {"spec": {"suspend": True}})
    assert spec["metadata"]["generation"] == 2
    with pytest.raises(kubernetes.client.ApiException) as e:  # JSON-patch test op on a stale resourceVersion
        cluster.custom.patch_namespaced_custom_object(
            "vesuvius.dev", "v1alpha1", cluster.namespace, "inferencejobs", "probe",
            [{"op": "test", "path": "/metadata/resourceVersion", "value": str(rv0)},
             {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}],
            _content_type="application/json-patch+json")
    assert e.value.status == 422
    cluster.create_ij(spec_for("other"))
    items = cluster.custom.list_namespaced_custom_object("vesuvius.dev", "v1alpha1", cluster.namespace,
                                                         "inferencejobs", label_selector="team=a")
    assert [i["metadata"]["name"] for i in items["items"]] == ["probe"]
    assert items["kind"] == "InferenceJobList" and int(items["metadata"]["resourceVersion"]) > rv0
    for selector, names in (("team", ["probe"]), ("!team", ["other"]), ("team in (a,b)", ["probe"]),
                            ("team notin (a)", ["other"]), ("team!=a", ["other"])):
        got = cluster.custom.list_namespaced_custom_object("vesuvius.dev", "v1alpha1", cluster.namespace,
                                                           "inferencejobs", label_selector=selector)["items"]
        assert [i["metadata"]["name"] for i in got] == names, selector
    # a watch from a resourceVersion replays exactly what came after it
    w = kubernetes.watch.Watch()
    seen = [(ev["type"], ev["object"]["metadata"]["name"], ev["object"].get("spec", {}).get("suspend"))
            for ev in w.stream(cluster.custom.list_namespaced_custom_object, "vesuvius.dev", "v1alpha1",
                               cluster.namespace, "inferencejobs", resource_version=str(rv0), timeout_seconds=1)]
    assert seen == [("MODIFIED", "probe", False), ("MODIFIED", "probe", False), ("MODIFIED", "probe", True),
                    ("ADDED", "other", False)]


def test_job_controller_nonindexed_backoff_limit_and_fail_job(cluster, controller):
    """The controller's NonIndexed semantics (blend/finalize Jobs): backoffLimit counts, FailJob stops at once."""
    def job(name: str, backoff: int) -> dict:
        return {"metadata": {"name": name}, "spec": {
            "backoffLimit": backoff, "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": "blend", "operator": "In", "values": [2, 3]}}]},
            "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "blend", "image": "worker", "args": ["--version"]}]}}}}

    for attempt in (0, 1):
        controller.fail("flap", None, exit_code=1, attempt=attempt)
    controller.fail("fatal", None, exit_code=3)
    cluster.batch.create_namespaced_job(cluster.namespace, job("flap", 1))
    cluster.batch.create_namespaced_job(cluster.namespace, job("fatal", 6))
    jobs = cluster.wait("both Jobs failed", lambda: (j := cluster.jobs()) and all(
        cond_true(x, "Failed") for x in j.values()) and j, timeout=60)
    assert cond(jobs["flap"], "Failed")["reason"] == "BackoffLimitExceeded" and jobs["flap"]["status"]["failed"] == 2
    assert cond_true(jobs["flap"], "FailureTarget")
    assert cond(jobs["fatal"], "Failed")["reason"] == "PodFailurePolicy" and jobs["fatal"]["status"]["failed"] == 1
    assert [r.exit_code for r in controller.results_of("fatal")] == [3]
    assert jobs["flap"]["spec"]["template"]["metadata"]["labels"]["job-name"] == "flap"  # API server defaulting
