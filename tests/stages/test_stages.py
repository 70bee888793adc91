"""Stage behaviour with a real model: resume, skip-empty, finalize modes, fused path, APIs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
from vesuvius_inference.predict.stage import Inferer, run_predict
from vesuvius_inference.stages.blend import run_blend
from vesuvius_inference.stages.finalize import finalize_chunk, run_finalize
from vesuvius_inference.stages.finish import finish_from_blend

SHAPE = (64, 96, 96)


def predict_all(model, inp, parts_dir, n, **kw):
    for p in range(n):
        run_predict(PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(parts_dir), part_id=p, num_parts=n, device="cpu",
                                  do_tta=False, quiet=True, **kw))


def blended(path):
    return zarr.open_array(str(path), mode="r")[:]


@pytest.fixture(scope="module")
def vol_path(volume_factory):
    return volume_factory(SHAPE, seed=5, chunks=(32, 32, 32))


@pytest.fixture(scope="module")
def reference(reference_run, model2, vol_path):
    """One part with the default cache (conftest.reference_run, shared with whoever asks for the same run)."""
    return reference_run(model2, vol_path, chunk_size=(16, 32, 32))


def test_one_vs_five_parts_identical_final_bytes(tmp_path, model2, vol_path, reference):
    n = 5
    predict_all(model2, vol_path, tmp_path / f"p{n}", n, chunk_size=(16, 32, 32))
    run_blend(BlendConfig(parts_dir=str(tmp_path / f"p{n}"), output=str(tmp_path / f"b{n}.zarr"), quiet=True))
    run_finalize(FinalizeConfig(input_path=str(tmp_path / f"b{n}.zarr"), output_path=str(tmp_path / f"o{n}.zarr"), quiet=True))
    assert np.array_equal(reference.output, zarr.open_group(str(tmp_path / f"o{n}.zarr"), mode="r")["0"][:])
    assert np.array_equal(reference.blended, blended(tmp_path / "b5.zarr"), equal_nan=True)


def test_tiny_cache_spills_and_gives_same_bytes(tmp_path, model2, vol_path, reference):
    """A cache smaller than one chunk forces evictions; write-back must not change a bit (against the
    default cache's run: 1 part, byte-identical to 2 by test_one_vs_five_parts_identical_final_bytes)."""
    predict_all(model2, vol_path, tmp_path / "tiny", 2, chunk_size=(16, 32, 32), cache_gb=1e-6)
    marker = __import__("json").loads((tmp_path / "tiny" / "part_00000.json").read_text())
    assert marker["evictions"] > 0
    run_blend(BlendConfig(parts_dir=str(tmp_path / "tiny"), output=str(tmp_path / "tiny.zarr"), quiet=True))
    assert np.array_equal(reference.blended, blended(tmp_path / "tiny.zarr"), equal_nan=True)


_cli = run_cli  # in-process; the run that is killed is a real process

def test_killed_part_rerun_gives_identical_bytes_and_finished_part_does_no_work(tmp_path, model2):
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((96, 96, 96), seed=9), chunks=(32, 32, 32))
    common = ["--model_path", str(model2), "--input_dir", vol, "--device", "cpu", "--disable_tta",
              "--chunk_size", "16,32,32", "--quiet"]
    # clean reference
    assert _cli("predict", *common, "--output_dir", str(tmp_path / "clean")).returncode == 0
    # killed mid-way: wait until chunks are being written, then SIGKILL
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vesuvius_inference.cli", "predict", *common, "--output_dir",
                             str(killed), "--cache_gb", "0.000001"])
    deadline = time.time() + 120
    written = lambda: list((killed / "part_00000").glob("*/*/c/*/*/*/*"))  # noqa: E731
    while time.time() < deadline and not written() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "predict finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert written() and not (killed / "part_00000.json").exists()
    # an incomplete part is not blendable
    r = _cli("blend", str(killed), str(tmp_path / "nope.zarr"))
    assert r.returncode == 3 and "run predict" in r.stderr
    assert _cli("predict", *common, "--output_dir", str(killed)).returncode == 0
    for d in ("clean", "killed"):
        assert _cli("blend", str(tmp_path / d), str(tmp_path / f"{d}.zarr"), "--quiet").returncode == 0
    assert np.array_equal(blended(tmp_path / "clean.zarr"), blended(tmp_path / "killed.zarr"), equal_nan=True)
    # re-running a complete part: exit 0, says so, touches nothing
    files = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    r = _cli("predict", *common[:-1], "--output_dir", str(killed))
    assert r.returncode == 0 and "already complete" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == files


