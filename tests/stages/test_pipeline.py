"""The local pipeline as users run it: the seed's command, one process, parts on the CPU."""

from __future__ import annotations

import sys

import numpy as np
import zarr
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
from vesuvius_inference.predict.stage import run_predict
from vesuvius_inference.stages.blend import run_blend
from vesuvius_inference.stages.finalize import run_finalize


def test_pipeline_cli_matches_stages_and_cleans_up(tmp_path, model2):
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((48, 80, 80), seed=2), chunks=(24, 40, 40))
    out = tmp_path / "out.zarr"
    r = run_cli("pipeline", "--input", vol, "--output", out, "--model", model2, "--gpus", "all", "--parts-per-gpu", "3",
                "--disable-tta", "--threshold")  # in-process; its parts are its own worker processes
    assert r.returncode == 0, r.stderr
    assert "no CUDA GPU found" in r.stderr
    for stage in ("predict", "blend", "finalize"):
        assert f"== {stage} done in" in r.stderr
    assert not (tmp_path / "out.zarr_work").exists()  # intermediates removed by default
    for p in range(3):
        run_predict(PredictConfig(model_path=str(model2), input_dir=vol, output_dir=str(tmp_path / "parts"), part_id=p, num_parts=3, device="cpu",
                                  do_tta=False, quiet=True))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / "b.zarr"), quiet=True))
    run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "o.zarr"), threshold=True, quiet=True))
    assert np.array_equal(zarr.open_group(str(out), mode="r")["0"][:],
                          zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:])


def test_run_pipeline_api_fused_keep_intermediates_and_exit_codes(tmp_path, model2, monkeypatch):
    from vesuvius_inference import run_pipeline

    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((40, 64, 64), seed=4), chunks=(20, 32, 32))
    work = tmp_path / "work"
    monkeypatch.setattr(sys, "argv", ["vesuvius.inference_pipeline", "--input", vol, "--output",
                                      str(tmp_path / "o.zarr"), "--model", str(model2), "--workdir", str(work),
                                      "--disable-tta", "--fuse-blend-finalize", "--keep-intermediates", "--quiet"])
    assert run_pipeline() == 0
    assert (work / "parts" / "part_00000.json").exists() and not (work / "blended.zarr").exists()
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert g.attrs["vesuvius"]["complete"] and "ome" in g.attrs
    monkeypatch.setattr(sys, "argv", ["vesuvius.inference_pipeline", "--input", str(tmp_path / "missing.zarr"),
                                      "--output", str(tmp_path / "x.zarr"), "--model", str(model2)])
    assert run_pipeline() == 3
