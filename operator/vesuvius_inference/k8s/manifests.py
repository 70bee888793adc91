"""InferenceJob -> batch/v1 Job manifests. Pure functions returning dicts.

Each stage's container runs the same CLI a user runs locally (``vesuvius-inference predict|blend|
finalize``), with exactly the same flags; the image's entrypoint is ``vesuvius-inference``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, paths
from ..config import BlendConfig, FinalizeConfig, PredictConfig
from ..settings import crd_values, to_argv
from .names import job_name
from .ranges import format_ranges
from .spec import JobSpec

LABEL_JOB = "vesuvius.dev/inferencejob"
LABEL_STAGE = "vesuvius.dev/stage"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"
MODEL_CACHE = "/var/cache/vesuvius"
INDEX = "$(JOB_COMPLETION_INDEX)"
# One version for package, images and chart: the worker image the operator runs by default.
WORKER_IMAGE = f"ghcr.io/scrollprize/vesuvius-inference-worker:{__version__}"


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator fills in when a spec leaves it out (Helm values)."""

    image: str = WORKER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    queue_name: str | None = None


def defaults_from_env(env: Mapping[str, str] | None = None) -> OperatorDefaults:
    """Defaults the Helm chart passes to the operator as env vars (image, GPU scheduling, Kueue queue).
    ValueError when the JSON-valued ones are not JSON."""
    e = os.environ if env is None else env
    base = OperatorDefaults()
    try:
        return OperatorDefaults(
            image=e.get("VESUVIUS_WORKER_IMAGE", base.image),
            image_pull_policy=e.get("VESUVIUS_WORKER_PULL_POLICY", "IfNotPresent"),
            gpu_node_selector=json.loads(e.get("VESUVIUS_GPU_NODE_SELECTOR", "{}")),
            gpu_tolerations=json.loads(e.get("VESUVIUS_GPU_TOLERATIONS", json.dumps(base.gpu_tolerations))),
            queue_name=e.get("VESUVIUS_QUEUE_NAME") or None,
        )
    except json.JSONDecodeError as err:
        raise ValueError(f"VESUVIUS_GPU_NODE_SELECTOR / VESUVIUS_GPU_TOLERATIONS is not JSON: {err}") from None


def parts_dir(spec: JobSpec) -> str:
    return paths.parts_dir(spec.workdir)


def _index(n: int) -> str:
    return INDEX if n > 1 else "0"


def predict_args(spec: JobSpec, part_ids: Sequence[int] | None = None) -> list[str]:
    """The predict command of every part: the spec's settings (config.py's ``crd`` paths), and each part
    writing the output's chunk rows it alone covers (the fused data path: no blended intermediate)."""
    cfg = PredictConfig(**crd_values(PredictConfig, "predict", spec.raw), input_dir=spec.input_uri,
                        output_dir=parts_dir(spec), model_cache_dir=MODEL_CACHE, final_output=spec["output"]["uri"],
                        part_ids=format_ranges(part_ids) if part_ids is not None else None)
    return ["predict", *to_argv(cfg, overrides={"part_id": INDEX})]


def blend_args(spec: JobSpec) -> list[str]:
    """The seams between parts; the pyramid is finalize's."""
    values = crd_values(BlendConfig, "blend", spec.raw)
    cfg = BlendConfig(**values, parts_dir=parts_dir(spec), output=spec["output"]["uri"], seams_only=True)
    return ["blend", *to_argv(cfg, overrides={"part_id": _index(cfg.num_parts)})]


def finalize_args(spec: JobSpec) -> list[str]:
    """The pyramid from the 2x blocks predict and blend staged, the OME metadata; then the parts go
    (INPUT, removed once the output is complete) unless keepIntermediates."""
    values = crd_values(FinalizeConfig, "finalize", spec.raw)
    cfg = FinalizeConfig(**values, input_path=parts_dir(spec), output_path=spec["output"]["uri"], input_kind="parts",
                         delete_intermediates=not spec["keepIntermediates"])
    return ["finalize", *to_argv(cfg, overrides={"part_id": _index(cfg.num_parts)})]


