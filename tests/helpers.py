"""Test data helpers shared by tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

IMAGE_TIMES = "image times"  # a test report's user property: tests/images' build times (tests/conftest.py sums up)


def wait_until(what: str, fn: Callable[[], Any], *, timeout: float, interval: float = 0.2,
               detail: Callable[[], str] = lambda: "", error: type[BaseException] = AssertionError) -> Any:
    """``fn()``'s first truthy value, polled every ``interval`` s for at most ``timeout`` s: the one bounded
    wait of the tests and benchmarks (never a fixed sleep). On timeout ``error`` names ``what`` (and
    ``detail()``, e.g. the cluster's state)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = detail()
            raise error(f"timed out after {timeout:.0f}s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(interval)


def smooth_volume(shape, seed=0, dtype=np.uint8):
    """Structured random data (blurred noise), so logits vary smoothly like on real scans."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=shape), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    hi = 255 if dtype == np.uint8 else 4000
    return (x * hi).astype(dtype)


def tool(name: str) -> ModuleType:
    """A module of the repository's tools/ (ocibuild, neuroglancer_overlay), loaded from its file once.

    tools/ holds scripts, not a package: they are loaded by path instead of putting tools/ on ``sys.path``.
    """
    import importlib.util
    import sys
    from pathlib import Path

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse_recording(text: str) -> list[dict]:
    """moto's request recording is concatenated JSON objects (bodies may hold newlines): decode them in turn."""
    import json

    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def write_zarr(path, data, chunks=(32, 32, 32), zarr_format=3, **kw):
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format,
                            fill_value=0, overwrite=True, **kw)
    arr[...] = data
    return str(path)


@dataclass(frozen=True)
class CliResult:
    """What a finished command left: the fields of ``subprocess.CompletedProcess`` the tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, env: dict[str, str] | None = None) -> CliResult:
    """``vesuvius-inference ARGS`` in this process: its exit code and what it printed.

    A subprocess costs an interpreter and the torch import (2-4 s here) to read one error line; the
    entry function is the same code path after ``sys.argv``. ``env`` is added to the environment for
    the call only. What the command changes in the process is put back: the logging handlers it
    installs (``logging.basicConfig(force=True)`` on its stderr, which is gone once the call returns),
    logger levels, ``sys.unraisablehook`` (failure.report quiets it) and the SIGINT/SIGTERM handlers.
    Keep real subprocesses where the process is the point: exit codes of a real process, signals,
    the termination log, pods.
    """
    import contextlib
    import gc
    import io
    import logging
    import os
    import signal
    import sys

    from vesuvius_inference.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    ours = logging.getLogger("vesuvius_inference")
    saved_logging = (root.handlers[:], root.level, ours.handlers[:], ours.level, logging.root.manager.disable)
    saved_hook = sys.unraisablehook
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    _clear_filesystem_caches()  # an fsspec filesystem made under another test's endpoint must not be reused
    # ... and the dropped ones are finalised now, before stderr is captured: an s3fs session collected later
    # prints aiohttp's "Unclosed client session" and a cleanup traceback from another test's event loop into
    # this call's stderr (seen once in CI, in test_s3_errors' one-error-line check)
    gc.collect()
    try:
        os.environ.update(env or {})
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: bad arguments, --help
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            for h in logging.getLogger().handlers:
                h.flush()
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        root.handlers[:], ours.handlers[:] = saved_logging[0], saved_logging[2]
        root.setLevel(saved_logging[1])
        ours.setLevel(saved_logging[3])
        logging.disable(saved_logging[4])
        sys.unraisablehook = saved_hook
        for s, h in saved_signals.items():
            if h is not None:
                signal.signal(s, h)
        _clear_filesystem_caches()
    return CliResult(argv, int(code), out.getvalue(), err.getvalue())


def _clear_filesystem_caches() -> None:
    """fsspec caches a filesystem per class and options; its credentials and endpoint come from the
    environment of the moment it was made (a subprocess started with empty caches)."""
    import sys

    spec = sys.modules.get("fsspec.spec")
    if spec is None:
        return
    stack = [spec.AbstractFileSystem]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        cls.clear_instance_cache()
