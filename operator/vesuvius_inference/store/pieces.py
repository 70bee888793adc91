"""A part's piece of a seam chunk, and merging pieces into the chunk: pure (numpy), no I/O.

A piece (layout.py decides its two boxes) holds, for one output chunk, one part's int64 logit sums
over the ``shared`` box, where another part's patches reach too, and its final values over the
``edge`` box, voxels only it reaches. The weight plane is stored with the sums (``planes`` = C + 1)
where blend merges the pieces, or left out (``planes`` = C) where the second finisher of a seam
merges it while predicting: it recomputes the weights bit for bit from the patch ids that ran
(``ran``; fixedpoint.weights_for), after checking the Gaussian's digest and the logit bits.

Edge values are what the output stores (uint8 of a final output: ``finalize_chunk`` is voxel-wise,
so finalising a few voxels gives the bytes finalising the chunk would) or float16 logits.

One object per piece: a magic, the JSON header's length, the header, then the blosc-zstd payloads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vesuvius_inference.contract.frame import triple
from vesuvius_inference.geometry.fixedpoint import divide_np
from vesuvius_inference.geometry.grid import Shape3

MAGIC = b"VSP1"
Box = tuple[Shape3, Shape3]


def _codec() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)


def rel(box: Box, origin: Sequence[int]) -> tuple[slice, ...]:
    """The slices of ``box`` inside an array whose first voxel is at ``origin``."""
    lo, hi = box
    return tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))


def shape_of(box: Box) -> Shape3:
    return triple(b - a for a, b in zip(*box))


@dataclass
class Piece:
    part: int
    chunk: Shape3
    shared: Box | None = None  # where ``sums`` lie
    sums: np.ndarray | None = None  # int64 (planes, shared box)
    edge: Box | None = None  # where ``values`` lie
    values: np.ndarray | None = None  # (k, edge box): final values, or float16 logits
    ran: list[int] | None = None  # patches of the part that ran and reach ``shared`` (sums without weights)
    info: dict[str, Any] = field(default_factory=dict)  # run, weights digest, logit bits (checked on merge)

    @property
    def empty(self) -> bool:
        return self.sums is None and self.values is None


def encode(piece: Piece) -> bytes:
    codec = _codec()
    blobs = [codec.encode(np.ascontiguousarray(a)) if a is not None else b"" for a in (piece.sums, piece.values)]
    header = {"format": 1, "part": piece.part, "chunk": list(piece.chunk), "ran": piece.ran,
              "shared": [list(v) for v in piece.shared] if piece.shared else None,
              "edge": [list(v) for v in piece.edge] if piece.values is not None and piece.edge else None,
              "planes": int(piece.sums.shape[0]) if piece.sums is not None else 0,
              "values": [int(piece.values.shape[0]), str(piece.values.dtype)] if piece.values is not None else None,
              "sizes": [len(b) for b in blobs], "info": piece.info}
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(bytes(b) for b in blobs)


def decode(raw: bytes) -> Piece:
    if raw[:4] != MAGIC:
        raise ValueError("not a seam piece")
    (n,) = struct.unpack("<I", raw[4:8])
    h = json.loads(raw[8:8 + n])
    codec, at = _codec(), 8 + n
    arrays: list[np.ndarray | None] = []
    for size, box, dtype, lead in ((h["sizes"][0], h["shared"], "int64", h["planes"]),
                                   (h["sizes"][1], h["edge"], (h["values"] or [0, "uint8"])[1],
                                    (h["values"] or [0])[0])):
        if not size:
            arrays.append(None)
            continue
        flat = np.frombuffer(codec.decode(raw[at:at + size]), dtype=dtype)
        arrays.append(flat.reshape((lead,) + shape_of((triple(box[0]), triple(box[1])))))
        at += size

    def as_box(v: Any) -> Box | None:
        return (triple(v[0]), triple(v[1])) if v else None

    return Piece(int(h["part"]), triple(h["chunk"]), as_box(h["shared"]), arrays[0], as_box(h["edge"]),
                 arrays[1], h["ran"], h["info"])


def cut(part: int, chunk: Shape3, origin: Sequence[int], *, buf: np.ndarray | None, shared: Box | None,
        edge: Box | None, with_weights: bool, bits: int, encode_values: Callable[[np.ndarray], np.ndarray],
        ran: list[int] | None = None, info: dict[str, Any] | None = None) -> Piece:
    """This part's piece of a chunk from its (C+1, chunk) sums ``buf`` (None: none of its patches ran
    there); what received no weight is left out."""
    piece = Piece(part, chunk, shared, info=dict(info or {}))  # the shared box even without sums: edges stop there
    piece.ran = None if with_weights else []
    if buf is None:
        return piece
    c = buf.shape[0] - 1
    if shared is not None and buf[(c,) + rel(shared, origin)].any():
        piece.sums = np.ascontiguousarray(buf[(slice(0, c + 1 if with_weights else c),) + rel(shared, origin)])
        piece.ran = None if with_weights else list(ran or [])
    if edge is not None:
        sel = rel(edge, origin)
        w = buf[(c,) + sel]
        if w.any():
            piece.edge = edge
            piece.values = encode_values(divide_np(buf[(slice(0, c),) + sel], w, bits))
    return piece


@dataclass
class Chunk:
    """A chunk being merged: the sums and weights of every contribution, then the edges' final values."""

    origin: Shape3
    shape: Shape3
    classes: int
    sums: np.ndarray = field(init=False)
    weights: np.ndarray = field(init=False)
    edges: list[tuple[Box | None, Box, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sums = np.zeros((self.classes,) + tuple(self.shape), dtype=np.int64)
        self.weights = np.zeros(self.shape, dtype=np.int64)

    def add(self, box: Box, sums: np.ndarray, weights: np.ndarray) -> None:
        sel = rel(box, self.origin)
        self.sums[(slice(None),) + sel] += sums[:self.classes]
        self.weights[sel] += weights

    def add_edge(self, shared: Box | None, edge: Box, values: np.ndarray) -> None:
        self.edges.append((shared, edge, values))

    def result(self, bits: int, encode_values: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
        """The chunk as the output stores it (before a label image drops its channel axis), or None
        when nothing reached it. An edge voxel takes its piece's value, unless the piece's own shared
        box holds it (then the sums have it)."""
        if not self.weights.any() and not self.edges:
            return None
        out = encode_values(divide_np(self.sums, self.weights, bits))
        for shared, edge, values in self.edges:
            if values.dtype != out.dtype:
                values = encode_values(values)  # float16 logits of a part store into a finalised output
            keep = np.ones(shape_of(edge), dtype=bool)
            if shared is not None:
                lo = [max(a, b) for a, b in zip(shared[0], edge[0])]
                hi = [min(a, b) for a, b in zip(shared[1], edge[1])]
                if all(a < b for a, b in zip(lo, hi)):
                    keep[rel((triple(lo), triple(hi)), edge[0])] = False
            np.copyto(out[(slice(None),) + rel(edge, self.origin)], values, where=keep[None])
        return out
