"""One live writer per unit of work: leases with a heartbeat, held in a small claim object.

A predict part (and each split of blend and finalize) is claimed before any byte is written. The
claim is a JSON object next to the work; a run creates it with a conditional write (O_EXCL-like
create: S3 ``If-None-Match: *``, a flock-guarded create on local disks) and renews it every
``lease_s / 4`` seconds with a compare-and-swap (S3 ``If-Match: <ETag>``). A second run that finds
the claim held watches its heartbeat counter: if it advances, the holder is alive and the newcomer
stops at once with ``Busy`` (exit 75, retryable); if it does not advance for ``lease_s`` seconds of
the newcomer's own clock, the holder is presumed dead and the claim is taken over with a
compare-and-swap, so of two newcomers only one wins.

Clock assumption (the same as Kubernetes' client-go leader election, tools/leaderelection/doc.go):
no clocks are compared across machines; each side measures durations on its own monotonic clock.
A holder that has not renewed for ``lease_s / 2`` (its renew deadline) stops writing and exits, a
taker waits ``lease_s`` without seeing a renewal: this is safe as long as no clock runs more than
2x faster than another and no holder pauses for more than ``lease_s / 2`` between checking its
claim and finishing a write. There is no fencing token: a holder frozen longer than that (SIGSTOP,
a partitioned node that keeps running) can still write. That is why a run's scratch lives under its
own run id, output chunks are deterministic (two runs of a part write identical bytes), and a part
marker is trusted only if its claim names the same run and says ``complete``.

On object stores without conditional writes (anything but local disks and S3) the claim is
best-effort (read-check-write); a warning says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, overload

from vesuvius_inference.contract.errors import Busy, classify, is_transient
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage, storagewait

log = logging.getLogger("vesuvius_inference.store.claims")
DEFAULT_LEASE_S = 60.0  # the --lease_s setting's default (config.py)
RUNNING, RELEASED, COMPLETE = "running", "released", "complete"


class ClaimLost(Busy):
    """This run's claim was taken over (or could not be renewed in time): it must stop writing."""


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


# -- conditional writes per storage kind -------------------------------------------------------

class _Backend:
    """read -> (doc, tag); create and replace succeed only if the object is absent / still ``tag``."""

    atomic = True

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        raise NotImplementedError

    def create(self, doc: dict[str, Any]) -> str | None:
        raise NotImplementedError

    def replace(self, doc: dict[str, Any], tag: str) -> str | None:
        raise NotImplementedError


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True).encode()


class _LocalBackend(_Backend):
    """A local (or NFS) file; compare-and-swap under an exclusive flock of a sidecar lock file."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None
        import hashlib

        return json.loads(raw), hashlib.sha256(raw).hexdigest()

    def _write(self, doc: dict[str, Any]) -> str:
        import hashlib

        raw = _encode(doc)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(raw)
        os.replace(tmp, self.path)
        return hashlib.sha256(raw).hexdigest()

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        with self._locked():
            return self._read()

    def create(self, doc: dict[str, Any]) -> str | None:
        with self._locked():
            if os.path.exists(self.path):
                return None
            return self._write(doc)

    def replace(self, doc: dict[str, Any], tag: str) -> str | None:
        with self._locked():
            _, current = self._read()
            if current != tag:
                return None
            return self._write(doc)


class _S3Backend(_Backend):
    """S3 conditional writes (If-None-Match / If-Match on PutObject), through s3fs's client."""

    def __init__(self, place: Place) -> None:
        self.fs, path = storage.filesystem(place)
        self.bucket, _, self.key = path.partition("/")

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        from fsspec.asyn import sync

        async def _get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            async with resp["Body"] as stream:
                return await stream.read(), resp["ETag"]

        try:
            raw, etag = sync(self.fs.loop, _get)
        except FileNotFoundError:
            return None, None
        return json.loads(raw), etag

    def _put(self, doc: dict[str, Any], **cond: str) -> str | None:
        try:
            out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=_encode(doc), **cond)
        except Exception as e:  # noqa: BLE001 - only precondition failures mean "someone else won"
            if is_precondition_failure(e):
                return None
            raise
        self.fs.invalidate_cache(f"{self.bucket}/{self.key}")
        return out["ETag"]

    def create(self, doc: dict[str, Any]) -> str | None:
        return self._put(doc, IfNoneMatch="*")

    def replace(self, doc: dict[str, Any], tag: str) -> str | None:
        return self._put(doc, IfMatch=tag)


