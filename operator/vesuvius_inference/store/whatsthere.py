"""What a URL holds when it is not what a stage expected: the words for its error line.

"does not exist" for a file that exists sends a user looking for a typo that is not there. An input
that is there but is not a Zarr store (a plain file, a zip archive, a folder of notes) says what it
is, and for a zip archive the URL that reads the store inside it (fsspec's chained ``zip://``); a
stage given a Zarr store of the wrong kind (finalize given the scan) says what it was given.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from typing import Any

from vesuvius_inference.contract.locations import join
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage

ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")  # a Zarr v3 node, a v2 array, a v2 group
ZIP_MAGIC = b"PK\x03\x04"


def listing(names: Iterable[str], shown: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def zip_store_root(names: Iterable[str]) -> str | None:
    """The folder inside a zip archive that holds the Zarr store ('' for the archive's root), else None."""
    roots = [os.path.dirname(n.rstrip("/")) for n in names if os.path.basename(n.rstrip("/")) in ZARR_METADATA]
    return min(roots, key=lambda r: (r.count("/"), r)) if roots else None


def _zip_words(url: str, fs: Any, path: str) -> str:
    """A zip archive: the ``zip://`` URL of the store inside it, from the archive's directory (zipfile reads
    it from the end of the file: a few range reads on object storage)."""
    try:
        with fs.open(path, "rb") as f, zipfile.ZipFile(f) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return f"it is a zip archive: read a Zarr store inside it as zip://<folder in the archive>::{url}"
    root = zip_store_root(names)
    if root is None:
        return f"it is a zip archive with no Zarr store inside (it holds {listing(names)})"
    return f"it is a zip archive: read the Zarr store inside it as zip://{root}::{url}"


def not_zarr(place: Place) -> str | None:
    """None when nothing is at ``url``; else what is there (for "exists but is not a Zarr store: ...").
    Called once a Zarr open has failed, so a store with Zarr metadata is not expected here; one that has
    it (an unreadable one) gets None too, and the caller's own message stands."""
    url = place.url
    fs, path = storage.filesystem(place)
    if not fs.exists(path):
        return None
    if fs.isfile(path):
        try:
            with fs.open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            head = b""
        if head == ZIP_MAGIC or path.lower().endswith(".zip"):
            return _zip_words(url, fs, path)
        size = fs.size(path) or 0
        return (f"it is a file ({os.path.basename(path)}, {_size(int(size))}); a Zarr store is a folder or prefix "
                "holding zarr.json (Zarr v3) or .zarray/.zgroup (Zarr v2)")
    names = storage.list_names(place)
    if any(n in names for n in ZARR_METADATA):
        return None
    if not names:
        return "it is an empty folder"
    words = f"it holds {listing(names)}, and no zarr.json, .zarray or .zgroup"
    for n in names[:20]:  # a store one folder down: the user named its parent
        if any(fs.exists(f"{path.rstrip('/')}/{n}/{m}") for m in ZARR_METADATA):
            return f"{words}; {n} in it is one: pass {child(url, n)}"
    return words


def child(url: str, name: str) -> str:
    """``url``/``name``; in a chained URL the path of its first filesystem (``zip://a::x.zip`` -> ``zip://a/b::x.zip``)."""
    if "::" not in url:
        return join(url, name)
    head, _, tail = url.partition("::")
    proto, _, inner = head.partition("://")
    return f"{proto}://{(inner.strip('/') + '/' + name).strip('/')}::{tail}"