def _env(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    st = spec["storage"]
    env = [{"name": "VESUVIUS_MODEL_CACHE_DIR", "value": MODEL_CACHE}, {"name": "HOME", "value": "/tmp"}]
    if st.get("endpointUrl"):
        env.append({"name": "AWS_ENDPOINT_URL", "value": st["endpointUrl"]})
    if st.get("region"):
        env.append({"name": "AWS_DEFAULT_REGION", "value": st["region"]})
    env_from = [{"secretRef": {"name": st["secretName"]}}] if st.get("secretName") else []
    return env, env_from


def is_overcommit_allowed(resource: str) -> bool:
    """Native resources (cpu, memory, ...) but not hugepages; extended ones such as nvidia.com/gpu are not
    (kubernetes pkg/apis/core/helper/helpers.go, IsNativeResource and IsOvercommitAllowed)."""
    native = "/" not in resource or "kubernetes.io/" in resource
    return native and not resource.startswith("hugepages-")


def container_resources(spec: JobSpec, stage: str, gpu: bool) -> dict[str, dict[str, str]]:
    """A stage's requests and limits as the pod needs them.

    Kubernetes requires a limit for every resource that cannot be overcommitted and, when both are
    set, an equal request (pkg/apis/core/validation/validation.go, ValidateResourceRequirements): a
    GPU named only under requests is copied to limits. A user's own GPU count wins over predict.gpus.
    Quantities are strings, as the API server returns them (kubernetes-client 37 refuses integers).
    """
    res = (spec.get(stage) or {}).get("resources") or {}
    requests = {q: str(v) for q, v in (res.get("requests") or {}).items()}
    limits = {q: str(v) for q, v in (res.get("limits") or {}).items()}
    for resource, value in requests.items():
        if not is_overcommit_allowed(resource) and resource not in limits:
            limits[resource] = value
    if gpu and GPU not in limits and int(spec["predict"]["gpus"]) > 0:
        limits[GPU] = str(int(spec["predict"]["gpus"]))
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _failure_rules(spec: JobSpec, stage: str, action: str) -> list[dict[str, Any]]:
    """Preemptions never count; non-retryable exit codes fail the part (or Job) at once. No codes, no rule:
    Kubernetes refuses ``onExitCodes.values: []`` ("at least one value is required")."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    codes = sorted(set(int(c) for c in spec["retry"]["nonRetryableExitCodes"]))
    if codes:
        rules.append({"action": action, "onExitCodes": {"containerName": stage, "operator": "In", "values": codes}})
    return rules


def _job(name: str, namespace: str, uid: str, ij_name: str, stage: str, spec: JobSpec, args: list[str],
         completions: int, parallelism: int, defaults: OperatorDefaults, gpu: bool) -> dict[str, Any]:
    labels = {LABEL_JOB: ij_name, LABEL_STAGE: stage, "app.kubernetes.io/managed-by": "vesuvius-inference-operator",
              "app.kubernetes.io/name": "vesuvius-inference"}
    queue = spec.get("queueName") or defaults.queue_name
    if queue:
        labels[LABEL_QUEUE] = queue
    resources = container_resources(spec, stage, gpu)
    env, env_from = _env(spec)
    container: dict[str, Any] = {
        "name": stage,
        "image": spec.get("image") or defaults.image,
        "imagePullPolicy": spec.get("imagePullPolicy") or defaults.image_pull_policy,
        "args": args,
        "env": env,
        "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "model-cache", "mountPath": MODEL_CACHE}],
    }
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # workers never call the Kubernetes API
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "model-cache", "emptyDir": {}}],
    }
    stage_spec = spec.get(stage) or {}
    node_selector = dict(spec.get("nodeSelector") or (defaults.gpu_node_selector if gpu else {}))
    node_selector.update(stage_spec.get("nodeSelector") or {})
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = list(spec.get("tolerations") or (defaults.gpu_tolerations if gpu else []))
    tolerations += [t for t in stage_spec.get("tolerations") or [] if t not in tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    for key in ("priorityClassName", "serviceAccountName"):
        if spec.get(key):
            pod[key] = spec[key]
    indexed = completions > 1 or stage == "predict"
    job_spec: dict[str, Any] = {
        "completions": completions,
        "parallelism": parallelism,
        "suspend": bool(spec["suspend"]),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
    if indexed:
        retry = spec["retry"]
        job_spec.update({
            "completionMode": "Indexed",
            "backoffLimitPerIndex": int(retry["perPartLimit"]),
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": _failure_rules(spec, stage, "FailIndex")},
        })
        # maxFailedParts is about predict parts; Kubernetes wants maxFailedIndexes <= completions
        # (pkg/apis/batch/validation/validation.go, validateJobSpec), so a retry over fewer parts clamps it.
        if stage == "predict" and retry.get("maxFailedParts") is not None:
            job_spec["maxFailedIndexes"] = min(int(retry["maxFailedParts"]), completions)
    else:
        job_spec.update({
            "completionMode": "NonIndexed",
            "backoffLimit": int(spec["retry"]["perPartLimit"]),
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": _failure_rules(spec, stage, "FailJob")},
        })
    if spec.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"])
    if spec.get("ttlSecondsAfterFinished") is not None:
        job_spec["ttlSecondsAfterFinished"] = int(spec["ttlSecondsAfterFinished"])
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if uid:
        meta["ownerReferences"] = [{"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "name": ij_name,
                                    "uid": uid, "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def predict_job(name: str, namespace: str, uid: str, spec: JobSpec, defaults: OperatorDefaults | None = None,
                part_ids: Sequence[int] | None = None, attempt: int = 0) -> dict[str, Any]:
    """The Indexed predict Job (``part_ids`` + ``attempt``: a retry Job over just those parts)."""
    d = defaults or OperatorDefaults()
    n = len(part_ids) if part_ids is not None else spec.parts
    return _job(job_name(name, "predict", attempt), namespace, uid, name, "predict", spec,
                predict_args(spec, part_ids), n, min(spec.parallelism, n), d, gpu=True)


def blend_job(name: str, namespace: str, uid: str, spec: JobSpec, defaults: OperatorDefaults | None = None
              ) -> dict[str, Any]:
    n = int(spec["blend"]["parallelism"])
    return _job(job_name(name, "blend"), namespace, uid, name, "blend", spec, blend_args(spec), n, n,
                defaults or OperatorDefaults(), gpu=False)


def finalize_job(name: str, namespace: str, uid: str, spec: JobSpec, defaults: OperatorDefaults | None = None
                 ) -> dict[str, Any]:
    n = int(spec["finalize"]["parallelism"])
    return _job(job_name(name, "finalize"), namespace, uid, name, "finalize", spec, finalize_args(spec), n, n,
                defaults or OperatorDefaults(), gpu=False)
