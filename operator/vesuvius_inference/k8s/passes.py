"""Reconcile passes per InferenceJob: a fair work queue (workqueue.py) served by a few worker threads.

A predict Job of 10,000 parts changes status every time a pod starts, ends or becomes ready, and each
change is a watch event. An event marks its InferenceJob dirty in the queue; a burst of events before
its pass costs one pass; an event during its pass costs exactly one more, at the back of the queue, no
sooner than ``min_interval_s`` after the last began (client-go's workqueue semantics: one worker per key
at a time, FIFO across keys, so a busy InferenceJob cannot starve a new one). Deleted Jobs' final bodies
(from DELETED events) are collected and handed to that next pass.

The worker loop is client-go's ``processNextWorkItem`` (e.g. pkg/controller/job/job_controller.go,
worker): Get, run, Done, whatever the run raised. What it measures: passes that finished, their latency
(from the request that made the key dirty to the end of its pass, and the pass alone), and when the last
one finished; liveness and the metrics read them (handlers.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.k8s.workqueue import WorkQueue

log = logging.getLogger("vesuvius_inference.operator")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Latency:
    """A Prometheus histogram of seconds (cumulative buckets, sum and count)."""

    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        i = next((i for i, b in enumerate(self.buckets) if seconds <= b), len(self.buckets))
        self.counts[i] += 1
        self.total += seconds
        self.n += 1

    def lines(self, metric: str, text: str) -> list[str]:
        out = [f"# HELP {metric} {text}", f"# TYPE {metric} histogram"]
        running = 0
        for b, c in zip(self.buckets, self.counts, strict=False):
            running += c
            out.append(f'{metric}_bucket{{le="{b:g}"}} {running}')
        out += [f'{metric}_bucket{{le="+Inf"}} {self.n}', f"{metric}_sum {self.total:.6f}", f"{metric}_count {self.n}"]
        return out


class Passes:
    def __init__(self, run: Callable[[str, str, Sequence[dict[str, Any]]], Any], min_interval_s: float = 1.0,
                 workers: int = 4, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.clock = run, clock
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(min_interval_s, clock)
        self._lock = threading.Lock()
        self.requested = 0
        self.ran = 0
        self.failed = 0
        self.last_finished = clock()  # the last pass that finished without an error (start: not stale)
        self.pass_latency = Latency()  # one pass
        self.queue_latency = Latency()  # from the request to the end of its pass
        self._threads = [threading.Thread(target=self._worker, name=f"reconcile-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def request(self, namespace: str, name: str, gone: Sequence[dict[str, Any]] = ()) -> None:
        """Ask for a pass (thread-safe, returns at once)."""
        with self._lock:
            self.requested += 1
        self.queue.add((namespace, name), gone)

    def _worker(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            began = self.clock()
            ok = False
            try:
                self.run(item.key[0], item.key[1], item.payload)
                ok = True
            except Exception:  # noqa: BLE001 - the next event or the resync tries again
                log.exception("reconcile of %s/%s failed", *item.key)
            finally:
                self.queue.done(item.key)
            end = self.clock()
            with self._lock:
                self.ran += 1
                if ok:
                    self.last_finished = end
                    self.pass_latency.observe(end - began)
                    self.queue_latency.observe(item.waited_s + end - began)
                else:
                    self.failed += 1

    def shutdown(self) -> None:
        self.queue.shutdown()
