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

The resync lists only unfinished InferenceJobs: a pass that leaves one Succeeded or Failed (no retry
pending) labels it ``vesuvius.dev/finished=true``, and the resync asks the API server for
``!vesuvius.dev/finished``, a page (``limit``/``continue``) at a time: at 20,000 InferenceJobs, mostly
finished, listing them all every minute cost ~414 MiB (issue 24). Liveness (kopf's ``--liveness``
endpoint runs every ``@kopf.on.probe`` handler, kopf/_core/engines/probing.py; a handler that raises
makes it answer 500) fails when work has waited for a pass for ``VESUVIUS_LIVENESS_RESYNCS`` resync
periods (default 3) and no pass finished in that time, or when the resync itself stopped: every thread
hung is then a restart, not an operator that looks healthy and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import kopf

from vesuvius_inference.k8s import act, clients, manifests, metrics, policy
from vesuvius_inference.k8s.decide import decide
from vesuvius_inference.k8s.metrics import Registry, serve
from vesuvius_inference.k8s.observe import Observer, Settings
from vesuvius_inference.k8s.opsettings import env_value
from vesuvius_inference.k8s.passes import Passes
from vesuvius_inference.k8s.policy import SecretLabels

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
FINISHED = "vesuvius.dev/finished"  # label: set at completion, removed when a retry starts; the resync skips it
RESYNC_PAGE = 500
log = logging.getLogger("vesuvius_inference.operator")

_scope: dict[str, Any] = {"namespaces": [], "all": False, "metrics_port": 0, "metrics_auth": "none",
                          "metrics_cert_dir": ""}
_locks: dict[tuple[str, str], threading.Lock] = {}
_guard = threading.Lock()


def configure_scope(namespaces: Sequence[str], all_namespaces: bool, metrics_port: int = 0,
                    *, metrics_auth: str = "none", metrics_cert_dir: str = "") -> None:
    """Where the periodic resync looks (the operator's --namespace / --all-namespaces), --metrics-port,
    --metrics-auth and --metrics-cert-dir."""
    _scope.update(namespaces=list(namespaces), all=all_namespaces, metrics_port=metrics_port,
                  metrics_auth=metrics_auth, metrics_cert_dir=metrics_cert_dir)


def resync_seconds() -> float:
    """Interval of the periodic reconcile of unfinished InferenceJobs (0 turns it off)."""
    return float(env_value("resync_s"))


@dataclass
class Runtime:
    """What every pass shares: the clients, the observer's memory, the pass queue, the metrics."""

    clients: clients.Clients
    observer: Observer
    passes: Passes
    registry: Registry
    stats: dict[str, float]
    policy: policy.Policy
    secrets: SecretLabels


_runtime: list[Runtime] = []


def runtime() -> Runtime:
    with _guard:
        if not _runtime:
            c = clients.build()
            defaults = manifests.defaults_from_env()
            stats = {"passes": 0.0, "resyncs": 0.0, "resync_at": time.monotonic()}
            registry = Registry()
            registry.counters.update({
                "vesuvius_operator_reconcile_passes_total": lambda: stats["passes"],
                # each resync counted once it has queued its passes: with the queue drained after it, what the
                # resync would do is done (a test's bound on "nothing happens", instead of a fixed sleep)
                "vesuvius_operator_resyncs_total": lambda: stats["resyncs"],
                "vesuvius_operator_api_requests_total": lambda: c.requests.value})
            passes = Passes(lambda ns, name, gone: reconcile(ns, name, gone),
                            float(env_value("min_pass_interval_s")))
            registry.sections.append(lambda: queue_metrics(passes))
            _runtime.append(Runtime(c, Observer(c, Settings.from_env(), lambda: defaults), passes, registry, stats,
                                    policy.Policy.from_env(), policy.SecretLabels(c.core)))
        return _runtime[0]


def queue_metrics(passes: Passes) -> list[str]:
    """The work queue's own families, in the exposition format (metrics.py renders them after the health
    families). Its depth goes to the health metrics (metrics.set_queue_depth) and pass durations and failures
    are observed there (reconcile -> metrics.observe_pass): each family is exposed once, or a Prometheus
    scrape would fail on a second TYPE line."""
    metrics.set_queue_depth(passes.queue.depth())
    with passes._lock:
        queue_lines = passes.queue_latency.lines(
            "vesuvius_operator_pass_wait_seconds", "From the request that made an InferenceJob dirty to the end "
                                                   "of its pass (queueing included).")
    return ["# HELP vesuvius_operator_queue_processing Passes running now.",
            "# TYPE vesuvius_operator_queue_processing gauge",
            f"vesuvius_operator_queue_processing {passes.queue.processing()}",
            "# HELP vesuvius_operator_queue_oldest_seconds How long the oldest waiting work has waited.",
            "# TYPE vesuvius_operator_queue_oldest_seconds gauge",
            f"vesuvius_operator_queue_oldest_seconds {passes.queue.oldest_s():.3f}",
            *queue_lines]


