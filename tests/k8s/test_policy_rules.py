"""The policy's rules (vesuvius_inference.k8s.policy) and how a pass applies them (decide.py): pure, no server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.decide import Observed, Outcomes, decide
from vesuvius_inference.k8s.policy import Policy, SecretFacts, image_allowed, violations

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
NOW = 1_767_225_600.0
WORKER = "ghcr.io/scrollprize/vesuvius-inference-worker"
POLICY = Policy.from_json(json.dumps({"images": [WORKER, "registry.example.com/team/"], "serviceAccounts": ["w"],
                                      "secrets": ["listed"], "secretLabel": "vesuvius.dev/inference-credentials=true"}))


@pytest.mark.parametrize("image,ok", [
    (WORKER, True), (f"{WORKER}:0.1.0", True), (f"{WORKER}@sha256:{'0' * 64}", True), (f"{WORKER}:1@sha256:ab", True),
    (f"{WORKER}-evil:1", False), (f"{WORKER}/sub:1", False), ("ghcr.io/scrollprize/other:1", False),
    ("registry.example.com/team/anything/deep:2", True), ("registry.example.com/teamx/a:1", False),
    ("registry.example.com/team", False), ("docker.io/library/python:3", False),
])
def test_image_rules(image, ok):
    assert image_allowed(image, POLICY.images) is ok
    assert image_allowed(image, ["*"])


def test_no_policy_allows_everything_and_a_malformed_one_is_refused():
    spec = {"image": "evil.io/x", "serviceAccountName": "admin", "storage": {"secretName": "db"}}
    assert Policy.from_env({}) == Policy() and violations(spec, Policy()) == []
    for text, why in (("[]", "must be a JSON object"), ("{", "is not JSON"),
                      ('{"images": [""]}', "images must be a list of non-empty strings"),
                      ('{"secretLabel": "no-equals"}', "secretLabel must be key=value")):
        with pytest.raises(ValueError, match=why):
            Policy.from_json(text)


def test_secrets_by_list_or_label_and_the_operator_fails_closed():
    def check(name, facts):
        return violations({"storage": {"secretName": name}}, POLICY, facts)

    assert check("listed", None) == [] and not POLICY.secret_needs_labels("listed")
    assert POLICY.secret_needs_labels("other")
    assert check("other", SecretFacts("other", {"vesuvius.dev/inference-credentials": "true"})) == []
    assert check("other", SecretFacts("other", {"vesuvius.dev/inference-credentials": "false"}))
    assert check("other", None)  # labels not read: refused, never assumed
    assert check("other", SecretFacts("another", {"vesuvius.dev/inference-credentials": "true"}))  # not its facts
    assert check("gone", SecretFacts("gone", None))[0].endswith("(it does not exist)")


def _body(status=None, **spec):
    raw = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"]
    raw.update(spec)
    return {"metadata": {"name": "ij", "namespace": "ns", "uid": "uid-ij", "generation": 1, "resourceVersion": "7"},
            "spec": raw, "status": status or {}}


def _pass(body, secret=None):
    obs = Observed("ns", body, [], manifests.OperatorDefaults(), NOW, policy=POLICY, secret=secret)
    first = decide(obs)
    return first, decide(obs, Outcomes())


def test_a_refused_spec_creates_nothing_and_waits_until_the_policy_allows_it():
    b = _body(storage={"secretName": "creds"})
    first, plan = _pass(b)
    assert first.creates == []
    st = plan.status
    assert (st["phase"], st["reason"]) == ("Pending", "PolicyViolation")
    assert st["message"].startswith("spec.storage.secretName 'creds' is not allowed")
    c = next(c for c in st["conditions"] if c["type"] == "PolicyViolation")
    assert (c["status"], c["message"]) == ("True", st["message"])
    assert [(e[0], e[1]) for e in plan.events] == [("Warning", "PolicyViolation")]
    # the same pass again: no new Event
    again = _pass(dict(b, status=st))[1]
    assert not [e for e in again.events if e[1] == "PolicyViolation"]
    # the Secret gets its label: the next pass creates the predict Job and the condition resolves
    labelled = SecretFacts("creds", {"vesuvius.dev/inference-credentials": "true"})
    first, plan = _pass(dict(b, status=st), labelled)
    assert [c[0] for c in first.creates] == ["predict"]
    job = first.creates[0][1]
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "creds"}}]


def test_every_foreign_field_is_named_and_spec_errors_come_first():
    first, plan = _pass(_body(image="evil.io/x:1", serviceAccountName="admin"))
    assert first.creates == []
    assert plan.status["message"].startswith("spec.image 'evil.io/x:1' is not allowed")
    assert "; spec.serviceAccountName 'admin' is not allowed" in plan.status["message"]
    invalid = _pass(_body(image="evil.io/x:1", parts=0))[0]
    assert invalid.status["reason"] == "InvalidSpec"  # a spec that cannot run at all stays InvalidSpec


def test_a_narrower_policy_stops_the_next_stage_but_not_the_running_one():
    b = _body(image="evil.io/x:1")
    s = specmod.parse(b["spec"])
    running = manifests.predict_job("ij", "ns", "uid-ij", spec=s, defaults=manifests.OperatorDefaults())
    running["metadata"]["uid"] = "job-1"
    running["status"] = {"active": 1, "ready": 1}
    obs = Observed("ns", b, [running], manifests.OperatorDefaults(), NOW, policy=POLICY)
    assert decide(obs).creates == []
    plan = decide(obs, Outcomes())
    assert plan.status["phase"] == "Predicting" and plan.status["reason"] != "PolicyViolation"  # it runs on
    assert not [p for p in plan.job_patches if p[1].get("spec", {}).get("suspend")]  # never stopped
    assert next(c for c in plan.status["conditions"] if c["type"] == "PolicyViolation")["status"] == "True"


def test_render_refuses_what_the_policy_refuses(tmp_path, monkeypatch, capsys):
    from vesuvius_inference.k8s import render

    doc = {"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "metadata": {"name": "x"},
           "spec": _body(image="evil.io/x:1", storage={"secretName": "creds"})["spec"]}
    path = tmp_path / "ij.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("VESUVIUS_POLICY", json.dumps({"images": [WORKER], "secretLabel": "a=b"}))
    assert render.main(["-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: x: the operator would refuse it: spec.image 'evil.io/x:1' is not allowed")
    assert "secretName" not in err  # its labels are the cluster's to tell
    doc["spec"]["image"] = f"{WORKER}:2"
    path.write_text(yaml.safe_dump(doc))
    assert render.main(["-f", str(path)]) == 0
