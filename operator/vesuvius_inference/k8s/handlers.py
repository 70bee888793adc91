"""kopf handlers: thin glue between the InferenceJob API, child Jobs and the pure modules.

Everything is level-triggered through ``reconcile``: whatever happens (create, resume after an operator
restart, any spec change, a child Job's event, and a periodic resync every ``VESUVIUS_RESYNC_SECONDS``),
the operator reads the object and the Jobs it owns, derives the status (a ledger: see status.py) and
does the one thing missing: create the next Job, or the retry Job a bump of spec.retryFailedParts
asks for, bring the Jobs' suspend and parallelism in line with the spec, report pods that cannot
start. The resync is what catches a transition whose event kopf dropped: kopf runs ``@kopf.on.event``
handlers once and only logs their errors (kopf/_core/reactor/processing.py, process_watching_cause:
"If the handler fails, it fails and is never retried"), and it does not re-list while watching.

Job names are deterministic (the retry Job's from the retryFailedParts value), so a repeated pass gets
a 409; a 409 counts only if the existing Job is ours (same owner uid). No finalizer: deletion cascades
through ownerReferences even with the operator down (which is also why the resync is an operator-wide
task, not a kopf timer: kopf puts a finalizer on every object with a timer or daemon, kopf/on.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import kopf

from . import manifests
from .checks import refusals
from .spec import parse
from .status import (
    ChildJobs,
    bounded,
    classify,
    derive,
    job_finished,
    missing_parts,
    next_stage,
    owner_uids,
    part_sets,
    ranges_brief,
    status_patch,
    stuck_pods,
)

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
# Kueue's Workload API (kueue.x-k8s.io/v1beta1, served by every Kueue release); its job reconciler labels
# each Workload with the uid of its Job (pkg/controller/jobframework/reconciler.go, constructWorkload).
KUEUE_GROUP, KUEUE_VERSION, WORKLOADS = "kueue.x-k8s.io", "v1beta1", "workloads"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
log = logging.getLogger("vesuvius_inference.operator")

_scope: dict[str, Any] = {"namespaces": [], "all": False}
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def configure_scope(namespaces: Sequence[str], all_namespaces: bool) -> None:
    """Where the periodic resync looks (the operator's --namespace / --all-namespaces)."""
    _scope.update(namespaces=list(namespaces), all=all_namespaces)


defaults_from_env = manifests.defaults_from_env  # what the Helm chart's env sets


def resync_seconds() -> float:
    """Interval of the periodic reconcile of unfinished InferenceJobs (0 turns it off)."""
    return float(os.environ.get("VESUVIUS_RESYNC_SECONDS", "60"))


def stuck_pod_seconds() -> float:
    """How long a pod may wait in CreateContainerConfigError, ImagePullBackOff, ... before it is reported."""
    return float(os.environ.get("VESUVIUS_STUCK_POD_SECONDS", "300"))


def _apis() -> tuple[Any, Any, Any]:
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.BatchV1Api(), kubernetes.client.CustomObjectsApi(), kubernetes.client.CoreV1Api()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_dict(obj: Any) -> dict[str, Any]:
    import kubernetes

    return obj if isinstance(obj, dict) else kubernetes.client.ApiClient().sanitize_for_serialization(obj)


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def list_jobs(batch: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return [_as_dict(j) for j in batch.list_namespaced_job(
        namespace, label_selector=f"{manifests.LABEL_JOB}={name}").items]


def child_jobs(batch: Any, namespace: str, name: str, uid: str) -> ChildJobs:
    return classify(list_jobs(batch, namespace, name), uid)


class Refused(Exception):
    """The API server refused a create for good (4xx other than 409/429): retrying cannot help."""


def _create(batch: Any, namespace: str, job: dict[str, Any], uid: str) -> str:
    """Create a Job: "created", "exists" (ours already: a repeated pass) or "foreign" (same name, another
    owner: wait for the garbage collector, never adopt). Raises Refused on a permanent 4xx."""
    import kubernetes

    try:
        batch.create_namespaced_job(namespace, job)
        return "created"
    except kubernetes.client.ApiException as e:
        if e.status == 409:
            try:
                existing = _as_dict(batch.read_namespaced_job(job["metadata"]["name"], namespace))
            except kubernetes.client.ApiException as e2:
                if e2.status == 404:  # deleted meanwhile: the next pass creates it
                    return "foreign"
                raise
            return "exists" if uid in owner_uids(existing) else "foreign"
        if 400 <= (e.status or 0) < 500 and e.status != 429:
            raise Refused(_server_message(e)) from None
        raise


def _server_message(e: Any) -> str:
    try:
        body = json.loads(e.body or "{}")
        return f"{e.status} {body.get('reason') or e.reason}: {body.get('message') or e.body}"
    except (TypeError, ValueError):
        return f"{e.status} {e.reason}: {e.body}"


def _failure_details(core: Any, namespace: str, job_name: str) -> str:
    """The last lines of the failing pods' termination messages, for the Event."""
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    except Exception:  # noqa: BLE001 - diagnostics only
        return ""
    lines = []
    for p in (_as_dict(x) for x in pods):
        for cs in (p.get("status") or {}).get("containerStatuses") or []:
            term = ((cs.get("state") or {}).get("terminated") or {})
            if term.get("exitCode"):
                idx = p["metadata"].get("annotations", {}).get("batch.kubernetes.io/job-completion-index", "?")
                msg = (term.get("message") or "").strip().splitlines()[-2:]
                lines.append(f"index {idx} exit {term['exitCode']}: {' | '.join(msg)}")
    return "; ".join(lines[-5:])


def _event(core: Any, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """A core v1 Event on the InferenceJob, through kopf where it can (a handler's context), else directly
    (the resync task has no kopf event queue)."""
    message = bounded(message)
    try:
        (kopf.warn if kind == "Warning" else kopf.info)(body, reason=reason, message=message)
        return
    except LookupError:
        pass
    meta = body["metadata"]
    now = _now()
    try:
        core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceJob", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": message, "type": kind, "firstTimestamp": now, "lastTimestamp": now,
            "count": 1, "source": {"component": "vesuvius-inference-operator"}})
    except Exception:  # noqa: BLE001 - an Event is best effort
        log.warning("could not post event %s: %s", reason, message)


def _unfinished(jobs: ChildJobs) -> list[dict[str, Any]]:
    return [j for j in jobs.owned() if not job_finished(j)]


def _kueue_managed(job: dict[str, Any]) -> bool:
    return manifests.LABEL_QUEUE in (job["metadata"].get("labels") or {})


def _workload(custom: Any, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
    import kubernetes

    uid = job["metadata"].get("uid", "")
    try:
        items = custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, WORKLOADS,
                                                     label_selector=f"{KUEUE_JOB_UID}={uid}")["items"]
    except kubernetes.client.ApiException as e:
        if e.status == 404:  # Kueue is not installed
            return None
        raise
    return next((w for w in items if uid in owner_uids(w)), None)


def _sync_suspend(batch: Any, custom: Any, namespace: str, jobs: ChildJobs, suspend: bool) -> None:
    """Make every unfinished Job follow spec.suspend. A Job Kueue manages is suspended through its
    Workload (spec.active): Kueue unsuspends any admitted Job that is suspended behind its back
    (pkg/controller/jobframework/reconciler.go, ReconcileGenericJob step 7, "Job admitted, unsuspending"),
    and evicts, then suspends, the Job of a deactivated Workload (step 6)."""
    for job in _unfinished(jobs):
        if _kueue_managed(job):
            wl = _workload(custom, namespace, job)
            if wl is not None and ((wl.get("spec") or {}).get("active", True) is not False) == suspend:
                custom.patch_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, WORKLOADS,
                                                      wl["metadata"]["name"], {"spec": {"active": not suspend}},
                                                      _content_type="application/merge-patch+json")
        elif bool(job["spec"].get("suspend")) != suspend:
            batch.patch_namespaced_job(job["metadata"]["name"], namespace, {"spec": {"suspend": suspend}},
                                       _content_type="application/merge-patch+json")


