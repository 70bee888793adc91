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


# ---- part ids of a retry Job, in an annotation --------------------------------------------------
#
# A retry Job runs a chosen set of parts: its index i is the i-th part id. The set travels in the Job's
# (and its pods') annotation ``vesuvius.dev/part-ids``, which the pod reads as a file through the downward
# API, never as a container argument: the kernel caps one argument at MAX_ARG_STRLEN (128 KiB; about
# 22,000 scattered ids as ranges) and Kubernetes caps all of an object's annotations at 256 KiB
# (apimachinery pkg/api/validation/objectmeta.go, TotalAnnotationSizeLimitB). Short sets stay readable
# ranges; a long one is a zlib-compressed bitmap in base64, at most ~17 KB for 100,000 parts whatever
# the set (a bitmap of 100,000 bits is 12.5 KB before compression).

BITMAP_PREFIX = "zb64:"
MAX_PLAIN = 8192  # bytes of a ranges string kept as-is


def encode_part_ids(ids: Iterable[int]) -> str:
    """``"3,17,40-42"`` when short, else ``"zb64:<base64 of zlib(bitmap)>"`` (bit i set: part i)."""
    import base64
    import zlib

    items = sorted(set(int(i) for i in ids))
    text = format_ranges(items)
    if len(text) <= MAX_PLAIN:
        return text
    bits = bytearray((items[-1] >> 3) + 1)
    for i in items:
        bits[i >> 3] |= 1 << (i & 7)
    return BITMAP_PREFIX + base64.b64encode(zlib.compress(bytes(bits), 9)).decode("ascii")


def decode_part_ids(text: str) -> list[int]:
    """The sorted part ids of :func:`encode_part_ids`'s text; ValueError when it is neither form."""
    import base64
    import binascii
    import zlib

    text = (text or "").strip()
    if not text.startswith(BITMAP_PREFIX):
        return sorted(parse_ranges(text))
    try:
        bits = zlib.decompress(base64.b64decode(text[len(BITMAP_PREFIX):], validate=True))
    except (binascii.Error, zlib.error, ValueError) as e:
        raise ValueError(f"bad part-id bitmap: {e}") from None
    return [(n << 3) + b for n, byte in enumerate(bits) if byte for b in range(8) if byte >> b & 1]
