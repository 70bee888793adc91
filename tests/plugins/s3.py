"""A real S3 API for tests: moto's server on 127.0.0.1, reached through s3fs like production.

A pytest plugin (tests/conftest.py's ``pytest_plugins``): tests/store and the other layers' folders,
tests/k8s and tests/images share one server per session (per xdist worker).
"""

from __future__ import annotations

import logging
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _atomic_conditional_puts() -> None:
    """Make moto's PutObject atomic, as S3 is: moto checks If-Match / If-None-Match and then stores
    (moto/s3/responses.py, S3Response.put_object) while other requests run on werkzeug's threads, so two
    conditional writes can both pass the check. S3 admits one: "If multiple conditional writes occur for
    the same object name, the first write operation to finish succeeds" (AWS S3 User Guide,
    conditional-writes.html); Elasticsearch's S3 test fixture does the same in one atomic compute()."""
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "_atomic", False):
        return
    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    put_object._atomic = True
    S3Response.put_object = put_object


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    import os

    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()

    os.environ["MOTO_RECORDER_FILEPATH"] = str(tmp_path_factory.mktemp("moto") / "recording")

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """Credentials and endpoint as a user sets them (env), plus a fresh bucket; returns the bucket URL."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{bucket}"
