"""How a failed command ends: one ``error:`` line, the same line for Kubernetes, and a quiet exit.

The line goes to stderr and, when the container's termination-message file exists and is writable
(``/dev/termination-log``, the kubelet's default ``terminationMessagePath``; ``$VESUVIUS_TERMINATION_LOG``
overrides it), into that file, so ``kubectl describe`` and the operator read it from
``pod.status.containerStatuses[].state.terminated.message`` without the pod's log.

A stage that fails on storage leaves requests in flight on zarr's and fsspec's event loops (zarr
probes several keys at once; botocore keeps retrying a dead endpoint). At interpreter exit those
loops are closed under them, and every abandoned coroutine prints an ``Exception ignored in:
<coroutine object FsspecStore.get ...>`` traceback. They are cancelled here instead, on their own
loops, so the user sees the one line that matters.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from typing import Any

from vesuvius_inference.contract.errors import Stopped, VesuviusError

ENV_TERMINATION_LOG = "VESUVIUS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
ENV_DEBUG = "VESUVIUS_DEBUG"
MESSAGE_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no")


def write_termination_message(line: str) -> bool:
    """Write ``line`` where Kubernetes looks for the container's termination message; False if there is none."""
    chosen = os.environ.get(ENV_TERMINATION_LOG)
    path = chosen or DEFAULT_TERMINATION_LOG
    # The kubelet creates the default file in every container; outside one it does not exist and is left alone.
    if not (os.path.isfile(path) or (chosen and os.path.isdir(os.path.dirname(os.path.abspath(path))))):
        return False
    try:
        with open(path, "wb") as f:
            f.write(line.encode()[:MESSAGE_LIMIT])
    except OSError:  # read-only or missing: stderr has the line anyway
        return False
    return True


def cancel_pending_io(timeout: float = 2.0) -> int:
    """Cancel the tasks still running on zarr's and fsspec's I/O loops; returns how many there were."""
    loops = []
    for module, attr in (("zarr.core.sync", "loop"), ("fsspec.asyn", "loop")):
        mod = sys.modules.get(module)  # never import them just for this
        if mod is not None:
            loops.append(getattr(mod, attr, [None])[0])
    cancelled = 0
    for loop in loops:
        if loop is None or loop.is_closed() or not loop.is_running():
            continue

        async def _cancel() -> int:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            return len(tasks)

        try:
            cancelled += asyncio.run_coroutine_threadsafe(_cancel(), loop).result(timeout + 1)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    return cancelled


def _quiet_unraisable(unraisable: Any) -> None:
    """After the error line, what abandoned I/O raises while being collected is noise."""


def report(err: VesuviusError, exc: BaseException, debug: bool) -> int:
    """End a failed command: the line (and with ``debug`` the traceback first); returns the exit code."""
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    line = "error: " + " ".join(str(err).split())
    print(line, file=sys.stderr, flush=True)
    write_termination_message(line + "\n")
    cancel_pending_io()
    if not debug:
        sys.unraisablehook = _quiet_unraisable
    return err.exit_code


def report_stop(stop: Stopped) -> int:
    """End a command stopped on request (signals.py): its one line, not an error, and EXIT_STOPPED."""
    line = " ".join(str(stop).split())
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:  # a pipeline worker whose pipeline died: nobody reads stderr any more
        pass
    write_termination_message(line + "\n")
    cancel_pending_io()
    sys.unraisablehook = _quiet_unraisable
    return stop.exit_code
