"""Models from s3:// (moto) and hf:// (a prepared cache, offline): one download shared by parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import requests
import zarr
from helpers import run_cli


def predict_cmd(model, inp, out, part, n, cache):
    return [sys.executable, "-m", "vesuvius_inference.cli", "predict", "--model_path", str(model), "--input_dir",
            str(inp), "--output_dir", str(out), "--part_id", str(part), "--num_parts", str(n), "--device", "cpu",
            "--disable_tta", "--quiet", "--model_cache_dir", str(cache)]


VOLUME = dict(shape=(40, 64, 64), seed=8, chunks=(20, 32, 32))


def blended(parts, out):
    r = run_cli("blend", parts, out, "--quiet")
    assert r.returncode == 0, r.stderr
    return zarr.open_array(str(out), mode="r")[:]


def test_s3_model_one_download_for_concurrent_parts(tmp_path, model2, s3, s3_server, volume_factory, reference_run):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(model2), f"{s3[5:]}/models/m2", recursive=True)
    inp = volume_factory(**VOLUME)
    cache = tmp_path / "cache"
    requests.post(f"{s3_server}/moto-api/recorder/reset-recording")
    requests.post(f"{s3_server}/moto-api/recorder/start-recording")
    procs = [subprocess.Popen(predict_cmd(f"{s3}/models/m2", inp, tmp_path / "remote", p, 3, cache),
                              stderr=subprocess.PIPE, text=True) for p in range(3)]
    errs = [p.communicate()[1] for p in procs]
    requests.post(f"{s3_server}/moto-api/recorder/stop-recording")
    assert all(p.returncode == 0 for p in procs), errs
    from helpers import parse_recording

    log = parse_recording(requests.get(f"{s3_server}/moto-api/recorder/download-recording").text)
    ckpt_gets = [r for r in log if r.get("method") == "GET" and "checkpoint_final.pth" in r.get("url", "")]
    assert len(ckpt_gets) == 2, [r["url"] for r in ckpt_gets]  # two folds, each fetched once for three parts
    assert sum("downloaded model" in e for e in errs) <= 1
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 1
    # the same model as a local folder (conftest.reference_run: 1 part, the same bytes as 3)
    assert np.array_equal(blended(tmp_path / "remote", tmp_path / "r.zarr"), reference_run(model2, inp).blended,
                          equal_nan=True)


def test_hf_model_from_prepared_cache_offline(tmp_path, model2, volume_factory, reference_run):
    cache = tmp_path / "cache"
    repo = cache / "hf" / "models--scrollprize--surface-test"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(model2, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    inp = volume_factory(**VOLUME)
    # real processes: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run(predict_cmd("hf://scrollprize/surface-test", inp, tmp_path / "hf", 0, 1, cache), env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(blended(tmp_path / "hf", tmp_path / "h.zarr"), reference_run(model2, inp).blended,
                          equal_nan=True)
    r = subprocess.run(predict_cmd("hf://scrollprize/not-cached", inp, tmp_path / "x", 0, 1, cache), env=env,
                       capture_output=True, text=True)
    assert r.returncode == 3 and "cannot get model" in r.stderr
