"""A misspelled storage option on moto's S3: exit 2 naming the key and what s3:// takes, before anything is
opened (it used to exit 3 blaming the input: "not a readable Zarr array"); the keys s3fs does take pass."""

from __future__ import annotations

import json

import pytest
from helpers import smooth_volume, write_zarr
from vesuvius_inference import cli
from vesuvius_inference.contract.errors import EXIT_BAD_ARGUMENTS


@pytest.fixture
def s3_input(s3):
    return write_zarr(f"{s3}/in.zarr", smooth_volume((24, 32, 32), seed=3), chunks=(24, 32, 32))


def run(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, (lines[-1] if lines else "")


def _objects(s3) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return sorted(fs.find(s3[5:]))


@pytest.mark.parametrize(("options", "key", "hint"), [
    ({"endpoint": "{server}"}, "'endpoint'", "did you mean 'endpoint_url'?"),
    ({"client_kwargs": {"region": "us-east-1"}}, "'region'", "did you mean 'region_name'?"),
    ({"config_kwargs": {"retry": {"max_attempts": 2}}}, "'retry'", "did you mean 'retries'?"),
])
def test_a_misspelled_storage_option_is_a_bad_argument_naming_it(capsys, s3, s3_server, s3_input, model2, tmp_path,
                                                                 options, key, hint):
    so = json.loads(json.dumps(options).replace("{server}", s3_server))
    before = _objects(s3)
    out = f"{s3}/out.zarr"
    code, last = run(capsys, "pipeline", "--input", s3_input, "--output", out, "--model", model2, "--devices", "cpu",
                     "--disable_tta", "--quiet", "--storage_options", json.dumps(so))
    assert code == EXIT_BAD_ARGUMENTS, last
    assert key in last and "s3://" in last and hint in last and "input" not in last, last
    assert _objects(s3) == before  # nothing written: no output, no workdir, no claim
    code, last = run(capsys, "predict", "--input_dir", s3_input, "--output_dir", f"{s3}/parts", "--model_path", model2,
                     "--device", "cpu", "--storage_options", json.dumps(so))
    assert code == EXIT_BAD_ARGUMENTS and key in last, last


def test_the_keys_s3fs_takes_pass(capsys, s3, s3_server, s3_input, model2):
    so = {"endpoint_url": s3_server, "client_kwargs": {"region_name": "us-east-1"},
          "config_kwargs": {"retries": {"max_attempts": 2}, "connector_args": {"keepalive_timeout": 5}},
          "s3": {"anon": False}}
    code, last = run(capsys, "plan", "--input", s3_input, "--model", model2, "--json", "--storage_options",
                     json.dumps(so))
    assert code == 0, last


def test_a_zip_archive_on_s3_names_the_url_that_reads_it(capsys, s3, model2, tmp_path):
    """The .zip itself given as the input: "exists but is not a Zarr store", with the chained zip:// URL
    read from the archive's own directory (range reads); that URL runs."""
    import zipfile
    from pathlib import Path

    import s3fs

    local = Path(write_zarr(tmp_path / "scan.zarr", smooth_volume((24, 32, 32), seed=4), chunks=(24, 32, 32)))
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in local.rglob("*"):
            z.write(f, str(Path("scan.zarr") / f.relative_to(local)))
    s3fs.S3FileSystem(skip_instance_cache=True).put_file(str(archive), f"{s3[5:]}/scan.zip")
    code, last = run(capsys, "plan", "--input", f"{s3}/scan.zip", "--model", model2)
    url = f"zip://scan.zarr::{s3}/scan.zip"
    assert code == 3 and "exists but is not a Zarr store: it is a zip archive" in last and url in last, last
    code, last = run(capsys, "plan", "--input", url, "--model", model2, "--json")
    assert code == 0, last
