"""Why a run makes no progress, from a few pods and Events: one InferenceJob condition per kind. Pure.

A stalled run still looks healthy in its Jobs' status: ``active`` short of what parallelism allows
(the Job controller cannot create pods), ``ready`` short of ``active`` (pods that do not start), or
``failed`` growing (pods that start and die). Those counts are the ledger the operator reads on every
pass (:func:`wanted_reads`, O(1)); only when they point at a stall does it read a bounded sample of
pods or Events, and these functions say what the sample shows, each with what to do:

- ``PodsNotCreated``: the Job controller's ``FailedCreate`` Events on the Job ("Error creating: <the
  API server's refusal>", pkg/controller/controller_utils.go, RealPodControl.createPods). The refusals
  a batch run meets: a ResourceQuota ("exceeded quota: NAME, requested: ..., used: ..., limited: ...",
  plugin/pkg/admission/resourcequota/controller.go, checkRequest), a missing ServiceAccount ("error
  looking up service account NS/NAME: ...", plugin/pkg/admission/serviceaccount/admission.go) or
  PriorityClass ("no PriorityClass with name NAME was found", plugin/pkg/admission/priority/admission.go).
- ``PodsUnschedulable``: ``PodScheduled=False`` with reason ``Unschedulable`` and the scheduler's
  message ("0/12 nodes are available: ...", pkg/scheduler/schedule_one.go, handleSchedulingFailure).
- ``PodsStuck``: a container waiting with a reason that never resolves itself (pkg/kubelet/images:
  ErrImagePull, ImagePullBackOff, InvalidImageName, ErrImageNeverPull; pkg/kubelet/kuberuntime:
  CreateContainerConfigError, CreateContainerError).
- ``GPUUnavailable``: a pod that exited 69 (errors.EXIT_NO_DEVICE): the container cannot see the GPU it
  was given; its termination message is the worker's own ``error:`` line.
- ``PodsStuckTerminating``: a pod deleted (preempted, evicted by the taint manager from a NotReady node,
  drained) whose node never confirms that its container stopped: an unreachable node, a hung kubelet or
  GPU driver. The Job's ``status.terminating`` counts it (pkg/controller/job/job_controller.go,
  syncJob: countTerminatingPods), and with ``podReplacementPolicy: Failed`` the Job controller creates
  no replacement until the pod is terminal, so its part waits for ever ("3/4 parts done, 0 running").
  Nothing in Kubernetes ends that by itself: PodGC force-deletes terminating pods only on nodes that are
  NotReady *and* carry the ``node.kubernetes.io/out-of-service`` taint (pkg/controller/podgc/
  gc_controller.go, gcTerminating -> markFailedAndDeletePod), a taint a person (or a node-health
  operator) sets once they know the node is down. The condition names the pod, its node and that taint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vesuvius_inference.contract.errors import EXIT_NO_DEVICE
from vesuvius_inference.k8s.status import bounded, cond, job_finished, parse_time

STUCK_REASONS = ("CreateContainerConfigError", "CreateContainerError", "ImagePullBackOff", "ErrImagePull",
                 "InvalidImageName", "ErrImageNeverPull")
KINDS = ("PodsNotCreated", "PodsUnschedulable", "PodsStuck", "GPUUnavailable", "PodsStuckTerminating")
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"  # v1.TaintNodeOutOfService
_SECRET = re.compile(r'secret "([^"]+)" not found')
_CONFIGMAP = re.compile(r'configmap "([^"]+)" not found')


@dataclass(frozen=True)
class Stall:
    kind: str  # the condition type, one of KINDS
    reason: str
    message: str


@dataclass(frozen=True)
class Reads:
    """What a pass should read to explain a Job's stall (each a small, selective request)."""

    events: bool = False  # FailedCreate Events of the Job
    pending: bool = False  # its Pending pods
    failed: bool = False  # its Failed pods
    terminating: bool = False  # its pods that are being deleted (not terminal yet)

    def __bool__(self) -> bool:
        return self.events or self.pending or self.failed or self.terminating


def expected_active(job: Mapping[str, Any]) -> int:
    """How many pods the Job controller would keep running now (manageJob's wantActive, simplified to
    what the status shows): parallelism, at most the indexes (or completions) still to do."""
    spec, st = job.get("spec") or {}, job.get("status") or {}
    from vesuvius_inference.contract.ranges import count_ranges

    completions = int(spec.get("completions") or 1)
    if spec.get("completionMode") == "Indexed":
        left = completions - count_ranges(st.get("completedIndexes")) - count_ranges(st.get("failedIndexes"))
    else:
        left = completions - int(st.get("succeeded") or 0)
    return max(0, min(int(spec.get("parallelism") or 1), left))


