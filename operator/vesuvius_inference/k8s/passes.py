"""Reconcile passes per InferenceJob, coalesced: a burst of Job events costs one pass, not one each.

A predict Job of 10,000 parts changes status every time a pod starts, ends or becomes ready, and each
change is a watch event. A pass per event would queue thousands of identical passes. Instead an event
marks its InferenceJob dirty: if no pass runs for it, one starts now; if one runs, exactly one more
follows it, no sooner than ``min_interval_s`` after the last began. Deleted Jobs' final bodies (from
DELETED events) are collected and handed to that next pass. Passes of one InferenceJob never overlap;
different InferenceJobs run in parallel on a small thread pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vesuvius_inference.operator")
Key = tuple[str, str]


@dataclass
class _State:
    running: bool = False
    dirty: bool = False
    gone: list[dict[str, Any]] = field(default_factory=list)


class Passes:
    def __init__(self, run: Callable[[str, str, Sequence[dict[str, Any]]], Any], min_interval_s: float = 1.0,
                 workers: int = 4, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.run, self.min_interval_s, self.clock, self.sleep = run, min_interval_s, clock, sleep
        self._states: dict[Key, _State] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self.requested = 0
        self.ran = 0

    def request(self, namespace: str, name: str, gone: Sequence[dict[str, Any]] = ()) -> None:
        """Ask for a pass (thread-safe, returns at once)."""
        key = (namespace, name)
        with self._lock:
            self.requested += 1
            st = self._states.setdefault(key, _State())
            st.gone.extend(gone)
            st.dirty = True
            if st.running:
                return
            st.running = True
        self._pool.submit(self._loop, key)

    def _loop(self, key: Key) -> None:
        while True:
            with self._lock:
                st = self._states[key]
                gone, st.gone, st.dirty = st.gone, [], False
            began = self.clock()
            try:
                self.run(key[0], key[1], gone)
            except Exception:  # noqa: BLE001 - the next event or the resync tries again
                log.exception("reconcile of %s/%s failed", *key)
            with self._lock:
                self.ran += 1
                if not st.dirty:
                    st.running = False
                    if not st.gone:
                        self._states.pop(key, None)
                    return
            self.sleep(max(0.0, self.min_interval_s - (self.clock() - began)))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
