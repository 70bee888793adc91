"""Kueue for batch/v1 Jobs, emulated for the end-to-end tests: its Job webhook in the API server and its
controllers as a polling thread, with one ClusterQueue (unlimited, or ``quota_gpus`` of nvidia.com/gpu).

Ported from kubernetes-sigs/kueue (main of 2026-08, v1beta2 API):
- Workloads are stored as ``kueue.x-k8s.io/v1beta2`` and also served as ``v1beta1`` (``versions``), as
  Kueue 0.16+ does; ``versions=("v1beta1",)`` emulates an older Kueue.
- the Job webhook's defaulting (pkg/controller/jobframework/defaults.go, ApplyDefaultForSuspend): a Job
  created with the kueue.x-k8s.io/queue-name label is stored with ``spec.suspend: true``;
- the job reconciler (pkg/controller/jobframework/reconciler.go, ReconcileGenericJob):
  1. ensureOneWorkload / FindMatchingWorkloads / EquivalentToWorkload: a Workload matches its Job when the
     pod counts agree (pkg/controller/jobs/job/job_controller.go, PodSets/podsCount: min(parallelism,
     completions)); a suspended Job whose Workload holds no quota gets that Workload updated to match
     ("match == nil && job.IsSuspended() && !HasQuotaReservation": updateWorkloadToMatchJob); a running
     Job without a match is stopped ("No matching Workload") and the mismatched Workloads deleted;
  3. a finished Job marks its Workload Finished; no Workload: one is created (constructWorkload: name
     job-<job>-<hash>, label kueue.x-k8s.io/job-uid, controller ownerReference, queueName, podSets);
  6. a Workload with Evicted=True: stopJob; once the Job has no active pods its reservation is cleared
     (QuotaReserved=False, Admitted=False) and Requeued set, True only for Preempted and NodeFailures;
  7. a suspended Job whose Workload is admitted: startJob ("Job admitted, unsuspending"), whoever
     suspended it; 8. a running Job whose Workload is not admitted: stopJob.
- the workload controller (pkg/controller/core/workload_controller.go, Reconcile): an active Workload with
  ``DeactivationTarget=True`` gets ``spec.active: false``; an inactive one not yet evicted is evicted with
  reason ``Deactivated``, joined to the DeactivationTarget's reason as ``DeactivatedDueTo<cause>`` when
  Kueue itself deactivated it (pkg/workload/evict/evict.go Evict; patching.ReasonWithCause), message
  "The workload is deactivated[ due to <cause message>]", and the DeactivationTarget removed; back to
  active, ``Requeued=True`` reason ``Reactivated``. waitForPodsReady (reconcileNotReadyTimeout /
  triggerDeactivation): an admitted Workload whose pods are not all ready ``pods_ready_timeout`` after
  admission is evicted with reason ``PodsReadyTimeout`` and re-queued after a backoff
  (``requeueState.count``, BackoffFinished), and once ``count + 1 > requeuing_limit`` gets
  ``DeactivationTarget`` reason ``RequeuingLimitExceeded`` ("exceeding the maximum number of re-queuing
  retries") instead.
- the scheduler: an active, queued Workload gets a quota reservation and is admitted when its GPUs fit
  the ClusterQueue; a request above the quota is ``QuotaReserved=False`` reason ``ExceedsMaxQuota``
  ("couldn't assign flavors to pod set main: insufficient quota for nvidia.com/gpu in flavor default,
  previously considered podsets requests (0) + current podset request (N) > maximum capacity (Q)"),
  one above what is free ``WaitingForQuota`` ("... insufficient unused quota ..., K more needed")
  (pkg/scheduler/flavorassigner/flavorassigner.go, fitsResourceQuota; Assignment.Message).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import kmock

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GROUP, PLURAL = "kueue.x-k8s.io", "workloads"
STORAGE = "v1beta2"
DEACTIVATED = "Deactivated"


def install(api: Any, versions: tuple[str, ...] = ("v1beta2", "v1beta1")) -> None:
    """Serve Workloads and register the Job webhook's defaulting in a kmock_api.KubeAPI."""
    stored = versions[0]
    api.declare(f"{GROUP}/{stored}/{PLURAL}", "Workload", subresources={"status"})
    for served in versions[1:]:
        api.declare(f"{GROUP}/{served}/{PLURAL}", "Workload", subresources={"status"})
        api.alias(f"{GROUP}/{served}/{PLURAL}", f"{GROUP}/{stored}/{PLURAL}")
    jobs = kmock.resource("batch/v1/jobs")

    def default_suspend(route: Any, obj: dict[str, Any]) -> None:
        if route.resource == jobs and (obj["metadata"].get("labels") or {}).get(QUEUE_LABEL):
            obj["spec"]["suspend"] = True

    api.mutators.append(default_suspend)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _epoch(text: str | None) -> float:
    import calendar

    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) if text else 0.0


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


