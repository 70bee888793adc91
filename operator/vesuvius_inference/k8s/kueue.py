"""Kueue as it is today: read its decisions on a Job's Workload, never undo them. Pure, except :func:`find`.

Kueue owns a queued Job's ``suspend`` (its job reconciler starts an admitted Job and stops one that is
not admitted or was evicted: kubernetes-sigs/kueue pkg/controller/jobframework/reconciler.go,
ReconcileGenericJob steps 6-8), so the operator suspends such a Job only through its Workload's
``spec.active`` and tells its own deactivation from everybody else's:

- the operator marks a Workload it deactivates with the annotation :data:`OURS` in the same patch, and
  reactivates only Workloads that carry it;
- Kueue deactivates a Workload itself by setting a ``DeactivationTarget`` condition (reasons
  ``RequeuingLimitExceeded``, ``MaximumExecutionTimeExceeded``, ``AdmissionCheck``), then
  ``spec.active: false``, then evicting it with reason ``Deactivated`` joined to that cause
  (``DeactivatedDueToRequeuingLimitExceeded``: pkg/controller/core/workload_controller.go, Reconcile,
  triggerDeactivation, reconcileMaxExecutionTime; pkg/workload/evict/evict.go, Evict and
  IsEvictedDueToDeactivationByKueue; pkg/workload/patching/patching.go, ReasonWithCause). Plain
  ``Deactivated`` (renamed from ``InactiveWorkload``, kueue #3593) is a deactivation by a person.
  Neither is ever reverted by the operator: the run shows as Suspended with Kueue's reason.
- other evictions (``Preempted``, ``PodsReadyTimeout``, ``AdmissionCheck``, ``ClusterQueueStopped``,
  ``LocalQueueStopped``, ``NodeFailures``: apis/kueue/v1beta2/workload_types.go) and waiting for quota
  (``QuotaReserved=False`` with the scheduler's reason, e.g. ``ExceedsMaxQuota`` and "couldn't assign
  flavors to pod set main: insufficient quota ...": pkg/scheduler/flavorassigner/flavorassigner.go) are
  shown as conditions with Kueue's reason and message.

Parallelism: a Job whose pod count changes no longer matches its Workload. Kueue updates the Workload
of a suspended Job without a quota reservation to match (reconciler.go, ensureOneWorkload: "match ==
nil && job.IsSuspended() && !HasQuotaReservation"), but suspends and re-queues a running one, so
the operator changes parallelism only on a Kueue Job that is suspended with no quota reserved (never
admitted, or evicted and released).

Workloads are read through ``kueue.x-k8s.io/v1beta2`` (stored since Kueue 0.16), falling back to
``v1beta1`` (deprecated) on a 404; both 404: Kueue is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP, PLURAL = "kueue.x-k8s.io", "workloads"
VERSIONS = ("v1beta2", "v1beta1")
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"  # partial admission (pkg/controller/jobs/job)
JOB_UID = "kueue.x-k8s.io/job-uid"  # pkg/controller/constants/constants.go, JobUIDLabel
OURS = "vesuvius.dev/deactivated-by"  # value: the InferenceJob's name
DEACTIVATED = "Deactivated"  # apis/kueue/v1beta2/workload_types.go, WorkloadDeactivated
BY_KUEUE = DEACTIVATED + "DueTo"  # patching.ReasonWithCause(WorkloadDeactivated, "")


def managed(job: Mapping[str, Any]) -> bool:
    return QUEUE_LABEL in ((job.get("metadata") or {}).get("labels") or {})


def _cond(wl: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (wl.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def _true(wl: Mapping[str, Any], kind: str) -> bool:
    c = _cond(wl, kind)
    return bool(c and c.get("status") == "True")


def active(wl: Mapping[str, Any]) -> bool:
    """pkg/workload/workload.go, IsActive: ptr.Deref(w.Spec.Active, true)."""
    return (wl.get("spec") or {}).get("active", True) is not False


def ours(wl: Mapping[str, Any]) -> bool:
    return OURS in ((wl.get("metadata") or {}).get("annotations") or {})


@dataclass(frozen=True)
class Decision:
    """What Kueue decided about one Workload, in the InferenceJob's words: (reason, message) pairs."""

    held: tuple[str, str] | None = None  # deactivated by Kueue or a person: the run waits, never reactivated
    queued: tuple[str, str] | None = None  # no quota reserved yet
    evicted: tuple[str, str] | None = None  # evicted for another reason; Kueue re-queues it itself
    reserved: bool = False


