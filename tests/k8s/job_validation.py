"""kube-apiserver's validation of batch/v1 Jobs, ported for the emulated API server (kmock_api.KubeAPI
runs it on every Job create and update and answers 422 Invalid, as the real server does).

Ported from kubernetes (master, 2025):
- pkg/apis/batch/validation/validation.go: ValidateJob (object meta, validateGeneratedSelector, the
  Indexed pod hostname ``<name>-<completions-1>`` as a DNS-1123 label), validateJobSpec (non-negative
  counts; backoffLimitPerIndex/maxFailedIndexes need Indexed; maxFailedIndexes <= completions and
  <= 100000; completions above 100000 with backoffLimitPerIndex need maxFailedIndexes; parallelism
  caps; restartPolicy OnFailure/Never, Never with a podFailurePolicy), validatePodFailurePolicy and
  validatePodFailurePolicyRule/OnExitCodes/OnPodConditions (<= 20 rules, FailIndex needs
  backoffLimitPerIndex, containerName must exist, values non-empty, <= 255, no 0 with In, unique,
  ordered), validatePodReplacementPolicy (only Failed with a podFailurePolicy), ValidateJobSpecUpdate
  (completions, selector, completionMode, podFailurePolicy, backoffLimitPerIndex immutable; the pod
  template immutable except the scheduling directives of a suspended Job that never started).
- pkg/apis/core/validation/validation.go, the parts of ValidatePodTemplateSpec our Jobs exercise:
  labels (ValidateLabels: qualified-name keys, label values), container names (DNS-1123 labels,
  unique), image required, imagePullPolicy, env var names, envFrom Secret names, volumes and mounts,
  ValidateResourceRequirements (quantities, integers for extended resources, requests <= limits,
  equal for resources that cannot be overcommitted, "Limit must be set for non overcommitable
  resources"), nodeSelector (ValidateLabels), ValidateTolerations, service account and priority
  class names (DNS-1123 subdomains); helpers from pkg/apis/core/helper/helpers.go (IsNativeResource,
  IsOvercommitAllowed, IsExtendedResourceName).
- apimachinery pkg/util/validation/validation.go: IsDNS1123Label, IsDNS1123Subdomain, IsQualifiedName,
  IsValidLabelValue, IsCIdentifier-like env var names (IsEnvVarName).

Quantities are parsed with the kubernetes client's ``kubernetes.utils.parse_quantity``, not the
product's own parser. Errors read like the API server's field errors ("spec.maxFailedIndexes: Invalid
value: 10: must be less than or equal to completions").
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
ENV_VAR_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

MAX_PARALLELISM_INDEXED = 100_000
MAX_FAILED_INDEXES = 100_000
COMPLETIONS_SOFT_LIMIT = 100_000
PARALLELISM_HIGH_COMPLETIONS = 10_000
MAX_FAILED_HIGH_COMPLETIONS = 10_000
MAX_RULES = 20
MAX_EXIT_CODES = 255
MAX_CONDITION_PATTERNS = 20
ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")


def _v(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else json.dumps(value)


def invalid(path: str, value: Any, detail: str) -> str:
    return f"{path}: Invalid value: {_v(value)}: {detail}"


def required(path: str, detail: str = "") -> str:
    return f"{path}: Required value" + (f": {detail}" if detail else "")


def not_supported(path: str, value: Any, allowed: list[str]) -> str:
    return f"{path}: Unsupported value: {_v(value)}: supported values: " + ", ".join(f'"{a}"' for a in allowed)


def is_dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not DNS1123_LABEL.match(value):
        errs.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                    "start and end with an alphanumeric character")
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not DNS1123_SUBDOMAIN.match(value):
        errs.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                    "and must start and end with an alphanumeric character")
    return errs


def is_qualified_name(value: str) -> list[str]:
    prefix, sep, name = value.rpartition("/")
    errs = []
    if sep:
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += [f"prefix part {e}" for e in is_dns1123_subdomain(prefix)]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    elif not QUALIFIED_NAME_PART.match(name):
        errs.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                    "with an alphanumeric character")
    return errs


def is_label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not LABEL_VALUE.match(value):
        errs.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character")
    return errs


def validate_labels(labels: dict[str, Any] | None, path: str) -> list[str]:
    """apimachinery pkg/apis/meta/v1/validation/validation.go, ValidateLabels."""
    out = []
    for k, v in (labels or {}).items():
        out += [invalid(path, k, e) for e in is_qualified_name(str(k))]
        out += [invalid(f"{path}", v, e) for e in is_label_value(str(v))]
    return out


def _object_meta(meta: dict[str, Any], path: str = "metadata") -> list[str]:
    errs = []
    name = meta.get("name") or ""
    if not name:
        errs.append(required(f"{path}.name", "name or generateName is required"))
    else:
        errs += [invalid(f"{path}.name", name, e) for e in is_dns1123_subdomain(name)]
    errs += validate_labels(meta.get("labels"), f"{path}.labels")
    controllers = 0
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        p = f"{path}.ownerReferences[{i}]"
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                errs.append(invalid(f"{p}.{key}", ref.get(key, ""), f"{key} must not be empty"))
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        errs.append(invalid(f"{path}.ownerReferences", meta.get("ownerReferences"),
                            "Only one reference can have Controller set to true"))
    return errs


# ---- resources (pkg/apis/core/helper/helpers.go + core validation) ---------------------------------

def is_native_resource(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def is_hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def is_overcommit_allowed(name: str) -> bool:
    return is_native_resource(name) and not is_hugepages(name)


def is_extended_resource(name: str) -> bool:
    return not is_native_resource(name) and not name.startswith("requests.")


def _quantity(value: Any) -> Decimal:
    from kubernetes.utils import parse_quantity

    return Decimal(parse_quantity(value))


def validate_resource_requirements(res: dict[str, Any], path: str) -> list[str]:
    """ValidateResourceRequirements."""
    errs = []
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    parsed: dict[str, dict[str, Decimal]] = {"limits": {}, "requests": {}}
    for kind, values in (("limits", limits), ("requests", requests)):
        for name, value in values.items():
            p = f"{path}.{kind}[{name}]"
            if not is_native_resource(name) and is_qualified_name(name):
                errs.append(invalid(p, name, "must be a standard resource name or fully qualified"))
            try:
                q = _quantity(value)
            except (ValueError, ArithmeticError, TypeError):
                errs.append(invalid(p, value, "quantities must match the regular expression"))
                continue
            if q < 0:
                errs.append(invalid(p, value, "must be greater than or equal to 0"))
            if is_extended_resource(name) and q != q.to_integral_value():
                errs.append(invalid(p, value, "must be an integer"))
            parsed[kind][name] = q
    for name, q in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        if name in limits and limit is not None:
            if q != limit and not is_overcommit_allowed(name):
                errs.append(invalid(f"{path}.requests", str(requests[name]), f"must be equal to {name} limit of "
                                                                           f"{limits[name]}"))
            elif q > limit:
                errs.append(invalid(f"{path}.requests", str(requests[name]), f"must be less than or equal to {name} "
                                                                           f"limit of {limits[name]}"))
        elif not is_overcommit_allowed(name):
            errs.append(required(f"{path}.limits", "Limit must be set for non overcommitable resources"))
    return errs


def validate_tolerations(tolerations: list[dict[str, Any]], path: str) -> list[str]:
    """ValidateTolerations."""
    errs = []
    for i, t in enumerate(tolerations or []):
        p = f"{path}[{i}]"
        key, op = t.get("key") or "", t.get("operator") or "Equal"
        if key:
            errs += [invalid(f"{p}.key", key, e) for e in is_qualified_name(key)]
        elif op != "Exists":
            errs.append(invalid(f"{p}.operator", op, "operator must be Exists when `key` is empty, which means "
                                                     "\"match all values and all keys\""))
        if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
            errs.append(invalid(f"{p}.effect", t.get("effect", ""), "effect must be 'NoExecute' when "
                                                                     "`tolerationSeconds` is set"))
        if op == "Equal":
            errs += [invalid(f"{p}.operator", t.get("value", ""), e) for e in is_label_value(str(t.get("value", "")))]
        elif op == "Exists":
            if t.get("value"):
                errs.append(invalid(f"{p}.operator", t, "value must be empty when `operator` is 'Exists'"))
        else:
            errs.append(not_supported(f"{p}.operator", op, ["Equal", "Exists"]))
        if t.get("effect") and t["effect"] not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            errs.append(not_supported(f"{p}.effect", t["effect"], ["NoExecute", "NoSchedule", "PreferNoSchedule"]))
    return errs


def validate_pod_spec(pod: dict[str, Any], path: str) -> list[str]:
    """The parts of ValidatePodSpec the operator's Jobs exercise."""
    errs = []
    containers = pod.get("containers") or []
    if not containers:
        errs.append(required(f"{path}.containers"))
    volumes = {}
    for i, v in enumerate(pod.get("volumes") or []):
        p = f"{path}.volumes[{i}]"
        errs += [invalid(f"{p}.name", v.get("name", ""), e) for e in is_dns1123_label(v.get("name", ""))]
        if v.get("name") in volumes:
            errs.append(f"{p}.name: Duplicate value: {_v(v.get('name'))}")
        volumes[v.get("name")] = v
    names = set()
    for i, c in enumerate(containers):
        p = f"{path}.containers[{i}]"
        cname = c.get("name", "")
        errs += [invalid(f"{p}.name", cname, e) for e in is_dns1123_label(cname)]
        if cname in names:
            errs.append(f"{p}.name: Duplicate value: {_v(cname)}")
        names.add(cname)
        if not c.get("image"):
            errs.append(required(f"{p}.image"))
        if c.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
            errs.append(not_supported(f"{p}.imagePullPolicy", c["imagePullPolicy"], ["Always", "IfNotPresent", "Never"]))
        if c.get("terminationMessagePolicy") not in (None, "File", "FallbackToLogsOnError"):
            errs.append(not_supported(f"{p}.terminationMessagePolicy", c["terminationMessagePolicy"],
                                      ["File", "FallbackToLogsOnError"]))
        for j, e in enumerate(c.get("env") or []):
            if not ENV_VAR_NAME.match(e.get("name", "")):
                errs.append(invalid(f"{p}.env[{j}].name", e.get("name", ""), "a valid environment variable name must "
                                                                            "consist of alphabetic characters, digits, "
                                                                            "'_', '-', or '.'"))
        for j, src in enumerate(c.get("envFrom") or []):
            for kind in ("secretRef", "configMapRef"):
                if kind in src:
                    errs += [invalid(f"{p}.envFrom[{j}].{kind}.name", src[kind].get("name", ""), e)
                             for e in is_dns1123_subdomain(src[kind].get("name", ""))]
        mounts = set()
        for j, m in enumerate(c.get("volumeMounts") or []):
            if m.get("name") not in volumes:
                errs.append(f"{p}.volumeMounts[{j}].name: Not found: {_v(m.get('name'))}")
            if m.get("mountPath") in mounts:
                errs.append(invalid(f"{p}.volumeMounts[{j}].mountPath", m.get("mountPath"), "must be unique"))
            mounts.add(m.get("mountPath"))
        errs += validate_resource_requirements(c.get("resources") or {}, f"{p}.resources")
    errs += validate_labels(pod.get("nodeSelector"), f"{path}.nodeSelector")
    errs += validate_tolerations(pod.get("tolerations") or [], f"{path}.tolerations")
    for key in ("serviceAccountName", "priorityClassName"):
        if pod.get(key):
            errs += [invalid(f"{path}.{key}", pod[key], e) for e in is_dns1123_subdomain(pod[key])]
    if pod.get("hostname"):
        errs += [invalid(f"{path}.hostname", pod["hostname"], e) for e in is_dns1123_label(pod["hostname"])]
    return errs


