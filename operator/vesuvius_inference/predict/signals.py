"""Stopping on request: SIGTERM and SIGINT end a predict part after a checkpoint, never mid-write.

Why: on Kubernetes a preempted, drained or evicted pod gets SIGTERM, then SIGKILL after
``terminationGracePeriodSeconds`` (kubelet, pkg/kubelet/kuberuntime/kuberuntime_container.go,
killContainer). Python's default for SIGTERM is to die at once (exit 143, nothing flushed), which threw
away everything since the last periodic checkpoint (``--checkpoint_s``, 600 s). Here the first signal
only raises a flag; the predict loop looks at it between batches (never inside one: batch boundaries
must stay where an uninterrupted run has them, or the resumed bytes could differ), writes its
checkpoint, releases its claim and exits :data:`errors.EXIT_STOPPED`, which the predict Job's
podFailurePolicy ignores (k8s/manifests.py).

Two modes, chosen by the code that runs:

- *deferred* (:func:`deferred`: a predict part's loop, its checkpoint and its completion): the handler
  records the signal and returns; the loop stops at the next batch boundary. Further signals are
  recorded too and change nothing, so a second SIGTERM or Ctrl-C while the checkpoint is being written
  cannot cut it in half (SIGKILL can: the checkpoint's two-slot spills and its atomically written head
  keep the previous one valid then).
- *immediate* (everywhere else once :func:`installed`: claiming the part, loading the model, the
  pipeline's blend and finalize): nothing is in flight that a checkpoint would save, so the handler
  raises :class:`errors.Stopped` at once, as Python's own KeyboardInterrupt would, with the same exit
  code. Blend and finalize keep their journals; claims are released on the way out, and signals after
  the first are only counted, so they cannot interrupt that.

Handlers can only be installed from the main thread (``signal.signal``); elsewhere (an API caller's
thread) this module does nothing and signals keep their previous meaning.

Pipeline workers (pipeline.py) additionally ask the kernel to send them SIGHUP when the process that
started them dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and then check that their parent is still the
one that started them: the parent can die between ``fork`` and ``prctl``, and the death signal is not
sent for a parent that was already gone (prctl(2)). An orphaned worker stops like a signalled one:
after its batch, with a checkpoint, its claim released.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from vesuvius_inference.contract.errors import Stopped

log = logging.getLogger("vesuvius_inference.predict.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARENT_DEATH_SIGNAL = signal.SIGHUP
ENV_PARENT_PID = "VESUVIUS_PARENT_PID"  # set by the pipeline for its workers: the pid that must stay their parent
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class _State:
    signame: str | None = None  # the first stop signal received
    received: int = 0  # how many
    deferring: int = 0  # depth of deferred sections
    installed: int = 0  # depth of installed()
    previous: dict[int, Any] = field(default_factory=dict)


_state = _State()


def requested() -> str | None:
    """The name of the first stop signal received (``SIGTERM``), or None."""
    return _state.signame


def reset() -> None:
    """Forget a received signal (a new command in the same process: tests calling ``cli.main``)."""
    _state.signame, _state.received = None, 0


def _name(signum: int) -> str:
    if signum == PARENT_DEATH_SIGNAL:
        return "the death of the pipeline process"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: FrameType | None) -> None:
    _state.received += 1
    if _state.signame is None:
        _state.signame = _name(signum)
    if signum == PARENT_DEATH_SIGNAL:
        _silence_stderr()  # the pipeline read our stderr through a pipe nobody reads now: writes would fail
    if _state.deferring == 0 and _state.received == 1:  # later ones must not cut the way out (releasing the claim)
        raise Stopped(f"stopped by {_state.signame} (nothing in flight needed a checkpoint); completed work is "
                      "kept and a rerun resumes")


def _silence_stderr() -> None:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass


@contextlib.contextmanager
def installed(parent_death: bool = False) -> Iterator[None]:
    """Handle SIGTERM and SIGINT (and, with ``parent_death``, the pipeline's death signal) while inside;
    the previous handlers come back afterwards. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = STOP_SIGNALS + ((PARENT_DEATH_SIGNAL,) if parent_death else ())
    if _state.installed == 0:
        reset()
        _state.previous = {s: signal.signal(s, _handler) for s in signals}
    _state.installed += 1
    try:
        if parent_death:
            die_with_parent()
        yield
    finally:
        _state.installed -= 1
        if _state.installed == 0:
            for s, h in _state.previous.items():
                signal.signal(s, h)
            _state.previous = {}


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside: a stop signal is only recorded (the caller checks :func:`requested` at safe points)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def raise_if_requested(where: str) -> None:
    """At a safe point in immediate code: stop now if a signal came while deferring."""
    if _state.signame is not None:
        raise Stopped(f"stopped by {_state.signame} {where}; completed work is kept and a rerun resumes")


def die_with_parent() -> None:
    """Pipeline workers: SIGHUP when the pipeline process dies; stop at once if it already has.

    ``prctl(PR_SET_PDEATHSIG)`` is Linux's; elsewhere only the parent check runs (at start)."""
    expected = os.environ.get(ENV_PARENT_PID)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0) != 0:
                log.warning("warning: prctl(PR_SET_PDEATHSIG) failed (errno %d): this worker may outlive the "
                            "pipeline", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.warning("warning: prctl unavailable (%s): this worker may outlive the pipeline", e)
    if str(os.getppid()) != expected:  # the parent died before prctl: no signal will ever come
        raise Stopped(f"the pipeline process (pid {expected}) that started this worker is gone: not starting")
