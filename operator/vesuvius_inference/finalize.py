"""finalize: blended logits -> uint8 probabilities, masks or labels, as an OME-Zarr image.

Probabilities are ``round(p * 255)`` with one global scale (the seed rescaled each chunk to its own
min..max, which made seams and broke multiclass outputs). Voxels no patch predicted (NaN logits:
skipped empty regions) are 0: background, probability 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .blend import Progress, create_or_open, is_complete, mark_part_done, set_complete
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, Shape3, split_chunks

log = logging.getLogger("vesuvius_inference.finalize")
MODES = ("binary", "multiclass")
DATA_PATH = "0"


def output_channels(mode: str, threshold: bool, num_classes: int) -> int:
    if mode == "binary":
        if num_classes > 2:
            raise BadInput(f"the model has {num_classes} classes: binary mode needs 1 or 2; use --mode multiclass")
        return 1
    return 1 if threshold else num_classes


def finalize_chunk(logits: np.ndarray, mode: str, threshold: bool) -> np.ndarray:
    """(C, ...) float16 logits -> (C_out, ...) uint8. Pure; shared by finalize and fused blend."""
    x = logits.astype(np.float32)
    missing = np.isnan(x).any(axis=0)
    x = np.nan_to_num(x, nan=0.0)
    c = x.shape[0]
    if c == 1:
        if threshold:
            out = (x[0] > 0).astype(np.uint8)[None]
        else:
            p = 1.0 / (1.0 + np.exp(-np.clip(x[0], -80, 80)))
            out = np.rint(p * 255).astype(np.uint8)[None]
    else:
        if threshold:
            out = np.argmax(x, axis=0).astype(np.uint8)[None]
        else:
            x = x - x.max(axis=0, keepdims=True)
            e = np.exp(x)
            p = e / e.sum(axis=0, keepdims=True)
            probs = np.rint(p * 255).astype(np.uint8)
            out = probs[1:2] if mode == "binary" else probs
    out[:, missing] = 0
    return out


def ome_attributes(name: str, n_channels: int, mode: str, threshold: bool, labels: dict[str, int]) -> dict[str, Any]:
    """NGFF 0.5 multiscales metadata (one level) so napari and neuroglancer open the output."""
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [{
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
                         {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [{"path": DATA_PATH,
                              "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]}],
            }],
        },
        "vesuvius_output": {
            "mode": mode, "threshold": threshold, "channels": n_channels, "labels": labels,
            "encoding": ("class ids" if threshold else "round(probability * 255)"),
            "not_predicted": 0,
        },
    }


@dataclass
class FinalizeConfig:
    input_path: str
    output_path: str
    mode: str = "binary"
    threshold: bool = False
    delete_intermediates: bool = False
    also_delete: Sequence[str] = ()  # more intermediates (e.g. the predict parts) to remove with INPUT
    cache_gb: float = 4.0
    chunk_size: Sequence[int] | None = None
    num_parts: int = 1
    part_id: int = 0
    overwrite: bool = False
    quiet: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        storage.require_writable(self.output_path, "OUTPUT")
        if self.also_delete and not self.delete_intermediates:
            raise BadArguments("--also_delete only acts with --delete_intermediates")
        for url in self.also_delete:
            out = self.output_path.rstrip("/")
            if url.rstrip("/") == out or out.startswith(url.rstrip("/") + "/"):
                raise BadArguments(f"--also_delete {url} would delete the output {self.output_path}")
        if self.mode not in MODES:
            raise BadArguments(f"--mode must be binary or multiclass, got {self.mode!r}")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range for --num_parts {self.num_parts}")
        if self.chunk_size is not None:
            raise BadArguments("--chunk-size: finalize writes the blended logits' chunking; set it at predict time")


def _group_setup(cfg: FinalizeConfig, config: dict[str, Any], n_out: int, shape: Shape3, chunks: Shape3,
                 labels: dict[str, int]) -> Any:
    import zarr

    so = cfg.storage_options
    arr = create_or_open(cfg.output_path, (n_out,) + tuple(shape), (1,) + tuple(chunks), "uint8", 0, config,
                         cfg.overwrite, so, path=DATA_PATH)
    grp = zarr.open_group(store=storage.zarr_store(cfg.output_path, so), mode="r+", zarr_format=3)
    if "ome" not in grp.attrs:
        grp.attrs.update({"vesuvius": {"config": config, "complete": False}})
    return arr, grp, ome_attributes(storage.local_path(cfg.output_path).rstrip("/").split("/")[-1], n_out,
                                    cfg.mode, cfg.threshold, labels)



def run_finalize(cfg: FinalizeConfig) -> str:
    """Finalize this process's share of the blended chunks; returns the output URL."""
    import zarr
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    so = cfg.storage_options
    blended_state = is_complete(cfg.input_path, so)
    if blended_state is None:
        if storage.read_json(storage.join(cfg.input_path, "zarr.json"), so) is None:
            raise BadInput(f"{cfg.input_path} does not exist: run blend first")
        raise BadInput(f"{cfg.input_path} is incomplete (blend has not finished every part); finish blend first")
    src = zarr.open_array(store=storage.zarr_store(cfg.input_path, so, read_only=True), mode="r", zarr_format=3)
    c = int(src.shape[0])
    shape: Shape3 = tuple(int(s) for s in src.shape[1:])  # type: ignore[assignment]
    chunks: Shape3 = tuple(int(s) for s in src.chunks[1:])  # type: ignore[assignment]
    n_out = output_channels(cfg.mode, cfg.threshold, c)
    config = {"blend": blended_state.get("config"), "mode": cfg.mode, "threshold": cfg.threshold}
    if (is_complete(cfg.output_path, so) or {}).get("config") == config:
        log.info("finalize output %s is already complete: nothing to do", cfg.output_path)
        return cfg.output_path
    arr, grp, ome = _group_setup(cfg, config, n_out, shape, chunks, {})
    present = _present_chunks(src)
    mine = split_chunks(present, cfg.num_parts, cfg.part_id)
    cgrid = ChunkGrid(shape, chunks)
    progress = Progress(storage.join(cfg.output_path, DATA_PATH), "finalize", cfg.part_id, config, so)
    vox = 0
    with tqdm(total=len(mine), initial=progress.start, desc=f"finalize {cfg.part_id}/{cfg.num_parts}", unit="chunk",
              disable=cfg.quiet, mininterval=1.0) as bar:
        for n, idx in enumerate(mine[progress.start:], start=progress.start):
            lo, hi = cgrid.box(idx)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            arr[(slice(None),) + sl] = finalize_chunk(np.asarray(src[(slice(None),) + sl]), cfg.mode, cfg.threshold)
            vox += int(np.prod(np.subtract(hi, lo)))
            bar.update(1)
            bar.set_postfix_str(f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
            progress.update(n + 1)

    def complete() -> None:
        set_complete(arr)
        grp.attrs.update(dict(ome, vesuvius={"config": config, "complete": True}))
        if cfg.delete_intermediates:
            for url in (cfg.input_path, *cfg.also_delete):
                storage.remove(url, so)
                log.info("deleted intermediate %s", url)

    mark_part_done(storage.join(cfg.output_path, DATA_PATH), "finalize", cfg.part_id, cfg.num_parts,
                   {"chunks": len(mine)}, so, complete)
    dt = time.perf_counter() - t0
    log.info("finalize %d/%d: %d chunks, %.1f s, %.1f Mvox/s -> %s", cfg.part_id, cfg.num_parts, len(mine), dt,
             vox / max(dt, 1e-9) / 1e6, cfg.output_path)
    return cfg.output_path


def _present_chunks(src: Any) -> list[Shape3]:
    """Spatial chunks that exist in the blended store: everything else was never predicted."""
    from zarr.core.sync import sync

    store = src.store
    prefix = src.store_path.path
    prefix = prefix.rstrip("/") + "/" if prefix else ""

    async def _keys() -> list[str]:
        return [k[len(prefix):] async for k in store.list_prefix(prefix)]

    out = []
    for k in sync(_keys()):
        parts = k.split("/")
        if len(parts) == 5 and parts[0] == "c":
            out.append(tuple(int(p) for p in parts[2:]))
    return sorted(out)  # type: ignore[return-value]


async def finalize_logits(input_path: str, output_path: str, mode: str = "binary", threshold: bool = False,
                          delete_intermediates: bool = False, cache_pool_gb: float = 4.0, num_parts: int = 1,
                          part_id: int = 0, verbose: bool = True, storage_options: dict[str, Any] | None = None,
                          **ignored: Any) -> str:
    """The seed's async API; runs finalize in a worker thread."""
    import asyncio

    cfg = FinalizeConfig(input_path, output_path, mode=mode, threshold=threshold,
                         delete_intermediates=delete_intermediates, cache_gb=cache_pool_gb, num_parts=num_parts,
                         part_id=part_id, quiet=not verbose, storage_options=dict(storage_options or {}))
    return await asyncio.to_thread(run_finalize, cfg)


def run_fused(parts_dir: str, output_path: str, mode: str = "binary", threshold: bool = False,
              overwrite: bool = False, quiet: bool = False, storage_options: dict[str, Any] | None = None) -> str:
    """Blend and finalize in one pass: the float16 logits exist only in memory, chunk by chunk.

    The logits are rounded to float16 before finalizing, exactly as the two-stage path stores them,
    so both paths give the same bytes.
    """
    from tqdm import tqdm

    from .blend import Blender, load_parts

    so = dict(storage_options or {})
    t0 = time.perf_counter()
    parts = load_parts(parts_dir, so)
    cfg = FinalizeConfig(parts_dir, output_path, mode=mode, threshold=threshold, overwrite=overwrite, quiet=quiet,
                         storage_options=so)
    cfg.validate()
    n_out = output_channels(mode, threshold, parts.num_classes)
    config = {"blend": dict(parts.config, stage="blend"), "mode": mode, "threshold": threshold}
    if (is_complete(output_path, so) or {}).get("config") == config:
        log.info("output %s is already complete: nothing to do", output_path)
        return output_path
    arr, grp, ome = _group_setup(cfg, config, n_out, parts.shape, parts.chunks, {})
    blender = Blender(parts)
    ids = blender.chunk_ids()
    vox = 0
    with tqdm(total=len(ids), desc="blend+finalize", unit="chunk", disable=quiet, mininterval=1.0) as bar:
        for idx in ids:
            lo, hi = blender.cgrid.box(idx)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            arr[(slice(None),) + sl] = finalize_chunk(blender.logits(idx), mode, threshold)
            vox += int(np.prod(np.subtract(hi, lo)))
            bar.update(1)
    set_complete(arr)
    grp.attrs.update(dict(ome, vesuvius={"config": config, "complete": True}))
    dt = time.perf_counter() - t0
    log.info("blend+finalize: %d chunks, %.1f s, %.1f Mvox/s -> %s", len(ids), dt, vox / max(dt, 1e-9) / 1e6,
             output_path)
    return output_path