def test_skip_empty_same_output_outside_and_fewer_model_calls(tmp_path, model2):
    data = smooth_volume(SHAPE, seed=11)
    data[:, :, 48:] = 0  # an empty half: absent chunks in x >= 64, zeros in 48..63
    vol = write_zarr(tmp_path / "in.zarr", data, chunks=(32, 32, 32))
    assert not (tmp_path / "in.zarr" / "c" / "0" / "0" / "2").exists()  # truly absent chunks
    predict_all(model2, vol, tmp_path / "skip", 2, chunk_size=(16, 32, 32), skip_empty_patches=True)
    predict_all(model2, vol, tmp_path / "all", 2, chunk_size=(16, 32, 32), skip_empty_patches=False)
    runs = {}
    for d in ("skip", "all"):
        import json
        runs[d] = sum(json.loads((tmp_path / d / f"part_0000{i}.json").read_text())["patches"]["run"] for i in (0, 1))
        run_blend(BlendConfig(parts_dir=str(tmp_path / d), output=str(tmp_path / f"b_{d}.zarr"), quiet=True))
        run_finalize(FinalizeConfig(input_path=str(tmp_path / f"b_{d}.zarr"), output_path=str(tmp_path / f"o_{d}.zarr"), quiet=True))
    assert runs["skip"] < runs["all"]
    # voxels that no skipped patch covers are identical
    from vesuvius_inference.geometry.grid import PatchGrid
    grid = PatchGrid(SHAPE, (80, 48, 48), 0.5)
    covered_by_skipped = np.zeros(SHAPE, dtype=bool)
    for i in range(grid.n_patches):
        lo, hi = grid.region(i)
        region = data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if region.min() == region.max():
            covered_by_skipped[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    assert covered_by_skipped.any() and not covered_by_skipped.all()
    b_skip, b_all = blended(tmp_path / "b_skip.zarr"), blended(tmp_path / "b_all.zarr")
    assert np.array_equal(b_skip[:, ~covered_by_skipped], b_all[:, ~covered_by_skipped])
    o_skip = zarr.open_group(str(tmp_path / "o_skip.zarr"), mode="r")["0"][:]
    o_all = zarr.open_group(str(tmp_path / "o_all.zarr"), mode="r")["0"][:]
    assert np.array_equal(o_skip[:, ~covered_by_skipped], o_all[:, ~covered_by_skipped])
    # never-predicted voxels are NaN logits and 0 in the output
    only_skipped = np.isnan(b_skip[0])
    assert only_skipped.any() and (o_skip[0][only_skipped] == 0).all()


def test_finalize_chunk_modes_use_one_global_scale():
    logits = np.zeros((2, 4, 4, 4), dtype=np.float16)
    logits[1] = 2.0  # p(fg) = 0.881 everywhere: an all-foreground chunk
    probs = finalize_chunk(logits, "binary", False)
    assert probs.shape == (1, 4, 4, 4) and (probs == round(255 / (1 + np.exp(-2.0)))).all()  # not rescaled to 255
    assert (finalize_chunk(logits, "binary", True) == 1).all()  # all-foreground mask is kept, not dropped
    one = np.full((1, 2, 2, 2), -1.0, dtype=np.float16)
    assert (finalize_chunk(one, "binary", False) == round(255 / (1 + np.e))).all()
    assert (finalize_chunk(one, "binary", True) == 0).all()
    three = np.zeros((3, 2, 2, 2), dtype=np.float16)
    three[2] = 1.0
    p = finalize_chunk(three, "multiclass", False)
    e = np.exp([0.0, 0.0, 1.0])
    assert p.shape == (3, 2, 2, 2) and list(p[:, 0, 0, 0]) == [round(v) for v in e / e.sum() * 255]
    assert (finalize_chunk(three, "multiclass", True) == 2).all()
    nan = np.full((2, 2, 2, 2), np.nan, dtype=np.float16)
    assert (finalize_chunk(nan, "binary", False) == 0).all()


def test_multiclass_pipeline_and_fused_equals_two_stage(tmp_path, model_factory, vol_path):
    model3 = model_factory(folds=(0,), num_classes=3)
    predict_all(model3, vol_path, tmp_path / "parts", 2, chunk_size=(32, 32, 32))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / "b.zarr"), quiet=True))
    logits = blended(tmp_path / "b.zarr").astype(np.float64)
    e = np.exp(logits - logits.max(axis=0))
    expected = np.rint(e / e.sum(axis=0) * 255).astype(np.uint8)
    for thr in (False, True):
        run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / f"o{thr}.zarr"), mode="multiclass",
                                    threshold=thr, quiet=True))
        finish_from_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / f"f{thr}.zarr"),
                                      mode="multiclass", threshold=thr, quiet=True))
        two = zarr.open_group(str(tmp_path / f"o{thr}.zarr"), mode="r")["0"][:]
        fused = zarr.open_group(str(tmp_path / f"f{thr}.zarr"), mode="r")["0"][:]
        assert np.array_equal(two, fused)
        if thr:
            assert two.ndim == 3 and np.array_equal(two, np.argmax(logits, axis=0))  # a label image: no channel axis
        else:
            assert np.abs(two.astype(int) - expected.astype(int)).max() <= 1
    with pytest.raises(Exception, match="multiclass"):
        run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "bin.zarr"), mode="binary", quiet=True))


