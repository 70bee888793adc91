"""The multiscale pyramid of a final output, built in independent subtrees.

The work is cut into *units*: the chunks of one level ``U`` of the pyramid. A unit's subtree
(levels 1..U under it) is built depth first from the 2x blocks of its level-0 chunks (``leaf``):
read from the staging array the level-0 writers filled (fused runs), or made by finalizing the
blended logits right here (two-stage runs, which also write level 0). Each chunk of every level
is written once, by the unit that holds it, and no full-resolution chunk is read twice. Units
share nothing, so finalize splits them over processes without a barrier; the few chunks above
``U`` are built by whichever process finishes last, from level ``U``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.ngff import chunk_counts, level_shapes
from vesuvius_inference.geometry.downsample import downsample2
from vesuvius_inference.geometry.grid import Shape3
from vesuvius_inference.store.iopool import WritePool

Leaf = Callable[[Shape3], "np.ndarray | None"]  # level-0 chunk -> its 2x-downsampled block (or None: nothing)


def unit_level(shape: Sequence[int], chunks: Sequence[int], levels: int, num_parts: int) -> int:
    """The level whose chunks are the units: as high as possible while there are at least two per process
    (so the splits balance), and at least 1 (0 when there is no pyramid)."""
    if levels <= 1:
        return 0
    shapes = level_shapes(shape, levels)
    best = 1
    for k in range(1, levels):
        if int(np.prod(chunk_counts(shapes[k], chunks))) >= 2 * num_parts:
            best = k
    return best


def units_with_data(level0_chunks: Iterable[Sequence[int]], unit: int) -> list[Shape3]:
    """The level-``unit`` chunks above any of these level-0 chunks (sorted)."""
    f = 2 ** unit
    return sorted({triple(int(c) // f for c in idx) for idx in level0_chunks})


class Pyramid:
    """Builds and writes chunks of levels >= 1 of ``out`` (an output.Output with ``levels > 1``)."""

    def __init__(self, out: Any, io: WritePool) -> None:
        self.out, self.io = out, io
        self.shapes = level_shapes(out.shape, out.levels)
        self.counts = [chunk_counts(s, out.chunks) for s in self.shapes]
        self.half = tuple(c // 2 for c in out.chunks)
        self.written = 0

    def _children(self, level: int, idx: Sequence[int]) -> list[Shape3]:
        counts = self.counts[level - 1]
        ranges = [range(2 * i, min(2 * i + 2, n)) for i, n in zip(idx, counts)]
        return [triple(c) for c in itertools.product(*ranges)]

    def _buffer(self, level: int, idx: Sequence[int]) -> np.ndarray:
        box = tuple(min(s, (i + 1) * c) - i * c for i, c, s in zip(idx, self.out.chunks, self.shapes[level]))
        lead = () if self.out.labels else (self.out.channels,)
        return np.zeros(lead + box, dtype=np.uint8)

    def _place(self, buf: np.ndarray, idx: Sequence[int], child: Sequence[int], block: np.ndarray) -> None:
        off = [(c - 2 * i) * h for c, i, h in zip(child, idx, self.half)]
        sel = tuple(slice(o, o + n) for o, n in zip(off, block.shape[-3:]))
        buf[sel if self.out.labels else (slice(None),) + sel] = block

    def build(self, level: int, idx: Sequence[int], leaf: Leaf) -> np.ndarray | None:
        """Build chunk ``idx`` of ``level`` (and everything under it, down to ``leaf``); write it; return it."""
        buf, seen = self._buffer(level, idx), False
        for child in self._children(level, idx):
            if level == 1:
                block = leaf(child)
            else:
                data = self.build(level - 1, child, leaf)
                block = downsample2(data, self.out.how) if data is not None else None
            if block is not None:
                self._place(buf, idx, child, block)
                seen = True
        if not seen:
            return None
        self.out.write_level(level, idx, buf, self.io)
        self.written += 1
        return buf

    def build_top(self, unit: int) -> None:
        """The levels above the units, from level ``unit`` as written (small: 1/8 per level)."""
        for level in range(unit + 1, self.out.levels):
            below = self.out.arrays[level - 1]
            for idx in itertools.product(*(range(n) for n in self.counts[level])):
                buf, seen = self._buffer(level, idx), False
                for child in self._children(level, idx):
                    data = np.asarray(below[self.out.selection(level - 1, child)])
                    if data.any():
                        self._place(buf, idx, child, downsample2(data, self.out.how))
                        seen = True
                if seen:
                    self.out.write_level(level, idx, buf, self.io)
                    self.written += 1
            self.io.wait_all()  # the next level reads this one
