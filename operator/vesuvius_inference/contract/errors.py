"""Errors that map to the documented exit codes, and the one classifier every failure crosses.

0 done, 2 bad arguments, 3 bad input data or model (both never retried), 69 the device asked for
cannot be used here, 74 storage unreachable or failing, 75 another live run holds the work, 80 stopped
on request (SIGTERM, SIGINT) after a checkpoint, 1 any other failure; everything but 2 and 3 is transient (the Kubernetes Job retries it,
``podFailurePolicy`` fails the part at once on 2 and 3).

Whether a failure is worth a retry is decided here and nowhere else (kopf's TemporaryError /
PermanentError split, zarr's explicit ``ALLOWED_EXCEPTIONS``): the command line, the reader thread
and the stages all hand what they caught to :func:`classify`. Exceptions are recognised by class
name along their MRO (``module.Class``), so this module imports neither botocore nor aiohttp.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_INPUT = 3
EXIT_NO_DEVICE = 69  # sysexits' EX_UNAVAILABLE: the device asked for cannot be used here; retried elsewhere
EXIT_STORAGE = 74  # sysexits' EX_IOERR: storage unreachable or failing after the client's retries
EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: another live run holds this work; retry later
# A Kubernetes pod whose part was disrupted (evicted, preempted) more often than allowed: never retried
# (the operator's podFailurePolicy fails the index on it). Outside sysexits' 64-78 on purpose.
EXIT_DISRUPTION_LIMIT = 79
# Stopped on request (SIGTERM, SIGINT; a pipeline worker whose pipeline died) after the batch in flight, with
# a checkpoint written and the claim released: rerun me, the rerun resumes there. Not 143 (128 + SIGTERM):
# that is also what a process killed by SIGTERM before it could checkpoint reports. The predict Job's
# podFailurePolicy ignores it (k8s/manifests.py): a preempted part costs no retry.
EXIT_STOPPED = 80


class VesuviusError(Exception):
    """An error with a one-line message for the user and an exit code (1: a failure worth a retry)."""

    exit_code = EXIT_FAILED


class BadArguments(VesuviusError):
    """The command line or API arguments are wrong: fix the call."""

    exit_code = EXIT_BAD_ARGUMENTS


class BadInput(VesuviusError):
    """The input data, model or existing output is unusable: fix the data, never retry."""

    exit_code = EXIT_BAD_INPUT


class Busy(VesuviusError):
    """Another live run holds this unit of work (or took it over): this run stops, nothing is lost.

    Transient by design: a retry after the other run finished finds the work done; after it died
    (its lease expired) the retry takes the work over and resumes from its last checkpoint.
    """

    exit_code = EXIT_BUSY


class DeviceUnavailable(VesuviusError):
    """The device asked for (``--device cuda``, ``cuda:N``) cannot be used in this process or container.

    Never a silent fall-back to the CPU: on a GPU node a part would hold the GPU for hours at CPU
    speed. Transient for Kubernetes (the pod may land on a node whose GPU it can see); the operator
    reads this exit code and the error line to raise the GPUUnavailable condition.
    """

    exit_code = EXIT_NO_DEVICE


class DisruptedTooOften(VesuviusError):
    """This part's pods were evicted or preempted more often than the run allows (Kubernetes only):
    restarting it again would repeat the loop, so the part fails with this reason."""

    exit_code = EXIT_DISRUPTION_LIMIT


def disruption_refusal(part: int, disruptions: int, limit: int | None) -> DisruptedTooOften | None:
    """The error a pod raises at start when its index was disrupted more than ``limit`` times (None: run).
    ``disruptions`` is the Job controller's count of ignored failures of the index (the pod's
    batch.kubernetes.io/job-index-ignored-failure-count annotation)."""
    if limit is None or disruptions <= limit:
        return None
    return DisruptedTooOften(
        f"part {part} was disrupted {disruptions} times (evicted by the kubelet, preempted, or its storage "
        f"unreachable for storage.waitSeconds; the limit is "
        f"retry.maxDisruptionsPerPart={limit}): not starting it again. Node-pressure evictions pick pods that use "
        "more memory than they request first: raise the stage's memory request (spec.predict.resources) or "
        "lower inference.cacheGb, then bump spec.retryFailedParts")


class Stopped(VesuviusError):
    """Stopped on request (signals.py): completed work and the checkpoint are kept; a rerun resumes."""

    exit_code = EXIT_STOPPED


class StorageUnavailable(VesuviusError):
    """Storage did not answer, dropped the connection, timed out or failed with 5xx after the client's
    own retries. Nothing complete is lost: a rerun once it is back resumes from the last checkpoint."""

    exit_code = EXIT_STORAGE


# Connection-level failures, by "top-level module.Class" anywhere in the exception's MRO.
_TRANSIENT = {
    "builtins.ConnectionError", "builtins.TimeoutError",  # refused, reset, aborted, broken pipe; timeouts
    "aiohttp.ClientConnectionError", "aiohttp.ClientPayloadError",  # http(s):// through fsspec
    "botocore.ConnectionError", "botocore.HTTPClientError", "botocore.IncompleteReadError",  # s3://
    "http.IncompleteRead", "requests.ConnectionError", "requests.Timeout",  # hf:// downloads
}
_TRANSIENT_ERRNO = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE,
                    getattr(errno, "EREMOTEIO", errno.EIO)}  # s3fs: 503 SlowDown -> EBUSY, 500 -> EREMOTEIO
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestTimeTooSkewed"}
_CREDENTIALS = {"botocore.NoCredentialsError", "botocore.PartialCredentialsError"}
CREDENTIALS_HELP = ("no object-storage credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile "
                    "(on Kubernetes: spec.storage.secretName); for a public input bucket pass --input_anon "
                    "(unsigned reads), or --storage-options '{\"anon\": true}'")


def _names(exc: BaseException) -> set[str]:
    return {f"{c.__module__.split('.')[0]}.{c.__name__}" for c in type(exc).__mro__}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it was raised from (explicit cause first, else the implicit context)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _status(exc: BaseException) -> tuple[int | None, str]:
    """HTTP status and S3 error code of a botocore ClientError or an aiohttp ClientResponseError."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (int(status) if status else None), str(response.get("Error", {}).get("Code", ""))
    status = getattr(exc, "status", None)
    return (status if isinstance(status, int) else None), ""


