"""First-day mistakes found before the compute, with the right words (issue 23, points 3 and 4).

Each was found only after predicting every part, or with words that sent the user the wrong way:
odd chunk sizes and a --levels past the one-voxel level (found by finalize, or written as 1-voxel
levels far outside the volume), a negative --bbox start (argparse's "expected one argument"), a
device this torch does not run on (``mps``: exit 1 "please report it", a claim left behind), an
input that exists but is not a Zarr store ("does not exist"), a local folder this user cannot write
("check the bucket policy"), and finalize given the scan ("does not exist: run blend first").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import smooth_volume, write_zarr
from vesuvius_inference import cli
from vesuvius_inference.contract import paths
from vesuvius_inference.contract.errors import EXIT_BAD_ARGUMENTS, EXIT_BAD_INPUT, EXIT_NO_DEVICE, classify
from vesuvius_inference.contract.ngff import level_shapes
from vesuvius_inference.demo.synthetic import write_zarr as write_ome

SHAPE = (48, 80, 80)  # the volume
# the level count at which the pyramid is one voxel on every axis (each axis halves, rounding up)
ONE_VOXEL = 1 + max(int(np.ceil(np.log2(s))) for s in SHAPE)


def run(capsys, *args) -> tuple[int, str]:
    """``vesuvius-inference ARGS`` in this process: the exit code and the last line on stderr."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors exit, as in a process
        code = e.code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, (lines[-1] if lines else "")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> str:
    return write_ome(smooth_volume(SHAPE, seed=5), str(tmp_path_factory.mktemp("scan") / "scan.zarr"))


@pytest.fixture(scope="module")
def model(model_factory) -> str:
    return str(model_factory(patch=(16, 32, 32), folds=(0,)))


@pytest.fixture(scope="module")
def finished(scan, model, tmp_path_factory):
    """One small pipeline run that keeps its blended logits: (final output, blended logits)."""
    out = tmp_path_factory.mktemp("run") / "out.zarr"
    assert cli.main(["pipeline", "--input", scan, "--output", str(out), "--model", model, "--devices", "cpu",
                     "--disable_tta", "--quiet", "--keep_intermediates"]) == 0
    return str(out), paths.blended(str(out) + "_work")


def pipeline(scan, model, out, *extra):
    return ("pipeline", "--input", scan, "--output", out, "--model", model, "--devices", "cpu", "--disable_tta",
            "--quiet", *extra)


def predict(scan, model, parts, *extra):
    return ("predict", "--input_dir", scan, "--output_dir", parts, "--model_path", model, "--disable_tta", "--quiet",
            *extra)


# ---- chunk sizes and levels against the volume and the pyramid ------------------------------------------------


def test_odd_chunks_are_refused_before_any_part_runs(capsys, scan, model, tmp_path):
    out = tmp_path / "out.zarr"
    code, last = run(capsys, *pipeline(scan, model, out, "--chunk_size", "15,32,32"))
    assert code == EXIT_BAD_ARGUMENTS, last
    assert "needs even chunk sizes" in last and "--chunk_size 15,32,32" in last and "--levels 1" in last, last
    assert not out.exists() and not Path(f"{out}_work").exists()  # nothing predicted: refused at the start
    code, last = run(capsys, *predict(scan, model, tmp_path / "parts", "--device", "cpu", "--chunk_size", "15,32,32",
                                      "--final_output", tmp_path / "final.zarr"))
    assert code == EXIT_BAD_ARGUMENTS and "needs even chunk sizes" in last, last
    assert not (tmp_path / "parts").exists() and not (tmp_path / "final.zarr").exists()  # no claim, no output
    code, last = run(capsys, "plan", "--input", scan, "--model", model, "--chunk_size", "15,32,32")
    assert code == EXIT_BAD_ARGUMENTS and "needs even chunk sizes" in last, last  # plan says what the run would


def test_odd_chunks_without_a_pyramid_are_fine(capsys, scan, model):
    code, last = run(capsys, "plan", "--input", scan, "--model", model, "--chunk_size", "15,32,32", "--levels", "1")
    assert code == 0, last


def test_levels_past_the_one_voxel_level_are_refused_naming_the_most(capsys, scan, model, tmp_path):
    out = tmp_path / "out.zarr"
    code, last = run(capsys, *pipeline(scan, model, out, "--levels", "12"))
    assert code == EXIT_BAD_ARGUMENTS, last
    assert "--levels 12" in last and f"at most --levels {ONE_VOXEL}" in last and "48x80x80" in last, last
    assert not out.exists() and not Path(f"{out}_work").exists()
    code, last = run(capsys, "plan", "--input", scan, "--model", model, "--levels", str(ONE_VOXEL + 1))
    assert code == EXIT_BAD_ARGUMENTS and f"at most --levels {ONE_VOXEL}" in last, last


def test_finalize_refuses_such_levels_before_writing(capsys, finished, tmp_path):
    _, blended = finished
    out = tmp_path / "final.zarr"
    code, last = run(capsys, "finalize", blended, out, "--levels", "12", "--quiet")
    assert code == EXIT_BAD_ARGUMENTS and f"at most --levels {ONE_VOXEL}" in last, last
    assert not out.exists()


