"""Write-back cache of fixed-point sums per output chunk, on the device that runs the model.

MONAI's ``sliding_window_inference`` separates the window device (where the network runs) from
the aggregation device (where the output buffer lives, often the CPU for big volumes). Here both
are the model's device, but the buffer is a bounded cache of output chunks rather than the whole
volume: a patch's weighted contribution is added to the few chunks it touches without leaving the
device, and a chunk leaves only when it is complete (its last patch of this part is done), already
divided or as seam sums (``on_complete`` decides). When the cache is full the least recently used
chunk is spilled to the part store and read back when a later patch touches it.

Checkpoints: ``checkpoint()`` stores every changed cached chunk and returns what changed in the map of
stored sums since the last one (checkpoint.py journals it), which, saved by the caller after it
returns, lets ``restore`` continue after the patches done so far. A chunk's
checkpointed copy lives in one spill array; until the next checkpoint, later spills of that chunk
go to the other one, so a run killed at any moment leaves the checkpoint intact. Integer sums make
the resumed result the same bytes as an uninterrupted run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from vesuvius_inference.geometry.grid import ChunkGrid, Shape3
from vesuvius_inference.store.iopool import WritePool


def box_slices(lo: Any, hi: Any) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


class ChunkAccumulator:
    """Sums of ``channels`` int64 planes (C weighted logits + the weight) per output chunk.

    Buffers of completed chunks are kept for reuse (zeroed, not reallocated: a fresh allocation's first
    touch costs page faults on the host and an allocator round trip on a GPU).
    """

    def __init__(self, cgrid: ChunkGrid, channels: int, remaining: dict[Shape3, int], *, cache_bytes: int,
                 device: Any, spills: tuple[Any, Any], on_complete: Callable[[Shape3, Any], None],
                 io: WritePool) -> None:
        self.cgrid, self.channels, self.remaining = cgrid, channels, remaining
        self.cache_bytes = max(int(cache_bytes), 1)
        self.device, self.spills, self.on_complete, self.io = device, spills, on_complete, io
        self.cache: OrderedDict[Shape3, Any] = OrderedDict()
        self.used = 0
        self.peak = 0
        self.where: dict[Shape3, int] = {}  # chunk -> spill array holding its latest stored sums
        self.ckpt: dict[Shape3, int] = {}  # chunk -> spill array holding its checkpointed sums
        self.dirty: set[Shape3] = set()  # cached chunks changed since they were last stored
        self.moved: set[Shape3] = set()  # chunks whose entry in ``where`` changed since the last checkpoint
        self.evictions = 0
        self.touched: set[Shape3] = set()  # chunks that received a contribution (others hold only zeros)
        self._free: dict[tuple[int, ...], list[Any]] = {}

    def _buffer(self, idx: Shape3) -> Any:
        import torch

        buf = self.cache.get(idx)
        if buf is not None:
            self.cache.move_to_end(idx)
            return buf
        lo, hi = self.cgrid.box(idx)
        if idx in self.where:
            self.io.wait(("spill", idx))
            stored = np.asarray(self.spills[self.where[idx]][(slice(None),) + box_slices(lo, hi)], dtype=np.int64)
            buf = torch.from_numpy(stored).to(self.device)
        else:
            shape = (self.channels,) + tuple(b - a for a, b in zip(lo, hi))
            free = self._free.get(shape)
            buf = free.pop().zero_() if free else torch.zeros(shape, dtype=torch.int64, device=self.device)
        self.cache[idx] = buf
        self.used += buf.numel() * 8
        self.peak = max(self.peak, self.used)
        while self.used > self.cache_bytes and len(self.cache) > 1:
            old, obuf = self.cache.popitem(last=False)
            self.used -= obuf.numel() * 8
            self.evictions += 1
            if old in self.dirty:
                self._spill(old, obuf)
        return buf

    def _spill(self, idx: Shape3, buf: Any) -> None:
        """Store partial sums, never over the checkpoint's copy of this chunk.

        On the CPU the write gets the buffer itself, not a copy: an evicted buffer is never touched
        again, and ``checkpoint`` (which spills buffers that stay cached) waits for its writes.
        """
        self.dirty.discard(idx)
        target = 1 - self.ckpt.get(idx, 1)
        self.where[idx] = target
        self.moved.add(idx)
        lo, hi = self.cgrid.box(idx)
        self.io.submit(("spill", idx), _store, self.spills[target], (slice(None),) + box_slices(lo, hi),
                       buf.cpu().numpy())

    def add(self, lo: Shape3, hi: Shape3, q: Any, wq: Any) -> None:
        """Add the contribution of one patch covering [lo, hi): int64 (channels, box) quantised logits
        with a last plane of ones, times the int64 (box) weights. One fused multiply-add per chunk
        gives all sums at once (the weighted logits and the weight), with no temporary."""
        for idx in self.cgrid.touching(lo, hi):
            clo, chi = self.cgrid.box(idx)
            a = [max(x, y) for x, y in zip(lo, clo)]
            b = [min(x, y) for x, y in zip(hi, chi)]
            dst = box_slices([x - y for x, y in zip(a, clo)], [x - y for x, y in zip(b, clo)])
            src = box_slices([x - y for x, y in zip(a, lo)], [x - y for x, y in zip(b, lo)])
            self._buffer(idx)[(slice(None),) + dst].addcmul_(q[(slice(None),) + src], wq[src])
            self.dirty.add(idx)
            self.touched.add(idx)

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
        """Hand the completed chunk to ``on_complete``: its sums, or None when no patch of this part added
        anything there (only skipped patches reached it; a seam's other part still needs to know)."""
        if idx not in self.cache and idx in self.where:
            self._buffer(idx)  # last touch was a skipped patch: bring the spilled sums back
        buf = self.cache.pop(idx, None)
        if buf is None:
            self.on_complete(idx, None)
            return
        self.used -= buf.numel() * 8
        self.dirty.discard(idx)
        if self.where.pop(idx, None) is not None:
            self.moved.add(idx)
        if idx in self.touched:
            self.on_complete(idx, buf)  # copies what it needs of buf (or queues the copy on the stream) before returning
        else:
            self.on_complete(idx, None)
        free = self._free.setdefault(tuple(buf.shape), [])
        if len(free) < 4:
            free.append(buf)

    def checkpoint(self) -> dict[Shape3, int]:
        """Store every changed cached chunk; return the spill slots changed since the last checkpoint
        (-1: the chunk completed) for the caller to save, then call ``committed``. O(what changed)."""
        for idx in list(self.dirty):
            self._spill(idx, self.cache[idx])
        self.io.wait_all()
        return {idx: self.where.get(idx, -1) for idx in self.moved}

    def committed(self) -> None:
        """The changes returned by ``checkpoint`` are saved: their chunk copies are now the ones to keep."""
        for idx in self.moved:
            if idx in self.where:
                self.ckpt[idx] = self.where[idx]
            else:
                self.ckpt.pop(idx, None)
        self.moved.clear()

    def restore(self, where: dict[Shape3, int], evictions: int) -> None:
        """Continue from a saved checkpoint (after ``replay_done`` of the patches it covers)."""
        self.where = dict(where)
        self.ckpt = dict(self.where)
        self.moved.clear()
        self.touched = set(self.where)  # every unfinished chunk touched before the checkpoint was spilled
        self.evictions = int(evictions)

    def finish(self) -> None:
        """Every patch is done: every touched chunk must have completed."""
        if self.cache:
            raise RuntimeError(f"{len(self.cache)} chunks were never completed: patch bookkeeping is inconsistent")


def _store(array: Any, sel: tuple[slice, ...], data: np.ndarray) -> None:
    array[sel] = data
