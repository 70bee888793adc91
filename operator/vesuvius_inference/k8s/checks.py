"""Everything that makes the operator refuse an InferenceJob (InvalidSpec), in one place.

The CRD's schema and CEL rules catch most of it at admission; this repeats those rules for API
servers or objects that did not run them, and adds the ones that depend on the operator's defaults
(the Helm chart's env) or that CEL cannot express well (quantities). Each rule mirrors a check the
API server makes on the Jobs it would create, so a spec that passes here yields Jobs it accepts:
pod rules are from kubernetes pkg/apis/core/validation/validation.go (ValidateResourceRequirements,
ValidateTolerations, ValidateNodeSelector via ValidateLabels, service account and priority class
names), the Job rules from pkg/apis/batch/validation/validation.go. ``vesuvius-inference render``
refuses exactly what the operator refuses.
"""

from __future__ import annotations

from typing import Any

from vesuvius_inference.k8s.manifests import (
    DO_NOT_DISRUPT,
    SAFE_TO_EVICT,
    OperatorDefaults,
    is_indexed,
    is_overcommit_allowed,
    uses_gpu,
)
from vesuvius_inference.k8s.names import (
    hostname,
    is_dns_subdomain,
    is_label_value,
    is_qualified_name,
    job_name,
    name_problems,
)
from vesuvius_inference.k8s.quantity import parse_quantity
from vesuvius_inference.k8s.spec import JobSpec, device_problems, validate

STAGES = ("predict", "blend", "finalize")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Keys the operator sets itself, or that have their own spec field (one setting, one place).
RESERVED_PREFIXES = ("vesuvius.dev/", "batch.kubernetes.io/", "kueue.x-k8s.io/")
OWN_KEYS = {"app.kubernetes.io/managed-by": "the operator's", "app.kubernetes.io/name": "the operator's",
            "job-name": "the Job controller's", "controller-uid": "the Job controller's",
            SAFE_TO_EVICT: "spec.safeToEvict's", DO_NOT_DISRUPT: "spec.doNotDisrupt's"}
AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")
MAX_ANNOTATIONS_BYTES = 256 * 1024  # apimachinery ValidateAnnotationsSize: TotalAnnotationSizeLimitB


