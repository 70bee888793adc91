"""The one classifier: the exceptions the real clients raise (botocore, s3fs's translation, aiohttp,
the standard library), built here as those libraries build them, and the exit code each gets.
Storage that is unreachable or failing is transient (74), missing data, denied access and missing
credentials permanent (3), the rest a failure worth a retry (1). The end-to-end cases (servers that
go away) are tests/store/test_outages.py."""

from __future__ import annotations

import errno

import pytest
from vesuvius_inference.contract.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_STORAGE,
    BadInput,
    classify,
    classify_read,
)


def client_error(status: int, code: str):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def via_s3fs(e: Exception) -> Exception:
    """What s3fs raises for a botocore ClientError after its own retries."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(e)


def aiohttp_status(status: int):
    """What fsspec's HTTP filesystem raises (``raise_for_status``) for a status other than 404."""
    import aiohttp
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    url = URL("http://127.0.0.1:1/in.zarr/zarr.json")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=status, message="x")


def transient_cases():
    import aiohttp
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

    return {
        "refused": ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        "reset": ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        "timeout": TimeoutError("timed out"),
        "botocore endpoint": EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"),
        "botocore closed": ConnectionClosedError(endpoint_url="http://127.0.0.1:1/b/k"),
        "botocore read timeout": ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/k"),
        "s3 503 SlowDown via s3fs": via_s3fs(client_error(503, "SlowDown")),
        "s3 500 via s3fs": via_s3fs(client_error(500, "InternalError")),
        "s3 502 unknown code": client_error(502, "BadGateway"),
        "aiohttp disconnected": aiohttp.ServerDisconnectedError(),
        "aiohttp 503": aiohttp_status(503),
    }


def permanent_cases():
    from botocore.exceptions import NoCredentialsError

    return {
        "not found": FileNotFoundError(errno.ENOENT, "No such file", "/x"),
        "s3 NoSuchKey via s3fs": via_s3fs(client_error(404, "NoSuchKey")),
        "s3 AccessDenied via s3fs": via_s3fs(client_error(403, "AccessDenied")),
        "s3 InvalidAccessKeyId": client_error(403, "InvalidAccessKeyId"),
        "aiohttp 403": aiohttp_status(403),
        "no credentials": NoCredentialsError(),
    }


@pytest.mark.parametrize("name", list(transient_cases()))
def test_storage_trouble_is_transient(name):
    exc = transient_cases()[name]
    err = classify(exc, "reading the input s3://b/in.zarr")
    assert err.exit_code == EXIT_STORAGE, (name, err)
    assert str(err).startswith("reading the input s3://b/in.zarr: storage unreachable")
    assert "\n" not in str(err)
    wrapped = RuntimeError("zarr could not read a chunk")  # a library that re-raises keeps the cause
    wrapped.__cause__ = exc
    assert classify(wrapped).exit_code == EXIT_STORAGE


@pytest.mark.parametrize("name", list(permanent_cases()))
def test_missing_denied_and_no_credentials_are_permanent(name):
    err = classify(permanent_cases()[name])
    assert err.exit_code == EXIT_BAD_INPUT, (name, err)
    if name == "no credentials":
        assert "--input_anon" in str(err)


def test_the_reader_thread_tells_a_bad_chunk_from_a_store_that_went_away():
    assert classify_read(ConnectionResetError(errno.ECONNRESET, "reset"), "u").exit_code == EXIT_STORAGE
    bad = classify_read(RuntimeError("error during blosc decompression: -1"), "u")
    assert isinstance(bad, BadInput) and "corrupt" in str(bad)


def test_anything_else_is_one_line_worth_a_retry():
    err = classify(KeyError("surprise"))
    assert err.exit_code == EXIT_FAILED and "KeyError" in str(err) and "--debug" in str(err)
    assert classify(MemoryError()).exit_code == EXIT_FAILED and "--cache_gb" in str(classify(MemoryError()))
