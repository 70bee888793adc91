"""The checks pass correct NGFF 0.5 outputs and fail wrong ones, each with its implementation's words.

Outputs here are built by hand (fixtures.write_ngff05) on the scroll input's grid: right ones,
and ones with one thing wrong each, which is what makes a pass meaningful.
"""

from __future__ import annotations

import copy
import json
from importlib.metadata import version

import numpy as np
import pytest

from ngff.checks import (
    NGFFCheckError,
    assert_overlays,
    assert_same_world_frame,
    box_contains,
    box_from_transform,
    napari_layers,
    ngff_zarr_world_boxes,
    side_checks,
    validate_ngff_zarr,
    validate_ome_zarr_models,
)
from ngff.fixtures import add_labels_group, pyramid, write_ngff05

LABEL = {"version": "0.5", "colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]}],
         "properties": [{"label-value": 1, "class": "papyrus"}]}


def _prediction(scroll, level: int = 0) -> np.ndarray:
    """A perfect 'prediction' on the input's grid at ``level``: 255 on the papyrus sheets."""
    mask = (scroll.labels * 255).astype(np.uint8)
    return pyramid(mask, level + 1, "nearest")[level]


def _edit_ome(path, mutate) -> None:
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    ome = copy.deepcopy(meta["attributes"]["ome"])
    mutate(ome["multiscales"][0])
    meta["attributes"]["ome"] = ome
    meta_file.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def outputs(scroll, tmp_path_factory):
    """Good and bad outputs, by name; each bad one differs from 'good' in one respect."""
    d = tmp_path_factory.mktemp("outputs")
    pred = pyramid(_prediction(scroll), 3, "nearest")
    s0, t0 = scroll.scales[0], scroll.translations[0]
    out = {}

    def image(name, levels=pred, **kw):
        write_ngff05(d / name, levels, kw.pop("scale", s0), kw.pop("translation", t0), **kw)
        out[name] = d / name
        return d / name

    image("good")
    image("no_dimension_names", dimension_names=False)
    p = image("dimension_names_unlike_axes")
    meta = json.loads((p / "0" / "zarr.json").read_text())
    meta["dimension_names"] = ["x", "y", "z"]
    (p / "0" / "zarr.json").write_text(json.dumps(meta))
    _edit_ome(image("no_axes"), lambda ms: ms.pop("axes"))
    _edit_ome(image("translation_before_scale"),
              lambda ms: ms["datasets"][0].__setitem__("coordinateTransformations",
                                                        ms["datasets"][0]["coordinateTransformations"][::-1]))
    _edit_ome(image("coarse_level_first"), lambda ms: ms.__setitem__("datasets", ms["datasets"][::-1]))
    p = image("no_version")
    meta = json.loads((p / "zarr.json").read_text())
    del meta["attributes"]["ome"]["version"]
    (p / "zarr.json").write_text(json.dumps(meta))
    # Labels: an image with a labels group, and one whose label is float (NGFF: integers only).
    p = image("with_labels")
    write_ngff05(p / "labels" / "papyrus", [lv // 255 for lv in pred], s0, t0, image_label=LABEL)
    add_labels_group(p, ["papyrus"])
    out["labels_group"], out["label_image"] = p / "labels", p / "labels" / "papyrus"
    p = image("float_labels")
    write_ngff05(p / "labels" / "papyrus", [(lv // 255).astype(np.float32) for lv in pred], s0, t0,
                 image_label=LABEL)
    add_labels_group(p, ["papyrus"])
    image("label_without_value", levels=[lv // 255 for lv in pred],
          image_label={"version": "0.5", "colors": [{"rgba": [255, 0, 0, 255]}]})
    return out


def test_ome_zarr_models_passes_good_outputs_and_names_what_is_wrong(outputs):
    names = list(outputs)
    results = dict(zip(names, side_checks([outputs[n] for n in names])))
    models = {n: r["ome_zarr_models"] for n, r in results.items()}
    assert models["good"]["model"] == "v05.Image"
    assert models["with_labels"]["model"] == "v05.Image"  # its labels are validated with it
    assert models["labels_group"]["model"] == "v05.Labels"
    assert models["label_image"]["model"] == "v05.ImageLabel"
    expected_errors = {
        "no_dimension_names": "has no dimension_names metadata",
        "dimension_names_unlike_axes": "does not match the dimension names",
        "no_axes": "axes",
        "translation_before_scale": "coordinateTransformations",
        "coarse_level_first": "lower resolution",
        "no_version": "version",
        "float_labels": "Data type of labels",
        "label_without_value": "label-value",
    }
    for name, words in expected_errors.items():
        assert not models[name]["ok"], f"ome-zarr-models accepted {name}"
        assert words in models[name]["error"], (name, models[name]["error"])
    # ome-zarr-py (the reader behind `ome_zarr info`) reads every good one.
    for name in ("good", "with_labels", "label_image"):
        assert results[name]["ome_zarr_py"]["ok"], results[name]["ome_zarr_py"]["error"]
    specs = [n["specs"] for n in results["with_labels"]["ome_zarr_py"]["nodes"]]
    assert specs == [["Multiscales"], ["Labels"], ["Label", "Multiscales"]]


def test_validate_ome_zarr_models_raises_with_the_validators_message(outputs):
    assert validate_ome_zarr_models(outputs["good"]) == "v05.Image"
    with pytest.raises(NGFFCheckError, match="ome-zarr-models rejects .*no dimension_names metadata"):
        validate_ome_zarr_models(outputs["no_dimension_names"])


def test_ngff_zarr_passes_good_outputs_and_rejects_schema_violations(outputs):
    for name in ("good", "with_labels", "label_image"):
        validate_ngff_zarr(outputs[name])
    expected_errors = {
        "no_axes": "'axes' is a required property",
        "translation_before_scale": "a translation must follow its scale",
        "coarse_level_first": "ordered finest to coarsest",
        "label_without_value": "'label-value' is a required property",
    }
    for name, words in expected_errors.items():
        with pytest.raises(NGFFCheckError, match="ngff-zarr rejects") as e:
            validate_ngff_zarr(outputs[name])
        assert words in str(e.value), (name, str(e.value))
    # Why both validators: ngff-zarr checks the JSON schemas, which say nothing about the arrays'
    # dimension_names (a MUST of NGFF 0.5), and it reads a missing ome.version as 0.5.
    validate_ngff_zarr(outputs["no_dimension_names"])
    validate_ngff_zarr(outputs["no_version"])


def test_napari_opens_labels_as_labels_and_probabilities_with_their_channels(scroll, outputs, tmp_path):
    layers = napari_layers(outputs["with_labels"])
    assert [la.kind for la in layers] == ["image", "labels"]
    img, lab = layers
    assert lab.dtype == "uint8" and lab.level_shapes == img.level_shapes
    assert lab.colormap[1] == [1.0, 0.0, 0.0, 1.0]  # the image-label colour
    assert lab.features["class"] == ["papyrus"] and lab.features["index"] == [1]
    # Two-class probabilities (c, z, y, x) with omero channel names and a 0-255 window.
    pred = _prediction(scroll)
    probs = np.stack([255 - pred, pred])
    omero = {"channels": [{"label": name, "color": color, "active": True,
                           "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                          for name, color in (("background", "0000FF"), ("papyrus", "FF0000"))],
             "rdefs": {"model": "color"}}
    write_ngff05(tmp_path / "probs.zarr", pyramid(probs, 2), scroll.scales[0], scroll.translations[0],
                 omero=omero, name="probabilities")
    layers = napari_layers(tmp_path / "probs.zarr")
    assert [la.name for la in layers] == ["probabilities: background", "probabilities: papyrus"]
    assert [la.colormap for la in layers] == ["blue", "red"]
    assert all(la.kind == "image" and la.contrast_limits == (0.0, 255.0) for la in layers)
    assert all(la.level_shapes[0] == pred.shape for la in layers)
    assert_same_world_frame(layers[0], layers[1])


@pytest.mark.parametrize("level", [0, 1])
def test_world_frame_is_shared_when_the_output_copies_the_inputs_transforms(scroll, tmp_path, level):
    # An output computed at --level N carries level N's scale and translation at its own level 0.
    write_ngff05(tmp_path / "out.zarr", pyramid(_prediction(scroll, level), 2, "nearest"),
                 scroll.scales[level], scroll.translations[level])
    assert_same_world_frame(ngff_zarr_world_boxes(scroll.path)[0], ngff_zarr_world_boxes(tmp_path / "out.zarr")[0])
    (inp,), (out,) = napari_layers(scroll.path), napari_layers(tmp_path / "out.zarr")
    # napari-ome-zarr 0.10 drops translations (see below), so level 1's half-voxel shift is lost too:
    # there the boxes agree to half an output voxel only.
    assert_same_world_frame(inp, out, atol=None if level == 0 else scroll.scales[level][0] / 2)


def test_world_frame_check_fails_on_the_unit_scale_finalize_writes_today(scroll, tmp_path):
    write_ngff05(tmp_path / "unit.zarr", pyramid(_prediction(scroll), 1), [1.0, 1.0, 1.0], None, units=None)
    (inp,), (out,) = napari_layers(scroll.path), napari_layers(tmp_path / "unit.zarr")
    with pytest.raises(NGFFCheckError, match=r"not one world frame.*size ratio \[7\.91 7\.91 7\.91\]"):
        assert_same_world_frame(inp, out)
    with pytest.raises(NGFFCheckError, match="not one world frame"):
        assert_same_world_frame(ngff_zarr_world_boxes(scroll.path)[0], ngff_zarr_world_boxes(tmp_path / "unit.zarr")[0])


def test_a_wrong_translation_is_caught_by_ngff_zarr_and_not_by_napari_ome_zarr_0_10(scroll, tmp_path):
    """napari-ome-zarr 0.10 (the last release for Python 3.11) takes only the first of a dataset's
    coordinateTransformations (ome_zarr_reader.py, Multiscales.metadata: ``ds_transforms[0]``):
    the scale; every translation is dropped. So the napari check sees scale errors only, and a
    wrong or missing offset must be caught from the metadata (ngff-zarr, ome-zarr-py) and in
    neuroglancer, which does apply translations."""
    write_ngff05(tmp_path / "shifted.zarr", pyramid(_prediction(scroll), 1), scroll.scales[0], None)
    with pytest.raises(NGFFCheckError, match="offset"):
        assert_same_world_frame(ngff_zarr_world_boxes(scroll.path)[0], ngff_zarr_world_boxes(tmp_path / "shifted.zarr")[0])
    (inp,), (out,) = napari_layers(scroll.path), napari_layers(tmp_path / "shifted.zarr")
    untranslated = box_from_transform(scroll.levels[0].shape, scroll.scales[0], [0, 0, 0])
    if version("napari-ome-zarr").startswith("0.10."):
        assert_same_world_frame(inp, out)  # both drawn at the origin: napari cannot tell
        assert_same_world_frame(inp, untranslated)
    else:  # a reader that applies translations must see the offset
        with pytest.raises(NGFFCheckError):
            assert_same_world_frame(inp, out)


def test_box_contains_a_bbox_output_and_not_a_shifted_one(scroll):
    s, t = np.array(scroll.scales[0]), np.array(scroll.translations[0])
    inp = box_from_transform(scroll.levels[0].shape, s, t)
    crop = box_from_transform((16, 32, 32), s, t + s * np.array([8, 40, 50]))  # --bbox 8:24,40:72,50:82
    assert box_contains(inp, crop)
    assert not box_contains(inp, box_from_transform((16, 32, 32), s, t + s * np.array([8, 40, 110])))


def test_assert_overlays_passes_outputs_in_the_inputs_frame_and_fails_the_rest(scroll, outputs, tmp_path):
    assert_overlays(outputs["good"], scroll.path)
    assert_overlays(outputs["with_labels"], scroll.path)  # image and labels layers alike
    write_ngff05(tmp_path / "lv1.zarr", [_prediction(scroll, 1)], scroll.scales[1], scroll.translations[1])
    assert_overlays(tmp_path / "lv1.zarr", scroll.path, input_level=1)
    with pytest.raises(NGFFCheckError, match="scale"):
        assert_overlays(tmp_path / "lv1.zarr", scroll.path, input_level=0)
    s, t = np.array(scroll.scales[0]), np.array(scroll.translations[0])
    crop = _prediction(scroll)[8:24, 40:72, 50:82]
    write_ngff05(tmp_path / "crop.zarr", [crop], s, t + s * np.array([8, 40, 50]))
    assert_overlays(tmp_path / "crop.zarr", scroll.path, bbox=True)
    with pytest.raises(NGFFCheckError, match="not one world frame"):
        assert_overlays(tmp_path / "crop.zarr", scroll.path)
    write_ngff05(tmp_path / "crop_lost.zarr", [crop], s, t + s * np.array([8, 40, 110]))
    with pytest.raises(NGFFCheckError, match="not within"):
        assert_overlays(tmp_path / "crop_lost.zarr", scroll.path, bbox=True)
    write_ngff05(tmp_path / "unit.zarr", [_prediction(scroll)], [1.0, 1.0, 1.0], None, units=None)
    with pytest.raises(NGFFCheckError, match="axes"):
        assert_overlays(tmp_path / "unit.zarr", scroll.path)
    write_ngff05(tmp_path / "nm.zarr", [_prediction(scroll)], s, t, units="nanometer")
    with pytest.raises(NGFFCheckError, match="nanometer"):
        assert_overlays(tmp_path / "nm.zarr", scroll.path)
