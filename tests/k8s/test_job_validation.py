"""The port of kube-apiserver's Job validation (job_validation.py) says what the real server says about the
cases the operator can run into; each expectation is the rule as written in
pkg/apis/batch/validation/validation.go / pkg/apis/core/validation/validation.go (see the module)."""

from __future__ import annotations

import copy

import pytest
from k8s.job_validation import validate_job, validate_job_update
from k8s.kmock_api import default_job


def job(**spec):
    j = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "ij-predict", "namespace": "ns", "uid": "u1"},
         "spec": {"completionMode": "Indexed", "completions": 4, "parallelism": 4, "backoffLimitPerIndex": 1,
                  "podReplacementPolicy": "Failed",
                  "template": {"spec": {"restartPolicy": "Never", "containers": [
                      {"name": "predict", "image": "worker", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}}
    j["spec"].update(spec)
    default_job(j)
    return j


def test_a_valid_indexed_job_passes():
    assert validate_job(job()) == []


@pytest.mark.parametrize("change, message", [
    ({"maxFailedIndexes": 5}, "spec.maxFailedIndexes: Invalid value: 5: must be less than or equal to completions"),
    ({"backoffLimitPerIndex": None, "maxFailedIndexes": 1}, "spec.backoffLimitPerIndex: Required value"),
    ({"completionMode": "NonIndexed"}, "backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode"),
    ({"podReplacementPolicy": "TerminatingOrFailed", "podFailurePolicy": {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}},
     'spec.podReplacementPolicy: Unsupported value: "TerminatingOrFailed"'),
    ({"podFailurePolicy": {"rules": [{"action": "FailIndex", "onExitCodes": {
        "containerName": "other", "operator": "In", "values": [3, 2]}}]}}, "must be one of the container"),
    ({"podFailurePolicy": {"rules": [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3, 2]}}]}},
     "must be ordered"),
    ({"parallelism": 100001}, "must be less than or equal to 100000 when completion mode is Indexed"),
])
def test_job_spec_rules(change, message):
    j = job(**{k: v for k, v in change.items() if v is not None})
    for k, v in change.items():
        if v is None:
            j["spec"].pop(k, None)
    assert any(message in e for e in validate_job(j)), validate_job(j)


def test_names_hostnames_and_labels():
    j = job(completions=100)
    j["metadata"]["name"] = "n" * 61  # pods' hostname n..n-99: 64 characters
    j["spec"]["template"]["metadata"]["labels"].update({"batch.kubernetes.io/job-name": j["metadata"]["name"],
                                                         "job-name": j["metadata"]["name"]})
    assert any("will not able to create pod with invalid DNS label" in e for e in validate_job(j))
    j = job(completionMode="NonIndexed", backoffLimitPerIndex=None)
    j["spec"].pop("backoffLimitPerIndex")
    j["metadata"]["name"] = "n" * 64  # the API server copies the name into the template's job-name label
    default_job(j)
    assert any("must be no more than 63 characters" in e for e in validate_job(j))
    j = job()
    j["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu queue"}
    assert any("a valid label must be an empty string" in e for e in validate_job(j))


def test_pod_rules():
    j = job()
    c = j["spec"]["template"]["spec"]["containers"][0]
    c["resources"] = {"requests": {"nvidia.com/gpu": "1"}}
    assert any("Limit must be set for non overcommitable resources" in e for e in validate_job(j))
    c["resources"] = {"limits": {"nvidia.com/gpu": "0.5"}}
    assert any("must be an integer" in e for e in validate_job(j))
    c["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}
    assert any("must be less than or equal to cpu limit of 1" in e for e in validate_job(j))
    c["resources"] = {}
    j["spec"]["template"]["spec"]["tolerations"] = [{"key": "a", "operator": "Exists", "value": "b"}]
    assert any("value must be empty when `operator` is 'Exists'" in e for e in validate_job(j))
    j["spec"]["template"]["spec"]["tolerations"] = [{"key": "a", "operator": "Exists", "tolerationSeconds": 1}]
    assert any("effect must be 'NoExecute'" in e for e in validate_job(j))


def test_updates_may_change_parallelism_and_suspend_but_not_the_template():
    old = job()
    new = copy.deepcopy(old)
    new["spec"].update(parallelism=1, suspend=True)
    assert validate_job_update(new, old) == []
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "other"
    assert any("spec.template: Invalid value" in e for e in validate_job_update(new, old))
    new = copy.deepcopy(old)
    new["spec"]["completions"] = 5
    assert any("spec.completions" in e and "immutable" in e for e in validate_job_update(new, old))
    # a suspended Job that never started may change its scheduling directives (Kueue relies on it)
    old["spec"]["suspend"] = True
    new = copy.deepcopy(old)
    new["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    assert validate_job_update(new, old) == []
