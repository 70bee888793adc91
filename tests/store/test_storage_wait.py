"""A storage outage waits instead of failing (storagewait.py): the worker retries unreachable storage with
backoff for ``--storage_wait_s``, saying so once per attempt window, and carries on when the store is
back, with the bytes of an uninterrupted run; past the wait it exits 74 as before.

The stores are real servers on 127.0.0.1 (outage.py): an HTTP server over the Zarr folder and a proxy in
front of moto's S3 server, which reset connections, then stop listening, and are started again on the
same port while predict waits (time-scaled: seconds, not minutes). Subprocesses: the exit code and the
log lines of a real process are the point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import smooth_volume, write_zarr
from vesuvius_inference.contract.storagelines import waiting_line
from vesuvius_inference.store.storagewait import Outage as Clock
from vesuvius_inference.store.storagewait import call

from store.outage import Outage, free_port, proxy, serve_folder
from store.test_outages import PREDICT, final_of

SHAPE, CHUNKS = (16, 64, 96), (8, 32, 32)
WAITING = "storage unreachable ("


@pytest.fixture(scope="module")
def tiny_model(model_factory):
    return model_factory(patch=(16, 32, 32), folds=(0,), features=(2, 4, 8))


class Run:
    """predict as a subprocess whose stderr the test can watch while it runs."""

    def __init__(self, args: list, log: Path, env: dict | None = None) -> None:
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "vesuvius_inference.cli", "predict", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=self.out, env={**os.environ, **(env or {})})

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, count: int = 1, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text.count(needle) < count:
            assert self.proc.poll() is None, f"predict ended {self.proc.returncode} before {needle!r}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {needle!r} within {timeout:.0f}s:\n{self.text[-3000:]}"
            time.sleep(0.1)

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()


def test_backoff_is_bounded_and_one_line_per_window(caplog):
    """The pure clock: delays grow with the outage's age, stop at the wait, and a recovery resets it."""
    now = [0.0]
    clock = Clock(10.0, base_s=0.5, cap_s=4.0, clock=lambda: now[0], rng=lambda: 1.0)
    calls = []

    def flaky():
        calls.append(now[0])
        if now[0] < 6.0:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    def sleep(d):
        now[0] += d

    with caplog.at_level("WARNING", logger="vesuvius_inference.store.storage"):
        assert call(flaky, doing="reading x", outage=clock, sleep=sleep) == "ok"
    gaps = np.diff(calls)
    assert list(gaps[:3]) == [0.5, 0.5, 1.0] and max(gaps) <= 4.0, gaps  # grows with the age, capped
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(WAITING + "ConnectionRefusedError") and "reading x: retrying for up to 10s" in lines[0]
    assert len(lines) == len(calls)  # one per attempt window (one caller here), plus the recovery line
    assert lines[-1].startswith("storage reachable again after 8s")
    assert clock.began is None and clock.outages == 1
    # a permanent refusal (403) or a missing object is never waited on
    with pytest.raises(PermissionError):
        call(lambda: (_ for _ in ()).throw(PermissionError(13, "denied")), outage=clock, sleep=sleep)
    # past the wait: the error, said to be a wait that ran out
    now[0] = 100.0
    with pytest.raises(Exception) as e:
        call(lambda: (_ for _ in ()).throw(ConnectionResetError(104, "reset")), doing="writing y", outage=clock,
             sleep=sleep)
    assert e.value.exit_code == 74 and "--storage_wait_s 10" in str(e.value) and "writing y" in str(e.value)


def test_waiting_line_is_what_the_operator_reads():
    line = ("storage unreachable (ClientConnectorError: Cannot connect to host 127.0.0.1:1) reading http://x/in.zarr/c/0: "
            "retrying for up to 4m30s (--storage_wait_s 300)")
    assert waiting_line("progress predict 1/2: 3/10 patches (30.0%), 1.00 patches/s, ETA 7s\n" + line) == line
    assert waiting_line(line + "\nstorage reachable again after 12s (5 retries); continuing") is None
    assert waiting_line(line + "\nprogress predict 1/2: 4/10 patches (40.0%), 1.00 patches/s, ETA 6s") is None
    assert waiting_line("progress predict 1/2: 4/10 patches (40.0%), 1.00 patches/s, ETA 6s") is None


