"""A cluster for the security tests: authz.SecureKubeAPI with the chart's objects installed as a cluster admin
would (`helm template` of charts/vesuvius-inference: its Roles, ClusterRoles, bindings, ServiceAccounts and,
on clusters that serve them, its ValidatingAdmissionPolicy), and identities to act as:

- ``alice``: an InferenceJob author, bound only to create/get/list/watch ``inferencejobs`` and get
  ``pods/log`` in the namespace (what `kubectl apply` and `kubectl logs` need);
- the operator: the chart's ServiceAccount, with exactly the chart's RBAC;
- ``prometheus``: a ServiceAccount in ``monitoring`` bound to the chart's metrics-reader ClusterRole
  (through ``metrics.readers``);
- ``mallory``: authenticated, bound to nothing.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from authz import Identity, SecureKubeAPI, kubeconfig, service_account
from kmock_api import ServerThread
from plugins.k8s import GROUP, NAMESPACE, PLURAL, ROOT, VERSION, OperatorProcess

RELEASE_SA = "rel-vesuvius-inference"
TOKENS = {"alice-token": Identity("alice", "uid-alice", ("authors", "system:authenticated")),
          "mallory-token": Identity("mallory", "uid-mallory", ("system:authenticated",)),
          "operator-token": service_account(NAMESPACE, RELEASE_SA),
          "prometheus-token": service_account("monitoring", "prometheus")}
AUTHOR_ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "inferencejob-author", "namespace": NAMESPACE},
               "rules": [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "watch"]},
                         {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]}
AUTHOR_BINDING = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                  "metadata": {"name": "alice-authors", "namespace": NAMESPACE},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "inferencejob-author"},
                  "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}
PLURALS = {"Role": "rbac.authorization.k8s.io/v1/roles", "RoleBinding": "rbac.authorization.k8s.io/v1/rolebindings",
           "ClusterRole": "rbac.authorization.k8s.io/v1/clusterroles",
           "ClusterRoleBinding": "rbac.authorization.k8s.io/v1/clusterrolebindings",
           "ServiceAccount": "v1/serviceaccounts",
           "ValidatingAdmissionPolicy": "admissionregistration.k8s.io/v1/validatingadmissionpolicies",
           "ValidatingAdmissionPolicyBinding": "admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """`helm template` for a cluster that serves the v1 admission policy API (Kubernetes 1.30+)."""
    from helm.helmtool import CHART, Helm, helm_binary

    with tempfile.TemporaryDirectory() as home:
        proc = Helm(helm_binary(), Path(home)).run(
            "template", "rel", str(CHART), "--namespace", NAMESPACE, "--api-versions",
            "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy", values=values)
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]


def operator_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    dep = next(o for o in objs if o["kind"] == "Deployment")
    return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


@dataclass
class SecureCluster:
    server: ServerThread
    api: SecureKubeAPI
    objs: list[dict[str, Any]]
    tmp: Path

    def client(self, token: str) -> Any:
        """A kubernetes client ApiClient presenting ``token``."""
        import kubernetes

        path = kubeconfig(self.server.url, self.tmp / f"kubeconfig-{token}", NAMESPACE, token)
        return kubernetes.config.new_client_from_config(config_file=path)

    def custom(self, token: str) -> Any:
        import kubernetes

        return kubernetes.client.CustomObjectsApi(self.client(token))

    def create_ij(self, token: str, name: str, **spec: Any) -> dict[str, Any]:
        body = yaml.safe_load((ROOT / "crds" / "samples" / "minimal.yaml").read_text())
        body["metadata"] = {"name": name}
        body["spec"].update(spec)
        return self.custom(token).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)

    def ij(self, name: str) -> dict[str, Any]:
        return self.custom("kmock-token").get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.server.call(self.api.objects_of, "batch/v1/jobs", NAMESPACE)}

    def operator(self) -> OperatorProcess:
        """The operator as the chart runs it: its ServiceAccount's token, its env (policy, worker defaults)."""
        path = kubeconfig(self.server.url, self.tmp / "kubeconfig-operator", NAMESPACE, "operator-token")
        op = OperatorProcess(path, NAMESPACE, self.tmp)
        op.env.update(operator_env(self.objs))
        return op


@contextlib.contextmanager
def secure_cluster(tmp: Path, values: dict[str, Any], *, admission_policy: bool,
                   extra: list[dict[str, Any]] = ()) -> Iterator[SecureCluster]:
    """The emulated API server with the chart rendered from ``values`` installed; ``admission_policy`` False:
    a cluster older than 1.30, or one where the policy objects were left out."""
    import admission

    objs = render(values)
    server = ServerThread()
    server.api = SecureKubeAPI(tokens=dict(TOKENS))  # not ServerThread(api): an emulator with no requests is falsy
    with server:
        api = server.api
        server.call(admission.install, api)
        server.call(api.install_crd, yaml.safe_load((ROOT / "crds" / "inferencejob.yaml").read_text()))
        for ns in (NAMESPACE, "monitoring"):
            server.call(api.create, "v1/namespaces", None,
                        {"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
        for obj in objs + [AUTHOR_ROLE, AUTHOR_BINDING] + list(extra):
            if obj["kind"] not in PLURALS or (obj["kind"].startswith("ValidatingAdmission") and not admission_policy):
                continue
            server.call(api.create, PLURALS[obj["kind"]], obj["metadata"].get("namespace"), obj)
        yield SecureCluster(server, api, objs, tmp)
