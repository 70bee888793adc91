"""Object-storage benchmark on moto's S3 server: read amplification, intermediates, peak RSS.

Run: ``python tests/bench/bench_storage.py [--quick]``. Every number comes from this run:
- read amplification = bytes of input chunks fetched / bytes of the distinct input chunks touched,
  counted from moto's request log, ours (default cache, tiled order) vs the seed's way (no cache,
  row-major order);
- intermediate bytes / blended bytes;
- peak RSS of each stage at --cache_gb 1 on a mostly-absent 4.3 GB volume (0.5 GB with --quick).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import model_folder, peak_rss_mb  # noqa: E402
from helpers import parse_recording, smooth_volume  # noqa: E402


def start_s3() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ["MOTO_RECORDER_FILEPATH"] = os.path.join(tempfile.mkdtemp(), "recording")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bench")
    return server, url


def fetched_input_bytes(url: str, s3: str, prefix: str, args: list[str]) -> tuple[int, int, int]:
    """(bytes fetched, bytes of distinct chunks, GET count) of input chunk objects while running args."""
    import s3fs

    requests.post(f"{url}/moto-api/recorder/reset-recording")
    requests.post(f"{url}/moto-api/recorder/start-recording")
    r = subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *args], capture_output=True, text=True)
    requests.post(f"{url}/moto-api/recorder/stop-recording")
    if r.returncode:
        raise RuntimeError(r.stderr)
    log = parse_recording(requests.get(f"{url}/moto-api/recorder/download-recording").text)
    keys = [x["url"].split("/bench/", 1)[1].split("?")[0] for x in log
            if x.get("method") == "GET" and f"/bench/{prefix}/c/" in x.get("url", "")]
    fs = s3fs.S3FileSystem()
    sizes = {k: fs.size(f"bench/{k}") for k in set(keys)}
    return sum(sizes[k] for k in keys), sum(sizes.values()), len(keys)


def model_rss_mb(model: Path, patch: tuple[int, int, int]) -> float:
    """Peak RSS of "the model" alone: torch + nnU-Net imported, weights loaded, one forward pass on a
    patch. The issue's bound is on what a stage adds to this (caches, buffers), not on torch itself."""
    code = ("import sys, torch\n"
            "from vesuvius_inference.model.network import load_model\n"
            "from vesuvius_inference.model.files import ModelFiles\n"
            "m = load_model(ModelFiles(sys.argv[1]))\n"
            f"x = torch.zeros((1, m.num_input_channels, {', '.join(map(str, patch))}))\n"
            "with torch.no_grad():\n"
            "    [net(x) for net in m.networks]\n"
            "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n")
    out = subprocess.run([sys.executable, "-c", code, str(model)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="peak RSS on a 0.5 GB volume instead of 4.3 GB")
    a = ap.parse_args()
    server, url = start_s3()
    root = Path(tempfile.mkdtemp(prefix="vbench-s3-"))
    # CT models (nnU-Net's choice for CT data such as scrolls) normalize pointwise: no statistics pass
    model = model_folder(root, (64, 64, 64), (2, 4, 8), "CTNormalization")
    import zarr

    shape, chunks = (192, 320, 320), (32, 64, 64)
    arr = zarr.create_array("s3://bench/in.zarr", shape=shape, chunks=chunks, dtype="uint8", zarr_format=3,
                            fill_value=0)
    arr[:] = smooth_volume(shape, seed=0)
    base = ["predict", "--model_path", str(model), "--input_dir", "s3://bench/in.zarr", "--device", "cpu",
            "--disable_tta", "--quiet", "--num_parts", "2", "--part_id", "0"]
    ours = fetched_input_bytes(url, "s3", "in.zarr", base + ["--output_dir", "s3://bench/w1"])
    seed = fetched_input_bytes(url, "s3", "in.zarr", base + ["--output_dir", "s3://bench/w2", "--input_cache_gb", "0",
                                                             "--patch_order", "rowmajor"])
    print(f"volume {shape} uint8 on S3 (moto), chunks {chunks}, patch 64^3, overlap 0.5, part 0 of 2")
    print(f"read amplification ours (cache {4 / 4:.1f} GB, tiled): {ours[0] / ours[1]:.2f} "
          f"({ours[2]} GETs, {ours[0] / 1e6:.1f} MB for {ours[1] / 1e6:.1f} MB of distinct chunks)")
    print(f"read amplification no cache, row-major (seed): {seed[0] / seed[1]:.2f} "
          f"({seed[2]} GETs, {seed[0] / 1e6:.1f} MB)   seed/ours = {seed[0] / ours[0]:.1f}x fewer bytes")
    # peak RSS on a large, mostly absent volume
    big = (512, 1024, 1024) if a.quick else (1024, 2048, 2048)
    arr = zarr.create_array("s3://bench/big.zarr", shape=big, chunks=(128, 128, 128), dtype="uint8", zarr_format=3,
                            fill_value=0)
    arr[big[0] // 2 - 64: big[0] // 2 + 64, 448:576, 448:576] = smooth_volume((128, 128, 128), seed=1)
    common = ["--cache_gb", "1", "--quiet"]
    rss = {
        "predict": peak_rss_mb(["predict", "--model_path", str(model), "--input_dir", "s3://bench/big.zarr",
                                "--output_dir", "s3://bench/bw/parts", "--device", "cpu", "--disable_tta", *common]),
        "blend": peak_rss_mb(["blend", "s3://bench/bw/parts", "s3://bench/bw/b.zarr", *common]),
        "finalize": peak_rss_mb(["finalize", "s3://bench/bw/b.zarr", "s3://bench/bw/o.zarr", *common]),
    }
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.store.storage import tree_bytes

    inter, blended = tree_bytes(Place("s3://bench/bw/parts")), tree_bytes(Place("s3://bench/bw/b.zarr"))
    base = model_rss_mb(model, (64, 64, 64))
    print(f"volume {big} uint8 = {np.prod(big) / 1e9:.1f} GB (mostly absent chunks): peak RSS "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()) + f"; intermediates/blended = {inter / blended:.2f}")
    print(f"the model alone (torch, nnU-Net, weights, one forward pass): {base:.0f} MB; predict adds "
          f"{rss['predict'] - base:.0f} MB at --cache_gb 1 (bound: 1024 MB)")
    server.stop()


if __name__ == "__main__":
    main()
