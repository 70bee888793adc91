"""What one predict part will do, decided before any voxel is read: pure.

The patch grid (nnU-Net's, over the volume or over ``--bbox`` as the crop), which patches may hold
data (from the input's chunk listing), the split into parts, the part's seams (layout.py), the
order its patches run in (tiled to the input cache) and, per output chunk, how many of its patches
touch it (a chunk is complete when that count reaches 0). predict runs this plan; ``plan`` prints
the same numbers for a whole run without loading the model, so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BadArguments
from .grid import ChunkGrid, PatchGrid, Shape3, grid_parts, nonempty_patches, parse_bbox, tiled_order
from .layout import PartLayout


def region(bbox: str | None, shape: Shape3, where: str = "the input") -> tuple[Shape3, Shape3] | None:
    """``--bbox`` as (lo, hi), or None for the whole volume; a malformed one is a bad argument (exit 2)
    naming the axis and ``where`` (which level of the input)."""
    try:
        return parse_bbox(bbox, shape, where)
    except ValueError as e:
        raise BadArguments(str(e)) from None


def make_grid(shape: Shape3, patch: Shape3, overlap: float, bbox: str | None, where: str = "the input") -> PatchGrid:
    """The patch grid over the volume, or over ``--bbox`` treated as the volume (nnU-Net's grid of the crop)."""
    box = region(bbox, shape, where)
    if box is None:
        return PatchGrid(shape, patch, overlap)
    lo, hi = box
    return PatchGrid(tuple(b - a for a, b in zip(lo, hi)), patch, overlap, origin=lo)  # type: ignore[arg-type]


def patch_nonempty(grid: PatchGrid, occupancy: np.ndarray | None, input_chunks: Sequence[int]) -> np.ndarray:
    """Patches that may hold data: those touching at least one stored input chunk (all without a listing)."""
    if occupancy is None:
        return np.ones(grid.n_patches, dtype=bool)
    return nonempty_patches(grid, occupancy, input_chunks)


def chunk_countdown(grid: PatchGrid, cgrid: ChunkGrid, part: tuple[int, int]) -> dict[Shape3, int]:
    """Per chunk: how many of this part's patches touch it (a chunk completes when this hits 0)."""
    a, b = part
    remaining: dict[Shape3, int] = {}
    for i in range(a, b):
        for idx in cgrid.touching(*grid.region(i)):
            remaining[idx] = remaining.get(idx, 0) + 1
    return remaining


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
    parts: list[tuple[int, int]]
    part_id: int
    layout: PartLayout
    remaining: dict[Shape3, int]
    todo: list[int]  # the part's non-empty patches in the order they run

    @property
    def part(self) -> tuple[int, int]:
        return self.parts[self.part_id]

    @property
    def todo_digest(self) -> str:
        return digest(self.todo)

    @property
    def listed_empty(self) -> int:
        """Patches of the part that the listing alone shows to be empty (never read)."""
        a, b = self.part
        return (b - a) - len(self.todo)


def plan_part(src: Source, patch: Shape3, chunks: Shape3, overlap: float, bbox: str | None, num_parts: int,
              part_id: int, skip_empty: bool, patch_order: str, input_cache_bytes: int) -> PartPlan:
    """The plan of part ``part_id`` of ``num_parts``."""
    grid = make_grid(src.shape, patch, overlap, bbox)
    cgrid = ChunkGrid(src.shape, chunks)
    nonempty = patch_nonempty(grid, src.occupancy if skip_empty else None, src.chunks)
    parts = grid_parts(grid, nonempty, num_parts)
    layout = PartLayout.build(grid, nonempty, parts, src.shape[0], chunks[0])
    part = parts[part_id]
    if patch_order == "tiled":
        order = tiled_order(grid, part, input_cache_bytes, src.bytes_per_voxel)
    else:
        order = list(range(*part))
    todo = [i for i in order if nonempty[i]]
    return PartPlan(grid, cgrid, nonempty, parts, part_id, layout, chunk_countdown(grid, cgrid, part), todo)
