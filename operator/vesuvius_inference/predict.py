"""predict: run the model over one part's patches and accumulate into the part store.

Read (prefetch thread) -> normalize (plans) -> forward over folds and mirror flips, batched ->
weight with nnU-Net's Gaussian -> quantise -> accumulate into chunked sums -> marker last.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import storage
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, PatchGrid, Shape3, nonempty_patches, split_parts, tiled_order
from .volume import InputVolume, open_volume

log = logging.getLogger("vesuvius_inference.predict")
FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.json"  # inside the part store: blend never lists it


def part_name(part_id: int) -> str:
    return f"part_{part_id:05d}"


@dataclass
class PredictConfig:
    """Everything that determines a part's bytes (plus where it goes)."""

    model_path: str
    input_dir: str
    output_dir: str
    part_id: int = 0
    num_parts: int = 1
    overlap: float = 0.5
    batch_size: int = 1
    device: str = "cuda"
    skip_empty_patches: bool = True
    do_tta: bool = True
    tta_type: str = "mirroring"
    patch_size: Sequence[int] | None = None
    folds: Sequence[int | str] | None = None
    cache_gb: float = 4.0
    chunk_size: Sequence[int] | None = None
    level: int = 0
    overwrite: bool = False
    quiet: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    input_anon: bool = False
    model_cache_dir: str | None = None
    input_cache_gb: float | None = None  # default: a quarter of cache_gb
    bbox: str | None = None
    patch_order: str = "tiled"
    checkpoint_s: float = 600.0  # seconds between checkpoints a killed part resumes from

    @property
    def input_storage_options(self) -> dict[str, Any]:
        return {**self.storage_options, "anon": True} if self.input_anon else self.storage_options

    def validate(self) -> None:
        storage.require_writable(self.output_dir, "--output_dir")
        if self.num_parts < 1:
            raise BadArguments(f"--num_parts must be >= 1, got {self.num_parts}")
        if not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range: use 0..{self.num_parts - 1} for --num_parts {self.num_parts}")
        if not 0 <= self.overlap < 1:
            raise BadArguments(f"--overlap is the overlap fraction between patches, in [0, 1); got {self.overlap}")
        if self.batch_size < 1:
            raise BadArguments(f"--batch_size must be >= 1, got {self.batch_size}")
        if self.cache_gb <= 0:
            raise BadArguments(f"--cache_gb must be > 0, got {self.cache_gb}")
        if self.checkpoint_s < 0:
            raise BadArguments(f"--checkpoint_s must be >= 0 seconds, got {self.checkpoint_s}")
        if self.patch_order not in ("tiled", "rowmajor"):
            raise BadArguments(f"--patch_order must be tiled or rowmajor, got {self.patch_order!r}")
        if self.tta_type != "mirroring":
            raise BadArguments(f"--tta_type {self.tta_type!r} is not supported: nnU-Net models use 'mirroring'")
        for name, v in (("--patch_size", self.patch_size), ("--chunk_size", self.chunk_size)):
            if v is not None and (len(v) != 3 or min(v) < 1):
                raise BadArguments(f"{name} needs three positive integers z,y,x, got {v}")