def _selector_problems(where: str, selector: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in (selector or {}).items():
        if not is_qualified_name(str(key)):
            errors.append(f"{where}: {key!r} is not a valid label key")
        if not is_label_value(str(value)):
            errors.append(f"{where}[{key}]: {value!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ .)")
    return errors


def _toleration_problems(where: str, tolerations: list[dict[str, Any]]) -> list[str]:
    """pkg/apis/core/validation/validation.go, ValidateTolerations: a key is a label key; an empty key needs
    Exists; tolerationSeconds needs NoExecute; with Equal (or no operator) the value is a label value
    (validation.IsValidLabelValue: "gpu pool" is not one), with Exists it is empty; the effect one of
    validateTaintEffect's three (empty: every effect)."""
    errors = []
    for i, t in enumerate(tolerations or []):
        key, op, value = t.get("key") or "", t.get("operator") or "Equal", str(t.get("value") or "")
        if key and not is_qualified_name(key):
            errors.append(f"{where}[{i}].key: {key!r} is not a valid label key")
        if not key and op != "Exists":
            errors.append(f"{where}[{i}].operator: must be Exists when key is empty")
        if op == "Equal" and not is_label_value(value):
            errors.append(f"{where}[{i}].value: {value!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ ., "
                          "beginning and ending with a letter or digit): taints' values are label values")
        elif op == "Exists" and value:
            errors.append(f"{where}[{i}].value: must be empty when operator is Exists")
        elif op not in ("Equal", "Exists"):
            errors.append(f"{where}[{i}].operator: {op!r} is not Equal or Exists")
        if t.get("effect") and t["effect"] not in EFFECTS:
            errors.append(f"{where}[{i}].effect: {t['effect']!r} is not one of {', '.join(EFFECTS)}")
        if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
            errors.append(f"{where}[{i}].tolerationSeconds: needs effect NoExecute")
    return errors


def _metadata_problems(spec: JobSpec) -> list[str]:
    """spec.labels and spec.annotations, checked as the API server checks a Job's and a pod's
    (apimachinery pkg/apis/meta/v1/validation ValidateLabels, pkg/api/validation ValidateAnnotations), and kept
    off the keys the operator, the Job controller, Kueue and the spec's own fields set."""
    errors = []
    for field in ("labels", "annotations"):
        items = spec.get(field) or {}
        for key, value in items.items():
            key = str(key)
            if not is_qualified_name(key):
                errors.append(f"{field}: {key!r} is not a valid key ([prefix/]name, the name at most 63 characters)")
            elif key.startswith(RESERVED_PREFIXES) or key in OWN_KEYS:
                whose = OWN_KEYS.get(key, "the operator's, the Job controller's or Kueue's (Kueue's knobs are "
                                         "spec.queueName, spec.workloadPriorityClassName, spec.minParallelism)")
                errors.append(f"{field}: {key!r} is {whose} to set, not spec.{field}'")
            if field == "labels" and not is_label_value(str(value)):
                errors.append(f"labels[{key}]: {value!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ .)")
        if field == "annotations" and sum(len(str(k)) + len(str(v)) for k, v in items.items()) > MAX_ANNOTATIONS_BYTES:
            errors.append(f"annotations: more than {MAX_ANNOTATIONS_BYTES} bytes in all")
    return errors


def _pod_field_problems(spec: JobSpec) -> list[str]:
    """runtimeClassName (a RuntimeClass name: a DNS-1123 subdomain, pkg/apis/core/validation
    ValidateRuntimeClassName), imagePullSecrets (LocalObjectReference names), affinity (only its three kinds:
    their contents are the API server's to judge, and a refusal there shows as CreateFailed)."""
    errors = []
    for where, node in [("", spec.raw), *((f"{st}.", spec.get(st) or {}) for st in STAGES)]:
        rc = node.get("runtimeClassName")
        if rc and not is_dns_subdomain(str(rc)):
            errors.append(f"{where}runtimeClassName {rc!r} is not a valid RuntimeClass name (a DNS-1123 subdomain)")
        aff = node.get("affinity")
        if aff is not None and (not isinstance(aff, dict) or set(aff) - set(AFFINITY_KINDS)):
            errors.append(f"{where}affinity may only hold {', '.join(AFFINITY_KINDS)}")
    for i, ref in enumerate(spec.get("imagePullSecrets") or []):
        if not is_dns_subdomain(str((ref or {}).get("name") or "")):
            errors.append(f"imagePullSecrets[{i}].name {(ref or {}).get('name')!r} is not a valid Secret name")
    pc = spec.get("workloadPriorityClassName")
    if pc and not (is_dns_subdomain(str(pc)) and is_label_value(str(pc))):
        errors.append(f"workloadPriorityClassName {pc!r} is not a valid WorkloadPriorityClass name (a DNS-1123 "
                      "subdomain of at most 63 characters: it becomes the kueue.x-k8s.io/priority-class label)")
    low = spec.get("minParallelism")
    if low is not None and not 1 <= int(low) < spec.parallelism:
        errors.append(f"minParallelism {low} must be between 1 and parallelism - 1 ({spec.parallelism - 1}): Kueue "
                      "refuses a predict Job whose kueue.x-k8s.io/job-min-parallelism is not below its parallelism")
    return errors


def _resource_problems(spec: JobSpec, stage: str) -> list[str]:
    errors = []
    res = (spec.get(stage) or {}).get("resources") or {}
    parsed: dict[str, dict[str, Any]] = {}
    for kind in ("requests", "limits"):
        parsed[kind] = {}
        for resource, value in (res.get(kind) or {}).items():
            try:
                q = parse_quantity(value)
            except ValueError as e:
                errors.append(f"{stage}.resources.{kind}[{resource}]: {e}")
                continue
            if q < 0:
                errors.append(f"{stage}.resources.{kind}[{resource}]: must not be negative")
            if not is_overcommit_allowed(resource) and q.denominator != 1:
                errors.append(f"{stage}.resources.{kind}[{resource}]: {value} must be a whole number")
            parsed[kind][resource] = q
    for resource, q in parsed["requests"].items():
        limit = parsed["limits"].get(resource)
        if limit is None:
            continue
        if not is_overcommit_allowed(resource) and q != limit:
            errors.append(f"{stage}.resources: requests[{resource}] {res['requests'][resource]} must equal "
                          f"limits[{resource}] {res['limits'][resource]} (it cannot be overcommitted)")
        elif q > limit:
            errors.append(f"{stage}.resources: requests[{resource}] {res['requests'][resource]} exceeds "
                          f"limits[{resource}] {res['limits'][resource]}")
    return errors


def refusals(name: str, spec: JobSpec, defaults: OperatorDefaults | None = None) -> list[str]:
    """One message per reason the operator would refuse this InferenceJob ([] = it runs)."""
    d = defaults or OperatorDefaults()
    errors = validate(spec)
    if errors:
        return errors
    errors += name_problems(name, spec)
    queue = spec.get("queueName") or d.queue_name
    if queue and not is_label_value(queue):
        errors.append(f"queueName {queue!r} is not a valid label value (it becomes the kueue.x-k8s.io/queue-name label)")
    for stage in STAGES:
        stage_spec = spec.get(stage) or {}
        gpu_defaults = uses_gpu(spec, stage)
        selector = dict(spec.get("nodeSelector") or (d.gpu_node_selector if gpu_defaults else {}))
        selector.update(stage_spec.get("nodeSelector") or {})
        errors += _selector_problems(f"{stage}: nodeSelector", selector)
        tolerations = list(spec.get("tolerations") or (d.gpu_tolerations if gpu_defaults else []))
        tolerations += stage_spec.get("tolerations") or []
        errors += _toleration_problems(f"{stage}: tolerations", tolerations)
        errors += _resource_problems(spec, stage)
    for key in ("serviceAccountName", "priorityClassName"):
        if spec.get(key) and not is_dns_subdomain(spec[key]):
            errors.append(f"{key} {spec[key]!r} is not a valid name (a DNS-1123 subdomain)")
    secret = spec["storage"].get("secretName")
    if secret and not is_dns_subdomain(secret):
        errors.append(f"storage.secretName {secret!r} is not a valid Secret name (a DNS-1123 subdomain)")
    errors += device_problems(spec) + _metadata_problems(spec) + _pod_field_problems(spec)
    for stage in ("blend", "finalize"):  # one pod, Indexed for its disruption count: <job>-0 is its hostname
        if int(spec[stage]["parallelism"]) == 1 and is_indexed(spec, stage, 1) and not errors:
            host = hostname(job_name(name, stage), 1)
            if len(host) > 63:
                errors.append(f"metadata.name {name!r} is too long: the {stage} pod's hostname {host!r} (an Indexed "
                              f"Job, since {stage}.resources request less memory than they allow) has {len(host)} "
                              "characters and Kubernetes allows 63")
    if not (spec.get("image") or d.image):
        errors.append("no worker image: set spec.image or the chart's worker.image")
    return errors
