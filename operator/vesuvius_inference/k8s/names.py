"""Names of the child Jobs and the limits Kubernetes puts on them.

Kubernetes refuses an Indexed Job whose ``<job-name>-<completions-1>`` (the pods' hostname) is not a
DNS-1123 label (kubernetes pkg/apis/batch/validation/validation.go, ValidateJob), and a Job whose name
is longer than 63 characters, since the API server copies it into the pod template's
``batch.kubernetes.io/job-name`` label (validateGeneratedSelector + ValidatePodTemplateSpec's label
checks). The InferenceJob's own name becomes the ``vesuvius.dev/inferencejob`` label value. These
functions say, from the InferenceJob's name and spec alone, whether every Job the operator may create
for it will be accepted; the CRD's root-level CEL rules encode the same arithmetic.
"""

from __future__ import annotations

import re
from typing import Any

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
MAX_LABEL = 63


def job_name(name: str, stage: str, attempt: int = 0) -> str:
    return f"{name}-{stage}" + (f"-r{attempt}" if attempt else "")


CHECK_SUFFIX = {"predict": "check-p", "finalize": "check-f"}


def check_job_name(name: str, stage: str) -> str:
    """``<name>-check-p`` / ``<name>-check-f``: 8 characters, shorter than ``-predict-<index>``, so every
    name the predict Job's rule accepts fits (no rule of its own in the CRD)."""
    return f"{name}-{CHECK_SUFFIX[stage]}"


def hostname(job: str, completions: int) -> str:
    """The longest pod hostname of an Indexed Job (the job controller appends ``-<index>``)."""
    return f"{job}-{completions - 1}"


def is_label_value(value: str) -> bool:
    return len(value) <= MAX_LABEL and bool(LABEL_VALUE.match(value))


def is_dns_label(value: str) -> bool:
    return len(value) <= MAX_LABEL and bool(DNS1123_LABEL.match(value))


def is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and bool(DNS1123_SUBDOMAIN.match(value))


def is_qualified_name(value: str) -> bool:
    """A label key: ``[prefix/]name``, the prefix a DNS subdomain, the name at most 63 characters."""
    prefix, sep, name = value.rpartition("/")
    if sep and not (prefix and is_dns_subdomain(prefix)):
        return False
    return 0 < len(name) <= MAX_LABEL and bool(_QUALIFIED_NAME.match(name))


def _too_long(name: str, what: str, text: str) -> str:
    over = len(text) - MAX_LABEL
    return (f"metadata.name {name!r} is too long: {what} {text!r} has {len(text)} characters and Kubernetes "
            f"allows {MAX_LABEL}; use a name of at most {len(name) - over} characters")


def name_problems(name: str, spec: Any) -> list[str]:
    """Why some Job of this InferenceJob would be refused for its name ([] = every name fits).

    ``spec`` is a parsed :class:`~vesuvius_inference.k8s.spec.JobSpec`; the retry Job checked is the
    one the current ``spec.retryFailedParts`` names (its completions are at most ``parts``).
    """
    if not is_dns_label(name):
        return [f"metadata.name {name!r} must be a DNS-1123 label (lowercase letters, digits and '-', at most "
                f"{MAX_LABEL} characters): it is the vesuvius.dev/inferencejob label of every child Job and part "
                "of the pods' hostnames"]
    errors: list[str] = []
    parts = int(spec["parts"])
    checks = [("the predict pods' hostname", hostname(job_name(name, "predict"), parts))]
    attempt = int(spec.get("retryFailedParts") or 0)
    if attempt:
        checks.append((f"the retry Job's pod hostname (spec.retryFailedParts={attempt})",
                       hostname(job_name(name, "predict", attempt), parts)))
    for stage in ("blend", "finalize"):
        n = int(spec[stage]["parallelism"])
        job = job_name(name, stage)
        checks.append((f"the {stage} pods' hostname", hostname(job, n)) if n > 1 else (f"the {stage} Job's name", job))
    for what, text in checks:
        if len(text) > MAX_LABEL:
            errors.append(_too_long(name, what, text))
    return errors
