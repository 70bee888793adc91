"""The pod asks for what it uses (issue 24, point 1): inference.device and predict.gpus are one setting seen
from both sides, refused at apply time (the CRD's enum and CEL rules, run by crd_check as the API server
would) and by the operator (checks.refusals: an InvalidSpec condition, no Job), and tolerations are checked
as the API server checks them (pkg/apis/core/validation/validation.go, ValidateTolerations, ported in
job_validation.py). Every Job made is validated like the API server does (kubernetes-validate's schema and
the ported Job and pod rules)."""

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

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
GPU = "nvidia.com/gpu"
CHART = manifests.OperatorDefaults(gpu_node_selector={"pool": "gpu"}, queue_name="gpu-queue",
                                   cpu_queue_name="cpu-queue")


def raw(**changes):
    doc = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())
    doc["spec"].update(changes)
    return doc


def api_server_errors(job):
    """What the API server would say about a Job: the OpenAPI schema and the ported validation rules."""
    obj = copy.deepcopy(job)
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    default_job(obj)
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    return validate_job(obj)


def jobs_of(spec):
    s = specmod.parse(spec)
    return [manifests.predict_job("ij", "ns", "u", spec=s, defaults=CHART), manifests.blend_job("ij", "ns", "u", spec=s, defaults=CHART),
            manifests.finalize_job("ij", "ns", "u", spec=s, defaults=CHART),
            manifests.check_job("ij", "ns", "u", spec=s, stage="predict", lost_uid="lost", defaults=CHART)]


def pod(job):
    return job["spec"]["template"]["spec"]


def env(job):
    return {e["name"]: e.get("value") for e in pod(job)["containers"][0]["env"]}


def gpus_asked(job):
    res = pod(job)["containers"][0]["resources"]
    return {k: v.get(GPU) for k, v in res.items() if GPU in v}


# ---- what the pods ask for ----------------------------------------------------------------------------

@pytest.mark.parametrize("inference, predict, gpu, visible", [
    ({"device": "cpu"}, {}, {}, "void"),
    ({"device": "cpu"}, {"gpus": 0}, {}, "void"),
    ({"device": "cpu"}, {"gpus": 1}, {}, "void"),  # stored by the CRD's old default: ignored, not refused
    ({"device": "cuda:0"}, {}, {"limits": "1"}, None),  # held by objects of earlier versions: the pod's GPU
    ({"device": "cuda"}, {}, {"limits": "1"}, None),
    ({}, {"gpus": 1}, {"limits": "1"}, None),
    ({}, {"resources": {"requests": {GPU: 1}}}, {"requests": "1", "limits": "1"}, None),
])
def test_the_predict_pod_asks_for_the_gpus_its_device_uses(inference, predict, gpu, visible):
    spec = raw(inference=inference, predict=predict)["spec"]
    job = jobs_of(spec)[0]
    p = pod(job)
    assert gpus_asked(job) == gpu
    assert env(job).get("NVIDIA_VISIBLE_DEVICES") == visible
    tolerates_gpu = any(t.get("key") == GPU for t in p.get("tolerations") or [])
    assert tolerates_gpu == bool(gpu) and (p.get("nodeSelector") == {"pool": "gpu"}) == bool(gpu)
    # a CPU run waits in the CPU queue, not behind GPU work
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == ("gpu-queue" if gpu else "cpu-queue")
    assert api_server_errors(job) == []


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_no_other_pod_asks_for_or_sees_a_gpu(device):
    """blend, finalize and check pods run the same CUDA-based image: NVIDIA_VISIBLE_DEVICES=void keeps the
    NVIDIA runtime from handing them every GPU of the node."""
    for job in jobs_of(raw(inference={"device": device})["spec"])[1:]:
        assert gpus_asked(job) == {} and env(job)["NVIDIA_VISIBLE_DEVICES"] == "void", job["metadata"]["name"]
        assert not any(t.get("key") == GPU for t in pod(job).get("tolerations") or [])
        assert api_server_errors(job) == []


