"""What can fail after the compute is checked before it; progress across parts with one ETA.

Each check is timed against the compute it saves: a refused run writes nothing (no workdir, no
part), a complete output is not predicted again.
"""

from __future__ import annotations

import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.progress import parse_line

cli = run_cli  # in-process (the pipeline's parts still run as its own worker processes)


@pytest.fixture(scope="module")
def done(tmp_path_factory, model_factory):
    """A volume, a model and a complete pipeline output of them."""
    root = tmp_path_factory.mktemp("preflight")
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(root / "in.zarr", smooth_volume((40, 48, 48), seed=5), chunks=(20, 24, 24))
    common = ["--input", vol, "--model", model, "--disable-tta", "--devices", "cpu"]
    r = cli("pipeline", *common, "--output", root / "out.zarr", "--parts-per-gpu", "2")
    assert r.returncode == 0, r.stderr
    return root, common


def _snapshot(path):
    return sorted((p.relative_to(path).as_posix(), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_a_complete_output_with_the_same_settings_is_not_predicted_again(done):
    root, common = done
    before = _snapshot(root / "out.zarr")
    r = cli("pipeline", *common, "--output", root / "out.zarr", "--parts-per-gpu", "2")
    assert r.returncode == 0, r.stderr
    assert "already complete with these settings: nothing to do" in r.stderr
    assert "== predict" not in r.stderr and not (root / "out.zarr_work").exists()
    assert _snapshot(root / "out.zarr") == before


def test_other_settings_are_refused_at_once_naming_each_difference(done):
    root, common = done
    before = _snapshot(root / "out.zarr")
    r = cli("pipeline", *common, "--output", root / "out.zarr", "--overlap", "0.25", "--threshold")
    assert r.returncode == 3
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "--overlap 0.5 -> 0.25" in line and "--threshold false -> true" in line
    assert "--overwrite" in line
    assert _snapshot(root / "out.zarr") == before and not (root / "out.zarr_work").exists()


def test_a_folder_that_is_not_a_zarr_store_is_refused_and_untouched_even_with_overwrite(done, tmp_path):
    root, common = done
    target = tmp_path / "notes"
    target.mkdir()
    (target / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        r = cli("pipeline", *common, "--output", target, *extra)
        assert r.returncode == 3 and "is not a Zarr store (it holds notes.txt)" in r.stderr
        assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
        assert (target / "notes.txt").read_text() == "my notes"
    assert not (tmp_path / "notes_work").exists()


def test_a_zarr_store_we_did_not_write_is_never_replaced(done, tmp_path):
    """Issue 23 changed this: --overwrite used to replace it, and a scan spelled differently from --input was
    deleted that way. Only what this program wrote is replaced (tests/contract/test_safety.py)."""
    root, common = done
    foreign = tmp_path / "theirs.zarr"
    zarr.create_array(str(foreign), shape=(4, 4), dtype="uint8", zarr_format=3)[:] = 7
    for extra in ([], ["--overwrite"]):
        r = cli("pipeline", *common, "--output", foreign, *extra)
        assert r.returncode == 3 and "did not write" in r.stderr and "left untouched" in r.stderr
        assert zarr.open_array(str(foreign), mode="r")[:].max() == 7


def test_parts_of_other_settings_in_the_workdir_are_refused_before_any_part_runs(done, tmp_path):
    root, common = done
    work = tmp_path / "work"
    r = cli("pipeline", *common, "--output", tmp_path / "a.zarr", "--workdir", work, "--skip-blend",
            "--skip-finalize", "--keep-intermediates", "--quiet")
    assert r.returncode == 0, r.stderr
    before = _snapshot(work)
    r = cli("pipeline", *common, "--output", tmp_path / "b.zarr", "--workdir", work, "--batch-size", "2",
            "--patch-size", "16,16,16")
    assert r.returncode == 3 and "--patch_size 16,32,32 -> 16,16,16" in r.stderr, r.stderr
    assert _snapshot(work) == before and not (tmp_path / "b.zarr").exists()


def test_the_mode_is_checked_against_the_model_before_predicting(done, tmp_path, model_factory):
    root, common = done
    three = model_factory(patch=(16, 32, 32), folds=(0,), num_classes=3, normalization="CTNormalization")
    args = [a if a != common[3] else str(three) for a in common]
    r = cli("pipeline", *args, "--output", tmp_path / "o.zarr")
    assert r.returncode == 3 and "binary mode needs 1 or 2" in r.stderr and not (tmp_path / "o.zarr_work").exists()


@pytest.mark.parametrize("devices", ["cpu", "cpu,cpu"])
def test_one_progress_line_for_all_parts_with_the_stage_eta(done, tmp_path, devices):
    root, common = done
    args = [a for a in common if a not in ("--devices", "cpu")]
    r = cli("pipeline", *args, "--devices", devices, "--parts-per-gpu", "2", "--output", tmp_path / "o.zarr",
            "--progress_s", "0")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("predict (")]
    assert lines, r.stderr
    n = 2 * len(devices.split(","))
    assert all(x.startswith(f"predict ({n} parts): ") for x in lines)
    totals = {int(x.split(": ")[1].split(" ")[0].split("/")[1]) for x in lines}
    assert len(totals) == 1  # the whole stage's patches, known before the first part starts
    assert lines[-1].split(": ")[1].startswith(f"{totals.pop()}/") and "(100.0%)" in lines[-1]
    assert any("ETA" in x and "ETA -" not in x for x in lines)
    per_part = [x for x in r.stderr.splitlines() if (p := parse_line(x)) is not None and p.stage == "predict"]
    assert not per_part, "per-part lines are folded into the aggregate"
