"""InferenceJob -> batch/v1 Job manifests. Pure functions returning dicts.

Each stage's container runs the same CLI a user runs locally (``vesuvius-inference predict|blend|
finalize``), with exactly the same flags; the image's entrypoint is ``vesuvius-inference``. Pods log
progress lines (progress.py: no ``--quiet``). What a pod needs from the API it gets through the
downward API, never a token: a retry Job's part ids (the Job's ``vesuvius.dev/part-ids`` annotation,
copied to its pods, as a file), how often its index was disrupted (the Job controller's
``job-index-ignored-failure-count`` annotation, as ``VESUVIUS_DISRUPTIONS``: config.py's
``--disruptions``), its CPU request (threads).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, paths
from ..config import BlendConfig, FinalizeConfig, PredictConfig
from ..errors import EXIT_DISRUPTION_LIMIT, EXIT_STORAGE
from ..settings import crd_values, to_argv
from ..stagecheck import EXIT_INCOMPLETE
from .names import check_job_name, job_name
from .ranges import encode_part_ids
from .resources import fill_in
from .spec import JobSpec

LABEL_JOB = "vesuvius.dev/inferencejob"
LABEL_STAGE = "vesuvius.dev/stage"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_CHECK = "vesuvius.dev/checks"  # on a check Job: the stage whose work it checks
CHECKS_UID = "vesuvius.dev/checks-uid"  # on a check Job: the uid of the lost Job it judges
PART_IDS = "vesuvius.dev/part-ids"  # a retry Job's part ids (ranges.encode_part_ids), Job and pod annotation
GPU = "nvidia.com/gpu"
MODEL_CACHE = "/var/cache/vesuvius"
PODINFO = "/etc/vesuvius"  # the downward API volume
PART_IDS_FILE = PODINFO + "/part-ids"
INDEX = "$(JOB_COMPLETION_INDEX)"
CHECK_TTL_S = 300
# Set by the Job controller on every pod of an index it re-creates (pkg/controller/job/indexed_job_utils.go,
# addIndexFailureCountAnnotation / getNewIndexFailureCounts): failures the podFailurePolicy ignored so far.
IGNORED_FAILURES = "batch.kubernetes.io/job-index-ignored-failure-count"
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
    queue_name: str | None = None  # predict (GPU) Jobs
    cpu_queue_name: str | None = None  # blend, finalize and check Jobs: never the GPU queue by inheritance


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
            cpu_queue_name=e.get("VESUVIUS_CPU_QUEUE_NAME") or None,
        )
    except json.JSONDecodeError as err:
        raise ValueError(f"VESUVIUS_GPU_NODE_SELECTOR / VESUVIUS_GPU_TOLERATIONS is not JSON: {err}") from None


def parts_dir(spec: JobSpec) -> str:
    return paths.parts_dir(spec.workdir)


def _index(n: int) -> str:
    return INDEX if n > 1 else "0"


def predict_args(spec: JobSpec, part_ids: Sequence[int] | None = None) -> list[str]:
    """The predict command of every part: the spec's settings (config.py's ``crd`` paths), and each part
    writing the output's chunk rows it alone covers (the fused data path: no blended intermediate). A retry
    Job's part ids are in its pods' annotation, read as a file (the module docstring), never an argument."""
    cfg = PredictConfig(**crd_values(PredictConfig, "predict", spec.raw), input_dir=spec.input_uri,
                        output_dir=parts_dir(spec), model_cache_dir=MODEL_CACHE, final_output=spec["output"]["uri"],
                        part_ids_file=PART_IDS_FILE if part_ids is not None else None)
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


def check_args(spec: JobSpec, stage: str) -> list[str]:
    """``vesuvius-inference check``: is the work of a stage whose Job vanished unseen on storage?"""
    if stage == "predict":
        return ["check", "predict", "--parts_dir", parts_dir(spec), "--num_parts", str(spec.parts)]
    return ["check", "finalize", "--output", spec["output"]["uri"]]


def _env(spec: JobSpec, stage: str, indexed: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    st = spec["storage"]
    env: list[dict[str, Any]] = [
        {"name": "VESUVIUS_MODEL_CACHE_DIR", "value": MODEL_CACHE}, {"name": "HOME", "value": "/tmp"},
        # threads follow the CPU request when no CPU limit sets a quota (cpuquota.py)
        {"name": "VESUVIUS_CPUS", "valueFrom": {"resourceFieldRef": {"containerName": stage, "resource": "requests.cpu",
                                                                      "divisor": "1"}}}]
    if indexed:
        env.append({"name": "VESUVIUS_DISRUPTIONS", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{IGNORED_FAILURES}']"}}})
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
    CPU and memory the spec leaves out are derived (resources.py: no BestEffort pods).
    Quantities are strings, as the API server returns them (kubernetes-client 37 refuses integers).
    """
    res = (spec.get(stage) or {}).get("resources") or {} if stage != "check" else {}
    requests = {q: str(v) for q, v in (res.get("requests") or {}).items()}
    limits = {q: str(v) for q, v in (res.get("limits") or {}).items()}
    for resource, value in requests.items():
        if not is_overcommit_allowed(resource) and resource not in limits:
            limits[resource] = value
    if gpu and GPU not in limits and int(spec["predict"]["gpus"]) > 0:
        limits[GPU] = str(int(spec["predict"]["gpus"]))
    return fill_in({"requests": requests, "limits": limits}, spec, stage)


