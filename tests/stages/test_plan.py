"""plan: metadata-only on a 10^11-voxel volume, and its counts are what predict processes."""

from __future__ import annotations

import json

import numpy as np
import zarr
from helpers import run_cli, smooth_volume, write_zarr


def plan(*args):
    r = run_cli("plan", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_plan_on_1e11_voxels_on_s3_reads_metadata_only(s3, s3_server, model2):
    """No chunk of the input is fetched: the plan comes from metadata and one listing (the README gives
    the seconds it takes; a timed assert would measure the machine's load)."""
    import requests
    from helpers import parse_recording

    shape = (4096, 4096, 6000)  # 1.0e11 voxels, uint8: 100 GB if it were stored
    arr = zarr.create_array(f"{s3}/huge.zarr", shape=shape, chunks=(128, 128, 128), dtype="uint8", zarr_format=3,
                            fill_value=0)
    arr[2048:2176, 1024:1280, 2944:3072] = 7  # two stored chunks
    requests.post(f"{s3_server}/moto-api/recorder/reset-recording")
    requests.post(f"{s3_server}/moto-api/recorder/start-recording")
    p = plan("--input", f"{s3}/huge.zarr", "--model", model2, "--num_parts", "64", "--throughput", "20")
    requests.post(f"{s3_server}/moto-api/recorder/stop-recording")
    log = parse_recording(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    gets = [x["url"] for x in log if x.get("method") == "GET" and "/huge.zarr/" in x.get("url", "")]
    assert gets and not [u for u in gets if "/huge.zarr/c/" in u], gets  # metadata yes, chunks never
    assert p["input"]["stored_chunks"] == 2 and p["grid"]["patches"] > 4_000_000
    assert 0 < p["grid"]["non_empty"] < 1000  # only patches around the two stored chunks
    assert p["bytes"]["read"] == 2 * 128 ** 3
    assert sum(p["parts"]["non_empty_per_part"]) == p["grid"]["non_empty"]
    assert p["model"]["passes"] == p["grid"]["non_empty"] * 2 * 8 and p["gpu_hours"] > 0


def test_plan_counts_match_predict(tmp_path, model2):
    data = smooth_volume((64, 96, 96), seed=3)
    data[:, :, 32:] = 0  # chunks with x >= 32 are all zero, so never stored
    inp = write_zarr(tmp_path / "in.zarr", data, chunks=(32, 32, 32))
    p = plan("--input", inp, "--model", model2, "--num_parts", "2")
    seen = []
    for part in range(2):
        r = run_cli("predict", "--model_path", model2, "--input_dir", inp, "--output_dir", tmp_path / "parts",
                    "--part_id", part, "--num_parts", "2", "--device", "cpu", "--disable_tta", "--quiet")
        assert r.returncode == 0
        m = json.loads((tmp_path / "parts" / f"part_0000{part}.json").read_text())
        seen.append(m["patches"]["total"] - m["patches"]["skipped_absent"])
    assert seen == p["parts"]["non_empty_per_part"]
    assert p["grid"]["skipped_empty"] > 0
    assert np.isclose(p["parts"]["imbalance"], max(seen) / np.mean(seen))


def test_plan_bytes_to_read_are_the_chunks_predict_fetches(tmp_path, model_factory):
    """With a --bbox, only stored chunks under non-empty patches of the ROI are read (CT model: no stats pass)."""
    model = model_factory(normalization="CTNormalization")
    data = smooth_volume((64, 128, 128), seed=8)
    data[:, 96:] = 0
    inp = write_zarr(tmp_path / "in.zarr", data, chunks=(16, 32, 32))
    whole = plan("--input", inp, "--model", model)
    bbox = "8:40,20:120,0:60"
    roi = plan("--input", inp, "--model", model, "--bbox", bbox)
    assert 0 < roi["bytes"]["read_chunks"] < whole["bytes"]["read_chunks"] <= whole["input"]["stored_chunks"]
    r = run_cli("predict", "--model_path", model, "--input_dir", inp, "--output_dir", tmp_path / "parts", "--bbox", bbox,
                "--device", "cpu", "--disable_tta", "--quiet")
    assert r.returncode == 0
    m = json.loads((tmp_path / "parts" / "part_00000.json").read_text())
    assert m["input_chunks_fetched"] == roi["bytes"]["read_chunks"]
    assert roi["bytes"]["read"] == roi["bytes"]["read_chunks"] * 16 * 32 * 32