def _sync_parallelism(batch: Any, namespace: str, jobs: ChildJobs, parallelism: int) -> str | None:
    """Apply spec.parallelism (or its default, parts) to the unfinished predict Jobs; a message when Kueue
    manages one: a Job whose pod count changes stops matching its Workload, and Kueue suspends and
    re-queues it (reconciler.go, ensureOneWorkload / equivalentToWorkload), so it is left alone."""
    refused = []
    for job, _ in jobs.predict_runs():
        if job_finished(job):
            continue
        want = min(parallelism, int(job["spec"].get("completions") or 1))
        if int(job["spec"].get("parallelism") or 1) == want:
            continue
        if _kueue_managed(job):
            refused.append(job["metadata"]["name"])
            continue
        batch.patch_namespaced_job(job["metadata"]["name"], namespace, {"spec": {"parallelism": want}},
                                   _content_type="application/merge-patch+json")
    if refused:
        return (f"spec.parallelism {parallelism} is not applied to {', '.join(refused)}: Kueue manages them, and a "
                "running Job whose parallelism changes no longer matches its Workload, so Kueue would suspend and "
                "re-queue it; Jobs created from now on (retries) use the new value")
    return None


def _stuck(core: Any, namespace: str, name: str, jobs: ChildJobs) -> str | None:
    uids = {j["metadata"]["uid"] for j in _unfinished(jobs)}
    if not uids:
        return None
    pods = [p for p in (_as_dict(x) for x in core.list_namespaced_pod(
        namespace, label_selector=f"{manifests.LABEL_JOB}={name}").items) if owner_uids(p) & uids]
    found = stuck_pods(pods, time.time(), stuck_pod_seconds())
    if not found:
        return None
    pod, reason, message = found[0]
    more = f" (and {len(found) - 1} more pods)" if len(found) > 1 else ""
    return f"{reason}|pod {pod} cannot start: {reason}: {message}{more}"