def _failure_rules(spec: JobSpec, stage: str, action: str, indexed: bool) -> list[dict[str, Any]]:
    """Disruptions cost no retry; non-retryable exit codes fail the part (or Job) at once. No codes, no rule:
    Kubernetes refuses ``onExitCodes.values: []`` ("at least one value is required").

    The Ignore rule on DisruptionTarget matches preemptions and the kubelet's node-pressure evictions
    alike (the kubelet sets DisruptionTarget, reason TerminationByKubelet: pkg/kubelet/eviction/
    eviction_manager.go, evictPod), and a rule cannot tell them apart by reason. So disruptions are not
    retried without bound through this rule alone: on Indexed Jobs the worker compares the Job
    controller's count of ignored failures of its index with retry.maxDisruptionsPerPart and exits
    EXIT_DISRUPTION_LIMIT, which fails the index here.

    A storage outage is the cluster's trouble too, not the part's: the worker waited ``storage.waitSeconds``
    for the store before it exited EXIT_STORAGE (storagewait.py), so a second Ignore rule keeps a long
    outage from spending the part's ``backoffLimitPerIndex`` (the Job controller re-creates the pod at once,
    pkg/controller/job/job_controller.go: an Ignore'd failure is neither counted in ``failed`` nor backed
    off). "Ignore" alone would loop for ever on a permanent outage; the bound is the same per-index count
    of ignored failures: each outage pod adds one (indexed_job_utils.go, getNewIndexFailureCounts), and
    past ``maxDisruptionsPerPart`` the pod refuses to start (exit 79, FailIndex). So a part tolerates about
    ``(maxDisruptionsPerPart + 1) x waitSeconds`` of outage (30 min by default). Only with that bound:
    NonIndexed Jobs and ``maxDisruptionsPerPart: null`` keep counting 74 as a failure."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    codes = sorted(set(int(c) for c in spec["retry"]["nonRetryableExitCodes"]))
    bounded = indexed and spec["retry"].get("maxDisruptionsPerPart") is not None
    if bounded:
        codes = sorted(set(codes) | {EXIT_DISRUPTION_LIMIT})
    if codes:
        rules.append({"action": action, "onExitCodes": {"containerName": stage, "operator": "In", "values": codes}})
    if bounded and EXIT_STORAGE not in codes:
        rules.append({"action": "Ignore", "onExitCodes": {"containerName": stage, "operator": "In",
                                                          "values": [EXIT_STORAGE]}})
    return rules


def queue_name(spec: JobSpec, stage: str, defaults: OperatorDefaults) -> str | None:
    """The Kueue LocalQueue of a stage's Jobs: spec.queueName (or the chart's worker.queueName) for the GPU
    stage only; blend and finalize take their own (spec.blend/finalize.queueName, the chart's
    worker.cpuQueueName), never the GPU queue; check Jobs take finalize's."""
    if stage == "predict":
        return spec.get("queueName") or defaults.queue_name
    own = (spec.get("finalize" if stage == "check" else stage) or {}).get("queueName")
    return own or defaults.cpu_queue_name


def _labels(ij_name: str, stage: str, spec: JobSpec, defaults: OperatorDefaults) -> dict[str, str]:
    labels = {LABEL_JOB: ij_name, LABEL_STAGE: stage, "app.kubernetes.io/managed-by": "vesuvius-inference-operator",
              "app.kubernetes.io/name": "vesuvius-inference"}
    queue = queue_name(spec, stage, defaults)
    if queue:
        labels[LABEL_QUEUE] = queue
    return labels


def _container(stage: str, spec: JobSpec, args: list[str], defaults: OperatorDefaults, gpu: bool,
               indexed: bool, part_ids: bool) -> dict[str, Any]:
    env, env_from = _env(spec, stage, indexed)
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "model-cache", "mountPath": MODEL_CACHE}]
    if part_ids:
        mounts.append({"name": "podinfo", "mountPath": PODINFO, "readOnly": True})
    container: dict[str, Any] = {
        "name": stage,
        "image": spec.get("image") or defaults.image,
        "imagePullPolicy": spec.get("imagePullPolicy") or defaults.image_pull_policy,
        "args": args,
        "env": env,
        "resources": container_resources(spec, stage, gpu),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def _pod(stage: str, spec: JobSpec, container: dict[str, Any], defaults: OperatorDefaults, gpu: bool,
         part_ids: bool) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "model-cache", "emptyDir": {}}]
    if part_ids:
        volumes.append({"name": "podinfo", "downwardAPI": {"items": [
            {"path": "part-ids", "fieldRef": {"fieldPath": f"metadata.annotations['{PART_IDS}']"}}]}})
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # workers never call the Kubernetes API
        "containers": [container],
        "volumes": volumes,
    }
    stage_spec = (spec.get(stage) or {}) if stage != "check" else {}
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
    return pod