def resolve_device(requested: str) -> Any:
    """The torch device to use; a CUDA request without a GPU falls back to CPU with one warning line."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("no CUDA GPU is available: running on the CPU (pass --device cpu to silence this)")
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise BadArguments(f"--device {requested!r} is not a torch device (use cuda, cuda:1 or cpu)") from None


class Runner:
    """Forward passes of every fold with mirroring TTA, batched into one call per fold.

    nnU-Net runs flips one by one; batching them is the same arithmetic. Every call has the same
    batch size (the last batch is padded), because on the CPU a network's output for a sample can
    change in the last bits with the batch size, and part-count invariance needs identical bits.
    """

    def __init__(self, model: Any, device: Any, tta: bool, batch_size: int) -> None:
        import torch

        self.torch = torch
        self.model = model.to(device)
        self.device = device
        axes = model.mirror_axes if tta else None
        self.combos: list[tuple[int, ...]] = []
        if axes:
            dims = [a + 2 for a in axes]
            self.combos = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]
        self.batch_size = batch_size

    @property
    def passes_per_patch(self) -> int:
        return (1 + len(self.combos)) * len(self.model.networks)

    def __call__(self, x: np.ndarray) -> Any:
        torch = self.torch
        b = x.shape[0]
        xt = torch.from_numpy(x)
        if self.device.type == "cuda":
            xt = xt.pin_memory().to(self.device, non_blocking=True)
        batch = torch.cat([xt] + [torch.flip(xt, c) for c in self.combos]) if self.combos else xt
        total = None
        with torch.inference_mode():
            for net in self.model.networks:
                if self.device.type == "cuda":
                    with torch.autocast("cuda"):
                        out = net(batch)
                else:
                    out = net(batch)
                out = out.float()
                pred = out[:b].clone()
                for k, c in enumerate(self.combos):
                    pred += torch.flip(out[(k + 1) * b:(k + 2) * b], c)
                if self.combos:
                    pred /= len(self.combos) + 1
                total = pred if total is None else total + pred
            if len(self.model.networks) > 1:
                total /= len(self.model.networks)
        return total


@dataclass
class _Patch:
    index: int
    lo: Shape3
    hi: Shape3
    data: np.ndarray | None  # normalized, padded (C_in, p...) or None if homogeneous


def _read_patches(volume: InputVolume, grid: PatchGrid, indices: Sequence[int], normalizer: Any,
                  skip_homogeneous: bool, out: queue.Queue, stop: threading.Event) -> None:
    """Producer thread: read and normalize patches in order (I/O overlaps the model)."""
    try:
        for i in indices:
            if stop.is_set():
                return
            lo, hi = grid.region(i)
            raw = volume.read(lo, hi)
            if skip_homogeneous and all(float(c.min()) == float(c.max()) for c in raw):
                out.put(_Patch(i, lo, hi, None))
                continue
            normalizer.apply(raw)
            start = grid.start(i)
            buf = np.zeros((raw.shape[0],) + tuple(grid.patch), dtype=np.float32)
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
            buf[(slice(None),) + dst] = raw
            out.put(_Patch(i, lo, hi, buf))
        out.put(None)
    except BaseException as e:  # surfaced in the consumer
        out.put(e)


def plan_part(grid: PatchGrid, cgrid: ChunkGrid, nonempty: np.ndarray, part: tuple[int, int]
              ) -> tuple[dict[Shape3, int], set[Shape3]]:
    """Per chunk: how many of this part's patches touch it, and whether any other part writes it."""
    a, b = part
    remaining: dict[Shape3, int] = {}
    for i in range(a, b):
        for idx in cgrid.touching(*grid.region(i)):
            remaining[idx] = remaining.get(idx, 0) + 1
    shared = set()
    for idx in remaining:
        others = grid.patches_touching(*cgrid.box(idx))
        outside = others[(others < a) | (others >= b)]
        if outside.size and nonempty[outside].any():
            shared.add(idx)
    return remaining, shared


def patch_nonempty(grid: PatchGrid, volume: InputVolume, skip_empty: bool) -> np.ndarray:
    """Patches that may hold data: those touching at least one stored input chunk."""
    occ = volume.occupancy if skip_empty else None
    if occ is None:
        return np.ones(grid.n_patches, dtype=bool)
    return nonempty_patches(grid, occ, volume.chunks)


def _shared_stats(cfg: PredictConfig, normalizer: Any, volume: InputVolume, fp: dict[str, Any]) -> list[dict]:
    """Whole-volume statistics, computed by the first part and reused by the others.

    Stored next to the parts, keyed by everything they depend on; the input is read for them at
    most once per run, not once per part.
    """
    if not normalizer.needs_stats:
        return normalizer.compute_stats(volume)
    key = {k: fp[k] for k in ("input", "level", "shape", "channels", "dtype")} | {"schemes": normalizer.schemes,
                                                                                  "use_mask": normalizer.use_mask}
    url = storage.join(cfg.output_dir, "input_stats.json")
    cached = storage.read_json(url, cfg.storage_options)
    if cached and cached.get("key") == key:
        normalizer.stats = cached["stats"]
        return normalizer.stats
    stats = normalizer.compute_stats(volume)
    storage.write_json(url, {"key": key, "stats": stats}, cfg.storage_options)
    return stats


