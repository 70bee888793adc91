"""blend: finish the output from the predict parts - the seam rows, and in the seed's layout the rest.

When predict was told where the output goes, every chunk row only one part covers is already
there; blend writes the seam rows (from the parts' int64 sums and own slices) and marks the output
complete (for a final output, finalizing while it blends: no float16 intermediate). When predict
was not told (``vesuvius.predict`` without an output, the seed's layout), blend also copies each
part's own rows, as stored bytes, so ``vesuvius.blend_logits PARTS OUT`` still produces the whole
blended array. Output chunks no part touched are never written (NaN logits: not predicted).

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .claims import trusted_complete
from .errors import BadArguments, BadInput
from .fixedpoint import divide_np
from .grid import ChunkGrid, Shape3, split_chunks
from .iopool import WritePool
from .layout import SUMS, PartLayout, Segment
from .ngff import AUTO, ngff_for
from .output import BLENDED, FINAL, Output, OutputSpec, check_ngff_version, list_chunk_coords, output_config
from .partstore import BLEND_DIR, claim_url, level0_marker, open_store, pyramid_staging
from .stagesplit import Split

log = logging.getLogger("vesuvius_inference.blend")


@dataclass
class PartSet:
    """The complete, mutually consistent, trusted set of predict parts in one directory."""

    parts_dir: str
    config: dict[str, Any]
    markers: list[dict[str, Any]]
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> Shape3:
        return tuple(self.config["shape"])  # type: ignore[return-value]

    @property
    def chunks(self) -> Shape3:
        return tuple(self.config["chunk_size"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.markers[0]["num_classes"])

    @property
    def logit_bits(self) -> int:
        return int(self.markers[0]["logit_bits"])

    @property
    def output(self) -> OutputSpec | None:
        return OutputSpec.from_dict(self.config.get("output"))

    def layout(self) -> PartLayout:
        covers = tuple(tuple(m["cover"]) if m.get("cover") else None for m in self.markers)
        return PartLayout(self.shape[0], self.chunks[0], covers)  # type: ignore[arg-type]


def load_parts(parts_dir: str, storage_options: dict[str, Any] | None = None) -> PartSet:
    """Read and cross-check every part marker; name the first missing, mismatched or untrusted part."""
    so = storage_options or {}
    names = [n for n in storage.list_names(parts_dir, so)
             if n.startswith("part_") and n.endswith(".json") and not n.endswith(".claim.json")]
    if not names:
        raise BadInput(f"{parts_dir} holds no completed predict parts (part_NNNNN.json); run predict first")
    markers = [storage.read_json(storage.join(parts_dir, n), so) or {} for n in names]
    ref = markers[0]
    if not ref.get("complete") or "config" not in ref:
        raise BadInput(f"{parts_dir}/{names[0]} is not a completed predict part marker")
    config = ref["config"]
    if config.get("format") != 2:
        raise BadInput(f"{parts_dir} holds parts of an older format; predict them again")
    n = int(config["num_parts"])
    by_id = {}
    for m in markers:
        pid = m.get("part_id")
        if not m.get("complete"):
            raise BadInput(f"part {pid} in {parts_dir} is incomplete; rerun predict --part_id {pid}")
        diff = sorted(k for k in set(config) | set(m.get("config", {})) if config.get(k) != m.get("config", {}).get(k))
        if diff:
            raise BadInput(f"part {pid} in {parts_dir} was predicted with a different {', '.join(diff)} than part "
                           f"{ref.get('part_id')}; rerun it or remove the stale part")
        if not trusted_complete(claim_url(parts_dir, int(pid)), m.get("run"), so):
            raise BadInput(f"part {pid} in {parts_dir} was marked complete by run {m.get('run')}, which does not hold "
                           f"its claim; rerun predict --part_id {pid}")
        by_id[int(pid)] = m
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise BadInput(f"{parts_dir} is missing {len(missing)} of {n} predict parts (part {shown}); "
                       f"run predict for them before blending")
    extra = sorted(set(by_id) - set(range(n)))
    if extra:
        raise BadInput(f"{parts_dir} holds part {extra[0]} but the parts were split {n} ways: remove the stale part")
    return PartSet(parts_dir, config, [by_id[i] for i in range(n)], dict(so))


def copy_object(src: str, dst: str, so: dict[str, Any]) -> None:
    if storage.is_local(src) and storage.is_local(dst):
        d = storage.local_path(dst)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(storage.local_path(src), d)
        return
    fs, sp = storage.filesystem(src, so)
    _, dp = storage.filesystem(dst, so)
    fs.copy(sp, dp)


class Blender:
    """Builds seam-row chunks (and finds the seed layout's own rows) from a PartSet."""

    def __init__(self, parts: PartSet) -> None:
        self.parts = parts
        self.cgrid = ChunkGrid(parts.shape, parts.chunks)
        self.layout = parts.layout()
        self.bits = parts.logit_bits
        so = parts.storage_options
        self.groups = {int(m["part_id"]): open_store(m["store"], so, read_only=True) for m in parts.markers}
        self.by_row: dict[int, list[Segment]] = {}
        for seg in self.layout.segments():
            self.by_row.setdefault(seg.z0 // self.layout.chunk_z, []).append(seg)
        self.stored: dict[tuple[int, str], set[tuple[int, int]]] = {}
        for segs in self.by_row.values():
            for seg in segs:
                coords = list_chunk_coords(self.groups[seg.part][seg.name])
                self.stored[(seg.part, seg.name)] = {(int(c[2]), int(c[3])) for c in coords}

    def seam_units(self) -> list[Shape3]:
        out = set()
        for r, segs in self.by_row.items():
            for seg in segs:
                out.update((r, y, x) for y, x in self.stored[(seg.part, seg.name)])
        return sorted(out)

    def own_chunks(self) -> list[tuple[int, Shape3]]:
        """(part, chunk) of the rows each part wrote into its own store (seed layout only)."""
        out = []
        for p, grp in self.groups.items():
            if "final" in grp:
                out.extend((p, tuple(int(v) for v in c[1:])) for c in list_chunk_coords(grp["final"]))
        return sorted(out)  # type: ignore[arg-type]

    def seam_chunk(self, idx: Shape3) -> np.ndarray:
        """(C, box) float16 logits of a seam-row chunk."""
        lo, hi = self.cgrid.box(idx)
        c = self.parts.num_classes
        box = tuple(b - a for a, b in zip(lo, hi))
        sums = np.zeros((c + 1,) + box, dtype=np.int64)
        out = np.full((c,) + box, np.nan, dtype=np.float16)
        shared = np.zeros(box[0], dtype=bool)
        yx = (slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        for seg in self.by_row.get(idx[0], []):
            if (idx[1], idx[2]) not in self.stored[(seg.part, seg.name)]:
                continue
            data = np.asarray(self.groups[seg.part][seg.name][(slice(None), slice(None)) + yx])
            zs = slice(seg.z0 - lo[0], seg.z1 - lo[0])
            if seg.kind == SUMS:
                sums[:, zs] += data
                shared[zs] = True
            else:
                out[:, zs] = data
        if shared.any():
            out[:, shared] = divide_np(sums[:c, shared], sums[c, shared], self.bits)
        return out


@dataclass
class BlendConfig:
    parts_dir: str
    output: str
    cache_gb: float = 4.0
    sigma_scale: float = 8.0
    chunk_size: Sequence[int] | None = None
    num_parts: int = 1
    part_id: int = 0
    overwrite: bool = False
    quiet: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None  # finalize while blending (seed layout), or check the parts' final output
    threshold: bool = False
    lease_s: float | None = None
    levels: int | None = None  # with mode: pyramid levels of the final output (seed layout)
    then_finalize: bool = True  # unsplit blend of a final output also builds its pyramid (one command)
    ngff_version: str = AUTO  # with mode (seed layout): 0.4 (Zarr v2), 0.5 (Zarr v3), auto: the predicted input's
    finalize: bool = False  # the output must be final (vesuvius.blend_and_finalize): mode defaults to binary

    def validate(self) -> None:
        storage.require_writable(self.output, "OUTPUT")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range for --num_parts {self.num_parts}")
        check_ngff_version(self.ngff_version)
        if abs(self.sigma_scale - 8.0) > 1e-9:
            raise BadArguments("--sigma_scale: the Gaussian (sigma = patch/8, nnU-Net's) is applied while predicting; "
                               "only 8 is supported")


def _target(cfg: BlendConfig, parts: PartSet) -> tuple[OutputSpec, bool]:
    """The output to finish, and whether the parts hold their own rows (the seed layout)."""
    predicted = parts.output
    if cfg.finalize and predicted is not None and predicted.kind != FINAL:
        raise BadArguments(f"the parts in {parts.parts_dir} wrote blended float16 logits into {predicted.url}: blend "
                           f"there, then finalize them (vesuvius.finalize_outputs {predicted.url} {cfg.output})")
    if predicted is None:
        kind = FINAL if (cfg.mode or cfg.finalize) else BLENDED
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


def run_blend(cfg: BlendConfig) -> str:
    """Finish this process's share of the output; returns the output URL."""
    cfg.validate()
    t0 = time.perf_counter()
    so = cfg.storage_options
    parts = load_parts(cfg.parts_dir, so)
    if cfg.chunk_size is not None and tuple(cfg.chunk_size) != parts.chunks:
        raise BadArguments(f"--chunk_size {tuple(cfg.chunk_size)} differs from the parts' accumulation chunks "
                           f"{parts.chunks}; predict with --chunk_size to change it")
    spec, seed_layout = _target(cfg, parts)
    config = output_config(parts.config, spec)
    final = spec.kind == FINAL
    output = Output(spec, parts.num_classes, parts.shape, parts.chunks, config, so,
                    overwrite=cfg.overwrite and seed_layout, staging=pyramid_staging(cfg.parts_dir) if final else None)
    done = (storage.read_json(level0_marker(cfg.parts_dir), so) or {}).get("config") == config if final \
        else output.is_complete()
    if done:
        log.info("blend of %s is already complete: nothing to do", cfg.output)
    else:
        blender = Blender(parts)
        units: list[tuple[str, Any]] = [("own", u) for u in blender.own_chunks()] if seed_layout else []
        units += [("seam", u) for u in blender.seam_units()]
        byte_copy = not final

        def process(unit: tuple[str, Any], io: WritePool) -> int:
            kind, what = unit
            if kind == "own":
                p, idx = what
                src = blender.groups[p]["final"]
                if byte_copy:  # the part's own rows are already blended logits: copy the stored bytes
                    key = src.metadata.encode_chunk_key((0,) + tuple(idx))
                    io.submit(("out", idx), copy_object, storage.join(parts.markers[p]["store"], "final", key),
                              storage.join(cfg.output, output.chunk_key(idx)), so)
                else:
                    lo, hi = blender.cgrid.box(idx)
                    output.write(idx, np.asarray(src[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]), io)
            else:
                idx = what
                output.write(idx, blender.seam_chunk(idx), io)
            lo, hi = blender.cgrid.box(idx)
            return int(np.prod(np.subtract(hi, lo)))

        def complete() -> None:
            if final:  # the pyramid and the OME metadata are finalize's (it waits for this marker)
                storage.write_json(level0_marker(cfg.parts_dir), {"config": config}, so)
            else:
                output.complete()

        split = Split("blend", storage.join(cfg.parts_dir, BLEND_DIR), cfg.part_id, cfg.num_parts, config, so,
                      cfg.lease_s, cfg.quiet)
        n, done = split.run(units, process, complete, "blend")
        seams = sum(1 for k, _ in split_chunks(units, cfg.num_parts, cfg.part_id) if k == "seam")
        log.info("blend %d/%d: %d seam chunks%s, %.1f s -> %s", cfg.part_id, cfg.num_parts, seams,
                 f" + {n - seams} copied from the parts" if seed_layout else "", time.perf_counter() - t0, cfg.output)
    if final and done and cfg.num_parts == 1 and cfg.then_finalize:
        from .finalize import FinalizeConfig, run_finalize  # one command for the whole output, as the seed's

        run_finalize(FinalizeConfig(cfg.parts_dir, cfg.output, quiet=cfg.quiet, storage_options=so,
                                    lease_s=cfg.lease_s))
    return cfg.output


def run_fused(parts_dir: str, output_path: str, mode: str = "binary", threshold: bool = False,
              overwrite: bool = False, quiet: bool = False, storage_options: dict[str, Any] | None = None,
              levels: int | None = None) -> str:
    """Blend and finalize in one pass: float16 logits exist only in memory, chunk by chunk."""
    return run_blend(BlendConfig(parts_dir, output_path, mode=mode, threshold=threshold, overwrite=overwrite,
                                 quiet=quiet, storage_options=dict(storage_options or {}), levels=levels))


async def merge_inference_outputs(parent_dir: str, output_path: str, cache_pool_gb: float = 4.0,
                                  sigma_scale: float = 8.0, chunk_size: Sequence[int] | None = None,
                                  num_parts: int = 1, global_part_id: int = 0, verbose: bool = True,
                                  storage_options: dict[str, Any] | None = None, **ignored: Any) -> str:
    """The seed's async API; runs the blend in a worker thread so the event loop stays free."""
    import asyncio

    cfg = BlendConfig(parent_dir, output_path, cache_gb=cache_pool_gb, sigma_scale=sigma_scale, chunk_size=chunk_size,
                      num_parts=num_parts, part_id=global_part_id, quiet=not verbose,
                      storage_options=dict(storage_options or {}))
    return await asyncio.to_thread(run_blend, cfg)
