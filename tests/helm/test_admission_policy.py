"""The chart's policy: its ValidatingAdmissionPolicy (CEL evaluated by cel-python, tests/k8s/vap.py) and the
operator's own check (vesuvius_inference.k8s.policy, from the VESUVIUS_POLICY the same render sets) refuse
the same specs with the same messages; the objects are valid for the Kubernetes versions that serve them."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from k8s import vap
from vesuvius_inference.k8s import operator_main
from vesuvius_inference.k8s.policy import Policy, SecretFacts, violations

from helm.helmtool import CHART
from helm.scenarios import NAMESPACE, WORKER_REPO, by_kind, one

WORKER_SA = "rel-vesuvius-inference-worker"
LABEL = "vesuvius.dev/inference-credentials=true"
POLICIES: dict[str, dict[str, Any]] = {
    "default": {},
    "lists-only": {"policy": {"images": {"allowed": ["registry.example.com/team/", WORKER_REPO]},
                              "serviceAccounts": {"allowed": ["storage-reader"]},
                              "secrets": {"allowed": ["s3-credentials"], "label": ""}}},
    "wide-open": {"policy": {"images": {"allowed": ["*"]}, "serviceAccounts": {"allowed": ["*"]},
                             "secrets": {"allowed": ["*"]}}},
    "multi-namespace": {"watchNamespaces": ["scrolls", "lab"]},
    "all-namespaces": {"allNamespaces": True, "worker": {"serviceAccount": {"name": "vesuvius-worker"}}},
    "no-admission": {"policy": {"admission": False}},
}
# What authors try: (name, spec fields) over a valid minimal spec.
ATTEMPTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "empty-image": {"image": ""},  # the CRD allows it; the operator then runs the chart's image
    "worker-image-tag": {"image": f"{WORKER_REPO}:0.2.0"},
    "worker-image-digest": {"image": f"{WORKER_REPO}@sha256:{'a' * 64}"},
    "foreign-image": {"image": "docker.io/attacker/miner:latest"},
    "lookalike-image": {"image": f"{WORKER_REPO}-evil:0.1.0"},
    "team-image": {"image": "registry.example.com/team/worker:1"},
    "worker-sa": {"serviceAccountName": WORKER_SA},
    "foreign-sa": {"serviceAccountName": "cluster-admin-bot"},
    "listed-sa": {"serviceAccountName": "storage-reader"},
    "foreign-secret": {"storage": {"secretName": "postgres-admin"}},
    "listed-secret": {"storage": {"secretName": "s3-credentials"}},
    "everything-foreign": {"image": "evil.io/x:1", "serviceAccountName": "admin", "storage": {"secretName": "db"}},
}


def inference_job(namespace: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob",
            "metadata": {"name": "scroll-1", "namespace": namespace},
            "spec": {"input": {"uri": "s3://scrolls/v.zarr"}, "output": {"uri": "s3://results/p.zarr"},
                     "model": {"uri": "s3://models/m"}, "storage": {}, **copy.deepcopy(spec)}}


SERVED = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"


def render(helm, values: dict[str, Any], served: bool = True) -> list[dict[str, Any]]:
    """`helm template` as `helm install` renders for a cluster that serves (or not) the v1 policy API
    (Helm's .Capabilities.APIVersions; offline, --api-versions adds it)."""
    proc = helm.run("template", "rel", str(CHART), "--namespace", NAMESPACE,
                    *(["--api-versions", SERVED] if served else []), values=values)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(helm):
    return {name: render(helm, values) for name, values in POLICIES.items()}


def test_admission_policy_only_where_the_cluster_serves_it(helm, rendered):
    """auto (the default) ships it to clusters that serve admissionregistration.k8s.io/v1 policies (1.30+) only,
    so `helm install` works on 1.29; the operator's policy is set either way."""
    kinds = {o["kind"] for o in render(helm, {}, served=False)}
    assert "ValidatingAdmissionPolicy" not in kinds and "Deployment" in kinds
    assert "ValidatingAdmissionPolicy" in {o["kind"] for o in rendered["default"]}
    forced = {o["kind"] for o in render(helm, {"policy": {"admission": True}}, served=False)}
    assert "ValidatingAdmissionPolicy" in forced
    assert _operator_policy(render(helm, {}, served=False)) == _operator_policy(rendered["default"])


def _operator_policy(objs: list[dict[str, Any]]) -> Policy:
    c = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return Policy.from_env({e["name"]: e["value"] for e in c["env"] if "value" in e})


def _admission(objs: list[dict[str, Any]], obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The message of each policy binding that denies the request (the first failing validation of each, as
    kube-apiserver's validating dispatcher reports it)."""
    req = vap.Request("UPDATE" if old else "CREATE", "vesuvius.dev", "v1alpha1", "inferencejobs",
                      obj["metadata"]["namespace"], obj, old, user={"username": "alice", "groups": ["team"]})
    return [vap.message_of(d) for p in vap.from_objects(objs) if (d := p.admit(req)) is not None]


@pytest.mark.parametrize("version", ["1.30.0", "1.33.0", "1.35.0"])
@pytest.mark.parametrize("scenario", list(POLICIES))
def test_policy_objects_validate(rendered, scenario, version):
    objs = [o for o in rendered[scenario] if o["kind"].startswith("ValidatingAdmissionPolicy")]
    if scenario == "no-admission":
        assert not objs
        return
    assert sorted(o["kind"] for o in objs) == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("attempt", list(ATTEMPTS))
@pytest.mark.parametrize("scenario", [s for s in POLICIES if s != "no-admission"])
def test_admission_and_operator_refuse_the_same_with_the_same_message(rendered, scenario, attempt):
    objs = rendered[scenario]
    namespace = (POLICIES[scenario].get("watchNamespaces") or [NAMESPACE])[0]
    obj = inference_job(namespace, **ATTEMPTS[attempt])
    at_admission = _admission(objs, obj)
    policy = _operator_policy(objs)
    unlabelled = violations(obj["spec"], policy)
    secret = obj["spec"]["storage"].get("secretName")
    labelled = violations(obj["spec"], policy, SecretFacts(secret, {"vesuvius.dev/inference-credentials": "true"})
                          if secret else None)
    if policy.secret_label:
        # the VAP cannot read a Secret's labels: it leaves Secrets outside the list to the operator, which
        # refuses them unless labelled
        only_operator = [m for m in unlabelled if m.startswith("spec.storage.secretName")]
        assert [m for m in unlabelled if m not in only_operator] == labelled
        assert at_admission == labelled[:1]  # the API server answers with the first validation that failed
        if secret and secret not in policy.secrets and "*" not in policy.secrets:
            assert only_operator and LABEL in only_operator[0]
    else:
        assert unlabelled == labelled and at_admission == labelled[:1]
    # each message names the field and the values allowed
    for message in at_admission:
        field = message.split(" ", 1)[0]
        allowed = {"spec.image": policy.images, "spec.serviceAccountName": policy.service_accounts,
                   "spec.storage.secretName": policy.secrets}[field]
        assert all(a in message for a in allowed), message


def test_what_the_defaults_allow(rendered):
    objs = rendered["default"]
    allowed = ["defaults", "worker-image-tag", "worker-image-digest", "worker-sa"]
    for attempt in allowed:
        assert _admission(objs, inference_job(NAMESPACE, **ATTEMPTS[attempt])) == [], attempt
    refused = {"foreign-image": "spec.image 'docker.io/attacker/miner:latest' is not allowed: allowed images are "
                                f"{WORKER_REPO} ",
               "lookalike-image": f"spec.image '{WORKER_REPO}-evil:0.1.0' is not allowed",
               "team-image": "spec.image 'registry.example.com/team/worker:1' is not allowed",
               "foreign-sa": f"spec.serviceAccountName 'cluster-admin-bot' is not allowed: allowed ServiceAccounts are "
                             f"{WORKER_SA} ",
               "listed-sa": "spec.serviceAccountName 'storage-reader' is not allowed"}
    for attempt, start in refused.items():
        got = _admission(objs, inference_job(NAMESPACE, **ATTEMPTS[attempt]))
        assert len(got) == 1 and got[0].startswith(start), (attempt, got)
    everything = _admission(objs, inference_job(NAMESPACE, **ATTEMPTS["everything-foreign"]))
    assert [m.split(" ", 1)[0] for m in everything] == ["spec.image"]  # the first failing validation answers
    # by default Secrets are chosen by label: the operator decides (test_policy.py)
    assert _admission(objs, inference_job(NAMESPACE, **ATTEMPTS["foreign-secret"])) == []


def test_lists_only(rendered):
    objs = rendered["lists-only"]
    for attempt in ("team-image", "worker-image-tag", "listed-sa", "worker-sa", "listed-secret"):
        assert _admission(objs, inference_job(NAMESPACE, **ATTEMPTS[attempt])) == [], attempt
    got = _admission(objs, inference_job(NAMESPACE, **ATTEMPTS["foreign-secret"]))
    assert got == ["spec.storage.secretName 'postgres-admin' is not allowed: allowed Secrets are s3-credentials "
                   "(the cluster admin's policy, the chart's policy values: policy.secrets)"]


def test_wide_open_allows_everything(rendered):
    for attempt, spec in ATTEMPTS.items():
        assert _admission(rendered["wide-open"], inference_job(NAMESPACE, **spec)) == [], attempt


def test_binding_covers_the_served_namespaces_only(rendered):
    foreign = ATTEMPTS["foreign-image"]
    multi = rendered["multi-namespace"]
    assert _admission(multi, inference_job("scrolls", **foreign)) and _admission(multi, inference_job("lab", **foreign))
    assert _admission(multi, inference_job("elsewhere", **foreign)) == []  # another release's, or nobody's
    everywhere = rendered["all-namespaces"]
    assert _admission(everywhere, inference_job("any-namespace", **foreign))
    assert "matchResources" not in one(everywhere, "ValidatingAdmissionPolicyBinding")["spec"]
    # with allNamespaces the chart creates no worker ServiceAccount; the named one is the default and allowed
    assert not [o for o in by_kind(everywhere, "ServiceAccount")
                if o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"]
    assert _admission(everywhere, inference_job("x", serviceAccountName="vesuvius-worker")) == []


def test_updates_that_leave_the_spec_alone_are_not_judged(rendered):
    """kopf's annotations on an InferenceJob created before a narrower policy still go through; a spec change
    (suspend, retryFailedParts) of such an object is judged."""
    objs = rendered["default"]
    old = inference_job(NAMESPACE, **ATTEMPTS["foreign-image"])
    annotated = copy.deepcopy(old)
    annotated["metadata"]["annotations"] = {"vesuvius.dev/last-handled-configuration": "{}"}
    assert _admission(objs, annotated, old=old) == []
    suspended = copy.deepcopy(old)
    suspended["spec"]["suspend"] = True
    assert _admission(objs, suspended, old=old)[0].startswith("spec.image 'docker.io/attacker/miner:latest'")


def test_one_source_for_both_enforcements(rendered):
    """The VAP's CEL variables are the JSON document the operator reads, value for value."""
    for scenario, objs in rendered.items():
        policy = _operator_policy(objs)
        assert policy.enforced, scenario
        if scenario == "no-admission":
            continue
        variables = {v["name"]: json.loads(v["expression"])
                     for v in one(objs, "ValidatingAdmissionPolicy")["spec"]["variables"]}
        assert tuple(variables["images"]) == policy.images
        assert tuple(variables["serviceAccounts"]) == policy.service_accounts
        assert tuple(variables["secrets"]) == policy.secrets
        assert variables["secretLabel"] == policy.secret_label
        assert variables["imagesText"] == ", ".join(policy.images)


def test_operator_refuses_to_start_with_a_malformed_policy(monkeypatch, capsys):
    monkeypatch.setenv("VESUVIUS_POLICY", '{"images": "not-a-list"}')
    assert operator_main.main(["-n", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: VESUVIUS_POLICY: images must be a list")


def test_every_setting_the_chart_passes_is_one_the_operator_declares(rendered):
    """The env and args the chart sets are the operator's declared ones: its argument parser accepts the args,
    its --help epilog names every VESUVIUS_ variable."""
    c = one(rendered["default"], "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = operator_main.parser().parse_args(c["args"])
    assert args.metrics_auth == "kubernetes"
    epilog = operator_main.parser().epilog
    assert [e["name"] for e in c["env"] if e["name"].startswith("VESUVIUS_") and e["name"] not in epilog] == []
