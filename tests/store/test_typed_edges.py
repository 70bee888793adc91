"""Edges the type checker found (mypy over the package, pyproject's [tool.mypy]):

- an OME-Zarr group whose chosen level is itself a group, not an array, is bad input with one clear line
  (it failed with ``AttributeError: 'Group' object has no attribute 'ndim'``);
- a value of one per spatial axis is exactly three (frame.triple): a wrong count fails where it is made,
  not later inside a zip that silently drops an axis.
"""

from __future__ import annotations

import pytest
import zarr
from vesuvius_inference.contract.errors import EXIT_BAD_INPUT, BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store.volume import open_volume


def test_a_level_that_is_a_group_is_bad_input(tmp_path):
    url = str(tmp_path / "scan.zarr")
    root = zarr.open_group(url, mode="w", zarr_format=3)
    root.create_array("0", shape=(8, 8, 8), chunks=(8, 8, 8), dtype="uint8")
    root.create_group("1")  # listed as level 1, but a group
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space"} for a in "zyx"],
        "datasets": [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": [s] * 3}]}
                     for p, s in (("0", 1.0), ("1", 2.0))]}]}
    assert open_volume(Place(url), level=0).shape == (8, 8, 8)
    with pytest.raises(BadInput) as e:
        open_volume(Place(url), level=1)
    assert e.value.exit_code == EXIT_BAD_INPUT
    assert str(e.value) == f"input {url}: level 1 (1) is a Zarr group, not an array"


def test_triple_takes_exactly_three():
    assert triple(int(v) for v in "123") == (1, 2, 3)
    for wrong in ([1, 2], [1, 2, 3, 4]):
        with pytest.raises(ValueError):
            triple(wrong)
