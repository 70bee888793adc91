"""blend: merge the predict parts into blended float16 logits (C, Z, Y, X).

Chunks one part finished on its own are copied as stored bytes; chunks several parts touched are
the integer sum of their ``acc`` chunks divided by the summed weights. Output chunks no part touched
are never written (they read as NaN: not predicted). Disjoint chunk sets can be blended by
separate processes (``num_parts``/``part_id``); each writes a marker, and the output is marked
complete by whichever finishes last.
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
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, Shape3, split_chunks
from .predict import part_name

log = logging.getLogger("vesuvius_inference.blend")
MARKERS = "_vesuvius"


@dataclass
class PartSet:
    """The complete, mutually consistent set of predict parts in one directory."""

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

    def owners(self) -> dict[Shape3, tuple[int | None, list[int]]]:
        """chunk -> (part holding it final, parts holding partial sums)."""
        out: dict[Shape3, tuple[int | None, list[int]]] = {}
        for m in self.markers:
            p = int(m["part_id"])
            for c in m["final_chunks"]:
                key = tuple(c)
                prev = out.get(key, (None, []))
                if prev[0] is not None or prev[1]:
                    raise BadInput(f"chunk {key} is claimed by part {p} and by another part: the parts are inconsistent")
                out[key] = (p, [])  # type: ignore[index]
            for c in m["acc_chunks"]:
                key = tuple(c)
                prev = out.get(key, (None, []))
                if prev[0] is not None:
                    raise BadInput(f"chunk {key} is final in part {prev[0]} and partial in part {p}: the parts are inconsistent")
                out[key] = (None, prev[1] + [p])  # type: ignore[index]
        return out


def load_parts(parts_dir: str, storage_options: dict[str, Any] | None = None) -> PartSet:
    """Read and cross-check every part marker; name the first missing or mismatched part."""
    so = storage_options or {}
    names = [n for n in storage.list_names(parts_dir, so) if n.startswith("part_") and n.endswith(".json")]
    if not names:
        raise BadInput(f"{parts_dir} holds no completed predict parts (part_NNNNN.json); run predict first")
    markers = [storage.read_json(storage.join(parts_dir, n), so) or {} for n in names]
    ref = markers[0]
    if not ref.get("complete") or "config" not in ref:
        raise BadInput(f"{parts_dir}/{names[0]} is not a completed predict part marker")
    config = ref["config"]
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


def create_or_open(url: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill_value: Any,
                   config: dict[str, Any], overwrite: bool, storage_options: dict[str, Any],
                   attributes: dict[str, Any] | None = None, path: str | None = None) -> Any:
    """Create the output array, or reopen it if an earlier run of the same configuration made it.

    Several processes may call this for the same output: they all write identical metadata, and an
    output of another configuration is never replaced unless ``overwrite`` is set.
    """
    import zarr

    from .partstore import blosc

    meta_url = storage.join(url, path, "zarr.json") if path else storage.join(url, "zarr.json")
    existing = storage.read_json(meta_url, storage_options)
    if existing is not None:
        prev = existing.get("attributes", {}).get("vesuvius", {}).get("config")
        if prev == config:
            store = storage.zarr_store(url, storage_options)
            return zarr.open_array(store=store, path=path or "", mode="r+", zarr_format=3)
        if not overwrite:
            raise BadInput(f"{url} already exists and was written by a different run; pass --overwrite to replace it")
        storage.remove(url, storage_options)
    store = storage.zarr_store(url, storage_options)
    attrs = {"vesuvius": {"config": config, "complete": False}}
    attrs.update(attributes or {})
    kwargs = dict(shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value,
                  compressors=[blosc()], config={"write_empty_chunks": False}, attributes=attrs,
                  overwrite=True)
    if path:
        group = zarr.open_group(store=store, mode="a", zarr_format=3)
        return group.create_array(path, **kwargs)
    return zarr.create_array(store=store, zarr_format=3, **kwargs)


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


# Seconds between journal writes (0: after every chunk). Longer means fewer small PUTs on object
# storage and more chunks redone after a kill.
ENV_JOURNAL_INTERVAL = "VESUVIUS_JOURNAL_INTERVAL_S"


class Progress:
    """Resume point of one stage part: how many of its chunks are written, saved every few seconds.

    The journal is written only after the chunks it counts are written, so a killed run resumes
    after the last journaled chunk and redoes at most a few seconds of work (rewriting a chunk is
    idempotent).
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

    def update(self, done: int, force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self.every_s:
            storage.write_json(self.url, {"config": self.config, "done": done}, self.so)
            self._last = time.monotonic()


def set_complete(array: Any) -> None:
    v = dict(array.attrs.get("vesuvius", {}))
    v["complete"] = True
    array.attrs.update({"vesuvius": v})


def is_complete(url: str, storage_options: dict[str, Any] | None = None, path: str | None = None) -> dict[str, Any] | None:
    meta = storage.read_json(storage.join(url, path, "zarr.json") if path else storage.join(url, "zarr.json"),
                             storage_options)
    v = (meta or {}).get("attributes", {}).get("vesuvius", {})
    return v if v.get("complete") else None


def _copy_object(src: str, dst: str, so: dict[str, Any]) -> None:
    if storage.is_local(src) and storage.is_local(dst):
        d = storage.local_path(dst)
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copyfile(storage.local_path(src), d)
        return
    fs, sp = storage.filesystem(src, so)
    _, dp = storage.filesystem(dst, so)
    fs.copy(sp, dp)


class Blender:
    """Computes blended float16 logits chunk by chunk from a PartSet."""

    def __init__(self, parts: PartSet) -> None:
        import zarr

        self.parts = parts
        self.cgrid = ChunkGrid(parts.shape, parts.chunks)
        self.owners = parts.owners()
        so = parts.storage_options
        self._final: dict[int, Any] = {}
        self._acc: dict[int, Any] = {}
        for m in parts.markers:
            p = int(m["part_id"])
            url = storage.join(parts.parts_dir, part_name(p))
            grp = zarr.open_group(store=storage.zarr_store(url, so, read_only=True), mode="r", zarr_format=3)
            self._final[p] = grp["final"]
            self._acc[p] = grp["acc"]

    def chunk_ids(self) -> list[Shape3]:
        return sorted(self.owners)

    def logits(self, idx: Shape3) -> np.ndarray:
        """(C, box) float16 blended logits of one chunk."""
        from .partstore import divide

        lo, hi = self.cgrid.box(idx)
        sl = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
        final_part, acc_parts = self.owners[idx]
        if final_part is not None:
            return np.asarray(self._final[final_part][sl])
        total = None
        for p in acc_parts:
            a = np.asarray(self._acc[p][sl], dtype=np.int64)
            total = a if total is None else total + a
        return divide(total)  # type: ignore[arg-type]

    def final_key(self, idx: Shape3) -> str | None:
        """Storage key of a chunk stored final in one part (for a byte copy), else None."""
        final_part, _ = self.owners[idx]
        if final_part is None:
            return None
        arr = self._final[final_part]
        return arr.metadata.encode_chunk_key((0,) + tuple(idx))


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

    def validate(self) -> None:
        storage.require_writable(self.output, "OUTPUT")
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range for --num_parts {self.num_parts}")
        if abs(self.sigma_scale - 8.0) > 1e-9:
            raise BadArguments("--sigma_scale: the Gaussian (sigma = patch/8, nnU-Net's) is applied while predicting; "
                               "only 8 is supported")


def run_blend(cfg: BlendConfig) -> str:
    """Blend this process's share of chunks; returns the output URL."""
    from tqdm import tqdm

    cfg.validate()
    t0 = time.perf_counter()
    so = cfg.storage_options
    parts = load_parts(cfg.parts_dir, so)
    if cfg.chunk_size is not None and tuple(cfg.chunk_size) != parts.chunks:
        raise BadArguments(f"--chunk_size {tuple(cfg.chunk_size)} differs from the parts' accumulation chunks "
                           f"{parts.chunks}; predict with --chunk_size to change it")
    config = dict(parts.config, stage="blend")
    if is_complete(cfg.output, so) and (is_complete(cfg.output, so) or {}).get("config") == config:
        log.info("blend output %s is already complete: nothing to do", cfg.output)
        return cfg.output
    c = parts.num_classes
    out = create_or_open(cfg.output, (c,) + parts.shape, (c,) + parts.chunks, "float16", float("nan"),
                         config, cfg.overwrite, so)
    blender = Blender(parts)
    mine = split_chunks(blender.chunk_ids(), cfg.num_parts, cfg.part_id)
    progress = Progress(cfg.output, "blend", cfg.part_id, config, so)
    if progress.start:
        log.info("blend %d/%d: resuming after %d of %d chunks", cfg.part_id, cfg.num_parts, progress.start, len(mine))
    vox = 0
    with tqdm(total=len(mine), initial=progress.start, desc=f"blend {cfg.part_id}/{cfg.num_parts}", unit="chunk",
              disable=cfg.quiet, mininterval=1.0) as bar:
        for n, idx in enumerate(mine[progress.start:], start=progress.start):
            key = blender.final_key(idx)
            lo, hi = blender.cgrid.box(idx)
            if key is not None:
                src = storage.join(parts.parts_dir, part_name(blender.owners[idx][0]), "final", key)  # type: ignore[arg-type]
                _copy_object(src, storage.join(cfg.output, out.metadata.encode_chunk_key((0,) + tuple(idx))), so)
            else:
                out[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))] = blender.logits(idx)
            vox += int(np.prod(np.subtract(hi, lo)))
            bar.update(1)
            bar.set_postfix_str(f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
            progress.update(n + 1)
    mark_part_done(cfg.output, "blend", cfg.part_id, cfg.num_parts, {"chunks": len(mine)}, so,
                   lambda: set_complete(out))
    dt = time.perf_counter() - t0
    log.info("blend %d/%d: %d chunks (%d of %d in the volume hold predictions), %.1f s, %.1f Mvox/s -> %s",
             cfg.part_id, cfg.num_parts, len(mine), len(blender.owners), int(np.prod(blender.cgrid.counts)), dt,
             vox / max(dt, 1e-9) / 1e6, cfg.output)
    return cfg.output


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
