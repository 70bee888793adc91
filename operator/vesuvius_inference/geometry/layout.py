"""Who writes which output chunk, decided per chunk from the parts whose patches touch it. Pure logic.

A part *reaches* the output chunks its non-empty patches touch (patch membership, not z-ranges: a
slab's end may fall inside a patch row, and blocks of a 2D split end inside rows too); its *cover
box* is the bounding box of those patches' regions. The *participants* of a chunk are the parts
that reach it:

- one: ``OWN``. That part writes the chunk into the output when its last patch there is done.
- two, with ``pairs`` on (predict writes the output, and the store has create-if-absent writes):
  ``PAIR``. The first of the two to complete the chunk stores a *piece*; the second merges it with
  its own sums in memory and writes the chunk (seams.py). Nothing of the seam stays behind but the
  first finisher's piece.
- otherwise (three or more participants, at the corners of 2D blocks; or two without ``pairs``, the
  seed's layout): ``SHARED``. Every participant stores a piece with its weights and blend merges them.

A piece holds, of the voxels of the chunk inside its part's cover box, the ``shared`` box (where
another participant's cover box reaches too) as int64 logit sums, and the bounding box of the rest,
its ``edge``, as final values (only this part reaches them). Both boxes follow from the cover boxes
alone, so every participant, blend and plan compute the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vesuvius_inference.contract.frame import triple
from vesuvius_inference.geometry.grid import ChunkGrid, PatchGrid, Shape3, chunks_touched_box
from vesuvius_inference.geometry.partition import Part

OWN, PAIR, SHARED = "own", "pair", "shared"
Box = tuple[Shape3, Shape3]  # [lo, hi) in volume coordinates


def cover_and_reach(grid: PatchGrid, ids: np.ndarray, chunks: Sequence[int]
                    ) -> tuple[Box, tuple[Shape3, np.ndarray]] | None:
    """Of the patches ``ids`` (a part's non-empty ones): the bounding box of their regions, and the
    chunks they touch as (first chunk index, boolean block); None when there are none."""
    if ids.size == 0:
        return None
    g = np.unravel_index(ids, grid.counts)
    g_lo = [int(a.min()) for a in g]
    g_hi = [int(a.max()) + 1 for a in g]
    lo, hi = [], []
    for d in range(3):
        st = grid.starts[d]
        lo.append(max(st[g_lo[d]], 0) + grid.origin[d])
        hi.append(min(st[g_hi[d] - 1] + grid.patch[d], grid.shape[d]) + grid.origin[d])
    sel = np.zeros([b - a for a, b in zip(g_lo, g_hi)], dtype=bool)
    sel[tuple(a - o for a, o in zip(g, g_lo))] = True
    reach = chunks_touched_box(grid, sel, g_lo, chunks)
    assert reach is not None
    return (triple(lo), triple(hi)), reach


# -- boxes, vectorised: arrays (..., 2, 3) of [lo, hi) -------------------------------------------

def vintersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty_like(a)
    out[..., 0, :] = np.maximum(a[..., 0, :], b[..., 0, :])
    out[..., 1, :] = np.minimum(a[..., 1, :], b[..., 1, :])
    return out


def vempty(a: np.ndarray) -> np.ndarray:
    return np.asarray((a[..., 1, :] <= a[..., 0, :]).any(axis=-1))  # one box: a 0-d array, not numpy's bool


def vsize(a: np.ndarray) -> np.ndarray:
    return np.where(vempty(a), 0, np.prod(np.maximum(a[..., 1, :] - a[..., 0, :], 0), axis=-1))


def vminus(a: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The bounding box of ``a`` minus its sub-box ``s`` (``s`` empty: ``a``; ``s == a``: empty). It is
    a box smaller than ``a`` only when ``s`` spans ``a`` on two axes and covers one end of the third."""
    out = a.copy()
    none = vempty(s)
    diff = (s[..., 0, :] != a[..., 0, :]) | (s[..., 1, :] != a[..., 1, :])
    ndiff = diff.sum(axis=-1)
    one = (ndiff == 1) & ~none
    axis = np.argmax(diff, axis=-1)
    for d in range(3):
        m = one & (axis == d)
        low = m & (s[..., 0, d] == a[..., 0, d])  # s covers the low end: the rest is above it
        high = m & ~low & (s[..., 1, d] == a[..., 1, d])
        out[..., 0, d] = np.where(low, s[..., 1, d], out[..., 0, d])
        out[..., 1, d] = np.where(high, s[..., 0, d], out[..., 1, d])
    full = (ndiff == 0) & ~none
    out[..., 1, :] = np.where(full[..., None], out[..., 0, :], out[..., 1, :])
    return out


def _arr(box: Box | None) -> np.ndarray:
    return np.array([[0, 0, 0], [0, 0, 0]] if box is None else [box[0], box[1]], dtype=np.int64)


def _box(a: np.ndarray) -> Box | None:
    if vempty(a):
        return None
    return triple(int(v) for v in a[0]), triple(int(v) for v in a[1])


@dataclass(frozen=True)
class PartLayout:
    """Participants and piece geometry per output chunk for one part split (see the module docstring)."""

    cgrid: ChunkGrid
    boxes: tuple[Box | None, ...]  # per part: its cover box, or None (nothing to predict)
    reach: tuple[tuple[Shape3, np.ndarray] | None, ...]  # per part: the chunks it reaches
    pairs: bool  # two-participant chunks are merged by their second finisher

    @classmethod
    def build(cls, grid: PatchGrid, nonempty: np.ndarray, parts: Sequence[Part], *, shape: Shape3, chunks: Shape3,
              pairs: bool) -> PartLayout:
        boxes, reach = [], []
        for part in parts:
            ids = part.members(grid)
            found = cover_and_reach(grid, ids[nonempty[ids]], chunks)
            boxes.append(found[0] if found else None)
            reach.append(found[1] if found else None)
        return cls(ChunkGrid(shape, chunks), tuple(boxes), tuple(reach), pairs)

    @cached_property
    def _tally(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(participants, lowest participant, highest participant) per chunk."""
        count = np.zeros(self.cgrid.counts, dtype=np.int32)
        first = np.full(self.cgrid.counts, -1, dtype=np.int32)
        last = np.full(self.cgrid.counts, -1, dtype=np.int32)
        for p, r in enumerate(self.reach):
            if r is None:
                continue
            lo, sub = r
            view = tuple(slice(a, a + n) for a, n in zip(lo, sub.shape))
            count[view] += sub
            first[view] = np.where(sub & (first[view] < 0), p, first[view])
            last[view] = np.where(sub, p, last[view])
        return count, first, last

    @property
    def counts(self) -> np.ndarray:
        return self._tally[0]

    def reaches(self, part: int, idx: Sequence[int]) -> bool:
        r = self.reach[part]
        if r is None:
            return False
        lo, sub = r
        rel = [i - a for i, a in zip(idx, lo)]
        return all(0 <= v < n for v, n in zip(rel, sub.shape)) and bool(sub[tuple(rel)])

    @cached_property
    def _many(self) -> dict[Shape3, list[int]]:
        """The participants of every chunk with three or more (few: corners of blocks, thin slabs)."""
        count = self.counts
        out: dict[Shape3, list[int]] = {}
        for p, r in enumerate(self.reach):
            if r is None:
                continue
            lo, sub = r
            view = tuple(slice(a, a + n) for a, n in zip(lo, sub.shape))
            for rel in np.argwhere(sub & (count[view] >= 3)):
                out.setdefault(triple(int(a + v) for a, v in zip(lo, rel)), []).append(p)
        return out

    def participants(self, idx: Sequence[int]) -> list[int]:
        count, first, last = self._tally
        key = triple(int(v) for v in idx)
        k = int(count[key])
        if k <= 2:
            return sorted({int(first[key]), int(last[key])})[:k] if k else []
        return list(self._many[key])

    def kind(self, idx: Sequence[int]) -> str | None:
        """OWN, PAIR, SHARED, or None (no part predicts anything there)."""
        k = int(self.counts[tuple(idx)])
        return None if k == 0 else OWN if k == 1 else PAIR if k == 2 and self.pairs else SHARED

    def kinds(self) -> np.ndarray:
        """Per chunk: 0 nothing, 1 OWN, 2 PAIR, 3 SHARED."""
        k = self.counts
        return np.where(k == 0, 0, np.where(k == 1, 1, np.where((k == 2) & self.pairs, 2, 3)))

    def chunks_of(self, kind: str) -> list[Shape3]:
        code = {OWN: 1, PAIR: 2, SHARED: 3}[kind]
        return [triple(int(v) for v in c) for c in np.argwhere(self.kinds() == code)]

    def piece_boxes(self, part: int, idx: Sequence[int]) -> tuple[Box | None, Box | None]:
        """(shared, edge) of ``part``'s piece of chunk ``idx``: where its sums go, and where its final
        values go (the bounding box of its voxels no other participant's cover box reaches)."""
        shared, edge = self._pieces(np.asarray([idx]), np.asarray([part]), np.asarray([self.participants(idx)]))
        return _box(shared[0]), _box(edge[0])

    def _pieces(self, idx: np.ndarray, part: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised ``piece_boxes``: chunks (M, 3), their part (M,), participants (M, K; -1 pads)."""
        boxes = np.stack([_arr(b) for b in self.boxes] + [_arr(None)])  # index -1: the empty box
        chunks, shape = np.asarray(self.cgrid.chunks), np.asarray(self.cgrid.shape)
        chunk = np.stack([idx * chunks, np.minimum(idx * chunks + chunks, shape)], axis=1)
        mine = vintersect(chunk, boxes[part])
        lo = np.full(idx.shape, np.iinfo(np.int64).max)
        hi = np.full(idx.shape, np.iinfo(np.int64).min)
        for j in range(others.shape[1]):
            o = np.where(others[:, j] == part, -1, others[:, j])
            s = vintersect(mine, boxes[o])
            ok = ~vempty(s)[:, None]
            lo = np.where(ok, np.minimum(lo, s[:, 0]), lo)
            hi = np.where(ok, np.maximum(hi, s[:, 1]), hi)
        none = lo[:, 0] > hi[:, 0]
        shared = np.stack([np.where(none[:, None], 0, lo), np.where(none[:, None], 0, hi)], axis=1)
        shared = np.where(vempty(mine)[:, None, None], 0, shared)
        return shared, np.where(vempty(mine)[:, None, None], 0, vminus(mine, shared))

    def piece_voxels(self) -> dict[str, int]:
        """Voxels the pieces of this layout hold, summed over the chunks (plan's geometry): of PAIR
        chunks the shared boxes (stored once) and the edges of either side (which is stored depends on
        who finishes first: ``pair_edge_low`` if the lower part id always did, ``pair_edge_high`` if the
        higher); of SHARED chunks every participant's boxes."""
        count, first, last = self._tally
        two = np.argwhere(count == 2)
        lo = two * np.asarray(self.cgrid.chunks)
        chunk = np.stack([lo, np.minimum(lo + np.asarray(self.cgrid.chunks), np.asarray(self.cgrid.shape))], axis=1)
        boxes = np.stack([_arr(b) for b in self.boxes]) if self.boxes else np.zeros((0, 2, 3), np.int64)
        a = vintersect(chunk, boxes[first[tuple(two.T)]])
        b = vintersect(chunk, boxes[last[tuple(two.T)]])
        s = vintersect(a, b)
        s_vox = vsize(s)
        e_a, e_b = vsize(vminus(a, s)), vsize(vminus(b, s))
        out = {"own_chunks": int((count == 1).sum()), "pair_chunks": 0, "pair_shared": 0, "pair_edge_low": 0,
               "pair_edge_high": 0, "pair_edge_max": 0, "pair_edge_min": 0, "shared_chunks": 0, "shared_pieces": 0,
               "shared_shared": 0, "shared_edge": 0}
        if self.pairs:
            out.update(pair_chunks=len(two), pair_shared=int(s_vox.sum()), pair_edge_low=int(e_a.sum()),
                       pair_edge_high=int(e_b.sum()), pair_edge_max=int(np.maximum(e_a, e_b).sum()),
                       pair_edge_min=int(np.minimum(e_a, e_b).sum()))
        else:
            out.update(shared_chunks=len(two), shared_pieces=2 * len(two), shared_shared=2 * int(s_vox.sum()),
                       shared_edge=int((e_a + e_b).sum()))
        if self._many:
            rows = [(idx, p, ps) for idx, ps in self._many.items() for p in ps]
            k = max(len(ps) for _, _, ps in rows)
            sh, ed = self._pieces(np.asarray([r[0] for r in rows]), np.asarray([r[1] for r in rows]),
                                  np.asarray([r[2] + [-1] * (k - len(r[2])) for r in rows]))
            out.update(shared_chunks=out["shared_chunks"] + len(self._many),
                       shared_pieces=out["shared_pieces"] + len(rows),
                       shared_shared=out["shared_shared"] + int(vsize(sh).sum()),
                       shared_edge=out["shared_edge"] + int(vsize(ed).sum()))
        return out
