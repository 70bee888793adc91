"""The Helm chart: lint, render, validate against Kubernetes schemas, and agree with the operator's code."""

from __future__ import annotations

import json
import os
import re
import textwrap
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from vesuvius_inference import __version__
from vesuvius_inference.k8s import manifests, operator_main

from helm import dockerfile
from helm.helmtool import CHART, REPO
from helm.scenarios import (
    NAMESPACE,
    OPERATOR_REPO,
    SCENARIOS,
    WORKER_REPO,
    by_kind,
    expected_defaults,
    get,
    one,
    watched_namespaces,
)

K8S_VERSIONS = ["1.33.0", "1.35.0"]
SERVICE_MONITOR = "monitoring.coreos.com/v1"


@pytest.fixture(scope="module")
def rendered(helm):
    """Every scenario rendered once (with the CRDs)."""
    return {name: helm.template(values, include_crds=True) for name, values in SCENARIOS.items()}


def _container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return pod["containers"][0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert len(env) == len(container.get("env", [])), "duplicate env var"
    return env


# ---- lint and schema validity ------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["default", "all-namespaces", "kitchen-sink"])
def test_helm_lint_strict(helm, scenario):
    proc = helm.run("lint", "--strict", str(CHART), "--namespace", NAMESPACE, values=SCENARIOS[scenario])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_object_validates(rendered, scenario, version):
    objs = rendered[scenario]
    assert {o["kind"] for o in objs} >= {"CustomResourceDefinition", "Deployment"}
    for obj in objs:
        if obj["apiVersion"] == SERVICE_MONITOR:  # prometheus-operator's CRD: no bundled schema (test_metrics)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {e.message} at {e.path}")


def _component(obj: dict[str, Any]) -> str:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "")