def wanted_reads(job: Mapping[str, Any], failed_seen: int | None) -> Reads:
    """Which diagnostics the Job's own counts call for (``failed_seen``: its ``failed`` at the last read)."""
    if job_finished(job) or (job.get("spec") or {}).get("suspend"):
        return Reads()
    st = job.get("status") or {}
    active, ready = int(st.get("active") or 0), int(st.get("ready") or 0)
    terminating = int(st.get("terminating") or 0)
    failed = int(st.get("failed") or 0)
    return Reads(events=terminating == 0 and active < expected_active(job),
                 pending=ready < active,
                 failed=failed > (failed_seen or 0),
                 terminating=terminating > 0)


def _quota_advice(message: str) -> tuple[str, str]:
    if "exceeded quota" in message:
        return "ResourceQuotaExceeded", ("the namespace's ResourceQuota has no room for another pod of this Job: "
                                         "lower spec.parallelism, free quota, or ask for a larger quota")
    if "error looking up service account" in message:
        return "ServiceAccountNotFound", ("create the ServiceAccount in this namespace or fix spec.serviceAccountName")
    if "no PriorityClass with name" in message:
        return "PriorityClassNotFound", "create the PriorityClass (cluster-scoped) or fix spec.priorityClassName"
    return "FailedCreate", "the API server refuses the Job's pods: see the message"


def not_created(events: Iterable[Mapping[str, Any]], job_name: str) -> Stall | None:
    """The most recent ``FailedCreate`` Event of a Job, as a stall."""
    latest = None
    for e in events:
        if e.get("reason") != "FailedCreate":
            continue
        t = parse_time(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get(
            "creationTimestamp")) or 0.0
        if latest is None or t >= latest[0]:
            latest = (t, e)
    if latest is None:
        return None
    message = str(latest[1].get("message") or "").removeprefix("Error creating: ")
    reason, advice = _quota_advice(message)
    count = int(latest[1].get("count") or 1)
    times = f" ({count} times)" if count > 1 else ""
    return Stall("PodsNotCreated", reason, bounded(f"{job_name} cannot create pods{times}: {message}; {advice}"))


def _age(pod: Mapping[str, Any], since: Any, now_s: float) -> float:
    t = parse_time(since) or parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    return 0.0 if t is None else now_s - t


def unschedulable(pods: Iterable[Mapping[str, Any]], now_s: float, grace_s: float) -> Stall | None:
    found = []
    for p in pods:
        c = next((c for c in (p.get("status") or {}).get("conditions") or []
                  if c.get("type") == "PodScheduled" and c.get("status") == "False"
                  and c.get("reason") == "Unschedulable"), None)
        if c is not None and _age(p, c.get("lastTransitionTime"), now_s) >= grace_s:
            found.append((p["metadata"]["name"], c.get("message") or ""))
    if not found:
        return None
    name, message = found[0]
    more = f" (and {len(found) - 1} more pods)" if len(found) > 1 else ""
    return Stall("PodsUnschedulable", "Unschedulable", bounded(
        f"pod {name} cannot be scheduled{more}: {message}; check the stage's resources (GPUs, memory), "
        "nodeSelector and tolerations against the nodes (kubectl describe nodes), or wait for capacity"))


def _stuck_advice(reason: str, message: str) -> str:
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
        return "check spec.image (or the chart's worker.image), the registry, and the pull secret"
    m = _SECRET.search(message) or _CONFIGMAP.search(message)
    if m:
        return f"create {m.group(0).split()[0]} {m.group(1)} in this namespace or fix spec.storage.secretName"
    return "see the pod's events (kubectl describe pod)"


def stuck(pods: Iterable[Mapping[str, Any]], now_s: float, grace_s: float) -> list[tuple[str, str, str]]:
    """(pod, reason, message) of pods waiting in a state that never resolves itself, for longer than grace."""
    out = []
    for p in pods:
        st = p.get("status") or {}
        if st.get("phase") not in (None, "Pending", "Running") or _age(p, None, now_s) < grace_s:
            continue
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                out.append((p["metadata"]["name"], waiting["reason"], waiting.get("message") or ""))
                break
    return out


def cannot_start(pods: Iterable[Mapping[str, Any]], now_s: float, grace_s: float) -> Stall | None:
    found = stuck(pods, now_s, grace_s)
    if not found:
        return None
    pod, reason, message = found[0]
    more = f" (and {len(found) - 1} more pods)" if len(found) > 1 else ""
    return Stall("PodsStuck", reason, bounded(
        f"pod {pod} cannot start: {reason}: {message}{more}; {_stuck_advice(reason, message)}"))


def terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return {}


def no_device(pods: Iterable[Mapping[str, Any]]) -> Stall | None:
    """The newest failure of the sample, if it is the worker's exit 69 (older failures are history)."""
    failed = [p for p in pods if terminated(p).get("exitCode")]
    if not failed:
        return None
    p = max(failed, key=lambda q: parse_time(terminated(q).get("finishedAt")) or 0.0)
    term = terminated(p)
    if term.get("exitCode") != EXIT_NO_DEVICE:
        return None
    lines = [ln for ln in (term.get("message") or "").splitlines() if ln.strip()]
    said = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
    node = (p.get("spec") or {}).get("nodeName")
    where = f" on node {node}" if node else ""
    return Stall("GPUUnavailable", "DeviceUnavailable", bounded(
        f"pod {p['metadata']['name']}{where} exited {EXIT_NO_DEVICE}: its container cannot use the GPU it "
        f"was given ({said or 'no message'}); check the pods' runtimeClassName (e.g. nvidia), the NVIDIA "
        "driver on the node, and the device plugin (kubectl describe node: nvidia.com/gpu allocatable); "
        "Kubernetes retries the part, possibly on another node"))


