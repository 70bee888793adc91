"""kopf handlers: thin glue between the InferenceJob API, child Jobs and the pure modules.

Everything is level-triggered through ``reconcile``: whatever event arrives (create, resume after an
operator restart, a child Job's status change, a spec field change), the operator reads the
object and its Jobs, derives the status, and creates the one Job that is missing. Job names are
deterministic and a 409 on create means another pass already made it, so events seen twice
change nothing. No finalizer: deletion cascades through ownerReferences even with the operator down.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from typing import Any

import kopf

from . import manifests
from .ranges import format_ranges, parse_ranges
from .spec import parse, validate
from .status import ChildJobs, derive, job_finished, next_stage

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
log = logging.getLogger("vesuvius_inference.operator")
_RETRY = re.compile(r"-predict-r(\d+)$")


def defaults_from_env() -> manifests.OperatorDefaults:
    """Defaults the Helm chart passes to the operator (image, GPU scheduling, Kueue queue)."""
    import json

    return manifests.OperatorDefaults(
        image=os.environ.get("VESUVIUS_WORKER_IMAGE", manifests.OperatorDefaults.image),
        image_pull_policy=os.environ.get("VESUVIUS_WORKER_PULL_POLICY", "IfNotPresent"),
        gpu_node_selector=json.loads(os.environ.get("VESUVIUS_GPU_NODE_SELECTOR", "{}")),
        gpu_tolerations=json.loads(os.environ.get(
            "VESUVIUS_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')),
        queue_name=os.environ.get("VESUVIUS_QUEUE_NAME") or None,
    )


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


def child_jobs(batch: Any, namespace: str, name: str) -> ChildJobs:
    jobs = batch.list_namespaced_job(namespace, label_selector=f"{manifests.LABEL_JOB}={name}").items
    out = ChildJobs()
    for j in (_as_dict(x) for x in jobs):
        jname, stage = j["metadata"]["name"], j["metadata"].get("labels", {}).get(manifests.LABEL_STAGE)
        m = _RETRY.search(jname)
        if m:
            args = j["spec"]["template"]["spec"]["containers"][0]["args"]
            ids = sorted(parse_ranges(args[args.index("--part_ids") + 1]))
            out.retries.append((j, ids))
        elif stage in ("predict", "blend", "finalize"):
            setattr(out, stage, j)
    out.retries.sort(key=lambda r: int(_RETRY.search(r[0]["metadata"]["name"]).group(1)))
    return out


def _create(batch: Any, namespace: str, job: dict[str, Any]) -> bool:
    """Create a Job; True if created, False if it already existed (409: a repeated event)."""
    import kubernetes

    try:
        batch.create_namespaced_job(namespace, job)
        return True
    except kubernetes.client.ApiException as e:
        if e.status == 409:
            return False
        raise


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


def reconcile(namespace: str, name: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One level-triggered pass for one InferenceJob; returns the status it wrote."""
    batch, custom, core = _apis()
    if body is None:
        import kubernetes

        try:
            body = _as_dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise
    meta, spec_raw, prev = body["metadata"], body.get("spec") or {}, dict(body.get("status") or {})
    spec = parse(spec_raw)
    generation = int(meta.get("generation") or 1)
    if prev.get("reason") == "InvalidSpec" and prev.get("observedGeneration") == generation:
        return prev
    errors = validate(spec)
    if errors:
        status = {"phase": "Failed", "reason": "InvalidSpec", "message": "; ".join(errors),
                  "observedGeneration": generation, "stage": "",
                  "conditions": [{"type": "Failed", "status": "True", "reason": "InvalidSpec",
                                  "message": "; ".join(errors), "lastTransitionTime": _now(),
                                  "observedGeneration": generation}]}
        _patch_status(custom, namespace, name, status)
        kopf.warn(body, reason="InvalidSpec", message="; ".join(errors))
        return status
    defaults = defaults_from_env()
    uid = meta.get("uid", "")
    jobs = child_jobs(batch, namespace, name)
    names = {"predict": manifests.job_name(name, "predict")}
    status = derive(spec, jobs, prev, _now(), generation, names)
    stage = next_stage(status, jobs)
    if stage == "predict":
        if _create(batch, namespace, manifests.predict_job(name, namespace, uid, spec, defaults)):
            kopf.info(body, reason="PredictStarted", message=f"created {names['predict']} with {spec.parts} parts")
    elif stage == "blend":
        if _create(batch, namespace, manifests.blend_job(name, namespace, uid, spec, defaults)):
            kopf.info(body, reason="BlendStarted", message="all parts predicted; created the blend Job")
    elif stage == "finalize":
        if _create(batch, namespace, manifests.finalize_job(name, namespace, uid, spec, defaults)):
            kopf.info(body, reason="FinalizeStarted", message="blend complete; created the finalize Job")
    if stage:
        jobs = child_jobs(batch, namespace, name)
        status = derive(spec, jobs, prev, _now(), generation, names)
    if jobs.predict is None:  # e.g. created suspended: name only Jobs that exist
        status["jobs"].pop("predict", None)
    for st in ("blend", "finalize"):
        if getattr(jobs, st) is not None:
            status["jobs"][st] = manifests.job_name(name, st)
    if jobs.retries:
        status["jobs"]["retries"] = [j["metadata"]["name"] for j, _ in jobs.retries]
    status["retryAttempt"] = len(jobs.retries)
    if status["phase"] != prev.get("phase"):
        message = status["message"]
        if status["phase"] == "Failed":
            failing = jobs.retries[-1][0]["metadata"]["name"] if jobs.retries else names["predict"]
            detail = _failure_details(core, namespace, failing if status["stage"] == "predict" else
                                      manifests.job_name(name, status["stage"]))
            kopf.warn(body, reason=status["reason"], message=message + (f" ({detail})" if detail else ""))
        else:
            kopf.info(body, reason=status["phase"], message=message)
    if {k: v for k, v in status.items() if k != "conditions"} != {k: prev.get(k) for k in status if k != "conditions"} \
            or status["conditions"] != prev.get("conditions"):
        _patch_status(custom, namespace, name, status)
    return status


