"""Background writes with backpressure: the model never waits on storage unless storage is slower.

One pool per stage run. Writes are keyed (a chunk, a spill slot): a new write of a key waits for the
previous one, so the last write of a key always wins; at most ``max_pending`` writes are queued, so
memory held by queued buffers is bounded. A write error is raised in the caller at the next
``submit``/``wait`` of that key or at ``close``, never swallowed (the seed's writer lost errors after
its last submit). ``guard`` runs before every write: the claim check, so a run that lost its claim
stops writing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class WritePool:
    def __init__(self, workers: int = 4, max_pending: int | None = None, guard: Callable[[], None] | None = None,
                 name: str = "writer") -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.pending: dict[Hashable, Future[Any]] = {}
        self.max_pending = max_pending or 2 * workers
        self.guard = guard
        self.writes = 0

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        self.wait(key)
        while len(self.pending) >= self.max_pending:  # backpressure
            self.wait(next(iter(self.pending)))
        self.pending[key] = self.pool.submit(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if self.guard is not None:
            self.guard()
        out = fn(*args)
        self.writes += 1
        return out

    def wait(self, key: Hashable) -> None:
        fut = self.pending.pop(key, None)
        if fut is not None:
            fut.result()  # re-raises the write's error here, in the caller

    def wait_all(self) -> None:
        for key in list(self.pending):
            self.wait(key)

    def close(self) -> None:
        """Flush every write; raise the first write error."""
        try:
            self.wait_all()
        finally:
            self.pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop without waiting for errors (the run is failing anyway)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