def _grid(volume: InputVolume, patch: Shape3, cfg: PredictConfig) -> PatchGrid:
    """The patch grid over the volume, or over ``--bbox`` treated as the volume (nnU-Net's grid of the crop)."""
    from .grid import parse_bbox

    try:
        box = parse_bbox(cfg.bbox, volume.shape)
    except ValueError as e:
        raise BadArguments(str(e)) from None
    if box is None:
        return PatchGrid(volume.shape, patch, cfg.overlap)
    lo, hi = box
    return PatchGrid(tuple(b - a for a, b in zip(lo, hi)), patch, cfg.overlap, origin=lo)  # type: ignore[arg-type]


def _fingerprint(cfg: PredictConfig, model_fp: str, volume: InputVolume, patch: Shape3, chunks: Shape3) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "input": cfg.input_dir, "level": cfg.level, "shape": list(volume.shape), "channels": volume.channels,
        "dtype": str(volume.dtype), "model": model_fp, "folds": [str(f) for f in cfg.folds] if cfg.folds else None,
        "patch_size": list(patch), "overlap": cfg.overlap, "tta": cfg.do_tta, "skip_empty": cfg.skip_empty_patches,
        "chunk_size": list(chunks), "num_parts": cfg.num_parts, "bbox": cfg.bbox,
    }


def _model_fingerprint(model_path: str, folds: Sequence[int | str] | None) -> str:
    """Identity of the model files, without importing torch (so a finished part exits at once)."""
    import hashlib

    from .model import _file_digest, find_checkpoints

    folder = storage.local_path(model_path)
    ckpts = find_checkpoints(folder, folds)
    digest = hashlib.sha256()
    for name in ("plans.json", "dataset.json"):
        digest.update(_file_digest(os.path.join(folder, name)).encode())
    for fold, path in ckpts.items():
        digest.update(f"{fold}:{_file_digest(path)}".encode())
    return digest.hexdigest()[:16]


def _plans_patch_size(model_path: str) -> Shape3:
    import json

    folder = storage.local_path(model_path)
    with open(os.path.join(folder, "plans.json")) as f:
        plans = json.load(f)
    confs = plans.get("configurations", {})
    conf = confs.get("3d_fullres") or next(iter(confs.values()), {})
    ps = conf.get("patch_size")
    if not ps or len(ps) != 3:
        raise BadInput(f"model {model_path}: plans.json has no 3D patch_size; only 3D models are supported")
    return tuple(int(p) for p in ps)  # type: ignore[return-value]


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="patch", disable=quiet, dynamic_ncols=True, mininterval=1.0)


