"""Frames wherever the user points: an input given as an array inside an OME-Zarr group (``scroll.zarr/1``,
an InferenceJob's ``arrayPath``) has that level's scale, translation and units, read from the enclosing
group's multiscales, for NGFF 0.4 on Zarr v2 and 0.5 on Zarr v3; with no frame anywhere, one warning
line says the output will be in voxel units. (That the output then lies on the scan in neuroglancer is
tests/ngff/test_outputs.py.)"""

from __future__ import annotations

import logging

import pytest
from helpers import smooth_volume, write_zarr
from ngff.fixtures import write_ngff05, write_scroll_input
from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store.volume import open_volume


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frames")
    v2 = write_scroll_input(tmp / "v2.zarr", shape=(16, 32, 32), n_levels=2)
    v3 = write_ngff05(tmp / "v3.zarr", v2.levels, v2.scales[0], v2.translations[0])
    return {"0.4": v2.path, "0.5": tmp / "v3.zarr", "scroll": v2, "v3": v3}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_array_of_a_group_has_its_levels_frame(groups, version):
    group = groups[version]
    scroll = groups["scroll"]
    for level in (0, 1):
        as_array = open_volume(Place(str(group / str(level))))
        as_level = open_volume(Place(str(group)), level=level)
        assert as_array.frame == as_level.frame
        assert as_array.frame.scale == pytest.approx(scroll.scales[level])
        assert as_array.frame.translation == pytest.approx(scroll.translations[level])
        assert as_array.frame.units == ("micrometer",) * 3
        assert as_array.where == f"level {level} of {group}"
        assert as_array.zarr_format == (2 if version == "0.4" else 3)
    with pytest.raises(BadArguments, match=f"already level 1 of {group}"):
        open_volume(Place(str(group / "1")), level=1)


def test_no_frame_anywhere_is_one_warning_line(tmp_path, caplog):
    path = write_zarr(tmp_path / "bare.zarr", smooth_volume((8, 16, 16), seed=1), chunks=(8, 16, 16))
    with caplog.at_level(logging.WARNING, logger="vesuvius_inference"):
        for _ in range(2):  # opened again by the same process: still one line
            volume = open_volume(Place(path))
    assert volume.frame.scale == (1.0, 1.0, 1.0) and volume.frame.units == (None, None, None)
    lines = [r.getMessage() for r in caplog.records if "voxel units" in r.getMessage()]
    assert len(lines) == 1 and path in lines[0], lines