def is_precondition_failure(e: BaseException) -> bool:
    """412 PreconditionFailed, or 409 ConditionalRequestConflict (S3's answer to a concurrent conditional
    write): someone else's write won. s3fs re-raises botocore's ClientError as an OSError, chained."""
    seen: BaseException | None = e
    while seen is not None:
        code = (getattr(seen, "response", None) or {}).get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return True
        if "pre-conditions you specified did not hold" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class _BestEffortBackend(_Backend):
    """Stores without conditional writes: read-compare-write, not atomic."""

    atomic = False

    def __init__(self, place: Place) -> None:
        self.place = place

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        doc = storage.read_json(self.place)
        return (doc, _encode(doc).hex()) if doc is not None else (None, None)

    def create(self, doc: dict[str, Any]) -> str | None:
        if self.read()[0] is not None:
            return None
        storage.write_json(self.place, doc)
        return self.read()[1]

    def replace(self, doc: dict[str, Any], tag: str) -> str | None:
        if self.read()[1] != tag:
            return None
        storage.write_json(self.place, doc)
        return self.read()[1]


_warned: set[str] = set()


def backend_for(place: Place) -> _Backend:
    if place.is_local:
        return _LocalBackend(place.local_path)
    if place.url.startswith(("s3://", "s3a://")):
        return _S3Backend(place)
    scheme = place.url.split("://", 1)[0]
    if scheme not in _warned:
        _warned.add(scheme)
        log.warning("%s:// has no conditional writes here: claims are best-effort (two runs started at the same "
                    "moment might both proceed)", scheme)
    return _BestEffortBackend(place)


# -- the lease ---------------------------------------------------------------------------------

@dataclass
class Holder:
    """What a claim says about its holder (for messages and takeovers)."""

    run: str
    state: str
    host: str
    pid: int
    doc: dict[str, Any]


