"""The cluster admin's policy over what an InferenceJob may ask for: images, ServiceAccounts, Secrets.

Creating an InferenceJob makes the operator create Jobs, so without a policy it is as powerful as
creating any pod in the namespace: ``spec.image`` runs any code, ``storage.secretName`` becomes the
worker's ``envFrom`` (any Secret of the namespace, read through the pod's environment), and
``spec.serviceAccountName`` lends the pod any ServiceAccount's cloud identity (GKE Workload Identity,
IRSA). Argo Workflows documents the same property of its controller ("if the user has permission to
create a workflow in a namespace, then it is OK to create pods ... for them", docs/security.md) and
offers ``workflowRestrictions`` (docs/workflow-restrictions.md) enforced by the controller; Kyverno and
Gatekeeper image policies and Kubernetes' ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1,
GA in 1.30) enforce such rules at admission.

Here the same rule is enforced twice, from one source: the chart's ``policy`` values become one JSON
document (the ``vesuvius-inference.policy`` helper), given to the operator as ``VESUVIUS_POLICY``
(:meth:`Policy.from_env`) and inlined as the ``variables`` of the chart's ValidatingAdmissionPolicy.
The VAP refuses at ``kubectl apply``; the operator refuses again before it creates any Job
(:func:`violations`, called by decide.py), for clusters older than 1.30 or where the VAP was not
installed. Both produce the same message (tests/helm/test_admission_policy.py evaluates the rendered
CEL with cel-python against this module). What only the operator can check: a Secret's labels (CEL in
a VAP sees the object under review, never other objects), read as metadata only
(PartialObjectMetadata) by :class:`SecretLabels`.

Rules (``*`` in a list allows anything):
- ``images``: an entry ending in ``/`` allows every image under it (a registry or an organisation);
  any other entry is one repository, with any tag or digest (``repo``, ``repo:tag``, ``repo@sha256:..``),
  never a longer name that merely starts with it (``repo-evil``). A spec without ``image`` runs the
  chart's worker image: always allowed.
- ``serviceAccounts``: the names ``spec.serviceAccountName`` may take (the chart adds its
  ``worker.serviceAccountName``). Without one the pods run as the chart's worker ServiceAccount.
- ``secrets`` / ``secretLabel``: ``storage.secretName`` must be in ``secrets``, or the Secret must
  carry the label ``secretLabel`` (``key=value``; checked by the operator only).
Without ``VESUVIUS_POLICY`` (the operator run outside the chart) nothing is restricted.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ENV = "VESUVIUS_POLICY"
ANY = "*"
REASON = "PolicyViolation"
WHERE = "the cluster admin's policy, the chart's policy values"


@dataclass(frozen=True)
class Policy:
    """What an InferenceJob may choose; ``enforced`` False: no policy was given (everything allowed)."""

    images: tuple[str, ...] = (ANY,)
    service_accounts: tuple[str, ...] = (ANY,)
    secrets: tuple[str, ...] = (ANY,)
    secret_label: str = ""  # "key=value": Secrets carrying it may be used too (checked by the operator only)
    enforced: bool = False

    @classmethod
    def from_json(cls, text: str) -> Policy:
        """The document the chart's ``vesuvius-inference.policy`` helper renders. ValueError when malformed."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV} is not JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"{ENV} must be a JSON object")

        def names(key: str) -> tuple[str, ...]:
            value = doc.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{ENV}: {key} must be a list of non-empty strings")
            return tuple(value)

        label = doc.get("secretLabel") or ""
        if not isinstance(label, str) or (label and "=" not in label):
            raise ValueError(f"{ENV}: secretLabel must be key=value, got {label!r}")
        return cls(images=names("images"), service_accounts=names("serviceAccounts"), secrets=names("secrets"),
                   secret_label=label, enforced=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy:
        text = (os.environ if env is None else env).get(ENV, "")
        return cls.from_json(text) if text.strip() else cls()

    @property
    def label(self) -> tuple[str, str] | None:
        if not self.secret_label:
            return None
        key, _, value = self.secret_label.partition("=")
        return key, value

    def secret_needs_labels(self, secret: str | None) -> bool:
        """Whether deciding on this Secret takes its labels (an API read): only the operator can."""
        return bool(secret) and not _listed(secret or "", self.secrets) and self.label is not None


def _listed(name: str, allowed: Sequence[str]) -> bool:
    return ANY in allowed or name in allowed


def image_allowed(image: str, allowed: Sequence[str]) -> bool:
    """The VAP's CEL says the same (charts/.../templates/admissionpolicy.yaml)."""
    for entry in allowed:
        if entry == ANY:
            return True
        if entry.endswith("/"):
            if image.startswith(entry):
                return True
        elif image == entry or image.startswith(entry + ":") or image.startswith(entry + "@"):
            return True
    return False


def text(allowed: Sequence[str]) -> str:
    """The allowed values as the messages show them (the chart renders the same string)."""
    return ", ".join(allowed) or "none"


def image_message(image: str, policy: Policy) -> str:
    return (f"spec.image '{image}' is not allowed: allowed images are {text(policy.images)} "
            f"(an entry ending in / allows everything under it; {WHERE}: policy.images.allowed)")


def service_account_message(name: str, policy: Policy) -> str:
    return (f"spec.serviceAccountName '{name}' is not allowed: allowed ServiceAccounts are "
            f"{text(policy.service_accounts)} (leave it out to run as the chart's worker ServiceAccount; {WHERE}: "
            f"policy.serviceAccounts.allowed)")


def secret_message(name: str, policy: Policy) -> str:
    label = f", or a Secret labelled {policy.secret_label}" if policy.secret_label else ""
    return (f"spec.storage.secretName '{name}' is not allowed: allowed Secrets are {text(policy.secrets)}{label} "
            f"({WHERE}: policy.secrets)")


@dataclass(frozen=True)
class SecretFacts:
    """What the operator read about the Secret a spec names: its labels, or None when it does not exist."""

    name: str
    labels: dict[str, str] | None


def violations(spec: Mapping[str, Any], policy: Policy, secret: SecretFacts | None = None, *,
               judge_labels: bool = True) -> list[str]:
    """One message per field the policy does not allow ([] = allowed). ``secret``: the labels read, needed only
    when :meth:`Policy.secret_needs_labels` (without them such a Secret is refused: the operator fails closed).
    ``judge_labels`` False: leave such a Secret alone (what the admission policy and ``render`` can know)."""
    if not policy.enforced:
        return []
    out = []
    image = spec.get("image")
    if image and not image_allowed(image, policy.images):
        out.append(image_message(image, policy))
    account = spec.get("serviceAccountName")
    if account and not _listed(account, policy.service_accounts):
        out.append(service_account_message(account, policy))
    name = (spec.get("storage") or {}).get("secretName")
    if name and not _listed(name, policy.secrets) and (judge_labels or policy.label is None):
        label = policy.label
        labels = secret.labels if secret is not None and secret.name == name else None
        if label is None or labels is None or labels.get(label[0]) != label[1]:
            missing = " (it does not exist)" if secret is not None and secret.name == name and labels is None else ""
            out.append(secret_message(name, policy) + missing)
    return out


# ---- reading a Secret's labels ---------------------------------------------------------------------

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass
class SecretLabels:
    """Labels of the Secrets InferenceJobs name, read as metadata only and cached for ``ttl_s``.

    The API server answers ``Accept: ...;as=PartialObjectMetadata`` with the object's metadata and no
    data (apimachinery pkg/apis/meta/v1 PartialObjectMetadata, the representation controller-runtime's
    metadata-only client asks for), so the Secret's values never reach the operator. The cache bounds
    the reads to one per Secret per ``ttl_s`` however often passes run; a label added or removed takes
    effect within it (controller-runtime's delegating authorizer caches its answers likewise).
    """

    core: Any
    ttl_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _cache: dict[tuple[str, str], tuple[float, SecretFacts]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def facts(self, namespace: str, name: str) -> SecretFacts:
        import kubernetes

        now = self.clock()
        with self._lock:
            hit = self._cache.get((namespace, name))
            if hit is not None and now - hit[0] < self.ttl_s:
                return hit[1]
        try:
            resp = self.core.read_namespaced_secret(name, namespace, _preload_content=False,
                                                    _headers={"Accept": METADATA_ONLY})
            meta = json.loads(resp.data).get("metadata") or {}
            found = SecretFacts(name, dict(meta.get("labels") or {}))
        except kubernetes.client.ApiException as e:
            if e.status != 404:
                raise
            found = SecretFacts(name, None)
        with self._lock:
            self._cache[(namespace, name)] = (now, found)
        return found

    def for_spec(self, namespace: str, spec: Mapping[str, Any], policy: Policy) -> SecretFacts | None:
        """The facts :func:`violations` needs for this spec (None: none needed, nothing read)."""
        name = (spec.get("storage") or {}).get("secretName")
        if not policy.enforced or not name or not policy.secret_needs_labels(name):
            return None
        return self.facts(namespace, name)


__all__ = ["Policy", "SecretFacts", "SecretLabels", "violations", "image_allowed", "ENV", "REASON"]
