"""Who writes which output chunk: part ownership of chunk rows and the thin seams between parts.

Parts are z-slabs of the patch grid, so the question is one-dimensional. A part *covers* the
z-range of its non-empty patches. An output chunk row (all chunks with one z index) that only one
part covers is that part's alone: the part writes its chunks straight into the output, once. A row
that two or more parts cover (or that holds the end of one part's cover and the start of
another's) is a *seam row*; blend writes it, from what each part stored for it:

- ``sums`` segments: the z-slices inside the row that several parts cover. Each part stores its
  int64 fixed-point sums there (exact, so the result is the same for any number of parts).
- ``edge`` segments: the z-slices inside the row that only this part covers; already final, they
  are stored as float16 logits.

Segments never cross a row boundary, so each segment chunk is written once, by one completion.
With part boundaries between patch rows a ``sums`` segment is one patch overlap deep (64 voxels for
patch 128 at overlap 0.5), not whole chunks. Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .grid import PatchGrid

SEAM = -1  # row_owner value of a seam row
SUMS, EDGE = "sums", "edge"


def part_covers(grid: PatchGrid, nonempty: np.ndarray, parts: Sequence[tuple[int, int]]
                ) -> list[tuple[int, int] | None]:
    """Per part: the z-range [lo, hi) (volume coordinates) its non-empty patches cover, or None."""
    row = grid.counts[1] * grid.counts[2]
    st = np.asarray(grid.starts[0])
    z_lo = np.maximum(st, 0) + grid.origin[0]
    z_hi = np.minimum(st + grid.patch[0], grid.shape[0]) + grid.origin[0]
    out: list[tuple[int, int] | None] = []
    for a, b in parts:
        idx = np.nonzero(nonempty[a:b])[0] + a
        if idx.size == 0:
            out.append(None)
            continue
        rows = idx // row
        out.append((int(z_lo[rows.min()]), int(z_hi[rows.max()])))
    return out


@dataclass(frozen=True)
class Segment:
    """A z-range [z0, z1) inside one seam row that one part stores, as ``sums`` or ``edge``."""

    part: int
    z0: int
    z1: int
    kind: str

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.z0:07d}_{self.z1:07d}"


@dataclass(frozen=True)
class PartLayout:
    """Ownership of the output's chunk rows for one part split (see the module docstring)."""

    depth: int  # Z of the output (the volume's, also with a bbox)
    chunk_z: int
    covers: tuple[tuple[int, int] | None, ...]

    @classmethod
    def build(cls, grid: PatchGrid, nonempty: np.ndarray, parts: Sequence[tuple[int, int]], depth: int,
              chunk_z: int) -> PartLayout:
        return cls(depth, chunk_z, tuple(part_covers(grid, nonempty, parts)))

    @property
    def rows(self) -> int:
        return -(-self.depth // self.chunk_z)

    @cached_property
    def _count(self) -> np.ndarray:
        """How many parts cover each z-slice."""
        diff = np.zeros(self.depth + 1, dtype=np.int64)
        for c in self.covers:
            if c is not None:
                diff[c[0]] += 1
                diff[c[1]] -= 1
        return np.cumsum(diff)[:-1]

    def _row_range(self, r: int) -> tuple[int, int]:
        return r * self.chunk_z, min(self.depth, (r + 1) * self.chunk_z)

    def _parts_in(self, z0: int, z1: int) -> list[int]:
        return [k for k, c in enumerate(self.covers) if c is not None and c[0] < z1 and c[1] > z0]

    @cached_property
    def owners(self) -> tuple[int | None, ...]:
        """Per chunk row: the part that owns it, ``SEAM``, or None (no part predicts anything there)."""
        out: list[int | None] = []
        for r in range(self.rows):
            z0, z1 = self._row_range(r)
            ks = self._parts_in(z0, z1)
            out.append(None if not ks else ks[0] if len(ks) == 1 else SEAM)
        return tuple(out)

    def row_owner(self, r: int) -> int | None:
        return self.owners[r]

    def owned_rows(self, part: int) -> list[int]:
        return [r for r, o in enumerate(self.owners) if o == part]

    @cached_property
    def seam_rows(self) -> tuple[int, ...]:
        return tuple(r for r, o in enumerate(self.owners) if o == SEAM)

    def segments(self, part: int | None = None) -> list[Segment]:
        """The segments parts store for the seam rows (of one part, or of all)."""
        out = []
        for r in self.seam_rows:
            r0, r1 = self._row_range(r)
            for k in self._parts_in(r0, r1) if part is None else [part]:
                c = self.covers[k]
                if c is None or c[0] >= r1 or c[1] <= r0:
                    continue
                z0, z1 = max(r0, c[0]), min(r1, c[1])
                shared = self._count[z0:z1] >= 2
                start = z0
                for z in range(z0 + 1, z1 + 1):
                    if z == z1 or shared[z - z0] != shared[z - 1 - z0]:
                        out.append(Segment(k, start, z, SUMS if shared[start - z0] else EDGE))
                        start = z
        return out

    def seam_depth(self) -> int:
        """z-slices covered by two or more parts: what is stored as sums (per covering part)."""
        return int((self._count >= 2).sum())
