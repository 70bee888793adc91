"""The main job: the demo pipeline on the bundled model reaches the Dice bar."""

from __future__ import annotations

import numpy as np
import zarr
from helpers import run_cli
from vesuvius_inference.demo.synthetic import dice, make_scroll


def test_synthetic_scroll_is_deterministic_and_has_absent_air():
    a, la = make_scroll((32, 64, 64), seed=3)
    b, lb = make_scroll((32, 64, 64), seed=3)
    c, _ = make_scroll((32, 64, 64), seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert 0.05 < la.mean() < 0.5
    assert a[la > 0].mean() > 3 * a[(la == 0) & (a > 0)].mean()  # papyrus brighter than air in the scroll
    assert (a[:, :, :4] == 0).all()  # the outer margin is exactly air


def test_demo_command_reaches_dice(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--output_dir", out, "--shape", "64,128,128", "--quiet")  # in-process
    assert r.returncode == 0, r.stderr
    line = [x for x in r.stdout.splitlines() if x.startswith("Dice")][0]
    reported = float(line.split()[4])
    for stage in ("predict", "blend", "finalize"):
        assert any(x.startswith(stage) for x in r.stdout.splitlines())
    prob = zarr.open_group(str(out / "prediction.zarr"), mode="r")["0"][0]
    truth = np.load(out / "ground_truth.npy")
    assert abs(dice(prob >= 128, truth > 0) - reported) < 1e-3
    assert reported >= 0.9
    png = (out / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (out / "work").exists()