def test_http_input_gone_mid_run_and_back_is_waited_out(tmp_path, tiny_model):
    root = tmp_path / "www"
    write_zarr(root / "in.zarr", smooth_volume(SHAPE, seed=41), chunks=CHUNKS)
    port = free_port()
    url = f"http://127.0.0.1:{port}/in.zarr"
    with serve_folder(root, port) as store:
        clean = Run(["--model_path", tiny_model, "--input_dir", url, "--output_dir", tmp_path / "clean", *PREDICT,
                     "--quiet"], tmp_path / "clean.log")
        assert clean.wait() == 0, clean.text[-2000:]
        requests = store.outage.count
    gone = serve_folder(root, port, Outage(after=requests // 2, resets=2))
    run = Run(["--model_path", tiny_model, "--input_dir", url, "--output_dir", tmp_path / "work", *PREDICT,
               "--storage_wait_s", "60"], tmp_path / "work.log")
    try:
        run.wait_for(WAITING)  # it reset, then refused: predict waits instead of failing
        assert gone.outage.gone.wait(30)
        with serve_folder(root, port):  # back on the same port
            code = run.wait()
    finally:
        gone.stop()
        if run.proc.poll() is None:
            run.proc.kill()
    text = run.text
    assert code == 0, text[-3000:]
    waits = [ln for ln in text.splitlines() if ln.startswith(WAITING)]
    assert waits and url in waits[0] and "retrying for up to" in waits[0], text[-3000:]
    assert "storage reachable again after" in text and "error:" not in text
    np.testing.assert_array_equal(final_of(str(tmp_path / "work")), final_of(str(tmp_path / "clean")))


def test_outage_longer_than_the_wait_exits_74(tmp_path, tiny_model):
    url = f"http://127.0.0.1:{free_port()}/in.zarr"  # nothing listens there
    began = time.monotonic()
    run = Run(["--model_path", tiny_model, "--input_dir", url, "--output_dir", tmp_path / "out", *PREDICT,
               "--storage_wait_s", "3"], tmp_path / "log")
    code = run.wait()
    assert code == 74, run.text[-2000:]
    assert time.monotonic() - began >= 3
    last = [ln for ln in run.text.splitlines() if ln.strip()][-1]
    assert last.startswith("error:") and "--storage_wait_s 3" in last, last
    assert run.text.count(WAITING) >= 2  # one line per attempt window, not one per failed request
    assert run.text.count(WAITING) < 15, run.text


def test_s3_stopped_and_restarted_twice(s3, s3_server, tmp_path, tiny_model):
    """Everything on S3 behind a proxy: down when predict starts, back, gone again
    after the first checkpoint (reads, writes, the claim's renewals), back again: the run completes."""
    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = s3[5:]
    for f in sorted(Path(tiny_model).rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"{bucket}/model/{f.relative_to(tiny_model)}")
    inp = write_zarr(f"{s3}/in.zarr", smooth_volume(SHAPE, seed=42), chunks=CHUNKS)
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "2",
           "VESUVIUS_MODEL_CACHE_DIR": str(tmp_path / "cache")}
    args = ["--model_path", f"{s3}/model", "--input_dir", inp, *PREDICT, "--lease_s", "4"]
    with proxy(s3_server, port):
        clean = Run([*args, "--output_dir", f"{s3}/clean", "--quiet"], tmp_path / "clean.log", env=env)
        assert clean.wait() == 0, clean.text[-2000:]
    run = Run([*args, "--output_dir", f"{s3}/work", "--storage_wait_s", "60"], tmp_path / "work.log",
              env={**env, "VESUVIUS_MODEL_CACHE_DIR": str(tmp_path / "cache2")})
    second = None
    try:
        run.wait_for(WAITING)  # down at start: reading the input's metadata waits
        armed = (f"PUT /{bucket}/work/part_00000/", "checkpoint.json")
        second = proxy(s3_server, port, Outage(after=8, resets=2, armed_by=armed))
        run.wait_for("storage reachable again")
        seen = run.text.count(WAITING)
        assert second.outage.gone.wait(120), run.text[-3000:]  # gone again after a checkpoint
        run.wait_for(WAITING, count=seen + 1)
        second.stop()
        with proxy(s3_server, port):
            code = run.wait()
    finally:
        if second is not None:
            second.stop()
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 0, run.text[-3000:]
    assert run.text.count("storage reachable again") >= 2, run.text[-3000:]
    np.testing.assert_array_equal(final_of(f"{s3}/work"), final_of(f"{s3}/clean"))


def test_model_download_waits_for_the_store(s3, s3_server, tmp_path, tiny_model, caplog, monkeypatch):
    """The model download (model_source.py) waits too: a pod re-created after a failed download would
    download the model again, and on Kubernetes spend one of its part's retries."""
    import threading

    import s3fs
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.model.source import resolve_model
    from vesuvius_inference.store import storagewait

    fs = s3fs.S3FileSystem()
    bucket = s3[5:]
    for f in sorted(Path(tiny_model).rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"{bucket}/model/{f.relative_to(tiny_model)}")
    port = free_port()
    so = {"endpoint_url": f"http://127.0.0.1:{port}", "config_kwargs": {"retries": {"max_attempts": 1}}}
    monkeypatch.setattr(storagewait, "OUTAGE", storagewait.Outage(30.0))
    back = threading.Event()

    def restart_when_waited() -> None:
        deadline = time.monotonic() + 60
        while not any(r.getMessage().startswith(WAITING) for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        store = proxy(s3_server, port)
        back.set()
        done.wait(60)
        store.stop()

    done = threading.Event()
    with caplog.at_level("WARNING", logger="vesuvius_inference.store.storage"):
        t = threading.Thread(target=restart_when_waited, daemon=True)
        t.start()
        try:
            folder = resolve_model(Place(f"{s3}/model", so), cache_dir=str(tmp_path / "cache"))
        finally:
            done.set()
    assert back.is_set()
    assert (Path(folder) / "plans.json").read_bytes() == (Path(tiny_model) / "plans.json").read_bytes()
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(WAITING) and "downloading the model" in m for m in said), said
    assert any(m.startswith("storage reachable again") for m in said), said
