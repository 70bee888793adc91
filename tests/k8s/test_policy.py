"""An InferenceJob is no more powerful than the cluster admin's policy lets it be, whoever writes it.

A user bound only to ``create inferencejobs`` (and ``get pods/log``) cannot create pods or read Secrets
herself (the emulated API server's RBAC says so, with the API server's message); through an InferenceJob
she could, before this policy. Now a foreign image, ServiceAccount or Secret is refused:
- at ``kubectl apply`` by the chart's ValidatingAdmissionPolicy (its CEL, from the rendered chart,
  evaluated by cel-python inside the emulated API server), with a message naming the field and the
  values allowed;
- by the real operator (with exactly the chart's RBAC and env) when the cluster has no such policy
  (older than 1.30, or not installed): no Job is created, the InferenceJob says PolicyViolation with
  the same message, and a Warning Event; what the policy allows runs as before.
"""

from __future__ import annotations

import json
import time

import pytest
from plugins.k8s import NAMESPACE, cond
from securecluster import secure_cluster

WORKER_REPO = "ghcr.io/scrollprize/vesuvius-inference-worker"
WORKER_SA = "rel-vesuvius-inference-worker"
LABEL = {"vesuvius.dev/inference-credentials": "true"}


def _forbidden(fn) -> tuple[int, str]:
    import kubernetes

    with pytest.raises(kubernetes.client.ApiException) as info:
        fn()
    return info.value.status, json.loads(info.value.body)["message"]


def test_an_author_cannot_do_herself_what_an_inferencejob_could(tmp_path):
    import kubernetes

    with secure_cluster(tmp_path, {}, admission_policy=True) as cl:
        core = kubernetes.client.CoreV1Api(cl.client("alice-token"))
        status, message = _forbidden(lambda: core.read_namespaced_secret("postgres-admin", NAMESPACE))
        assert (status, message) == (403, 'secrets "postgres-admin" is forbidden: User "alice" cannot get resource '
                                          f'"secrets" in API group "" in the namespace "{NAMESPACE}"')
        pod = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "evil.io/x"}]}}
        assert _forbidden(lambda: core.create_namespaced_pod(NAMESPACE, pod))[0] == 403
        assert cl.create_ij("alice-token", "allowed")["metadata"]["name"] == "allowed"  # what she may do


@pytest.mark.parametrize("values,attempts", [
    ({}, {"image": ("docker.io/attacker/miner:1", "spec.image 'docker.io/attacker/miner:1' is not allowed: allowed "
                                                  f"images are {WORKER_REPO} ("),
          "serviceAccountName": ("ci-deployer", "spec.serviceAccountName 'ci-deployer' is not allowed: allowed "
                                                f"ServiceAccounts are {WORKER_SA} (")}),
    ({"policy": {"secrets": {"allowed": ["s3-credentials"], "label": ""}}},
     {"storage": ({"secretName": "postgres-admin"}, "spec.storage.secretName 'postgres-admin' is not allowed: allowed "
                                                    "Secrets are s3-credentials (")}),
], ids=["image-and-serviceaccount", "secret-list"])
def test_refused_at_admission(tmp_path, values, attempts):
    with secure_cluster(tmp_path, values, admission_policy=True) as cl:
        for field, (value, start) in attempts.items():
            status, message = _forbidden(lambda f=field, v=value: cl.create_ij("alice-token", f"bad-{f.lower()}",
                                                                               **{f: v}))
            prefix = ("ValidatingAdmissionPolicy 'rel-vesuvius-inference-vesuvius-policy' with binding "
                      "'rel-vesuvius-inference-vesuvius-policy' denied request: ")
            assert status == 403 and message.startswith(prefix + start), message
        # what the policy allows is accepted
        cl.create_ij("alice-token", "ok-image", image=f"{WORKER_REPO}:0.1.0")
        cl.create_ij("alice-token", "ok-sa", serviceAccountName=WORKER_SA)
        if values:
            cl.create_ij("alice-token", "ok-secret", storage={"secretName": "s3-credentials"})


def _secret(name: str, labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
            "stringData": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}}