class Lease:
    """An exclusive, renewed claim on one unit of work (see the module docstring)."""

    def __init__(self, place: Place, what: str, *, lease_s: float = DEFAULT_LEASE_S,
                 info: dict[str, Any] | None = None) -> None:
        self.url, self.what = place.url, what
        self.backend = backend_for(place)
        self.lease_s = float(lease_s)
        self.run_id = new_run_id()
        self.info = dict(info or {})
        self.previous: Holder | None = None  # the run this one took over, if any
        self._tag: str | None = None
        self._doc: dict[str, Any] = {}
        self._lost: str | None = None
        self._renew_error: BaseException | None = None  # the last failed renewal's error, for the message
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # acquiring
    def _mine(self, state: str = RUNNING, beat: int = 0, **extra: Any) -> dict[str, Any]:
        return {"run": self.run_id, "state": state, "beat": beat, "lease_s": self.lease_s,
                "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **self.info, **extra}

    def peek(self) -> Holder | None:
        doc, _ = self.backend.read()
        return _holder(doc)

    def acquire(self, take_complete: bool = False) -> Holder | None:
        """Take the claim. Returns the holder found in state ``complete`` (and does not take it) unless
        ``take_complete``; raises ``Busy`` while another run is alive."""
        while True:
            doc, tag = self.backend.read()
            if doc is None:
                new = self._mine()
                t = self.backend.create(new)
                if t is not None:
                    self._took(new, t, None)
                    return None
                continue  # someone created it between our read and create: look again
            assert tag is not None  # every backend's read returns a tag with a doc
            holder = _holder(doc)
            if holder.state == COMPLETE and not take_complete:
                return holder
            if holder.state == RUNNING and not self._dead(holder, doc, tag):
                raise Busy(f"{self.what} is being worked on by another run (run {holder.run}, host {holder.host}, "
                           f"pid {holder.pid}); this run stops without writing. Rerun once that run has finished, "
                           f"or {self.lease_s:.0f} s after it stopped (its claim then expires)")
            new = self._mine(prev_runs=[*doc.get("prev_runs", []), holder.run][-20:])
            t = self.backend.replace(new, tag)
            if t is not None:
                self._took(new, t, holder)
                return None
            # another newcomer won the takeover: look again (it is alive now, so we will stop)

    def _dead(self, holder: Holder, doc: dict[str, Any], tag: str | None) -> bool:
        """Watch the holder's heartbeat for up to one lease; True if it never advanced."""
        if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
            log.info("%s: the claim's holder (pid %d on this host) is gone: taking over", self.what, holder.pid)
            return True
        start = time.monotonic()
        beat = doc.get("beat")
        poll = max(0.05, min(1.0, self.lease_s / 10))
        log.info("%s is claimed by run %s: waiting up to %.0f s to see whether it is alive", self.what, holder.run,
                 self.lease_s)
        while time.monotonic() - start < self.lease_s:
            time.sleep(poll)
            now, _ = self.backend.read()
            if now is None or now.get("run") != holder.run or now.get("beat") != beat or now.get("state") != RUNNING:
                return False  # it renewed, finished or changed hands: not ours to take
        log.info("%s: run %s has not renewed its claim for %.0f s: taking over", self.what, holder.run, self.lease_s)
        return True

    def _took(self, doc: dict[str, Any], tag: str, previous: Holder | None) -> None:
        self._doc, self._tag, self.previous = doc, tag, previous
        self._last_ok = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
        self._thread.start()
        return None

    # holding
    def _beat(self) -> None:
        interval = self.lease_s / 4
        while not self._stop.wait(interval):
            try:
                self._update(None)
            except ClaimLost:
                return
            except Exception as e:  # noqa: BLE001 - transient storage errors: retry until the renew deadline
                log.debug("claim renewal failed: %s", e)
                self._renew_error = e
            if time.monotonic() - self._last_ok > self.lease_s / 2 and not self._outage_wait():
                self._lost = (f"{self.what}: could not renew the claim for {self.lease_s / 2:g} s; stopping so that "
                              "another run can take over")
                return

    def _outage_wait(self) -> bool:
        """Whether an unrenewed claim is a storage outage still worth waiting out (--storage_wait_s,
        storagewait.py). Safe: writes wait in :meth:`check` meanwhile, and the renewal that ends the wait is
        a compare-and-swap on this run's tag, which fails if another run took the claim over meanwhile."""
        err = self._renew_error
        return err is not None and is_transient(err) and \
            storagewait.OUTAGE.delay(err, f"renewing the claim of {self.what}") is not None

    def _lost_error(self) -> Exception:
        """Why this run must stop writing: storage that stopped answering is a storage outage (exit 74),
        not another run (exit 75)."""
        err = self._renew_error
        if err is not None and is_transient(err):
            return classify(err, f"{self.what}: the claim could not be renewed for {self.lease_s / 2:g} s")
        return ClaimLost(self._lost or f"{self.what}: the claim was lost")

    def _update(self, state: str | None, **extra: Any) -> None:
        """Renew with ``state`` (None: a heartbeat, keeping the current state). A heartbeat after the
        claim was completed or released writes nothing: it would undo that (state read outside the lock
        once raced a ``complete()`` and set a completed claim back to running)."""
        with self._lock:
            if self._lost:
                raise self._lost_error()
            if state is None:
                if self._stop.is_set() or self._doc.get("state") != RUNNING:
                    return
                state = RUNNING
            doc = {**self._doc, "state": state, "beat": int(self._doc.get("beat", 0)) + 1, "time": time.time(), **extra}
            assert self._tag is not None  # set with the claim (_took), before any renewal
            tag = self.backend.replace(doc, self._tag)
            if tag is None:
                now = self.peek()
                self._lost = (f"{self.what}: run {now.run if now else '?'} took the claim over; this run "
                              f"({self.run_id}) stops without marking anything complete")
                raise ClaimLost(self._lost)
            self._doc, self._tag = doc, tag
            self._last_ok = time.monotonic()

    def check(self) -> None:
        """Raise ``ClaimLost`` (or, if storage stopped answering, ``StorageUnavailable``) if this run may no
        longer write (call before each write)."""
        if self._lost:
            raise self._lost_error()
        while time.monotonic() - self._last_ok > self.lease_s / 2:
            if not self._outage_wait():  # else: wait for the heartbeat's renewal, as long as the outage wait allows
                self._lost = f"{self.what}: the claim was not renewed for {self.lease_s / 2:g} s; stopping"
                raise self._lost_error()
            time.sleep(max(0.05, min(1.0, self.lease_s / 8)))
            if self._lost:
                raise self._lost_error()

    def confirm(self) -> None:
        """Renew now and fail unless the claim is still ours (before writing a completion marker)."""
        self._update(RUNNING)

    def complete(self, **extra: Any) -> None:
        """Mark the work complete (after its marker is written); stops the heartbeat."""
        self._update(COMPLETE, **extra)
        self._halt()

    def release(self) -> None:
        """Give the claim up after a failure, so a rerun need not wait for the lease to expire."""
        try:
            if not self._lost and self._tag is not None:
                self._update(RELEASED)
        except Exception as e:  # noqa: BLE001 - best effort: the lease expires anyway
            log.debug("could not release %s: %s", self.url, e)
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    @property
    def lost(self) -> str | None:
        return self._lost

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._doc.get("state") != COMPLETE:
            self.release()
        if exc is not None and self._lost and not isinstance(exc, ClaimLost) and not is_transient(exc):
            # a run that lost its claim fails in whatever it was writing (the taker may have removed its
            # store): say why, with the retryable exit code, instead of the incidental error
            raise self._lost_error() from exc


@overload
def _holder(doc: dict[str, Any]) -> Holder: ...
@overload
def _holder(doc: dict[str, Any] | None) -> Holder | None: ...
def _holder(doc: dict[str, Any] | None) -> Holder | None:
    if doc is None:
        return None
    return Holder(str(doc.get("run", "?")), str(doc.get("state", RUNNING)), str(doc.get("host", "?")),
                  int(doc.get("pid", -1)), doc)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # unknown: assume alive, wait for the lease
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trusted_complete(claim: Place, run: str | None) -> bool:
    """Is ``run`` the run that completed this work? (A marker of a run that lost its claim is not.)"""
    doc, _ = backend_for(claim).read()
    return bool(doc and doc.get("state") == COMPLETE and run is not None and doc.get("run") == run)