def _since(seconds: float) -> str:
    from vesuvius_inference.contract.progress import format_duration

    return format_duration(seconds)


def stuck_terminating(pods: Iterable[Mapping[str, Any]], now_s: float, grace_s: float) -> Stall | None:
    """Pods deleted longer than ``grace_s`` past their deletionTimestamp (the API server sets it to the time of
    deletion plus the grace period: the moment by which the kubelet should have killed the container) and
    still not terminal."""
    found = []
    for p in pods:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        deleted = parse_time(meta.get("deletionTimestamp"))
        if deleted is None or st.get("phase") in ("Succeeded", "Failed") or now_s - deleted < grace_s:
            continue
        found.append((deleted, meta.get("name", "?"), (p.get("spec") or {}).get("nodeName") or "",
                      ((meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index"))))
    if not found:
        return None
    found.sort()
    deleted, pod, node, index = found[0]
    nodes = sorted({n for _, _, n, _ in found if n})
    more = f" (and {len(found) - 1} more pods, on {', '.join(nodes)})" if len(found) > 1 else ""
    part = f"part {index}" if index is not None else "its work"
    if node:
        remedy = (f"if node {node} is down or will not recover (kubectl describe node {node}), mark it out of service: "
                  f"kubectl taint nodes {node} {OUT_OF_SERVICE}=nodeshutdown:NoExecute (Kubernetes then "
                  f"force-deletes its terminating pods and the part runs elsewhere; remove the taint when the node is "
                  f"back), or force-delete the pod: kubectl delete pod {pod} --grace-period=0 --force")
    else:
        remedy = f"force-delete the pod: kubectl delete pod {pod} --grace-period=0 --force"
    where = f" on node {node}" if node else ""
    return Stall("PodsStuckTerminating", "StuckTerminating", bounded(
        f"pod {pod}{where} has been terminating for {_since(now_s - deleted)} past its grace period{more}: its "
        f"node has not confirmed that the container stopped (node unreachable, kubelet or GPU driver hung), and "
        f"the Job does not replace the pod before it has (podReplacementPolicy: Failed), so {part} waits; {remedy}"))


def failure_lines(pods: Iterable[Mapping[str, Any]], limit: int = 5) -> str:
    """The last lines of failed pods' termination messages, for a failure's Event."""
    lines = []
    for p in pods:
        term = terminated(p)
        if term.get("exitCode"):
            idx = ((p.get("metadata") or {}).get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index", "?")
            msg = (term.get("message") or "").strip().splitlines()[-2:]
            lines.append(f"index {idx} exit {term['exitCode']}: {' | '.join(msg)}")
    return "; ".join(lines[-limit:])


def explain(events: Iterable[Mapping[str, Any]], pending: Iterable[Mapping[str, Any]],
            failed: Iterable[Mapping[str, Any]], *, job_name: str, now_s: float, grace_s: float,
            terminating: Iterable[Mapping[str, Any]] = ()) -> list[Stall]:
    """Every stall the sample shows, at most one per kind."""
    pending = list(pending)
    found = [not_created(events, job_name), unschedulable(pending, now_s, grace_s),
             cannot_start(pending, now_s, grace_s), no_device(failed),
             stuck_terminating(terminating, now_s, grace_s)]
    return [s for s in found if s is not None]


def cleared(kind: str, jobs: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a stall the status shows is over, by the Jobs' counts alone (no read needed)."""
    jobs = [j for j in jobs if not job_finished(j) and not (j.get("spec") or {}).get("suspend")]
    if kind == "GPUUnavailable":  # a predict stall: over when no predict Job runs any more
        jobs = [j for j in jobs if ((j.get("metadata") or {}).get("labels") or {}).get(
            "vesuvius.dev/stage") == "predict"]
    if not jobs:
        return True
    if kind == "PodsNotCreated":
        return all(int((j.get("status") or {}).get("active") or 0) >= expected_active(j) for j in jobs)
    if kind == "PodsStuckTerminating":
        return all(int((j.get("status") or {}).get("terminating") or 0) == 0 for j in jobs)
    if kind in ("PodsUnschedulable", "PodsStuck"):
        return all(int((j.get("status") or {}).get("ready") or 0) >= int((j.get("status") or {}).get("active") or 0)
                   for j in jobs)
    return False  # GPUUnavailable: else cleared when a read of failed pods finds a newer failure of another kind


__all__ = ["Stall", "Reads", "KINDS", "wanted_reads", "explain", "cleared", "failure_lines", "stuck", "cond"]
