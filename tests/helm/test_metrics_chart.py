"""The chart's side of /metrics: who may read it (RBAC for the reviews, the reader ClusterRole and its
binding), the ServiceMonitor presenting Prometheus' token, and HTTPS from a kubernetes.io/tls Secret."""

from __future__ import annotations

import kubernetes_validate
import pytest
from vesuvius_inference.k8s import operator_main

from helm.scenarios import NAMESPACE, by_kind, one

READERS = [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"},
           {"kind": "Group", "name": "sre"}]
TLS = {"metrics": {"readers": READERS, "tls": {"secretName": "metrics-tls"},
                   "service": {"enabled": True},
                   "serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": "rel-metrics.vesuvius.svc"}}}}


@pytest.fixture(scope="module")
def rendered(helm):
    return {"default": helm.template({}), "tls": helm.template(TLS),
            "open": helm.template({"metrics": {"auth": "none", "service": {"enabled": True},
                                               "serviceMonitor": {"enabled": True}}})}


def _named(objs, kind, suffix):
    return [o for o in by_kind(objs, kind) if o["metadata"]["name"].endswith(suffix)]


@pytest.mark.parametrize("version", ["1.30.0", "1.35.0"])
def test_metrics_objects_validate(rendered, version):
    for obj in rendered["tls"]:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding", "Deployment", "Service"):
            kubernetes_validate.validate(obj, version, strict=True)


def test_who_may_read_metrics(rendered):
    objs = rendered["tls"]
    reader = one(_named(objs, "ClusterRole", "-metrics-reader"), "ClusterRole")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    binding = one(_named(objs, "ClusterRoleBinding", "-metrics-reader"), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == reader["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"},
                                   {"kind": "Group", "name": "sre", "apiGroup": "rbac.authorization.k8s.io"}]
    # without metrics.readers the role is there to bind, and nobody is bound
    assert _named(rendered["default"], "ClusterRole", "-metrics-reader")
    assert not _named(rendered["default"], "ClusterRoleBinding", "-metrics-reader")
    # auth off: no review rights, no reader role, no token presented
    open_ = rendered["open"]
    assert not _named(open_, "ClusterRole", "-metrics-auth") and not _named(open_, "ClusterRole", "-metrics-reader")
    assert "bearerTokenFile" not in one(open_, "ServiceMonitor")["spec"]["endpoints"][0]


def test_https_from_a_tls_secret(rendered):
    objs = rendered["tls"]
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    args = operator_main.parser().parse_args(c["args"])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "metrics-tls")
    assert args.metrics_cert_dir == mount["mountPath"] and mount["readOnly"] is True
    assert next(v for v in pod["volumes"] if v["name"] == "metrics-tls")["secret"] == {"secretName": "metrics-tls"}
    endpoint = one(objs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == {"serverName": "rel-metrics.vesuvius.svc"}
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert "--metrics-cert-dir" not in " ".join(one(rendered["default"], "Deployment")["spec"]["template"]["spec"]
                                                ["containers"][0]["args"])
    assert dep["metadata"]["namespace"] == NAMESPACE
