"""Bad inputs on S3: one line, exit 3 (or 2), nothing half-written that looks complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import run_cli, smooth_volume, write_zarr

cli = run_cli  # in-process; test_missing_bucket_and_key keeps a real process (nothing printed at its exit)


def real_process(*args, env=None):
    return subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def one_error_line(r, code, *needles):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert last.startswith("error:"), r.stderr
    for n in needles:
        assert n in last, (n, last)


@pytest.fixture
def s3_input(s3):
    url = f"{s3}/in.zarr"
    write_zarr(url, smooth_volume((24, 32, 32), seed=3), chunks=(24, 32, 32))
    return url


def predict(model, inp, out, *extra, run=cli):
    return run("predict", "--model_path", model, "--input_dir", inp, "--output_dir", out, "--device", "cpu",
               "--disable_tta", "--quiet", *extra)


def test_missing_bucket_and_key(s3, model2, tmp_path):
    one_error_line(predict(model2, "s3://no-such-bucket-here/in.zarr", tmp_path / "o", run=real_process), 3,
                   "does not exist")
    one_error_line(predict(model2, f"{s3}/missing.zarr", tmp_path / "o"), 3, "does not exist")
    assert not (tmp_path / "o").exists()


def test_unwritable_output(s3_input, model2, s3):
    r = predict(model2, s3_input, "s3://no-such-output-bucket/parts")
    one_error_line(r, 3)
    import s3fs

    assert not s3fs.S3FileSystem().exists(f"{s3[5:]}/parts/part_00000.json")


def test_denied_write_by_bucket_policy(s3_input, model2, s3, s3_server):
    import boto3

    bucket = s3[5:]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
                                                       "Resource": f"arn:aws:s3:::{bucket}/denied/*"}]}
    boto3.client("s3", endpoint_url=s3_server).put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    r = predict(model2, s3_input, f"{s3}/denied/parts")
    if r.returncode == 0:
        pytest.skip("this moto version does not enforce bucket policies")
    one_error_line(r, 3)
    import s3fs

    assert not s3fs.S3FileSystem().exists(f"{bucket}/denied/parts/part_00000.json")


def test_malformed_storage_options(s3_input, model2, tmp_path):
    one_error_line(predict(model2, s3_input, tmp_path / "o", "--storage-options", "[1, 2]"), 2, "JSON object")
    env = {"VESUVIUS_STORAGE_OPTIONS": "{not json"}
    one_error_line(cli("blend", f"{s3_input}/x", tmp_path / "b.zarr", env=env), 2, "VESUVIUS_STORAGE_OPTIONS")


def test_missing_credentials(s3_input, model2, tmp_path, monkeypatch):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    env = dict(AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    r = cli("predict", "--model_path", model2, "--input_dir", s3_input, "--output_dir", tmp_path / "o", "--device",
            "cpu", "--quiet", env=env)
    one_error_line(r, 3, "credentials", "--input_anon")  # public scans need no keys: say how to read them unsigned
    assert not (tmp_path / "o").exists()
