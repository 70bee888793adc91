"""blend: finish the output from the predict parts - the shared seam chunks, and in the seed's layout the rest.

When predict was told where the output goes, every chunk one part reaches is already there, and so is
every chunk two parts reach (its second finisher merged it, seams.py) where the parts' store has
conditional writes; blend merges the pieces the parts stored for the rest (chunks three or more parts
reach, at the corners of 2D blocks; every seam on stores without conditional writes), and checks that
no two-part seam was left out. Blended logits are then complete; a final output (finalized while
blending: no float16 intermediate) gets its level-0 marker, and finalize, a sibling stage, builds its
pyramid and metadata. When predict was not told (``vesuvius.predict`` without an output, the seed's
layout), every seam is merged here and blend also copies each part's own chunks, as stored bytes, so
``vesuvius.blend_logits PARTS OUT`` still produces the whole blended array. Output chunks no part
touched are never written (NaN logits: not predicted).

Disjoint sets of units can be blended by separate processes (``num_parts``/``part_id``); each holds
a claim on its split and journals its progress; the output is marked complete by whichever
finishes last.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.config import BlendConfig
from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.intensity import notes
from vesuvius_inference.contract.ngff import ngff_for
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.grid import ChunkGrid, Shape3, split_chunks
from vesuvius_inference.geometry.layout import PAIR, PartLayout
from vesuvius_inference.store import createonce, storage
from vesuvius_inference.store.iopool import WritePool
from vesuvius_inference.store.optioncheck import check_options
from vesuvius_inference.store.output import (
    BLENDED,
    FINAL,
    PARTS_NOTE,
    Output,
    OutputSpec,
    list_chunk_coords,
    output_config,
)
from vesuvius_inference.store.partstore import PartSet, load_parts, open_store
from vesuvius_inference.store.pieces import Chunk, decode
from vesuvius_inference.store.stagesplit import StageSplit

log = logging.getLogger("vesuvius_inference.stages.blend")


def copy_object(src: Place, dst: Place) -> None:
    if src.is_local and dst.is_local:
        d = dst.local_path
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(src.local_path, d)
        return
    fs, sp = storage.filesystem(src)
    _, dp = storage.filesystem(dst)
    fs.copy(sp, dp)


class Blender:
    """Merges the pieces parts stored for blend (layout.SHARED chunks) and finds the seed layout's own chunks."""

    def __init__(self, parts: PartSet) -> None:
        self.parts = parts
        self.cgrid = ChunkGrid(parts.shape, parts.chunks)
        self.bits = parts.logit_bits
        self.pieces: dict[Shape3, list[Place]] = {}
        for m in parts.markers:
            where = parts.place.at(paths.pieces_dir(m["store"]))
            for name in storage.list_names(where):
                idx = triple(int(v) for v in name.split("."))
                self.pieces.setdefault(idx, []).append(where.join(name))
        self.finals: dict[int, Any] = {}  # the seed layout's own chunks, per part

    def seam_units(self) -> list[Shape3]:
        return sorted(self.pieces)

    def own_chunks(self) -> list[tuple[int, Shape3]]:
        """(part, chunk) of the chunks each part wrote into its own store (seed layout only)."""
        out: list[tuple[int, Shape3]] = []
        for m in self.parts.markers:
            grp = open_store(self.parts.place.at(m["store"]), read_only=True)
            if "final" in grp:
                self.finals[int(m["part_id"])] = grp["final"]
                out.extend((int(m["part_id"]), triple(int(v) for v in c[1:]))
                           for c in list_chunk_coords(grp["final"]))
        return sorted(out)

    def seam_chunk(self, idx: Shape3, encode: Any) -> np.ndarray | None:
        """The chunk as the output stores it, from every piece stored for it (None: nothing reached it)."""
        lo, hi = self.cgrid.box(idx)
        chunk = Chunk(lo, triple(b - a for a, b in zip(lo, hi)), self.parts.num_classes)
        for piece_at in self.pieces.get(idx, []):
            raw = createonce.read(piece_at)
            if raw is None:
                raise BadInput(f"{piece_at} disappeared while blending; rerun predict for its part")
            piece = decode(raw)
            if piece.sums is not None and piece.shared is not None:
                chunk.add(piece.shared, piece.sums, piece.sums[-1])
            if piece.values is not None and piece.edge is not None:
                chunk.add_edge(piece.shared, piece.edge, piece.values)
        return chunk.result(self.bits, encode)


