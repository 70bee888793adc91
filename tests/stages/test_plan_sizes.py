"""plan's compressed bytes to read on an object store: the sizes S3 reports for the chunks predict will
fetch (HEAD requests, never a chunk's bytes), labelled as such."""

from __future__ import annotations

import json

import numpy as np
import zarr
from helpers import smooth_volume
from vesuvius_inference.cli import main


def test_plan_reads_compressed_sizes_from_s3_without_fetching_a_chunk(s3, s3_server, model2, capsys):
    import requests
    import s3fs
    from helpers import parse_recording

    data = smooth_volume((64, 96, 96), seed=11)
    data[:, :, 48:] = 0  # half the chunks are never stored
    arr = zarr.create_array(f"{s3}/in.zarr", shape=data.shape, chunks=(32, 48, 48), dtype="uint8", zarr_format=3,
                            fill_value=0)
    arr[...] = data
    fs = s3fs.S3FileSystem()
    stored = {p: fs.size(p) for p in fs.find(f"{s3}/in.zarr/c")}
    requests.post(f"{s3_server}/moto-api/recorder/reset-recording")
    requests.post(f"{s3_server}/moto-api/recorder/start-recording")
    assert main(["plan", "--input", f"{s3}/in.zarr", "--model", str(model2), "--json"]) == 0
    requests.post(f"{s3_server}/moto-api/recorder/stop-recording")
    p = json.loads(capsys.readouterr().out)
    log = parse_recording(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    assert not [x for x in log if x.get("method") == "GET" and "/in.zarr/c/" in x.get("url", "")]
    b = p["bytes"]
    assert b["read_chunks"] == len(stored) and b["read_compressed_exact"]
    assert b["read_compressed"] == sum(stored.values()) < b["read_uncompressed"] == len(stored) * 32 * 48 * 48
    assert np.isfinite(p["gpu"]["hours"]) and p["gpu"]["source"] == "default"
