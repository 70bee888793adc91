"""Where a completed chunk of a predict part goes: the output, or the part's seam segments.

The accumulator hands each completed chunk (int64 sums and weights, on the device) to the part's
writer. Rows this part owns are divided on the device and written once into the output; in seam
rows the chunk is cut into this part's segments of the part store (partstore.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .accumulate import box_slices
from .devicestep import to_host
from .fixedpoint import divide_torch
from .grid import ChunkGrid, Shape3
from .iopool import WritePool
from .layout import EDGE, SEAM, SUMS, PartLayout, Segment
from .output import Output


class PartWriter:
    """Where a completed chunk of this part goes (the ``on_complete`` of the accumulator).

    Rows this part owns are divided on the device and written once, through ``owned`` (the output
    itself, or the store's ``final`` array in the seed's layout). In seam rows the chunk is cut into
    this part's segments: sums stay integers, its own slices are divided.
    """

    def __init__(self, layout: PartLayout, part: int, group: Any, owned: Output, cgrid: ChunkGrid,
                 logit_bits: int, io: WritePool) -> None:
        self.layout, self.part, self.group, self.owned, self.cgrid = layout, part, group, owned, cgrid
        self.bits, self.io = logit_bits, io
        self.by_row: dict[int, list[Segment]] = {}
        for seg in layout.segments(part):
            self.by_row.setdefault(seg.z0 // layout.chunk_z, []).append(seg)
        self.arrays = {seg.name: group[seg.name] for segs in self.by_row.values() for seg in segs}
        self.written: list[Shape3] = []
        self.segments_stored: list[int] = []

    def __call__(self, idx: Shape3, buf: Any) -> None:
        c = buf.shape[0] - 1
        owner = self.layout.row_owner(idx[0])
        if owner == self.part:
            self.owned.write(idx, to_host(divide_torch(buf[:c], buf[c], self.bits)), self.io)
            self.written.append(idx)
            return
        if owner != SEAM:
            raise RuntimeError(f"chunk {idx} completed in part {self.part} but its row belongs to {owner}")
        lo, hi = self.cgrid.box(idx)
        for seg in self.by_row.get(idx[0], []):
            zs = slice(seg.z0 - lo[0], seg.z1 - lo[0])
            piece = buf[:, zs]
            if seg.kind == SUMS:
                data = to_host(piece, copy=True)  # a view of a buffer the accumulator reuses
            else:
                data = to_host(divide_torch(piece[:c], piece[c], self.bits))
            sel = (slice(None), slice(None)) + box_slices(lo[1:], hi[1:])
            self.io.submit(("seg", seg.name, idx[1:]), _store_segment, self.arrays[seg.name], sel, data, seg.kind,
                           c, self.segments_stored)

    @property
    def segment_chunks(self) -> int:
        return len(self.segments_stored)


def _store_segment(array: Any, sel: tuple[slice, ...], data: Callable[[], np.ndarray], kind: str, c: int,
                   stored: list[int]) -> None:
    """In a writer thread: wait for the download, store the segment unless nothing reached it."""
    a = data()
    if kind == EDGE and np.isnan(a).all():
        return
    if kind == SUMS and not a[c].any():
        return
    array[sel] = a
    stored.append(1)  # list.append is atomic: writer threads count without a lock


