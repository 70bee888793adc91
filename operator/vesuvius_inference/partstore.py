"""The part store: what a predict part keeps for blend, and its scratch, under its own run id.

```
PARTS_DIR/
  part_00003.json          marker, written last; names the run whose store holds the part
  part_00003.claim.json    the run's claim (claims.py): the marker is trusted only if they agree
  part_00003/<run id>/     zarr v3 group of that run:
     sums_<z0>_<z1>        int64 (C+1, z1-z0, Y, X): seam slices several parts cover (sum w*l, sum w)
     edge_<z0>_<z1>        float16 (C, z1-z0, Y, X): this part's own slices of a seam row, final
     final                 float16 (C, Z, Y, X): the chunk rows only this part covers, when predict
                           was not told where the output goes (the seed's layout; blend copies them)
     spill0, spill1        int64 (C+1, Z, Y, X): partial sums evicted from the cache (scratch)
     checkpoint.json       resume point (scratch)
```
Segment arrays are chunked ``(C+1, z1-z0, chunk_y, chunk_x)``: one object per chunk column of a seam,
a seam one patch overlap deep, not whole output chunks. Spills and the checkpoint are removed when
the part completes; a run never writes into another run's store.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import storage
from .accumulate import box_slices
from .devicestep import to_host
from .fixedpoint import divide_torch
from .grid import ChunkGrid, Shape3
from .iopool import WritePool
from .layout import EDGE, SEAM, SUMS, PartLayout, Segment
from .output import Output, blosc

FORMAT_VERSION = 2
SPILLS = ("spill0", "spill1")
CHECKPOINT = "checkpoint.json"
BLEND_DIR = "_blend"  # blend's claims, journals and done markers
PYRAMID_DIR = "_pyramid"  # 2x blocks of a fused output's level 0, for finalize's pyramid


def part_name(part_id: int) -> str:
    return f"part_{part_id:05d}"


def marker_url(parts_dir: str, part_id: int) -> str:
    return storage.join(parts_dir, part_name(part_id) + ".json")


def claim_url(parts_dir: str, part_id: int) -> str:
    return storage.join(parts_dir, part_name(part_id) + ".claim.json")


def store_url(parts_dir: str, part_id: int, run: str) -> str:
    return storage.join(parts_dir, part_name(part_id), run)


def pyramid_staging(parts_dir: str) -> str:
    """Where level-0 writers of a fused output leave the 2x blocks finalize builds the pyramid from."""
    return storage.join(parts_dir, PYRAMID_DIR)


def level0_marker(parts_dir: str) -> str:
    """Written when every level-0 chunk of a final output is in place (finalize waits for it)."""
    return storage.join(parts_dir, BLEND_DIR, "level0_complete.json")


def pack_mask(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode()


def unpack_mask(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def _array(group: Any, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill: Any) -> Any:
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill,
                              compressors=[blosc()], config={"write_empty_chunks": False}, overwrite=True)


def create_store(url: str, attrs: dict[str, Any], n_classes: int, shape: Shape3, chunks: Shape3,
                 segments: Sequence[Segment], seed_layout: bool, storage_options: dict[str, Any]) -> Any:
    """A new, empty part store for one run."""
    import zarr

    group = zarr.open_group(store=storage.zarr_store(url, storage_options), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    c = n_classes
    if seed_layout:
        _array(group, "final", (c,) + tuple(shape), (c,) + tuple(chunks), "float16", float("nan"))
    for seg in segments:
        depth = seg.z1 - seg.z0
        if seg.kind == SUMS:
            _array(group, seg.name, (c + 1, depth) + tuple(shape[1:]), (c + 1, depth) + tuple(chunks[1:]), "int64", 0)
        else:
            _array(group, seg.name, (c, depth) + tuple(shape[1:]), (c, depth) + tuple(chunks[1:]), "float16",
                   float("nan"))
    for name in SPILLS:
        _array(group, name, (c + 1,) + tuple(shape), (c + 1,) + tuple(chunks), "int64", 0)
    return group


def open_store(url: str, storage_options: dict[str, Any], read_only: bool = False) -> Any:
    import zarr

    return zarr.open_group(store=storage.zarr_store(url, storage_options, read_only=read_only),
                           mode="r" if read_only else "r+", zarr_format=3)


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


def drop_scratch(parts_dir: str, part_id: int, run: str, storage_options: dict[str, Any]) -> None:
    """After the marker: spills and the checkpoint, and the stores of earlier runs, go."""
    url = store_url(parts_dir, part_id, run)
    for name in (*SPILLS, CHECKPOINT):
        storage.remove(storage.join(url, name), storage_options)
    for other in storage.list_names(storage.join(parts_dir, part_name(part_id)), storage_options):
        if other != run:
            storage.remove(store_url(parts_dir, part_id, other), storage_options)
