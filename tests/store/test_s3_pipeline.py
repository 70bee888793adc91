"""Every stage straight on S3 (moto server + s3fs): same bytes as on local disk."""

from __future__ import annotations

import numpy as np
import zarr
from helpers import run_cli, smooth_volume, write_zarr

cli = run_cli  # in-process: the pipeline's parts still run in its own worker processes


def test_pipeline_on_s3_equals_local(tmp_path, model2, s3):
    import os

    vol = smooth_volume((48, 64, 64), seed=7)
    vol[:, :, 40:] = 0  # some absent chunks, so listing-based skipping runs on S3 too
    local_in = write_zarr(tmp_path / "in.zarr", vol, chunks=(24, 32, 32))
    s3_in = f"{s3}/scroll/in.zarr"
    write_zarr(s3_in, vol, chunks=(24, 32, 32))
    common = ["--model", model2, "--parts-per-gpu", "3", "--disable-tta", "--quiet"]
    r = cli("pipeline", "--input", local_in, "--output", tmp_path / "out.zarr", *common)
    assert r.returncode == 0, r.stderr
    r = cli("pipeline", "--input", s3_in, "--output", f"{s3}/results/out.zarr", "--workdir", f"{s3}/work",
            "--keep-intermediates", *common, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    local = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    remote = zarr.open_group(f"{s3}/results/out.zarr", mode="r")
    assert np.array_equal(local["0"][:], remote["0"][:])
    assert remote.attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"
    import s3fs

    fs = s3fs.S3FileSystem()
    assert fs.exists(f"{s3[5:]}/work/parts/part_00002.json")


def test_fused_pipeline_writes_each_output_chunk_once_and_blend_only_the_seams(model_factory, s3, s3_server):
    """moto's request log: every chunk object of the output (all levels) is PUT exactly once; of level 0,
    blend PUTs only the chunks three or more parts share (the corners of 2x2 blocks), and the parts PUT
    the rest themselves, the two-part seams included (their second finisher merges them)."""
    import requests
    import s3fs
    from helpers import parse_recording
    from vesuvius_inference.geometry.layout import OWN, PAIR, SHARED

    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = smooth_volume((80, 64, 64), seed=13)
    s3_in = f"{s3}/scroll/in.zarr"
    write_zarr(s3_in, vol, chunks=(16, 32, 32))
    out, work = f"{s3}/results/out.zarr", f"{s3}/work"
    requests.post(f"{s3_server}/moto-api/recorder/reset-recording")
    requests.post(f"{s3_server}/moto-api/recorder/start-recording")
    stages = {}
    base = ["--model_path", model, "--input_dir", s3_in, "--output_dir", f"{work}/parts", "--num_parts", "4", "--partition", "2x2",
            "--device", "cpu", "--disable_tta", "--final_output", out, "--chunk_size", "16,32,32", "--quiet"]
    for p in range(4):
        assert cli("predict", *base, "--part_id", p).returncode == 0
        stages[f"predict{p}"] = len(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    assert cli("blend", f"{work}/parts", out, "--quiet", "--seams_only").returncode == 0
    stages["blend"] = len(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    assert cli("finalize", f"{work}/parts", out, "--input_kind", "parts", "--quiet").returncode == 0
    requests.post(f"{s3_server}/moto-api/recorder/stop-recording")
    text = requests.get(f"{s3_server}/moto-api/recorder/download-recording").text
    log = parse_recording(text)
    bucket = s3[5:]

    def puts(entries):
        return [e["url"].split(f"/{bucket}/results/out.zarr/", 1)[1] for e in entries
                if e.get("method") == "PUT" and f"/{bucket}/results/out.zarr/" in e.get("url", "")
                and "/c/" in e["url"]]

    every = puts(log)
    assert every and len(every) == len(set(every)), "an output chunk was written twice"
    fs = s3fs.S3FileSystem()
    stored = {k.split("/results/out.zarr/", 1)[1] for k in fs.find(f"{bucket}/results/out.zarr") if "/c/" in k}
    assert set(every) == stored  # and every stored chunk came from one of those PUTs
    blend_puts = puts(parse_recording(text[stages["predict3"]:stages["blend"]]))
    level0_by_blend = {tuple(int(v) for v in k.split("/")[-3:]) for k in blend_puts if k.startswith("0/")}
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.store.partstore import load_parts

    layout = load_parts(Place(f"{work}/parts")).layout()
    assert level0_by_blend and {layout.kind(idx) for idx in level0_by_blend} == {SHARED}
    level0 = {tuple(int(v) for v in k.split("/")[-3:]) for k in every if k.startswith("0/")}
    by_parts = level0 - level0_by_blend
    assert {layout.kind(idx) for idx in by_parts} == {OWN, PAIR}
    assert {idx for idx in level0 if layout.kind(idx) == SHARED} == level0_by_blend


def test_worker_processes_on_s3_take_endpoint_and_keys_from_the_command_line_only(tmp_path, model2, s3, s3_server,
                                                                                  monkeypatch, volume_factory,
                                                                                  reference_run):
    """--devices cpu,cpu: one worker process per entry, each given every setting; the endpoint and keys
    exist only in --storage-options (the route that once lost them), never in a worker's argv."""
    import json
    import os

    import s3fs

    vol = smooth_volume((40, 48, 64), seed=11)
    s3_in = f"{s3}/scroll/in.zarr"
    write_zarr(s3_in, vol, chunks=(20, 24, 32))
    common = ["--model", model2, "--parts-per-gpu", "2", "--disable-tta", "--quiet", "--overlap", "0.25"]
    # one process: the same volume's plain local run with these settings (conftest.reference_run)
    one = reference_run(model2, volume_factory((40, 48, 64), seed=11, chunks=(20, 24, 32)), overlap=0.25).output
    saved = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    for k in (*saved, "VESUVIUS_STORAGE_OPTIONS"):
        monkeypatch.delenv(k, raising=False)
    so = json.dumps({"endpoint_url": s3_server, "key": "testing", "secret": "testing"})
    r = cli("pipeline", "--input", s3_in, "--output", f"{s3}/multi.zarr", "--workdir", f"{s3}/mwork",
            "--devices", "cpu,cpu", "--keep-intermediates", "--storage-options", so, *common)
    assert r.returncode == 0, r.stderr
    for k, v in saved.items():  # the test reads the outputs with the endpoint and keys again
        monkeypatch.setenv(k, v)
    multi = zarr.open_group(f"{s3}/multi.zarr", mode="r")
    assert np.array_equal(one, multi["0"][:])
    fs = s3fs.S3FileSystem()
    pids = [json.loads(fs.cat(f"{s3[5:]}/mwork/parts/part_{p:05d}.claim.json"))["pid"] for p in range(4)]
    assert len(set(pids)) == 4 and os.getpid() not in pids, pids  # every part ran in a worker process