# ---- the Job ------------------------------------------------------------------------------------

def _pod_failure_policy(spec: dict[str, Any], path: str) -> list[str]:
    errs = []
    rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
    if len(rules) > MAX_RULES:
        errs.append(f"{path}.rules: Too many: {len(rules)}: must have at most {MAX_RULES} items")
    pod = spec.get("template", {}).get("spec", {})
    containers = {c.get("name") for c in (pod.get("containers") or []) + (pod.get("initContainers") or [])}
    for i, rule in enumerate(rules):
        p = f"{path}.rules[{i}]"
        action = rule.get("action") or ""
        if not action:
            errs.append(required(f"{p}.action", f"valid values: {list(ACTIONS)}"))
        elif action == "FailIndex":
            if spec.get("backoffLimitPerIndex") is None:
                errs.append(invalid(f"{p}.action", action, "requires the backoffLimitPerIndex to be set"))
        elif action not in ACTIONS:
            errs.append(not_supported(f"{p}.action", action, list(ACTIONS)))
        oc, opc = rule.get("onExitCodes"), rule.get("onPodConditions") or []
        if oc is not None:
            q = f"{p}.onExitCodes"
            op = oc.get("operator") or ""
            if not op:
                errs.append(required(f"{q}.operator", 'valid values: ["In" "NotIn"]'))
            elif op not in ("In", "NotIn"):
                errs.append(not_supported(f"{q}.operator", op, ["In", "NotIn"]))
            if oc.get("containerName") is not None and oc["containerName"] not in containers:
                errs.append(invalid(f"{q}.containerName", oc["containerName"],
                                    "must be one of the container or initContainer names in the pod template"))
            values = oc.get("values") or []
            if not values:
                errs.append(invalid(f"{q}.values", values, "at least one value is required"))
            elif len(values) > MAX_EXIT_CODES:
                errs.append(f"{q}.values: Too many: {len(values)}: must have at most {MAX_EXIT_CODES} items")
            seen: set[int] = set()
            for j, v in enumerate(values):
                if op == "In" and v == 0:
                    errs.append(invalid(f"{q}.values[{j}]", v, "must not be 0 for the In operator"))
                if v in seen:
                    errs.append(f"{q}.values[{j}]: Duplicate value: {v}")
                seen.add(v)
            if any(values[j - 1] > values[j] for j in range(1, len(values))):
                errs.append(invalid(f"{q}.values", values, "must be ordered"))
        if opc:
            if len(opc) > MAX_CONDITION_PATTERNS:
                errs.append(f"{p}.onPodConditions: Too many: {len(opc)}: must have at most {MAX_CONDITION_PATTERNS}")
            for j, pat in enumerate(opc):
                errs += [invalid(f"{p}.onPodConditions[{j}].type", pat.get("type", ""), e)
                         for e in is_qualified_name(pat.get("type", ""))]
                if not pat.get("status"):
                    errs.append(required(f"{p}.onPodConditions[{j}].status"))
                elif pat["status"] not in ("True", "False", "Unknown"):
                    errs.append(not_supported(f"{p}.onPodConditions[{j}].status", pat["status"],
                                              ["False", "True", "Unknown"]))
        if oc is not None and opc:
            errs.append(f"{p}: Invalid value: specifying both OnExitCodes and OnPodConditions is not supported")
        if oc is None and not opc:
            errs.append(f"{p}: Invalid value: specifying one of OnExitCodes and OnPodConditions is required")
    return errs