def run_predict(cfg: PredictConfig) -> tuple[str, str]:
    """Run one part; return (part store URL, marker URL). Idempotent: a finished part returns at once."""
    cfg.validate()
    t0 = time.perf_counter()
    so = cfg.storage_options
    volume = open_volume(cfg.input_dir, cfg.level, cfg.input_storage_options)
    from .model_source import resolve_model

    model_dir = resolve_model(cfg.model_path, so, cfg.model_cache_dir)
    model_fp = _model_fingerprint(model_dir, cfg.folds)
    patch = tuple(int(p) for p in (cfg.patch_size or _plans_patch_size(model_dir)))
    chunks = tuple(int(c) for c in (cfg.chunk_size or patch))
    fp = _fingerprint(cfg, model_fp, volume, patch, chunks)  # type: ignore[arg-type]
    name = part_name(cfg.part_id)
    store_url = storage.join(cfg.output_dir, name)
    marker_url = storage.join(cfg.output_dir, name + ".json")

    marker = storage.read_json(marker_url, so)
    if marker is not None:
        if marker.get("config") == fp:
            log.info("predict part %d/%d is already complete (%s): nothing to do", cfg.part_id, cfg.num_parts, marker_url)
            return store_url, marker_url
        if not cfg.overwrite:
            raise BadInput(f"{marker_url} was written by a different configuration; pass --overwrite to replace it")
    started = storage.read_json(storage.join(store_url, "zarr.json"), so)
    if started is not None and started.get("attributes", {}).get("config") not in (None, fp) and not cfg.overwrite:
        raise BadInput(f"{store_url} holds a part of a different configuration; pass --overwrite to replace it")

    from .model import load_model
    from .normalization import Normalizer

    model = load_model(model_dir, cfg.folds)
    if model.num_input_channels != volume.channels:
        raise BadInput(f"model expects {model.num_input_channels} input channel(s), {cfg.input_dir} has {volume.channels}")
    device = resolve_device(cfg.device)
    grid = _grid(volume, patch, cfg)  # type: ignore[arg-type]
    cgrid = ChunkGrid(volume.shape, chunks)  # type: ignore[arg-type]
    nonempty = patch_nonempty(grid, volume, cfg.skip_empty_patches)
    part = split_parts(nonempty, cfg.num_parts)[cfg.part_id]
    remaining, shared = plan_part(grid, cgrid, nonempty, part)
    normalizer = Normalizer.from_plans(model.configuration_manager, model.plans_manager, volume.channels)
    stats = _shared_stats(cfg, normalizer, volume, fp)

    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    from .partstore import PartAccumulator, scale_bits_for

    in_budget = (cfg.input_cache_gb if cfg.input_cache_gb is not None else cfg.cache_gb / 4) * (1 << 30)
    if cfg.patch_order == "tiled":
        order = tiled_order(grid, part, in_budget, volume.channels * volume.dtype.itemsize)
    else:
        order = list(range(*part))
    todo = [i for i in order if nonempty[i]]
    ckpt_key = {"config": fp, "todo": _digest(todo)}
    ckpt_url = storage.join(store_url, CHECKPOINT)
    group, arrays, resume = _open_store(store_url, marker_url, ckpt_url, ckpt_key, fp, cfg, model.num_classes,
                                        volume.shape, chunks)
    scale_bits = scale_bits_for(grid.max_coverage())
    cache_bytes = int(cfg.cache_gb * (1 << 30))
    accum = PartAccumulator(*arrays, cgrid, model.num_classes, remaining, shared, cache_bytes)

    runner = Runner(model, device, cfg.do_tta, cfg.batch_size)
    w64 = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float16,
                           device=torch.device("cpu")).double().to(device)
    scale = float(2 ** scale_bits)
    wq_full = torch.round(w64 * scale).long().cpu().numpy()

    volume.cache_bytes = int(in_budget)
    accum.cache_bytes = max(1, cache_bytes - volume.cache_bytes)
    skipped_listing = (part[1] - part[0]) - len(todo)
    stats_run = {"run": 0, "skipped_homogeneous": 0, "skipped_absent": skipped_listing}
    start = 0
    if resume is not None:
        start = int(resume["position"])
        stats_run = dict(resume["stats"])
        for i in todo[:start]:
            accum.replay_done(*grid.region(i))
        accum.restore(resume["accumulator"])
        log.info("predict part %d/%d: resuming after patch %d of %d (checkpoint %s)", cfg.part_id, cfg.num_parts,
                 start, len(todo), ckpt_url)
    q: queue.Queue = queue.Queue(maxsize=max(4, 2 * cfg.batch_size))
    stop = threading.Event()
    reader = threading.Thread(target=_read_patches, daemon=True,
                              args=(volume, grid, todo[start:], normalizer, cfg.skip_empty_patches, q, stop))
    reader.start()
    patch_vox = int(np.prod(patch))
    bar = _progress(part[1] - part[0], f"predict part {cfg.part_id}/{cfg.num_parts}", cfg.quiet)
    bar.update(skipped_listing + start)
    t_loop, last_ckpt, run_here = time.perf_counter(), time.monotonic(), 0

    def finish(p_lo_hi: tuple[Shape3, Shape3]) -> None:
        accum.patch_done(*p_lo_hi)
        bar.update(1)

    try:
        # patches empty by the listing are done before any reading; they only count down chunks
        for i in range(*part):
            if not nonempty[i]:
                accum.patch_done(*grid.region(i))
        batch: list[_Patch] = []
        position = start
        for item in _drain(q):
            if isinstance(item, _Patch):
                position += 1
                if item.data is None:
                    stats_run["skipped_homogeneous"] += 1
                    finish((item.lo, item.hi))
                else:
                    batch.append(item)
            if batch and (len(batch) == cfg.batch_size or item is None):
                _run_batch(batch, runner, cfg.batch_size, w64, scale, wq_full, grid, accum)
                for p in batch:
                    finish((p.lo, p.hi))
                stats_run["run"] += len(batch)
                run_here += len(batch)
                batch = []
                if stats_run["run"] % 32 < cfg.batch_size:
                    _trim_heap()
                elapsed = time.perf_counter() - t_loop
                bar.set_postfix_str(f"{run_here * patch_vox / max(elapsed, 1e-9) / 1e6:.2f} Mvox/s")
                if item is not None and time.monotonic() - last_ckpt >= cfg.checkpoint_s:
                    # every patch drained so far is finished: the checkpoint covers todo[:position]
                    state = accum.checkpoint()
                    storage.write_json(ckpt_url, {**ckpt_key, "position": position, "stats": stats_run,
                                                  "accumulator": state}, so)
                    accum.committed()
                    last_ckpt = time.monotonic()
        accum.close()
    finally:
        stop.set()
        bar.close()

    marker = {
        "config": fp, "complete": True, "part_id": cfg.part_id, "part": list(part),
        "num_classes": model.num_classes, "scale_bits": scale_bits, "normalization": stats,
        "final_chunks": [list(c) for c in accum.final_chunks],
        "acc_chunks": [list(c) for c in accum.acc_chunks],
        "patches": {"total": part[1] - part[0], **stats_run, "run_by_last_run": run_here, "resumed_at": start},
        "evictions": accum.evictions,
        "input_chunks_fetched": volume.fetched_chunks,
        "model_passes": stats_run["run"] * runner.passes_per_patch,
    }
    storage.write_json(marker_url, marker, so)
    _drop_scratch(group, store_url, ckpt_url, so)
    dt = time.perf_counter() - t0
    log.info("predict part %d/%d: %d patches run, %d empty skipped, %d chunks final + %d shared, %.1f s, %.2f Mvox/s",
             cfg.part_id, cfg.num_parts, stats_run["run"],
             stats_run["skipped_homogeneous"] + stats_run["skipped_absent"], len(accum.final_chunks),
             len(accum.acc_chunks), dt, stats_run["run"] * patch_vox / max(dt, 1e-9) / 1e6)
    return store_url, marker_url