def _completion(spec: JobSpec, stage: str, completions: int, indexed: bool) -> dict[str, Any]:
    retry = spec["retry"]
    if not indexed:
        limit = 2 if stage == "check" else int(retry["perPartLimit"])
        rules = _failure_rules(spec, stage, "FailJob", False)
        if stage == "check":  # "incomplete" is an answer, not a failure worth a retry
            rules = [rules[0], {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In",
                                                                     "values": [EXIT_INCOMPLETE]}}]
        return {"completionMode": "NonIndexed", "backoffLimit": limit, "podReplacementPolicy": "Failed",
                "podFailurePolicy": {"rules": rules}}
    out: dict[str, Any] = {"completionMode": "Indexed", "backoffLimitPerIndex": int(retry["perPartLimit"]),
                           "podReplacementPolicy": "Failed",
                           "podFailurePolicy": {"rules": _failure_rules(spec, stage, "FailIndex", True)}}
    # maxFailedParts is about predict parts; Kubernetes wants maxFailedIndexes <= completions
    # (pkg/apis/batch/validation/validation.go, validateJobSpec), so a retry over fewer parts clamps it.
    if stage == "predict" and retry.get("maxFailedParts") is not None:
        out["maxFailedIndexes"] = min(int(retry["maxFailedParts"]), completions)
    return out


def _job(name: str, namespace: str, uid: str, ij_name: str, stage: str, spec: JobSpec, args: list[str],
         completions: int, parallelism: int, defaults: OperatorDefaults, gpu: bool,
         part_ids: Sequence[int] | None = None) -> dict[str, Any]:
    labels = _labels(ij_name, stage, spec, defaults)
    indexed = stage != "check" and (completions > 1 or stage == "predict")
    container = _container(stage, spec, args, defaults, gpu, indexed, part_ids is not None)
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)},
                                "spec": _pod(stage, spec, container, defaults, gpu, part_ids is not None)}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if part_ids is not None:  # the ledger of which part each index runs, read back from here (never from args)
        annotations = {PART_IDS: encode_part_ids(part_ids)}
        meta["annotations"] = dict(annotations)
        template["metadata"]["annotations"] = annotations
    job_spec: dict[str, Any] = {"completions": completions, "parallelism": parallelism,
                                "suspend": bool(spec["suspend"]), "template": template,
                                **_completion(spec, stage, completions, indexed)}
    if spec.get("activeDeadlineSeconds") and stage != "check":
        job_spec["activeDeadlineSeconds"] = int(spec["activeDeadlineSeconds"])
    if stage == "check":  # long enough for its verdict to be read, short enough not to block the next check
        job_spec["ttlSecondsAfterFinished"] = CHECK_TTL_S
    elif spec.get("ttlSecondsAfterFinished") is not None:
        job_spec["ttlSecondsAfterFinished"] = int(spec["ttlSecondsAfterFinished"])
    if uid:
        meta["ownerReferences"] = [{"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "name": ij_name,
                                    "uid": uid, "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def predict_job(name: str, namespace: str, uid: str, spec: JobSpec, defaults: OperatorDefaults | None = None,
                part_ids: Sequence[int] | None = None, attempt: int = 0) -> dict[str, Any]:
    """The Indexed predict Job (``part_ids`` + ``attempt``: a retry Job over just those parts)."""
    d = defaults or OperatorDefaults()
    ids = sorted(set(int(i) for i in part_ids)) if part_ids is not None else None
    n = len(ids) if ids is not None else spec.parts
    return _job(job_name(name, "predict", attempt), namespace, uid, name, "predict", spec,
                predict_args(spec, ids), n, min(spec.parallelism, n), d, gpu=True, part_ids=ids)


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


def check_job(name: str, namespace: str, uid: str, spec: JobSpec, stage: str, lost_uid: str = "",
              defaults: OperatorDefaults | None = None) -> dict[str, Any]:
    """A one-pod Job checking on storage whether ``stage`` (predict or finalize) completed (stagecheck.py);
    ``lost_uid``, the uid of the Job that vanished unseen, ties its verdict to that loss."""
    job = _job(check_job_name(name, stage), namespace, uid, name, "check", spec, check_args(spec, stage), 1, 1,
               defaults or OperatorDefaults(), gpu=False)
    job["metadata"]["annotations"] = {CHECKS_UID: lost_uid}
    job["metadata"]["labels"][LABEL_CHECK] = stage
    job["spec"]["template"]["metadata"]["labels"][LABEL_CHECK] = stage
    return job
