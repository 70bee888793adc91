"""The part store: where a predict part accumulates Gaussian-weighted logits.

Why fixed-point integers: a voxel near a part boundary gets contributions from two parts, and
float sums depend on the order they are added in, so 1 part and 5 parts would round differently.
Each contribution ``w * logit`` (and ``w``) is quantised to an int64 multiple of ``2**-scale_bits``
once, at the patch; integer sums are exact and associative, so the blended logits are the same
bytes for any number of parts and any eviction order. The weights are nnU-Net's float16 Gaussian
(``value_scaling_factor=10``), whose values are all multiples of 2**-24, so with scale_bits >= 24
the weights themselves are represented exactly.

Layout of one part (a zarr v3 group ``part_NNNNN``), all chunked like the blended output:
- ``final`` float16 (C, Z, Y, X), fill NaN: chunks only this part touches, already divided.
- ``acc``   int64 (C+1, Z, Y, X), fill 0: chunks shared with other parts, as sums; blend adds
  them up and divides.
- ``spill0``/``spill1`` int64 like ``acc``: partial sums of chunks evicted from the write-back
  cache before they were complete. Two copies so that a checkpoint's version of a chunk is never
  overwritten before the next checkpoint (see ``PartAccumulator.checkpoint``). Removed when the
  part completes; blend never reads them.
A JSON marker ``part_NNNNN.json`` next to the group is written last and lists the ``final`` and
``acc`` chunk sets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .grid import ChunkGrid, Shape3

FP16_MAX = 65504.0
WEIGHT_SCALE = 10.0  # nnU-Net's value_scaling_factor: the largest weight


def scale_bits_for(max_coverage: int) -> int:
    """Fixed-point fraction bits that keep ``sum(w * logit)`` inside int64 for logits within float16 range."""
    headroom = math.ceil(math.log2(WEIGHT_SCALE * max(1, max_coverage) * FP16_MAX)) + 1
    return max(24, 62 - headroom)


def blosc():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


SPILLS = ("spill0", "spill1")


def create_part_arrays(group: Any, n_classes: int, shape: Shape3, chunks: Shape3) -> tuple[Any, Any, tuple[Any, Any]]:
    """``final``, ``acc`` and the two spill arrays of a new part store."""
    final = group.create_array("final", shape=(n_classes,) + tuple(shape), chunks=(n_classes,) + tuple(chunks),
                               dtype="float16", fill_value=float("nan"), compressors=[blosc()],
                               config={"write_empty_chunks": False}, overwrite=True)
    sums = [group.create_array(name, shape=(n_classes + 1,) + tuple(shape), chunks=(n_classes + 1,) + tuple(chunks),
                               dtype="int64", fill_value=0, compressors=[blosc()],
                               config={"write_empty_chunks": False}, overwrite=True) for name in ("acc", *SPILLS)]
    return final, sums[0], (sums[1], sums[2])


def open_part_arrays(group: Any) -> tuple[Any, Any, tuple[Any, Any]]:
    """The arrays of an existing part store (to resume it)."""
    return group["final"], group["acc"], (group[SPILLS[0]], group[SPILLS[1]])


def divide(sums: np.ndarray) -> np.ndarray:
    """(C+1, ...) int64 sums -> (C, ...) float16 logits; NaN where no patch contributed."""
    w = sums[-1].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = sums[:-1].astype(np.float64) / w
    out[:, w == 0] = np.nan
    return out.astype(np.float16)


def _box_slices(lo: Iterable[int], hi: Iterable[int]) -> tuple[slice, ...]:
    return tuple(slice(a, b) for a, b in zip(lo, hi))


class PartAccumulator:
    """Write-back chunk cache of int64 sums, bounded in bytes, that can checkpoint and resume.

    A chunk is complete when the last patch of this part that touches it is done; it is then
    written as ``final`` (if no other part touches it) or ``acc``. When the cache is full the least
    recently used chunk is spilled (if it changed since it was last stored) and read back if a
    later patch touches it: safe, because the part is the only writer of its store.

    Checkpoints: ``checkpoint()`` stores every changed cached chunk and returns the state that,
    saved by the caller after it returns, lets ``restore`` continue after the patches done so far.
    A chunk's checkpointed copy lives in one spill array; until the next checkpoint, later spills
    of that chunk go to the other one, so a run killed at any moment leaves the checkpoint intact.
    Integer sums make the resumed result the same bytes as an uninterrupted run.
    """

    def __init__(self, final: Any, acc: Any, spills: tuple[Any, Any], cgrid: ChunkGrid, n_classes: int,
                 remaining: dict[Shape3, int], shared: set[Shape3], cache_bytes: int, writers: int = 4) -> None:
        self.final, self.acc, self.spills, self.cgrid, self.c = final, acc, spills, cgrid, n_classes
        self.remaining = remaining
        self.shared = shared
        self.cache: OrderedDict[Shape3, np.ndarray] = OrderedDict()
        self.cache_bytes = max(cache_bytes, 1)
        self.used = 0
        self.where: dict[Shape3, int] = {}  # chunk -> spill array holding its latest stored sums
        self.ckpt: dict[Shape3, int] = {}  # chunk -> spill array holding its checkpointed sums
        self.dirty: set[Shape3] = set()  # cached chunks changed since they were last stored
        self.final_chunks: list[Shape3] = []
        self.acc_chunks: list[Shape3] = []
        self.evictions = 0
        self.pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="part-writer")
        self.pending: dict[Shape3, Future] = {}
        self.max_pending = writers * 2

    def _submit(self, idx: Shape3, fn: Any, *args: Any) -> None:
        self._wait(idx)
        while len(self.pending) >= self.max_pending:  # backpressure: bound memory held by queued writes
            oldest = next(iter(self.pending))
            self._wait(oldest)
        self.pending[idx] = self.pool.submit(fn, *args)

    def _wait(self, idx: Shape3) -> None:
        fut = self.pending.pop(idx, None)
        if fut is not None:
            fut.result()  # re-raises write errors here, in the caller

    def _wait_all(self) -> None:
        for idx in list(self.pending):
            self._wait(idx)

    def _buffer(self, idx: Shape3) -> np.ndarray:
        buf = self.cache.get(idx)
        if buf is not None:
            self.cache.move_to_end(idx)
            return buf
        lo, hi = self.cgrid.box(idx)
        if idx in self.where:
            self._wait(idx)
            buf = np.asarray(self.spills[self.where[idx]][(slice(None),) + _box_slices(lo, hi)], dtype=np.int64)
        else:
            buf = np.zeros((self.c + 1,) + tuple(b - a for a, b in zip(lo, hi)), dtype=np.int64)
        self.cache[idx] = buf
        self.used += buf.nbytes
        while self.used > self.cache_bytes and len(self.cache) > 1:
            old, obuf = self.cache.popitem(last=False)
            self.used -= obuf.nbytes
            self.evictions += 1
            if old in self.dirty:
                self._spill(old, obuf)
        return buf

    def _spill(self, idx: Shape3, buf: np.ndarray) -> None:
        """Store partial sums, never over the checkpoint's copy of this chunk."""
        self.dirty.discard(idx)
        target = 1 - self.ckpt.get(idx, 1)
        self.where[idx] = target
        self._submit(idx, self._write, self.spills[target], idx, buf)

    def _write(self, array: Any, idx: Shape3, buf: np.ndarray) -> None:
        lo, hi = self.cgrid.box(idx)
        array[(slice(None),) + _box_slices(lo, hi)] = buf

    def _write_final(self, idx: Shape3, buf: np.ndarray) -> None:
        lo, hi = self.cgrid.box(idx)
        self.final[(slice(None),) + _box_slices(lo, hi)] = divide(buf)

    def add(self, lo: Shape3, hi: Shape3, wl: np.ndarray, w: np.ndarray) -> None:
        """Add quantised (C, box) weighted logits and (box) weights covering [lo, hi)."""
        for idx in self.cgrid.touching(lo, hi):
            clo, chi = self.cgrid.box(idx)
            a = tuple(max(x, y) for x, y in zip(lo, clo))
            b = tuple(min(x, y) for x, y in zip(hi, chi))
            dst = _box_slices([x - y for x, y in zip(a, clo)], [x - y for x, y in zip(b, clo)])
            src = _box_slices([x - y for x, y in zip(a, lo)], [x - y for x, y in zip(b, lo)])
            buf = self._buffer(idx)
            buf[(slice(0, self.c),) + dst] += wl[(slice(None),) + src]
            buf[(self.c,) + dst] += w[src]
            self.dirty.add(idx)

    def patch_done(self, lo: Shape3, hi: Shape3) -> None:
        """Count one finished (or skipped) patch of this part against every chunk it touches."""
        for idx in self.cgrid.touching(lo, hi):
            left = self.remaining[idx] - 1
            self.remaining[idx] = left
            if left == 0:
                self._complete(idx)

    def replay_done(self, lo: Shape3, hi: Shape3) -> None:
        """Count a patch done before the checkpoint being resumed (its sums are already stored)."""
        for idx in self.cgrid.touching(lo, hi):
            self.remaining[idx] -= 1

    def _complete(self, idx: Shape3) -> None:
        if idx not in self.cache and idx in self.where:
            self._buffer(idx)  # last touch was a skipped patch: bring the spilled sums back
        buf = self.cache.pop(idx, None)
        if buf is None:
            return
        self.used -= buf.nbytes
        self.dirty.discard(idx)
        self.where.pop(idx, None)
        if not buf[self.c].any():
            return
        if idx in self.shared:
            self.acc_chunks.append(idx)
            self._submit(idx, self._write, self.acc, idx, buf)
        else:
            self.final_chunks.append(idx)
            self._submit(idx, self._write_final, idx, buf)

    def checkpoint(self) -> dict[str, Any]:
        """Store every changed cached chunk; return the state to save (then call ``committed``)."""
        for idx in list(self.dirty):
            self._spill(idx, self.cache[idx])
        self._wait_all()
        return {"where": [[*idx, p] for idx, p in self.where.items()],
                "final_chunks": [list(c) for c in self.final_chunks],
                "acc_chunks": [list(c) for c in self.acc_chunks], "evictions": self.evictions}

    def committed(self) -> None:
        """The state returned by ``checkpoint`` is saved: its chunk copies are now the ones to keep."""
        self.ckpt = dict(self.where)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a saved checkpoint (after ``replay_done`` of the patches it covers)."""
        self.where = {tuple(w[:3]): int(w[3]) for w in state["where"]}  # type: ignore[misc]
        self.ckpt = dict(self.where)
        self.final_chunks = [tuple(c) for c in state["final_chunks"]]  # type: ignore[misc]
        self.acc_chunks = [tuple(c) for c in state["acc_chunks"]]  # type: ignore[misc]
        self.evictions = int(state.get("evictions", 0))

    def close(self) -> None:
        """Flush every write; raise the first write error."""
        self._wait_all()
        self.pool.shutdown(wait=True)
        if self.cache:
            raise RuntimeError(f"{len(self.cache)} chunks were never completed: patch bookkeeping is inconsistent")
