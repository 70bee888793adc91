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
from .blend import Progress, mark_part_done, run_fused
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, Shape3, split_chunks
from .output import (
    DATA_PATH,
    FINAL,
    MODES,
    Output,
    OutputSpec,
    finalize_chunk,
    is_complete,
    list_chunk_coords,
    output_channels,
)

log = logging.getLogger("vesuvius_inference.finalize")
JOURNAL = "_vesuvius"  # claims and progress of finalize splits, inside the output until it is complete
__all__ = ["FinalizeConfig", "run_finalize", "run_fused", "finalize_chunk", "finalize_logits", "output_channels",
           "DATA_PATH", "MODES"]


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


def run_finalize(cfg: FinalizeConfig) -> str:
    """Finalize this process's share of the blended chunks; returns the output URL."""
    import zarr
    from tqdm import tqdm

    from .claims import Lease, default_lease_s
    from .iopool import WritePool

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
    output_channels(cfg.mode, cfg.threshold, c)
    config = {"from": blended_state.get("config"), "kind": FINAL, "mode": cfg.mode, "threshold": cfg.threshold}
    out = Output(OutputSpec(cfg.output_path, FINAL, cfg.mode, cfg.threshold), c, shape, chunks, config, so,
                 overwrite=cfg.overwrite)
    if out.is_complete():
        log.info("finalize output %s is already complete: nothing to do", cfg.output_path)
        return cfg.output_path
    work = storage.join(cfg.output_path, JOURNAL)
    with Lease(storage.join(work, f"finalize_{cfg.part_id:05d}.claim.json"),
               f"finalize {cfg.part_id}/{cfg.num_parts} of {cfg.output_path}", so, default_lease_s()) as lease:
        found = lease.acquire()
        if found is not None:
            lease.acquire(take_complete=True)
        present = [tuple(k[1:]) for k in list_chunk_coords(src)]
        mine = split_chunks(sorted(set(present)), cfg.num_parts, cfg.part_id)
        cgrid = ChunkGrid(shape, chunks)
        progress = Progress(work, "finalize", cfg.part_id, config, so)
        io = WritePool(4, guard=lease.check)
        vox = 0
        try:
            with tqdm(total=len(mine), initial=progress.start, desc=f"finalize {cfg.part_id}/{cfg.num_parts}",
                      unit="chunk", disable=cfg.quiet, mininterval=1.0) as bar:
                for n, idx in enumerate(mine[progress.start:], start=progress.start):
                    lo, hi = cgrid.box(idx)
                    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
                    out.write(idx, np.asarray(src[(slice(None),) + sl]), io)  # type: ignore[arg-type]
                    vox += int(np.prod(np.subtract(hi, lo)))
                    bar.update(1)
                    bar.set_postfix_str(f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
                    progress.update(n + 1, io.wait_all)
            io.close()
        except BaseException:
            io.abandon()
            raise

        def complete() -> None:
            out.complete()
            if cfg.delete_intermediates:
                for url in (cfg.input_path, *cfg.also_delete):
                    storage.remove(url, so)
                    log.info("deleted intermediate %s", url)

        lease.confirm()
        finished = mark_part_done(work, "finalize", cfg.part_id, cfg.num_parts, {"chunks": len(mine)}, so, complete)
        lease.complete()
    if finished:
        storage.remove(work, so)  # claims and journals are done with once the output is complete
    dt = time.perf_counter() - t0
    log.info("finalize %d/%d: %d chunks, %.1f s, %.1f Mvox/s -> %s", cfg.part_id, cfg.num_parts, len(mine), dt,
             vox / max(dt, 1e-9) / 1e6, cfg.output_path)
    return cfg.output_path


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
