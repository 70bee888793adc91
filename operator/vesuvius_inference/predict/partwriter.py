"""Where a completed chunk of a predict part goes, by the chunk's kind (layout.py).

The accumulator hands each completed chunk (int64 sums and weights, on the device; None when none of
the part's patches ran there) to the part's writer:

- OWN (only this part reaches it): divided on the device, written once into the output (or into
  the store's ``final`` array in the seed's layout);
- PAIR (this part and one other): the seam protocol (seams.py), in a writer thread: the first of the
  two stores a piece, the second merges it and writes the chunk;
- SHARED (three or more parts, or two without the protocol): this part's piece, with its weights,
  into its own run store for blend (partstore.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vesuvius_inference.contract.paths import chunk_key
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.grid import ChunkGrid, Shape3
from vesuvius_inference.geometry.layout import OWN, PAIR, PartLayout
from vesuvius_inference.predict.devicestep import to_host
from vesuvius_inference.predict.fixedpoint_torch import divide_torch
from vesuvius_inference.store import storage
from vesuvius_inference.store.iopool import WritePool
from vesuvius_inference.store.output import Output
from vesuvius_inference.store.pieces import cut, encode
from vesuvius_inference.store.seams import SeamMerge


class PartWriter:
    """The ``on_complete`` of the accumulator (see the module docstring)."""

    def __init__(self, layout: PartLayout, part: int, owned: Output, *, cgrid: ChunkGrid, logit_bits: int,
                 io: WritePool, pieces: Place, seams: SeamMerge | None, ran_ids: Callable[[Any], list[int]],
                 edge_encode: Callable[[np.ndarray], np.ndarray]) -> None:
        self.layout, self.part, self.owned, self.cgrid = layout, part, owned, cgrid
        self.bits, self.io, self.pieces, self.seams, self.ran_ids = logit_bits, io, pieces, seams, ran_ids
        self.edge_encode = edge_encode
        self.written: list[Shape3] = []
        self.pieces_stored: list[int] = []

    def __call__(self, idx: Shape3, buf: Any) -> None:
        if not self.layout.reaches(self.part, idx):
            if buf is not None:
                raise RuntimeError(f"chunk {idx} completed with sums in part {self.part}, which the layout says has "
                                   "no patch there: patch bookkeeping is inconsistent")
            return  # only patches empty by the listing touched it
        kind = self.layout.kind(idx)
        if kind == OWN:
            if buf is not None:
                c = buf.shape[0] - 1
                self.owned.write(idx, to_host(divide_torch(buf[:c], buf[c], self.bits)), self.io)
                self.written.append(idx)
        elif kind == PAIR:
            assert self.seams is not None
            shared, _ = self.layout.piece_boxes(self.part, idx)
            ran = self.ran_ids(shared) if shared is not None and buf is not None else []
            data = to_host(buf, copy=True) if buf is not None else None  # a buffer the accumulator reuses
            self.io.submit(("pair", idx), self.seams.complete, idx, data, ran)
        elif buf is not None:
            self.io.submit(("piece", idx), self._store_piece, idx, to_host(buf, copy=True))

    def _store_piece(self, idx: Shape3, data: Callable[[], np.ndarray]) -> None:
        """In a writer thread: this part's piece of a chunk blend merges (with its weights)."""
        shared, edge = self.layout.piece_boxes(self.part, idx)
        lo, _ = self.cgrid.box(idx)
        piece = cut(self.part, idx, lo, buf=data(), shared=shared, edge=edge, with_weights=True, bits=self.bits,
                    encode_values=self.edge_encode)
        if piece.empty:
            return
        storage.write_bytes(self.pieces.join(chunk_key(idx)), encode(piece))
        self.pieces_stored.append(1)  # list.append is atomic: writer threads count without a lock

    @property
    def piece_count(self) -> int:
        return len(self.pieces_stored)