def decision(wl: Mapping[str, Any] | None, job_name: str) -> Decision:
    if wl is None:
        return Decision()
    name = (wl.get("metadata") or {}).get("name", "")
    evicted = _cond(wl, "Evicted")
    reserved = _true(wl, "QuotaReserved")
    if not active(wl) and not ours(wl):
        target = _cond(wl, "DeactivationTarget")
        now_evicted = evicted if evicted and evicted.get("status") == "True" else None
        reason = (now_evicted or {}).get("reason") or ""
        if reason.startswith(BY_KUEUE) or (target and target.get("status") == "True"):
            cause = (reason[len(BY_KUEUE):] if reason.startswith(BY_KUEUE)
                     else (target or {}).get("reason", ""))
            said = (now_evicted or target or {}).get("message") or ""
            return Decision(held=(f"DeactivatedByKueue{cause}" if cause else "DeactivatedByKueue",
                                  f"Kueue deactivated Workload {name} of {job_name} ({cause}: {said}); the operator "
                                  "never reactivates what Kueue deactivated: fix the cause, then "
                                  f"kubectl patch workloads.kueue.x-k8s.io {name} --type merge "
                                  "-p '{\"spec\":{\"active\":true}}'"), reserved=reserved)
        return Decision(held=("WorkloadDeactivated", f"Workload {name} of {job_name} was deactivated (spec.active "
                                                     "false) by someone other than the operator; set it back to "
                                                     "true to let Kueue queue it again"), reserved=reserved)
    if evicted and evicted.get("status") == "True" and not ours(wl):
        return Decision(evicted=(evicted.get("reason") or "Evicted",
                                 f"Kueue evicted Workload {name} of {job_name}: {evicted.get('message') or ''}; "
                                 "Kueue queues it again by itself"), reserved=reserved)
    qr = _cond(wl, "QuotaReserved")
    if active(wl) and not reserved:
        reason = (qr or {}).get("reason") or "Pending"
        message = (qr or {}).get("message") or "waiting for a quota reservation"
        advice = "; lower spec.parallelism (applied while the Job waits) or ask for more quota" if reason in (
            "ExceedsMaxQuota", "WaitingForQuota", "Pending") else ""
        return Decision(queued=(reason, f"{job_name} waits in Kueue's queue ({reason}): {message}{advice}"),
                        reserved=False)
    return Decision(reserved=reserved)


def suspend_patch(wl: Mapping[str, Any], suspend: bool, owner: str) -> dict[str, Any] | None:
    """The merge patch that makes a Workload follow spec.suspend, or None: deactivate an active one (marked
    as ours), reactivate only one we deactivated."""
    if suspend and active(wl):
        return {"metadata": {"annotations": {OURS: owner}}, "spec": {"active": False}}
    if not suspend and not active(wl) and ours(wl):
        return {"metadata": {"annotations": {OURS: None}}, "spec": {"active": True}}
    if not suspend and active(wl) and ours(wl):
        return {"metadata": {"annotations": {OURS: None}}}
    return None


def parallelism_allowed(job: Mapping[str, Any], wl: Mapping[str, Any] | None) -> bool:
    """Kueue takes a pod-count change of a suspended Job whose Workload holds no quota (module docstring)."""
    if not managed(job):
        return True
    return bool((job.get("spec") or {}).get("suspend")) and not (wl is not None and _true(wl, "QuotaReserved"))


def partially_admitted(job: Mapping[str, Any], want: int) -> bool:
    """A running Job with partial admission whose parallelism Kueue lowered to what it admitted (at least the
    kueue.x-k8s.io/job-min-parallelism annotation; kueue pkg/controller/jobs/job/job_controller.go, RunWithPodSetsInfo,
    restored by RestorePodSetsInfo on eviction)."""
    low = ((job.get("metadata") or {}).get("annotations") or {}).get(MIN_PARALLELISM)
    spec = job.get("spec") or {}
    if low is None or not managed(job) or spec.get("suspend"):
        return False
    return int(low) <= int(spec.get("parallelism") or 1) < want


def find(custom: Any, namespace: str, job_uid: str, *,
         versions: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The Workload of a Job (by Kueue's job-uid label) and the API version that served it. ``versions`` is
    the caller's list of versions still worth trying; one that 404s is removed from it."""
    import kubernetes

    for version in list(versions):
        try:
            items = custom.list_namespaced_custom_object(GROUP, version, namespace, PLURAL,
                                                         label_selector=f"{JOB_UID}={job_uid}")["items"]
        except kubernetes.client.ApiException as e:
            if e.status == 404:  # this version is not served (or Kueue is not installed)
                versions.remove(version)
                continue
            raise
        owned = [w for w in items if any(r.get("uid") == job_uid for r in (w.get("metadata") or {}).get(
            "ownerReferences") or [])]
        return (owned[0] if owned else None), version
    return None, None


def patch(custom: Any, namespace: str, name: str, *, version: str, body: dict[str, Any]) -> None:
    custom.patch_namespaced_custom_object(GROUP, version, namespace, PLURAL, name, body,
                                          _content_type="application/merge-patch+json")
