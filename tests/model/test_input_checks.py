"""Mistakes a user makes that finish silently unless checked: an input on another intensity scale than
the model was trained on, and a finalize mode the model cannot serve, found only after predict."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_cli
from vesuvius_inference.demo.run import MODEL_DIR
from vesuvius_inference.demo.synthetic import make_scroll, write_zarr

_cli = run_cli  # in-process


@pytest.fixture(scope="module")
def scrolls(tmp_path_factory):
    """The same synthetic scroll as the model's uint8 training data, as uint16 and as float in [0, 1]."""
    tmp = tmp_path_factory.mktemp("scales")
    vol, _ = make_scroll((32, 64, 64), seed=77)
    return {"uint8": write_zarr(vol, str(tmp / "u8.zarr")),
            "uint16": write_zarr(vol.astype(np.uint16) * 257, str(tmp / "u16.zarr")),
            "float": write_zarr(vol.astype(np.float32) / 255, str(tmp / "f32.zarr"))}


def _predict(inp, out, *extra):
    return _cli("predict", "--model_path", MODEL_DIR, "--input_dir", inp, "--output_dir", out, "--device", "cpu",
                "--disable_tta", *extra)


@pytest.mark.parametrize("kind", ["uint16", "float"])
def test_input_on_another_intensity_scale_is_named_and_can_be_refused(scrolls, tmp_path, kind):
    r = _predict(scrolls[kind], tmp_path / "parts", "--intensity_check", "error")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 3 and last.startswith("error: the input's intensities do not match"), r.stderr
    assert "[72, 199]" in last and "--intensity_check warn" in last  # the model's range, from its plans
    assert not (tmp_path / "parts").exists()  # refused before any work
    r = _predict(scrolls[kind], tmp_path / "warned", "--quiet", "--intensity_check", "warn")  # auto would refuse
    assert r.returncode == 0 and sum("intensities do not match" in ln for ln in r.stderr.splitlines()) == 1


def test_input_on_the_training_scale_passes_silently(scrolls, tmp_path):
    r = _predict(scrolls["uint8"], tmp_path / "parts", "--intensity_check", "error", "--quiet")
    assert r.returncode == 0 and "intensities" not in r.stderr, r.stderr


def test_a_mode_the_model_cannot_serve_is_refused_before_predict(scrolls, tmp_path, model_factory):
    three = model_factory(patch=(16, 32, 32), folds=(0,), num_classes=3, normalization="CTNormalization")
    r = _cli("pipeline", "--input", scrolls["uint8"], "--output", tmp_path / "out.zarr", "--model", three,
             "--mode", "binary", "--disable-tta")
    assert r.returncode == 3 and "binary mode needs 1 or 2" in r.stderr.strip().splitlines()[-1], r.stderr
    assert "== predict" not in r.stderr and not (tmp_path / "out.zarr_work").exists()
    r = _predict(scrolls["uint8"], tmp_path / "parts", "--model_path", three, "--final_output", tmp_path / "o.zarr",
                 "--mode", "binary")
    assert r.returncode == 3 and "use --mode multiclass" in r.stderr and not (tmp_path / "parts").exists()
