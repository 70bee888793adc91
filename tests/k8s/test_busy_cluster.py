"""The operator on a busy cluster (issue 17), end to end against the emulated API server and controllers:
pods the API server refuses, pods no node takes, GPUs a container cannot see, kubelet evictions, Kueue's
own decisions, lost stages checked on storage, progress with kubectl alone, and reads that stay selective.
Each stall shows as the condition and Event a user sees; the emulated behaviour is ported and cited in
admission.py, job_controller.py, kueue.py and kmock_api.py.

Pods are stubs (a short wait, or held until released, optionally printing lines) except where the test
says otherwise: these tests are about the control plane.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from plugins.k8s import SAMPLE, cond, run_kueue
from vesuvius_inference.contract.progress import parse_duration

pytestmark = pytest.mark.slow
KUBECTL = "/usr/bin/kubectl"


def spec_for(name: str, **changes) -> dict:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["output"]["uri"] = f"s3://results/{name}/surface.zarr"
    body["spec"].update(changes)
    return body


def condition(cluster, name, kind, status="True", timeout=30.0):
    return cluster.wait(f"{name}: {kind}={status}", lambda: (o := cluster.ij(name)) and (c := cond(o, kind)) and
                        c["status"] == status and o, timeout=timeout)


def kubectl(cluster, *args: str, capture: str | None = None) -> str:
    """Real kubectl against the emulated API server; with VESUVIUS_CAPTURE=DIR the output is also kept
    (the README's examples are these captures)."""
    r = subprocess.run([KUBECTL, "--kubeconfig", cluster.kubeconfig, "-n", cluster.namespace, *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    if capture and os.environ.get("VESUVIUS_CAPTURE"):
        out = Path(os.environ["VESUVIUS_CAPTURE"])
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{capture}.txt").write_text(f"$ kubectl {' '.join(args)}\n{r.stdout}")
    return r.stdout


def statuses(cluster, name: str) -> list[dict]:
    return [(v or {}).get("status") or {} for v in cluster.server.call(
        cluster.api.history, "vesuvius.dev/v1alpha1/inferencejobs", cluster.namespace, name)]


def event_reasons(cluster, name):
    return [e["reason"] for e in cluster.events(name)]


# ---- pods that are never created -----------------------------------------------------------------

def test_pods_the_api_server_refuses_show_why_and_what_to_do(cluster, operator, stub_controller):
    """ResourceQuota, a missing ServiceAccount, a missing PriorityClass: the Job controller's FailedCreate
    Events become the condition PodsNotCreated with the refusal and what to do; fixing it resumes the run."""
    stub_controller.stub(r"^quota-predict$", held=True)
    cluster.core.create_namespaced_resource_quota(cluster.namespace, {
        "metadata": {"name": "gpu-quota"}, "spec": {"hard": {"requests.nvidia.com/gpu": "1"}}})
    cluster.create_ij(spec_for("quota", parts=2))
    cluster.create_ij(spec_for("nosa", serviceAccountName="vesuvius-worker"))
    cluster.create_ij(spec_for("nopc", priorityClassName="batch-low"))
    quota = condition(cluster, "quota", "PodsNotCreated")
    c = cond(quota, "PodsNotCreated")
    assert c["reason"] == "ResourceQuotaExceeded" and quota["status"]["phase"] == "Predicting"
    assert "exceeded quota: gpu-quota, requested: requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=1, " \
           "limited: requests.nvidia.com/gpu=1" in c["message"] and "lower spec.parallelism" in c["message"]
    sa = cond(condition(cluster, "nosa", "PodsNotCreated"), "PodsNotCreated")
    assert sa["reason"] == "ServiceAccountNotFound" and 'serviceaccount "vesuvius-worker" not found' in sa["message"]
    pc = cond(condition(cluster, "nopc", "PodsNotCreated"), "PodsNotCreated")
    assert pc["reason"] == "PriorityClassNotFound" and "no PriorityClass with name batch-low was found" in pc["message"]
    kubectl(cluster, "get", "ij", capture="stall-get")
    assert "Warning  ResourceQuotaExceeded" in kubectl(cluster, "describe", "ij", "quota", capture="stall-describe")
    for name, reason in (("quota", "ResourceQuotaExceeded"), ("nosa", "ServiceAccountNotFound"),
                         ("nopc", "PriorityClassNotFound")):
        cluster.wait(f"{reason} Event", lambda n=name, r=reason: r in event_reasons(cluster, n))
    # the Job controller's own Event, aggregated as client-go's EventCorrelator does
    job_events = [e for e in cluster.core.list_namespaced_event(cluster.namespace).items
                  if e.involved_object.name == "nosa-predict" and e.reason == "FailedCreate"]
    assert len(job_events) == 1 and job_events[0].count >= 2
    # fixing what the conditions name lets the runs go on
    cluster.core.create_namespaced_service_account(cluster.namespace, {"metadata": {"name": "vesuvius-worker"}})
    cluster.server.call(cluster.api.create, "scheduling.k8s.io/v1/priorityclasses", None,
                        {"metadata": {"name": "batch-low"}, "value": 100})
    stub_controller.release()
    for name in ("quota", "nosa", "nopc"):
        done = cluster.wait_phase(name, "Succeeded", timeout=60)
        assert cond(done, "PodsNotCreated")["status"] == "False", name


# ---- pods that are never scheduled, and GPUs a container cannot see ---------------------------------

def test_pods_no_node_takes_and_a_gpu_the_container_cannot_see(cluster, operator, stub_controller):
    from k8s.job_controller import Node

    stub_controller.nodes = [Node("gpu-a", gpus=1, labels={"pool": "gpu"}), Node("cpu-a", labels={"pool": "cpu"})]
    stub_controller.stub(r"^wait-predict$", held=True)
    said = "error: --device cuda: no CUDA device is visible in this container; check the NVIDIA runtime"
    stub_controller.fail("blind-predict", 0, exit_code=69, message=said)
    stub_controller.hook("blind-predict", 0, attempt=1, held=True)
    cluster.create_ij(spec_for("wait", parts=2, predict={"nodeSelector": {"pool": "gpu"}}))
    unsched = condition(cluster, "wait", "PodsUnschedulable", timeout=40)
    c = cond(unsched, "PodsUnschedulable")
    assert c["reason"] == "Unschedulable" and "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, " \
        "1 node(s) didn't match Pod's node affinity/selector" in c["message"]
    assert "Unschedulable" in event_reasons(cluster, "wait")
    stub_controller.release()  # the first pod ends, its GPU frees, the second pod is scheduled
    done = cluster.wait_phase("wait", "Succeeded", timeout=60)
    assert cond(done, "PodsUnschedulable")["status"] == "False"

    stub_controller.nodes = None
    (stub_controller.release_dir / "go").unlink()
    cluster.create_ij(spec_for("blind", parts=1))
    blind = condition(cluster, "blind", "GPUUnavailable")
    g = cond(blind, "GPUUnavailable")
    assert g["reason"] == "DeviceUnavailable" and said in g["message"] and "runtimeClassName" in g["message"]
    assert "DeviceUnavailable" in event_reasons(cluster, "blind")
    stub_controller.release()  # exit 69 is retried: the next pod (another node, a fixed driver) succeeds
    done = cluster.wait_phase("blind", "Succeeded", timeout=60)
    assert cond(done, "GPUUnavailable")["status"] == "False"


# ---- evictions ------------------------------------------------------------------------------------

def test_a_part_evicted_past_the_bound_fails_with_the_reason(cluster, operator, stub_controller):
    """The kubelet evicts the part's pods (DisruptionTarget, which the Ignore rule also matches): twice is
    allowed with maxDisruptionsPerPart 1, the third pod refuses to start (exit 79) and FailIndex ends the part.
    The third pod runs the real CLI: its refusal is the product's, not the stub's. The spec's own resources
    request less memory than they allow, which leaves the kubelet a reason of the part's own to evict it: only
    such pods are bounded (the operator's own request their limit: tests/k8s/test_disruptions.py)."""
    stub_controller.unstub(r"^evicted-predict$")
    stub_controller.evict("evicted-predict", 0, after=0.3, attempts=range(2))
    cluster.create_ij(spec_for("evicted", parts=1, retry={"maxDisruptionsPerPart": 1}, predict={
        "resources": {"requests": {"memory": "6Gi"}, "limits": {"memory": "12Gi"}}}))
    failed = cluster.wait_phase("evicted", "Failed", timeout=90)["status"]
    assert failed["reason"] == "PartsFailed" and failed["parts"]["failedIndexes"] == "0"
    runs = [(r.attempt, r.exit_code, r.action, r.conditions) for r in stub_controller.results_of("evicted-predict")]
    assert runs == [(0, 137, "Ignore", ["DisruptionTarget"]), (1, 137, "Ignore", ["DisruptionTarget"]),
                    (2, 79, "FailIndex", [])]
    pods = cluster.pods("evicted-predict")
    evicted = [p for p in pods if p["status"].get("reason") == "Evicted"]
    assert len(evicted) == 2 and all("low on resource: memory" in p["status"]["message"] for p in evicted)
    ignored = [p["metadata"]["annotations"].get("batch.kubernetes.io/job-index-ignored-failure-count") for p in pods]
    assert sorted(ignored, key=str) == sorted([None, "1", "2"], key=str)
    warning = cluster.wait("the PartsFailed event", lambda: [e for e in cluster.events("evicted")
                                                             if e["reason"] == "PartsFailed"])[0]
    assert "exit 79" in warning["message"] and "disrupted 2 times" in warning["message"]


def test_the_operators_pods_are_not_the_kubelets_first_victims():
    """rankMemoryPressure puts pods above their memory request first: a pod with no request (what the
    operator used to create) is above it at any usage; the derived request keeps ours below it."""
    from k8s.job_controller import rank_memory_pressure
    from vesuvius_inference.k8s import manifests
    from vesuvius_inference.k8s import spec as specmod

    s = specmod.parse(yaml.safe_load(SAMPLE.read_text())["spec"])
    ours = {"metadata": {"name": "ours"}, "spec": manifests.predict_job("ij", "ns", "u", spec=s)["spec"]["template"]["spec"]}
    bare = {"metadata": {"name": "best-effort"}, "spec": {"containers": [{"name": "predict", "resources": {}}]}}
    gib = 2**30
    assert rank_memory_pressure([ours, bare], {"ours": 6 * gib, "best-effort": 1 * gib}) == ["best-effort", "ours"]


# ---- Kueue's decisions -------------------------------------------------------------------------------

@pytest.mark.own_cluster("Kueue is installed cluster-wide (run_kueue), with settings of this test's own")
def test_kueue_deactivating_a_workload_itself_is_shown_and_never_undone(cluster, operator, stub_controller):
    """waitForPodsReady with requeuingBackoffLimitCount 1: pods that never get ready are evicted once
    (PodsReadyTimeout), then Kueue deactivates the Workload. The run shows it; the operator leaves it be."""
    stub_controller.unpullable.add("registry.invalid/none:1")
    with run_kueue(cluster, pods_ready_timeout=1.5, requeuing_limit=1, backoff_s=0.5) as kueue:
        cluster.create_ij(spec_for("gated", parts=2, queueName="gpu", image="registry.invalid/none:1"))
        held = cluster.wait_phase("gated", "Suspended", timeout=60)
        seen = [c for st in statuses(cluster, "gated") for c in st.get("conditions") or []
                if c["type"] == "Evicted" and c["status"] == "True"]
        assert seen and seen[0]["reason"] == "PodsReadyTimeout", "the first eviction was not shown"
        s = cond(held, "Suspended")
        assert held["status"]["reason"] == s["reason"] == "DeactivatedByKueueRequeuingLimitExceeded"
        assert "exceeding the maximum number of re-queuing retries" in s["message"]
        rounds = kueue.ticks  # resyncs and Kueue passes: nobody reactivates it
        operator.settle()
        kueue.wait_ticks(rounds + 2)
        (wl,) = kueue.workloads()
        assert wl["spec"]["active"] is False and cond(wl, "Evicted")["reason"] == \
            "DeactivatedDueToRequeuingLimitExceeded"
        assert "vesuvius.dev/deactivated-by" not in (wl["metadata"].get("annotations") or {})
        assert cluster.jobs("gated")["gated-predict"]["spec"]["suspend"] is True
        assert cluster.ij("gated")["status"]["phase"] == "Suspended"
        assert "DeactivatedByKueueRequeuingLimitExceeded" in event_reasons(cluster, "gated")
        kubectl(cluster, "get", "ij", capture="kueue-get")
        described = kubectl(cluster, "describe", "ij", "gated", capture="kueue-describe")
        assert "DeactivatedByKueueRequeuingLimitExceeded" in described


@pytest.mark.own_cluster("Kueue is installed cluster-wide (run_kueue), serving v1beta1 only")
def test_a_queue_too_small_for_the_default_parallelism_says_so_and_a_lower_one_runs(
        cluster, operator, stub_controller):
    """parallelism defaults to parts: 4 GPUs against a ClusterQueue of 2. Kueue never admits it (ExceedsMaxQuota);
    lowering spec.parallelism reaches the Job while it waits, Kueue updates the Workload and admits it. An older
    Kueue serving only v1beta1: the operator falls back to it."""
    with run_kueue(cluster, versions=("v1beta1",), quota_gpus=2):
        cluster.create_ij(spec_for("wide", parts=4, queueName="gpu"))
        # Workloads are not watched: a queue change shows by the next pass (a Job event or the resync)
        queued = cluster.wait("Queued: ExceedsMaxQuota", lambda: (o := cluster.ij("wide")) and (
            cond(o, "Queued") or {}).get("reason") == "ExceedsMaxQuota" and o, timeout=30)
        q = cond(queued, "Queued")
        assert q["reason"] == "ExceedsMaxQuota" and "current podset request (4) > maximum capacity (2)" in q["message"]
        cluster.patch_ij("wide", {"spec": {"parallelism": 2}})
        done = cluster.wait_phase("wide", "Succeeded", timeout=90)
        assert cond(done, "Queued")["status"] == "False"
        assert cluster.jobs("wide")["wide-predict"]["spec"]["parallelism"] == 2


# ---- lost stages --------------------------------------------------------------------------------------

def test_stages_whose_jobs_vanished_unseen_are_judged_on_storage(cluster, operator, controller, s3_env):
    """ttlSecondsAfterFinished 0 and the operator down while predict, then finalize, ended: both Jobs are
    gone unseen. Check Jobs (the real ``vesuvius-inference check`` against S3) find the parts' markers and
    the complete output: the run goes on and ends Succeeded, verified."""
    cluster.create_ij(spec_for("unseen", inference={"tta": False, "device": "cpu"}, ttlSecondsAfterFinished=0))
    cluster.wait("the predict Job", lambda: "unseen-predict" in cluster.jobs("unseen"), timeout=60)
    operator.kill()
    cluster.wait("predict done and deleted", lambda: any(r.job == "unseen-predict" and r.exit_code == 0
                                                         for r in controller.results) and
                 "unseen-predict" not in cluster.jobs("unseen"), timeout=240)
    operator.start()
    cluster.wait("the finalize Job", lambda: "unseen-finalize" in cluster.jobs("unseen"), timeout=240)
    operator.kill()
    cluster.wait("finalize done and deleted", lambda: any(r.job == "unseen-finalize" and r.exit_code == 0
                                                          for r in controller.results) and
                 "unseen-finalize" not in cluster.jobs("unseen"), timeout=240)
    operator.start()
    done = cluster.wait_phase("unseen", "Succeeded", timeout=240)["status"]
    assert "verified on storage by unseen-check-f" in done["message"]
    stages = done["stages"]
    assert stages["predict"]["verifiedBy"] == "unseen-check-p" and stages["predict"]["check"]["state"] == "Complete"
    assert "all 1 predict parts have their markers" in stages["predict"]["check"]["message"]
    assert stages["finalize"]["check"]["state"] == "Complete"
    ran = [(r.job, r.exit_code) for r in controller.results]
    assert ("unseen-check-p", 0) in ran and ("unseen-check-f", 0) in ran
    assert [j for j, _ in ran].count("unseen-finalize") == 1  # the output was complete: not run again
    assert "CheckingLostStage" in event_reasons(cluster, "unseen")


# ---- progress, Events and metrics with kubectl alone ------------------------------------------------------

LINES = ("loading model", "progress predict 0/4: 1200/5000 patches (24.0%), 3.00 patches/s, ETA 21m06s")


def test_progress_with_kubectl_alone_and_reads_that_stay_selective(cluster, operator, stub_controller):
    stub_controller.stub(r"-predict$", held=True, lines=LINES)
    cluster.create_ij(spec_for("watch", parts=4, parallelism=2))
    busy = cluster.wait("progress in the status", lambda: (o := cluster.ij("watch")) and (
        (o.get("status") or {}).get("progress") or {}).get("sampledPods") == 2 and o, timeout=40)
    p = busy["status"]["progress"]
    # 2 of 4 parts running at 1200 of 5000 patches, 3/s each: 2400 of 20000 patches, 6/s
    assert (p["percent"], p["rate"], p["eta"], p["summary"]) == ("12.0%", "6.00/s", "48m53s", "2400/20.0k patches")
    table = kubectl(cluster, "get", "ij", capture="run-get")
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "REASON", "PARTS", "DONE", "ETA", "STAGE", "AGE"]
    row = table.split("\n")[1].split()
    assert row[:4] + row[6:7] == ["watch", "Predicting", "Predicting", "0/4", "predict"]
    # DONE and ETA are the whole run's (test_run_progress.py): below the stage's 12%, beyond its 48m53s
    assert float(row[4].rstrip("%")) < 12.0 and (parse_duration(row[5]) or 0) > parse_duration("48m53s"), row
    wide = kubectl(cluster, "get", "ij", "-o", "wide", capture="run-get-wide")
    assert "2400/20.0k patches" in wide and "6.00/s" in wide
    pod = next(p["metadata"]["name"] for p in cluster.pods("watch-predict"))
    assert LINES[1] in kubectl(cluster, "logs", pod, capture="run-logs")
    metrics = operator.metrics()
    assert f'vesuvius_inferencejob_work_total{{namespace="{cluster.namespace}",name="watch",stage="predict",' \
           'unit="patches"} 20000' in metrics and 'vesuvius_inferencejobs{phase="Predicting"} 1' in metrics
    stub_controller.release()
    cluster.wait_phase("watch", "Succeeded", timeout=60)
    kubectl(cluster, "describe", "ij", "watch", capture="run-describe")
    reasons = event_reasons(cluster, "watch")
    for r in ("PredictStarted", "BlendStarted", "FinalizeStarted", "Succeeded"):
        assert r in reasons, reasons
    # every list the operator made was selective: Jobs by label, pods by label, phase and limit; no pod watch
    requests = cluster.server.call(lambda: list(cluster.api))  # the module's: this run's reads are in its namespace
    ours = [r for r in requests if (r.headers.get("User-Agent") or "").startswith("vesuvius-inference-operator/")]
    pods = [r for r in ours if r.method == "GET" and r.url.path.endswith(f"/namespaces/{cluster.namespace}/pods")]
    assert pods and all(r.params.get("labelSelector") and r.params.get("limit") and r.params.get("fieldSelector")
                        for r in pods)
    jobs = [r for r in ours if r.method == "GET" and r.url.path.endswith(f"/namespaces/{cluster.namespace}/jobs")]
    assert jobs and all(r.params.get("labelSelector") == "vesuvius.dev/inferencejob=watch" for r in jobs)
    job_watch = [r for r in requests if r.url.path.endswith("/jobs") and r.params.get("watch")
                 and "kopf" in (r.headers.get("User-Agent") or "")]
    assert job_watch and all(r.params.get("labelSelector") == "vesuvius.dev/inferencejob" for r in job_watch)
