"""Index-range strings like Kubernetes Job status: ``"0-41,43,45-63"``.

Status stays O(number of ranges) whatever the number of parts (up to 100,000), as in
``status.completedIndexes`` of an Indexed Job.
"""

from __future__ import annotations

from collections.abc import Iterable


def format_ranges(indexes: Iterable[int]) -> str:
    """Sorted, merged ranges; ``""`` for none."""
    out: list[str] = []
    items = sorted(set(int(i) for i in indexes))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str | None) -> set[int]:
    """The set of indexes in a range string; raises ValueError on malformed input."""
    out: set[int] = set()
    for part in (text or "").replace(" ", "").split(","):
        if not part:
            continue
        a, sep, b = part.partition("-")
        lo, hi = int(a), int(b) if sep else int(a)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad index range {part!r}")
        out.update(range(lo, hi + 1))
    return out


def count_ranges(text: str | None) -> int:
    """How many indexes a range string holds, without expanding it."""
    total = 0
    for part in (text or "").replace(" ", "").split(","):
        if part:
            a, sep, b = part.partition("-")
            total += (int(b) - int(a) + 1) if sep else 1
    return total