def reconcile(namespace: str, name: str, gone: Sequence[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """One level-triggered pass for one InferenceJob; returns the status it wrote.

    ``gone``: final bodies of child Jobs just deleted (TTL, garbage collection), so that their outcome
    is recorded even if no pass saw them finish. Passes for one object never overlap in this process,
    and the status is written with the object's resourceVersion as a precondition.
    """
    import kubernetes

    with _lock(namespace, name):
        for _ in range(3):
            try:
                return _reconcile(namespace, name, gone)
            except kubernetes.client.ApiException as e:
                if e.status != 409:
                    raise
                log.info("%s/%s changed during the pass; again", namespace, name)
        return None


def _reconcile(namespace: str, name: str, gone: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    import kubernetes

    batch, custom, core = _apis()
    try:
        body = _as_dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return None
        raise
    meta, prev = body["metadata"], dict(body.get("status") or {})
    spec = parse(body.get("spec") or {})
    generation = int(meta.get("generation") or 1)
    rv = meta.get("resourceVersion")
    if prev.get("reason") == "InvalidSpec" and prev.get("observedGeneration") == generation:
        return prev
    defaults = defaults_from_env()
    errors = refusals(name, spec, defaults)
    if errors:
        text = bounded("; ".join(errors))
        status = dict(prev, phase="Failed", reason="InvalidSpec", message=text, observedGeneration=generation,
                      stage="", conditions=[{"type": "Failed", "status": "True", "reason": "InvalidSpec",
                                             "message": text, "lastTransitionTime": _now(),
                                             "observedGeneration": generation}])
        _write_status(custom, namespace, name, rv, prev, status)
        _event(core, body, "Warning", "InvalidSpec", text)
        return status
    uid = meta.get("uid", "")
    gone = [g for g in gone if uid in owner_uids(g)]
    jobs = child_jobs(batch, namespace, name, uid)
    status = derive(spec, jobs, prev, _now(), generation, gone)
    events: list[tuple[str, str, str]] = []
    refused: tuple[str, str] | None = None
    conflicts: list[str] = []

    def create(stage: str, job: dict[str, Any], started: tuple[str, str]) -> bool:
        nonlocal refused
        try:
            outcome = _create(batch, namespace, job, uid)
        except Refused as e:
            refused = (stage, bounded(f"the API server refused the {stage} Job {job['metadata']['name']}: {e}"))
            events.append(("Warning", "CreateFailed", refused[1]))
            return False
        if outcome == "created":
            events.append(("Normal", *started))
        elif outcome == "foreign":
            conflicts.append(job["metadata"]["name"])
        return outcome == "created"

    changed = False
    handled = int(prev.get("retryFailedPartsHandled") or 0)
    attempt = int(spec["retryFailedParts"] or 0)
    if attempt > handled:
        retry_name = manifests.job_name(name, "predict", attempt)
        if not any(j["metadata"]["name"] == retry_name for j, _ in jobs.retries):
            todo = missing_parts(status, part_sets(spec, jobs).covered)
            if todo:
                job = manifests.predict_job(name, namespace, uid, spec, defaults, part_ids=sorted(todo),
                                            attempt=attempt)
                changed |= create("predict", job, ("RetryingParts", f"re-running parts {ranges_brief(todo)} as "
                                                                    f"{retry_name}"))
            else:
                events.append(("Normal", "NothingToRetry",
                               f"spec.retryFailedParts={attempt}: every predict part is done or being run"))
        if not conflicts:  # a refused create is not repeated until the next bump
            prev = dict(prev, retryFailedPartsHandled=attempt)
    if changed:
        jobs = child_jobs(batch, namespace, name, uid)
        status = derive(spec, jobs, prev, _now(), generation, gone)
    stage = next_stage(status, jobs) if refused is None else None
    if stage is not None:
        make = {"predict": manifests.predict_job, "blend": manifests.blend_job, "finalize": manifests.finalize_job}
        job = make[stage](name, namespace, uid, spec, defaults)
        started = {"predict": ("PredictStarted", f"created {job['metadata']['name']} with {spec.parts} parts"),
                   "blend": ("BlendStarted", "all parts predicted; created the blend Job"),
                   "finalize": ("FinalizeStarted", "blend complete; created the finalize Job")}[stage]
        if create(stage, job, started):
            jobs = child_jobs(batch, namespace, name, uid)
    _sync_suspend(batch, custom, namespace, jobs, bool(spec["suspend"]))
    extra: list[tuple[str, bool, str, str]] = []
    parallelism_note = _sync_parallelism(batch, namespace, jobs, spec.parallelism)
    extra.append(("ParallelismNotApplied", parallelism_note is not None, "KueueManaged", parallelism_note or ""))
    stuck = _stuck(core, namespace, name, jobs)
    reason, _, text = (stuck or "||").partition("|")
    extra.append(("PodsStuck", stuck is not None, reason, text))
    conflict_text = (f"{', '.join(conflicts)} exists but belongs to another owner (a deleted InferenceJob of the "
                     "same name whose Jobs are not garbage-collected yet?); waiting for it to go") if conflicts else ""
    extra.append(("ChildJobConflict", bool(conflicts), "ForeignJob", conflict_text))
    status = derive(spec, jobs, prev, _now(), generation, gone, extra, refused)
    old_conds = {c.get("type"): c.get("status") for c in body.get("status", {}).get("conditions") or []}
    for kind, on, why, text in extra:
        if on and old_conds.get(kind) != "True":
            events.append(("Warning", why if kind == "PodsStuck" else kind, text))
    old_phase = (body.get("status") or {}).get("phase")
    if status["phase"] != old_phase:
        message = status["message"]
        if status["phase"] == "Failed" and status["reason"] != "CreateFailed":
            failing = (jobs.retries[-1][0]["metadata"]["name"] if jobs.retries else
                       manifests.job_name(name, "predict")) if status["stage"] == "predict" else \
                manifests.job_name(name, status["stage"])
            detail = _failure_details(core, namespace, failing)
            events.append(("Warning", status["reason"], message + (f" ({detail})" if detail else "")))
        elif status["phase"] != "Failed":
            events.append(("Normal", status["phase"], message))
    _write_status(custom, namespace, name, rv, body.get("status") or {}, status)
    for kind, reason, message in events:
        _event(core, body, kind, reason, message)
    return status


def _write_status(custom: Any, namespace: str, name: str, rv: str | None, prev: dict[str, Any],
                  status: dict[str, Any]) -> None:
    patch = status_patch(prev, status)
    if not patch:
        return
    body: dict[str, Any] = {"status": patch}
    if rv:
        body["metadata"] = {"resourceVersion": rv}  # optimistic concurrency: a 409 if someone wrote meanwhile
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body,
                                                 _content_type="application/merge-patch+json")


def _candidates(custom: Any) -> list[tuple[str, str]]:
    """(namespace, name) of the InferenceJobs a resync should look at: unfinished, or with a retry pending."""
    if _scope["all"]:
        pages = [custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)]
    else:
        pages = [custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL) for ns in _scope["namespaces"]]
    out = []
    for page in pages:
        for item in page.get("items") or []:
            st = item.get("status") or {}
            pending_retry = int((item.get("spec") or {}).get("retryFailedParts") or 0) > int(
                st.get("retryFailedPartsHandled") or 0)
            if st.get("phase") not in ("Succeeded", "Failed") or pending_retry:
                out.append((item["metadata"]["namespace"], item["metadata"]["name"]))
    return out


