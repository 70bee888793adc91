"""Local orchestration: predict parts over this machine's devices, then blend, then finalize.

One worker process per device (``--devices cuda:0,cuda:1`` or ``cpu,cpu``; ``--gpus`` is the seed's
shorthand), each running its ``--parts-per-gpu`` parts one after another. A worker gets exactly the
pipeline's predict settings: ``settings.to_argv`` of the part's configuration, with the secret ones
(storage options carrying keys) in its environment instead of its argv. With a single device
everything runs in this process, so the model and nnU-Net are imported once. The order of the stages
and what each reads are stageplan.py's.

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
from typing import TYPE_CHECKING, Any

from vesuvius_inference.contract.config import PipelineConfig
from vesuvius_inference.contract.errors import EXIT_STOPPED, BadArguments, BadInput, Stopped, VesuviusError
from vesuvius_inference.contract.intensity import ATTRIBUTE, IntensityFinding, is_line
from vesuvius_inference.contract.prechecks import check_pyramid, chunks_source
from vesuvius_inference.contract.progress import RunProgress, parse_line
from vesuvius_inference.contract.settings import to_argv, to_env
from vesuvius_inference.contract.stageplan import blend_config, finalize_config, predict_config
from vesuvius_inference.predict import signals
from vesuvius_inference.store import ownership, preflight, storage
from vesuvius_inference.store.optioncheck import check_options

if TYPE_CHECKING:
    from vesuvius_inference.store.volume import InputVolume

log = logging.getLogger("vesuvius_inference.stages.pipeline")


def select_devices(cfg: PipelineConfig) -> list[str]:
    """One device per worker: ``--devices`` as given, else ``--gpus`` over this machine's GPUs, else the
    CPU (with one line saying so)."""
    from vesuvius_inference.predict.runner import resolve_device

    if cfg.devices:
        for d in cfg.devices:  # a device asked for is a device used: exit 69 before any stage starts
            if d != "auto":
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


def _follow(proc: subprocess.Popen[str], progress: RunProgress) -> None:
    """A worker's log: its progress lines feed the stage's aggregate, everything else is passed on."""
    assert proc.stderr is not None
    for text in proc.stderr:
        line = parse_line(text)
        if line is not None:
            progress.observe(line)
        elif not is_line(text):  # each worker's intensity warning is the preflight's, shown once already
            progress.write(text)  # above the stage's bar in a terminal, never glued onto it


def _run_workers(cfg: PipelineConfig, devices: list[str], num_parts: int, progress: RunProgress) -> None:
    failures: list[str] = []
    codes: set[int] = set()
    stopped: list[int] = []  # parts whose worker stopped on request, after its checkpoint
    completed: list[int] = []
    live: dict[int, subprocess.Popen[str]] = {}
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


def _signal(proc: subprocess.Popen[str], signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:  # it just ended
        pass


def run_predict_stage(cfg: PipelineConfig, devices: list[str], totals: dict[int, int], *,
                      volume: InputVolume | None = None) -> int:
    """Every part, over the devices, shown as one progress bar or line with the stage's ETA; returns the
    patches run in this pipeline run (what parts had done before, resumed or listed empty, excluded).
    ``volume``: the input the preflight opened; the parts run here (one device) use it, not an open each."""
    from vesuvius_inference.predict.stage import run_predict

    num_parts = len(devices) * cfg.parts_per_gpu
    progress = RunProgress("predict", totals, "patches", quiet=cfg.quiet, interval_s=cfg.progress_s)
    try:
        if len(devices) == 1:
            for p in range(num_parts):
                signals.raise_if_requested(f"after {p} of {num_parts} predict parts")
                run_predict(predict_config(cfg, p, num_parts, devices[0]), listener=progress.observe, announce=False,
                            volume=volume)
                progress.part_done(p)
        else:
            _run_workers(cfg, devices, num_parts, progress)
    finally:
        progress.close()
    return progress.reporter.done_here


def _timed(times: dict[str, float]) -> Callable[[str, Callable[[], int]], None]:
    """Each stage's summary: its time, and a rate over the voxels it processed in this run (``fn`` returns
    them): a stage that found its work done says so instead of dividing the region by a few milliseconds."""
    def stage(name: str, fn: Callable[[], int]) -> None:
        t = time.perf_counter()
        vox = fn()
        times[name] = time.perf_counter() - t
        if vox > 0:
            log.info("== %s done in %.1f s (%.2f Mvox/s over the %.3g Mvox it processed)", name, times[name],
                     vox / max(times[name], 1e-9) / 1e6, vox / 1e6)
        else:
            log.info("== %s done in %.1f s: nothing left to do", name, times[name])

    return stage


def _stage_work(stage: str, fn: Callable[[], Any]) -> Callable[[], int]:
    """``fn``, returning the voxels ``stage`` processed in this process while it ran (stagesplit's tally)."""
    from vesuvius_inference.store.stagesplit import work_done

    def run() -> int:
        before = work_done(stage)
        fn()
        return work_done(stage) - before

    return run


def _preflight(cfg: PipelineConfig, devices: list[str]) -> Any:
    """Everything that can fail after the compute, before it; the first part's context, or None when the
    output is already complete with these settings. With --overwrite, an output or parts of another
    configuration are removed."""
    from vesuvius_inference.contract import paths
    from vesuvius_inference.predict.stage import prepare
    from vesuvius_inference.store.output import FINAL, OutputSpec, output_channels, output_config

    output, work = cfg.place(cfg.output), cfg.place(cfg.work)
    num_parts = len(devices) * cfg.parts_per_gpu
    ctx = prepare(predict_config(cfg, 0, num_parts, devices[0]))  # the input and the model: checked
    if not cfg.skip_finalize:
        output_channels(cfg.mode, cfg.threshold, ctx.model.num_classes)  # what finalize would refuse
        check_pyramid(ctx.volume.shape, ctx.chunks, cfg.levels,  # and the pyramid it would fail to build
                      chunks_source(cfg.chunk_size, cfg.patch_size, ctx.chunks))
    expected = output_config(ctx.fp, OutputSpec(cfg.output, FINAL, cfg.mode, cfg.threshold, cfg.levels,
                                                ctx.cfg.ngff_version))  # the version prepare chose (auto: the input's)
    found = preflight.check_output(output, expected, overwrite=cfg.overwrite)
    if found.state == preflight.OURS and found.complete and preflight.reusable(found, expected):
        return None
    stale = [] if cfg.skip_predict else preflight.foreign_parts(work.at(paths.parts_url(work.url)), ctx.fp)
    if stale and not cfg.overwrite:
        raise BadInput(f"{paths.parts_url(cfg.work)} holds predict parts of other settings (written with -> this run: "
                       f"{'; '.join(stale[:4])}); pass --overwrite to replace them, or choose another --workdir")
    work_mark = ownership.mark_of(work) if storage.exists(work) else "absent"
    if work_mark is None and storage.list_names(work):  # somebody's folder: never written into or removed
        raise BadInput(f"--workdir {cfg.work} holds files vesuvius-inference did not write; it is left untouched: "
                       "choose another --workdir (an empty or new folder)")
    if cfg.overwrite and (stale or found.state != preflight.ABSENT and not preflight.reusable(found, expected)):
        # this process is the only writer now; each is removed only if it carries our mark (ownership.py)
        removed = [p.url for p in (output, work) if ownership.remove_ours(p, flag="--overwrite:")]
        log.info("--overwrite: removed %s (written by vesuvius-inference with other settings)", " and ".join(removed))
    preflight.require_writable(output)
    preflight.require_writable(work, "--workdir")
    ownership.mark(work, "workdir")  # before any part writes into it: later removals can tell it is ours
    return ctx


def run_local_pipeline(cfg: PipelineConfig) -> dict[str, float]:
    """Run the stages; returns seconds per stage. Each stage resumes where an earlier run stopped."""
    from vesuvius_inference.predict.part import region_voxels_per_patch, the_plan
    from vesuvius_inference.stages.blend import run_blend
    from vesuvius_inference.stages.finalize import run_finalize
    cfg.validate()
    check_options(cfg)
    output, work = cfg.place(cfg.output), cfg.place(cfg.work)
    devices = select_devices(cfg) if not cfg.skip_predict else ["cpu"]
    ctx = _preflight(cfg, devices)
    if ctx is None:
        log.info("%s is already complete with these settings: nothing to do", cfg.output)
        if not cfg.keep_intermediates:
            ownership.remove_ours(work, flag="--workdir", strict=False)
        return {}
    volume = ctx.volume  # opened once, by the preflight
    times: dict[str, float] = {}
    stage = _timed(times)
    if not cfg.skip_predict:
        log.info("== predict: %d part(s) on %s", len(devices) * cfg.parts_per_gpu, ", ".join(devices))
        plan = the_plan(ctx)
        totals = {p: part.size() for p, part in enumerate(plan.parts)}
        per_patch = region_voxels_per_patch(plan.grid, volume.channels)  # the part summaries' unit too
        stage("predict", lambda: int(run_predict_stage(cfg, devices, totals, volume=volume) * per_patch))
    if not cfg.skip_blend:
        stage("blend", _stage_work("blend", lambda: run_blend(blend_config(cfg))))
    if not cfg.skip_finalize:
        stage("finalize", _stage_work("finalize", lambda: run_finalize(finalize_config(cfg))))
    from vesuvius_inference.store.output import is_complete

    if not cfg.keep_intermediates and not cfg.skip_finalize and is_complete(output):
        if ownership.remove_ours(work, flag="--workdir", strict=False):
            log.info("removed intermediates %s (pass --keep-intermediates to keep them)", cfg.work)
    found = IntensityFinding.from_dict(ctx.intensity)
    log.info("== pipeline done in %.1f s: %s -> %s%s", sum(times.values()), cfg.input_dir, cfg.output,
             f"; {found.brief()} (recorded in the output's vesuvius.{ATTRIBUTE} attribute)" if found else "")
    return times