def gpus_per_pod(tmpl: dict[str, Any]) -> int:
    c = tmpl["spec"]["containers"][0]
    return int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu") or 0)


class KueueController:
    """Kueue's job reconciler, workload controller and scheduler for one namespace (see the module docstring)."""

    def __init__(self, api_client: Any, namespace: str, poll: float = 0.2, version: str = STORAGE,
                 quota_gpus: int | None = None, pods_ready_timeout: float | None = None,
                 requeuing_limit: int | None = None, backoff_s: float = 0.5) -> None:
        import kubernetes

        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self.namespace, self.poll, self.version = namespace, poll, version
        self.quota_gpus, self.pods_ready_timeout = quota_gpus, pods_ready_timeout
        self.requeuing_limit, self.backoff_s = requeuing_limit, backoff_s
        self.actions: list[tuple[str, str, str]] = []  # (action, job, reason): started, stopped, ...
        self.errors: list[BaseException] = []
        self.ticks = 0  # reconcile rounds made (a test's bound on "Kueue did not undo it", instead of a sleep)
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
            self.ticks += 1
            self._stop.wait(self.poll)

    def wait_ticks(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` reconcile rounds in all have run (each looks at every Job and Workload once)."""
        deadline = time.monotonic() + timeout
        while self.ticks < n:
            assert time.monotonic() < deadline, f"Kueue made {self.ticks} of {n} rounds in {timeout:.0f}s"
            time.sleep(0.05)

    # ---- API helpers --------------------------------------------------------------------------

    def workloads(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, self.version, self.namespace, PLURAL)["items"]

    def _patch_job(self, job: dict[str, Any], suspend: bool, action: str, reason: str) -> None:
        self.batch.patch_namespaced_job(job["metadata"]["name"], self.namespace, {"spec": {"suspend": suspend}},
                                        _content_type="application/merge-patch+json")
        self.actions.append((action, job["metadata"]["name"], reason))

    def _status(self, wl: dict[str, Any], status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, self.version, self.namespace, PLURAL, wl["metadata"]["name"], {"status": status},
            _content_type="application/merge-patch+json")

    def _spec(self, wl: dict[str, Any], spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, self.version, self.namespace, PLURAL, wl["metadata"]["name"],
                                                   {"spec": spec}, _content_type="application/merge-patch+json")

    # ---- one pass --------------------------------------------------------------------------------

    def _tick(self) -> None:
        workloads = self.workloads()
        self._used = sum(w["spec"]["podSets"][0]["count"] * gpus_per_pod(w["spec"]["podSets"][0]["template"])
                         for w in workloads if _true(w, "QuotaReserved") and not _true(w, "Finished"))
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
        wl = self._ensure_one(job, owned, suspended, finished)
        if wl is False:
            return
        if finished:  # 3. finished
            if wl is not None and not _true(wl, "Finished"):
                conds = (wl.get("status") or {}).get("conditions") or []
                _set(conds, "Finished", "True", "Succeeded" if _true(job, "Complete") else "Failed", "")
                self._status(wl, {"conditions": conds})
            return
        if wl is None:
            self._create(job)
            return
        if self._workload_controller(wl, job) or self._evicted(wl, job, suspended) or self._schedule(wl):
            return
        admitted = _true(wl, "Admitted")
        if suspended and admitted:  # 7
            self._patch_job(job, False, "started", "Admitted by clusterQueue cluster-queue")
        elif not suspended and not admitted:  # 8
            self._patch_job(job, True, "stopped", "Not admitted by cluster queue")

    def _ensure_one(self, job: dict[str, Any], owned: list[dict[str, Any]], suspended: bool, finished: bool
                    ) -> dict[str, Any] | None | bool:
        """1. The Workload matching the Job, None if there is none, False when this pass changed things."""
        match = next((w for w in owned if w["spec"]["podSets"][0]["count"] == pods_count(job)), None)
        extra = [w for w in owned if w is not match]
        if match is None and extra and suspended and not _true(extra[0], "QuotaReserved"):
            wl = extra.pop(0)  # updateWorkloadToMatchJob
            pod_sets = [dict(wl["spec"]["podSets"][0], count=pods_count(job))]
            self._spec(wl, {"podSets": pod_sets})
            self.actions.append(("updated-workload", job["metadata"]["name"], str(pods_count(job))))
            return False
        if match is None and not suspended and not finished:
            self._patch_job(job, True, "stopped", "No matching Workload")
        for w in extra:
            self.custom.delete_namespaced_custom_object(GROUP, self.version, self.namespace, PLURAL,
                                                        w["metadata"]["name"])
            self.actions.append(("deleted-workload", job["metadata"]["name"], w["metadata"]["name"]))
        return False if extra else match

    def _create(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        digest = hashlib.sha1(job["metadata"]["uid"].encode()).hexdigest()[:5]
        self.custom.create_namespaced_custom_object(GROUP, self.version, self.namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{self.version}", "kind": "Workload",
            "metadata": {"name": f"job-{name}-{digest}", "labels": {JOB_UID_LABEL: job["metadata"]["uid"]},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": job["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"queueName": job["metadata"]["labels"][QUEUE_LABEL], "active": True,
                     "podSets": [{"name": "main", "count": pods_count(job), "template": job["spec"]["template"]}]}})
        self.actions.append(("created-workload", name, ""))

    def _workload_controller(self, wl: dict[str, Any], job: dict[str, Any]) -> bool:
        conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
        active = (wl.get("spec") or {}).get("active", True) is not False
        target = _cond(wl, "DeactivationTarget")
        if active and target and target["status"] == "True":
            self._spec(wl, {"active": False})
            self.actions.append(("deactivated", job["metadata"]["name"], target["reason"]))
            return True
        if not active and not _true(wl, "Evicted"):
            reason, message = DEACTIVATED, "The workload is deactivated"
            if target is not None:
                reason, message = f"{DEACTIVATED}DueTo{target['reason']}", f"{message} due to {target['message']}"
                conds = [c for c in conds if c["type"] != "DeactivationTarget"]
            _set(conds, "Evicted", "True", reason, message)
            self._status(wl, {"conditions": conds, "requeueState": None})
            return True
        requeued = _cond(wl, "Requeued")
        if active and requeued and requeued["status"] == "False":
            if requeued.get("reason", "").startswith(DEACTIVATED):
                _set(conds, "Requeued", "True", "Reactivated", "The workload was reactivated")
                self._status(wl, {"conditions": conds})
                return True
            at = ((wl.get("status") or {}).get("requeueState") or {}).get("requeueAt")
            if requeued.get("reason") == "PodsReadyTimeout" and time.time() >= _epoch(at):
                _set(conds, "Requeued", "True", "BackoffFinished", "The workload backoff was finished")
                self._status(wl, {"conditions": conds})
                return True
        return self._pods_ready_timeout(wl, job, conds, active)

    def _pods_ready_timeout(self, wl: dict[str, Any], job: dict[str, Any], conds: list[dict[str, Any]],
                            active: bool) -> bool:
        if self.pods_ready_timeout is None or not active or _true(wl, "Evicted") or not _true(wl, "Admitted"):
            return False
        if int((job.get("status") or {}).get("ready") or 0) >= wl["spec"]["podSets"][0]["count"]:
            return False
        admitted_at = _epoch((_cond(wl, "Admitted") or {}).get("lastTransitionTime"))
        if time.time() - admitted_at < self.pods_ready_timeout:
            return False
        count = int(((wl.get("status") or {}).get("requeueState") or {}).get("count") or 0)
        if self.requeuing_limit is not None and count + 1 > self.requeuing_limit:  # triggerDeactivation
            _set(conds, "DeactivationTarget", "True", "RequeuingLimitExceeded",
                 "exceeding the maximum number of re-queuing retries")
            self._status(wl, {"conditions": conds})
            return True
        _set(conds, "Evicted", "True", "PodsReadyTimeout",
             f"Exceeded the PodsReady timeout {self.namespace}/{wl['metadata']['name']}")
        self._status(wl, {"conditions": conds, "requeueState": {"count": count + 1,
                                                                "requeueAt": _iso(time.time() + self.backoff_s)}})
        self.actions.append(("evicted", job["metadata"]["name"], "PodsReadyTimeout"))
        return True

    def _evicted(self, wl: dict[str, Any], job: dict[str, Any], suspended: bool) -> bool:
        """6. handle eviction."""
        evicted = _cond(wl, "Evicted")
        if not (evicted and evicted["status"] == "True"):
            return False
        if not suspended:
            self._patch_job(job, True, "stopped", "Workload evicted")
        active = (wl.get("spec") or {}).get("active", True) is not False
        if _true(wl, "QuotaReserved") and not int((job.get("status") or {}).get("active") or 0):
            conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
            _set(conds, "Requeued", "True" if evicted["reason"] in ("Preempted", "NodeFailures") else "False",
                 evicted["reason"], evicted.get("message", ""))
            _set(conds, "QuotaReserved", "False", "PendingEvaluation", evicted.get("message", ""))
            _set(conds, "Admitted", "False", "NoReservation", "The workload has no reservation")
            self._status(wl, {"conditions": conds, "admission": None})
            return True
        requeued = _cond(wl, "Requeued")
        return not (active and not _true(wl, "QuotaReserved") and requeued and requeued["status"] == "True")

    def _schedule(self, wl: dict[str, Any]) -> bool:
        """The scheduler: reserve quota for an active, queued Workload when its GPUs fit."""
        active = (wl.get("spec") or {}).get("active", True) is not False
        requeued = _cond(wl, "Requeued")
        if not active or _true(wl, "QuotaReserved") or (requeued and requeued["status"] == "False"):
            return False
        conds = [dict(c) for c in (wl.get("status") or {}).get("conditions") or []]
        pod_set = wl["spec"]["podSets"][0]
        want = pod_set["count"] * gpus_per_pod(pod_set["template"])
        prefix = "couldn't assign flavors to pod set main: "
        def pending(reason: str, message: str) -> bool:
            if (_cond(wl, "QuotaReserved") or {}).get("message") != message:
                _set(conds, "QuotaReserved", "False", reason, message)
                self._status(wl, {"conditions": conds})
            return True

        if self.quota_gpus is not None and want > self.quota_gpus:
            return pending("ExceedsMaxQuota", f"{prefix}insufficient quota for nvidia.com/gpu in flavor default, "
                           f"previously considered podsets requests (0) + current podset request ({want}) > maximum "
                           f"capacity ({self.quota_gpus})")
        if self.quota_gpus is not None and self._used + want > self.quota_gpus:
            return pending("WaitingForQuota", f"{prefix}insufficient unused quota for nvidia.com/gpu in flavor "
                           f"default, {self._used + want - self.quota_gpus} more needed")
        self._used += want
        _set(conds, "QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cluster-queue")
        _set(conds, "Admitted", "True", "Admitted", "The workload is admitted")
        if _cond(wl, "Evicted") is not None:
            _set(conds, "Evicted", "False", "QuotaReserved", "Previously: evicted")
        self._status(wl, {"conditions": conds, "admission": {
            "clusterQueue": "cluster-queue", "podSetAssignments": [{"name": "main", "count": pod_set["count"]}]}})
        return True
