"""predict: run the model over one part's patches; write what only this part covers, keep the seams.

Orchestration over small parts: claim the part (claims.py), read patches ahead (reader.py), run the
model with TTA and folds (runner.py), weight and quantise on the device (fixedpoint.py), accumulate
into a bounded chunk cache on the device (accumulate.py), and hand each completed chunk to the
part's writer (partstore.py): straight into the output (output.py) for the chunk rows only this
part covers, into thin seam segments otherwise. The marker is written last and names the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import storage
from .claims import Lease, default_lease_s, trusted_complete
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, PatchGrid, Shape3, nonempty_patches, tiled_order
from .ngff import ngff_for
from .output import BLENDED, FINAL, MODES, OutputSpec, check_ngff_version, output_channels
from .partstore import (
    CHECKPOINT,
    FORMAT_VERSION,
    claim_url,
    marker_url,
    pack_mask,
    part_name,
    store_url,
)
from .volume import InputVolume, open_volume

log = logging.getLogger("vesuvius_inference.predict")
__all__ = ["PredictConfig", "run_predict", "Inferer", "part_name", "CHECKPOINT", "store_url", "pack_mask"]


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
    device: str = "auto"  # auto: a CUDA GPU if one is visible, else the CPU; cuda/cuda:N: that GPU or exit 69
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
    blended_output: str | None = None  # write owned chunks as blended logits here
    final_output: str | None = None  # ... or finalized (mode, threshold) here
    mode: str = "binary"
    threshold: bool = False
    levels: int | None = None  # pyramid levels of the final output (None: down to one chunk)
    ngff_version: str = "auto"  # the final output's OME-Zarr version: 0.4 (Zarr v2), 0.5 (Zarr v3), auto: the input's
    lease_s: float | None = None
    intensity_check: str = "warn"  # the input's intensities against the model's training range: warn, error, off
    compile: bool = False  # torch.compile the networks (off by default: compile time, and not every build has it)

    @property
    def input_cache_bytes(self) -> int:
        """The input chunk cache: --input_cache_gb, else a quarter of --cache_gb."""
        return int((self.input_cache_gb if self.input_cache_gb is not None else self.cache_gb / 4) * (1 << 30))

    @property
    def input_storage_options(self) -> dict[str, Any]:
        return {**self.storage_options, "anon": True} if self.input_anon else self.storage_options

    @property
    def output_spec(self) -> OutputSpec | None:
        if self.final_output:  # ngff "auto" is resolved against the input by _prepare
            return OutputSpec(self.final_output, FINAL, self.mode, self.threshold, self.levels, self.ngff_version)
        if self.blended_output:
            return OutputSpec(self.blended_output, BLENDED)
        return None

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
        if self.blended_output and self.final_output:
            raise BadArguments("--blended_output and --final_output are exclusive: name one output")
        if self.mode not in MODES:
            raise BadArguments(f"--mode must be binary or multiclass, got {self.mode!r}")
        spec = self.output_spec
        if spec is not None:
            storage.require_writable(spec.url, "--final_output" if spec.kind == FINAL else "--blended_output")
            if spec.url.rstrip("/") in (self.input_dir.rstrip("/"), self.output_dir.rstrip("/")):
                raise BadArguments(f"the output {spec.url} must differ from --input_dir and --output_dir")
        if self.levels is not None and self.levels < 1:
            raise BadArguments(f"--levels must be >= 1, got {self.levels}")
        check_ngff_version(self.ngff_version)
        if self.intensity_check not in ("warn", "error", "off"):
            raise BadArguments(f"--intensity_check must be warn, error or off, got {self.intensity_check!r}")
        if self.lease_s is not None and self.lease_s <= 0:
            raise BadArguments(f"--lease_s must be > 0 seconds, got {self.lease_s}")


@dataclass
class _Context:
    """What is known before the model is loaded (enough to tell whether the part is done)."""

    cfg: PredictConfig
    volume: InputVolume
    model_dir: str
    patch: Shape3
    chunks: Shape3
    fp: dict[str, Any]
    marker_url: str
    claim_url: str
    device: Any = None  # the torch device, checked before the part is claimed


def plan_part(grid: PatchGrid, cgrid: ChunkGrid, part: tuple[int, int]) -> dict[Shape3, int]:
    """Per chunk: how many of this part's patches touch it (a chunk completes when this hits 0)."""
    a, b = part
    remaining: dict[Shape3, int] = {}
    for i in range(a, b):
        for idx in cgrid.touching(*grid.region(i)):
            remaining[idx] = remaining.get(idx, 0) + 1
    return remaining


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


