"""The input fixture is stored as the public scans are, and the readers users have open it."""

from __future__ import annotations

import json

import numpy as np
import zarr

from ngff.checks import (
    NGFFCheckError,
    box_from_transform,
    napari_layers,
    ngff_zarr_world_boxes,
    ome_zarr_py_nodes,
    validate_ngff_zarr,
    validate_ome_zarr_models,
)
from ngff.fixtures import VOXEL_UM, downsample2


def test_input_is_stored_as_the_public_scans_are(scroll):
    root = scroll.path
    assert json.loads((root / ".zgroup").read_text())["zarr_format"] == 2
    ms = json.loads((root / ".zattrs").read_text())["multiscales"][0]
    assert ms["version"] == "0.4"
    assert ms["axes"] == [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    for k, ds in enumerate(ms["datasets"]):
        meta = json.loads((root / str(k) / ".zarray").read_text())
        assert meta["zarr_format"] == 2 and meta["dimension_separator"] == "/" and meta["dtype"] == "|u1"
        assert (meta["compressor"]["id"], meta["compressor"]["cname"]) == ("blosc", "zstd")
        assert meta["shape"] == [64 >> k, 128 >> k, 128 >> k]
        scale, translation = (t[t["type"]] for t in ds["coordinateTransformations"])
        assert scale == [round(VOXEL_UM * 2 ** k, 9)] * 3
        assert translation != [0, 0, 0]
    # Nested chunk keys ('/' separator): level 0's first chunk is the file 0/0/0/0.
    assert (root / "0" / "0" / "0" / "0").is_file()
    lv0 = zarr.open_array(str(root / "0"), mode="r")[...]
    np.testing.assert_array_equal(zarr.open_array(str(root / "1"), mode="r")[...], downsample2(lv0))
    # Papyrus is bright and air dark: the viewers' checks rely on telling them apart.
    assert lv0[scroll.labels == 1].mean() > 100 > 10 > np.median(lv0[scroll.labels == 0])


def test_every_level_covers_the_same_world_box(scroll):
    boxes = [box_from_transform(lv.shape, s, t) for lv, s, t in zip(scroll.levels, scroll.scales, scroll.translations)]
    for b in boxes[1:]:
        np.testing.assert_allclose(b, boxes[0], atol=1e-9)
    for got, want in zip(ngff_zarr_world_boxes(scroll.path), boxes):
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_input_opens_in_ome_zarr_py(scroll):
    (node,) = ome_zarr_py_nodes(scroll.path)
    assert node["specs"] == ["Multiscales"]
    assert node["shapes"] == [list(lv.shape) for lv in scroll.levels] and node["dtype"] == "uint8"
    assert node["coordinateTransformations"] == [
        [{"type": "scale", "scale": s}, {"type": "translation", "translation": t}]
        for s, t in zip(scroll.scales, scroll.translations)]


def test_input_is_valid_ngff_04_and_is_not_05(scroll):
    assert validate_ome_zarr_models(scroll.path, "0.4") == "v04.Image"
    ms = validate_ngff_zarr(scroll.path)
    assert [im.data.shape for im in ms.images] == [lv.shape for lv in scroll.levels]
    try:
        validate_ome_zarr_models(scroll.path)  # the default asks for 0.5, which every output must be
    except NGFFCheckError as e:
        assert "'ome'" in str(e)
    else:
        raise AssertionError("an OME-Zarr 0.4 store passed as 0.5")


def test_input_opens_in_napari(scroll):
    (layer,) = napari_layers(scroll.path)
    assert layer.kind == "image" and layer.dtype == "uint8"
    assert layer.level_shapes == [lv.shape for lv in scroll.levels]
    assert layer.scale == (VOXEL_UM,) * 3
    assert layer.axis_labels == ("z", "y", "x") and layer.units == ("micrometer",) * 3