async def _resync_loop(interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            _, custom, _ = await asyncio.to_thread(_apis)
            items = await asyncio.to_thread(_candidates, custom)
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("resync: listing InferenceJobs failed")
            continue
        for namespace, name in items:
            try:
                await asyncio.to_thread(reconcile, namespace, name)
            except Exception:  # noqa: BLE001 - one object's failure must not stop the others
                log.exception("resync of %s/%s failed", namespace, name)


# ---- kopf registration -------------------------------------------------------------------------

@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vesuvius.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="vesuvius.dev")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300


@kopf.on.startup()
async def _start_resync(memo: kopf.Memo, **_: Any) -> None:
    interval = resync_seconds()
    if interval > 0 and (_scope["all"] or _scope["namespaces"]):
        memo["resync"] = asyncio.get_running_loop().create_task(_resync_loop(interval))


@kopf.on.cleanup()
async def _stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(name: str, namespace: str, **_: Any) -> None:
    reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_JOB: kopf.PRESENT})
def on_job_event(body: kopf.Body, namespace: str, type: str | None, **_: Any) -> None:
    owner = body.get("metadata", {}).get("labels", {}).get(manifests.LABEL_JOB)
    if owner:
        reconcile(namespace, owner, gone=[dict(body)] if type == "DELETED" else ())


@kopf.on.probe(id="reconciler")
def _alive(**_: Any) -> str:
    return "ok"


__all__ = ["reconcile", "defaults_from_env", "configure_scope"]
