"""Inputs over plain HTTP(S), as public scroll volumes are served: read-only, no listing, same bytes."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import zarr
from helpers import run_cli, smooth_volume, write_zarr


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


cli = run_cli  # in-process (the HTTP server is a thread of this process either way)


def test_http_input_gives_the_local_bytes_and_http_output_is_refused(http_root, tmp_path, model2):
    root, url = http_root
    vol = smooth_volume((32, 64, 64), seed=21)
    vol[:, :, 32:] = 0  # absent chunks: 404 over HTTP, read as the fill value
    write_zarr(root / "in.zarr", vol, chunks=(16, 32, 32))
    common = ["--model", model2, "--disable-tta", "--quiet"]
    r = cli("pipeline", "--input", root / "in.zarr", "--output", tmp_path / "local.zarr", *common)
    assert r.returncode == 0, r.stderr
    r = cli("pipeline", "--input", f"{url}/in.zarr", "--output", tmp_path / "http.zarr", *common)
    assert r.returncode == 0, r.stderr
    local = zarr.open_group(str(tmp_path / "local.zarr"), mode="r")["0"][:]
    remote = zarr.open_group(str(tmp_path / "http.zarr"), mode="r")["0"][:]
    assert np.array_equal(local, remote)
    r = cli("predict", "--model_path", model2, "--input_dir", f"{url}/in.zarr", "--output_dir", f"{url}/parts",
            "--device", "cpu", "--disable_tta", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = [x for x in r.stderr.splitlines() if x.strip()][-1]
    assert last.startswith("error:") and "read-only" in last, last
    r = cli("pipeline", "--input", f"{url}/in.zarr", "--output", f"{url}/out.zarr", *common)
    assert r.returncode == 2 and "read-only" in r.stderr
    assert not (root / "out.zarr").exists() and not (root / "out.zarr_work").exists()