def validate_job_spec(spec: dict[str, Any], path: str = "spec") -> list[str]:
    """validateJobSpec + ValidateJobSpec."""
    errs = []
    for key in ("parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished",
                "backoffLimitPerIndex", "maxFailedIndexes"):
        if spec.get(key) is not None and int(spec[key]) < 0:
            errs.append(invalid(f"{path}.{key}", spec[key], "must be greater than or equal to 0"))
    per_index, max_failed = spec.get("backoffLimitPerIndex"), spec.get("maxFailedIndexes")
    completions, parallelism = spec.get("completions"), spec.get("parallelism")
    if max_failed is not None and per_index is None:
        errs.append(required(f"{path}.backoffLimitPerIndex", "when maxFailedIndexes is specified"))
    mode = spec.get("completionMode")
    if mode not in (None, "NonIndexed", "Indexed"):
        errs.append(not_supported(f"{path}.completionMode", mode, ["NonIndexed", "Indexed"]))
    if mode == "Indexed":
        if completions is None:
            errs.append(required(f"{path}.completions", "when completion mode is Indexed"))
        if parallelism is not None and parallelism > MAX_PARALLELISM_INDEXED:
            errs.append(invalid(f"{path}.parallelism", parallelism, f"must be less than or equal to "
                                                                   f"{MAX_PARALLELISM_INDEXED} when completion mode "
                                                                   "is Indexed"))
        if completions is not None and max_failed is not None and max_failed > completions:
            errs.append(invalid(f"{path}.maxFailedIndexes", max_failed, "must be less than or equal to completions"))
        if max_failed is not None and max_failed > MAX_FAILED_INDEXES:
            errs.append(invalid(f"{path}.maxFailedIndexes", max_failed, f"must be less than or equal to "
                                                                       f"{MAX_FAILED_INDEXES}"))
        if completions is not None and completions > COMPLETIONS_SOFT_LIMIT and per_index is not None:
            if max_failed is None:
                errs.append(required(f"{path}.maxFailedIndexes", f"must be specified when completions is above "
                                                                 f"{COMPLETIONS_SOFT_LIMIT}"))
            if parallelism is not None and parallelism > PARALLELISM_HIGH_COMPLETIONS:
                errs.append(invalid(f"{path}.parallelism", parallelism, "must be less than or equal to 10000 when "
                                                                       "completions are above 100000 and used with "
                                                                       "backoff limit per index"))
            if max_failed is not None and max_failed > MAX_FAILED_HIGH_COMPLETIONS:
                errs.append(invalid(f"{path}.maxFailedIndexes", max_failed, "must be less than or equal to 10000 "
                                                                           "when completions are above 100000 and "
                                                                           "used with backoff limit per index"))
    if mode in (None, "NonIndexed"):
        if per_index is not None:
            errs.append(invalid(f"{path}.backoffLimitPerIndex", per_index, "requires indexed completion mode"))
        if max_failed is not None:
            errs.append(invalid(f"{path}.maxFailedIndexes", max_failed, "requires indexed completion mode"))
    if spec.get("podFailurePolicy") is not None:
        errs += _pod_failure_policy(spec, f"{path}.podFailurePolicy")
    rpp = spec.get("podReplacementPolicy")
    if rpp is not None:
        if spec.get("podFailurePolicy") is not None and rpp != "Failed":
            errs.append(not_supported(f"{path}.podReplacementPolicy", rpp, ["Failed"]))
        elif rpp not in ("Failed", "TerminatingOrFailed"):
            errs.append(not_supported(f"{path}.podReplacementPolicy", rpp, ["Failed", "TerminatingOrFailed"]))
    template = spec.get("template") or {}
    errs += validate_labels((template.get("metadata") or {}).get("labels"), f"{path}.template.metadata.labels")
    pod = template.get("spec") or {}
    errs += validate_pod_spec(pod, f"{path}.template.spec")
    restart = pod.get("restartPolicy") or ""
    if restart in ("", "Always"):
        errs.append(required(f"{path}.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        errs.append(not_supported(f"{path}.template.spec.restartPolicy", restart, ["OnFailure", "Never"]))
    elif spec.get("podFailurePolicy") is not None and restart != "Never":
        errs.append(invalid(f"{path}.template.spec.restartPolicy", restart,
                            'only "Never" is supported when podFailurePolicy is specified'))
    selector = spec.get("selector")
    if selector is None:
        errs.append(required(f"{path}.selector"))
    else:
        labels = (template.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
            errs.append(invalid(f"{path}.template.metadata.labels", labels, "`selector` does not match template "
                                                                           "`labels`"))
    return errs


def validate_job(job: dict[str, Any]) -> list[str]:
    """ValidateJob, on the defaulted object (selector and template labels as the API server generates them)."""
    meta = job.get("metadata") or {}
    errs = _object_meta(meta)
    spec = job.get("spec") or {}
    if not spec.get("manualSelector") and spec.get("selector") is not None and not meta.get("uid"):
        errs.append(required("metadata.uid"))
    errs += validate_job_spec(spec)
    completions = spec.get("completions")
    if spec.get("completionMode") == "Indexed" and completions:
        host = f"{meta.get('name', '')}-{completions - 1}"
        if is_dns1123_label(host):
            errs.append(invalid("metadata.name", meta.get("name", ""),
                                f"will not able to create pod with invalid DNS label: {host}"))
    return errs


def _scheduling_free(template: dict[str, Any]) -> dict[str, Any]:
    t = json.loads(json.dumps(template))
    t.setdefault("spec", {})
    for key in ("nodeSelector", "tolerations", "schedulingGates"):
        t["spec"].pop(key, None)
    (t["spec"].get("affinity") or {}).pop("nodeAffinity", None)
    for key in ("labels", "annotations"):
        (t.get("metadata") or {}).pop(key, None)
    return t


def validate_job_update(job: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """ValidateJobUpdate: the new object must be valid and these fields may not change."""
    errs = validate_job(job)
    spec, old_spec = job.get("spec") or {}, old.get("spec") or {}
    for key in ("completions", "selector", "completionMode", "podFailurePolicy", "backoffLimitPerIndex",
                "managedBy", "successPolicy"):
        if spec.get(key) != old_spec.get(key):
            errs.append(invalid(f"spec.{key}", spec.get(key), "field is immutable"))
    # AllowMutableSchedulingDirectives: a suspended Job that never started may change its scheduling
    suspended_unstarted = bool(old_spec.get("suspend")) and not (old.get("status") or {}).get("startTime")
    new_t, old_t = spec.get("template") or {}, old_spec.get("template") or {}
    if suspended_unstarted:
        new_t, old_t = _scheduling_free(new_t), _scheduling_free(old_t)
    if new_t != old_t:
        errs.append(invalid("spec.template", "...", "field is immutable"))
    return errs


def status_message(kind: str, name: str, errors: list[str]) -> str:
    """The message of the API server's 422 (k8s.io/apimachinery/pkg/api/errors NewInvalid)."""
    body = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return f'{kind} "{name}" is invalid: {body}'
