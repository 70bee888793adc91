"""The patch grid and the Gaussian importance map, ported to numpy, are nnU-Net's own (issue 26).

nnU-Net's versions import torch; blend, finalize and plan used to load it (1.7 s, 281 MB per process)
only to place patches. The ports are held equal to nnU-Net's functions here, and a blend and a
finalize process are held free of torch and nnunetv2.
"""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import smooth_volume, write_zarr
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from vesuvius_inference.geometry.fixedpoint import WEIGHT_BITS, WEIGHT_SCALE, gaussian_q
from vesuvius_inference.geometry.grid import nnunet_steps


def test_patch_starts_equal_nnunets_on_random_geometries():
    rng = random.Random(26)
    for _ in range(5000):
        tile = tuple(rng.randint(1, 256) for _ in range(3))
        image = tuple(max(t, rng.randint(1, 2000)) for t in tile)
        step = rng.choice([0.5, 0.75, 1.0, 0.25, rng.uniform(0.01, 1.0)])
        assert nnunet_steps(image, tile, step) == compute_steps_for_sliding_window(image, tile, step), (image, tile, step)


@pytest.mark.parametrize("patch", [(80, 48, 48), (16, 32, 32), (128, 128, 128), (192, 192, 192), (48, 160, 224),
                                   (7, 9, 11), (1, 5, 3), (33, 17, 65), (112, 112, 112)])
def test_gaussian_map_equals_nnunets(patch):
    g = compute_gaussian.__wrapped__(patch, sigma_scale=1.0 / 8, value_scaling_factor=WEIGHT_SCALE,
                                     dtype=torch.float16, device=torch.device("cpu"))
    expected = torch.round(g.double() * 2.0 ** WEIGHT_BITS).long().numpy()
    assert np.array_equal(gaussian_q(patch), expected)


PROBE = """
import sys
from vesuvius_inference import cli
code = cli.main(sys.argv[1:])
print("CODE", code, "torch" in sys.modules, "nnunetv2" in sys.modules)
"""


def test_blend_and_finalize_processes_load_neither_torch_nor_nnunet(tmp_path, model_factory):
    model = model_factory(patch=(16, 32, 32), folds=(0,))
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((40, 48, 48), seed=2), chunks=(20, 24, 24))
    out, parts = tmp_path / "out.zarr", tmp_path / "parts"
    for p in (0, 1):
        r = subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "predict", "--model_path", model,
                            "--input_dir", vol, "--output_dir", parts, "--part_id", str(p), "--num_parts", "2",
                            "--device", "cpu", "--disable_tta", "--final_output", out, "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    for argv in (["blend", parts, out, "--seams_only", "--quiet"],
                 ["finalize", parts, out, "--input_kind", "parts", "--quiet"]):
        r = subprocess.run([sys.executable, "-c", PROBE, *map(str, argv)], capture_output=True, text=True, timeout=300)
        assert r.stdout.split() == ["CODE", "0", "False", "False"], (argv, r.stdout, r.stderr)
