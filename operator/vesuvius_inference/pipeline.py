"""Local orchestration: predict parts over this machine's devices, then blend, then finalize.

One worker process per device (``--devices cuda:0,cuda:1`` or ``cpu,cpu``; ``--gpus`` is the seed's
shorthand), each running its ``--parts-per-gpu`` parts one after another. A worker gets exactly the
pipeline's predict settings: ``settings.to_argv`` of the part's configuration, with the secret ones
(storage options carrying keys) in its environment instead of its argv. With a single device
everything runs in this process, so the model and nnU-Net are imported once. The order of the stages
and what each reads are stages.py's.

Workers never outlive the pipeline: each asks the kernel for SIGHUP when the pipeline process dies and
checks that the pipeline is still its parent (signals.die_with_parent; ``$VESUVIUS_PARENT_PID``), then
stops like a signalled part: after its batch, with a checkpoint, its claim released, so a rerun finds
no live claim to wait for. (Linux sends the death signal when the *thread* that forked the child ends:
each worker process is started, and waited for, by its device's thread, which outlives it.) SIGTERM or SIGINT to the pipeline is passed on to every worker as SIGTERM;
they checkpoint and exit EXIT_STOPPED, no new part starts, and the pipeline exits EXIT_STOPPED too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import preflight, signals, storage
from .config import PipelineConfig
from .errors import EXIT_STOPPED, BadArguments, BadInput, Stopped, VesuviusError
from .progress import RunProgress, parse_line
from .settings import to_argv, to_env
from .stages import blend_config, finalize_config, predict_config

log = logging.getLogger("vesuvius_inference.pipeline")


def select_devices(cfg: PipelineConfig) -> list[str]:
    """One device per worker: ``--devices`` as given, else ``--gpus`` over this machine's GPUs, else the
    CPU (with one line saying so)."""
    from .runner import resolve_device

    if cfg.devices:
        for d in cfg.devices:  # a GPU asked for is a GPU used: exit 69 before any stage starts
            if d.startswith("cuda"):
                resolve_device(d, asked=f"--devices {','.join(cfg.devices)}", cpu_hint="--devices cpu")
        return list(cfg.devices)
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = cfg.gpus
    if n == 0:
        if gpus.strip().lower() != "all":  # GPUs named: the same as --device cuda, exit 69 saying what to check
            resolve_device("cuda", asked=f"--gpus {gpus}", cpu_hint="--devices cpu")
        log.warning("no CUDA GPU found: running every part on the CPU, one after another")
        return ["cpu"]
    if gpus.strip().lower() == "all":
        return [f"cuda:{i}" for i in range(n)]
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise BadArguments(f"--gpus must be 'all' or comma-separated GPU ids, got {gpus!r}") from None
    if not ids:
        raise BadArguments(f"--gpus must be 'all' or comma-separated GPU ids, got {gpus!r}")
    for i in ids:  # one this process cannot see: exit 69, as --device cuda:N
        resolve_device(f"cuda:{i}", asked=f"--gpus {gpus}", cpu_hint="--devices cpu")
    return [f"cuda:{i}" for i in ids]


def worker_command(cfg: PipelineConfig, part_id: int, num_parts: int, device: str) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of the worker process that runs one part."""
    argv = [sys.executable, "-m", "vesuvius_inference.cli", "predict",
            *to_argv(predict_config(cfg, part_id, num_parts, device))]
    return argv, {**to_env(predict_config(cfg, part_id, num_parts, device)), signals.ENV_PARENT_PID: str(os.getpid())}


def _follow(proc: subprocess.Popen, progress: RunProgress) -> None:
    """A worker's log: its progress lines feed the stage's aggregate, everything else is passed on."""
    assert proc.stderr is not None
    for text in proc.stderr:
        line = parse_line(text)
        if line is not None:
            progress.observe(line)
        else:
            sys.stderr.write(text)
            sys.stderr.flush()


def _run_workers(cfg: PipelineConfig, devices: list[str], num_parts: int, progress: RunProgress) -> None:
    failures: list[str] = []
    codes: set[int] = set()
    stopped: list[int] = []  # parts whose worker stopped on request, after its checkpoint
    completed: list[int] = []
    live: dict[int, subprocess.Popen] = {}
    lock = threading.Lock()

    def worker(d: int, device: str) -> None:
        for k in range(cfg.parts_per_gpu):
            part = d * cfg.parts_per_gpu + k
            argv, env = worker_command(cfg, part, num_parts, device)
            with lock:  # no new part once a stop was asked for
                if signals.requested():
                    return
                proc = subprocess.Popen(argv, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True,
                                        bufsize=1)
                live[part] = proc
            _follow(proc, progress)
            code = proc.wait()
            with lock:
                live.pop(part, None)
            if code == EXIT_STOPPED or (code < 0 and signals.requested()):
                stopped.append(part)
                return
            if code != 0:
                failures.append(f"part {part} on {device} exited {code}")
                codes.add(code)
                return
            completed.append(part)
            progress.part_done(part)

    threads = [threading.Thread(target=worker, args=(d, dev), daemon=True) for d, dev in enumerate(devices)]
    forwarded = False
    with signals.deferred():  # the main thread only waits: a signal is passed on to the workers
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if signals.requested() and not forwarded:
                forwarded = True
                with lock:
                    for proc in live.values():
                        _signal(proc, signal.SIGTERM)
            for t in threads:
                t.join(0.1)
    name = signals.requested() or ("a signal to a worker" if stopped else None)  # a worker stopped alone
    if name is not None:
        raise Stopped(f"stopped by {name}: {len(stopped)} worker(s) checkpointed and stopped (part "
                      f"{', '.join(map(str, sorted(stopped))) or '-'}); {len(completed)} of {num_parts} predict "
                      "parts complete; rerun resumes")
    if failures:
        err = VesuviusError("predict failed: " + "; ".join(failures) + " (completed parts are kept; rerun to resume)")
        err.exit_code = codes.pop() if len(codes) == 1 else err.exit_code  # the workers' class of failure, if one
        raise err


