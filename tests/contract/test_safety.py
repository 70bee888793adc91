"""Nothing a user owns is ever destroyed (issue 23): every spelling of the scan's place is the scan.

Each case runs the real command line in-process (``cli.main``) against a copy of an OME-Zarr 0.4 scan
and asserts the exit code, the one error line, and that every file of the scan is byte-identical
afterwards. Before this, ``--output ./copy.zarr --overwrite`` deleted ``copy.zarr``, and
``--output copy.zarr/0 --overwrite`` replaced the scan's level 0 and exited 0.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import zarr
from ngff.fixtures import write_scroll_input
from vesuvius_inference import cli
from vesuvius_inference.contract.locations import Named, locate, overlaps


def digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content's hash: 'byte-identical' made checkable."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err[-1] if err else ""


@pytest.fixture
def scan(tmp_path, monkeypatch):
    """A two-level OME-Zarr 0.4 scan in the working directory (relative spellings resolve against it)."""
    monkeypatch.chdir(tmp_path)
    write_scroll_input(tmp_path / "copy.zarr", shape=(16, 32, 32), n_levels=2)
    return tmp_path / "copy.zarr"


def pipeline(model, inp, *extra):
    return ["pipeline", "--input", inp, "--model", model, "--disable_tta", "--devices", "cpu", "--quiet", *extra]


def spellings(scan: Path) -> list[tuple[str, list[str]]]:
    link = scan.parent / "link.zarr"
    link.symlink_to(scan, target_is_directory=True)
    return [
        ("relative ./", ["copy.zarr", "--output", "./copy.zarr"]),
        ("absolute", ["copy.zarr", "--output", str(scan)]),
        ("trailing slash and ..", ["copy.zarr/", "--output", "copy.zarr/0/.."]),
        ("file://", ["copy.zarr", "--output", f"file://{scan}"]),
        ("symlink", ["copy.zarr", "--output", "link.zarr"]),
        ("a level of the scan", ["copy.zarr", "--level", "1", "--output", "copy.zarr/0"]),
        ("a subfolder of the scan", [str(scan), "--output", "copy.zarr/predictions/surface.zarr"]),
        ("the input inside the output", ["copy.zarr/0", "--output", "."]),
        ("the workdir is the scan", ["copy.zarr", "--output", "pred.zarr", "--workdir", "./copy.zarr"]),
        ("the workdir inside the scan", ["copy.zarr", "--output", "pred.zarr", "--workdir", "copy.zarr/work"]),
        ("the scan inside the workdir", ["copy.zarr", "--output", "pred.zarr", "--workdir", "."]),
    ]


def test_every_spelling_of_the_scan_as_output_is_refused_before_anything_is_written(scan, model2, capsys):
    before = digest(scan)
    listing = sorted(os.listdir(scan.parent))
    for what, (inp, *extra) in spellings(scan):
        code, line = run(capsys, *pipeline(model2, inp, *extra, "--overwrite"))
        assert code == 2, (what, code, line)
        assert line.startswith("error:") and ("same place" in line or "lies inside" in line), (what, line)
        assert digest(scan) == before, what
    assert sorted(os.listdir(scan.parent)) == sorted([*listing, "link.zarr"])  # no output, no workdir made


def test_the_model_inside_the_output_or_workdir_is_refused(scan, model2, capsys, tmp_path):
    import shutil

    model_copy = tmp_path / "out.zarr_work" / "model"  # a symlink there would be fine: rm never follows it
    shutil.copytree(model2, model_copy)
    code, line = run(capsys, *pipeline(model_copy, "copy.zarr", "--output", "out.zarr", "--overwrite"))
    assert code == 2 and "--model" in line and "lies inside --workdir" in line, line
    assert model_copy.exists()


def test_a_scan_given_as_output_is_never_replaced_even_with_overwrite(scan, model2, capsys, tmp_path):
    """A different scan (not the input) given as the output: a Zarr store this program did not write."""
    other = tmp_path / "other.zarr"
    write_scroll_input(other, shape=(16, 32, 32), n_levels=2)
    before = digest(other)
    for extra in ([], ["--overwrite"]):
        code, line = run(capsys, *pipeline(model2, "copy.zarr", "--output", other, *extra))
        assert code == 3 and "did not write" in line and "left untouched" in line, line
        assert "pass --overwrite" not in line  # the advice never points at a store we may not delete
        assert digest(other) == before
    assert not (tmp_path / "other.zarr_work").exists()


def test_predict_final_output_on_a_foreign_store_does_not_loop_its_advice(scan, model2, capsys, tmp_path):
    foreign = tmp_path / "x.zarr"
    zarr.create_array(str(foreign), shape=(16, 32, 32), dtype="uint8", zarr_format=3)[:] = 7
    before = digest(foreign)
    code, line = run(capsys, "predict", "--model_path", model2, "--input_dir", "copy.zarr", "--output_dir", "parts",
                     "--device", "cpu", "--disable_tta", "--final_output", "./x.zarr", "--overwrite", "--quiet")
    assert code == 3 and "did not write" in line and "pass --overwrite" not in line, line
    assert digest(foreign) == before


def test_a_workdir_holding_somebody_elses_files_is_never_used_or_removed(scan, model2, capsys, tmp_path):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    code, line = run(capsys, *pipeline(model2, "copy.zarr", "--output", "pred.zarr", "--workdir", mine, "--overwrite"))
    assert code == 3 and "did not write" in line and "--workdir" in line, line
    assert (mine / "chapter1.tex").read_text() == "years of work" and sorted(os.listdir(mine)) == ["chapter1.tex"]


def test_finalize_never_deletes_what_it_did_not_write(scan, capsys, tmp_path):
    before = digest(scan)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("keep")
    code, line = run(capsys, "finalize", "copy.zarr/0", "out.zarr", "--delete_intermediates", "--quiet")
    assert code == 2 and "not written by vesuvius-inference" in line, line
    code, line = run(capsys, "finalize", "copy.zarr/0", "out.zarr", "--delete_intermediates", "--also_delete", notes)
    assert code == 2 and "not written by vesuvius-inference" in line, line
    code, line = run(capsys, "finalize", "copy.zarr/0", "./copy.zarr/0/", "--quiet")
    assert code == 2 and "same place" in line, line
    code, line = run(capsys, "finalize", "copy.zarr", f"file://{scan}/2", "--quiet")
    assert code == 2 and "lies inside" in line, line
    assert digest(scan) == before and (notes / "a.txt").read_text() == "keep"


def test_the_demo_never_removes_a_folder_it_did_not_write(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    code, line = run(capsys, "demo", "--output_dir", tmp_path, "--quiet")
    assert code == 3 and "not written by vesuvius-inference" in line, line
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_overwrite_replaces_our_own_output_and_workdir(scan, model2, capsys, tmp_path):
    """The other half of the rule: what this program wrote, it may replace (and says so)."""
    args = pipeline(model2, "copy.zarr", "--output", "pred.zarr", "--keep_intermediates")
    assert run(capsys, *args)[0] == 0
    assert (tmp_path / "pred.zarr_work" / ".vesuvius-inference.json").exists()
    code, line = run(capsys, *args, "--overlap", "0.25")
    assert code == 3 and "--overlap 0.5 -> 0.25" in line and "pass --overwrite" in line, line
    assert run(capsys, *args, "--overlap", "0.25", "--overwrite")[0] == 0
    assert zarr.open_group("pred.zarr", mode="r").attrs["vesuvius"]["config"]["predict"]["overlap"] == 0.25


def test_a_negated_flag_reads_the_right_way_round(scan, model2, capsys):
    args = pipeline(model2, "copy.zarr", "--output", "pred.zarr")
    assert run(capsys, *args)[0] == 0
    code, line = run(capsys, *[a for a in args if a != "--disable_tta"])
    assert code == 3 and "--disable_tta -> --tta" in line, line


@pytest.mark.parametrize(("a", "b", "same"), [
    ("s3://scans/scan.zarr", "s3://scans/scan.zarr/", True),
    ("s3://scans/scan.zarr", "s3a://scans//scan.zarr", True),
    ("s3://scans/scan.zarr", "s3://scans/x/../scan.zarr", True),
    ("s3://scans/scan.zarr", "s3://Scans/scan.zarr", True),  # bucket names are lower case (S3 rules)
    ("s3://scans/scan.zarr", "s3://scans/Scan.zarr", False),  # keys are not
    ("s3://scans/scan.zarr", "s3://other/scan.zarr", False),
    ("gs://b/k", "gcs://b/k/", True),
    ("https://host:443/a/b", "http://HOST/a/b/", True),
    ("zip://::/data/scan.zip", "/data/scan.zip", True),
    ("simplecache::s3://scans/scan.zarr", "s3://scans/scan.zarr", True),
])
def test_object_store_spellings(a, b, same):
    assert (locate(a) == locate(b)) is same


def test_the_endpoint_is_part_of_an_object_stores_place(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    minio = {"endpoint_url": "http://minio:9000"}
    assert locate("s3://b/k", minio) != locate("s3://b/k")
    assert locate("s3://b/k", minio) == locate("s3://b/k/", {"client_kwargs": {"endpoint_url": "http://MINIO:9000/"}})
    assert overlaps([Named("--input", "s3://b/k"), Named("--output", "s3://b/k/0", "write")], minio)
