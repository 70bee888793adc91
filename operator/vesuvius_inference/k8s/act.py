"""Carry out a plan (decide.py) with the API clients passed in.

Creates first (their results feed the second round of deciding), then the Jobs' and Workloads'
patches, the status (a merge patch that removes what no longer holds, with the object's
resourceVersion as a precondition: a 409 means someone wrote meanwhile, and the pass runs again), and
the Events. Job names are deterministic, so a create seen twice is a 409; it counts only if the Job is
ours (same owner uid), never adopted from a deleted InferenceJob of the same name.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from vesuvius_inference.k8s import kueue
from vesuvius_inference.k8s.clients import Clients
from vesuvius_inference.k8s.decide import Outcomes, Plan
from vesuvius_inference.k8s.status import bounded, owner_uids, status_patch

# status.kopf holds kopf's last-handled-configuration (handlers._configure: status, not an annotation, so that
# kubectl describe does not open with it); the operator's status writes leave it alone.
KOPF_STATUS = "kopf"

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
log = logging.getLogger("vesuvius_inference.operator")


class Refused(Exception):
    """The API server refused a create for good (4xx other than 409/429): retrying cannot help."""


def server_message(e: Any) -> str:
    try:
        body = json.loads(e.body or "{}")
        return f"{e.status} {body.get('reason') or e.reason}: {body.get('message') or e.body}"
    except (TypeError, ValueError):
        return f"{e.status} {e.reason}: {e.body}"


def create_job(batch: Any, namespace: str, job: dict[str, Any], *,
               uid: str) -> tuple[str, dict[str, Any] | None]:
    """("created", the Job as stored), ("exists", ours already: a repeated pass) or ("foreign", another owner's:
    wait for the garbage collector). Raises Refused on a permanent 4xx."""
    import kubernetes

    try:
        resp = batch.create_namespaced_job(namespace, job, _preload_content=False)
        return "created", json.loads(resp.data)
    except kubernetes.client.ApiException as e:
        if e.status == 409:
            try:
                existing = json.loads(batch.read_namespaced_job(job["metadata"]["name"], namespace,
                                                                _preload_content=False).data)
            except kubernetes.client.ApiException as e2:
                if e2.status == 404:  # deleted meanwhile: the next pass creates it
                    return "foreign", None
                raise
            return ("exists", existing) if uid in owner_uids(existing) else ("foreign", None)
        if 400 <= (e.status or 0) < 500 and e.status != 429:
            raise Refused(server_message(e)) from None
        raise


def create(c: Clients, namespace: str, plan: Plan, *, uid: str) -> Outcomes:
    out = Outcomes()
    for stage, job, started in plan.creates:
        name = job["metadata"]["name"]
        try:
            outcome, stored = create_job(c.batch, namespace, job, uid=uid)
        except Refused as e:
            out.refused = (stage, bounded(f"the API server refused the {stage} Job {name}: {e}"))
            break
        if outcome == "created" and stored is not None:
            out.created.append((stage, stored, started))
        elif outcome == "exists" and stored is not None:
            out.created.append((stage, stored, ("", "")))
        else:
            out.conflicts.append(name)
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def post_event(core: Any, body: dict[str, Any], kind: str, *, reason: str, message: str) -> None:
    """A core v1 Event on the InferenceJob (best effort: a failed Event never fails the pass)."""
    meta = body["metadata"]
    now = _now()
    try:
        core.create_namespaced_event(meta["namespace"], {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceJob", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason, "message": bounded(message), "type": kind, "firstTimestamp": now, "lastTimestamp": now,
            "count": 1, "source": {"component": "vesuvius-inference-operator"}}, _preload_content=False)
    except Exception:  # noqa: BLE001 - an Event is best effort
        log.warning("could not post event %s: %s", reason, message)


def write_status(custom: Any, namespace: str, name: str, *, rv: str | None, prev: dict[str, Any],
                 status: dict[str, Any]) -> bool:
    """Merge-patch the status to ``status``; False when nothing changed."""
    patch = status_patch({k: v for k, v in prev.items() if k != KOPF_STATUS},  # kopf's own: neither removed
                         {k: v for k, v in status.items() if k != KOPF_STATUS})  # nor written back stale
    if not patch:
        return False
    body: dict[str, Any] = {"status": patch}
    if rv:
        body["metadata"] = {"resourceVersion": rv}  # optimistic concurrency: a 409 if someone wrote meanwhile
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body,
                                                 _content_type="application/merge-patch+json")
    return True


def label_finished(c: Clients, namespace: str, body: dict[str, Any], *, label: str, finished: bool) -> None:
    """Set (or remove) the label the periodic resync selects on, when it differs: one request at completion
    and one when a retry starts again, none otherwise."""
    has = ((body.get("metadata") or {}).get("labels") or {}).get(label) == "true"
    if has == finished:
        return
    import kubernetes

    try:
        c.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"],
                                                {"metadata": {"labels": {label: "true" if finished else None}}},
                                                _content_type="application/merge-patch+json")
    except kubernetes.client.ApiException as e:
        if e.status != 404:  # deleted meanwhile: nothing to label
            raise


def apply(c: Clients, namespace: str, body: dict[str, Any], *, plan: Plan) -> None:
    for name, patch in plan.job_patches:
        c.batch.patch_namespaced_job(name, namespace, patch, _content_type="application/merge-patch+json",
                                     _preload_content=False)
    for name, version, patch in plan.workload_patches:
        kueue.patch(c.custom, namespace, name, version=version, body=patch)
    if plan.status is not None:
        write_status(c.custom, namespace, body["metadata"]["name"],
                     rv=body["metadata"].get("resourceVersion"),
                     prev=body.get("status") or {}, status=plan.status)
    for kind, reason, message in plan.events:
        if reason:
            post_event(c.core, body, kind, reason=reason, message=message)
