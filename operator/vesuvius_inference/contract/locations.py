"""One answer to "is this the same place as that one?", for every spelling of a path or URL.

The check that an output is not the input used to compare strings: ``copy.zarr``, ``./copy.zarr``,
``/abs/copy.zarr``, ``file:///abs/copy.zarr``, a symlink to it and ``copy.zarr/0`` (one of its levels)
all got past it, and ``--overwrite`` then deleted the scan. Here every location is resolved before
any check:

- local paths (plain, ``file://``, ``local://``, relative, ``~``): absolute, ``..`` and symlinks
  resolved (``os.path.realpath``); nesting is also decided by the identity (device, inode) of each
  existing folder on the way up, so a bind mount or a second mount of the same disk is caught;
- object stores (``s3://``, ``s3a://``, ``gs://``, ``gcs://``, ``az://``...): protocol family +
  endpoint (``endpoint_url`` of the storage options or ``$AWS_ENDPOINT_URL``; AWS when unset) +
  bucket + key, with ``//``, ``.``, ``..`` and trailing slashes normalised;
- http(s): host (lower case, default port dropped) + path, normalised the same way;
- chained URLs (``zip://scan::/data/scan.zip``, ``simplecache::s3://b/k``): the last target.

Standard library only (os and urllib): the configuration's ``validate`` calls it before anything is
opened for writing, in the engine and in the torch-free operator image alike.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from vesuvius_inference.contract.errors import BadArguments

# fsspec protocol aliases that name the same service (fsspec.registry: s3/s3a, gs/gcs, az/abfs/adl...).
FAMILIES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "https": "http", "local": "file"}
OBJECT_STORES = ("s3", "gs", "az")
DEFAULT_PORTS = {"http": "80", "https": "443"}
READ_ONLY_SCHEMES = ("http://", "https://")


def join(url: str, *parts: str) -> str:
    """``url`` and path parts with one slash between each: URLs are not OS paths (no os.path.join)."""
    out = url.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def refuse_read_only_scheme(url: str, flag: str) -> None:
    """Refuse an output on a read-only scheme before any work is done."""
    if str(url).lower().startswith(READ_ONLY_SCHEMES):
        raise BadArguments(f"{flag} {url}: http(s) is read-only; write to a local path, file://, s3:// or gs://")


@dataclass(frozen=True)
class Location:
    """Where a URL points, spelled one way: ``service`` names the disk or bucket, ``key`` the path in it."""

    service: str
    key: tuple[str, ...]
    local_path: str | None = None  # the resolved path of a local location (for identity checks)

    def __str__(self) -> str:
        return self.local_path if self.local_path is not None else f"{self.service}/{'/'.join(self.key)}"

    def contains(self, other: Location) -> bool:
        """``other`` is this location or lies inside it."""
        if self.local_path is not None and other.local_path is not None:
            return _local_contains(self.local_path, other.local_path)
        return self.service == other.service and other.key[: len(self.key)] == self.key


def _endpoint(options: Mapping[str, Any]) -> str:
    """The S3-compatible endpoint a URL is served by: the options', else the environment's, else AWS."""
    client = options.get("client_kwargs") or {}
    url = (options.get("endpoint_url") or (client.get("endpoint_url") if isinstance(client, Mapping) else None)
           or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "")
    if not url:
        return "aws"
    p = urlsplit(str(url) if "://" in str(url) else f"https://{url}")
    host = (p.hostname or "").lower()
    port = p.port and str(p.port)
    if port and port != DEFAULT_PORTS.get(p.scheme.lower()):
        host = f"{host}:{port}"
    return host


def _key(path: str) -> tuple[str, ...]:
    norm = posixpath.normpath("/" + path.replace("\\", "/"))
    return tuple(p for p in norm.split("/") if p)


def _resolve_local(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path or "."))


def locate(url: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    """The canonical location of ``url`` (see the module's docstring for what counts as the same)."""
    text = str(url).strip()
    if "::" in text:  # fsspec URL chaining: the data lives at the last target
        text = text.rsplit("::", 1)[1]
    if "://" not in text:
        text = text[len("file:"):] if text.startswith("file:") else text
        path = _resolve_local(text)
        return Location("file", _key(path), path)
    scheme, _, rest = text.partition("://")
    family = FAMILIES.get(scheme.lower(), scheme.lower())
    if family == "file":
        path = _resolve_local(rest[len("localhost"):] if rest.startswith("localhost/") else rest)
        return Location("file", _key(path), path)
    if family in OBJECT_STORES:
        bucket, _, key = rest.partition("/")
        service = f"{family}://{_endpoint(storage_options or {}) if family == 's3' else family}/{bucket.lower()}"
        return Location(service, _key(key))
    if family == "http":
        p = urlsplit(text)
        host = (p.hostname or "").lower()
        if p.port and str(p.port) != DEFAULT_PORTS.get(scheme.lower()):
            host = f"{host}:{p.port}"
        return Location(f"http://{host}", _key(p.path))
    authority, _, key = rest.partition("/")
    return Location(f"{family}://{authority.lower()}", _key(key))


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _local_contains(outer: str, inner: str) -> bool:
    """``inner`` is ``outer`` or lies inside it, by resolved path or by the identity of an existing folder
    on ``inner``'s way up (a bind mount of ``outer`` elsewhere is the same folder)."""
    if inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep):
        return True
    target = _identity(outer)
    if target is None:
        return False
    probe = inner
    while True:
        if _identity(probe) == target:
            return True
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent


READ, WRITE, DELETE = "read", "write", "delete"


@dataclass(frozen=True)
class Named:
    """A location a command names, what it is called on the command line, and what the command does
    to it: reads it, writes into it, or deletes it once its work is done."""

    flag: str
    url: str
    role: str = READ


def overlaps(named: Sequence[Named], storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The first pair where a location the command writes or deletes is, contains or lies inside another
    location it names, as a one-line reason; None when they all stand apart.

    Two read-only locations may overlap (a model folder beside the scan is fine), and so may two that
    are both deleted at the end (``--also_delete`` of the workdir that holds the parts)."""
    located = [(n, locate(n.url, storage_options)) for n in named if n.url]
    for i, (a, la) in enumerate(located):
        for b, lb in located[i + 1:]:
            if a.role == b.role and a.role in (READ, DELETE):
                continue
            if la.contains(lb) and lb.contains(la):
                return f"{a.flag} {a.url} and {b.flag} {b.url} are the same place ({la})"
            if la.contains(lb):
                return f"{b.flag} {b.url} lies inside {a.flag} {a.url}"
            if lb.contains(la):
                return f"{a.flag} {a.url} lies inside {b.flag} {b.url}"
    return None


def refuse_overlaps(named: Sequence[Named], storage_options: Mapping[str, Any] | None = None) -> None:
    """Exit 2 before anything is opened for writing when a written location overlaps another one."""
    reason = overlaps(named, storage_options)
    if reason:
        raise BadArguments(f"{reason}: writing or removing one would change the other; give each its own place "
                           "(nothing was written)")