# ---- refused at apply time and by the operator -----------------------------------------------------------

REFUSED = [
    ({"inference": {"device": "auto"}}, "'auto' is refused", "is not one of ['cuda', 'cpu']"),
    ({"inference": {"device": "cuda:3"}}, "'cuda:3' is refused", "is not one of ['cuda', 'cpu']"),
    ({"inference": {"device": "banana"}}, "'banana' is refused", "is not one of ['cuda', 'cpu']"),
    ({"inference": {"device": "mps"}}, "'mps' is refused", "is not one of ['cuda', 'cpu']"),
    ({"predict": {"gpus": 0}}, "predict.gpus 0 with inference.device cuda", "predict.gpus 0 with inference.device"),
    ({"predict": {"gpus": 4}}, "3 of 4 would idle", "so 3 would idle"),
    ({"inference": {"device": "cpu"}, "predict": {"gpus": 2}}, "a CPU run uses no GPU", "cpu uses no GPU"),
    ({"inference": {"device": "cpu"}, "predict": {"resources": {"limits": {GPU: 1}}}},
     "contradicts inference.device cpu", None),
    ({"predict": {"resources": {"limits": {GPU: 2}}}}, "contradicts inference.device cuda", None),
]


@pytest.mark.parametrize("changes, operator_says, apiserver_says", REFUSED)
def test_impossible_devices_are_refused_by_the_crd_and_the_operator(changes, operator_says, apiserver_says):
    doc = raw(**changes)
    said = refusals("ij", specmod.parse(doc["spec"]))
    assert any(operator_says in m for m in said), said
    if apiserver_says is not None:  # quantities under resources are the operator's alone (CEL cannot parse them)
        errs = crd_validate(doc)
        assert any(apiserver_says in e for e in errs), errs


def test_the_sample_devices_pass_both():
    for changes in ({}, {"inference": {"device": "cpu"}}, {"inference": {"device": "cpu"}, "predict": {"gpus": 0}},
                    {"predict": {"gpus": 1}}):
        doc = raw(**changes)
        assert crd_validate(doc) == [] and refusals("ij", specmod.parse(doc["spec"])) == [], changes


# ---- tolerations as the API server checks them --------------------------------------------------------------

TOLERATIONS = [
    ({"key": "pool", "operator": "Equal", "value": "gpu pool", "effect": "NoSchedule"}, "not a valid label value"),
    ({"key": "pool", "value": "x" * 64}, "not a valid label value"),
    ({"key": "bad key!", "operator": "Exists"}, "not a valid label key"),
    ({"operator": "Equal", "value": "x"}, "must be Exists when key is empty"),
]


@pytest.mark.parametrize("toleration, fragment", TOLERATIONS)
@pytest.mark.parametrize("where", ["spec", "predict", "blend"])
def test_a_toleration_the_api_server_refuses_is_refused_at_apply_time_and_by_the_operator(toleration, fragment,
                                                                                           where):
    doc = raw(**({"tolerations": [toleration]} if where == "spec" else {where: {"tolerations": [toleration]}}))
    assert crd_validate(doc) != []
    said = refusals("ij", specmod.parse(doc["spec"]))
    assert any(fragment in m for m in said), said
    # the Job it would have made is one the API server refuses (the reason both refuse it first)
    stage = {"spec": 0, "predict": 0, "blend": 1}[where]
    assert any("tolerations" in e for e in api_server_errors(jobs_of(doc["spec"])[stage]))


def test_valid_tolerations_pass_all_three():
    good = [{"key": "pool", "operator": "Equal", "value": "gpu-pool", "effect": "NoSchedule"},
            {"operator": "Exists"}, {"key": "example.com/spot", "operator": "Exists", "effect": "NoExecute",
                                     "tolerationSeconds": 30}]
    doc = raw(tolerations=good)
    assert crd_validate(doc) == [] and refusals("ij", specmod.parse(doc["spec"])) == []
    assert api_server_errors(jobs_of(doc["spec"])[0]) == []
