"""Prometheus metrics of the operator, in the text exposition format (no client library: a few gauges).

What the operator wrote last into each InferenceJob's status, kept per object (O(InferenceJobs)):
InferenceJobs by phase, parts done and total, the current stage's work done and total and its rate
(status.progress), and the operator's own work: passes and API requests, the counts
bench_operator.py reads. Served on ``--metrics-port`` (the chart's optional Service and ServiceMonitor
scrape it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .status import PHASES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in kv.items()) + "}"


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.counters: dict[str, Callable[[], float]] = {}
        self.sections: list[Callable[[], list[str]]] = []  # more metric lines (the work queue's: handlers.py)

    def record(self, namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
        with self._lock:
            if status is None:
                self._jobs.pop((namespace, name), None)
                return
            parts, progress = status.get("parts") or {}, status.get("progress") or {}
            self._jobs[(namespace, name)] = {
                "phase": status.get("phase") or "Pending", "parts_done": int(parts.get("succeeded") or 0),
                "parts_total": int(parts.get("total") or 0), "stage": progress.get("stage") or "",
                "unit": progress.get("unit") or "", "work_done": int(progress.get("done") or 0),
                "work_total": int(progress.get("total") or 0), "rate": float(progress.get("ratePerSecond") or 0.0)}

    def render(self) -> str:
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
        for metric, value in sorted(self.counters.items()):
            out += [f"# TYPE {metric} counter", f"{metric} {value()}"]
        for section in self.sections:
            out += section()
        return "\n".join(out) + "\n"


def serve(registry: Registry, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``/metrics`` in a daemon thread; returns the server (``server_address`` has the bound port)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.split("?")[0] != "/metrics":
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
