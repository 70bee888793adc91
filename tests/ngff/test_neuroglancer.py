"""tools/neuroglancer_overlay.py renders input and prediction together in neuroglancer (headless
Chromium) and the prediction lands on the input's papyrus; misplaced predictions do not.

The input is the public-scan layout (OME-Zarr 0.4, Zarr v2, zarr://); the predictions are NGFF 0.5
on Zarr v3 (zarr3://) with dimension_names, built by hand from the fixture's papyrus labels.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ngff.fixtures import pyramid, write_ngff05

TOOL = Path(__file__).resolve().parents[2] / "tools" / "neuroglancer_overlay.py"


def _tool():
    spec = importlib.util.spec_from_file_location("neuroglancer_overlay", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _overlay(inp: Path, out: Path, png: Path) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, str(TOOL), str(inp), str(out), "--png", str(png), "--timeout", "90"],
                          capture_output=True, text=True, timeout=150)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, (json.loads(lines[-1]) if proc.returncode == 0 else None), proc.stderr


@pytest.fixture(scope="module")
def chromium():
    problem = _tool().chromium_missing()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="module")
def predictions(scroll, tmp_path_factory):
    d = tmp_path_factory.mktemp("predictions")
    pred = pyramid((scroll.labels * 255).astype(np.uint8), 3, "nearest")
    s0, t0 = scroll.scales[0], scroll.translations[0]
    write_ngff05(d / "right.zarr", pred, s0, t0)  # the input's transforms
    write_ngff05(d / "unit_scale.zarr", pred, [1.0, 1.0, 1.0], None, units=None)  # what finalize writes today
    write_ngff05(d / "no_offset.zarr", pred, s0, None)  # the voxel size but not the position
    return d


def test_prediction_lands_on_the_papyrus(chromium, scroll, predictions, tmp_path):
    png = tmp_path / "overlay.png"
    rc, facts, err = _overlay(scroll.path, predictions / "right.zarr", png)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and facts["size"] == [1200, 900]
    assert facts["input_source"].startswith("zarr://http://127.0.0.1:")
    assert facts["output_source"].startswith("zarr3://http://127.0.0.1:")
    # The input rendered (the fixture opens in neuroglancer) and the prediction lies on its papyrus.
    assert facts["input_pixels"] > 0.05 * facts["pixels"]
    assert facts["prediction_on_input"] > 0.6 * facts["input_pixels"]
    assert facts["prediction_off_input"] < 0.02 * facts["prediction_pixels"]


@pytest.mark.parametrize("name", ["unit_scale", "no_offset"])
def test_misplaced_predictions_miss_the_papyrus(chromium, scroll, predictions, tmp_path, name):
    rc, facts, err = _overlay(scroll.path, predictions / f"{name}.zarr", tmp_path / f"{name}.png")
    assert rc == 0, err
    assert facts["input_pixels"] > 0.05 * facts["pixels"]  # the input is there ...
    assert facts["prediction_on_input"] < 0.01 * facts["input_pixels"]  # ... and the prediction is not on it


def test_float16_outputs_are_refused_with_one_line(scroll, tmp_path):
    """neuroglancer cannot read float16 Zarr arrays; the tool says so before starting a browser."""
    write_ngff05(tmp_path / "f16.zarr", [scroll.labels.astype(np.float16)], scroll.scales[0], scroll.translations[0])
    rc, _, err = _overlay(scroll.path, tmp_path / "f16.zarr", tmp_path / "f16.png")
    assert rc == 3
    assert err.strip().count("\n") == 0 and "float16" in err and not (tmp_path / "f16.png").exists()
