"""The storage-wait log lines: written by a worker that waits out an outage (storagewait.py), read by the
operator from a pod's log tail (k8s/observe.py) for the ``StorageUnreachable`` condition. One format,
declared once, so the writer and the reader cannot drift apart. Standard library only.
"""

from __future__ import annotations

import re

PREFIX = "storage unreachable ("
RECOVERED = "storage reachable again"
_WAITING = re.compile(r"^storage unreachable \((?P<error>.*)\) ?(?P<doing>.*?): retrying for up to (?P<left>\S+)")


def waiting_line(text: str) -> str | None:
    """The storage-wait line a log tail ends in (a pod waiting on storage now), else None. For the operator:
    a later progress line or the 'reachable again' line means the wait is over."""
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        if line.startswith(PREFIX) and _WAITING.match(line):
            return line
        if line.startswith(RECOVERED) or line.startswith("progress ") or line.startswith("error:"):
            return None
    return None


def storage_answers(text: str) -> bool:
    """Whether a log tail shows the store working now: its last word on storage is a progress line or the
    'reachable again' line (not a wait, not an error). For the operator's outage clock (k8s/decide.py): a pod
    that prints nothing yet (starting, loading) says nothing either way."""
    for line in reversed([ln.strip() for ln in text.splitlines() if ln.strip()]):
        if line.startswith(RECOVERED) or line.startswith("progress "):
            return True
        if (line.startswith(PREFIX) and _WAITING.match(line)) or line.startswith("error:"):
            return False
    return False
