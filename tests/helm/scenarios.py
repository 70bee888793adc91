"""Value sets the chart is rendered with, and what each one should produce."""

from __future__ import annotations

from typing import Any

from vesuvius_inference import __version__
from vesuvius_inference.k8s import manifests

RELEASE, NAMESPACE = "rel", "vesuvius"
OPERATOR_REPO = "ghcr.io/scrollprize/vesuvius-inference-operator"
WORKER_REPO = "ghcr.io/scrollprize/vesuvius-inference-worker"

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "all-namespaces": {"allNamespaces": True},
    "multi-namespace": {"watchNamespaces": ["scrolls", "lab", NAMESPACE]},
    "other-namespace": {"watchNamespaces": ["scrolls"]},
    "custom-images": {
        "image": {"repository": "registry.example.com/ops/vesuvius-operator", "tag": "9.9.9-rc1",
                  "pullPolicy": "Always"},
        "worker": {"image": {"repository": "registry.example.com/ops/vesuvius-worker", "tag": "cuda-test",
                             "pullPolicy": "Always"}},
    },
    "kueue": {"worker": {"queueName": "gpu-queue", "cpuQueueName": "cpu-queue"}},
    "metrics": {"metrics": {"service": {"enabled": True, "annotations": {"prometheus.io/scrape": "true"}},
                            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "no-metrics": {"metrics": {"port": 0, "service": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
    "gpu-scheduling": {"worker": {"gpu": {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    }}},
    "no-cluster-discovery": {"watchNamespaces": ["scrolls"], "rbac": {"clusterDiscovery": False}},
    "all-namespaces-no-cluster-discovery": {"allNamespaces": True, "rbac": {"clusterDiscovery": False}},
    "external-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-vesuvius"}},
    "kitchen-sink": {
        "fullnameOverride": "vesuvius-op",
        "replicaCount": 0,
        "logLevel": "DEBUG",
        "imagePullSecrets": [{"name": "ghcr-pull"}],
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "podAnnotations": {"example.com/team": "scrolls"},
        "podLabels": {"team": "scrolls"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "control", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "batch-control-plane",
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "serviceAccount": {"name": "vesuvius-sa", "annotations": {"example.com/role": "operator"}},
        "worker": {"queueName": "team-a", "gpu": {"nodeSelector": {"gpu": "a100"}, "tolerations": []}},
    },
}


def get(values: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def watched_namespaces(values: dict[str, Any]) -> list[str]:
    """What the operator should serve ([] = every namespace)."""
    if values.get("allNamespaces"):
        return []
    return list(values.get("watchNamespaces") or [NAMESPACE])


def expected_defaults(values: dict[str, Any]) -> manifests.OperatorDefaults:
    """The OperatorDefaults the operator should derive from the chart's env vars."""
    repo = get(values, "worker.image.repository", WORKER_REPO)
    tag = get(values, "worker.image.tag") or __version__
    return manifests.OperatorDefaults(
        image=f"{repo}:{tag}",
        image_pull_policy=get(values, "worker.image.pullPolicy", "IfNotPresent"),
        gpu_node_selector=get(values, "worker.gpu.nodeSelector", {}),
        gpu_tolerations=get(values, "worker.gpu.tolerations", manifests.OperatorDefaults().gpu_tolerations),
        queue_name=get(values, "worker.queueName") or None,
        cpu_queue_name=get(values, "worker.cpuQueueName") or None,
        service_account=expected_worker_service_account(values),
    )


def expected_worker_service_account(values: dict[str, Any]) -> str | None:
    """worker.serviceAccount.name, else <fullname>-worker when the chart creates it (not with allNamespaces)."""
    name = get(values, "worker.serviceAccount.name")
    if name:
        return name
    if get(values, "worker.serviceAccount.create", True) and not values.get("allNamespaces"):
        full = values.get("fullnameOverride") or f"{RELEASE}-vesuvius-inference"
        return f"{full}-worker"
    return None


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