def test_output_is_ome_zarr_only_once_complete(tmp_path, model2, vol_path):
    predict_all(model2, vol_path, tmp_path / "parts", 1)
    run_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / "b.zarr"), num_parts=2, part_id=0, quiet=True))
    b = zarr.open_array(str(tmp_path / "b.zarr"), mode="r")
    assert b.attrs["vesuvius"]["complete"] is False  # half of a split blend does not look complete
    with pytest.raises(Exception, match="incomplete"):
        run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "o.zarr"), quiet=True))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "parts"), output=str(tmp_path / "b.zarr"), num_parts=2, part_id=1, quiet=True))
    assert zarr.open_array(str(tmp_path / "b.zarr"), mode="r").attrs["vesuvius"]["complete"] is True
    run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "o.zarr"), num_parts=2, part_id=1, quiet=True))
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert "ome" not in g.attrs
    run_finalize(FinalizeConfig(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "o.zarr"), num_parts=2, part_id=0,
                                delete_intermediates=True, quiet=True))
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    assert g.attrs["ome"]["version"] == "0.5" and [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert g[ms["datasets"][0]["path"]].shape == (1,) + SHAPE
    assert not (tmp_path / "b.zarr").exists()  # deleted only after the output completed


def test_seed_python_api(tmp_path, model2, vol_path):
    from vesuvius_inference import finalize_logits, merge_inference_outputs

    inf = Inferer(model_path=str(model2), input_dir=vol_path, output_dir=str(tmp_path / "parts"), device="cpu",
                  skip_empty_patches=True, batch_size=2, do_tta=False, num_parts=1, part_id=0)
    store, marker = inf.infer()
    assert Path(marker).exists() and Path(store).is_dir()
    asyncio.run(merge_inference_outputs(parent_dir=str(tmp_path / "parts"), output_path=str(tmp_path / "b.zarr"),
                                        cache_pool_gb=1, sigma_scale=8.0))
    asyncio.run(finalize_logits(input_path=str(tmp_path / "b.zarr"), output_path=str(tmp_path / "o.zarr"),
                                mode="binary", threshold=True, cache_pool_gb=1))
    mask = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:]
    logits = blended(tmp_path / "b.zarr")
    assert np.array_equal(mask, (logits[1] > logits[0]).astype(np.uint8))
    with pytest.raises(Exception, match="part_id"):
        Inferer(model_path=str(model2), input_dir=vol_path, output_dir=str(tmp_path / "x"), num_parts=2,
                part_id=2).infer()


