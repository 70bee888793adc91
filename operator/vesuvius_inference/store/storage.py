"""Places to filesystems and Zarr stores, markers and atomic small writes.

Every stage addresses data by URL (plain path, ``file://``, ``s3://``, ``gs://``, ``http(s)://``), held
with the options that open it in one Place (contract/place.py), so that the same command runs on a
laptop and in a pod against object storage. This module must not import torch.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Literal

import fsspec
from fsspec.core import url_to_fs

from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store.storagewait import waiting, waiting_store


def is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def filesystem(place: Place) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path of ``place``."""
    try:
        return url_to_fs(place.url, **place.fs_options)
    except (ImportError, ValueError) as e:
        raise BadArguments(f"cannot open {place.url!r}: {e}") from None


def as_zarr_format(n: int) -> Literal[2, 3]:
    """A Zarr format number as zarr-python's functions take it (``Literal[2, 3]``); ValueError for others."""
    if n == 2:
        return 2
    if n == 3:
        return 3
    raise ValueError(f"Zarr format {n!r}: only 2 and 3 exist")


def zarr_store(place: Place, *, read_only: bool = False) -> Any:
    """A zarr v3 store object for ``place`` (LocalStore for local paths, FsspecStore otherwise), whose requests
    wait out storage outages (storagewait.py)."""
    import zarr.storage

    if place.is_local:
        path = place.local_path
        if not read_only:
            os.makedirs(path, exist_ok=True)
        return waiting_store(zarr.storage.LocalStore(path, read_only=read_only), place.url)
    store = zarr.storage.FsspecStore.from_url(place.url, storage_options=dict(place.options), read_only=read_only)
    return waiting_store(store, place.url)


@waiting("reading")
def read_json(place: Place) -> dict[str, Any] | None:
    """The JSON object at ``place``, or None when absent."""
    fs, path = filesystem(place)
    try:
        with fs.open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise BadInput(f"{place.url} is not valid JSON ({e.msg}); delete it or rerun with --overwrite") from None


def write_json(place: Place, obj: Any) -> None:
    """Write JSON so that readers see the old object or the new one, never half of it."""
    write_bytes(place, json.dumps(obj, indent=1, sort_keys=True).encode())


@waiting("writing")
def local_temp_copy(path: str, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path`` (its folder made): the first half of an atomic
    local write, which the caller completes by renaming (replace) or linking (create once) it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
    return tmp


def write_bytes(place: Place, data: bytes) -> None:
    """Write an object so that readers see the old one or the new one, never half of it.

    Object stores make a PUT atomic already; on local disks write a temporary file and rename it.
    """
    if place.is_local:
        path = place.local_path
        os.replace(local_temp_copy(path, data), path)
        return
    fs, path = filesystem(place)
    fs.pipe_file(path, data)


@waiting("deleting")
def remove(place: Place, *, recursive: bool = True) -> None:
    """Delete ``place`` (a tree when recursive); absent is fine."""
    fs, path = filesystem(place)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


@waiting("reading")
def exists(place: Place) -> bool:
    """Whether anything is stored at ``place`` (an object or a folder)."""
    fs, path = filesystem(place)
    return bool(fs.exists(path))


@waiting("listing")
def list_names(place: Place) -> list[str]:
    """Base names directly under ``place`` (empty when absent)."""
    fs, path = filesystem(place)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(str(e).rstrip("/")) for e in entries)


@waiting("measuring")
def tree_bytes(place: Place) -> int:
    """Total size of the objects under ``place``: how intermediates are measured."""
    fs, path = filesystem(place)
    try:
        return int(sum(fs.du(path, total=False).values())) if fs.exists(path) else 0
    except FileNotFoundError:
        return 0


@waiting("copying")
def copy_tree(src: Place, dst: Place) -> None:
    """Copy everything under ``src`` to ``dst`` (server-side on object stores: one filesystem, ``src``'s)."""
    if src.is_local and dst.is_local:
        import shutil

        shutil.copytree(src.local_path, dst.local_path, dirs_exist_ok=True)
        return
    fs, sp = filesystem(src)
    _, dp = filesystem(dst)
    fs.copy(sp.rstrip("/") + "/", dp.rstrip("/") + "/", recursive=True)
