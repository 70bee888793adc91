"""Pure grid logic against nnU-Net's own slicers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from vesuvius_inference.geometry.grid import ChunkGrid, PatchGrid, chunks_touched, split_chunks, split_parts


def nnunet_slicers(shape, patch, step):
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    pred = nnUNetPredictor(tile_step_size=step, device=torch.device("cpu"), perform_everything_on_device=False)
    pred.configuration_manager = type("CM", (), {"patch_size": list(patch)})()
    padded, revert = pad_nd_image(torch.zeros((1,) + shape), patch, "constant", {"value": 0}, True)
    offset = [s.start for s in revert[1:]]
    return [tuple(s.start - o for s, o in zip(sl[1:], offset)) for sl in
            pred._internal_get_sliding_window_slicers(padded.shape[1:])]


@pytest.mark.parametrize("shape,patch,overlap", [((77, 130, 101), (80, 64, 64), 0.5), ((200, 64, 65), (64, 64, 64), 0.25),
                                                 ((10, 300, 20), (16, 128, 32), 0.75), ((64, 64, 64), (64, 64, 64), 0.0)])
def test_grid_is_nnunets(shape, patch, overlap):
    g = PatchGrid(shape, patch, overlap)
    ours = [g.start(i) for i in range(g.n_patches)]
    assert ours == nnunet_slicers(shape, patch, 1 - overlap)


def test_max_coverage_bounds_the_real_coverage():
    g = PatchGrid((77, 130, 101), (80, 48, 48), 0.5)
    cover = np.zeros(g.shape, dtype=int)
    for i in range(g.n_patches):
        lo, hi = g.region(i)
        cover[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += 1
    assert cover.min() >= 1 and cover.max() <= g.max_coverage()


def test_split_parts_balances_nonempty_and_is_contiguous():
    nonempty = np.zeros(100, dtype=bool)
    nonempty[60:] = True  # the first 60 patches are empty
    parts = split_parts(nonempty, 4)
    assert parts[0][0] == 0 and parts[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    counts = [int(nonempty[a:b].sum()) for a, b in parts]
    assert counts == [10, 10, 10, 10]
    assert split_parts(np.zeros(10, dtype=bool), 3) == [(0, 4), (4, 7), (7, 10)]
    many = split_parts(np.ones(3, dtype=bool), 5)  # more parts than patches: some parts are empty
    assert sum(b - a for a, b in many) == 3


def test_patches_touching_and_chunk_split():
    g = PatchGrid((100, 100, 100), (32, 32, 32), 0.5)
    lo, hi = (40, 40, 40), (50, 50, 50)
    brute = [i for i in range(g.n_patches)
             if all(a < top and b > bot for a, b, bot, top in zip(*g.region(i), lo, hi))]
    assert sorted(g.patches_touching(lo, hi).tolist()) == brute
    ids = list(ChunkGrid((10, 10, 10), (4, 4, 4)).all())
    shares = [split_chunks(ids, 4, p) for p in range(4)]
    assert sorted(sum(shares, [])) == sorted(ids) and all(shares)


def test_nonempty_patches_vectorised_equals_brute_force():
    from vesuvius_inference.geometry.grid import nonempty_patches

    rng = np.random.default_rng(0)
    g = PatchGrid((70, 90, 61), (32, 24, 40), 0.5)
    chunks = (16, 16, 16)
    occ = rng.random(ChunkGrid(g.shape, chunks).counts) < 0.15
    cg = ChunkGrid(g.shape, chunks)
    brute = [any(occ[c] for c in cg.touching(*g.region(i))) for i in range(g.n_patches)]
    assert nonempty_patches(g, occ, chunks).tolist() == brute


@pytest.mark.parametrize("origin,shape", [((0, 0, 0), (50, 70, 90)), ((5, 13, 21), (30, 40, 33)),
                                          ((0, 0, 0), (20, 30, 30))])
def test_chunks_touched_equals_brute_force(origin, shape):
    vol, chunks = (60, 90, 120), (16, 16, 32)
    grid = PatchGrid(shape, (24, 32, 32), 0.5, origin=origin)
    cgrid = ChunkGrid(vol, chunks)
    rng = np.random.default_rng(sum(shape))
    sel = rng.random(grid.n_patches) < 0.3
    expect = np.zeros(cgrid.counts, bool)
    for i in np.flatnonzero(sel):
        for idx in cgrid.touching(*grid.region(int(i))):
            expect[idx] = True
    assert np.array_equal(chunks_touched(grid, sel, chunks, cgrid.counts), expect)
    assert not chunks_touched(grid, np.zeros(grid.n_patches, bool), chunks, cgrid.counts).any()
