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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .claims import Lease, default_lease_s, trusted_complete
from .errors import BadArguments, BadInput
from .fixedpoint import divide_np
from .grid import ChunkGrid, Shape3, split_chunks
from .iopool import WritePool
from .layout import SUMS, PartLayout, Segment
from .output import BLENDED, FINAL, Output, OutputSpec, list_chunk_coords, output_config
from .partstore import claim_url, open_store

log = logging.getLogger("vesuvius_inference.blend")
MARKERS = "_vesuvius"
BLEND_DIR = "_blend"


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


def mark_part_done(url: str, stage: str, part_id: int, num_parts: int, info: dict[str, Any],
                   storage_options: dict[str, Any], on_complete: Callable[[], None]) -> bool:
    """Write this stage part's marker; if every part is done, run ``on_complete``. True if complete."""
    mdir = storage.join(url, MARKERS)
    storage.write_json(storage.join(mdir, f"{stage}_{part_id:05d}.json"), info, storage_options)
    done = {n for n in storage.list_names(mdir, storage_options) if n.startswith(stage + "_")}
    if all(f"{stage}_{i:05d}.json" in done for i in range(num_parts)):
        on_complete()
        return True
    return False


# Seconds between journal writes (0: after every unit). Longer means fewer small PUTs on object
# storage and more units redone after a kill.
ENV_JOURNAL_INTERVAL = "VESUVIUS_JOURNAL_INTERVAL_S"


