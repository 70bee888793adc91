"""How the patch grid is cut into predict parts: z-slabs, or blocks of z-rows by y-columns.

A *z-slab* is a contiguous range of nnU-Net's row-major patch order, balanced by non-empty patch
count, with its ends between patch rows where that costs at most ``ROW_SNAP_TOLERANCE`` of balance
(grid.split_parts). A *block* is a box of the grid: ``nz`` slabs of whole z-rows, each cut into ``ny``
runs of whole y-columns (all of x), both balanced by non-empty count. A part's boundary with its
neighbours is where the seams are (layout.py): a slab's is two whole y-x faces, a block's four
smaller ones, so on a scroll cut into many parts blocks have much less seam (plan.py measures it;
partplan.py chooses). Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract.config import AUTO, SLABS, blocks_of
from vesuvius_inference.geometry.grid import PatchGrid, grid_parts

__all__ = ["AUTO", "SLABS", "Part", "block_parts", "blocks_of", "factorisations", "slab_parts", "split"]


@dataclass(frozen=True)
class Part:
    """One part's patches: ``[start, stop)`` of the row-major order (a z-slab), or ``block``, a box of
    grid indices ``((z0, z1), (y0, y1), (x0, x1))``."""

    start: int = 0
    stop: int = 0
    block: tuple[tuple[int, int], ...] | None = None

    def members(self, grid: PatchGrid) -> np.ndarray:
        """The part's flat patch ids, ascending."""
        if self.block is None:
            return np.arange(self.start, self.stop, dtype=np.int64)
        axes = [np.arange(a, b) for a, b in self.block]
        if any(a.size == 0 for a in axes):
            return np.zeros(0, dtype=np.int64)
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.ravel_multi_index([m.ravel() for m in mesh], grid.counts).astype(np.int64)

    def size(self) -> int:
        if self.block is None:
            return self.stop - self.start
        return int(np.prod([max(0, b - a) for a, b in self.block]))

    def as_dict(self) -> dict[str, Any]:
        if self.block is None:
            return {"range": [self.start, self.stop]}
        return {"block": [list(r) for r in self.block]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        if "block" in d:
            return cls(block=tuple((int(a), int(b)) for a, b in d["block"]))
        a, b = d["range"]
        return cls(int(a), int(b))


def slab_parts(grid: PatchGrid, nonempty: np.ndarray, num_parts: int) -> list[Part]:
    """z-slabs: today's split (grid.grid_parts)."""
    return [Part(a, b) for a, b in grid_parts(grid, nonempty, num_parts)]


def _cuts(weights: np.ndarray, k: int) -> list[int]:
    """Cut ``len(weights)`` items into ``k`` contiguous runs of balanced weight (each run non-empty when
    there are enough items); falls back to the plain count when all weights are 0."""
    n = int(weights.size)
    w = weights.astype(np.int64) if weights.any() else np.ones(n, dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(w)])
    total = int(cum[-1])
    bounds = [0]
    for j in range(1, k):
        target = j * total / k
        b = int(np.searchsorted(cum, target, side="left"))
        if b > 0 and abs(cum[b - 1] - target) <= abs(cum[b] - target):
            b -= 1  # the nearer of the two boundaries around the target
        lo, hi = bounds[-1] + 1, n - (k - j)  # every run keeps at least one item while there are enough
        bounds.append(min(max(b, lo), hi) if lo <= hi else min(max(b, bounds[-1]), n))
    bounds.append(n)
    return bounds


def block_parts(grid: PatchGrid, nonempty: np.ndarray, nz: int, ny: int) -> list[Part]:
    """``nz`` x ``ny`` blocks, numbered z-major: z cuts between patch rows balanced over the whole grid,
    then y cuts between patch columns balanced within each slab (so every block has a fair share even
    where the scroll is off-centre in y)."""
    per = nonempty.reshape(grid.counts)
    zb = _cuts(per.sum(axis=(1, 2)), nz)
    out: list[Part] = []
    for i in range(nz):
        slab = per[zb[i]:zb[i + 1]]
        yb = _cuts(slab.sum(axis=(0, 2)), ny)
        out.extend(Part(block=((zb[i], zb[i + 1]), (yb[j], yb[j + 1]), (0, grid.counts[2]))) for j in range(ny))
    return out


def factorisations(num_parts: int, grid: PatchGrid, keep: int | None = None) -> list[tuple[int, int]]:
    """Every (nz, ny) with nz * ny = num_parts that the grid has rows and columns for; z-slabs first.

    With ``keep``, z-slabs and the ``keep`` block splits with the least cut area (interior faces of
    the grid's box, (nz - 1) * Y * X + (ny - 1) * Z * X): what the seams of a split grow with, a
    first cut before measuring each layout (seconds per candidate at scroll scale)."""
    out = [(num_parts, 1)]
    for ny in range(2, num_parts + 1):
        if num_parts % ny == 0 and num_parts // ny <= grid.counts[0] and ny <= grid.counts[1]:
            out.append((num_parts // ny, ny))
    if keep is None:
        return out
    z, y, x = grid.shape

    def area(f: tuple[int, int]) -> int:
        return (f[0] - 1) * y * x + (f[1] - 1) * z * x

    return out[:1] + sorted(out[1:], key=area)[:keep]


def split(grid: PatchGrid, nonempty: np.ndarray, num_parts: int, blocks: Sequence[int] | None) -> list[Part]:
    """The parts for ``blocks`` = (nz, ny), or z-slabs when None or ny == 1."""
    if blocks is None or blocks[1] == 1:
        return slab_parts(grid, nonempty, num_parts)
    return block_parts(grid, nonempty, int(blocks[0]), int(blocks[1]))