def test_the_most_levels_end_at_one_voxel():
    """The boundary itself: the last level allowed is the first that is one voxel on every axis."""
    from vesuvius_inference.contract.prechecks import check_pyramid, max_levels

    for shape in (SHAPE, (23247, 7593, 7593), (1, 64, 3), (7, 7, 7)):
        top = max_levels(shape)
        shapes = level_shapes(shape, top)
        assert shapes[-1] == (1, 1, 1) and (top == 1 or shapes[-2] != (1, 1, 1)), (shape, shapes)
        assert check_pyramid(shape, (64, 64, 64), top, "--chunk_size 64,64,64") == top
        with pytest.raises(Exception, match=f"at most --levels {top}"):
            check_pyramid(shape, (64, 64, 64), top + 1, "--chunk_size 64,64,64")


# ---- values that start with '-' ------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [["--bbox", "-5:10,0:20,0:20"], ["--bbox=-5:10,0:20,0:20"]])
def test_a_negative_bbox_is_out_of_the_volume_not_a_parse_error(capsys, scan, model, tmp_path, spelling):
    out = tmp_path / "out.zarr"
    code, last = run(capsys, *pipeline(scan, model, out, *spelling))
    assert code == EXIT_BAD_ARGUMENTS, last
    assert "'-5:10' is outside" in last and "48,80,80" in last and "0:48" in last, last
    assert not Path(f"{out}_work").exists()


def test_any_value_may_start_with_a_minus(capsys, scan, model):
    code, last = run(capsys, "plan", "--input", scan, "--model", model, "--patch_size", "-16,32,32")
    assert code == EXIT_BAD_ARGUMENTS and "--patch_size must be in [1, 4096], got -16,32,32" in last, last  # its bound


# ---- devices --------------------------------------------------------------------------------------------------


def _usable() -> str:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"cuda:0..cuda:{n - 1}" if n else "no CUDA device"


@pytest.mark.parametrize("device", ["mps", "xpu:0"])
def test_a_device_this_torch_does_not_run_on_is_69_before_any_claim(capsys, scan, model, tmp_path, device):
    parts = tmp_path / "parts"
    code, last = run(capsys, *predict(scan, model, parts, "--device", device))
    assert code == EXIT_NO_DEVICE, last
    assert f"--device {device}" in last and "cpu" in last and _usable() in last and "report" not in last, last
    assert not parts.exists()  # nothing opened for writing, no claim left behind


def test_a_name_that_is_no_device_is_a_bad_argument(capsys, scan, model, tmp_path):
    code, last = run(capsys, *predict(scan, model, tmp_path / "parts", "--device", "banana"))
    assert code == EXIT_BAD_ARGUMENTS and "'banana' is not a device" in last, last
    code, last = run(capsys, *pipeline(scan, model, tmp_path / "o.zarr", "--devices", "cpu,cuda:x"))
    assert code == EXIT_BAD_ARGUMENTS and "'cuda:x' is not a device" in last, last


def test_pipeline_devices_mps_exits_69_as_a_process(scan, model, tmp_path):
    out = tmp_path / "out.zarr"
    r = subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *pipeline(scan, model, str(out)),
                        "--devices", "cpu,mps"], capture_output=True, text=True, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == EXIT_NO_DEVICE and last.startswith("error: --devices cpu,mps") and _usable() in last, r.stderr
    assert not Path(f"{out}_work").exists() and not out.exists()


# ---- inputs that exist but are not Zarr stores ------------------------------------------------------------------


def _zip(folder: Path, archive: Path, under: str) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.rglob("*"):
            z.write(f, str(Path(under) / f.relative_to(folder)))
    return archive


def test_inputs_that_exist_but_are_not_zarr_say_what_they_are(capsys, scan, model, tmp_path):
    plain = tmp_path / "scan.tif"
    plain.write_bytes(b"II*\x00" + bytes(100))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("the scan is elsewhere")
    parent = tmp_path / "scans"
    shutil.copytree(scan, parent / "scan.zarr")
    for url, words in ((plain, "it is a file (scan.tif, 104 bytes)"), (notes, "it holds README.txt"),
                       (parent, f"scan.zarr in it is one: pass {parent}/scan.zarr")):
        code, last = run(capsys, "plan", "--input", url, "--model", model)
        assert code == EXIT_BAD_INPUT, last
        assert f"input {url} exists but is not a Zarr store" in last and words in last and "does not exist" not in last


@pytest.mark.parametrize("under", ["", "scan.zarr"])
def test_a_zip_archive_names_the_url_that_reads_it_and_that_url_works(capsys, scan, model, tmp_path, under):
    archive = _zip(Path(scan), tmp_path / "scan.zip", under)
    code, last = run(capsys, "plan", "--input", archive, "--model", model)
    url = f"zip://{under}::{archive}"
    assert code == EXIT_BAD_INPUT and "it is a zip archive" in last and url in last, last
    code, last = run(capsys, "plan", "--input", url, "--model", model, "--json")
    assert code == 0, last