def check_pairs(parts: PartSet, layout: PartLayout) -> None:
    """Every two-part seam chunk was merged by its second finisher. Each participant completes the chunk
    (also when its patches there were all skipped) before its marker is written, and the first of the
    two leaves its piece, so with every marker present a missing piece means something removed it; the
    merge itself cannot be checked from the output (a chunk of fill values is not stored)."""
    pairs = layout.chunks_of(PAIR) if layout.pairs else []
    if not pairs:
        return
    seams = paths.seams_dir(parts.parts_dir, paths.config_digest(parts.config))
    found = set(storage.list_names(parts.place.at(seams)))
    lost = [idx for idx in pairs if paths.chunk_key(idx) not in found]
    if lost:
        raise BadInput(f"{len(lost)} of {len(pairs)} two-part seam chunks have no piece in {seams} (chunk {lost[0]}): "
                       "were the parts changed after predict? predict them again into a new output")


def _target(cfg: BlendConfig, parts: PartSet) -> tuple[OutputSpec, bool]:
    """The output to finish, and whether the parts hold their own rows (the seed layout)."""
    predicted = parts.output
    if cfg.always_final and predicted is not None and predicted.kind != FINAL:
        raise BadArguments(f"the parts in {parts.parts_dir} wrote blended float16 logits into {predicted.url}: blend "
                           f"there, then finalize them (vesuvius.finalize_outputs {predicted.url} {cfg.output})")
    if predicted is None:
        kind = FINAL if (cfg.mode or cfg.always_final) else BLENDED
        ngff = ngff_for(cfg.ngff_version, parts.config.get("input_zarr_format"))
        return OutputSpec(cfg.output, kind, cfg.mode or "binary", cfg.threshold, cfg.levels, ngff), True
    if not predicted.same_place(cfg.output):
        raise BadArguments(f"the parts in {parts.parts_dir} were predicted into {predicted.url}: blend into that "
                           f"output (vesuvius.blend_logits {parts.parts_dir} {predicted.url})")
    if cfg.mode and (predicted.kind != FINAL or (cfg.mode, cfg.threshold) != (predicted.mode, predicted.threshold)):
        raise BadArguments(f"--mode {cfg.mode}{' --threshold' if cfg.threshold else ''} differs from what the parts "
                           f"wrote into {predicted.url} ({predicted.kind}"
                           f"{', mode ' + predicted.mode if predicted.kind == FINAL else ''}); drop --mode")
    return predicted, False


@dataclass(frozen=True)
class Blended:
    """What a blend run leaves: its output, and whether the blend stage is now complete there."""

    output: OutputSpec
    complete: bool


def _units(blender: Blender, seed_layout: bool) -> list[tuple[str, Any]]:
    units: list[tuple[str, Any]] = [("own", u) for u in blender.own_chunks()] if seed_layout else []
    return units + [("seam", u) for u in blender.seam_units()]


def _processor(cfg: BlendConfig, blender: Blender, output: Output, byte_copy: bool) -> Any:
    """Writes one unit: a seam chunk (merged pieces), or a part's own chunk of the seed layout."""
    parts, out = blender.parts, cfg.place(cfg.output)

    def seam(idx: Shape3) -> None:
        data = blender.seam_chunk(idx, output.encode_full)
        if data is not None:
            output.store(idx, data)

    def process(unit: tuple[str, Any], io: WritePool) -> int:
        kind, what = unit
        if kind == "own":
            p, idx = what
            src = blender.finals[p]
            if byte_copy:  # the part's own rows are already blended logits: copy the stored bytes
                key = src.metadata.encode_chunk_key((0,) + tuple(idx))
                io.submit(("out", idx), copy_object, parts.place.at(parts.markers[p]["store"]).join("final", key),
                          out.join(output.chunk_key(idx)))
            else:
                lo, hi = blender.cgrid.box(idx)
                output.write(idx, np.asarray(src[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]), io)
        else:
            idx = what
            io.submit(("out", idx), seam, idx)
        lo, hi = blender.cgrid.box(idx)
        return int(np.prod(np.subtract(hi, lo)))

    return process


