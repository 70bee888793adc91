"""``plan`` says what it planned and where each number comes from: the level, the voxel size of the
OME-Zarr frame, the region; the channel check predict makes at start (same exit, same line, before any
GPU is booked); GPU-hours from --throughput or a named measured default, never a bare "0.0"; bytes to
read uncompressed and compressed (the store's own sizes, or a sample of them, said so); a warning with
a part count whose intermediates stay under half the logits, which planned again has no warning."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from helpers import smooth_volume, write_zarr
from ngff.fixtures import VOXEL_UM, write_scroll_input
from vesuvius_inference.cli import main
from vesuvius_inference.stages import plan as planmod
from vesuvius_inference.stages.throughput import REFERENCE_PASSES_PER_S, forward_flops


@pytest.fixture(scope="module")
def scroll(tmp_path_factory):
    return write_scroll_input(tmp_path_factory.mktemp("plan") / "scroll.zarr", shape=(64, 128, 128), n_levels=2)


@pytest.fixture(scope="module")
def model(model_factory):
    return model_factory(patch=(48, 48, 48), folds=(0,), features=(2, 4, 8))


def plan(capsys, *args) -> tuple[int, str, str]:
    rc = main(["plan", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def plan_json(capsys, *args) -> dict:
    rc, out, err = plan(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_plan_names_the_level_voxel_size_and_region_it_planned(scroll, model, capsys):
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model, "--level", "1")
    assert rc == 0
    assert "level 1 of the input, 32 x 64 x 64" in out
    assert re.search(rf"voxel {2 * VOXEL_UM:g} x {2 * VOXEL_UM:g} x {2 * VOXEL_UM:g} micrometer \(z,y,x\)", out), out
    assert "whole level 1 of the input" in out
    p = plan_json(capsys, "--input", scroll.path, "--model", model, "--bbox", "8:40,0:100,20:128")
    assert p["input"]["level"] == 0 and p["input"]["voxel_size"] == pytest.approx([VOXEL_UM] * 3)
    assert p["input"]["units"] == ["micrometer"] * 3
    assert p["region"] == {"bbox": "8:40,0:100,20:128", "whole": False, "lo": [8, 0, 20], "hi": [40, 100, 128],
                           "voxels": 32 * 100 * 108}
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model, "--bbox", "8:40,0:100,20:128")
    assert "--bbox 8:40,0:100,20:128 of level 0 of the input (64 x 128 x 128)" in out


def test_a_plain_array_has_no_voxel_size_and_plan_says_so(tmp_path, model, capsys):
    inp = write_zarr(tmp_path / "in.zarr", smooth_volume((48, 64, 64), seed=1), chunks=(16, 32, 32))
    rc, out, _ = plan(capsys, "--input", inp, "--model", model)
    assert rc == 0 and "voxel size unknown (no OME-Zarr multiscales: voxel units)" in out


def test_a_channel_mismatch_is_refused_by_plan_as_predict_refuses_it(scroll, model_factory, tmp_path, capsys):
    two = model_factory(patch=(48, 48, 48), folds=(0,), features=(2, 4, 8), channels=2)
    rc, out, err = plan(capsys, "--input", scroll.path, "--model", two)
    assert rc == 3 and out == ""
    line = f"error: the model expects 2 input channel(s), but {scroll.path} has 1"
    assert line in err
    rc = main(["predict", "--input", str(scroll.path), "--model", str(two), "--output_dir", str(tmp_path / "parts"),
               "--device", "cpu", "--disable_tta", "--quiet"])
    _, perr = capsys.readouterr()
    assert rc == 3 and line in perr  # the same words, and the same exit, as predict at start
    ok = plan_json(capsys, "--input", scroll.path, "--model", model_factory(patch=(48, 48, 48), folds=(0,),
                                                                             features=(2, 4, 8)))
    assert ok["channels"] == {"input": 1, "model": 1, "match": True}


def test_gpu_hours_come_from_a_named_default_or_the_given_throughput(scroll, model, capsys):
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model)
    line = next(x for x in out.splitlines() if x.startswith("estimate"))
    assert "0.0 GPU-hours" not in out and "pass --throughput to use yours" in line
    assert "A100" in line and "measured" in line and "passes/s per GPU" in line
    p = plan_json(capsys, "--input", scroll.path, "--model", model)
    assert p["gpu"]["source"] == "default" and 0 < p["gpu"]["hours"] == p["gpu_hours"]
    assert p["gpu"]["hours"] == pytest.approx(p["model"]["passes"] / p["gpu"]["passes_per_s"] / 3600)
    given = plan_json(capsys, "--input", scroll.path, "--model", model, "--throughput", "0.5")
    assert given["gpu"]["source"] == "given" and given["gpu"]["passes_per_s"] == 0.5
    assert given["gpu"]["hours"] == pytest.approx(given["model"]["passes"] / 0.5 / 3600)
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model, "--throughput", "0.5")
    assert "GPU-hours" in out and "(--throughput)" in out
    rc, out, err = plan(capsys, "--input", scroll.path, "--model", model, "--throughput", "0")
    assert rc == 2 and "error: --throughput is model passes per second per GPU, > 0; got 0.0" in err


def test_the_default_throughput_is_the_reference_at_the_reference_network(model_factory):
    """The measured default applies unchanged to the network it was measured on (the default 3d_fullres
    at 128^3), and the FLOPs plan counts for a network are what torch counts for it."""
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch.utils.flop_counter import FlopCounterMode
    from vesuvius_inference.model.nnunet_folder import make_plans
    from vesuvius_inference.stages.throughput import default_rate

    conf = make_plans((128, 128, 128), (32, 64, 128, 256, 320, 320))["configurations"]["3d_fullres"]
    assert default_rate(conf, (128, 128, 128), 1, 2).passes_per_s == pytest.approx(REFERENCE_PASSES_PER_S, rel=0.03)
    conf = make_plans((32, 48, 40), (4, 8, 16, 32))["configurations"]["3d_fullres"]
    kw = conf["architecture"]["arch_kwargs"]
    net = PlainConvUNet(1, kw["n_stages"], kw["features_per_stage"], torch.nn.Conv3d, kw["kernel_sizes"],
                        kw["strides"], kw["n_conv_per_stage"], 3, kw["n_conv_per_stage_decoder"], conv_bias=True,
                        norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU, deep_supervision=False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 1, 32, 48, 40))
    assert forward_flops(conf, (32, 48, 40), 1, 3) == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_bytes_to_read_are_labelled_and_compressed_sizes_come_from_the_store(scroll, model, capsys, monkeypatch):
    p = plan_json(capsys, "--input", scroll.path, "--model", model)
    b = p["bytes"]
    on_disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(scroll.path / "0") for f in fs
                  if not f.startswith("."))
    assert b["read_compressed_exact"] and b["read_compressed"] == on_disk  # every chunk is read: all their sizes
    assert b["read_uncompressed"] == b["read"] == 64 * 128 * 128 and b["read_compressed"] < b["read"]
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model)
    line = next(x for x in out.splitlines() if x.startswith("read"))
    assert "uncompressed" in line and f"compressed (the stored sizes of all {b['read_chunks']} chunks)" in line
    monkeypatch.setattr(planmod, "SIZE_EXACT_LIMIT", 4)
    monkeypatch.setattr(planmod, "SIZE_SAMPLE", 3)
    p = plan_json(capsys, "--input", scroll.path, "--model", model)
    assert not p["bytes"]["read_compressed_exact"] and p["bytes"]["read_compressed_measured_chunks"] == 3
    every = sorted(np.ndindex(2, 4, 4))  # the 32 chunks, in the order plan lists them; it measures 3 spread evenly
    picked = [every[i] for i in np.linspace(0, len(every) - 1, 3).round().astype(int)]
    sizes = [os.path.getsize(scroll.path / "0" / "/".join(map(str, idx))) for idx in picked]
    assert p["bytes"]["read_compressed"] == round(sum(sizes) * len(every) / 3)
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model)
    assert f"compressed (estimated from the stored sizes of 3 of the {b['read_chunks']} chunks)" in out


def test_too_many_parts_warn_with_a_count_that_keeps_intermediates_under_half(scroll, model, capsys):
    p = plan_json(capsys, "--input", scroll.path, "--model", model, "--num_parts", "6")
    assert p["seams"]["ratio_to_logits"] > planmod.INTERMEDIATE_LIMIT and len(p["warnings"]) == 1
    better = p["suggestion"]
    assert 1 <= better["num_parts"] < 6 and f"--num_parts {better['num_parts']}" in p["warnings"][0]
    again = plan_json(capsys, "--input", scroll.path, "--model", model, "--num_parts", better["num_parts"],
                      "--partition", better["partition"])
    assert again["seams"]["ratio_to_logits"] <= planmod.INTERMEDIATE_LIMIT and not again["warnings"]
    rc, out, _ = plan(capsys, "--input", scroll.path, "--model", model, "--num_parts", "6")
    assert "warning: 6 parts" in out and np.isfinite(p["seams"]["ratio_to_logits"])