def _one(e: BaseException) -> str | None:
    """'transient', 'denied', 'missing', 'credentials', 'refused' or None (not recognised) for one exception."""
    names = _names(e)
    if names & _CREDENTIALS:
        return "credentials"
    if names & _TRANSIENT:
        return "transient"
    if "builtins.PermissionError" in names:
        return "denied"
    if "builtins.FileNotFoundError" in names:
        return "missing"
    status, code = _status(e)
    if status is not None and ("botocore.ClientError" in names or "aiohttp.ClientResponseError" in names):
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return "transient"
        return "refused"
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO:
        return "transient"
    return None


def kind(exc: BaseException) -> str | None:
    """What the first recognised exception along the chain says (see ``_one``)."""
    for e in _chain(exc):
        found = _one(e)
        if found is not None:
            return found
    return None


def is_transient(exc: BaseException) -> bool:
    return kind(exc) == "transient"


def _text(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the library put in it


def _local_denial(exc: BaseException) -> str | None:
    """A local file system's permission error, in its own words: the path and this user, not credentials
    and bucket policies (an object store's PermissionError comes from a botocore or aiohttp error)."""
    import os

    chain = list(_chain(exc))
    if any(n.split(".")[0] in ("botocore", "aiohttp", "s3fs", "gcsfs") for e in chain for n in _names(e)):
        return None
    denied = next((e for e in chain if isinstance(e, PermissionError)), None)
    if denied is None or not denied.filename:
        return None
    try:
        import pwd

        user = f"{pwd.getpwuid(os.geteuid()).pw_name} (uid {os.geteuid()})"
    except (ImportError, KeyError, AttributeError):
        user = "this user"
    return (f"permission denied on {denied.filename}: {user} may not write there (or read it); choose a location "
            "this user can write, or change the folder's permissions")


def classify(exc: BaseException, doing: str = "") -> VesuviusError:
    """Every failure as one actionable line and its exit code; ``doing`` says what was being done.

    Unrecognised exceptions are failures worth a retry (exit 1) that name their type; a traceback is
    the command line's ``--debug``.
    """
    if isinstance(exc, VesuviusError):
        return exc
    what = f"{doing}: " if doing else ""
    found = kind(exc)
    if found == "transient":
        return StorageUnavailable(f"{what}storage unreachable or failing ({_text(exc)}); completed work is kept: "
                                  "rerun when the store answers again (a rerun resumes)")
    if found == "credentials":
        return BadInput(f"{what}{CREDENTIALS_HELP}")
    if found == "denied":
        local = _local_denial(exc)
        if local is not None:
            return BadInput(f"{what}{local}")
        return BadInput(f"{what}access denied ({_text(exc)}); check the credentials and the bucket policy "
                        "(write access for outputs)")
    if found == "missing":
        return BadInput(f"{what}not found ({_text(exc)}); check the path or URL")
    if found == "refused":
        return BadInput(f"{what}object storage refused the request ({_text(exc)})")
    if isinstance(exc, MemoryError) or "torch.OutOfMemoryError" in _names(exc):
        return VesuviusError(f"{what}out of memory ({_text(exc)}); lower --cache_gb or --batch_size")
    return VesuviusError(f"{what}unexpected {_text(exc)} (rerun with --debug for the traceback; if it repeats, "
                         "please report it)")


def classify_read(exc: BaseException, url: str) -> VesuviusError:
    """A failure while reading voxels of the input: storage trouble is transient, anything else that
    an unreadable chunk raises (a codec's ValueError or RuntimeError, a truncated object) is bad data."""
    found = classify(exc, f"reading the input {url}")
    if kind(exc) is None and isinstance(exc, (OSError, ValueError, RuntimeError)):
        return BadInput(f"reading the input {url} failed ({_text(exc)}): a corrupt or truncated chunk? "
                        "check the input")
    return found
