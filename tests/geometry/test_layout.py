"""Part split and chunk ownership: boundaries between patch rows, participants per chunk from patch
membership, piece boxes that hold every voxel another part reaches (one writer per chunk)."""

from __future__ import annotations

import numpy as np
import pytest
from vesuvius_inference.geometry.grid import ChunkGrid, PatchGrid, split_parts
from vesuvius_inference.geometry.layout import OWN, PAIR, SHARED, PartLayout
from vesuvius_inference.geometry.partition import split


def test_boundaries_fall_between_patch_rows_when_the_balance_allows():
    weights = np.ones(20 * 9, dtype=bool)  # 20 z-rows of 3 x 3 patches
    parts = split_parts(weights, 6, row_size=9, tolerance=0.1)
    assert all(a % 9 == 0 for a, _ in parts)
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 9  # at most one row apart
    # without snapping the boundaries fall inside rows
    assert any(a % 9 for a, _ in split_parts(weights, 6))
    # a row that holds most of the work cannot be kept whole without ruining the balance: split inside it
    heavy = np.zeros(10 * 9, dtype=bool)
    heavy[4 * 9:5 * 9] = True
    heavy[::9] = True
    parts = split_parts(heavy, 3, row_size=9, tolerance=0.1)
    assert any(a % 9 for a, _ in parts[1:])
    counts = [int(heavy[a:b].sum()) for a, b in parts]
    assert max(counts) - min(counts) <= 1


def _reach_by_patches(grid: PatchGrid, nonempty: np.ndarray, parts, shape, chunks) -> tuple[dict, np.ndarray]:
    """Brute force: per chunk the parts with a non-empty patch touching it; per voxel a bitmask of parts."""
    cg = ChunkGrid(shape, chunks)
    who: dict = {}
    vox = np.zeros(shape, dtype=np.int64)
    for k, part in enumerate(parts):
        for i in part.members(grid):
            if not nonempty[i]:
                continue
            lo, hi = grid.region(int(i))
            vox[tuple(slice(a, b) for a, b in zip(lo, hi))] |= 1 << k
            for idx in cg.touching(lo, hi):
                who.setdefault(idx, set()).add(k)
    return who, vox


def _inside(box, lo, hi) -> np.ndarray:
    """Mask over the chunk [lo, hi) of the voxels inside ``box``."""
    m = np.zeros(tuple(b - a for a, b in zip(lo, hi)), dtype=bool)
    if box is not None:
        m[tuple(slice(max(a, o) - o, max(min(b, e), o) - o) for a, b, o, e in zip(box[0], box[1], lo, hi))] = True
    return m


@pytest.mark.parametrize("shape,patch,overlap,n,blocks,chunks,sparse", [
    ((200, 40, 40), (32, 32, 32), 0.5, 5, None, (32, 16, 16), False),
    ((150, 50, 40), (48, 32, 32), 0.25, 7, None, (40, 20, 20), True),
    ((90, 64, 64), (32, 32, 32), 0.5, 12, None, (16, 32, 32), False),  # thin parts: several parts share a chunk
    ((160, 96, 48), (32, 32, 32), 0.5, 6, (3, 2), (32, 32, 32), True),  # blocks: corners with 3-4 participants
    ((128, 128, 40), (32, 32, 32), 0.5, 8, (2, 4), (24, 24, 24), False),
])
def test_participants_and_piece_boxes_match_brute_force(shape, patch, overlap, n, blocks, chunks, sparse):
    grid = PatchGrid(shape, patch, overlap)
    rng = np.random.default_rng(n)
    nonempty = rng.random(grid.n_patches) > 0.3 if sparse else np.ones(grid.n_patches, dtype=bool)
    parts = split(grid, nonempty, n, blocks)
    assert sorted(np.concatenate([p.members(grid) for p in parts]).tolist()) == list(range(grid.n_patches))
    layout = PartLayout.build(grid, nonempty, parts, shape=shape, chunks=chunks, pairs=True)
    who, vox = _reach_by_patches(grid, nonempty, parts, shape, chunks)
    cg = layout.cgrid
    for idx in cg.all():
        ks = who.get(idx, set())
        assert set(layout.participants(idx)) == ks
        assert layout.kind(idx) == (None if not ks else OWN if len(ks) == 1 else PAIR if len(ks) == 2 else SHARED)
        if len(ks) < 2:
            continue
        lo, hi = cg.box(idx)
        here = vox[tuple(slice(a, b) for a, b in zip(lo, hi))]
        for k in ks:
            shared, edge = layout.piece_boxes(k, idx)
            mine = (here >> k) & 1 == 1
            others = (here & ~(1 << k)) != 0
            s, e = _inside(shared, lo, hi), _inside(edge, lo, hi)
            assert not (mine & others & ~s).any()  # every voxel another part reaches is in the sums
            assert not (mine & ~s & ~e).any()  # every voxel of mine is in one of the two boxes


def test_seams_are_one_overlap_deep_at_the_scroll_geometry():
    """PHerc1218 (23,247 x 7,593 x 7,593) on 64 GPUs, patch 128, overlap 0.5, z-slabs: every boundary
    between patch rows, and a two-part chunk's shared box one patch overlap deep (64 or 65 slices)."""
    shape, p = (23247, 7593, 7593), 128
    grid = PatchGrid(shape, (p, p, p), 0.5)
    nonempty = np.ones(grid.n_patches, dtype=bool)
    parts = split(grid, nonempty, 64, None)
    row = grid.counts[1] * grid.counts[2]
    assert all(part.start % row == 0 for part in parts)
    weights = [part.size() for part in parts]
    assert max(weights) / np.mean(weights) < 1.1
    layout = PartLayout.build(grid, nonempty, parts, shape=shape, chunks=(p, p, p), pairs=True)
    kinds = layout.kinds()
    assert not (kinds == 3).any()  # slabs a whole number of patch rows deep: never three parts in a chunk
    rows = np.argwhere((kinds == 2).any(axis=(1, 2))).ravel()
    spans = []  # a seam may straddle two chunk rows: join the rows' shared z-ranges
    for r in rows:
        k = layout.participants((int(r), 0, 0))
        shared, _ = layout.piece_boxes(k[0], (int(r), 0, 0))
        if spans and spans[-1][1] == shared[0][0]:
            spans[-1] = (spans[-1][0], shared[1][0])
        else:
            spans.append((shared[0][0], shared[1][0]))
    assert len(spans) == 63 and {b - a for a, b in spans} <= {64, 65}
    assert (kinds == 1).sum() > 0.4 * kinds.size
