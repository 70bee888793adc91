"""URLs to filesystems and Zarr stores, markers and atomic small writes.

Every stage addresses data by URL (plain path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``)
so that the same command runs on a laptop and in a pod against object storage. This module is
shared by the engine and the control plane, so it must not import torch.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Literal

import fsspec
from fsspec.core import url_to_fs

from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.store.storagewait import waiting, waiting_store


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path for ``url``."""
    opts = dict(storage_options or {}) if not is_local(url) else {}
    try:
        return url_to_fs(url, **opts)
    except (ImportError, ValueError) as e:
        raise BadArguments(f"cannot open {url!r}: {e}") from None


def as_zarr_format(n: int) -> Literal[2, 3]:
    """A Zarr format number as zarr-python's functions take it (``Literal[2, 3]``); ValueError for others."""
    if n == 2:
        return 2
    if n == 3:
        return 3
    raise ValueError(f"Zarr format {n!r}: only 2 and 3 exist")


def zarr_store(url: str, storage_options: dict[str, Any] | None = None, read_only: bool = False) -> Any:
    """A zarr v3 store object for ``url`` (LocalStore for local paths, FsspecStore otherwise), whose requests
    wait out storage outages (storagewait.py)."""
    import zarr.storage

    if is_local(url):
        path = local_path(url)
        if not read_only:
            os.makedirs(path, exist_ok=True)
        return waiting_store(zarr.storage.LocalStore(path, read_only=read_only), url)
    opts = dict(storage_options or {})
    return waiting_store(zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=read_only), url)


@waiting("reading")
def read_json(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The JSON object at ``url``, or None when absent."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise BadInput(f"{url} is not valid JSON ({e.msg}); delete it or rerun with --overwrite") from None


def write_json(url: str, obj: Any, storage_options: dict[str, Any] | None = None) -> None:
    """Write JSON so that readers see the old object or the new one, never half of it."""
    write_bytes(url, json.dumps(obj, indent=1, sort_keys=True).encode(), storage_options)


@waiting("writing")
def write_bytes(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write an object so that readers see the old one or the new one, never half of it.

    Object stores make a PUT atomic already; on local disks write a temporary file and rename it.
    """
    if is_local(url):
        path = local_path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    fs, path = filesystem(url, storage_options)
    fs.pipe_file(path, data)


@waiting("deleting")
def remove(url: str, storage_options: dict[str, Any] | None = None, recursive: bool = True) -> None:
    """Delete ``url`` (a tree when recursive); absent is fine."""
    fs, path = filesystem(url, storage_options)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


@waiting("listing")
def list_names(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Base names directly under ``url`` (empty when absent)."""
    fs, path = filesystem(url, storage_options)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(str(e).rstrip("/")) for e in entries)


@waiting("measuring")
def tree_bytes(url: str, storage_options: dict[str, Any] | None = None) -> int:
    """Total size of the objects under ``url``: how intermediates are measured."""
    fs, path = filesystem(url, storage_options)
    try:
        return int(sum(fs.du(path, total=False).values())) if fs.exists(path) else 0
    except FileNotFoundError:
        return 0


@waiting("copying")
def copy_tree(src: str, dst: str, storage_options: dict[str, Any] | None = None) -> None:
    """Copy everything under ``src`` to ``dst`` (server-side on object stores)."""
    if is_local(src) and is_local(dst):
        import shutil

        shutil.copytree(local_path(src), local_path(dst), dirs_exist_ok=True)
        return
    fs, sp = filesystem(src, storage_options)
    _, dp = filesystem(dst, storage_options)
    fs.copy(sp.rstrip("/") + "/", dp.rstrip("/") + "/", recursive=True)
