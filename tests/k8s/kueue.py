"""Kueue for batch/v1 Jobs, emulated for the end-to-end tests: its Job webhook in the API server and its
controllers as a polling thread, with a ClusterQueue of unlimited quota.

Ported from kubernetes-sigs/kueue (v0.13-v0.15):
- the Job webhook's defaulting (pkg/controller/jobframework/defaults.go, ApplyDefaultForSuspend /
  WorkloadShouldBeSuspended: "Jobs with queue names are default suspended"): a Job created with the
  kueue.x-k8s.io/queue-name label is stored with ``spec.suspend: true``;
- the job reconciler (pkg/controller/jobframework/reconciler.go, ReconcileGenericJob):
  1. ensureOneWorkload / FindMatchingWorkloads / equivalentToWorkload: a Workload matches its Job
     when the pod sets agree (for a batch Job one pod set, count = min(parallelism, completions):
     pkg/controller/jobs/job/job_controller.go, PodSets/podsCount); with no match and the Job
     running, stopJob ("No matching Workload") and the mismatched Workloads are deleted;
  2. a finished Job marks its Workload Finished;
  3. no Workload: one is created (constructWorkload: name job-<job>-<hash>, label
     kueue.x-k8s.io/job-uid, controller ownerReference to the Job, spec.queueName, spec.podSets);
  6. a Workload with Evicted=True: stopJob (suspend), and once the Job has no active pods its quota
     reservation is cleared (QuotaReserved=False "Pending", Admitted=False);
  7. a suspended Job whose Workload is admitted: startJob, i.e. ``suspend: false`` ("Job admitted,
     unsuspending"), whoever suspended it;
  8. a running Job whose Workload is not admitted: stopJob.
- the workload controller (pkg/controller/core/workload_controller.go, Reconcile): ``spec.active:
  false`` with a quota reservation sets Evicted=True reason InactiveWorkload (WorkloadEvictedByDeactivation,
  apis/kueue/v1beta1/workload_types.go) and Requeued=False; back to active, Requeued=True reason
  Reactivated;
- the scheduler: an active, queued Workload gets a quota reservation and is admitted at once
  (status.admission, QuotaReserved=True, Admitted=True, Evicted=False).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import kmock

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GROUP, VERSION, PLURAL = "kueue.x-k8s.io", "v1beta1", "workloads"
DEACTIVATED = "InactiveWorkload"


def install(api: Any) -> None:
    """Serve Workloads and register the Job webhook's defaulting in a kmock_api.KubeAPI."""
    api.declare(f"{GROUP}/{VERSION}/{PLURAL}", "Workload", subresources={"status"})
    jobs = kmock.resource("batch/v1/jobs")

    def default_suspend(route: Any, obj: dict[str, Any]) -> None:
        if route.resource == jobs and (obj["metadata"].get("labels") or {}).get(QUEUE_LABEL):
            obj["spec"]["suspend"] = True

    api.mutators.append(default_suspend)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _cond(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def _true(obj: dict[str, Any], kind: str) -> bool:
    c = _cond(obj, kind)
    return bool(c and c.get("status") == "True")


def _set(conds: list[dict[str, Any]], kind: str, status: str, reason: str, message: str) -> None:
    for c in conds:
        if c["type"] == kind:
            if c["status"] != status:
                c["lastTransitionTime"] = _now()
            c.update(status=status, reason=reason, message=message)
            return
    conds.append({"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": _now()})


def pods_count(job: dict[str, Any]) -> int:
    spec = job["spec"]
    count = int(spec.get("parallelism") or 1)
    if spec.get("completions") is not None:
        count = min(count, int(spec["completions"]))
    return count


class KueueController:
    """Kueue's job reconciler, workload controller and scheduler for one namespace (see the module docstring)."""

    def __init__(self, api_client: Any, namespace: str, poll: float = 0.2) -> None:
        import kubernetes

        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.poll = poll
        self.actions: list[tuple[str, str, str]] = []  # (action, job, reason): started, stopped, ...
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kueue", daemon=True)

    def __enter__(self) -> KueueController:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - reported to the test
                import kubernetes

                if not (isinstance(e, kubernetes.client.ApiException) and e.status in (404, 409)):
                    self.errors.append(e)
            self._stop.wait(self.poll)

    # ---- API helpers --------------------------------------------------------------------------

    def _workloads(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]

    def _patch_job(self, job: dict[str, Any], suspend: bool, action: str, reason: str) -> None:
        self.batch.patch_namespaced_job(job["metadata"]["name"], self.namespace, {"spec": {"suspend": suspend}},
                                        _content_type="application/merge-patch+json")
        self.actions.append((action, job["metadata"]["name"], reason))

    def _status(self, wl: dict[str, Any], status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, wl["metadata"]["name"], {"status": status},
            _content_type="application/merge-patch+json")

    # ---- one pass --------------------------------------------------------------------------------

    def _tick(self) -> None:
        workloads = self._workloads()
        for j in self.batch.list_namespaced_job(self.namespace).items:
            job = self.batch.api_client.sanitize_for_serialization(j)
            if not (job["metadata"].get("labels") or {}).get(QUEUE_LABEL) or job["metadata"].get("deletionTimestamp"):
                continue
            uid = job["metadata"]["uid"]
            owned = [w for w in workloads if any(r.get("uid") == uid for r in w["metadata"].get("ownerReferences") or [])]
            self._reconcile(job, owned)

    def _reconcile(self, job: dict[str, Any], owned: list[dict[str, Any]]) -> None:
        suspended = bool(job["spec"].get("suspend"))
        finished = _true(job, "Complete") or _true(job, "Failed")
        # 1. ensureOneWorkload
        match = next((w for w in owned if w["spec"]["podSets"][0]["count"] == pods_count(job)), None)
        extra = [w for w in owned if w is not match]
        if match is None and not suspended and not finished:
            self._patch_job(job, True, "stopped", "No matching Workload")
            suspended = True
        for w in extra:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, w["metadata"]["name"])
            self.actions.append(("deleted-workload", job["metadata"]["name"], w["metadata"]["name"]))
        if extra:
            return
        wl = match
        # 2. finished
        if finished:
            if wl is not None and not _true(wl, "Finished"):
                conds = (wl.get("status") or {}).get("conditions") or []
                _set(conds, "Finished", "True", "Succeeded" if _true(job, "Complete") else "Failed", "")
                self._status(wl, {"conditions": conds})
            return
        # 3. no workload: create one
        if wl is None:
            name = job["metadata"]["name"]
            digest = hashlib.sha1(job["metadata"]["uid"].encode()).hexdigest()[:5]
            tmpl = job["spec"]["template"]
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "Workload",
                "metadata": {"name": f"job-{name}-{digest}", "labels": {JOB_UID_LABEL: job["metadata"]["uid"]},
                             "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                                  "uid": job["metadata"]["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": {"queueName": job["metadata"]["labels"][QUEUE_LABEL], "active": True,
                         "podSets": [{"name": "main", "count": pods_count(job), "template": tmpl}]}})
            self.actions.append(("created-workload", name, ""))
            return
        conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
        active = (wl.get("spec") or {}).get("active", True) is not False
        reserved = _true(wl, "QuotaReserved")
        # workload controller: deactivation and reactivation
        if not active and reserved and not _true(wl, "Evicted"):
            _set(conds, "Evicted", "True", DEACTIVATED, "The workload is deactivated")
            _set(conds, "Requeued", "False", DEACTIVATED, "The workload is deactivated")
            self._status(wl, {"conditions": conds})
            return
        requeued = _cond(wl, "Requeued")
        if active and requeued and requeued["status"] == "False" and requeued.get("reason") == DEACTIVATED:
            _set(conds, "Requeued", "True", "Reactivated", "The workload was reactivated")
            self._status(wl, {"conditions": conds})
            return
        # 6. eviction
        if _true(wl, "Evicted"):
            if not suspended:
                self._patch_job(job, True, "stopped", "Workload evicted")
            if reserved and not int((job.get("status") or {}).get("active") or 0):
                _set(conds, "QuotaReserved", "False", "Pending", "The workload is deactivated" if not active else "")
                _set(conds, "Admitted", "False", "NoReservation", "The workload has no reservation")
                self._status(wl, {"conditions": conds, "admission": None})
                return
            if active and not reserved and not (requeued and requeued["status"] == "False"):
                pass  # fall through to the scheduler: re-admission clears the eviction
            else:
                return
        # scheduler: admit queued, active workloads (unlimited quota)
        if active and not reserved and not (requeued and requeued["status"] == "False"):
            _set(conds, "QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cluster-queue")
            _set(conds, "Admitted", "True", "Admitted", "The workload is admitted")
            if _cond(wl, "Evicted") is not None:
                _set(conds, "Evicted", "False", "QuotaReserved", "Previously: evicted")
            self._status(wl, {"conditions": conds, "admission": {
                "clusterQueue": "cluster-queue",
                "podSetAssignments": [{"name": "main", "count": wl["spec"]["podSets"][0]["count"]}]}})
            return
        admitted = _true(wl, "Admitted")
        # 7. suspended job with an admitted workload: start it
        if suspended:
            if admitted:
                self._patch_job(job, False, "started", "Admitted by clusterQueue cluster-queue")
            return
        # 8. running job without admission: stop it
        if not admitted:
            self._patch_job(job, True, "stopped", "Not admitted by cluster queue")
