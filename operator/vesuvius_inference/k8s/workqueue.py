"""A FIFO work queue of InferenceJob keys with client-go's workqueue semantics. Pure (a lock and a clock).

client-go's ``util/workqueue`` (queue.go, ``Typed[T]``) keeps three structures: ``queue`` (the order),
``dirty`` (keys that need a pass) and ``processing`` (keys a worker holds). ``Add`` marks a key dirty and
appends it to the queue unless it is already dirty or being processed; ``Get`` pops the head, moves it to
``processing`` and clears its dirty mark; ``Done`` takes it out of ``processing`` and, if it was marked
dirty meanwhile, appends it to the BACK of the queue. Hence, as its doc.go says:

- Fair: keys are processed in the order in which they were added;
- Stingy: a key is never processed by two workers at once, and added many times before it is processed,
  it is processed once.

The queue this replaces kept a re-dirtied key on its worker thread and ran it again at once, so an
InferenceJob whose Jobs emit events during each of its passes held a thread for ever (issue 24: a new run
waited 26 s, then got no pass within 40 s). Here it goes to the back, behind every key that waited.

Two additions, both small: ``min_interval_s`` (no pass of a key sooner than this after its last pass
began: client-go's ``AddAfter``, delaying_queue.go, here only for re-dirtied keys), and payloads (the
final bodies of deleted Jobs, handed to the key's next pass). The queue also knows how long its oldest
waiting work has waited, which is what liveness asks (handlers.py), and its depth, for the metrics.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)  # the passes use (namespace, name)


@dataclass(frozen=True)
class Item(Generic[Key]):
    """What ``get`` hands a worker: the key, the payloads gathered since its last pass, and how long it waited."""

    key: Key
    payload: list[Any]
    waited_s: float


class WorkQueue(Generic[Key]):
    def __init__(self, min_interval_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval_s, self.clock = float(min_interval_s), clock
        self._queue: deque[Key] = deque()
        self._dirty: set[Key] = set()
        self._processing: set[Key] = set()
        self._payload: dict[Key, list[Any]] = {}
        self._dirty_since: dict[Key, float] = {}  # when the key became dirty (its oldest unserved request)
        self._started: dict[Key, float] = {}  # when its pass (in processing) began
        self._not_before: dict[Key, float] = {}  # min_interval_s after its last pass began
        self._delayed: list[tuple[float, int, Key]] = []  # (ready at, seq, key): re-dirtied, waiting for the interval
        self._delayed_keys: set[Key] = set()
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._shutdown = False

    # ---- client-go's Add / Get / Done -------------------------------------------------------------

    def add(self, key: Key, payload: Sequence[Any] = ()) -> None:
        with self._cond:
            if self._shutdown:
                return
            if payload:
                self._payload.setdefault(key, []).extend(payload)
            if key in self._dirty:
                return
            self._dirty.add(key)
            self._dirty_since[key] = self.clock()
            if key in self._processing:
                return  # Done puts it back, at the back
            self._push(key)

    def _push(self, key: Key) -> None:
        ready = self._not_before.get(key, 0.0)
        if ready > self.clock():
            heapq.heappush(self._delayed, (ready, next(self._seq), key))
            self._delayed_keys.add(key)
        else:
            self._queue.append(key)
            self._cond.notify()

    def _promote(self) -> float | None:
        """Move delayed keys that are due to the back of the queue; returns when the next one is due."""
        now = self.clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._delayed_keys.discard(key)
            self._queue.append(key)
        return self._delayed[0][0] if self._delayed else None

    def get(self, timeout: float | None = None) -> Item[Key] | None:
        """The head of the queue (blocking up to ``timeout``; 0: not at all); None on timeout or shutdown."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                next_due = self._promote()
                if self._queue:
                    key = self._queue.popleft()
                    now = self.clock()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    self._started[key] = now
                    waited = now - self._dirty_since.pop(key, now)
                    return Item(key, self._payload.pop(key, []), waited)
                if self._shutdown:
                    return None
                now = self.clock()
                if deadline is not None and now >= deadline:
                    return None
                waits = [t - now for t in (deadline, next_due) if t is not None]
                self._cond.wait(max(0.0, min(waits)) if waits else None)

    def done(self, key: Key) -> None:
        with self._cond:
            self._processing.discard(key)
            began = self._started.pop(key, self.clock())
            if self.min_interval_s > 0:
                self._not_before[key] = began + self.min_interval_s
            if key in self._dirty:
                self._push(key)
            elif key not in self._delayed_keys:
                self._not_before.pop(key, None)
            self._cond.notify_all()

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    # ---- what liveness and the metrics read ------------------------------------------------------

    def depth(self) -> int:
        """Keys waiting for a pass (queued or delayed), not those being processed: client-go's ``Len`` plus
        the delayed ones."""
        with self._cond:
            return len(self._queue) + len(self._delayed)

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    def oldest_s(self) -> float:
        """How long the oldest outstanding work has waited: a key dirty and not yet picked up, or a pass still
        running (0 when idle). What liveness compares with the resync period."""
        with self._cond:
            now = self.clock()
            times = [t for k, t in self._dirty_since.items() if k not in self._processing]
            times += list(self._started.values())
            return max((now - t for t in times), default=0.0)

    def order(self) -> list[Key]:
        """The queue's order now (tests)."""
        with self._cond:
            self._promote()
            return list(self._queue)
