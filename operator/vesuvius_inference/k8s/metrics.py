"""Prometheus metrics of the operator, in the text exposition format (no client library: a few gauges).

What the operator wrote last into each InferenceJob's status, kept per object (O(InferenceJobs)):
InferenceJobs by phase, parts done and total, the current stage's work done and total and its rate
(status.progress), the whole run's fraction done and time left (status.run), and the operator's own work: passes and API requests, the counts
bench_operator.py reads. Served on ``--metrics-port`` (the chart's optional Service and ServiceMonitor
scrape it), to the cluster's monitoring only (metricsauth.py: TokenReview + SubjectAccessReview).

Series do not outlive their InferenceJobs: a deleted one's go at once (handlers.py's DELETED event, or
a pass that finds it gone); a finished one's ``finished_ttl_s`` after a pass first saw it finish; an
unfinished one's when no pass refreshed it for ``stale_s`` (the resync refreshes the live ones every
minute). The operator's health (:class:`Health`): its reconcile queue depth, pass latency (a
histogram), failed passes, API errors by status, and the time of the last successful pass. Code that
measures them calls the module functions (:func:`set_queue_depth`, :func:`observe_pass`,
:func:`count_api_error`), which feed the process's :data:`HEALTH`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vesuvius_inference.k8s.opsettings import env_value
from vesuvius_inference.k8s.status import PHASES

TERMINAL = ("Succeeded", "Failed")
# Pass latency buckets (seconds): a pass is a few API requests, so milliseconds to seconds; a long tail
# means a slow API server (the Job controller's own sync histograms use similar exponential buckets).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


class Health:
    """The operator's own health, fed by whoever measures it (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self.clock = clock
        self.queue_depth = 0
        self.buckets = [0] * len(BUCKETS)
        self.pass_count = 0
        self.pass_sum = 0.0
        self.pass_failures = 0
        self.api_errors: dict[str, int] = {}
        self.last_success = 0.0  # Unix time of the last pass that ended without an exception; 0: none yet

    def set_queue_depth(self, n: int) -> None:
        with self._lock:
            self.queue_depth = int(n)

    def observe_pass(self, seconds: float, ok: bool = True) -> None:
        with self._lock:
            self.pass_count += 1
            self.pass_sum += seconds
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self.buckets[i] += 1
            if ok:
                self.last_success = self.clock()
            else:
                self.pass_failures += 1

    def count_api_error(self, status: int | str) -> None:
        with self._lock:
            key = str(status or "none")
            self.api_errors[key] = self.api_errors.get(key, 0) + 1

    def render(self) -> list[str]:
        with self._lock:
            out = ["# HELP vesuvius_operator_queue_depth InferenceJobs waiting for a reconcile pass.",
                   "# TYPE vesuvius_operator_queue_depth gauge", f"vesuvius_operator_queue_depth {self.queue_depth}",
                   "# HELP vesuvius_operator_pass_seconds Duration of reconcile passes.",
                   "# TYPE vesuvius_operator_pass_seconds histogram"]
            out += [f'vesuvius_operator_pass_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(BUCKETS, self.buckets)]
            out += [f'vesuvius_operator_pass_seconds_bucket{{le="+Inf"}} {self.pass_count}',
                    f"vesuvius_operator_pass_seconds_sum {self.pass_sum}",
                    f"vesuvius_operator_pass_seconds_count {self.pass_count}",
                    "# HELP vesuvius_operator_pass_failures_total Reconcile passes that ended in an exception.",
                    "# TYPE vesuvius_operator_pass_failures_total counter",
                    f"vesuvius_operator_pass_failures_total {self.pass_failures}",
                    "# HELP vesuvius_operator_api_errors_total Kubernetes API requests that failed, by HTTP status.",
                    "# TYPE vesuvius_operator_api_errors_total counter"]
            out += [f"vesuvius_operator_api_errors_total{_labels(code=k)} {n}" for k, n in sorted(self.api_errors.items())]
            out += ["# HELP vesuvius_operator_last_successful_pass_timestamp_seconds Unix time of the last pass "
                    "that succeeded (0: none yet).",
                    "# TYPE vesuvius_operator_last_successful_pass_timestamp_seconds gauge",
                    f"vesuvius_operator_last_successful_pass_timestamp_seconds {self.last_success}"]
        return out


HEALTH = Health()


def set_queue_depth(n: int) -> None:
    """InferenceJobs waiting for a pass now (the pass loop calls it when its queue changes)."""
    HEALTH.set_queue_depth(n)


def observe_pass(seconds: float, ok: bool = True) -> None:
    """One reconcile pass ended after ``seconds``; ``ok`` False: it raised."""
    HEALTH.observe_pass(seconds, ok)


def count_api_error(status: int | str) -> None:
    """One Kubernetes API request failed with this HTTP status (0 or "none": no answer)."""
    HEALTH.count_api_error(status)


class Registry:
    def __init__(self, finished_ttl_s: float | None = None, stale_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic, *, health: Health | None = None) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.counters: dict[str, Callable[[], float]] = {}
        self.finished_ttl_s = env_value("metrics_finished_s") if finished_ttl_s is None else finished_ttl_s
        self.stale_s = env_value("metrics_stale_s") if stale_s is None else stale_s
        self.clock = clock
        self.health = HEALTH if health is None else health
        self.sections: list[Callable[[], list[str]]] = []  # more metric lines (the work queue's: handlers.py)

    def record(self, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        with self._lock:
            if status is None:
                self._jobs.pop((namespace, name), None)
                return
            now = self.clock()
            parts, progress = status.get("parts") or {}, status.get("progress") or {}
            phase = status.get("phase") or "Pending"
            old = self._jobs.get((namespace, name)) or {}
            finished = (old.get("finished") or now) if phase in TERMINAL else None
            self._jobs[(namespace, name)] = {
                "phase": phase, "parts_done": int(parts.get("succeeded") or 0),
                "parts_total": int(parts.get("total") or 0), "stage": progress.get("stage") or "",
                "unit": progress.get("unit") or "", "work_done": int(progress.get("done") or 0),
                "work_total": int(progress.get("total") or 0), "rate": float(progress.get("ratePerSecond") or 0.0),
                "run_done": (status.get("run") or {}).get("fraction"),
                "run_eta": (status.get("run") or {}).get("etaSeconds"), "seen": now, "finished": finished}

    def expire(self) -> None:
        """Drop the series of long-finished InferenceJobs and of ones no pass refreshed (deleted unseen)."""
        now = self.clock()
        with self._lock:
            for key, j in list(self._jobs.items()):
                if (j["finished"] is not None and now - j["finished"] > self.finished_ttl_s) or (
                        j["finished"] is None and now - j["seen"] > self.stale_s):
                    del self._jobs[key]

    def tracked(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._jobs)

    def render(self) -> str:
        self.expire()
        with self._lock:
            jobs = dict(self._jobs)
        out = ["# HELP vesuvius_inferencejobs InferenceJobs by phase.", "# TYPE vesuvius_inferencejobs gauge"]
        for phase in PHASES:
            out.append(f"vesuvius_inferencejobs{_labels(phase=phase)} "
                       f"{sum(1 for j in jobs.values() if j['phase'] == phase)}")
        gauges = (("vesuvius_inferencejob_parts_done", "Predict parts done.", "parts_done"),
                  ("vesuvius_inferencejob_parts_total", "Predict parts.", "parts_total"))
        for metric, text, key in gauges:
            out += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
            out += [f"{metric}{_labels(namespace=ns, name=n)} {j[key]}" for (ns, n), j in sorted(jobs.items())]
        work = (("vesuvius_inferencejob_work_done", "Work of the current stage done (patches for predict).",
                 "work_done"),
                ("vesuvius_inferencejob_work_total", "Work of the current stage (patches for predict).", "work_total"),
                ("vesuvius_inferencejob_work_per_second", "Rate of the current stage across its running pods.",
                 "rate"))
        for metric, text, key in work:
            out += [f"# HELP {metric} {text}", f"# TYPE {metric} gauge"]
            out += [f"{metric}{_labels(namespace=ns, name=n, stage=j['stage'], unit=j['unit'])} {j[key]}"
                    for (ns, n), j in sorted(jobs.items()) if j["stage"]]
        out += ["# HELP vesuvius_inferencejob_run_done_ratio The whole run's work done, 0 to 1 (predict, blend and "
                "finalize weighed by their wall time: status.run).", "# TYPE vesuvius_inferencejob_run_done_ratio gauge"]
        out += [f"vesuvius_inferencejob_run_done_ratio{_labels(namespace=ns, name=n)} {float(j['run_done']):g}"
                for (ns, n), j in sorted(jobs.items()) if j["run_done"] is not None]
        out += ["# HELP vesuvius_inferencejob_run_eta_seconds Time left for the whole run, where known.",
                "# TYPE vesuvius_inferencejob_run_eta_seconds gauge"]
        out += [f"vesuvius_inferencejob_run_eta_seconds{_labels(namespace=ns, name=n)} {float(j['run_eta']):g}"
                for (ns, n), j in sorted(jobs.items()) if j["run_eta"] is not None]
        for metric, value in sorted(self.counters.items()):
            out += [f"# TYPE {metric} counter", f"{metric} {value()}"]
        extra = [line for section in self.sections for line in section()]  # may update the health figures
        out += self.health.render()
        out += extra
        return "\n".join(out) + "\n"


def serve(registry: Registry, port: int, host: str = "0.0.0.0", *, auth: Any = None, tls: Any = None
          ) -> ThreadingHTTPServer:
    """Serve ``/metrics`` in a daemon thread; returns the server (``server_address`` has the bound port).

    ``auth``: a metricsauth.ReviewAuth (every request authenticated and authorised by the API server, as
    controller-runtime's filters.WithAuthenticationAndAuthorization does); None: served to anyone.
    ``tls``: a metricsauth.CertFiles: HTTPS with its current certificate (reloaded when the files change)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?")[0]
            if auth is not None:
                verdict = auth.check(self.headers.get("Authorization"), path, "get")
                if verdict.code != 200:
                    data = (verdict.message + "\n").encode()
                    self.send_response(verdict.code)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    if verdict.code == 401:
                        self.send_header("WWW-Authenticate", 'Bearer realm="vesuvius-inference-operator"')
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
            if path != "/metrics":
                self.send_error(404)
                return
            data = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def get_request(self) -> Any:
            conn, addr = self.socket.accept()
            if tls is not None:  # the handshake happens on the handler's thread, at its first read
                conn = tls.context().wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            return conn, addr

    server = Server((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
