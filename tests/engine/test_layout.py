"""Part split and chunk-row ownership: boundaries between patch rows, thin seams, one writer per row."""

from __future__ import annotations

import numpy as np
import pytest
from vesuvius_inference.grid import PatchGrid, grid_parts, split_parts
from vesuvius_inference.layout import EDGE, SEAM, SUMS, PartLayout


def _z_cover_by_patches(grid: PatchGrid, nonempty: np.ndarray, parts, depth: int) -> list[set[int]]:
    """Brute force: for every z-slice, the parts with a non-empty patch whose region contains it."""
    cover: list[set[int]] = [set() for _ in range(depth)]
    for k, (a, b) in enumerate(parts):
        for i in range(a, b):
            if nonempty[i]:
                lo, hi = grid.region(i)
                for z in range(lo[0], hi[0]):
                    cover[z].add(k)
    return cover


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


@pytest.mark.parametrize("shape,patch,overlap,n,chunk_z,sparse", [
    ((200, 40, 40), (32, 32, 32), 0.5, 5, 32, False),
    ((300, 50, 40), (48, 32, 32), 0.25, 7, 40, True),
    ((90, 64, 64), (32, 32, 32), 0.5, 12, 16, False),  # thin parts: several parts share slices
])
def test_rows_are_owned_by_the_one_part_that_covers_them_and_seams_are_segments(shape, patch, overlap, n, chunk_z,
                                                                                 sparse):
    grid = PatchGrid(shape, patch, overlap)
    rng = np.random.default_rng(n)
    nonempty = rng.random(grid.n_patches) > 0.3 if sparse else np.ones(grid.n_patches, dtype=bool)
    parts = grid_parts(grid, nonempty, n)
    layout = PartLayout.build(grid, nonempty, parts, shape[0], chunk_z)
    cover = _z_cover_by_patches(grid, nonempty, parts, shape[0])
    segs = layout.segments()
    for r in range(layout.rows):
        z0, z1 = r * chunk_z, min(shape[0], (r + 1) * chunk_z)
        ks = set().union(*cover[z0:z1])
        owner = layout.row_owner(r)
        if not ks:
            assert owner is None
        elif len(ks) == 1:
            assert owner == next(iter(ks))
        else:
            assert owner == SEAM
            for z in range(z0, z1):  # every slice of a seam row is stored by exactly the parts covering it
                here = [s for s in segs if s.z0 <= z < s.z1]
                assert {s.part for s in here} == cover[z]
                assert all(s.kind == (SUMS if len(cover[z]) > 1 else EDGE) for s in here)
    for s in segs:  # segments never cross a row, so each segment chunk has one completion
        assert s.z0 // chunk_z == (s.z1 - 1) // chunk_z


def test_seams_are_one_overlap_deep_at_the_scroll_geometry():
    """PHerc1218 (23,247 x 7,593 x 7,593) on 64 GPUs, patch 128, overlap 0.5: 63 seams of 64 slices."""
    shape, p = (23247, 7593, 7593), 128
    grid = PatchGrid(shape, (p, p, p), 0.5)
    nonempty = np.ones(grid.n_patches, dtype=bool)
    parts = grid_parts(grid, nonempty, 64)
    row = grid.counts[1] * grid.counts[2]
    assert all(a % row == 0 for a, _ in parts)
    weights = [b - a for a, b in parts]
    assert max(weights) / np.mean(weights) < 1.1
    layout = PartLayout.build(grid, nonempty, parts, shape[0], p)
    # nnU-Net's step there is (23247 - 128) / 362 = 63.9 voxels, so each seam is 128 - 63.9 deep: 64 or 65
    overlaps = [a[1] - b[0] for a, b in zip(layout.covers, layout.covers[1:])]
    assert set(overlaps) <= {64, 65} and layout.seam_depth() == sum(overlaps)
    owned = sum(1 for o in layout.owners if o is not None and o != SEAM)
    assert owned + len(layout.seam_rows) == layout.rows and owned > 0.4 * layout.rows
