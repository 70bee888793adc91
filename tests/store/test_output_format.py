"""Outputs in the scan's format: OME-Zarr 0.4 on Zarr v2 next to a Zarr v2 input, 0.5 on Zarr v3 next to a
v3 one, ``--ngff_version`` to choose, ``--chunk_size`` for the output's chunks; on every route (fused
predict+blend, two-stage blend+finalize, the seed's blend_and_finalize). Validation by the NGFF
implementations is tests/ngff's; here: the bytes are the same whatever the format, and every place
that looks at an existing output (complete? same settings?) reads both formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.place import Place
from vesuvius_inference.predict.stage import run_predict
from vesuvius_inference.stages.blend import run_blend
from vesuvius_inference.stages.finalize import run_finalize
from vesuvius_inference.stages.finish import finish_from_blend
from vesuvius_inference.store.output import is_complete, written_config

SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory(patch=(16, 32, 32), folds=(0,), features=(2, 4, 8))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    vol = smooth_volume(SHAPE, seed=8)
    return {2: write_zarr(tmp / "v2.zarr", vol, chunks=(16, 32, 32), zarr_format=2),
            3: write_zarr(tmp / "v3.zarr", vol, chunks=(16, 32, 32), zarr_format=3)}


def predict_cfg(model, inp, parts, **kw) -> PredictConfig:
    return PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(parts), device="cpu", do_tta=False,
                         quiet=True, chunk_size=(8, 16, 16), **kw)


def predict_into(model, inp, parts, out, n=1, **kw):
    for p in range(n):
        run_predict(predict_cfg(model, inp, parts, part_id=p, num_parts=n, final_output=str(out), **kw))
    finish_from_blend(BlendConfig(parts_dir=str(parts), output=str(out), quiet=True))  # the blend command


def levels(path) -> list[np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    attrs = g.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    return [g[d["path"]][...] for d in ms["datasets"]]


def fmt(path) -> tuple[int, str]:
    """(Zarr format, NGFF version) as a reader finds them: 0.4 at the top of the attributes, 0.5 under ome."""
    g = zarr.open_group(str(path), mode="r")
    attrs = g.attrs.asdict()
    version = attrs["ome"]["version"] if "ome" in attrs else attrs["multiscales"][0]["version"]
    return g.metadata.zarr_format, version


def test_fused_outputs_follow_the_input_format_unless_told_and_hold_the_same_bytes(tmp_path, model, inputs):
    predict_into(model, inputs[2], tmp_path / "p2", tmp_path / "o2.zarr")
    predict_into(model, inputs[3], tmp_path / "p3", tmp_path / "o3.zarr")
    predict_into(model, inputs[2], tmp_path / "p25", tmp_path / "o25.zarr", ngff_version="0.5")
    assert fmt(tmp_path / "o2.zarr") == (2, "0.4")
    assert fmt(tmp_path / "o3.zarr") == (3, "0.5")
    assert fmt(tmp_path / "o25.zarr") == (3, "0.5")
    meta = json.loads((tmp_path / "o2.zarr" / "0" / ".zarray").read_text())
    assert meta["chunks"] == [1, 8, 16, 16] and meta["dimension_separator"] == "/"  # --chunk_size, the scans' keys
    a, b, c = levels(tmp_path / "o2.zarr"), levels(tmp_path / "o3.zarr"), levels(tmp_path / "o25.zarr")
    assert len(a) == len(b) == len(c) >= 2
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    # what is already there is read in either format: complete, and by which settings
    assert is_complete(Place(str(tmp_path / "o2.zarr")))["config"]["ngff"] == "0.4"
    assert written_config(Place(str(tmp_path / "o2.zarr")))["predict"]["input_zarr_format"] == 2
    # the same output asked for in the other format is another configuration: refused, not mixed
    with pytest.raises(BadInput, match=r"written with other settings .*--ngff_version \(the output.s format\) 0.4 -> 0.5"):
        run_predict(predict_cfg(model, inputs[2], tmp_path / "other", final_output=str(tmp_path / "o2.zarr"),
                                ngff_version="0.5"))
    assert fmt(tmp_path / "o2.zarr") == (2, "0.4")


def test_two_stage_finalize_follows_the_input_that_was_predicted(tmp_path, model, inputs):
    for p in range(2):  # the seed's layout: parts without an output
        run_predict(predict_cfg(model, inputs[2], tmp_path / "parts", part_id=p, num_parts=2))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / "blended.zarr"), quiet=True))
    assert zarr.open_array(str(tmp_path / "blended.zarr"), mode="r").metadata.zarr_format == 3  # intermediates
    run_finalize(FinalizeConfig(input_path=str(tmp_path / "blended.zarr"), output_path=str(tmp_path / "out.zarr"),
                                quiet=True))
    run_finalize(FinalizeConfig(input_path=str(tmp_path / "blended.zarr"), output_path=str(tmp_path / "out5.zarr"),
                                quiet=True, ngff_version="0.5"))
    assert fmt(tmp_path / "out.zarr") == (2, "0.4") and fmt(tmp_path / "out5.zarr") == (3, "0.5")
    for x, y in zip(levels(tmp_path / "out.zarr"), levels(tmp_path / "out5.zarr")):
        np.testing.assert_array_equal(x, y)
    # the seed's vesuvius.blend_and_finalize: the same parts straight to the final output, binary by default
    r = run_cli("blend_and_finalize", tmp_path / "parts", tmp_path / "fused.zarr", "--quiet")
    assert r.returncode == 0, r.stderr
    assert fmt(tmp_path / "fused.zarr") == (2, "0.4")
    for x, y in zip(levels(tmp_path / "fused.zarr"), levels(tmp_path / "out.zarr")):
        np.testing.assert_array_equal(x, y)


def test_blend_and_finalize_refuses_parts_that_wrote_blended_logits(tmp_path, model, inputs):
    run_predict(predict_cfg(model, inputs[3], tmp_path / "parts", blended_output=str(tmp_path / "b.zarr")))
    r = run_cli("blend_and_finalize", tmp_path / "parts", tmp_path / "out.zarr")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "vesuvius.finalize_outputs" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.zarr").exists()