def liveness_problem(passes: Passes, resync_at: float, resync_s: float, *, now: float,
                     periods: float = 3.0) -> str | None:
    """Why the operator is not alive (None: it is): work has waited ``periods`` resync periods and no pass
    finished meanwhile, or the resync has not listed for that long. Idle (nothing to do) is alive."""
    limit = periods * (resync_s if resync_s > 0 else 60.0)
    waited, since = passes.queue.oldest_s(), now - passes.last_finished
    if waited > limit and since > limit:
        return (f"no reconcile pass has finished for {since:.0f} s while work waits (the oldest for {waited:.0f} s, "
                f"{passes.queue.depth()} InferenceJobs queued, {passes.queue.processing()} passes running); "
                f"limit {limit:.0f} s = {periods:g} resync periods")
    if resync_s > 0 and now - resync_at > limit:
        return f"the periodic resync has not listed InferenceJobs for {now - resync_at:.0f} s (limit {limit:.0f} s)"
    return None


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
                    status = _pass(rt, namespace, name, gone=gone)
                    ok = True
                    return status
                except kubernetes.client.ApiException as e:
                    if e.status != 409:
                        raise
                    log.info("%s/%s changed during the pass; again", namespace, name)
            return None
        finally:
            metrics.observe_pass(time.monotonic() - began, ok)


def _pass(rt: Runtime, namespace: str, name: str, *, gone: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    began, requests = time.monotonic(), rt.clients.requests.value
    obs = rt.observer.observe(namespace, name, gone)
    if obs is None:
        rt.registry.record(namespace, name, None)
        return None
    obs.policy = rt.policy
    obs.secret = rt.secrets.for_spec(namespace, obs.body.get("spec") or {}, rt.policy)
    plan = decide(obs)
    outcomes = act.create(rt.clients, namespace, plan, uid=obs.body["metadata"].get("uid", ""))
    plan = decide(obs, outcomes)
    act.apply(rt.clients, namespace, obs.body, plan=plan)
    status = plan.status if plan.status is not None else obs.body.get("status")
    act.label_finished(rt.clients, namespace, obs.body, label=FINISHED, finished=finished(obs.body, status))
    rt.registry.record(namespace, name, status)
    rt.stats["passes"] += 1
    log.debug("pass %s/%s: %d API requests, %.0f ms", namespace, name, rt.clients.requests.value - requests,
              1000 * (time.monotonic() - began))
    return status


def finished(body: dict[str, Any], status: dict[str, Any] | None) -> bool:
    """Succeeded or Failed with no retry pending: nothing will change unless its spec does (which kopf's
    update handler sees)."""
    st = status or {}
    pending_retry = int((body.get("spec") or {}).get("retryFailedParts") or 0) > int(
        st.get("retryFailedPartsHandled") or 0)
    return st.get("phase") in ("Succeeded", "Failed") and not pending_retry


def _pages(custom: Any, namespace: str | None, page: int) -> Any:
    """Every unfinished InferenceJob (label selector ``!vesuvius.dev/finished``), one page per request."""
    token = None
    while True:
        kw: dict[str, Any] = {"label_selector": f"!{FINISHED}", "limit": page, "_continue": token}
        resp = (custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw) if namespace is None
                else custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw))
        yield from resp.get("items") or []
        token = (resp.get("metadata") or {}).get("continue")
        if not token:
            return


def _candidates(custom: Any, page: int = RESYNC_PAGE) -> list[tuple[str, str]]:
    """(namespace, name) of the InferenceJobs a resync should look at: unfinished, or with a retry pending
    (objects finished before the label existed are listed once more, and their pass labels them)."""
    scopes: list[str | None] = [None] if _scope["all"] else list(_scope["namespaces"])
    out = []
    for ns in scopes:
        for item in _pages(custom, ns, page):
            if not finished(item, item.get("status")):
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
        rt.stats["resync_at"] = time.monotonic()
        for namespace, name in items:
            rt.passes.request(namespace, name)
        rt.stats["resyncs"] += 1


# ---- kopf's diff base: digests, not the spec ---------------------------------------------------

LEGACY_DIFFBASE = "last-handled-configuration"  # kopf's StatusDiffBaseStorage key, written by earlier versions