def _region(bbox: str | None, shape: Shape3, where: str = "the input") -> tuple[Shape3, Shape3] | None:
    """``--bbox`` as (lo, hi), or None for the whole volume; a malformed one is a bad argument (exit 2)."""
    from .grid import parse_bbox

    try:
        return parse_bbox(bbox, shape, where)
    except ValueError as e:
        raise BadArguments(str(e)) from None


def make_grid(shape: Shape3, patch: Shape3, overlap: float, bbox: str | None) -> PatchGrid:
    """The patch grid over the volume, or over ``--bbox`` treated as the volume (nnU-Net's grid of the crop)."""
    box = _region(bbox, shape)
    if box is None:
        return PatchGrid(shape, patch, overlap)
    lo, hi = box
    return PatchGrid(tuple(b - a for a, b in zip(lo, hi)), patch, overlap, origin=lo)  # type: ignore[arg-type]


def _fingerprint(cfg: PredictConfig, model_fp: str, volume: InputVolume, patch: Shape3, chunks: Shape3,
                 labels: dict[str, Any]) -> dict[str, Any]:
    spec = cfg.output_spec
    return {
        "format": FORMAT_VERSION,
        "input": cfg.input_dir, "level": cfg.level, "shape": list(volume.shape), "channels": volume.channels,
        "dtype": str(volume.dtype), "model": model_fp, "folds": [str(f) for f in cfg.folds] if cfg.folds else None,
        "patch_size": list(patch), "overlap": cfg.overlap, "tta": cfg.do_tta, "skip_empty": cfg.skip_empty_patches,
        "chunk_size": list(chunks), "num_parts": cfg.num_parts, "bbox": cfg.bbox,
        "output": spec.as_dict() if spec else None,
        "frame": volume.frame.as_dict(), "labels": labels,  # for the output's metadata
        "input_zarr_format": volume.zarr_format,  # outputs made later (blend --mode, finalize) follow the input
    }


def _model_fingerprint(model_path: str, folds: Sequence[int | str] | None) -> str:
    """Identity of the model files, without importing torch (so a finished part exits at once)."""
    from .model import _file_digest, find_checkpoints

    folder = storage.local_path(model_path)
    ckpts = find_checkpoints(folder, folds)
    digest = hashlib.sha256()
    for name in ("plans.json", "dataset.json"):
        digest.update(_file_digest(os.path.join(folder, name)).encode())
    for fold, path in ckpts.items():
        digest.update(f"{fold}:{_file_digest(path)}".encode())
    return digest.hexdigest()[:16]


def _model_json(model_path: str, name: str) -> dict[str, Any]:
    with open(os.path.join(storage.local_path(model_path), name)) as f:
        return json.load(f)


def _plans_configuration(model_path: str) -> dict[str, Any]:
    confs = _model_json(model_path, "plans.json").get("configurations", {})
    return confs.get("3d_fullres") or next(iter(confs.values()), {})


def _plans_patch_size(model_path: str) -> Shape3:
    ps = _plans_configuration(model_path).get("patch_size")
    if not ps or len(ps) != 3:
        raise BadInput(f"model {model_path}: plans.json has no 3D patch_size; only 3D models are supported")
    return tuple(int(p) for p in ps)  # type: ignore[return-value]


def model_labels(model_path: str) -> dict[str, Any]:
    """dataset.json's class names -> ids (no torch needed)."""
    return dict(_model_json(model_path, "dataset.json").get("labels", {}))


def model_classes(model_path: str) -> int:
    """Output classes of a label-based nnU-Net model."""
    return max(1, len(model_labels(model_path)))


