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
from typing import Any

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage

log = logging.getLogger("vesuvius_inference")

MARK = ".vesuvius-inference.json"
WRITER = "vesuvius-inference"
WORK_NAMES = {"parts", "blended.zarr", MARK}  # paths.PARTS, paths.BLENDED: what a workdir holds


def mark(place: Place, what: str) -> None:
    """Mark ``place`` as a tree this program writes (idempotent: every part of a run may call it)."""
    target = place.join(MARK)
    if storage.read_json(target) is None:
        storage.write_json(target, {"written_by": WRITER, "what": what})


def _zarr_attrs(place: Place) -> dict[str, Any] | None:
    meta = storage.read_json(place.join("zarr.json"))
    if meta is not None:
        return meta.get("attributes") or {}
    return storage.read_json(place.join(".zattrs"))


def _is_parts_dir(place: Place, names: list[str]) -> bool:
    markers = [n for n in names if n.startswith("part_") and n.endswith(".json") and not n.endswith(".claim.json")]
    if not markers:
        return False
    doc = storage.read_json(place.join(markers[0])) or {}
    return "config" in doc and "run" in doc


def mark_of(place: Place) -> str | None:
    """What of ours ``place`` is ("output", "workdir", "parts", "demo"...), or None: not ours (or absent)."""
    doc = storage.read_json(place.join(MARK))
    if isinstance(doc, dict) and doc.get("written_by") == WRITER:
        return str(doc.get("what") or "work")
    attrs = _zarr_attrs(place)
    if isinstance(attrs, dict) and isinstance(attrs.get("vesuvius"), dict):
        return "output"
    names = storage.list_names(place)
    if _is_parts_dir(place, names):
        return "parts"
    if names and set(names) <= WORK_NAMES and "parts" in names:  # a workdir written before the mark existed
        parts = place.join("parts")
        return "workdir" if _is_parts_dir(parts, storage.list_names(parts)) else None
    return None


def remove_ours(place: Place, *, flag: str, strict: bool = True) -> bool:
    """Remove ``place`` if it is ours; True when something was removed.

    Not ours: ``strict`` refuses with one line (exit 3) before anything is removed; otherwise (a
    cleanup after the work is complete) it is left, with a warning, and the command still succeeds."""
    if not storage.exists(place):
        return False
    if mark_of(place) is None:
        message = (f"{flag} {place} was not written by vesuvius-inference (it carries no mark of ours), so it is "
                   "left untouched; remove it yourself if you mean to, or choose another location")
        if strict:
            raise BadInput(message)
        log.warning("warning: %s", message)
        return False
    storage.remove(place)
    return True
