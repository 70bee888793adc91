"""A storage location is one value (contract/place.py): the URL and the options that open it travel
together, so every request a command makes reaches the place its options name, and the input is opened
once per process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.place import Place


def test_a_place_keeps_its_options_through_derived_places_and_out_of_messages():
    secret = {"key": "AKIA-not-for-logs", "secret": "s3cr3t", "endpoint_url": "http://minio:9000"}
    work = Place("s3://bucket/work/", secret)
    marker = work.join("parts", "part_00000.json")
    assert marker.url == "s3://bucket/work/parts/part_00000.json" and marker.options == secret
    assert work.at("s3://bucket/other").options == secret  # a URL read from a marker: the same credentials
    assert work.anonymous().options == {**secret, "anon": True} and work.options == secret
    for shown in (str(marker), repr(marker), f"{marker}"):
        assert "s3cr3t" not in shown and "AKIA" not in shown, shown
    assert marker.location() != Place(marker.url).location()  # the endpoint is part of where it is
    local = Place("file:///data/scan.zarr", secret)
    assert local.is_local and local.local_path == "/data/scan.zarr" and local.fs_options == {}
    assert not work.is_local and work.fs_options == secret


def test_every_stage_reaches_s3_through_its_storage_options_alone(s3, s3_server, model_factory, monkeypatch,
                                                                 tmp_path):
    """The endpoint only in --storage_options; the environment names a dead one (a request that lost its
    options goes there and, with --storage_wait_s 0, fails at once). Input, model, parts, seams, claims,
    markers, the output and `check` all on S3: the run completes and equals the same run on disk."""
    import s3fs

    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = smooth_volume((48, 64, 64), seed=21)
    vol[:, :, 40:] = 0  # absent chunks: the input's listing is read too
    bucket = s3[5:]
    write_zarr(f"{s3}/in.zarr", vol, chunks=(16, 32, 32))
    fs = s3fs.S3FileSystem()
    for f in sorted(Path(model).rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"{bucket}/model/{f.relative_to(model)}")
    local_in = write_zarr(tmp_path / "in.zarr", vol, chunks=(16, 32, 32))
    common = ["--parts-per-gpu", "2", "--devices", "cpu", "--disable-tta", "--quiet", "--chunk_size", "16,32,32"]
    assert run_cli("pipeline", "--input", local_in, "--output", tmp_path / "out.zarr", "--model", model,
                   *common).returncode == 0

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    options = json.dumps({"endpoint_url": s3_server, "key": "testing", "secret": "testing"})
    out = f"{s3}/results/out.zarr"
    r = run_cli("pipeline", "--input", f"{s3}/in.zarr", "--output", out, "--workdir", f"{s3}/work",
                "--model", f"{s3}/model", "--model_cache_dir", tmp_path / "cache", "--keep-intermediates",
                "--storage_options", options, "--storage_wait_s", "0", *common)
    assert r.returncode == 0, r.stderr
    r = run_cli("check", "finalize", "--output", out, "--storage_options", options)
    assert r.returncode == 0 and "is marked complete" in r.stdout, r.stdout + r.stderr
    r = run_cli("check", "predict", "--parts_dir", f"{s3}/work/parts", "--num_parts", "2", "--storage_options", options)
    assert r.returncode == 0, r.stdout + r.stderr

    import zarr

    good = s3fs.S3FileSystem(endpoint_url=s3_server, skip_instance_cache=True)
    remote = zarr.open_group(out, mode="r", storage_options={"endpoint_url": s3_server})
    local = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert np.array_equal(local["0"][:], remote["0"][:])
    assert good.exists(f"{bucket}/work/parts/part_00001.json")


@pytest.fixture
def input_reads(monkeypatch):
    """How often each key of a local Zarr store is read, and its keys listed, per store root."""
    import zarr.storage

    reads: dict[tuple[str, str], int] = {}
    real_get, real_list = zarr.storage.LocalStore.get, zarr.storage.LocalStore.list_prefix

    async def get(self, key, *a, **kw):
        k = (str(self.root), key)
        reads[k] = reads.get(k, 0) + 1
        return await real_get(self, key, *a, **kw)

    def list_prefix(self, prefix):
        k = (str(self.root), f"list:{prefix}")
        reads[k] = reads.get(k, 0) + 1
        return real_list(self, prefix)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    monkeypatch.setattr(zarr.storage.LocalStore, "list_prefix", list_prefix)
    return reads


def test_the_pipeline_opens_its_input_once(tmp_path, model_factory, input_reads):
    """It used to open the input three times for one device (the preflight, the pipeline's own open for
    the channel count, then once per part): each open read the array's metadata again, and each part
    listed every chunk of the input again (a full listing of a TB scan's bucket prefix)."""
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = smooth_volume((48, 64, 64), seed=22)
    vol[:, :, 40:] = 0
    src = write_zarr(tmp_path / "in.zarr", vol, chunks=(16, 32, 32))
    input_reads.clear()
    r = run_cli("pipeline", "--input", src, "--output", tmp_path / "out.zarr", "--model", model, "--parts-per-gpu", "3",
                "--devices", "cpu", "--disable-tta", "--quiet")
    assert r.returncode == 0, r.stderr
    root = str(Path(src).resolve())
    mine = {key: n for (where, key), n in input_reads.items() if str(Path(where).resolve()) == root}
    assert mine.get("zarr.json") == 1, mine  # the metadata: one open for the whole run
    assert sum(n for key, n in mine.items() if key.startswith("list:")) == 1, mine  # the listing: once
