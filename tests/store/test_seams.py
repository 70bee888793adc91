"""Second-finisher merges of two-part seams on local disk (create-if-absent by hard link): races,
kills mid-merge, reruns (seamcase.py drives the real protocol); and whole predict processes racing and
killed mid-merge, against one part's bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr
from helpers import run_cli, smooth_volume, write_zarr
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import createonce

from store.seamcase import (
    check_frozen_holder_races_its_taker,
    check_killed_mid_merge,
    check_race,
    check_rerun_of_finished_parts,
)


def test_create_once_on_disk_admits_one_writer(tmp_path):
    url = Place(str(tmp_path / "x" / "obj"))
    assert createonce.create(url, b"one") and not createonce.create(url, b"two")
    assert createonce.read(url) == b"one" and createonce.read(Place(str(tmp_path / "none"))) is None
    assert os.listdir(tmp_path / "x") == ["obj"]  # no temporary file left behind


def test_create_once_trusts_the_link_count_when_nfs_answers_a_retransmitted_link(tmp_path, monkeypatch):
    """NFS: the first link() lands but its reply is lost; the client's retransmission answers EEXIST.
    open(2)'s recipe (the temporary file's link count is 2) tells the call that it did create the name;
    a name someone else created leaves the count at 1."""
    real_link = os.link

    def link_then_lost_reply(src, dst):
        real_link(src, dst)
        raise FileExistsError(17, "File exists", dst)

    monkeypatch.setattr(os, "link", link_then_lost_reply)
    url = Place(str(tmp_path / "obj"))
    assert createonce.create(url, b"one") and createonce.read(url) == b"one"
    monkeypatch.setattr(os, "link", real_link)
    assert not createonce.create(url, b"two") and createonce.read(url) == b"one"
    assert os.listdir(tmp_path) == ["obj"]


def test_both_parts_finishing_together_on_disk(tmp_path):
    check_race(str(tmp_path), {})


def test_killed_mid_merge_then_rerun_on_disk(tmp_path):
    check_killed_mid_merge(str(tmp_path), {})


def test_rerun_of_finished_parts_on_disk(tmp_path):
    check_rerun_of_finished_parts(str(tmp_path), {})


def test_a_frozen_former_holder_races_its_taker_on_disk(tmp_path):
    check_frozen_holder_races_its_taker(str(tmp_path), {})


def _predict(model, vol, parts, out, n, p, *extra):
    return [sys.executable, "-m", "vesuvius_inference.cli", "predict", "--model_path", str(model), "--input_dir", vol,
            "--output_dir", str(parts), "--final_output", str(out), "--part_id", str(p), "--num_parts", str(n),
            "--device", "cpu", "--disable_tta", "--chunk_size", "16,16,16", "--quiet", *extra]


def _in_process(argv):
    """A run that is neither raced nor killed: the entry function in this process (helpers.run_cli)."""
    r = run_cli(*argv[3:])  # without "python -m vesuvius_inference.cli"
    assert r.returncode == 0, r.stderr


def _blend(parts, out):
    _in_process([sys.executable, "-m", "vesuvius_inference.cli", "blend", str(parts), str(out), "--quiet"])
    return zarr.open_group(str(out), mode="r")["0"][:]


def test_predict_processes_race_and_one_is_killed_mid_merge(tmp_path, model_factory):
    """Two parts run at once (their seam chunks complete at about the same time); then, with part 0
    done, part 1 is SIGKILLed once it has merged a seam chunk into the output, and rerun. Both outputs
    equal one part's, and the markers show each seam chunk merged once, by predict."""
    model = model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((96, 48, 48), seed=21), chunks=(16, 32, 32))
    _in_process(_predict(model, vol, tmp_path / "p1", tmp_path / "o1.zarr", 1, 0, "--levels", "1"))
    ref = _blend(tmp_path / "p1", tmp_path / "o1.zarr")
    procs = [subprocess.Popen(_predict(model, vol, tmp_path / "race", tmp_path / "race.zarr", 2, p, "--levels", "1"))
             for p in (0, 1)]
    assert [p.wait() for p in procs] == [0, 0]
    markers = [json.loads((tmp_path / "race" / f"part_{p:05d}.json").read_text()) for p in (0, 1)]
    seams = [m["seams"] for m in markers]
    n_pairs = len(list((tmp_path / "race" / "_seams").glob("*/*")))
    assert n_pairs > 0 and sum(s.get("first", 0) for s in seams) == sum(s.get("second", 0) for s in seams) == n_pairs
    assert np.array_equal(_blend(tmp_path / "race", tmp_path / "race.zarr"), ref)

    kill, out = tmp_path / "kill", tmp_path / "kill.zarr"
    _in_process(_predict(model, vol, kill, out, 2, 0, "--levels", "1"))
    seam_rows = {int(k.name.split(".")[0]) for k in (kill / "_seams").glob("*/*")}
    before = {p for p in (out / "0" / "c").rglob("*") if p.is_file()}
    proc = subprocess.Popen(_predict(model, vol, kill, out, 2, 1, "--levels", "1", "--cache_gb", "0.000001"))
    deadline = time.time() + 120

    def merged() -> bool:
        return any(int(p.relative_to(out / "0" / "c").parts[1]) in seam_rows
                   for p in (out / "0" / "c").rglob("*") if p.is_file() and p not in before)

    while time.time() < deadline and proc.poll() is None and not merged():
        time.sleep(0.01)
    assert proc.poll() is None, "part 1 finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert merged() and not (kill / "part_00001.json").exists()
    _in_process(_predict(model, vol, kill, out, 2, 1, "--levels", "1"))
    assert np.array_equal(_blend(kill, out), ref)


def test_finalize_is_voxel_wise_so_seam_edges_can_be_stored_final():
    """A first finisher stores its edge voxels as the output's uint8: valid only while finalising a few
    voxels gives the bytes finalising the whole chunk gives them (every mode, NaN where not predicted)."""
    from vesuvius_inference.stages.finalize import finalize_chunk

    rng = np.random.default_rng(0)
    for classes in (2, 3):
        logits = (rng.normal(0, 4, (classes, 8, 12, 12))).astype(np.float16)
        logits[:, 2, 3:5] = np.nan
        for mode in ("binary", "multiclass"):
            for threshold in (False, True):
                whole = finalize_chunk(logits, mode, threshold)
                part = finalize_chunk(logits[:, 1:4, 2:9, 5:], mode, threshold)
                assert np.array_equal(whole[:, 1:4, 2:9, 5:], part), (classes, mode, threshold)