def _digest(items: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


def _open_store(store_url: str, marker_url: str, ckpt_url: str, ckpt_key: dict[str, Any], fp: dict[str, Any],
                cfg: PredictConfig, n_classes: int, shape: Shape3, chunks: Shape3
                ) -> tuple[Any, tuple[Any, Any, tuple[Any, Any]], dict[str, Any] | None]:
    """Reopen a part store at its last checkpoint, or start a new one.

    A checkpoint is used only if it was made by the same configuration and the same patch order
    (which depends on the cache sizes); anything else starts the part over.
    """
    import zarr

    from .partstore import create_part_arrays, open_part_arrays

    so = cfg.storage_options
    ckpt = storage.read_json(ckpt_url, so)
    if ckpt is not None and all(ckpt.get(k) == v for k, v in ckpt_key.items()) and not cfg.overwrite:
        try:
            group = zarr.open_group(store=storage.zarr_store(store_url, so), mode="r+", zarr_format=3)
            return group, open_part_arrays(group), ckpt
        except (KeyError, FileNotFoundError, ValueError) as e:
            log.warning("checkpoint %s cannot be used (%s): starting the part over", ckpt_url, e)
    elif ckpt is not None:
        log.info("checkpoint %s is from another configuration or patch order: starting the part over", ckpt_url)
    storage.remove(marker_url, so)
    storage.remove(store_url, so)
    group = zarr.open_group(store=storage.zarr_store(store_url, so), mode="w", zarr_format=3)
    group.attrs.update({"config": fp, "part_id": cfg.part_id})
    return group, create_part_arrays(group, n_classes, shape, chunks), None


def _drop_scratch(group: Any, store_url: str, ckpt_url: str, so: dict[str, Any]) -> None:
    """After the marker: spilled partial sums and the checkpoint are no longer needed."""
    from .partstore import SPILLS

    try:
        storage.remove(ckpt_url, so)
        for name in SPILLS:
            storage.remove(storage.join(store_url, name), so)
    except OSError as e:  # the part is complete; leftovers only cost space
        log.warning("could not remove scratch data of %s: %s", store_url, e)


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc), so peak RSS tracks the cache, not the patch count."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _drain(q: queue.Queue) -> Iterator[_Patch | None]:
    while True:
        item = q.get()
        if isinstance(item, BaseException):
            if isinstance(item, (OSError, ValueError)):
                raise BadInput(f"reading the input failed: {type(item).__name__}: {item}") from item
            raise item
        yield item
        if item is None:
            return


