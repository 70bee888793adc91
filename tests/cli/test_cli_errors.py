"""Bad input: one clear line, a documented exit code, nothing left that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr

cli = run_cli  # in-process: the entry function, its exit code and stderr (test_missing_input keeps a real process)


def real_process(*args):
    """The console entry as its own interpreter: the exit status the OS sees, and nothing printed at exit."""
    return subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(r, code, *needles):
    assert r.returncode == code, (r.returncode, r.stderr)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) >= 1 and "Traceback" not in r.stderr, r.stderr
    last = err[-1]
    assert last.startswith("error:") or "error:" in last, r.stderr
    for n in needles:
        assert n in last, (n, last)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    return write_zarr(tmp / "in.zarr", smooth_volume((40, 48, 48), seed=1), chunks=(20, 24, 24)), tmp


def predict_args(model, inp, out, *extra):
    return ["predict", "--model_path", model, "--input_dir", inp, "--output_dir", out, "--device", "cpu",
            "--disable_tta", "--quiet", *extra]


def test_missing_input(tmp_path, model2):
    r = real_process(*predict_args(model2, tmp_path / "nope.zarr", tmp_path / "out"))
    assert_one_line_error(r, 3, "does not exist")
    assert not (tmp_path / "out").exists()


def test_wrong_ndim_and_dtype(tmp_path, model2):
    flat = zarr.create_array(str(tmp_path / "2d.zarr"), shape=(32, 32), dtype="uint8", zarr_format=3)
    flat[:] = 1
    assert_one_line_error(cli(*predict_args(model2, tmp_path / "2d.zarr", tmp_path / "o1")), 3, "2 dimensions")
    b = zarr.create_array(str(tmp_path / "b.zarr"), shape=(8, 8, 8), dtype="bool", zarr_format=3)
    b[:] = True
    assert_one_line_error(cli(*predict_args(model2, tmp_path / "b.zarr", tmp_path / "o2")), 3, "dtype")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_model_folder_without_plans_or_checkpoint(tmp_path, model2, good):
    inp, _ = good
    no_plans = tmp_path / "m1"
    shutil.copytree(model2, no_plans)
    (no_plans / "plans.json").unlink()
    assert_one_line_error(cli(*predict_args(no_plans, inp, tmp_path / "o")), 3, "plans.json")
    no_ckpt = tmp_path / "m2"
    shutil.copytree(model2, no_ckpt)
    for p in no_ckpt.glob("fold_*/*.pth"):
        p.unlink()
    assert_one_line_error(cli(*predict_args(no_ckpt, inp, tmp_path / "o")), 3, "checkpoint")
    assert not (tmp_path / "o").exists()


def test_unknown_normalization_scheme_is_named(tmp_path, model2, good):
    inp, _ = good
    odd = tmp_path / "m"
    shutil.copytree(model2, odd)
    plans = json.loads((odd / "plans.json").read_text())
    for conf in plans["configurations"].values():
        if "normalization_schemes" in conf:
            conf["normalization_schemes"] = ["FooNormalization"] * len(conf["normalization_schemes"])
    (odd / "plans.json").write_text(json.dumps(plans))
    assert_one_line_error(cli(*predict_args(odd, inp, tmp_path / "o")), 3, "FooNormalization", "CTNormalization")
    assert not list((tmp_path / "o").glob("part_*.json"))  # no marker: nothing that looks complete


def test_checkpoint_best_fallback_and_fold_choice(tmp_path, model_factory, good):
    inp, _ = good
    best = model_factory(folds=(0,), checkpoint="checkpoint_best.pth")
    assert cli(*predict_args(best, inp, tmp_path / "o")).returncode == 0
    r = cli(*predict_args(best, inp, tmp_path / "o2", "--folds", "3"))
    assert_one_line_error(r, 2, "fold 3")


def test_bad_arguments_exit_2(tmp_path, model2, good):
    inp, _ = good
    r = cli(*predict_args(model2, inp, tmp_path / "o", "--part_id", "2", "--num_parts", "2"))
    assert_one_line_error(r, 2, "--part_id 2")
    r = cli(*predict_args(model2, inp, tmp_path / "o", "--overlap", "1.0"))
    assert_one_line_error(r, 2, "--overlap")
    assert cli("predict", "--model_path", model2).returncode == 2  # argparse: missing required options
    assert_one_line_error(cli(*predict_args(model2, inp, tmp_path / "o", "--storage-options", "{bad")), 2, "JSON")
    assert not (tmp_path / "o").exists()
    out = tmp_path / "w" / "out.zarr"
    assert_one_line_error(cli("finalize", inp, out, "--also_delete", tmp_path / "w"), 2, "--delete_intermediates")
    assert_one_line_error(cli("finalize", inp, out, "--delete_intermediates", "--also_delete", tmp_path / "w"), 2,
                          "lies inside --also_delete")
    assert not (tmp_path / "w").exists()


def test_blend_incomplete_or_mismatched_parts(tmp_path, model2, good):
    inp, _ = good
    parts = tmp_path / "parts"
    assert cli(*predict_args(model2, inp, parts, "--num_parts", "2", "--part_id", "0")).returncode == 0
    r = cli("blend", parts, tmp_path / "b.zarr")
    assert_one_line_error(r, 3, "missing 1 of 2", "part 1")
    assert not (tmp_path / "b.zarr").exists()
    # part 1 predicted with another overlap: a mismatched set
    assert cli(*predict_args(model2, inp, tmp_path / "other", "--num_parts", "2", "--part_id", "1",
                             "--overlap", "0.25")).returncode == 0
    for f in (tmp_path / "other").iterdir():
        shutil.move(str(f), parts / f.name)
    r = cli("blend", parts, tmp_path / "b.zarr")
    assert_one_line_error(r, 3, "part 1", "overlap")
    assert not (tmp_path / "b.zarr").exists()


def test_existing_output_needs_overwrite(tmp_path, model2, good):
    inp, _ = good
    parts = tmp_path / "parts"
    assert cli(*predict_args(model2, inp, parts)).returncode == 0
    r = cli(*predict_args(model2, inp, parts, "--overlap", "0.25"))
    assert_one_line_error(r, 3, "--overwrite")
    assert json.loads((parts / "part_00000.json").read_text())["config"]["overlap"] == 0.5  # untouched
    assert cli("blend", parts, tmp_path / "b.zarr", "--quiet").returncode == 0
    # a finalize output from another run is not replaced without --overwrite
    assert cli("finalize", tmp_path / "b.zarr", tmp_path / "o.zarr", "--quiet").returncode == 0
    before = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:]
    r = cli("finalize", tmp_path / "b.zarr", tmp_path / "o.zarr", "--threshold")
    assert_one_line_error(r, 3, "--overwrite")
    assert np.array_equal(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:], before)
    assert cli("finalize", tmp_path / "b.zarr", tmp_path / "o.zarr", "--threshold", "--overwrite",
               "--quiet").returncode == 0
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:].max() <= 1


def test_both_flag_spellings_and_seed_entry_points():
    from vesuvius_inference.cli import parse

    a = parse("predict", ["--model-path", "m", "--input_dir", "i", "--output-dir", "o", "--part-id", "1",
                                     "--num_parts", "3", "--batch-size", "2", "--disable-tta",
                                     "--no-skip-empty-patches", "--patch-size", "64,64,64", "--cache-gb", "1"])
    assert (a.model_path, a.part_id, a.num_parts, a.batch_size, a.do_tta, a.skip_empty_patches,
            a.patch_size, a.cache_gb) == ("m", 1, 3, 2, False, False, (64, 64, 64), 1.0)
    b = parse("blend", ["p", "o", "--cache-gb", "2", "--sigma-scale", "8", "--chunk-size", "1,2,3"])
    assert (b.cache_gb, b.chunk_size) == (2.0, (1, 2, 3))
    f = parse("finalize", ["i", "o", "--delete_intermediates", "--cache_gb", "3", "--num-parts", "2"])
    assert f.delete_intermediates and f.num_parts == 2
    p = parse("pipeline", ["--input", "i", "--output", "o", "--model", "m", "--parts_per_gpu", "2",
                                      "--keep-intermediates", "--fuse_blend_finalize", "--skip-predict"])
    assert p.parts_per_gpu == 2 and p.keep_intermediates and p.fuse_blend_finalize and p.skip_predict
    for name in ("vesuvius.predict", "vesuvius.blend_logits", "vesuvius.blend_and_finalize", "vesuvius.finalize_outputs",
                 "vesuvius.inference_pipeline", "vesuvius-inference"):
        exe = shutil.which(name, path=os.path.dirname(sys.executable))  # the venv's bin, activated or not
        assert exe, f"console script {name} is not installed"
        assert subprocess.run([exe, "--help"], capture_output=True).returncode == 0


def test_model_path_messages_say_what_is_there(tmp_path, model2, good):
    inp, _ = good
    r = cli(*predict_args(tmp_path / "no-model", inp, tmp_path / "o"))
    assert_one_line_error(r, 3, "model folder", "does not exist")
    assert "bucket" not in r.stderr  # a local path has no bucket
    r = cli(*predict_args(model2 / "fold_0", inp, tmp_path / "o", "--folds", "1"))
    assert_one_line_error(r, 2, "fold 0 of the nnU-Net model folder", f"--model_path {model2}")
    assert not (tmp_path / "o").exists()


def test_a_fold_folder_is_used_through_its_parent_and_auto_takes_the_cpu(tmp_path, model2, good):
    import torch

    inp, _ = good
    args = [a if a != "cpu" else "auto" for a in predict_args(model2 / "fold_1", inp, tmp_path / "o")]
    r = cli(*args)  # --device auto: a GPU if one is visible, else the CPU, saying so
    assert r.returncode == 0, r.stderr
    notes = [x for x in r.stderr.splitlines() if "fold 1 of the nnU-Net model folder" in x]
    assert len(notes) == 1 and "--folds 1" in notes[0], r.stderr
    assert json.loads((tmp_path / "o" / "part_00000.json").read_text())["config"]["folds"] == ["1"]
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible: running on the CPU" in r.stderr, r.stderr


def test_bbox_errors_name_the_axis_and_the_level(tmp_path, model2):
    from ngff.fixtures import write_scroll_input

    scroll = write_scroll_input(tmp_path / "scroll.zarr", shape=(32, 64, 64), n_levels=2).path
    r = cli(*predict_args(model2, scroll, tmp_path / "o", "--level", "1", "--bbox", "0:8,0:40,0:8"))
    assert_one_line_error(r, 2, "--bbox y range '0:40'", "level 1", "32,32")
    r = cli(*predict_args(model2, scroll / "1", tmp_path / "o", "--bbox", "4:4,0:8,0:8"))
    assert_one_line_error(r, 2, "--bbox z range '4:4' is empty", f"level 1 of {scroll}", "16,32,32")
    assert not (tmp_path / "o").exists()