class Progress:
    """Resume point of one stage part: how many of its units are written, saved every few seconds.

    The journal is written only after the writes it counts have landed (``flush`` is called first),
    so a killed run resumes after the last journaled unit and redoes at most a few seconds of work
    (rewriting a chunk is idempotent).
    """

    def __init__(self, url: str, stage: str, part_id: int, config: dict[str, Any], so: dict[str, Any],
                 every_s: float | None = None) -> None:
        self.url = storage.join(url, MARKERS, f"{stage}_{part_id:05d}.progress.json")
        if every_s is None:
            every_s = float(os.environ.get(ENV_JOURNAL_INTERVAL, "2"))
        self.config, self.so, self.every_s = config, so, every_s
        prev = storage.read_json(self.url, so) or {}
        self.start = int(prev.get("done", 0)) if prev.get("config") == config else 0
        self._last = time.monotonic()

    def update(self, done: int, flush: Callable[[], None], force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self.every_s:
            flush()
            storage.write_json(self.url, {"config": self.config, "done": done}, self.so)
            self._last = time.monotonic()


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

    def validate(self) -> None:
        storage.require_writable(self.output, "OUTPUT")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range for --num_parts {self.num_parts}")
        if abs(self.sigma_scale - 8.0) > 1e-9:
            raise BadArguments("--sigma_scale: the Gaussian (sigma = patch/8, nnU-Net's) is applied while predicting; "
                               "only 8 is supported")


def _target(cfg: BlendConfig, parts: PartSet) -> tuple[OutputSpec, bool]:
    """The output to finish, and whether the parts hold their own rows (the seed layout)."""
    predicted = parts.output
    if predicted is None:
        kind = FINAL if cfg.mode else BLENDED
        return OutputSpec(cfg.output, kind, cfg.mode or "binary", cfg.threshold), True
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
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    so = cfg.storage_options
    parts = load_parts(cfg.parts_dir, so)
    if cfg.chunk_size is not None and tuple(cfg.chunk_size) != parts.chunks:
        raise BadArguments(f"--chunk_size {tuple(cfg.chunk_size)} differs from the parts' accumulation chunks "
                           f"{parts.chunks}; predict with --chunk_size to change it")
    spec, seed_layout = _target(cfg, parts)
    config = output_config(parts.config, spec)
    output = Output(spec, parts.num_classes, parts.shape, parts.chunks, config, so,
                    overwrite=cfg.overwrite and seed_layout)
    if output.is_complete():
        log.info("output %s is already complete: nothing to do", cfg.output)
        return cfg.output
    work = storage.join(cfg.parts_dir, BLEND_DIR)
    lease = Lease(storage.join(work, f"blend_{cfg.part_id:05d}.claim.json"),
                  f"blend {cfg.part_id}/{cfg.num_parts} of {cfg.output}", so,
                  cfg.lease_s if cfg.lease_s is not None else default_lease_s())
    found = lease.acquire()
    done_marker = storage.join(work, MARKERS, f"blend_{cfg.part_id:05d}.json")
    if found is not None and (storage.read_json(done_marker, so) or {}).get("config") == config \
            and trusted_complete(lease.url, found.run, so):
        log.info("blend %d/%d is already complete: nothing to do", cfg.part_id, cfg.num_parts)
        return cfg.output
    if found is not None:
        lease.acquire(take_complete=True)
    with lease:
        blender = Blender(parts)
        units: list[tuple[str, Any]] = [("own", u) for u in blender.own_chunks()] if seed_layout else []
        units += [("seam", u) for u in blender.seam_units()]
        mine = split_chunks(units, cfg.num_parts, cfg.part_id)
        progress = Progress(work, "blend", cfg.part_id, config, so)
        if progress.start:
            log.info("blend %d/%d: resuming after %d of %d units", cfg.part_id, cfg.num_parts, progress.start, len(mine))
        io = WritePool(4, guard=lease.check)
        byte_copy = spec.kind == BLENDED
        vox = 0
        try:
            with tqdm(total=len(mine), initial=progress.start, desc=f"blend {cfg.part_id}/{cfg.num_parts}",
                      unit="chunk", disable=cfg.quiet, mininterval=1.0) as bar:
                for n, (kind, unit) in enumerate(mine[progress.start:], start=progress.start):
                    if kind == "own":
                        p, idx = unit
                        src_arr = blender.groups[p]["final"]
                        if byte_copy:
                            key = src_arr.metadata.encode_chunk_key((0,) + tuple(idx))
                            io.submit(("out", idx), copy_object, storage.join(parts.markers[p]["store"], "final", key),
                                      storage.join(cfg.output, output.chunk_key(idx)), so)
                        else:
                            lo, hi = blender.cgrid.box(idx)
                            sl = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
                            output.write(idx, np.asarray(src_arr[sl]), io)
                    else:
                        idx = unit
                        output.write(idx, blender.seam_chunk(idx), io)
                    lo, hi = blender.cgrid.box(idx)
                    vox += int(np.prod(np.subtract(hi, lo)))
                    bar.update(1)
                    bar.set_postfix_str(f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
                    progress.update(n + 1, io.wait_all)
            io.close()
        except BaseException:
            io.abandon()
            raise
        lease.confirm()
        mark_part_done(work, "blend", cfg.part_id, cfg.num_parts, {"config": config, "units": len(mine)}, so,
                       output.complete)
        lease.complete()
    dt = time.perf_counter() - t0
    seams = sum(1 for k, _ in mine if k == "seam")
    log.info("blend %d/%d: %d seam chunks%s, %.1f s, %.1f Mvox/s -> %s", cfg.part_id, cfg.num_parts, seams,
             f" + {len(mine) - seams} copied from the parts" if seed_layout else "", dt, vox / max(dt, 1e-9) / 1e6,
             cfg.output)
    return cfg.output


def run_fused(parts_dir: str, output_path: str, mode: str = "binary", threshold: bool = False,
              overwrite: bool = False, quiet: bool = False, storage_options: dict[str, Any] | None = None) -> str:
    """Blend and finalize in one pass: float16 logits exist only in memory, chunk by chunk."""
    return run_blend(BlendConfig(parts_dir, output_path, mode=mode, threshold=threshold, overwrite=overwrite,
                                 quiet=quiet, storage_options=dict(storage_options or {})))


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
