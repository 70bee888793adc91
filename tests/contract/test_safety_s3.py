"""Nothing a user owns is ever destroyed, on object storage (issue 23): two spellings of one key on
moto's S3 are one place, and a scan there is never replaced, ``--overwrite`` or not."""

from __future__ import annotations

import hashlib

import pytest
from helpers import smooth_volume, write_zarr
from vesuvius_inference import cli


def digest(fs, root: str) -> dict[str, str]:
    return {p[len(root):]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(root))}


@pytest.fixture
def s3_scan(s3, tmp_path):
    import s3fs

    local = write_zarr(tmp_path / "scan.zarr", smooth_volume((16, 32, 32), seed=3), chunks=(16, 16, 16))
    fs = s3fs.S3FileSystem()
    fs.put(local, f"{s3[5:]}/scans/scan.zarr", recursive=True)
    return fs, f"{s3}/scans/scan.zarr"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err[-1] if err else ""


@pytest.mark.parametrize("spelling", ["{scan}/0", "{scan}/", "{s3a}//scans/scan.zarr", "{scan}/x/..",
                                      "{bucket}/scans/other/../scan.zarr/sub.zarr"])
def test_the_scan_on_s3_spelled_another_way_is_refused(s3_scan, s3, capsys, model2, spelling):
    fs, scan = s3_scan
    root = scan[5:]
    before = digest(fs, root)
    out = spelling.format(scan=scan, s3a="s3a://" + s3[5:], bucket=s3)
    code, line = run(capsys, "pipeline", "--input", scan, "--model", model2, "--output", out, "--devices", "cpu",
                     "--disable_tta", "--overwrite", "--quiet")
    assert code == 2 and ("same place" in line or "lies inside" in line), line
    fs.invalidate_cache()
    assert digest(fs, root) == before


def test_a_foreign_store_on_s3_is_never_replaced(s3_scan, s3, capsys, model2, tmp_path):
    fs, scan = s3_scan
    other = write_zarr(tmp_path / "other.zarr", smooth_volume((16, 32, 32), seed=4), chunks=(16, 16, 16))
    fs.put(other, f"{s3[5:]}/theirs.zarr", recursive=True)
    before = digest(fs, f"{s3[5:]}/theirs.zarr")
    code, line = run(capsys, "pipeline", "--input", scan, "--model", model2, "--output", f"{s3}/theirs.zarr",
                     "--devices", "cpu", "--disable_tta", "--overwrite", "--quiet")
    assert code == 3 and "did not write" in line and "pass --overwrite" not in line, line
    fs.invalidate_cache()
    assert digest(fs, f"{s3[5:]}/theirs.zarr") == before