def _run_batch(batch: list[_Patch], runner: Runner, batch_size: int, w64: Any, scale: float, wq_full: np.ndarray,
               grid: PatchGrid, accum: Any) -> None:
    import torch

    from .partstore import FP16_MAX

    x = np.zeros((batch_size,) + batch[0].data.shape, dtype=np.float32)  # type: ignore[union-attr]
    for k, p in enumerate(batch):
        x[k] = p.data
    logits = runner(x)
    for k, p in enumerate(batch):
        lq = torch.round(logits[k].double().clamp_(-FP16_MAX, FP16_MAX) * w64 * scale).long().cpu().numpy()
        start = grid.start(p.index)
        src = tuple(slice(a - s, b - s) for a, b, s in zip(p.lo, p.hi, start))
        accum.add(p.lo, p.hi, lq[(slice(None),) + src], wq_full[src])


class Inferer:
    """The seed's Python API: ``Inferer(...).infer() -> (part store, marker)``. Errors raise."""

    def __init__(self, model_path: str, input_dir: str, output_dir: str, input_format: str = "zarr",
                 tta_type: str = "mirroring", do_tta: bool = True, num_parts: int = 1, part_id: int = 0,
                 overlap: float = 0.5, batch_size: int = 1, patch_size: Sequence[int] | None = None,
                 device: str = "cuda", skip_empty_patches: bool = True, folds: Sequence[int] | None = None,
                 cache_gb: float = 4.0, chunk_size: Sequence[int] | None = None, level: int = 0,
                 overwrite: bool = False, verbose: bool = False, storage_options: dict[str, Any] | None = None,
                 **ignored: Any) -> None:
        if input_format != "zarr":
            raise BadArguments(f"input_format {input_format!r} is not supported; inputs are Zarr")
        self.config = PredictConfig(
            model_path=model_path, input_dir=input_dir, output_dir=output_dir, part_id=part_id, num_parts=num_parts,
            overlap=overlap, batch_size=batch_size, device=device, skip_empty_patches=skip_empty_patches,
            do_tta=do_tta, tta_type=tta_type, patch_size=patch_size, folds=folds, cache_gb=cache_gb,
            chunk_size=chunk_size, level=level, overwrite=overwrite, quiet=not verbose,
            storage_options=dict(storage_options or {}))
        self.ignored = ignored

    def infer(self) -> tuple[str, str]:
        return run_predict(self.config)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.config)
