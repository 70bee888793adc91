"""InferenceJob -> batch/v1 Job manifests. Pure functions returning dicts.

Each stage's container runs the same CLI a user runs locally (``vesuvius-inference predict|blend|
finalize``), with exactly the same flags; the image's entrypoint is ``vesuvius-inference``. Pods log
progress lines (progress.py: no ``--quiet``). What a pod needs from the API it gets through the
downward API, never a token: a retry Job's part ids (the Job's ``vesuvius.dev/part-ids`` annotation,
copied to its pods, as a file), how often its index was disrupted (the Job controller's
``job-index-ignored-failure-count`` annotation, as ``VESUVIUS_DISRUPTIONS``: config.py's
``--disruptions``), its CPU request (threads).

A pod asks for the devices it uses (spec.device_problems refuses the rest): a predict pod of a ``cuda`` run
asks for one ``nvidia.com/gpu`` and gets the chart's GPU node selector and tolerations; every other pod
(``cpu`` predict, blend, finalize, check) asks for none, gets none of the GPU scheduling, and carries
``NVIDIA_VISIBLE_DEVICES=void``: the worker image is built on a CUDA base whose ``NVIDIA_VISIBLE_DEVICES=all``
makes the NVIDIA container runtime (where it is the node's default runtime) hand every GPU of the node to a
container that asked for none (NVIDIA container toolkit: "void" or "none" exposes no device).

What the spec passes through to the Jobs and pods, never interpreted here (:func:`passthrough`): labels and
annotations, ``runtimeClassName``, ``affinity``, ``imagePullSecrets``, the autoscalers' pod annotations
(cluster-autoscaler's ``cluster-autoscaler.kubernetes.io/safe-to-evict``: cluster-autoscaler
utils/drain/drain.go, GetPodsForDeletionOnNodeDrain / HasSafeToEvictAnnotation; Karpenter's
``karpenter.sh/do-not-disrupt``: karpenter pkg/apis/v1/labels.go, DoNotDisruptAnnotationKey) and Kueue's
Job-level knobs (the ``kueue.x-k8s.io/priority-class`` label: pkg/constants, WorkloadPriorityClassLabel;
partial admission's ``kueue.x-k8s.io/job-min-parallelism`` annotation: pkg/controller/jobs/job/
job_controller.go, JobMinParallelismAnnotation, which its webhook wants in 1..parallelism-1:
job_webhook.go, validatePartialAdmissionCreate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
from vesuvius_inference.contract.errors import (
    EXIT_DISRUPTION_LIMIT,
    EXIT_INCOMPLETE,
    EXIT_STOPPED,
    EXIT_STORAGE,
)
from vesuvius_inference.contract.ranges import encode_part_ids
from vesuvius_inference.contract.settings import crd_values, to_argv
from vesuvius_inference.k8s.grace import predict_grace_seconds
from vesuvius_inference.k8s.names import check_job_name, job_name
from vesuvius_inference.k8s.opsettings import GPU_TOLERATIONS, WORKER_IMAGE, OperatorEnv, from_env
from vesuvius_inference.k8s.resources import fill_in, memory_within_request
from vesuvius_inference.k8s.spec import JobSpec

LABEL_JOB = "vesuvius.dev/inferencejob"
LABEL_STAGE = "vesuvius.dev/stage"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_CHECK = "vesuvius.dev/checks"  # on a check Job: the stage whose work it checks
CHECKS_UID = "vesuvius.dev/checks-uid"  # on a check Job: the uid of the lost Job it judges
PART_IDS = "vesuvius.dev/part-ids"  # a retry Job's part ids (ranges.encode_part_ids), Job and pod annotation
GPU = "nvidia.com/gpu"
NO_GPU_ENV = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
KUEUE_PRIORITY = "kueue.x-k8s.io/priority-class"
KUEUE_MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"
MODEL_CACHE = "/var/cache/vesuvius"
PODINFO = "/etc/vesuvius"  # the downward API volume
PART_IDS_FILE = PODINFO + "/part-ids"
INDEX = "$(JOB_COMPLETION_INDEX)"
CHECK_TTL_S = 300
# Set by the Job controller on every pod of an index it re-creates (pkg/controller/job/indexed_job_utils.go,
# addIndexFailureCountAnnotation / getNewIndexFailureCounts): failures the podFailurePolicy ignored so far.
IGNORED_FAILURES = "batch.kubernetes.io/job-index-ignored-failure-count"


@dataclass(frozen=True)
class OperatorDefaults:
    """What the operator fills in when a spec leaves it out (Helm values; declared in opsettings.OperatorEnv,
    whose defaults these are)."""

    image: str = WORKER_IMAGE  # one version for package, images and chart (opsettings.py)
    image_pull_policy: str = OperatorEnv.worker_pull_policy
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = field(default_factory=lambda: [dict(t) for t in GPU_TOLERATIONS])
    queue_name: str | None = None  # predict (GPU) Jobs
    cpu_queue_name: str | None = None  # blend, finalize and check Jobs: never the GPU queue by inheritance
    service_account: str | None = None  # the pods' ServiceAccount when a spec names none (None: the namespace's default)
    # The operator bounds storage outages (decide.py, storage.maxOutageSeconds), so exit 74 costs no retry: it
    # sees outages in the pods' log tails, the progress samples (off with VESUVIUS_PROGRESS_SECONDS=0: then 74
    # counts as one of the part's retries, the only bound left).
    outage_budget: bool = True


def defaults_from_env(env: Mapping[str, str] | None = None) -> OperatorDefaults:
    """Defaults the Helm chart passes to the operator as env vars (image, GPU scheduling, Kueue queues; their
    declarations: opsettings.OperatorEnv). ValueError naming the variable when one does not parse."""
    o = from_env(env)
    return OperatorDefaults(image=o.worker_image, image_pull_policy=o.worker_pull_policy,
                            gpu_node_selector=o.gpu_node_selector, gpu_tolerations=o.gpu_tolerations,
                            queue_name=o.queue_name, cpu_queue_name=o.cpu_queue_name,
                            service_account=o.worker_service_account, outage_budget=o.progress_s > 0)


def _index(n: int) -> str:
    return INDEX if n > 1 else "0"


def predict_args(spec: JobSpec, part_ids: Sequence[int] | None = None) -> list[str]:
    """The predict command of every part: the spec's settings (config.py's ``crd`` paths), and each part
    writing the output's chunk rows it alone covers (the fused data path: no blended intermediate). A retry
    Job's part ids are in its pods' annotation, read as a file (the module docstring), never an argument."""
    cfg = PredictConfig(**crd_values(PredictConfig, "predict", spec.raw), input_dir=spec.input_uri,
                        output_dir=paths.parts_url(spec.workdir), model_cache_dir=MODEL_CACHE, final_output=spec["output"]["uri"],
                        part_ids_file=PART_IDS_FILE if part_ids is not None else None)
    return ["predict", *to_argv(cfg, overrides={"part_id": INDEX})]


def blend_args(spec: JobSpec) -> list[str]:
    """The seams between parts; the pyramid is finalize's."""
    values = crd_values(BlendConfig, "blend", spec.raw)
    cfg = BlendConfig(**values, parts_dir=paths.parts_url(spec.workdir), output=spec["output"]["uri"], seams_only=True)
    return ["blend", *to_argv(cfg, overrides={"part_id": _index(cfg.num_parts)})]


