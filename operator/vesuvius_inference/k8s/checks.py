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

from .manifests import OperatorDefaults, is_overcommit_allowed
from .names import is_dns_subdomain, is_label_value, is_qualified_name, name_problems
from .quantity import parse_quantity
from .spec import JobSpec, validate

STAGES = ("predict", "blend", "finalize")


def _selector_problems(where: str, selector: dict[str, Any]) -> list[str]:
    errors = []
    for key, value in (selector or {}).items():
        if not is_qualified_name(str(key)):
            errors.append(f"{where}: {key!r} is not a valid label key")
        if not is_label_value(str(value)):
            errors.append(f"{where}[{key}]: {value!r} is not a valid label value (at most 63 of A-Z a-z 0-9 - _ .)")
    return errors


def _toleration_problems(where: str, tolerations: list[dict[str, Any]]) -> list[str]:
    """pkg/apis/core/validation/validation.go, ValidateTolerations."""
    errors = []
    for i, t in enumerate(tolerations or []):
        key, op = t.get("key") or "", t.get("operator") or "Equal"
        if key and not is_qualified_name(key):
            errors.append(f"{where}[{i}].key: {key!r} is not a valid label key")
        if not key and op != "Exists":
            errors.append(f"{where}[{i}].operator: must be Exists when key is empty")
        if op == "Exists" and t.get("value"):
            errors.append(f"{where}[{i}].value: must be empty when operator is Exists")
        if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
            errors.append(f"{where}[{i}].tolerationSeconds: needs effect NoExecute")
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
        gpu_defaults = stage == "predict"
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
    if not (spec.get("image") or d.image):
        errors.append("no worker image: set spec.image or the chart's worker.image")
    return errors
