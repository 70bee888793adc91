"""``vesuvius-inference check``: is a stage's work on storage complete? For Jobs the operator never saw end.

The operator has no storage credentials; when a stage's Job vanished before its end was seen (a short
``ttlSecondsAfterFinished``, the operator down), it runs a small check Job with the stage's own
credentials and reads the answer from the Job: exit 0 the stage's work is complete, exit
:data:`EXIT_INCOMPLETE` it is not (a FailJob rule, so no retry), anything else a transient failure
(retried). One line says what was found, on stdout and in the container's termination message, which
the operator shows. Cheap by construction: predict's part markers are one listing of the parts
directory (a marker is written last, after its claim completed: partstore.py), finalize's completion
is one read of the output group's metadata (output.is_complete). Torch-free.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

EXIT_COMPLETE = 0
EXIT_INCOMPLETE = 10
TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE = 3072  # the kubelet keeps at most 4096 bytes of a termination message
# partstore.marker_url's names (tests/engine keeps the two equal): part_00003.json
PART_MARKER = re.compile(r"^part_(\d{5,})\.json$")


def markers_present(names: Iterable[str]) -> set[int]:
    return {int(m.group(1)) for m in (PART_MARKER.match(n) for n in names) if m}


def predict_verdict(present: set[int], num_parts: int) -> tuple[bool, str]:
    from .k8s.ranges import format_ranges

    missing = sorted(set(range(num_parts)) - present)
    if not missing:
        return True, f"complete: all {num_parts} predict parts have their markers"
    text = format_ranges(missing)
    if len(text) > MAX_MESSAGE - 200:
        text = text[:MAX_MESSAGE - 200].rsplit(",", 1)[0] + ",..."
    return False, f"incomplete: {len(missing)} of {num_parts} predict parts have no marker: parts {text}"


def check_predict(parts_dir: str, num_parts: int, storage_options: dict[str, Any] | None = None) -> tuple[bool, str]:
    from . import storage

    try:
        names = storage.list_names(parts_dir, storage_options or {})
    except FileNotFoundError:
        names = []
    return predict_verdict(markers_present(names), num_parts)


def check_finalize(output: str, storage_options: dict[str, Any] | None = None) -> tuple[bool, str]:
    from .output import is_complete

    if is_complete(output, storage_options or {}):
        return True, f"complete: {output} is marked complete"
    return False, f"incomplete: {output} is not marked complete"


def report(message: str, path: str = TERMINATION_LOG) -> None:
    """The verdict line into the termination message (when the file is writable, as in a container)."""
    if os.path.exists(path) and os.access(path, os.W_OK):
        with open(path, "w", encoding="utf-8") as f:
            f.write(message[:MAX_MESSAGE])