def _signal(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:  # it just ended
        pass


def run_predict_stage(cfg: PipelineConfig, devices: list[str], totals: dict[int, int]) -> int:
    """Every part, over the devices, shown as one progress bar or line with the stage's ETA."""
    from .predict import run_predict

    num_parts = len(devices) * cfg.parts_per_gpu
    progress = RunProgress("predict", totals, "patches", quiet=cfg.quiet, interval_s=cfg.progress_s)
    try:
        if len(devices) == 1:
            for p in range(num_parts):
                signals.raise_if_requested(f"after {p} of {num_parts} predict parts")
                run_predict(predict_config(cfg, p, num_parts, devices[0]), listener=progress.observe)
                progress.part_done(p)
        else:
            _run_workers(cfg, devices, num_parts, progress)
    finally:
        progress.close()
    return num_parts


def _timed(times: dict[str, float], nvox: int) -> Callable[[str, Callable[[], Any]], None]:
    def stage(name: str, fn: Callable[[], Any]) -> None:
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
        log.info("== %s done in %.1f s (%.2f Mvox/s of input)", name, times[name], nvox / max(times[name], 1e-9) / 1e6)

    return stage


def _preflight(cfg: PipelineConfig, devices: list[str]) -> Any:
    """Everything that can fail after the compute, before it; the first part's context, or None when the
    output is already complete with these settings. With --overwrite, an output or parts of another
    configuration are removed."""
    from . import paths
    from .output import FINAL, OutputSpec, output_channels, output_config
    from .predict import prepare

    so = cfg.storage_options
    num_parts = len(devices) * cfg.parts_per_gpu
    ctx = prepare(predict_config(cfg, 0, num_parts, devices[0]))  # the input and the model: checked
    if not cfg.skip_finalize:
        output_channels(cfg.mode, cfg.threshold, ctx.model.num_classes)  # what finalize would refuse
    expected = output_config(ctx.fp, OutputSpec(cfg.output, FINAL, cfg.mode, cfg.threshold, cfg.levels,
                                                ctx.cfg.ngff_version))  # the version prepare chose (auto: the input's)
    found = preflight.check_output(cfg.output, expected, so, cfg.overwrite)
    if found.state == preflight.OURS and found.complete and preflight.reusable(found, expected):
        return None
    stale = [] if cfg.skip_predict else preflight.foreign_parts(paths.parts_dir(cfg.work), ctx.fp, so)
    if stale and not cfg.overwrite:
        raise BadInput(f"{paths.parts_dir(cfg.work)} holds predict parts of other settings ({'; '.join(stale[:4])}); "
                       "pass --overwrite to replace them, or choose another --workdir")
    if cfg.overwrite and (stale or found.state != preflight.ABSENT and not preflight.reusable(found, expected)):
        for url in (cfg.output, cfg.work):  # this process is the only writer now; parts never delete a shared output
            storage.remove(url, so)
        log.info("--overwrite: removed %s and %s (another configuration)", cfg.output, cfg.work)
    preflight.require_writable(cfg.output, so)
    preflight.require_writable(cfg.work, so, "--workdir")
    return ctx


def _region_voxels(cfg: PipelineConfig, volume: Any) -> int:
    """Voxels the run processes: the --bbox region, else the level (rates are per processed voxel)."""
    from .partplan import region

    box = region(cfg.bbox, volume.shape)
    shape = volume.shape if box is None else [b - a for a, b in zip(*box)]
    return int(volume.channels) * int(shape[0]) * int(shape[1]) * int(shape[2])


def run_local_pipeline(cfg: PipelineConfig) -> dict[str, float]:
    """Run the stages; returns seconds per stage. Each stage resumes where an earlier run stopped."""
    from .blend import run_blend
    from .finalize import run_finalize
    from .predict_part import the_plan
    from .volume import open_volume

    cfg.validate()
    so = cfg.storage_options
    devices = select_devices(cfg) if not cfg.skip_predict else ["cpu"]
    ctx = _preflight(cfg, devices)
    if ctx is None:
        log.info("%s is already complete with these settings: nothing to do", cfg.output)
        if not cfg.keep_intermediates:
            storage.remove(cfg.work, so)
        return {}
    volume = open_volume(cfg.input_dir, cfg.level, cfg.input_storage_options)
    times: dict[str, float] = {}
    stage = _timed(times, _region_voxels(cfg, volume))
    if not cfg.skip_predict:
        log.info("== predict: %d part(s) on %s", len(devices) * cfg.parts_per_gpu, ", ".join(devices))
        totals = {p: part.size() for p, part in enumerate(the_plan(ctx).parts)}
        stage("predict", lambda: run_predict_stage(cfg, devices, totals))
    if not cfg.skip_blend:
        stage("blend", lambda: run_blend(blend_config(cfg)))
    if not cfg.skip_finalize:
        stage("finalize", lambda: run_finalize(finalize_config(cfg)))
    from .output import is_complete

    if not cfg.keep_intermediates and not cfg.skip_finalize and is_complete(cfg.output, so):
        storage.remove(cfg.work, so)
        log.info("removed intermediates %s (pass --keep-intermediates to keep them)", cfg.work)
    log.info("== pipeline done in %.1f s: %s -> %s", sum(times.values()), cfg.input_dir, cfg.output)
    return times