def test_refused_by_the_operator_where_no_admission_policy_runs(tmp_path):
    """The chart's defaults on a cluster without the ValidatingAdmissionPolicy: the operator, with only the
    chart's RBAC, refuses each foreign field before creating any Job, and runs what is allowed."""
    import kubernetes

    with secure_cluster(tmp_path, {}, admission_policy=False) as cl:
        core = kubernetes.client.CoreV1Api(cl.client("kmock-token"))
        core.create_namespaced_secret(NAMESPACE, _secret("postgres-admin", {}))
        core.create_namespaced_secret(NAMESPACE, _secret("s3-credentials", LABEL))
        refused = {"bad-image": {"image": "docker.io/attacker/miner:1"},
                   "bad-sa": {"serviceAccountName": "ci-deployer"},
                   "bad-secret": {"storage": {"secretName": "postgres-admin"}},
                   "missing-secret": {"storage": {"secretName": "nowhere"}}}
        allowed = {"ok-default": {}, "ok-image": {"image": f"{WORKER_REPO}:0.1.0"},
                   "ok-secret": {"storage": {"secretName": "s3-credentials"}}}
        for name, spec in {**refused, **allowed}.items():
            cl.create_ij("alice-token", name, **spec)  # nothing stops them at admission here
        op = cl.operator()
        op.extra_args = []
        try:
            op.start()
            deadline = time.monotonic() + 60

            def settled() -> bool:
                jobs = cl.jobs()
                return all(f"{n}-predict" in jobs for n in allowed) and all(
                    cond(cl.ij(n), "PolicyViolation") for n in refused)

            while not settled():
                assert time.monotonic() < deadline, op.tail()
                time.sleep(0.2)
            jobs = cl.jobs()
            assert not [j for j in jobs if j.startswith(("bad-", "missing-"))], sorted(jobs)
            messages = {
                "bad-image": "spec.image 'docker.io/attacker/miner:1' is not allowed: allowed images are "
                             f"{WORKER_REPO} (",
                "bad-sa": f"spec.serviceAccountName 'ci-deployer' is not allowed: allowed ServiceAccounts are {WORKER_SA} (",
                "bad-secret": "spec.storage.secretName 'postgres-admin' is not allowed: allowed Secrets are none, or a "
                              "Secret labelled vesuvius.dev/inference-credentials=true (",
                "missing-secret": "spec.storage.secretName 'nowhere' is not allowed"}
            for name, start in messages.items():
                obj = cl.ij(name)
                c = cond(obj, "PolicyViolation")
                assert c["status"] == "True" and c["reason"] == "PolicyViolation", obj["status"]
                assert c["message"].startswith(start), c["message"]
                st = obj["status"]
                assert (st["phase"], st["reason"], st["message"]) == ("Pending", "PolicyViolation", c["message"])
            assert cl.ij("missing-secret")["status"]["message"].endswith("(it does not exist)")
            events = core.list_namespaced_event(NAMESPACE).items
            assert {e.involved_object.name for e in events if e.reason == "PolicyViolation" and e.type == "Warning"
                    } == set(refused)
            pods = {n: jobs[f"{n}-predict"]["spec"]["template"]["spec"] for n in allowed}
            assert pods["ok-image"]["containers"][0]["image"] == f"{WORKER_REPO}:0.1.0"
            assert all(p["serviceAccountName"] == WORKER_SA for p in pods.values())  # the chart's worker SA
            assert pods["ok-secret"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
            # the operator read the Secrets it judged one by one (get, never list), as metadata only
            secret_reads = [a for who, a, _ in cl.api.rbac.checked if a.resource == "secrets"
                            and who == f"system:serviceaccount:{NAMESPACE}:rel-vesuvius-inference"]
            assert {(a.verb, a.name) for a in secret_reads} == {("get", "postgres-admin"), ("get", "nowhere"),
                                                                ("get", "s3-credentials")}
            # and the chart's RBAC was enough for everything it did
            operator = f"system:serviceaccount:{NAMESPACE}:rel-vesuvius-inference"
            assert not [a for who, a, ok in cl.api.rbac.checked if who == operator and not ok]
            accepts = {r.headers.get("Accept") for r in cl.api._requests if "/secrets/" in r.url.path}
            assert accepts == {"application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"}
        finally:
            op.kill()
