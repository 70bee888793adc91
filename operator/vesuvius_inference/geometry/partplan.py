"""What one predict part will do, decided before any voxel is read: pure.

The patch grid (nnU-Net's, over the volume or over ``--bbox`` as the crop), which patches may hold
data (from the input's chunk listing), the split into parts (z-slabs or blocks, partition.py, chosen
for the fewest seam bytes), who writes each output chunk (layout.py), the order its patches run in
(tiled to the input cache) and, per output chunk, how many of its patches touch it (a chunk is
complete when that count reaches 0). predict runs this plan; ``plan`` prints
the same numbers for a whole run without loading the model, so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.geometry.grid import (
    ChunkGrid,
    PatchGrid,
    Shape3,
    nonempty_patches,
    parse_bbox,
    tiled_order,
)
from vesuvius_inference.geometry.layout import PartLayout
from vesuvius_inference.geometry.partition import SLABS, Part, blocks_of, factorisations, split


def region(bbox: str | None, shape: Shape3, where: str = "the input") -> tuple[Shape3, Shape3] | None:
    """``--bbox`` as (lo, hi), or None for the whole volume; a malformed one is a bad argument (exit 2)
    naming the axis and ``where`` (which level of the input)."""
    try:
        return parse_bbox(bbox, shape, where)
    except ValueError as e:
        raise BadArguments(str(e)) from None


def make_grid(shape: Shape3, patch: Shape3, overlap: float, *, bbox: str | None, where: str = "the input") -> PatchGrid:
    """The patch grid over the volume, or over ``--bbox`` treated as the volume (nnU-Net's grid of the crop)."""
    box = region(bbox, shape, where)
    if box is None:
        return PatchGrid(shape, patch, overlap)
    lo, hi = box
    return PatchGrid(triple(b - a for a, b in zip(lo, hi)), patch, overlap, origin=lo)


def patch_nonempty(grid: PatchGrid, occupancy: np.ndarray | None, input_chunks: Sequence[int]) -> np.ndarray:
    """Patches that may hold data: those touching at least one stored input chunk (all without a listing)."""
    if occupancy is None:
        return np.ones(grid.n_patches, dtype=bool)
    return nonempty_patches(grid, occupancy, input_chunks)


def chunk_countdown(grid: PatchGrid, cgrid: ChunkGrid, members: np.ndarray) -> dict[Shape3, int]:
    """Per chunk: how many of this part's patches touch it (a chunk completes when this hits 0)."""
    remaining: dict[Shape3, int] = {}
    for i in members:
        for idx in cgrid.touching(*grid.region(int(i))):
            remaining[idx] = remaining.get(idx, 0) + 1
    return remaining


# What a binary model's pieces cost per voxel, uncompressed (int64 logit sums without / with the weight
# plane, uint8 edges; the expected edge of a two-part seam is half of both sides'): how a partition is chosen.
COST = {"pair_shared": 16.0, "pair_edge_low": 0.5, "pair_edge_high": 0.5, "shared_shared": 24.0, "shared_edge": 1.0}
# Block splits measured besides z-slabs (the least cut area first): at PHerc1218's shape on 64 parts
# the cut area ranks 16x4 and 8x8 first, and the measured seam bytes agree.
CANDIDATES = 2
# A partition may trade this much balance (max / mean non-empty patches per part, over the slabs') for seams.
BALANCE_SLACK = 0.1


def seam_cost(layout: PartLayout) -> float:
    v = layout.piece_voxels()
    return sum(w * v[k] for k, w in COST.items())


def imbalance(grid: PatchGrid, nonempty: np.ndarray, parts: Sequence[Part]) -> float:
    counts = [int(nonempty[p.members(grid)].sum()) for p in parts]
    return max(counts) / max(float(np.mean(counts)), 1e-9) if sum(counts) else 1.0


def choose_parts(grid: PatchGrid, nonempty: np.ndarray, num_parts: int, *, partition: str, shape: Shape3,
                 chunks: Shape3, pairs: bool) -> tuple[list[Part], PartLayout]:
    """The parts and their layout: as ``partition`` says (``slabs``, ``NZxNY``), or with ``auto`` the
    factorisation of ``num_parts`` into z-slabs x y-columns whose pieces hold the fewest bytes (the
    same geometry plan prints), among z-slabs and the ``CANDIDATES`` block splits of least cut area
    within ``BALANCE_SLACK`` of the slabs' balance."""
    blocks = blocks_of(partition)
    if partition == SLABS or blocks is not None or num_parts == 1:
        if blocks is not None and blocks[0] * blocks[1] != num_parts:
            raise BadArguments(f"--partition {partition} makes {blocks[0] * blocks[1]} parts, not {num_parts}")
        parts = split(grid, nonempty, num_parts, blocks)
        return parts, PartLayout.build(grid, nonempty, parts, shape=shape, chunks=chunks, pairs=pairs)
    best: tuple[float, list[Part], PartLayout] | None = None
    limit = 0.0
    for candidate in factorisations(num_parts, grid, CANDIDATES):
        parts = split(grid, nonempty, num_parts, candidate)
        balance = imbalance(grid, nonempty, parts)
        if candidate[1] == 1:
            limit = balance + BALANCE_SLACK
        elif balance > limit:
            continue
        layout = PartLayout.build(grid, nonempty, parts, shape=shape, chunks=chunks, pairs=pairs)
        cost = seam_cost(layout)
        if best is None or cost < best[0]:
            best = (cost, parts, layout)
    assert best is not None
    return best[1], best[2]


def digest(items: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Source:
    """What the plan needs to know of the input: its geometry and which chunks are stored."""

    shape: Shape3
    chunks: Shape3
    occupancy: np.ndarray | None  # stored chunks (None: unknown, every chunk may hold data)
    bytes_per_voxel: int


@dataclass
class PartPlan:
    grid: PatchGrid
    cgrid: ChunkGrid
    nonempty: np.ndarray
    parts: list[Part]
    part_id: int
    layout: PartLayout
    remaining: dict[Shape3, int]
    todo: list[int]  # the part's non-empty patches in the order they run

    @property
    def part(self) -> Part:
        return self.parts[self.part_id]

    @cached_property
    def members(self) -> np.ndarray:
        """The part's patch ids, ascending (the ``ran`` mask is over these)."""
        return self.part.members(self.grid)

    def position(self, ids: np.ndarray) -> np.ndarray:
        """Index of each of this part's patch ids in ``members``."""
        return np.searchsorted(self.members, ids)

    @property
    def todo_digest(self) -> str:
        return digest(self.todo)

    @property
    def listed_empty(self) -> int:
        """Patches of the part that the listing alone shows to be empty (never read)."""
        return self.part.size() - len(self.todo)


def plan_part(src: Source, *, patch: Shape3, chunks: Shape3, overlap: float, bbox: str | None, num_parts: int,
              part_id: int, skip_empty: bool, patch_order: str, input_cache_bytes: int, partition: str = SLABS,
              pairs: bool = False) -> PartPlan:
    """The plan of part ``part_id`` of ``num_parts``."""
    grid = make_grid(src.shape, patch, overlap, bbox=bbox)
    cgrid = ChunkGrid(src.shape, chunks)
    nonempty = patch_nonempty(grid, src.occupancy if skip_empty else None, src.chunks)
    parts, layout = choose_parts(grid, nonempty, num_parts, partition=partition, shape=src.shape, chunks=chunks,
                                 pairs=pairs)
    members = parts[part_id].members(grid)
    if patch_order == "tiled":
        order = tiled_order(grid, members, input_cache_bytes, src.bytes_per_voxel)
    else:
        order = [int(i) for i in members]
    todo = [i for i in order if nonempty[i]]
    return PartPlan(grid, cgrid, nonempty, parts, part_id, layout, chunk_countdown(grid, cgrid, members), todo)