def _patch_status(custom: Any, namespace: str, name: str, status: dict[str, Any]) -> None:
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status},
                                                 _content_type="application/merge-patch+json")


def retry_failed_parts(namespace: str, name: str, body: dict[str, Any]) -> None:
    """Create ``<name>-predict-r<k>`` over the parts that failed; parts already done are skipped by the CLI."""
    batch, custom, _ = _apis()
    spec = parse(body.get("spec") or {})
    jobs = child_jobs(batch, namespace, name)
    from .status import part_sets

    _, failed, _ = part_sets(spec, jobs)
    if not failed:
        return
    attempt = len(jobs.retries) + 1
    job = manifests.predict_job(name, namespace, body["metadata"].get("uid", ""), spec, defaults_from_env(),
                                part_ids=sorted(failed), attempt=attempt)
    if _create(batch, namespace, job):
        kopf.info(body, reason="RetryingParts", message=f"re-running parts {format_ranges(failed)} as "
                                                       f"{job['metadata']['name']}")
        # the failed status is stale now: derive again from the Jobs, including the new one
        prev = dict(body.get("status") or {})
        prev.pop("reason", None)
        reconcile(namespace, name, dict(body, status=dict(prev, phase="Predicting")))


def set_suspend(namespace: str, name: str, suspend: bool) -> None:
    batch, _, _ = _apis()
    for j in batch.list_namespaced_job(namespace, label_selector=f"{manifests.LABEL_JOB}={name}").items:
        j = _as_dict(j)
        if not any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in (j.get("status") or {}).get("conditions") or []):
            batch.patch_namespaced_job(j["metadata"]["name"], namespace, {"spec": {"suspend": suspend}},
                                       _content_type="application/merge-patch+json")


def set_parallelism(namespace: str, name: str, parallelism: int) -> None:
    """Apply spec.parallelism to the unfinished predict Jobs (the first one and any retry Jobs)."""
    batch, _, _ = _apis()
    jobs = child_jobs(batch, namespace, name)
    for job in [jobs.predict, *(j for j, _ in jobs.retries)]:
        if job is None or job_finished(job):
            continue
        completions = int(job["spec"].get("completions") or 1)
        batch.patch_namespaced_job(job["metadata"]["name"], namespace,
                                   {"spec": {"parallelism": min(parallelism, completions)}},
                                   _content_type="application/merge-patch+json")


# ---- kopf registration -------------------------------------------------------------------------

@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vesuvius.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="vesuvius.dev")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_create(name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
    reconcile(namespace, name, dict(body))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.suspend")
def on_suspend(name: str, namespace: str, new: Any, body: kopf.Body, **_: Any) -> None:
    set_suspend(namespace, name, bool(new))
    reconcile(namespace, name)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.parallelism")
def on_parallelism(name: str, namespace: str, new: Any, **_: Any) -> None:
    if new:
        set_parallelism(namespace, name, int(new))


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec.retryFailedParts")
def on_retry(name: str, namespace: str, body: kopf.Body, **_: Any) -> None:
    retry_failed_parts(namespace, name, dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_JOB: kopf.PRESENT})
def on_job_event(body: kopf.Body, namespace: str, type: str | None, **_: Any) -> None:
    owner = body.get("metadata", {}).get("labels", {}).get(manifests.LABEL_JOB)
    if owner and type != "DELETED":
        reconcile(namespace, owner)


@kopf.on.probe(id="reconciler")
def _alive(**_: Any) -> str:
    return "ok"