def finalize_args(spec: JobSpec) -> list[str]:
    """The pyramid from the 2x blocks predict and blend staged, the OME metadata; then the parts go
    (INPUT, removed once the output is complete) unless keepIntermediates."""
    values = crd_values(FinalizeConfig, "finalize", spec.raw)
    cfg = FinalizeConfig(**values, input_path=paths.parts_url(spec.workdir), output_path=spec["output"]["uri"], input_kind="parts",
                         delete_intermediates=not spec["keepIntermediates"])
    return ["finalize", *to_argv(cfg, overrides={"part_id": _index(cfg.num_parts)})]


def check_args(spec: JobSpec, stage: str) -> list[str]:
    """``vesuvius-inference check``: is the work of a stage whose Job vanished unseen on storage?"""
    if stage == "predict":
        return ["check", "predict", "--parts_dir", paths.parts_url(spec.workdir), "--num_parts", str(spec.parts)]
    return ["check", "finalize", "--output", spec["output"]["uri"]]


def uses_gpu(spec: JobSpec, stage: str) -> bool:
    """Whether this stage's pods ask for a GPU: predict pods of a cuda run, nothing else."""
    return stage == "predict" and spec.gpus > 0


def disruptions_bounded(spec: JobSpec, stage: str) -> bool:
    """Whether this stage's pods are told their disruption count (and so refuse to start past
    retry.maxDisruptionsPerPart, exit 79): only pods whose memory may exceed their request.

    The Job controller counts every failure the podFailurePolicy ignored in one number per index
    (pkg/controller/job/indexed_job_utils.go, getNewIndexFailureCounts: matchPodFailurePolicy's countFailed
    false -> ignored count + 1), and a rule matches DisruptionTarget by type and status only
    (pod_failure_policy.go, matchOnPodConditions), never by its reason; so neither can tell a drain
    (EvictionByEvictionAPI), a preemption (PreemptionByScheduler), Karpenter's consolidation (the eviction API
    again), a node lost (DeletionByPodGC) or a taint (DeletionByTaintManager) from the kubelet evicting the pod
    for its own memory use (TerminationByKubelet). Kueue's evictions are not counted at all: Kueue suspends the
    Job, and the Job controller removes the tracking finalizer of the pods it deletes for that (job_controller.go,
    deleteJobPods), so no failed pod is left to count from. The pod's resources tell them apart instead: a pod
    whose memory request equals its limit (the derived resources, resources.py) is OOM-killed above it (a failure
    of its own, counted against retry.perPartLimit) and never chosen by the kubelet for its own use, so every
    disruption it sees is the cluster's, costs it nothing, and is not bounded. Only a spec's own resources with
    a memory request below the limit (or no limit) leave room for a part to be evicted for its own use; those
    pods keep the bound."""
    if stage == "check":
        return False
    return not memory_within_request(container_resources(spec, stage))