# ---- permissions on a local disk ---------------------------------------------------------------------------------


def test_a_local_folder_this_user_cannot_write_says_so(scan, model):
    """As a user without write access (root ignores mode bits: the run drops to nobody, as a pod's
    runAsUser would be)."""
    base = Path(tempfile.mkdtemp(prefix="vi-perm-"))
    try:
        os.chmod(base, 0o755)
        shutil.copytree(scan, base / "scan.zarr")
        shutil.copytree(model, base / "model")
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(locked, 0o555)
        cmd = [sys.executable, "-m", "vesuvius_inference.cli", "predict", "--input_dir", str(base / "scan.zarr"),
               "--output_dir", str(locked / "parts"), "--model_path", str(base / "model"), "--device", "cpu",
               "--disable_tta", "--quiet"]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: no way to be a user without write access")
            for p in (base / "scan.zarr", base / "model"):
                subprocess.run(["chmod", "-R", "a+rX", str(p)], check=True)
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            probe = subprocess.run([*nobody, sys.executable, "-c", "import vesuvius_inference.cli"],
                                   capture_output=True, text=True, timeout=120)
            if probe.returncode != 0:  # a checkout (or venv) under a folder only root may read: mktemp's 0700
                pytest.skip("user nobody cannot read this checkout or its venv: "
                            f"{(probe.stderr.strip().splitlines() or ['?'])[-1]}")
            cmd = [*nobody, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(base)})
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == EXIT_BAD_INPUT and "not writable by this user" in last, r.stderr
        assert "bucket" not in last and "credentials" not in last, last
        assert not (locked / "parts").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_local_permission_error_is_not_blamed_on_buckets(tmp_path):
    e = classify(PermissionError(13, "Permission denied", str(tmp_path / "out.zarr" / "zarr.json")))
    text = str(e)
    assert e.exit_code == EXIT_BAD_INPUT and str(tmp_path / "out.zarr") in text and "this user" in text, text
    assert "bucket" not in text and "credentials" not in text, text


# ---- finalize given something other than blended logits ---------------------------------------------------------


def test_finalize_given_the_scan_says_what_it_was_given(capsys, scan, finished, tmp_path):
    final, _ = finished
    v2 = write_zarr(tmp_path / "v2scan.zarr", smooth_volume(SHAPE, seed=1), chunks=(16, 32, 32), zarr_format=2)
    for given, words in ((scan, "is an OME-Zarr image (uint8 48x80x80)"),
                         (f"{scan}/0", "is a Zarr array vesuvius-inference did not write (uint8 48x80x80)"),
                         (v2, "is a Zarr array vesuvius-inference did not write (uint8 48x80x80)"),
                         (final, "is an output vesuvius-inference already finalized")):
        out = tmp_path / "final.zarr"
        code, last = run(capsys, "finalize", given, out)
        assert code == EXIT_BAD_INPUT, last
        assert words in last and "blended float16 logits" in last and "does not exist" not in last, last
        assert not out.exists()
    code, last = run(capsys, "finalize", tmp_path / "nothing.zarr", tmp_path / "final.zarr")
    assert code == EXIT_BAD_INPUT and "does not exist: run blend first" in last, last  # the one case that is so


# ---- the same on Kubernetes: refused by the operator, not by 64 pods ---------------------------------------------


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"inference": {"device": "mps"}}, "inference.device 'mps'"),
    ({"inference": {"chunkSize": [63, 64, 64]}}, "needs even chunk sizes"),
])
def test_the_operator_refuses_what_every_predict_pod_would(changes, fragment):
    import yaml
    from vesuvius_inference.k8s import spec as specmod
    from vesuvius_inference.k8s.checks import refusals

    raw = yaml.safe_load((Path(__file__).parents[2] / "crds/samples/minimal.yaml").read_text())["spec"]
    assert refusals("minimal", specmod.parse(raw)) == []
    errors = refusals("minimal", specmod.parse({**raw, **changes}))
    assert any(fragment in e for e in errors), errors
    no_pyramid = {**raw, "inference": {"chunkSize": [63, 64, 64]}, "output": {**raw["output"], "levels": 1}}
    assert refusals("minimal", specmod.parse(no_pyramid)) == []


# ---- channels against the model, in plan too ----------------------------------------------------------------------


def test_an_input_with_other_channels_than_the_model_is_refused_before_the_claim(capsys, model, tmp_path):
    two = write_zarr(tmp_path / "two.zarr", np.stack([smooth_volume(SHAPE, seed=s) for s in (1, 2)]),
                     chunks=(1, 16, 32, 32))
    code, last = run(capsys, "plan", "--input", two, "--model", model)
    assert code == EXIT_BAD_INPUT and "expects 1 input channel(s), but" in last and "has 2" in last, last
    parts = tmp_path / "parts"
    code, last = run(capsys, *predict(two, model, parts, "--device", "cpu"))
    assert code == EXIT_BAD_INPUT and "expects 1 input channel(s)" in last, last
    assert not parts.exists()  # refused before the claim, not by the part run after it
