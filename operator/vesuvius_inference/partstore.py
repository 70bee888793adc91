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
- ``acc``   int64 (C+1, Z, Y, X), fill 0: chunks shared with other parts (and chunks evicted
  from the write-back cache), as sums; blend adds them up and divides.
A JSON marker ``part_NNNNN.json`` next to the group is written last and lists both chunk sets.
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


def create_part_arrays(group: Any, n_classes: int, shape: Shape3, chunks: Shape3) -> tuple[Any, Any]:
    final = group.create_array("final", shape=(n_classes,) + tuple(shape), chunks=(n_classes,) + tuple(chunks),
                               dtype="float16", fill_value=float("nan"), compressors=[blosc()],
                               config={"write_empty_chunks": False}, overwrite=True)
    acc = group.create_array("acc", shape=(n_classes + 1,) + tuple(shape), chunks=(n_classes + 1,) + tuple(chunks),
                             dtype="int64", fill_value=0, compressors=[blosc()],
                             config={"write_empty_chunks": False}, overwrite=True)
    return final, acc


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
    """Write-back chunk cache of int64 sums, bounded in bytes.

    A chunk is complete when the last patch of this part that touches it is done; it is then
    written as ``final`` (if no other part touches it) or ``acc``. When the cache is full the least
    recently used chunk is written to ``acc`` and read back if a later patch touches it: safe,
    because the part is the only writer of its store.
    """

    def __init__(self, final: Any, acc: Any, cgrid: ChunkGrid, n_classes: int, remaining: dict[Shape3, int],
                 shared: set[Shape3], cache_bytes: int, writers: int = 4) -> None:
        self.final, self.acc, self.cgrid, self.c = final, acc, cgrid, n_classes
        self.remaining = remaining
        self.shared = shared
        self.cache: OrderedDict[Shape3, np.ndarray] = OrderedDict()
        self.cache_bytes = max(cache_bytes, 1)
        self.used = 0
        self.spilled: set[Shape3] = set()
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

    def _buffer(self, idx: Shape3) -> np.ndarray:
        buf = self.cache.get(idx)
        if buf is not None:
            self.cache.move_to_end(idx)
            return buf
        lo, hi = self.cgrid.box(idx)
        if idx in self.spilled:
            self._wait(idx)
            buf = np.asarray(self.acc[(slice(None),) + _box_slices(lo, hi)], dtype=np.int64)
        else:
            buf = np.zeros((self.c + 1,) + tuple(b - a for a, b in zip(lo, hi)), dtype=np.int64)
        self.cache[idx] = buf
        self.used += buf.nbytes
        while self.used > self.cache_bytes and len(self.cache) > 1:
            old, obuf = self.cache.popitem(last=False)
            self.used -= obuf.nbytes
            self.spilled.add(old)
            self.evictions += 1
            self._submit(old, self._write_acc, old, obuf)
        return buf

    def _write_acc(self, idx: Shape3, buf: np.ndarray) -> None:
        lo, hi = self.cgrid.box(idx)
        self.acc[(slice(None),) + _box_slices(lo, hi)] = buf

    def _write_final(self, idx: Shape3, buf: np.ndarray, was_spilled: bool) -> None:
        lo, hi = self.cgrid.box(idx)
        self.final[(slice(None),) + _box_slices(lo, hi)] = divide(buf)
        if was_spilled:  # drop the stale spill so blend never sees two versions
            self.acc[(slice(None),) + _box_slices(lo, hi)] = 0

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

    def patch_done(self, lo: Shape3, hi: Shape3) -> None:
        """Count one finished (or skipped) patch of this part against every chunk it touches."""
        for idx in self.cgrid.touching(lo, hi):
            left = self.remaining[idx] - 1
            self.remaining[idx] = left
            if left == 0:
                self._complete(idx)

    def _complete(self, idx: Shape3) -> None:
        if idx not in self.cache and idx in self.spilled:
            self._buffer(idx)  # last touch was a skipped patch: bring the spilled sums back
        buf = self.cache.pop(idx, None)
        if buf is None:
            return
        self.used -= buf.nbytes
        was_spilled = idx in self.spilled
        self.spilled.discard(idx)
        if not buf[self.c].any():
            return
        if idx in self.shared:
            self.acc_chunks.append(idx)
            self._submit(idx, self._write_acc, idx, buf)
        else:
            self.final_chunks.append(idx)
            self._submit(idx, self._write_final, idx, buf, was_spilled)

    def close(self) -> None:
        """Flush every write; raise the first write error."""
        for idx in list(self.pending):
            self._wait(idx)
        self.pool.shutdown(wait=True)
        if self.cache:
            raise RuntimeError(f"{len(self.cache)} chunks were never completed: patch bookkeeping is inconsistent")