def is_indexed(spec: JobSpec, stage: str, completions: int) -> bool:
    """Predict, and blend or finalize split over several pods, are Indexed Jobs; so is a single blend or finalize
    pod that must be told its disruption count (:func:`disruptions_bounded`): only an Indexed Job's pods carry
    the Job controller's per-index counts (indexed_job_utils.go, addIndexFailureCountAnnotation), and without
    them a pod evicted for its own memory use would be restarted forever."""
    if stage == "check":
        return False
    return completions > 1 or stage == "predict" or disruptions_bounded(spec, stage)


def _env(spec: JobSpec, stage: str, indexed: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    st = spec["storage"]
    env: list[dict[str, Any]] = [
        {"name": "VESUVIUS_MODEL_CACHE_DIR", "value": MODEL_CACHE}, {"name": "HOME", "value": "/tmp"},
        # threads follow the CPU request when no CPU limit sets a quota (cpuquota.py)
        {"name": "VESUVIUS_CPUS", "valueFrom": {"resourceFieldRef": {"containerName": stage, "resource": "requests.cpu",
                                                                      "divisor": "1"}}}]
    if not uses_gpu(spec, stage):
        env.append(dict(NO_GPU_ENV))
    if indexed and disruptions_bounded(spec, stage):
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


def container_resources(spec: JobSpec, stage: str) -> dict[str, dict[str, str]]:
    """A stage's requests and limits as the pod needs them.

    Kubernetes requires a limit for every resource that cannot be overcommitted and, when both are
    set, an equal request (pkg/apis/core/validation/validation.go, ValidateResourceRequirements): a
    GPU named only under requests is copied to limits. The GPU count is the device's (:func:`uses_gpu`;
    spec.device_problems refuses resources that name another). CPU and memory the spec leaves out are
    derived (resources.py: no BestEffort pods).
    Quantities are strings, as the API server returns them (kubernetes-client 37 refuses integers).
    """
    res = (spec.get(stage) or {}).get("resources") or {} if stage != "check" else {}
    requests = {q: str(v) for q, v in (res.get("requests") or {}).items()}
    limits = {q: str(v) for q, v in (res.get("limits") or {}).items()}
    for resource, value in requests.items():
        if not is_overcommit_allowed(resource) and resource not in limits:
            limits[resource] = value
    if uses_gpu(spec, stage):
        limits[GPU] = str(spec.gpus)
        if GPU in requests:
            requests[GPU] = str(spec.gpus)
    else:
        requests.pop(GPU, None)
        limits.pop(GPU, None)
    return fill_in({"requests": requests, "limits": limits}, spec, stage)


def _failure_rules(spec: JobSpec, stage: str, action: str, *, indexed: bool, outage_budget: bool = True
                   ) -> list[dict[str, Any]]:
    """Disruptions cost no retry; non-retryable exit codes fail the part (or Job) at once. No codes, no rule:
    Kubernetes refuses ``onExitCodes.values: []`` ("at least one value is required").

    The Ignore rule on DisruptionTarget matches preemptions and the kubelet's node-pressure evictions
    alike (the kubelet sets DisruptionTarget, reason TerminationByKubelet: pkg/kubelet/eviction/
    eviction_manager.go, evictPod), and a rule cannot tell them apart by reason. Pods whose memory may
    exceed their request (:func:`disruptions_bounded`) are therefore not retried without bound through this
    rule alone: on Indexed Jobs the worker compares the Job controller's count of ignored failures of its
    index with retry.maxDisruptionsPerPart and exits EXIT_DISRUPTION_LIMIT, which fails the index here. The
    operator's own resources leave the kubelet no reason of the part's to evict it, and need no bound.

    A predict pod told to stop (SIGTERM: preemption, drain, Kueue eviction, Job suspension) finishes its
    batch, checkpoints and exits EXIT_STOPPED (signals.py): ignored too, second, before any rule that
    could fail the index on it (rules are evaluated in order and the first match wins: pkg/controller/
    job/pod_failure_policy.go, matchPodFailurePolicy), so a stopped part never costs a retry even when
    the pod got no DisruptionTarget condition (a drain's eviction of a pod, a deleted pod).

    A storage outage is the cluster's trouble too, not the part's: the worker waited ``storage.waitSeconds``
    for the store before it exited EXIT_STORAGE (storagewait.py), so an Ignore rule keeps an outage from
    spending the part's ``backoffLimitPerIndex`` (or a NonIndexed Job's ``backoffLimit``): matchPodFailurePolicy
    returns countFailed false for an Ignore rule (pkg/controller/job/pod_failure_policy.go), so the failure is
    not counted in ``failed`` nor against the index's limit, only in the index's ignored count (indexed_job_utils.go
    getNewIndexFailureCounts), and the pod is re-created. Its re-creation is still delayed: an index's backoff
    grows with failures and ignored failures alike (backoff_utils.go getRemainingTimePerIndex:
    getIndexAbsoluteFailureCount, 10 s doubling up to 6 min), which only spaces the pods of a long outage out.
    The Job controller
    itself would then retry a permanent outage for ever; the bound is the operator's outage budget instead
    (decide.py, ``storage.maxOutageSeconds``: the run fails with reason StorageUnreachable once the store has
    been unreachable that long, however many pods waited meanwhile), which needs the operator's log samples
    (``outage_budget``). Without them, 74 is Ignore'd only where the per-index count of ignored failures is
    bounded (the pods told their count exit 79 past ``maxDisruptionsPerPart``: about
    ``(maxDisruptionsPerPart + 1) x waitSeconds`` of outage) and otherwise counts as one of the part's retries,
    after the worker's wait."""
    rules: list[dict[str, Any]] = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    if stage == "predict":
        rules.append({"action": "Ignore", "onExitCodes": {"containerName": stage, "operator": "In",
                                                          "values": [EXIT_STOPPED]}})
    codes = sorted(set(int(c) for c in spec["retry"]["nonRetryableExitCodes"]))
    bounded = indexed and spec["retry"].get("maxDisruptionsPerPart") is not None and disruptions_bounded(spec, stage)
    if bounded:
        codes = sorted(set(codes) | {EXIT_DISRUPTION_LIMIT})
    if codes:
        rules.append({"action": action, "onExitCodes": {"containerName": stage, "operator": "In", "values": codes}})
    if (bounded or outage_budget) and EXIT_STORAGE not in codes:
        rules.append({"action": "Ignore", "onExitCodes": {"containerName": stage, "operator": "In",
                                                          "values": [EXIT_STORAGE]}})
    return rules


def queue_name(spec: JobSpec, stage: str, defaults: OperatorDefaults) -> str | None:
    """The Kueue LocalQueue of a stage's Jobs: spec.queueName (or the chart's worker.queueName) for the GPU
    stage only; blend and finalize take their own (spec.blend/finalize.queueName, the chart's
    worker.cpuQueueName), never the GPU queue; check Jobs take finalize's. A predict stage on the CPU
    (inference.device cpu) asks for no GPU and defaults to the CPU queue too."""
    if stage == "predict":
        return spec.get("queueName") or (defaults.queue_name if uses_gpu(spec, stage) else defaults.cpu_queue_name)
    own = (spec.get("finalize" if stage == "check" else stage) or {}).get("queueName")
    return own or defaults.cpu_queue_name


def _labels(ij_name: str, stage: str, spec: JobSpec, *, defaults: OperatorDefaults) -> dict[str, str]:
    labels = {**(spec.get("labels") or {}), LABEL_JOB: ij_name, LABEL_STAGE: stage, "app.kubernetes.io/managed-by": "vesuvius-inference-operator",
              "app.kubernetes.io/name": "vesuvius-inference"}
    queue = queue_name(spec, stage, defaults)
    if queue:
        labels[LABEL_QUEUE] = queue
    return labels


def _container(stage: str, spec: JobSpec, args: list[str], *, defaults: OperatorDefaults, indexed: bool,
               part_ids: bool) -> dict[str, Any]:
    env, env_from = _env(spec, stage, indexed)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"},
                                    {"name": "model-cache", "mountPath": MODEL_CACHE}]
    if part_ids:
        mounts.append({"name": "podinfo", "mountPath": PODINFO, "readOnly": True})
    container: dict[str, Any] = {
        "name": stage,
        "image": spec.get("image") or defaults.image,
        "imagePullPolicy": spec.get("imagePullPolicy") or defaults.image_pull_policy,
        "args": args,
        "env": env,
        "resources": container_resources(spec, stage),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    if env_from:
        container["envFrom"] = env_from
    return container


def _pod(stage: str, spec: JobSpec, container: dict[str, Any], *, defaults: OperatorDefaults, part_ids: bool
         ) -> dict[str, Any]:
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
    gpu = uses_gpu(spec, stage)
    node_selector = dict(spec.get("nodeSelector") or (defaults.gpu_node_selector if gpu else {}))
    node_selector.update(stage_spec.get("nodeSelector") or {})
    if node_selector:
        pod["nodeSelector"] = node_selector
    tolerations = list(spec.get("tolerations") or (defaults.gpu_tolerations if gpu else []))
    tolerations += [t for t in stage_spec.get("tolerations") or [] if t not in tolerations]
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.get("priorityClassName"):
        pod["priorityClassName"] = spec["priorityClassName"]
    account = spec.get("serviceAccountName") or defaults.service_account  # the chart's worker.serviceAccountName
    if account:
        pod["serviceAccountName"] = account
    pod.update(passthrough(spec, stage))
    if stage == "predict":  # one batch and the stop's checkpoint (k8s/grace.py)
        pod["terminationGracePeriodSeconds"] = predict_grace_seconds(spec)
    return pod


def passthrough(spec: JobSpec, stage: str) -> dict[str, Any]:
    """Pod fields the spec sets as they are: ``runtimeClassName`` and ``affinity`` (a stage's own replaces the
    spec-wide one), ``imagePullSecrets`` (every stage's pods)."""
    stage_spec = (spec.get(stage) or {}) if stage != "check" else {}
    out: dict[str, Any] = {}
    for key in ("runtimeClassName", "affinity"):
        value = stage_spec.get(key) or spec.get(key)
        if value:
            out[key] = value
    if spec.get("imagePullSecrets"):
        out["imagePullSecrets"] = [{"name": s["name"]} for s in spec["imagePullSecrets"]]
    return out


def pod_annotations(spec: JobSpec) -> dict[str, str]:
    """The spec's annotations and the autoscalers' (safeToEvict, doNotDisrupt) for every pod."""
    out = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    if spec.get("safeToEvict") is not None:
        out[SAFE_TO_EVICT] = "true" if spec["safeToEvict"] else "false"
    if spec.get("doNotDisrupt"):
        out[DO_NOT_DISRUPT] = "true"
    return out


def job_metadata(spec: JobSpec, stage: str, parallelism: int) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) a Job carries for Kueue beyond its queue: the WorkloadPriorityClass label, and
    partial admission on the predict Job when it can start with fewer pods than it asks for."""
    labels: dict[str, str] = {}
    annotations = {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
    if spec.get("workloadPriorityClassName"):
        labels[KUEUE_PRIORITY] = spec["workloadPriorityClassName"]
    low = spec.get("minParallelism")
    if stage == "predict" and low is not None and 0 < int(low) < parallelism:
        annotations[KUEUE_MIN_PARALLELISM] = str(int(low))
    return labels, annotations


def _completion(spec: JobSpec, stage: str, completions: int, *, indexed: bool, outage_budget: bool = True
                ) -> dict[str, Any]:
    retry = spec["retry"]
    if not indexed:
        limit = 2 if stage == "check" else int(retry["perPartLimit"])
        rules = _failure_rules(spec, stage, "FailJob", indexed=False, outage_budget=outage_budget)
        if stage == "check":  # "incomplete" is an answer, not a failure worth a retry
            rules = [rules[0], {"action": "FailJob", "onExitCodes": {"containerName": stage, "operator": "In",
                                                                     "values": [EXIT_INCOMPLETE]}}]
        return {"completionMode": "NonIndexed", "backoffLimit": limit, "podReplacementPolicy": "Failed",
                "podFailurePolicy": {"rules": rules}}
    out: dict[str, Any] = {"completionMode": "Indexed", "backoffLimitPerIndex": int(retry["perPartLimit"]),
                           "podReplacementPolicy": "Failed",
                           "podFailurePolicy": {"rules": _failure_rules(spec, stage, "FailIndex",
                                                                        indexed=True,
                                                                        outage_budget=outage_budget)}}
    # maxFailedParts is about predict parts; Kubernetes wants maxFailedIndexes <= completions
    # (pkg/apis/batch/validation/validation.go, validateJobSpec), so a retry over fewer parts clamps it.
    if stage == "predict" and retry.get("maxFailedParts") is not None:
        out["maxFailedIndexes"] = min(int(retry["maxFailedParts"]), completions)
    return out


def _job(name: str, namespace: str, uid: str, *, ij_name: str, stage: str, spec: JobSpec, args: list[str],
         completions: int, parallelism: int, defaults: OperatorDefaults,
         part_ids: Sequence[int] | None = None) -> dict[str, Any]:
    labels = _labels(ij_name, stage, spec, defaults=defaults)
    indexed = is_indexed(spec, stage, completions)
    container = _container(stage, spec, args, defaults=defaults, indexed=indexed,
                           part_ids=part_ids is not None)
    template: dict[str, Any] = {"metadata": {"labels": dict(labels)},
                                "spec": _pod(stage, spec, container, defaults=defaults,
                                             part_ids=part_ids is not None)}
    kueue_labels, job_annotations = job_metadata(spec, stage, parallelism)
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**labels, **kueue_labels}}
    pod_notes = pod_annotations(spec)
    if part_ids is not None:  # the ledger of which part each index runs, read back from here (never from args)
        job_annotations[PART_IDS] = pod_notes[PART_IDS] = encode_part_ids(part_ids)
    if job_annotations:
        meta["annotations"] = job_annotations
    if pod_notes:
        template["metadata"]["annotations"] = pod_notes
    job_spec: dict[str, Any] = {"completions": completions, "parallelism": parallelism,
                                "suspend": bool(spec["suspend"]), "template": template,
                                **_completion(spec, stage, completions, indexed=indexed,
                                              outage_budget=defaults.outage_budget)}
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


def predict_job(name: str, namespace: str, uid: str, *, spec: JobSpec,
                defaults: OperatorDefaults | None = None,
                part_ids: Sequence[int] | None = None, attempt: int = 0) -> dict[str, Any]:
    """The Indexed predict Job (``part_ids`` + ``attempt``: a retry Job over just those parts)."""
    d = defaults or OperatorDefaults()
    ids = sorted(set(int(i) for i in part_ids)) if part_ids is not None else None
    n = len(ids) if ids is not None else spec.parts
    return _job(job_name(name, "predict", attempt), namespace, uid, ij_name=name, stage="predict", spec=spec,
                args=predict_args(spec, ids), completions=n, parallelism=min(spec.parallelism, n), defaults=d,
                part_ids=ids)


def blend_job(name: str, namespace: str, uid: str, *, spec: JobSpec, defaults: OperatorDefaults | None = None
              ) -> dict[str, Any]:
    n = int(spec["blend"]["parallelism"])
    return _job(job_name(name, "blend"), namespace, uid, ij_name=name, stage="blend", spec=spec,
                args=blend_args(spec), completions=n, parallelism=n,
                defaults=defaults or OperatorDefaults())


def finalize_job(name: str, namespace: str, uid: str, *, spec: JobSpec,
                 defaults: OperatorDefaults | None = None
                 ) -> dict[str, Any]:
    n = int(spec["finalize"]["parallelism"])
    return _job(job_name(name, "finalize"), namespace, uid, ij_name=name, stage="finalize", spec=spec,
                args=finalize_args(spec), completions=n, parallelism=n,
                defaults=defaults or OperatorDefaults())


def check_job(name: str, namespace: str, uid: str, *, spec: JobSpec, stage: str, lost_uid: str = "",
              defaults: OperatorDefaults | None = None) -> dict[str, Any]:
    """A one-pod Job checking on storage whether ``stage`` (predict or finalize) completed (stagecheck.py);
    ``lost_uid``, the uid of the Job that vanished unseen, ties its verdict to that loss."""
    job = _job(check_job_name(name, stage), namespace, uid, ij_name=name, stage="check", spec=spec,
               args=check_args(spec, stage), completions=1, parallelism=1,
               defaults=defaults or OperatorDefaults())
    job["metadata"].setdefault("annotations", {})[CHECKS_UID] = lost_uid
    job["metadata"]["labels"][LABEL_CHECK] = stage
    job["spec"]["template"]["metadata"]["labels"][LABEL_CHECK] = stage
    return job