def _operator_sas(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operator's ServiceAccount (the workers' are labelled component=worker)."""
    return [o for o in by_kind(objs, "ServiceAccount") if _component(o) == "operator"]


def test_objects_land_in_the_right_namespaces(rendered):
    for scenario, objs in rendered.items():
        values = SCENARIOS[scenario]
        for obj in objs:
            ns = obj["metadata"].get("namespace")
            if obj["kind"] == "ServiceAccount" and _component(obj) == "worker":  # one per watched namespace
                assert ns in watched_namespaces(values), (scenario, obj["kind"], ns)
            elif obj["kind"] in ("Deployment", "ServiceAccount", "Service", "ServiceMonitor"):
                assert ns == NAMESPACE, (scenario, obj["kind"])
            elif obj["kind"] in ("Role", "RoleBinding"):
                assert ns in watched_namespaces(values), (scenario, obj["kind"], ns)
            else:
                assert ns is None, (scenario, obj["kind"], "cluster-scoped objects carry no namespace")


# ---- the operator Deployment ---------------------------------------------------------------------

@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_deployment(rendered, scenario):
    values, objs = SCENARIOS[scenario], rendered[scenario]
    dep = one(objs, "Deployment")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["replicas"] == values.get("replicaCount", 1) <= 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert all(spec["template"]["metadata"]["labels"][k] == v for k, v in spec["selector"]["matchLabels"].items())
    c = _container(objs)

    # The operator's own argument parser accepts the args and serves the expected namespaces.
    args = operator_main.parser().parse_args(c["args"])
    assert args.namespace == watched_namespaces(values)
    assert args.all_namespaces is bool(values.get("allNamespaces"))
    assert args.standalone is True
    assert args.cluster_discovery is bool(get(values, "rbac.clusterDiscovery", False))
    assert args.log_level == values.get("logLevel", "INFO")
    for ns in watched_namespaces(values):
        assert f"--namespace={ns}" in c["args"]

    repo = get(values, "image.repository", OPERATOR_REPO)
    assert c["image"] == f"{repo}:{get(values, 'image.tag') or __version__}"
    assert c["imagePullPolicy"] == get(values, "image.pullPolicy", "IfNotPresent")

    sa_name = pod["serviceAccountName"]
    if get(values, "serviceAccount.create", True):
        assert one(_operator_sas(objs), "ServiceAccount")["metadata"]["name"] == sa_name
    else:
        assert not _operator_sas(objs) and sa_name == get(values, "serviceAccount.name")
    assert pod.get("automountServiceAccountToken", True) is True


@pytest.mark.parametrize("scenario", ["default", "kitchen-sink"])
def test_liveness_probe_is_kopfs_endpoint(rendered, scenario):
    c = _container(rendered[scenario])
    liveness = urlparse(operator_main.parser().get_default("liveness"))
    assert not any(a.startswith("--liveness") for a in c["args"]), "the chart relies on the operator's default"
    probe = c["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    port = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
    assert (port, probe["path"]) == (liveness.port, liveness.path) == (8080, "/healthz")
    assert liveness.hostname == "0.0.0.0", "kopf must listen on all interfaces for the kubelet to reach it"


def test_security_context(rendered):
    objs = rendered["default"]
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = _container(objs)
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the UID the pod runs as is the one the operator image declares
    user = [i for i in dockerfile.load(dockerfile.OPERATOR) if i.keyword == "USER"][-1].args
    assert psc["runAsUser"] == int(user.split(":")[0]) != 0
    # a writable /tmp, since the root filesystem is read-only
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_metrics_service_and_service_monitor_are_optional_and_point_at_the_operators_port(rendered):
    """Off by default; on, the Service selects the operator pod and targets the port the operator's
    --metrics-port serves, and the ServiceMonitor selects that Service by its labels."""
    for scenario in ("default", "no-metrics"):
        assert not by_kind(rendered[scenario], "Service") and not by_kind(rendered[scenario], "ServiceMonitor")
    assert "--metrics-port=0" in _container(rendered["no-metrics"])["args"]
    objs = rendered["metrics"]
    dep, svc, mon = one(objs, "Deployment"), one(objs, "Service"), one(objs, "ServiceMonitor")
    c = _container(objs)
    args = operator_main.parser().parse_args(c["args"])
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert args.metrics_port == port == 8081
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items() and svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert mon["apiVersion"] == SERVICE_MONITOR and mon["metadata"]["labels"]["release"] == "prometheus"
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    # /metrics asks for a token (--metrics-auth=kubernetes, the default): Prometheus presents its own
    assert args.metrics_auth == "kubernetes"
    assert mon["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                         "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}]
    assert mon["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


# ---- the defaults the operator applies to the Jobs it creates -------------------------------------

@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_worker_defaults_reach_the_operator(rendered, scenario, monkeypatch):
    """The env the chart sets, read by the operator's own defaults_from_env(), gives the values' defaults."""
    values = SCENARIOS[scenario]
    env = _env(_container(rendered[scenario]))
    for name in [n for n in os.environ if n.startswith("VESUVIUS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert manifests.defaults_from_env() == expected_defaults(values)
    assert ("VESUVIUS_QUEUE_NAME" in env) is bool(get(values, "worker.queueName"))
    for extra in values.get("extraEnv", []):
        assert env[extra["name"]] == extra["value"]


def test_default_worker_image_is_the_app_version(rendered):
    env = _env(_container(rendered["default"]))
    assert env["VESUVIUS_WORKER_IMAGE"] == f"{WORKER_REPO}:{__version__}" == manifests.WORKER_IMAGE
    assert json.loads(env["VESUVIUS_GPU_TOLERATIONS"]) == manifests.OperatorDefaults().gpu_tolerations
    assert json.loads(env["VESUVIUS_GPU_NODE_SELECTOR"]) == manifests.OperatorDefaults().gpu_node_selector


def test_custom_worker_image(rendered):
    env = _env(_container(rendered["custom-images"]))
    assert env["VESUVIUS_WORKER_IMAGE"] == "registry.example.com/ops/vesuvius-worker:cuda-test"
    assert env["VESUVIUS_WORKER_PULL_POLICY"] == "Always"


def test_kueue_queue(rendered):
    env = _env(_container(rendered["kueue"]))
    assert (env["VESUVIUS_QUEUE_NAME"], env["VESUVIUS_CPU_QUEUE_NAME"]) == ("gpu-queue", "cpu-queue")
    assert "VESUVIUS_QUEUE_NAME" not in _env(_container(rendered["default"]))
    assert "VESUVIUS_CPU_QUEUE_NAME" not in _env(_container(rendered["default"]))


# ---- versions and the CRD ------------------------------------------------------------------------

def test_one_version_for_package_chart_and_images():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"] == {"repository": OPERATOR_REPO, "tag": "", "pullPolicy": "IfNotPresent"}
    assert values["worker"]["image"] == {"repository": WORKER_REPO, "tag": "", "pullPolicy": "IfNotPresent"}
    assert manifests.WORKER_IMAGE == f"{WORKER_REPO}:{__version__}"
    # the chart's default GPU tolerations are the operator's own default
    assert values["worker"]["gpu"]["tolerations"] == manifests.OperatorDefaults().gpu_tolerations


def test_chart_crd_is_the_repository_crd():
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == ["inferencejob.yaml"]
    assert (CHART / "crds" / "inferencejob.yaml").read_bytes() == (REPO / "crds" / "inferencejob.yaml").read_bytes(), (
        "charts/vesuvius-inference/crds/inferencejob.yaml differs from crds/inferencejob.yaml: "
        "run python -m vesuvius_inference.k8s.crdschema (it writes both)")


def test_crd_is_installed_from_crds_dir_only(rendered):
    crds = by_kind(rendered["default"], "CustomResourceDefinition")
    assert [c["metadata"]["name"] for c in crds] == ["inferencejobs.vesuvius.dev"]
    assert crds[0] == yaml.safe_load((REPO / "crds" / "inferencejob.yaml").read_text())
    assert not any(p.read_text().count("CustomResourceDefinition") for p in (CHART / "templates").glob("*.yaml")), (
        "the CRD belongs in crds/, not templates/ (helm would delete it, and every InferenceJob, on uninstall)")


# ---- values.schema.json --------------------------------------------------------------------------

SCHEMA_ERROR = "values don't meet the specifications of the schema"


@pytest.mark.parametrize(("values", "where"), [
    ({"replicaCount": 2}, "/replicaCount"),
    ({"replicaCount": -1}, "/replicaCount"),
    ({"resources": {"requests": {"cpu": "-100m"}}}, "/resources/requests/cpu"),
    ({"resources": {"limits": {"memory": -1}}}, "/resources/limits/memory"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"logLevel": "TRACE"}, "/logLevel"),
    ({"logLevel": "info"}, "/logLevel"),
    ({"watchNamespaces": "scrolls"}, "/watchNamespaces"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces"),
    ({"replicas": 1}, "additional properties 'replicas' not allowed"),
    ({"workerImage": "x"}, "additional properties 'workerImage' not allowed"),
    ({"worker": {"queue": "x"}}, "additional properties 'queue' not allowed"),
    ({"worker": {"queueName": "not a label value"}}, "/worker/queueName"),
    ({"worker": {"image": {"pullPolicy": "Sometimes"}}}, "/worker/image/pullPolicy"),
    ({"worker": {"gpu": {"tolerations": {"key": "x"}}}}, "/worker/gpu/tolerations"),
    ({"image": {"repository": ""}}, "/image/repository"),
    ({"allNamespaces": "yes"}, "/allNamespaces"),
])
def test_schema_rejects_bad_values(helm, values, where):
    err = helm.template_error(values)
    assert SCHEMA_ERROR in err and where in err, err


def test_all_namespaces_excludes_watch_namespaces(helm):
    err = helm.template_error({"allNamespaces": True, "watchNamespaces": ["scrolls"]})
    assert "allNamespaces=true serves every namespace: leave watchNamespaces empty" in err, err


def test_values_yaml_matches_schema():
    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    for values in SCENARIOS.values():
        jsonschema.validate(values, schema)


# ---- NOTES.txt -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["default", "other-namespace", "all-namespaces"])
def test_notes_show_a_valid_first_job(helm, scenario):
    from k8s.crd_check import validate as validate_cr

    values = SCENARIOS[scenario]
    proc = helm.run("install", "rel", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", values=values)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    ns = (watched_namespaces(values) or ["default"])[0]
    m = re.search(rf"kubectl apply -n {ns} -f - <<'YAML'\n(.*?)\n\s*YAML\n", notes, re.S)
    assert m, notes
    job = yaml.safe_load(textwrap.dedent(m.group(1)))
    assert job["kind"] == "InferenceJob" and job["apiVersion"] == "vesuvius.dev/v1alpha1"
    assert validate_cr(job) == []
    assert f"kubectl get ij -n {ns} -w" in notes
    assert "kubectl apply -f -" in notes and "helm show crds" in notes


# ---- the README section --------------------------------------------------------------------------

def _documented_keys(doc: str) -> set[str]:
    """The first column of the values reference table (`key` cells)."""
    section = doc.split("## Install on a cluster", 1)[1].split("### Values", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|", section, re.M))


def _schema_keys(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> set[str]:
    """Leaf keys of the schema: recurse into closed objects (additionalProperties false)."""
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    if node.get("type") == "object" and node.get("additionalProperties") is False and "properties" in node:
        out: set[str] = set()
        for key, sub in node["properties"].items():
            out |= _schema_keys(sub, defs, f"{prefix}{key}.")
        return out
    return {prefix.rstrip(".")}


def test_docs_document_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = _schema_keys(schema, schema["definitions"]) - {"global"}
    documented = _documented_keys((REPO / "README.md").read_text())
    assert documented == keys, f"undocumented: {sorted(keys - documented)}; unknown: {sorted(documented - keys)}"