def run_blend(cfg: BlendConfig) -> Blended:
    """Finish this process's share of the output's level 0. A final output's pyramid and metadata are
    finalize's (stages.py runs it after an unsplit blend); blended logits are complete here."""
    cfg.validate()
    check_options(cfg)
    t0 = time.perf_counter()
    parts_dir = cfg.place(cfg.parts_dir)
    parts = load_parts(parts_dir)
    if cfg.chunk_size is not None and tuple(cfg.chunk_size) != parts.chunks:
        raise BadArguments(f"--chunk_size {tuple(cfg.chunk_size)} differs from the parts' accumulation chunks "
                           f"{parts.chunks}; predict with --chunk_size to change it")
    spec, seed_layout = _target(cfg, parts)
    config = output_config(parts.config, spec)
    final = spec.kind == FINAL
    output = Output(spec, cfg.place(spec.url), num_classes=parts.num_classes, shape=parts.shape, chunks=parts.chunks,
                    config=config, overwrite=cfg.overwrite and seed_layout,
                    staging=parts_dir.at(paths.pyramid_staging(parts_dir.url)) if final else None,
                    notes={**notes(parts.intensity), **({} if final else {PARTS_NOTE: cfg.parts_dir})})
    level0 = parts_dir.at(paths.level0_marker(parts_dir.url))
    if (storage.read_json(level0) or {}).get("config") == config if final else output.is_complete():
        log.info("blend of %s is already complete: nothing to do", cfg.output)
        return Blended(spec, True)
    blender = Blender(parts)
    units = _units(blender, seed_layout)

    def complete() -> None:
        check_pairs(parts, parts.layout())
        if final:  # the pyramid and the OME metadata are finalize's (it waits for this marker)
            storage.write_json(level0, {"config": config})
        else:
            output.complete()

    split = StageSplit(stage="blend", work=parts_dir.at(paths.blend_work(parts_dir.url)), part_id=cfg.part_id,
                  num_parts=cfg.num_parts, config=config, lease_s=cfg.lease_s, quiet=cfg.quiet,
                  journal_s=cfg.journal_s, progress_s=cfg.progress_s)
    _, done = split.run(units, _processor(cfg, blender, output, byte_copy=not final), complete, "blend")
    seams = sum(1 for k, _ in split_chunks(units, cfg.num_parts, cfg.part_id) if k == "seam")
    mine = len(split_chunks(units, cfg.num_parts, cfg.part_id))
    log.info("blend %d/%d: %d seam chunks%s%s, %.1f s -> %s", cfg.part_id, cfg.num_parts, seams,
             f" + {mine - seams} copied from the parts" if seed_layout else "",
             f" ({split.resumed} units resumed from the journal)" if split.resumed else "",
             time.perf_counter() - t0, cfg.output)
    return Blended(spec, done)


async def merge_inference_outputs(parent_dir: str, output_path: str, cache_pool_gb: float = 4.0,
                                  sigma_scale: float = 8.0, chunk_size: Sequence[int] | None = None,
                                  num_parts: int = 1, global_part_id: int = 0, verbose: bool = True,
                                  storage_options: dict[str, Any] | None = None, **ignored: Any) -> str:
    """The seed's async API; runs the blend in a worker thread so the event loop stays free."""
    import asyncio

    cfg = BlendConfig(parts_dir=parent_dir, output=output_path, cache_gb=cache_pool_gb, sigma_scale=sigma_scale,
                      chunk_size=triple(chunk_size) if chunk_size else None, num_parts=num_parts,
                      part_id=global_part_id, quiet=not verbose, storage_options=dict(storage_options or {}))
    return (await asyncio.to_thread(run_blend, cfg)).output.url