def _prepare(cfg: PredictConfig) -> _Context:
    cfg.validate()
    from .model_source import fold_parent, resolve_model
    from .runner import resolve_device

    device = resolve_device(cfg.device) if cfg.device.startswith("cuda") else None  # a GPU asked for: first

    model_path, folds = fold_parent(cfg.model_path, cfg.folds)
    cfg = replace(cfg, model_path=model_path, folds=folds)
    volume = open_volume(cfg.input_dir, cfg.level, cfg.input_storage_options)
    cfg = replace(cfg, ngff_version=ngff_for(cfg.ngff_version, volume.zarr_format))  # outputs in the scan's format
    volume.cache_bytes = cfg.input_cache_bytes  # from the first read: the intensity check's samples stay cached
    region = _region(cfg.bbox, volume.shape, volume.where)  # a bad --bbox is refused before anything else
    model_dir = resolve_model(cfg.model_path, cfg.storage_options, cfg.model_cache_dir)
    spec = cfg.output_spec
    if spec is not None and spec.kind == FINAL:
        output_channels(spec.mode, spec.threshold, model_classes(model_dir))  # refuse a bad mode before any work
    from .normalization import check_schemes, intensity_mismatch

    check_schemes(_plans_configuration(model_dir).get("normalization_schemes", []))  # before any work
    if cfg.intensity_check != "off":
        problem = intensity_mismatch(volume, _model_json(model_dir, "plans.json"), region)
        if problem and cfg.intensity_check == "error":
            raise BadInput(problem)
        if problem:
            log.warning("warning: %s", problem)
    patch = tuple(int(p) for p in (cfg.patch_size or _plans_patch_size(model_dir)))
    chunks = tuple(int(c) for c in (cfg.chunk_size or patch))
    fp = _fingerprint(cfg, _model_fingerprint(model_dir, cfg.folds), volume, patch, chunks,  # type: ignore[arg-type]
                      model_labels(model_dir))
    return _Context(cfg, volume, model_dir, patch, chunks, fp,  # type: ignore[arg-type]
                    marker_url(cfg.output_dir, cfg.part_id), claim_url(cfg.output_dir, cfg.part_id), device)


def _done(ctx: _Context) -> bool:
    """True if a trusted marker of this configuration exists; refuses another configuration's part."""
    so = ctx.cfg.storage_options
    marker = storage.read_json(ctx.marker_url, so)
    if marker is None:
        return False
    if marker.get("config") != ctx.fp:
        if not ctx.cfg.overwrite:
            raise BadInput(f"{ctx.marker_url} was written by a different configuration; pass --overwrite to replace it")
        return False
    if trusted_complete(ctx.claim_url, marker.get("run"), so):
        return True
    log.warning("%s names run %s, which does not hold the part's claim as complete: predicting the part again",
                ctx.marker_url, marker.get("run"))
    return False


def run_predict(cfg: PredictConfig) -> tuple[str, str]:
    """Run one part; return (part store URL, marker URL). Idempotent: a finished part returns at once."""
    ctx = _prepare(cfg)
    so = cfg.storage_options
    if _done(ctx):
        log.info("predict part %d/%d is already complete (%s): nothing to do", cfg.part_id, cfg.num_parts,
                 ctx.marker_url)
        return storage.read_json(ctx.marker_url, so)["store"], ctx.marker_url
    from .runner import resolve_device

    if ctx.device is None:  # auto or cpu (a GPU asked for was checked before anything else)
        ctx.device = resolve_device(cfg.device)
    lease = Lease(ctx.claim_url, f"predict part {cfg.part_id} of {cfg.output_dir}", so,
                  cfg.lease_s if cfg.lease_s is not None else default_lease_s(),
                  info={"part_id": cfg.part_id})
    found = lease.acquire()
    if found is not None:  # complete, but its marker was not trusted or is of another configuration
        if _done(ctx):
            return storage.read_json(ctx.marker_url, so)["store"], ctx.marker_url
        lease.acquire(take_complete=True)
    with lease:
        from .predict_part import predict_part

        return predict_part(ctx, lease)


class Inferer:
    """The seed's Python API: ``Inferer(...).infer() -> (part store, marker)``. Errors raise."""

    def __init__(self, model_path: str, input_dir: str, output_dir: str, input_format: str = "zarr",
                 tta_type: str = "mirroring", do_tta: bool = True, num_parts: int = 1, part_id: int = 0,
                 overlap: float = 0.5, batch_size: int = 1, patch_size: Sequence[int] | None = None,
                 device: str = "auto", skip_empty_patches: bool = True, folds: Sequence[int] | None = None,
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


def _digest(items: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


def part_order(grid: PatchGrid, part: tuple[int, int], nonempty: np.ndarray, cfg: PredictConfig,
               volume: InputVolume) -> list[int]:
    """The non-empty patches of the part, in the order they run (tiled to the input cache)."""
    if cfg.patch_order == "tiled":
        order = tiled_order(grid, part, cfg.input_cache_bytes, volume.channels * volume.dtype.itemsize)
    else:
        order = list(range(*part))
    return [i for i in order if nonempty[i]]

