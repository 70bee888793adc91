"""The wiring of issue 24's spec checks and smaller items, end to end: the real operator (a subprocess)
against the emulated API server (CRD schema and CEL at apply time) and the emulated Job controller with
stubbed pods. What each situation means is tested as a table in test_devices_manifests.py and
test_passthrough.py; here only that the operator acts on it.

- a spec only the operator can refuse (a GPU count in resources that contradicts the device) is an
  InvalidSpec condition and no Job; ``device: auto`` and a toleration value that is no label value are
  refused by the API server at apply time, with the CRD's words;
- a queueName on a cluster without Kueue: a KueueMissing condition and the Reason column say so, and
  spec.suspend suspends the Job (Kueue would have; nobody did);
- foreground deletion (the InferenceJob stays, with a deletionTimestamp, until the garbage collector has
  deleted its Jobs: kmock_api.GarbageCollector, pkg/controller/garbagecollector) creates no Job meanwhile.
"""

from __future__ import annotations

import subprocess

import kubernetes
import pytest
import yaml
from plugins.k8s import SAMPLE, cond

pytestmark = pytest.mark.slow
KUBECTL = "/usr/bin/kubectl"
GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"


def spec_for(name: str, **changes) -> dict:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["output"]["uri"] = f"s3://results/{name}/surface.zarr"
    body["spec"]["inference"] = {"device": "cpu"}
    body["spec"].update(changes)
    return body


def condition(cluster, name, kind, status="True", timeout=30.0):
    return cluster.wait(f"{name}: {kind}={status}", lambda: (o := cluster.ij(name)) and (c := cond(o, kind)) and
                        c["status"] == status and o, timeout=timeout)


def created(cluster, job: str) -> int:
    """How many times a Job of this name was created (the API server's stored versions)."""
    uids = {v["metadata"]["uid"] for v in cluster.server.call(cluster.api.history, "batch/v1/jobs", cluster.namespace,
                                                              job) if v is not None}
    return len(uids)


def kubectl_get(cluster, name: str) -> dict[str, str]:
    r = subprocess.run([KUBECTL, "--kubeconfig", cluster.kubeconfig, "-n", cluster.namespace, "get", "ij", name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    head, row = r.stdout.splitlines()[:2]
    return dict(zip(head.split(), row.split()))


def test_refusals_at_apply_time_and_by_the_operator(cluster, operator, stub_controller):
    for changes, said in ((dict(inference={"device": "auto"}), "'auto' is not one of ['cuda', 'cpu']"),
                          (dict(tolerations=[{"key": "pool", "operator": "Equal", "value": "gpu pool"}]),
                           "'gpu pool' does not match")):
        with pytest.raises(kubernetes.client.ApiException) as e:
            cluster.create_ij(spec_for("refused", **changes))
        assert e.value.status == 422 and said in e.value.body, e.value.body
    cluster.create_ij(spec_for("twogpus", inference={"device": "cuda"},
                               predict={"resources": {"limits": {"nvidia.com/gpu": 2}}}))
    failed = cluster.wait_phase("twogpus", "Failed", timeout=60)
    st = failed["status"]
    assert st["reason"] == "InvalidSpec" and "contradicts inference.device cuda" in st["message"]
    assert cond(failed, "Failed")["reason"] == "InvalidSpec" and cluster.jobs("twogpus") == {}


def test_a_queue_without_kueue_says_so_and_the_run_goes_on(cluster, operator, stub_controller):
    """The wiring: the Workload API's 404 reaches the status, the REASON column and an Event, and the run goes on
    without Kueue. That suspend then patches the Job itself (nobody else would) is a table case
    (test_passthrough.py's test_a_queue_without_kueue_is_a_condition_and_suspend_still_works); the suspend
    patch's own wiring is test_operator_e2e.py's suspend and resume run."""
    stub_controller.stub(r"^nokueue-predict$", held=True)
    cluster.create_ij(spec_for("nokueue", queueName="gpu-queue"))
    seen = condition(cluster, "nokueue", "KueueMissing")
    c = cond(seen, "KueueMissing")
    assert c["reason"] == "KueueNotInstalled" and "gpu-queue" in c["message"] and "Install Kueue" in c["message"]
    assert kubectl_get(cluster, "nokueue")["REASON"] == "KueueMissing"
    assert "KueueMissing" in [e["reason"] for e in cluster.events("nokueue")]
    stub_controller.release()
    cluster.wait_phase("nokueue", "Succeeded", timeout=60)


def test_foreground_deletion_creates_no_job_while_the_jobs_are_collected(cluster, operator, stub_controller):
    stub_controller.stub(r"^fg-predict$", held=True)
    cluster.create_ij(spec_for("fg"))
    cluster.wait("fg-predict running", lambda: cluster.jobs("fg").get("fg-predict", {}).get("status", {}).get("active"))
    cluster.server.call(setattr, cluster.api.gc, "delay", 4.0)  # the collector takes its time
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL, "fg",
                                                   propagation_policy="Foreground")
    assert cluster.ij("fg")["metadata"].get("deletionTimestamp")
    stub_controller.release()  # predict completes while the InferenceJob is being deleted
    cluster.wait("fg-predict complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in (cluster.jobs("fg").get("fg-predict", {}).get("status", {}).get("conditions") or [])), timeout=30)
    cluster.wait("the InferenceJob gone", lambda: cluster.ij("fg") is None, timeout=30)
    assert created(cluster, "fg-blend") == 0 and created(cluster, "fg-check-p") == 0
    assert created(cluster, "fg-predict") == 1