def test_bbox_is_the_crop_in_the_volumes_frame(tmp_path, model_factory):
    model = model_factory(folds=(0,), normalization="CTNormalization")  # pointwise: the crop normalizes alike
    data = smooth_volume((64, 96, 96), seed=21)
    vol = write_zarr(tmp_path / "in.zarr", data, chunks=(16, 32, 32))
    z0, z1, y0, y1, x0, x1 = 10, 50, 20, 90, 5, 70
    crop = write_zarr(tmp_path / "crop.zarr", np.ascontiguousarray(data[z0:z1, y0:y1, x0:x1]), chunks=(16, 32, 32))
    for p in range(2):
        run_predict(PredictConfig(model_path=str(model), input_dir=vol, output_dir=str(tmp_path / "roi"), part_id=p, num_parts=2, device="cpu",
                                  do_tta=False, quiet=True, chunk_size=(16, 16, 16), bbox=f"{z0}:{z1},{y0}:{y1},{x0}:{x1}"))
    run_predict(PredictConfig(model_path=str(model), input_dir=crop, output_dir=str(tmp_path / "crop"), device="cpu", do_tta=False, quiet=True,
                              chunk_size=(16, 16, 16)))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "roi"), output=str(tmp_path / "roi.zarr"), quiet=True))
    run_blend(BlendConfig(parts_dir=str(tmp_path / "crop"), output=str(tmp_path / "crop_b.zarr"), quiet=True))
    roi = blended(tmp_path / "roi.zarr")
    assert roi.shape[1:] == data.shape  # the volume's frame
    assert np.array_equal(roi[:, z0:z1, y0:y1, x0:x1], blended(tmp_path / "crop_b.zarr"))
    outside = np.ones(data.shape, dtype=bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert np.isnan(roi[:, outside]).all()
    stored = {p.relative_to(tmp_path / "roi.zarr" / "c" / "0").parts for p in (tmp_path / "roi.zarr" / "c").rglob("*")
              if p.is_file()}
    assert stored and all(int(z) * 16 < z1 and (int(z) + 1) * 16 > z0 for z, _, _ in stored)
    with pytest.raises(Exception, match="bbox"):
        run_predict(PredictConfig(model_path=str(model), input_dir=vol, output_dir=str(tmp_path / "bad"), device="cpu", bbox="0:10,0:10", quiet=True))


def test_written_into_the_output_1_5_8_parts_give_identical_bytes_at_every_level(tmp_path, model_factory):
    """Parts write their rows straight into the final output, blend the seams, finalize the pyramid."""
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((192, 48, 48), seed=17), chunks=(16, 32, 32))
    outs = {}
    for n in (1, 5, 8):
        out = tmp_path / f"o{n}.zarr"
        for p in range(n):
            run_predict(PredictConfig(model_path=str(model), input_dir=vol, output_dir=str(tmp_path / f"p{n}"), part_id=p, num_parts=n, device="cpu",
                                      do_tta=False, quiet=True, chunk_size=(16, 16, 16), final_output=str(out)))
        finish_from_blend(BlendConfig(parts_dir=str(tmp_path / f"p{n}"), output=str(out), quiet=True))
        g = zarr.open_group(str(out), mode="r")
        outs[n] = [g[d["path"]][:] for d in g.attrs["ome"]["multiscales"][0]["datasets"]]
        markers = [__import__("json").loads((tmp_path / f"p{n}" / f"part_{p:05d}.json").read_text()) for p in range(n)]
        if n == 5:  # rows one part alone covers were written by that part
            assert sum(len(m["written"]) for m in markers) > 0
    assert len(outs[1]) >= 3
    for n in (5, 8):
        assert all(np.array_equal(a, b) for a, b in zip(outs[1], outs[n])), f"{n} parts changed the output"
