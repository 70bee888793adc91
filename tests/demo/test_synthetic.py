"""The synthetic scroll: deterministic, scroll-shaped, with absent air chunks once written to Zarr."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from vesuvius_inference.demo.synthetic import dice, make_scroll, scroll_radius, write_zarr

DEFAULT = (96, 160, 160)


@pytest.fixture(scope="module")
def scroll() -> tuple[np.ndarray, np.ndarray]:
    return make_scroll(DEFAULT, seed=0)


def test_same_seed_same_bytes_other_seed_differs():
    a, la = make_scroll((32, 64, 64), seed=7)
    b, lb = make_scroll((32, 64, 64), seed=7)
    c, lc = make_scroll((32, 64, 64), seed=8)
    assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    assert a.tobytes() != c.tobytes() and la.tobytes() != lc.tobytes()


def test_types_shape_and_label_values(scroll):
    vol, lab = scroll
    assert vol.shape == lab.shape == DEFAULT
    assert vol.dtype == np.uint8 and lab.dtype == np.uint8
    assert set(np.unique(lab)) == {0, 1}


def test_intensities_look_like_ct_of_papyrus_in_air(scroll):
    vol, lab = scroll
    paper = vol[lab > 0].astype(np.float64)
    inner_air = vol[(lab == 0) & (vol > 0)].astype(np.float64)
    assert 110 < np.median(paper) < 200
    assert np.median(inner_air) < 25
    assert paper.mean() > 4 * inner_air.mean()
    assert paper.std() > 10  # texture and noise, not a flat mask


def test_foreground_fraction_in_a_sane_range():
    for shape, seed in [(DEFAULT, 0), (DEFAULT, 1234), ((64, 128, 128), 5), ((32, 64, 64), 3)]:
        _, lab = make_scroll(shape, seed=seed)
        assert 0.04 < lab.mean() < 0.3, (shape, seed, lab.mean())


def test_sheets_are_thin_and_wrapped(scroll):
    """A ray from the middle crosses several separate sheets, each a few voxels thick."""
    _, lab = scroll
    z, c = DEFAULT[0] // 2, DEFAULT[1] // 2
    ray = lab[z, c, c:].astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], ray, [0]])))
    runs, gaps = edges[1::2] - edges[::2], edges[2::2] - edges[1:-1:2]
    assert len(runs) >= 4
    assert runs.max() <= 8 and np.median(runs) >= 2
    assert np.median(gaps) >= 3  # air between the wraps


def test_outer_margin_is_exactly_zero_and_inside_is_not(scroll):
    vol, _ = scroll
    z, y, x = np.ogrid[: DEFAULT[0], : DEFAULT[1], : DEFAULT[2]]
    r = np.sqrt((y - DEFAULT[1] / 2) ** 2 + (x - DEFAULT[2] / 2) ** 2)
    wobble = 3.0 * np.sqrt(2)  # the axis drifts up to 3 voxels in Y and in X
    assert (vol[np.broadcast_to(r > scroll_radius(DEFAULT) + wobble + 1, DEFAULT)] == 0).all()
    for side in (vol[:, :4], vol[:, -4:], vol[:, :, :4], vol[:, :, -4:]):
        assert not side.any()
    inside = vol[np.broadcast_to(r < scroll_radius(DEFAULT) - wobble - 1, DEFAULT)]
    assert (inside == 0).mean() < 0.1  # air inside the scroll is low but mostly not 0


def test_write_zarr_leaves_exactly_the_all_zero_chunks_absent(scroll, tmp_path):
    vol, _ = scroll
    chunks = (32, 64, 64)
    path = write_zarr(vol, str(tmp_path / "scroll.zarr"), chunks=chunks)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    ms = group.attrs["ome"]["multiscales"][0]  # an OME-Zarr image with the scans' voxel size
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [7.91] * 3
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    arr = group[ms["datasets"][0]["path"]]
    assert arr.shape == vol.shape and arr.dtype == np.uint8 and arr.chunks == chunks
    assert arr.metadata.dimension_names == ("z", "y", "x")
    np.testing.assert_array_equal(arr[...], vol)
    stored = {tuple(int(i) for i in k.split("/")[1:]) for k in _chunk_keys(tmp_path / "scroll.zarr" / "0")}
    grid = [range(-(-s // c)) for s, c in zip(vol.shape, chunks)]
    expect = {idx for idx in itertools.product(*grid)
              if vol[tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))].any()}
    assert stored == expect
    assert 0 < len(stored) < int(np.prod([len(g) for g in grid]))  # the air corners are absent


def _chunk_keys(root) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "zarr.json"]


def test_small_shapes_still_have_a_zero_margin():
    vol, lab = make_scroll((16, 40, 40), seed=1)
    assert vol.shape == (16, 40, 40) and lab.any()
    assert not vol[:, :, :4].any() and not vol[:, -4:].any()


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError):
        make_scroll((4, 64, 64))
    with pytest.raises(ValueError):
        make_scroll((64, 64))


def test_dice():
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    assert dice(a, b) == 1.0  # both empty
    a[0] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0
    b[0, :2] = True
    assert dice(a, b) == pytest.approx(2 * 8 / (16 + 8))
    assert dice(a.astype(np.uint8) * 255, b.astype(np.uint8)) == pytest.approx(2 / 3)
