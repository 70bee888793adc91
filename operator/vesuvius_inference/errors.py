"""Errors that map to the documented exit codes.

0 done, 2 bad arguments, 3 bad input data or model, 75 another live run holds the work;
anything else is transient (the Kubernetes
Job retries it, ``podFailurePolicy`` fails the part at once on 2 and 3).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_INPUT = 3
EXIT_NO_DEVICE = 69  # sysexits' EX_UNAVAILABLE: the device asked for cannot be used here; retried elsewhere
EXIT_BUSY = 75  # sysexits' EX_TEMPFAIL: another live run holds this work; retry later
# A Kubernetes pod whose part was disrupted (evicted, preempted) more often than allowed: never retried
# (the operator's podFailurePolicy fails the index on it). Outside sysexits' 64-78 on purpose.
EXIT_DISRUPTION_LIMIT = 79


class VesuviusError(Exception):
    """An error with a one-line message for the user and an exit code."""

    exit_code = 1


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
        f"part {part} was disrupted {disruptions} times (evicted by the kubelet or preempted; the limit is "
        f"retry.maxDisruptionsPerPart={limit}): not starting it again. Node-pressure evictions pick pods that use "
        "more memory than they request first: raise the stage's memory request (spec.predict.resources) or "
        "lower inference.cacheGb, then bump spec.retryFailedParts")


def classify(exc: BaseException) -> VesuviusError | None:
    """Storage failures that no retry will fix, as one actionable line (None: leave it transient).

    s3fs and gcsfs turn NoSuchBucket/NoSuchKey into FileNotFoundError and AccessDenied into
    PermissionError; missing credentials surface as botocore's NoCredentialsError.
    """
    if isinstance(exc, VesuviusError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, PermissionError):
        return BadInput(f"access denied: {exc}; check the credentials and the bucket policy (write access for outputs)")
    if isinstance(exc, FileNotFoundError):
        return BadInput(f"not found: {exc}; check the bucket and path")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return BadInput("no object-storage credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, "
                        "or pass --storage-options '{\"anon\": true}' for public data")
    if name == "ClientError":
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "NoSuchKey", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidBucketName", "AllAccessDisabled"):
            return BadInput(f"object storage refused the request ({code}): {exc}")
    return None
