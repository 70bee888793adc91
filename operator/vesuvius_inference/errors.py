"""Errors that map to the documented exit codes.

0 done, 2 bad arguments, 3 bad input data or model; anything else is transient (the Kubernetes
Job retries it, ``podFailurePolicy`` fails the part at once on 2 and 3).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_INPUT = 3


class VesuviusError(Exception):
    """An error with a one-line message for the user and an exit code."""

    exit_code = 1


class BadArguments(VesuviusError):
    """The command line or API arguments are wrong: fix the call."""

    exit_code = EXIT_BAD_ARGUMENTS


class BadInput(VesuviusError):
    """The input data, model or existing output is unusable: fix the data, never retry."""

    exit_code = EXIT_BAD_INPUT