def _digest(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


class DigestDiffBaseStorage(kopf.StatusDiffBaseStorage):
    """kopf's last-handled configuration as one digest per part of the object's essence (``spec=<16 hex>;
    metadata=<16 hex>`` in ``status.kopf.handled``), not the whole spec as JSON.

    kopf keeps the essence it last handled to tell a creation, a resume and an update apart and to diff the
    object (kopf/_cogs/configs/diffbase.py; kopf/_core/reactor/causes.py). Stored as JSON, in an annotation
    it made every ``kubectl describe ij`` open with a screen of it, and in the status it still filled a
    screen in the middle of it. The operator's only update handler asks for a pass when the spec changed and
    reads neither ``old`` nor ``diff``, so a digest per top-level part is enough: :meth:`fetch` returns the
    current essence where a part's digest matches, and a placeholder that differs from it where it does not,
    so kopf sees exactly which parts changed (a label the operator sets is no spec change). The JSON that
    earlier versions stored is read once and removed by the next store."""

    def __init__(self) -> None:
        super().__init__(name=act.KOPF_STATUS, field="status.{name}.handled")

    def fetch(self, *, body: kopf.Body) -> Any:
        import json

        mine = (body.get("status") or {}).get(act.KOPF_STATUS) or {}
        stored = mine.get("handled")
        if stored is None:
            legacy = mine.get(LEGACY_DIFFBASE)
            return json.loads(legacy) if legacy else None
        digests = dict(item.split("=", 1) for item in str(stored).split(";") if "=" in item)
        current = dict(self.build(body=body))
        old = {key: value for key, value in current.items() if digests.get(key) == _digest(value)}
        old.update({key: {"vesuvius.dev/digest": d} for key, d in digests.items() if key not in old})
        return old

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        text = ";".join(f"{key}={_digest(value)}" for key, value in sorted(dict(essence).items()))
        kopf_status = patch.setdefault("status", {}).setdefault(act.KOPF_STATUS, {})
        kopf_status["handled"] = text
        if LEGACY_DIFFBASE in ((body.get("status") or {}).get(act.KOPF_STATUS) or {}):
            kopf_status[LEGACY_DIFFBASE] = None  # merge patch: removed


# ---- kopf registration -------------------------------------------------------------------------

@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="vesuvius.dev")
    # kopf's last-handled configuration as digests in status.kopf.handled, not the spec as JSON in an
    # annotation (kubectl describe opened with a screen of it) nor in the status (a screen in its middle):
    # DigestDiffBaseStorage (kopf docs, "Persistence"). act.write_status leaves status.kopf alone.
    settings.persistence.diffbase_storage = DigestDiffBaseStorage()
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    # only the operator's Jobs, selected by the API server (not every Job of the namespace, filtered here)
    settings.watching.label_selectors["batch", "v1", "jobs"] = manifests.LABEL_JOB
    settings.watching.chunk_size = 500  # kopf's initial list, page by page
    # kopf's own requests time out too (its default is aiohttp's 5 minutes; watches end server-side first)
    connect, read = clients.timeout_s()
    settings.networking.request_timeout, settings.networking.connect_timeout = read, connect
    settings.watching.connect_timeout, settings.watching.client_timeout = connect, settings.watching.server_timeout + read


@kopf.on.startup()
async def _start(memo: kopf.Memo, **_: Any) -> None:
    rt = await asyncio.to_thread(runtime)
    if _scope["metrics_port"]:
        from vesuvius_inference.k8s.metricsauth import CertFiles, ReviewAuth

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
async def on_change(name: str, namespace: str | None, **_: Any) -> None:
    if namespace is not None:  # kopf's None is for cluster-scoped kinds; InferenceJobs are namespaced
        runtime().passes.request(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={manifests.LABEL_JOB: kopf.PRESENT})
async def on_job_event(body: kopf.Body, namespace: str | None, type: str | None, **_: Any) -> None:
    owner = body.get("metadata", {}).get("labels", {}).get(manifests.LABEL_JOB)
    if owner and namespace is not None:  # Jobs are namespaced: kopf's None never comes
        runtime().passes.request(namespace, owner, gone=[dict(body)] if type == "DELETED" else ())


@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_inferencejob_event(name: str, namespace: str | None, type: str | None, **_: Any) -> None:
    """A deleted InferenceJob's metrics series go at once (no finalizer needed: an event handler adds none)."""
    if type == "DELETED" and namespace is not None:  # namespaced kind: kopf's None never comes
        rt = runtime()
        rt.registry.record(namespace, name, None)
        rt.observer.forget(namespace, name)


@kopf.on.probe(id="reconciler")
def _alive(**_: Any) -> str:
    """kopf's liveness endpoint answers 500 when this raises (see the module docstring)."""
    rt = runtime()
    resync = resync_seconds() if _scope["all"] or _scope["namespaces"] else 0.0  # else no resync task runs
    problem = liveness_problem(rt.passes, rt.stats["resync_at"], resync, now=time.monotonic(),
                               periods=float(env_value("liveness_resyncs")))
    if problem is not None:
        log.error("liveness: %s", problem)
        raise kopf.PermanentError(problem)
    return "ok"


__all__ = ["reconcile", "configure_scope", "runtime"]
