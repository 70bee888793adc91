"""kopf handlers: thin glue between the InferenceJob API, child Jobs and the pure modules.

Everything is level-triggered through :func:`reconcile`, one pass of observe (observe.py) -> decide
(decide.py, pure) -> act (act.py), with the API clients passed in. Whatever happens (create, resume
after an operator restart, a spec change, a child Job's event, and a periodic resync every
``VESUVIUS_RESYNC_SECONDS``) asks for a pass; passes of one InferenceJob are coalesced (passes.py), so
a burst of Job events costs one pass. The resync is what catches a transition whose event kopf
dropped: kopf runs ``@kopf.on.event`` handlers once and only logs their errors
(kopf/_core/reactor/processing.py, process_watching_cause), and it does not re-list while watching.

kopf watches Jobs with a server-side label selector (``settings.watching.label_selectors``,
kopf/_cogs/clients/watching.py): only the operator's Jobs reach it, whatever else runs in the
namespace. No finalizer: deletion cascades through ownerReferences even with the operator down (which
is also why the resync is an operator-wide task, not a kopf timer: kopf puts a finalizer on every
object with a timer or daemon, kopf/on.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from . import act, clients, manifests, metrics, policy
from .decide import decide
from .metrics import Registry, serve
from .observe import Observer, Settings
from .passes import Passes

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
log = logging.getLogger("vesuvius_inference.operator")

_scope: dict[str, Any] = {"namespaces": [], "all": False, "metrics_port": 0, "metrics_auth": "none",
                          "metrics_cert_dir": ""}
_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()
defaults_from_env = manifests.defaults_from_env  # what the Helm chart's env sets


def configure_scope(namespaces: Sequence[str], all_namespaces: bool, metrics_port: int = 0,
                    metrics_auth: str = "none", metrics_cert_dir: str = "") -> None:
    """Where the periodic resync looks (the operator's --namespace / --all-namespaces), --metrics-port,
    --metrics-auth and --metrics-cert-dir."""
    _scope.update(namespaces=list(namespaces), all=all_namespaces, metrics_port=metrics_port,
                  metrics_auth=metrics_auth, metrics_cert_dir=metrics_cert_dir)


def resync_seconds() -> float:
    """Interval of the periodic reconcile of unfinished InferenceJobs (0 turns it off)."""
    return float(os.environ.get("VESUVIUS_RESYNC_SECONDS", "60"))


@dataclass
class Runtime:
    """What every pass shares: the clients, the observer's memory, the pass queue, the metrics."""

    clients: clients.Clients
    observer: Observer
    passes: Passes
    registry: Registry
    stats: dict[str, float]
    policy: policy.Policy
    secrets: policy.SecretLabels


_runtime: list[Runtime] = []


def runtime() -> Runtime:
    with _guard:
        if not _runtime:
            c = clients.build()
            defaults = manifests.defaults_from_env()
            stats = {"passes": 0.0}
            registry = Registry()
            registry.counters.update({
                "vesuvius_operator_reconcile_passes_total": lambda: stats["passes"],
                "vesuvius_operator_api_requests_total": lambda: c.requests.value})
            passes = Passes(lambda ns, name, gone: reconcile(ns, name, gone),
                            float(os.environ.get("VESUVIUS_MIN_PASS_INTERVAL", "1")))
            _runtime.append(Runtime(c, Observer(c, Settings.from_env(), lambda: defaults), passes, registry, stats,
                                    policy.Policy.from_env(), policy.SecretLabels(c.core)))
        return _runtime[0]


def _lock(namespace: str, name: str) -> threading.Lock:
    with _guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def reconcile(namespace: str, name: str, gone: Sequence[dict[str, Any]] = ()) -> dict[str, Any] | None:
    """One level-triggered pass for one InferenceJob; returns its status after the pass.

    ``gone``: final bodies of child Jobs just deleted (TTL, garbage collection), so that their outcome
    is recorded even if no pass saw them finish. Passes for one object never overlap in this process,
    and the status is written with the object's resourceVersion as a precondition (a 409: again).
    """
    import kubernetes

    rt = runtime()
    with _lock(namespace, name):
        began, ok = time.monotonic(), False
        try:
            for _ in range(3):
                try:
                    status = _pass(rt, namespace, name, gone)
                    ok = True
                    return status
                except kubernetes.client.ApiException as e:
                    if e.status != 409:
                        raise
                    log.info("%s/%s changed during the pass; again", namespace, name)
            return None
        finally:
            metrics.observe_pass(time.monotonic() - began, ok)


def _pass(rt: Runtime, namespace: str, name: str, gone: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    began, requests = time.monotonic(), rt.clients.requests.value
    obs = rt.observer.observe(namespace, name, gone)
    if obs is None:
        rt.registry.record(namespace, name, None)
        return None
    obs.policy = rt.policy
    obs.secret = rt.secrets.for_spec(namespace, obs.body.get("spec") or {}, rt.policy)
    plan = decide(obs)
    outcomes = act.create(rt.clients, namespace, plan, obs.body["metadata"].get("uid", ""))
    plan = decide(obs, outcomes)
    act.apply(rt.clients, namespace, obs.body, plan)
    status = plan.status if plan.status is not None else obs.body.get("status")
    rt.registry.record(namespace, name, status)
    rt.stats["passes"] += 1
    log.debug("pass %s/%s: %d API requests, %.0f ms", namespace, name, rt.clients.requests.value - requests,
              1000 * (time.monotonic() - began))
    return status


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
            rt = await asyncio.to_thread(runtime)
            items = await asyncio.to_thread(_candidates, rt.clients.custom)
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("resync: listing InferenceJobs failed")
            continue
        for namespace, name in items:
            rt.passes.request(namespace, name)


# ---- kopf registration -------------------------------------------------------------------------

@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vesuvius.dev")
    # kopf's last-handled-configuration (the spec as last handled, JSON) in status.kopf, not in an annotation:
    # kubectl describe prints annotations first, so an annotation made every describe open with a screen of
    # JSON (kopf docs, "Persistence": StatusDiffBaseStorage). act.write_status leaves status.kopf alone.
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name="kopf")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # only the operator's Jobs, selected by the API server (not every Job of the namespace, filtered here)
    settings.watching.label_selectors["batch", "v1", "jobs"] = manifests.LABEL_JOB
    settings.watching.chunk_size = 500  # kopf's initial list, page by page


@kopf.on.startup()
async def _start(memo: kopf.Memo, **_: Any) -> None:
    rt = await asyncio.to_thread(runtime)
    if _scope["metrics_port"]:
        from .metricsauth import CertFiles, ReviewAuth

        auth = tls = None
        if _scope["metrics_auth"] == "kubernetes":  # TokenReview + SubjectAccessReview (metricsauth.py)
            auth = ReviewAuth(rt.clients.core.api_client)
        if _scope["metrics_cert_dir"]:
            tls = CertFiles(_scope["metrics_cert_dir"])
        memo["metrics"] = serve(rt.registry, int(_scope["metrics_port"]), auth=auth, tls=tls)
    interval = resync_seconds()
    if interval > 0 and (_scope["all"] or _scope["namespaces"]):
        memo["resync"] = asyncio.get_running_loop().create_task(_resync_loop(interval))


@kopf.on.cleanup()
async def _stop(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
    server = memo.get("metrics")
    if server is not None:
        server.shutdown()


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def on_change(name: str, namespace: str, **_: Any) -> None:
    runtime().passes.request(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_JOB: kopf.PRESENT})
async def on_job_event(body: kopf.Body, namespace: str, type: str | None, **_: Any) -> None:
    owner = body.get("metadata", {}).get("labels", {}).get(manifests.LABEL_JOB)
    if owner:
        runtime().passes.request(namespace, owner, gone=[dict(body)] if type == "DELETED" else ())


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_inferencejob_event(name: str, namespace: str, type: str | None, **_: Any) -> None:
    """A deleted InferenceJob's metrics series go at once (no finalizer needed: an event handler adds none)."""
    if type == "DELETED":
        rt = runtime()
        rt.registry.record(namespace, name, None)
        rt.observer.forget(namespace, name)


@kopf.on.probe(id="reconciler")
def _alive(**_: Any) -> str:
    return "ok"


__all__ = ["reconcile", "defaults_from_env", "configure_scope", "runtime"]
