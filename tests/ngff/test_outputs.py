"""Our outputs, checked by implementations we did not write (issues 9 and 18).

A scroll stored as the public scans are (OME-Zarr 0.4 on Zarr v2, 7.91 um voxels, an offset, levels
0..2) goes through the pipeline in every output kind - probabilities, a mask, multiclass
probabilities, argmax labels - fused and two-stage, whole and ``--bbox``, from level 0 and level 1
(as ``--level 1`` and as the array ``scroll.zarr/1``), and once more stored as OME-Zarr 0.5 on Zarr v3.
Outputs take the scan's format (0.4 on Zarr v2 next to it, 0.5 on v3 next to a v3 scan) unless
``--ngff_version`` says otherwise. Each output must validate with ome-zarr-models (the version it
claims) and ngff-zarr, read in ome-zarr-py and napari, a 0.4 one also in zarr-python 2.x, and lie on
its input in one world frame; its pyramid must be the 2x reduction of its level 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import tool
from vesuvius_inference.contract.config import PipelineConfig
from vesuvius_inference.demo.run import MODEL_DIR
from vesuvius_inference.stages.pipeline import run_local_pipeline

from ngff.checks import assert_overlays, napari_layers, ome_attrs, side_checks, validate_ngff_zarr, zarr2_read
from ngff.fixtures import write_ngff05

TOOL = Path(__file__).resolve().parents[2] / "tools" / "neuroglancer_overlay.py"
BBOX = "8:56,20:110,12:100"

# name: (model, mode, threshold, fused, bbox, input level, input, --ngff_version, the output's version)
# input: "group" (scroll.zarr with --level), "array" (scroll.zarr/<level>, the level's own array), "v3" (the
# same scroll as OME-Zarr 0.5 on Zarr v3)
CASES = {
    "probabilities": ("demo", "binary", False, True, None, 0, "group", "auto", "0.4"),
    "mask-bbox": ("demo", "binary", True, False, BBOX, 0, "group", "auto", "0.4"),
    "probabilities-level1": ("demo", "binary", False, False, None, 1, "group", "auto", "0.4"),
    "mask-array-level1": ("demo", "binary", True, True, None, 1, "array", "auto", "0.4"),
    "multiclass-probabilities": ("three", "multiclass", False, True, None, 0, "group", "0.5", "0.5"),
    "labels-bbox-level1": ("three", "multiclass", True, True, "4:28,10:50,0:60", 1, "group", "auto", "0.4"),
    "probabilities-v3-input": ("demo", "binary", False, True, None, 0, "v3", "auto", "0.5"),
}


@pytest.fixture(scope="module")
def scroll_v3(scroll, tmp_path_factory) -> Path:
    """The fixture scroll again, as OME-Zarr 0.5 on Zarr v3 (what the demo and newer scans use)."""
    path = tmp_path_factory.mktemp("v3") / "scroll.zarr"
    write_ngff05(path, scroll.levels, scroll.scales[0], scroll.translations[0])
    return path


def input_of(case: tuple, scroll, scroll_v3) -> tuple[str, int]:
    """(the input path, --level) of a case."""
    level, kind = case[5], case[6]
    if kind == "array":
        return str(scroll.path / str(level)), 0
    return str(scroll_v3 if kind == "v3" else scroll.path), level


@pytest.fixture(scope="module")
def outputs(scroll, scroll_v3, tmp_path_factory, model_factory):
    root = tmp_path_factory.mktemp("outputs")
    models = {"demo": MODEL_DIR,
              "three": model_factory(patch=(16, 32, 32), folds=(0,), num_classes=3, normalization="CTNormalization")}
    made = {}
    for name, case in CASES.items():
        model, mode, threshold, fused, bbox, _, _, ngff, _ = case
        out = root / f"{name}.zarr"
        inp, level = input_of(case, scroll, scroll_v3)
        run_local_pipeline(PipelineConfig(input_dir=inp, output=str(out), model_path=str(models[model]),
                                          parts_per_gpu=2, do_tta=False, mode=mode, threshold=threshold,
                                          fuse_blend_finalize=fused, bbox=bbox, level=level, devices=("cpu",),
                                          quiet=True, batch_size=2, chunk_size=(16, 32, 32), ngff_version=ngff))
        made[name] = out
    return made


def ome(path) -> dict:
    return ome_attrs(zarr.open_group(str(path), mode="r").attrs.asdict())


def test_every_output_kind_is_valid_ngff_in_its_version_for_two_validators(outputs):
    results = side_checks(outputs.values(), version=None)  # the version the output claims
    for name, r in zip(outputs, results):
        version = CASES[name][8]
        attrs = zarr.open_group(str(outputs[name]), mode="r").attrs.asdict()
        assert ("ome" in attrs) == (version == "0.5"), (name, sorted(attrs))
        assert zarr.open_group(str(outputs[name]), mode="r").metadata.zarr_format == (2 if version == "0.4" else 3)
        models, reader = r["ome_zarr_models"], r["ome_zarr_py"]
        assert models["ok"], (name, models["error"])
        v = version.replace(".", "")
        assert models["model"] == (f"v{v}.ImageLabel" if CASES[name][2] else f"v{v}.Image"), name
        assert reader["ok"], (name, reader["error"])
        n_levels = len(ome(outputs[name])["multiscales"][0]["datasets"])
        # a label image's source.image is a real relative path, which ome-zarr-py follows: the scan comes
        # first among its nodes then, and the output's own node is the one read from the output's path
        own = [n for n in reader["nodes"] if str(outputs[name]) in n["path"]]
        assert own and len(own[0]["shapes"]) == n_levels, (name, reader["nodes"])
        if CASES[name][2] and CASES[name][6] == "group":  # a label image of a scan given as its group
            assert any("scroll.zarr" in n["path"] for n in reader["nodes"]), (name, reader["nodes"])
        validate_ngff_zarr(outputs[name])


def test_zarr_v2_era_reader_opens_the_04_outputs_with_the_same_bytes(outputs):
    """zarr-python 2.x reads a 0.4 output level by level as zarr 3 does; it cannot open a 0.5 (v3) one,
    which is why outputs next to a v2 scan are v2 by default."""
    import hashlib

    results = {r["path"]: r for r in zarr2_read(outputs.values())}
    for name, out in outputs.items():
        r = results[str(out)]
        if CASES[name][8] == "0.5":
            assert not r["ok"], (name, "zarr 2 opened a Zarr v3 output?")
            continue
        assert r["ok"] and r["zarr"].startswith("2."), (name, r["error"])
        assert r["multiscales"][0]["version"] == "0.4"
        g = zarr.open_group(str(out), mode="r")
        for level in r["levels"]:
            data = np.ascontiguousarray(g[level["path"]][...])
            assert level["shape"] == list(data.shape) and level["dtype"] == str(data.dtype), (name, level)
            assert level["sha256"] == hashlib.sha256(data.tobytes()).hexdigest(), (name, level["path"])


@pytest.mark.parametrize("name", list(CASES))
def test_output_lies_on_its_input_in_napari_and_in_the_metadata(outputs, scroll, name):
    level = CASES[name][5]
    assert_overlays(outputs[name], scroll.path, input_level=level, bbox=CASES[name][4] is not None)
    g = zarr.open_group(str(outputs[name]), mode="r")
    ms = ome(outputs[name])["multiscales"][0]
    ds0 = ms["datasets"][0]["coordinateTransformations"]
    assert ds0[0]["scale"][-3:] == pytest.approx(scroll.scales[level])
    assert ds0[1]["translation"][-3:] == pytest.approx(scroll.translations[level])
    assert [a["name"] for a in ms["axes"] if a["type"] == "space"] == ["z", "y", "x"]
    assert all(a.get("unit") == "micrometer" for a in ms["axes"] if a["type"] == "space")
    for path in (d["path"] for d in ms["datasets"]):
        if g[path].metadata.zarr_format == 3:  # Zarr v2 arrays have no dimension names: the axes say it
            assert g[path].metadata.dimension_names[-3:] == ("z", "y", "x")


def _reduce(block: np.ndarray, how: str) -> int:
    """The rule, written out for one 2x2x2 block: rounded mean, or the most frequent value (ties: higher)."""
    v = block.ravel().astype(int)
    if how == "mean":
        return (v.sum() + len(v) // 2) // len(v)
    counts = np.bincount(v)
    return int(np.flatnonzero(counts == counts.max()).max())


@pytest.mark.parametrize("name", ["probabilities", "labels-bbox-level1"])
def test_pyramid_levels_are_the_2x_reduction_of_the_level_below(outputs, name):
    g = zarr.open_group(str(outputs[name]), mode="r")
    paths = [d["path"] for d in ome(outputs[name])["multiscales"][0]["datasets"]]
    assert len(paths) >= 2
    shapes = [g[p].shape[-3:] for p in paths]
    # down to where every axis fits in one chunk, each level half the one below (rounded up)
    assert all(a == -(-b // 2) for lo, hi in zip(shapes, shapes[1:]) for a, b in zip(hi, lo))
    assert all(s <= c for s, c in zip(shapes[-1], g[paths[-1]].chunks[-3:]))
    assert any(s > c for s, c in zip(shapes[-2], g[paths[-2]].chunks[-3:]))
    labels = CASES[name][2]
    how = "mode" if labels else "mean"
    rng = np.random.default_rng(0)
    for k in (1, len(paths) - 1):
        below, here = g[paths[k - 1]][:], g[paths[k]][:]
        below = below if labels else below[0]
        here = here if labels else here[0]
        for _ in range(300):
            idx = tuple(int(rng.integers(0, s)) for s in here.shape)
            block = below[tuple(slice(2 * i, 2 * i + 2) for i in idx)]
            assert here[idx] == _reduce(block, how), (k, idx)


def test_labels_and_probabilities_say_what_they_are(outputs):
    names = json.loads((MODEL_DIR / "dataset.json").read_text())["labels"]
    mask = ome(outputs["mask-bbox"])
    props = {p["label-value"]: p["class"] for p in mask["image-label"]["properties"]}
    assert props == {v: k for k, v in names.items()}
    layers = napari_layers(outputs["mask-bbox"])
    assert [la.kind for la in layers] == ["labels"]
    probs = ome(outputs["probabilities"])["omero"]["channels"]
    fg = next(k for k, v in names.items() if v == 1)
    assert [c["label"] for c in probs] == [f"p({fg})"]
    assert probs[0]["window"] == {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}
    layer = napari_layers(outputs["probabilities"])[0]
    assert layer.kind == "image" and tuple(layer.contrast_limits) == (0.0, 255.0)
    three = zarr.open_group(str(outputs["multiclass-probabilities"]), mode="r")
    assert len(ome(outputs["multiclass-probabilities"])["omero"]["channels"]) == three["0"].shape[0] == 3


@pytest.mark.parametrize("name", ["mask-bbox", "mask-array-level1"])
def test_neuroglancer_shows_the_mask_on_the_papyrus(outputs, scroll, tmp_path, name):
    """Both are OME-Zarr 0.4 on Zarr v2 (neuroglancer's zarr://); the second was predicted from the array
    scroll.zarr/1, whose frame only the enclosing group's multiscales give (without it: 0 pixels on the scan)."""
    chromium_missing = tool("neuroglancer_overlay").chromium_missing

    if chromium_missing():
        pytest.skip(chromium_missing())
    png = tmp_path / "overlay.png"
    proc = subprocess.run([sys.executable, str(TOOL), str(scroll.path), str(outputs[name]), "--png", str(png),
                           "--timeout", "90"], capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["output_source"].startswith("zarr://")  # read as Zarr v2
    assert png.stat().st_size > 0
    assert facts["prediction_pixels"] > 0.2 * facts["input_pixels"]
    assert facts["prediction_off_input"] < 0.05 * facts["prediction_pixels"]


def test_the_overlay_tool_draws_probabilities_above_one_half_and_any_label(outputs):
    """Without --threshold a probability output would be drawn red wherever p > 0 (all of the volume)."""
    default_threshold = tool("neuroglancer_overlay").default_threshold

    assert default_threshold(outputs["probabilities"]) == 127.5
    assert default_threshold(outputs["multiclass-probabilities"]) == 127.5
    assert default_threshold(outputs["mask-bbox"]) == 0.0
    assert default_threshold(outputs["labels-bbox-level1"]) == 0.0
