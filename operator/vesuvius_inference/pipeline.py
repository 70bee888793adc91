"""Local orchestration: predict parts over this machine's GPUs, then blend, then finalize.

One process per GPU, each running its parts one after another (``--parts-per-gpu`` bounds memory,
as the seed's help promised but did not do). With a single device everything runs in this process
so the model and nnU-Net are imported once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import storage
from .errors import BadArguments, VesuviusError

log = logging.getLogger("vesuvius_inference.pipeline")


@dataclass
class PipelineConfig:
    input: str
    output: str
    model: str
    workdir: str | None = None
    gpus: str = "all"
    parts_per_gpu: int = 1
    mode: str = "binary"
    threshold: bool = False
    batch_size: int = 1
    overlap: float = 0.5
    do_tta: bool = True
    patch_size: Sequence[int] | None = None
    folds: Sequence[int | str] | None = None
    cache_gb: float = 4.0
    chunk_size: Sequence[int] | None = None
    level: int = 0
    skip_empty_patches: bool = True
    skip_predict: bool = False
    skip_blend: bool = False
    skip_finalize: bool = False
    keep_intermediates: bool = False
    fuse_blend_finalize: bool = False
    overwrite: bool = False
    quiet: bool = False
    device: str | None = None  # force a device ("cpu") regardless of --gpus
    bbox: str | None = None
    levels: int | None = None  # pyramid levels of the output (None: down to one chunk)
    ngff_version: str = "auto"  # the output's OME-Zarr version (0.4 on Zarr v2, 0.5 on v3); auto: the input's
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> str:
        return self.workdir or self.output.rstrip("/") + "_work"


def select_devices(gpus: str, forced: str | None = None) -> list[str]:
    """Torch device names for ``--gpus``; the CPU (with one clear line) when there is no GPU."""
    if forced:
        from .runner import resolve_device

        resolve_device(forced)  # a GPU asked for that cannot be used: exit 69 before any stage starts
        return [forced]
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus.strip().lower() == "all":
        if n == 0:
            log.warning("no CUDA GPU found: running every part on the CPU, one after another")
            return ["cpu"]
        return [f"cuda:{i}" for i in range(n)]
    if n == 0:  # GPUs named explicitly: a GPU asked for is a GPU used
        from .runner import resolve_device

        resolve_device("cuda", asked=f"--gpus {gpus}")  # raises DeviceUnavailable with what to check
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise BadArguments(f"--gpus must be 'all' or comma-separated GPU ids, got {gpus!r}") from None
    bad = [i for i in ids if not 0 <= i < n]
    if bad or not ids:
        raise BadArguments(f"--gpus {gpus}: this machine has GPUs 0..{n - 1}")
    return [f"cuda:{i}" for i in ids]


def _predict_config(cfg: PipelineConfig, parts_dir: str, part_id: int, num_parts: int, device: str) -> Any:
    """What each part runs: it writes its own chunk rows straight into the output of this pipeline."""
    from .predict import PredictConfig

    fused = cfg.fuse_blend_finalize and not (cfg.skip_blend or cfg.skip_finalize)
    return PredictConfig(
        model_path=cfg.model, input_dir=cfg.input, output_dir=parts_dir, part_id=part_id, num_parts=num_parts,
        overlap=cfg.overlap, batch_size=cfg.batch_size, device=device, skip_empty_patches=cfg.skip_empty_patches,
        do_tta=cfg.do_tta, patch_size=cfg.patch_size, folds=cfg.folds, cache_gb=cfg.cache_gb,
        chunk_size=cfg.chunk_size, level=cfg.level, overwrite=cfg.overwrite, quiet=cfg.quiet,
        storage_options=cfg.storage_options, bbox=cfg.bbox,
        final_output=cfg.output if fused else None, blended_output=None if fused else _blended(cfg),
        mode=cfg.mode, threshold=cfg.threshold, levels=cfg.levels, ngff_version=cfg.ngff_version)


def _blended(cfg: PipelineConfig) -> str:
    return storage.join(cfg.work, "blended.zarr")


def _predict_args(cfg: PipelineConfig, parts_dir: str, part_id: int, num_parts: int, device: str) -> list[str]:
    pc = _predict_config(cfg, parts_dir, part_id, num_parts, device)
    args = ["predict", "--model_path", cfg.model, "--input_dir", cfg.input, "--output_dir", parts_dir,
            "--part_id", str(part_id), "--num_parts", str(num_parts), "--overlap", str(cfg.overlap),
            "--batch_size", str(cfg.batch_size), "--device", device, "--cache_gb", str(cfg.cache_gb),
            "--level", str(cfg.level)]
    if pc.final_output:
        args += ["--final_output", pc.final_output, "--mode", pc.mode] + (["--threshold"] if pc.threshold else [])
        args += ["--levels", str(pc.levels)] if pc.levels else []
        args += ["--ngff_version", pc.ngff_version]
    else:
        args += ["--blended_output", pc.blended_output]
    if not cfg.do_tta:
        args.append("--disable_tta")
    if not cfg.skip_empty_patches:
        args.append("--no_skip_empty_patches")
    if cfg.patch_size:
        args += ["--patch_size", ",".join(map(str, cfg.patch_size))]
    if cfg.chunk_size:
        args += ["--chunk_size", ",".join(map(str, cfg.chunk_size))]
    if cfg.folds:
        args += ["--folds", ",".join(map(str, cfg.folds))]
    if cfg.bbox:
        args += ["--bbox", cfg.bbox]
    if cfg.overwrite:
        args.append("--overwrite")
    if cfg.quiet:
        args.append("--quiet")
    return args


def _run_predict_stage(cfg: PipelineConfig, parts_dir: str, devices: list[str]) -> int:
    from .predict import run_predict

    num_parts = len(devices) * cfg.parts_per_gpu
    if len(devices) == 1:
        for p in range(num_parts):
            run_predict(_predict_config(cfg, parts_dir, p, num_parts, devices[0]))
        return num_parts
    failures: list[str] = []
    codes: set[int] = set()

    def worker(d: int, device: str) -> None:
        for k in range(cfg.parts_per_gpu):
            part = d * cfg.parts_per_gpu + k
            cmd = [sys.executable, "-m", "vesuvius_inference.cli"] + _predict_args(cfg, parts_dir, part, num_parts, device)
            rc = subprocess.call(cmd)
            if rc != 0:
                failures.append(f"part {part} on {device} exited {rc}")
                codes.add(rc)
                return

    threads = [threading.Thread(target=worker, args=(d, dev)) for d, dev in enumerate(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        err = VesuviusError("predict failed: " + "; ".join(failures) + " (completed parts are kept; rerun to resume)")
        err.exit_code = codes.pop() if len(codes) == 1 else err.exit_code  # the workers' class of failure, if one
        raise err
    return num_parts


def run_local_pipeline(cfg: PipelineConfig) -> dict[str, float]:
    """Run the stages; returns seconds per stage. Each stage resumes where an earlier run stopped."""
    from .blend import BlendConfig, run_blend
    from .finalize import FinalizeConfig, run_finalize
    from .volume import open_volume

    if cfg.parts_per_gpu < 1:
        raise BadArguments(f"--parts-per-gpu must be >= 1, got {cfg.parts_per_gpu}")
    from .model_source import fold_parent

    model, folds = fold_parent(cfg.model, cfg.folds)
    cfg = replace(cfg, model=model, folds=folds)
    if cfg.input.rstrip("/") == cfg.output.rstrip("/"):
        raise BadArguments("--output must differ from --input")
    storage.require_writable(cfg.output, "--output")
    storage.require_writable(cfg.work, "--workdir")
    so = cfg.storage_options
    volume = open_volume(cfg.input, cfg.level, so)
    _check_finalize_arguments(cfg)
    nvox = int(volume.channels) * int(volume.shape[0]) * int(volume.shape[1]) * int(volume.shape[2])
    parts_dir = storage.join(cfg.work, "parts")
    blended = _blended(cfg)
    fused = cfg.fuse_blend_finalize and not (cfg.skip_blend or cfg.skip_finalize)
    times: dict[str, float] = {}
    if cfg.overwrite and not cfg.skip_predict:
        _clear_other_runs(cfg, parts_dir)

    def stage(name: str, fn: Any) -> None:
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
        log.info("== %s done in %.1f s (%.2f Mvox/s of input)", name, times[name], nvox / max(times[name], 1e-9) / 1e6)

    if not cfg.skip_predict:
        devices = select_devices(cfg.gpus, cfg.device)
        log.info("== predict: %d part(s) on %s", len(devices) * cfg.parts_per_gpu, ", ".join(devices))
        stage("predict", lambda: _run_predict_stage(cfg, parts_dir, devices))
    if fused:
        stage("blend+finalize", lambda: run_blend(BlendConfig(parts_dir, cfg.output, quiet=cfg.quiet,
                                                               storage_options=so)))
    else:
        if not cfg.skip_blend:
            stage("blend", lambda: run_blend(BlendConfig(parts_dir, blended, cache_gb=cfg.cache_gb,
                                                         chunk_size=cfg.chunk_size, quiet=cfg.quiet,
                                                         storage_options=so)))
        if not cfg.skip_finalize:
            stage("finalize", lambda: run_finalize(FinalizeConfig(blended, cfg.output, mode=cfg.mode,
                                                                  threshold=cfg.threshold, cache_gb=cfg.cache_gb,
                                                                  overwrite=cfg.overwrite, quiet=cfg.quiet,
                                                                  storage_options=so, levels=cfg.levels,
                                                                  ngff_version=cfg.ngff_version)))
    from .output import is_complete

    if not cfg.keep_intermediates and not cfg.skip_finalize and is_complete(cfg.output, so):
        storage.remove(cfg.work, so)
        log.info("removed intermediates %s (pass --keep-intermediates to keep them)", cfg.work)
    log.info("== pipeline done in %.1f s: %s -> %s", sum(times.values()), cfg.input, cfg.output)
    return times


def _check_finalize_arguments(cfg: PipelineConfig) -> None:
    """Refuse what finalize would refuse (the mode against the model's classes) before predict runs."""
    from .model_source import resolve_model
    from .output import output_channels
    from .predict import model_classes

    if cfg.levels is not None and cfg.levels < 1:
        raise BadArguments(f"--levels must be >= 1, got {cfg.levels}")
    if not cfg.skip_finalize:
        output_channels(cfg.mode, cfg.threshold, model_classes(resolve_model(cfg.model, cfg.storage_options)))


def _clear_other_runs(cfg: PipelineConfig, parts_dir: str) -> None:
    """--overwrite: remove the output predict writes into if another configuration made it, before any
    part writes (this process is the only writer now; parts never delete a shared output)."""
    from .output import output_config, read_attributes
    from .predict import _prepare

    pc = _predict_config(cfg, parts_dir, 0, 1, "cpu")
    spec = pc.output_spec
    attrs = read_attributes(spec.url, cfg.storage_options)  # Zarr v2 or v3
    prev = ((attrs or {}).get("vesuvius") or {}).get("config")
    ctx = _prepare(pc)
    if attrs is not None and prev != output_config(ctx.fp, ctx.cfg.output_spec):
        storage.remove(spec.url, cfg.storage_options)
        log.info("--overwrite: removed %s (written by another configuration)", spec.url)


def run_pipeline() -> int:
    """The seed's API: parse ``sys.argv`` like ``vesuvius.inference_pipeline`` and return an exit code."""
    from .cli import run_command

    return run_command("pipeline", sys.argv[1:])
