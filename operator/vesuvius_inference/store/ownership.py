"""What this program may delete: only what carries its own mark.

Every folder or prefix a command names and may later remove (``--overwrite``'s earlier output and
workdir, the pipeline's intermediates, ``finalize --delete_intermediates`` and ``--also_delete``, the
demo's folder) goes through :func:`remove_ours`, which removes a tree only when it is ours:

- an output or blended logits: a Zarr group or array whose attributes hold ``vesuvius`` (written with
  the array, before any chunk);
- a workdir, a predict parts directory, the demo's folder: the mark file ``.vesuvius-inference.json``
  written into it before anything else (:func:`mark`); a parts directory written before the mark
  existed is recognised by its part markers (``part_NNNNN.json`` with a ``config`` and a ``run``).

A scan, a folder of notes, a Zarr store somebody else wrote: never removed, ``--overwrite`` or not.
Removals inside a tree that is ours (a part's spills and checkpoint, a stale run's store, claims and
journals, the pyramid's staging blocks) use names paths.py derives under such a tree. The README's
"What this program may delete" lists every removal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.store import storage

log = logging.getLogger("vesuvius_inference")

MARK = ".vesuvius-inference.json"
WRITER = "vesuvius-inference"
WORK_NAMES = {"parts", "blended.zarr", MARK}  # paths.PARTS, paths.BLENDED: what a workdir holds


def mark(url: str, so: Mapping[str, Any], what: str) -> None:
    """Mark ``url`` as a tree this program writes (idempotent: every part of a run may call it)."""
    target = storage.join(url, MARK)
    if storage.read_json(target, dict(so)) is None:
        storage.write_json(target, {"written_by": WRITER, "what": what}, dict(so))


def _zarr_attrs(url: str, so: dict[str, Any]) -> dict[str, Any] | None:
    meta = storage.read_json(storage.join(url, "zarr.json"), so)
    if meta is not None:
        return meta.get("attributes") or {}
    return storage.read_json(storage.join(url, ".zattrs"), so)


def _is_parts_dir(url: str, so: dict[str, Any], names: list[str]) -> bool:
    markers = [n for n in names if n.startswith("part_") and n.endswith(".json") and not n.endswith(".claim.json")]
    if not markers:
        return False
    doc = storage.read_json(storage.join(url, markers[0]), so) or {}
    return "config" in doc and "run" in doc


def mark_of(url: str, so: Mapping[str, Any]) -> str | None:
    """What of ours ``url`` is ("output", "workdir", "parts", "demo"...), or None: not ours (or absent)."""
    opts = dict(so)
    doc = storage.read_json(storage.join(url, MARK), opts)
    if isinstance(doc, dict) and doc.get("written_by") == WRITER:
        return str(doc.get("what") or "work")
    attrs = _zarr_attrs(url, opts)
    if isinstance(attrs, dict) and isinstance(attrs.get("vesuvius"), dict):
        return "output"
    names = storage.list_names(url, opts)
    if _is_parts_dir(url, opts, names):
        return "parts"
    if names and set(names) <= WORK_NAMES and "parts" in names:  # a workdir written before the mark existed
        parts = storage.join(url, "parts")
        return "workdir" if _is_parts_dir(parts, opts, storage.list_names(parts, opts)) else None
    return None


def exists(url: str, so: Mapping[str, Any]) -> bool:
    fs, path = storage.filesystem(url, dict(so))
    return bool(fs.exists(path))


def remove_ours(url: str, so: Mapping[str, Any], *, flag: str, strict: bool = True) -> bool:
    """Remove ``url`` if it is ours; True when something was removed.

    Not ours: ``strict`` refuses with one line (exit 3) before anything is removed; otherwise (a
    cleanup after the work is complete) it is left, with a warning, and the command still succeeds."""
    if not exists(url, so):
        return False
    if mark_of(url, so) is None:
        message = (f"{flag} {url} was not written by vesuvius-inference (it carries no mark of ours), so it is "
                   "left untouched; remove it yourself if you mean to, or choose another location")
        if strict:
            raise BadInput(message)
        log.warning("warning: %s", message)
        return False
    storage.remove(url, dict(so))
    return True
