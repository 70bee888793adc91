"""Storage outages wait instead of failing: retry unreachable storage with backoff, for a bounded time.

An object store that restarts (a 5-minute S3 or MinIO restart, a load balancer that drops
connections for a minute) used to fail every part in flight with exit 74 at its first failed request,
after the client's own few retries. Each failed pod costs the work since its last checkpoint, a new
pod, a model download, and on Kubernetes one of the part's retries. Here a request that fails for a
reason that says "not reachable now" (errors.is_transient: connection refused or reset, timeouts,
5xx, throttling; never 403/404 or missing credentials) is tried again with backoff until the outage
has lasted ``--storage_wait_s`` (config.py; 0: fail at once, as before), then the stage exits 74.

One outage clock per process (:data:`OUTAGE`), shared by every thread and coroutine: it starts at the
first failure and stops at the next success, whoever makes it. The backoff grows with the outage's
age (about the time it has lasted, between ``base_s`` and ``cap_s``, with jitter so that 256 pods do not
return in step), so a request that joins late does not start again at the shortest delay. One log line
per attempt window (not per failing request) says what failed and how much longer the run waits::

    storage unreachable (ConnectionRefusedError: [Errno 111] Connect call failed) reading the input
    http://...: retrying for up to 4m30s (--storage_wait_s 300)

and one line when it answers again. The operator reads the last line of a pod's log (progress
sampling, k8s/observe.py) and shows the ``StorageUnreachable`` condition while pods wait
(storagelines.waiting_line is the parser it uses).

Where it applies: every Zarr store the stages open (:func:`waiting_store` wraps storage.zarr_store's
stores: input reads, part stores, output chunks), storage.py's small-object helpers (markers, JSON,
listings) and the model download (model_source.py). The upstream models: client-go's
``wait.ExponentialBackoff`` with jitter (k8s.io/apimachinery/pkg/util/wait/backoff.go) and kopf's
``errors_mode=TEMPORARY`` backoff for API requests (kopf/_cogs/clients/auth.py, reauthenticated_request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from vesuvius_inference.contract.errors import StorageUnavailable, VesuviusError, is_transient
from vesuvius_inference.contract.place import Place
from vesuvius_inference.contract.progress import format_duration as duration
from vesuvius_inference.contract.storagelines import PREFIX, RECOVERED

log = logging.getLogger("vesuvius_inference.store.storage")
T = TypeVar("T")


def _text(exc: BaseException) -> str:
    root = exc
    while isinstance(root, VesuviusError) and root.__cause__ is not None:
        root = root.__cause__
    text = " ".join(f"{type(root).__name__}: {root}".split())
    return text if len(text) <= 200 else text[:199] + "…"


class Outage:
    """The process's outage clock and backoff (module docstring). ``clock``/``sleep``/``rng`` are injectable."""

    def __init__(self, wait_s: float = 0.0, *, base_s: float = 0.5, cap_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.wait_s, self.base_s, self.cap_s, self.clock, self.rng = float(wait_s), base_s, cap_s, clock, rng
        self.began: float | None = None
        self.retries = 0
        self.outages = 0  # outages waited out in this process (for tests and summaries)
        self._next_log = 0.0
        self._lock = threading.Lock()

    def configure(self, wait_s: float) -> None:
        with self._lock:
            self.wait_s, self.began, self.retries = float(wait_s), None, 0

    def delay(self, exc: BaseException, doing: str = "") -> float | None:
        """After a transient failure: seconds to wait before trying again, or None: give up (raise)."""
        with self._lock:
            now = self.clock()
            if self.began is None:
                self.began, self.retries, self._next_log = now, 0, now
            age = now - self.began
            left = self.wait_s - age
            if left <= 0:
                return None
            self.retries += 1
            d = min(self.cap_s, max(self.base_s, age)) * (0.5 + 0.5 * self.rng())
            d = min(d, left)
            if now >= self._next_log:
                self._next_log = now + d
                where = f" {doing}" if doing else ""
                log.warning("%s%s)%s: retrying for up to %s (--storage_wait_s %g)", PREFIX, _text(exc), where,
                            duration(left), self.wait_s)
            return d

    def recovered(self) -> None:
        """A request succeeded: the outage, if any, is over."""
        if self.began is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self.began is None:
                return
            waited, retries = self.clock() - self.began, self.retries
            self.began, self.retries = None, 0
            self.outages += 1
        log.warning("%s after %s (%d retries); continuing", RECOVERED, duration(waited), retries)

    def gave_up(self, exc: BaseException, doing: str) -> BaseException:
        """The error to raise once the wait is over (the original one, when nothing waited)."""
        if self.wait_s <= 0 or isinstance(exc, StorageUnavailable):
            return exc
        what = f"{doing}: " if doing else ""
        err = StorageUnavailable(
            f"{what}storage unreachable for longer than --storage_wait_s {self.wait_s:g} ({_text(exc)}); completed "
            "work is kept: rerun when the store answers again (a rerun resumes)")
        err.__cause__ = exc
        return err


OUTAGE = Outage()


def configure(wait_s: float) -> None:
    """Set this process's wait (the command's --storage_wait_s)."""
    OUTAGE.configure(wait_s)


def _retry_in(o: Outage, e: Exception, doing: str) -> float:
    """Seconds until the next try of a failed request (the sync and async loops share it); re-raises what
    is not an outage, and gives up (exit 74) once the outage outlasts the wait."""
    if not is_transient(e):
        raise e
    d = o.delay(e, doing)
    if d is None:
        raise o.gave_up(e, doing)  # noqa: B904 - chained in gave_up: the cause is the point
    return d


def call(fn: Callable[..., T], *args: Any, doing: str = "", outage: Outage | None = None,
         sleep: Callable[[float], None] = time.sleep, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, tried again while storage is unreachable and the wait allows."""
    o = outage or OUTAGE
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            sleep(_retry_in(o, e, doing))
            continue
        o.recovered()
        return result


async def acall(fn: Callable[..., Awaitable[T]], *args: Any, doing: str = "", outage: Outage | None = None,
                **kwargs: Any) -> T:
    """The same for a coroutine function, sleeping on the event loop (other requests go on meanwhile)."""
    o = outage or OUTAGE
    while True:
        try:
            result = await fn(*args, **kwargs)
        except Exception as e:
            await asyncio.sleep(_retry_in(o, e, doing))
            continue
        o.recovered()
        return result


def waiting(doing: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: the function's storage requests wait out outages (``doing`` names it in the log line)."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        def wrapped(*args: Any, **kwargs: Any) -> T:
            what = f"{doing} {args[0]}" if args and isinstance(args[0], (str, Place)) else doing
            return call(fn, *args, doing=what, **kwargs)

        return functools.update_wrapper(wrapped, fn)  # its name, doc and __wrapped__

    return wrap


def waiting_store(store: Any, url: str) -> Any:
    """A Zarr store whose requests wait out outages (zarr's own ``WrapperStore``, every method forwarded)."""
    from zarr.storage import WrapperStore

    class Waiting(WrapperStore[Any]):
        def _with_store(self, inner: Any) -> Any:
            return Waiting(inner)

        async def get(self, key: str, *a: Any, **kw: Any) -> Any:
            return await acall(self._store.get, key, *a, doing=f"reading {url}/{key}", **kw)

        async def get_partial_values(self, *a: Any, **kw: Any) -> Any:
            return await acall(self._store.get_partial_values, *a, doing=f"reading {url}", **kw)

        async def exists(self, key: str) -> bool:
            return await acall(self._store.exists, key, doing=f"reading {url}/{key}")

        async def getsize(self, key: str) -> int:  # WrapperStore leaves it to Store's default, which GETs the value
            return int(await acall(self._store.getsize, key, doing=f"reading the size of {url}/{key}"))

        async def set(self, key: str, value: Any) -> None:
            await acall(self._store.set, key, value, doing=f"writing {url}/{key}")

        async def set_if_not_exists(self, key: str, value: Any) -> None:
            await acall(self._store.set_if_not_exists, key, value, doing=f"writing {url}/{key}")

        async def delete(self, key: str) -> None:
            await acall(self._store.delete, key, doing=f"deleting {url}/{key}")

        async def _listed(self, method: str, *a: Any) -> list[str]:
            async def collect() -> list[str]:
                return [k async for k in getattr(self._store, method)(*a)]

            return await acall(collect, doing=f"listing {url}")

        async def list(self) -> AsyncIterator[str]:
            for k in await self._listed("list"):
                yield k

        async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
            for k in await self._listed("list_prefix", prefix):
                yield k

        async def list_dir(self, prefix: str) -> AsyncIterator[str]:
            for k in await self._listed("list_dir", prefix):
                yield k

    return Waiting(store)
