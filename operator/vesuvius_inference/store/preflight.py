"""What can fail after the compute, checked before it: the output and the workdir as they stand.

An output that is already complete with these settings is done (nothing is predicted again); one
written with other settings is refused at once, naming each setting that differs (``--overwrite``
replaces it); a path that holds something other than a Zarr store, or a Zarr store vesuvius-inference
did not write (a scan: ``--output`` spelled differently from ``--input`` once deleted one), is refused
and never touched, ``--overwrite`` or not. The same for predict parts left in a workdir. And the
output must be writable.
The seed (and this project's previous release) found all of this out after predicting every part.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage

ABSENT, NOT_ZARR, FOREIGN, OURS = "absent", "not a Zarr store", "foreign", "ours"
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
IGNORED = ("from",)  # how an output was made (fused or from blended logits): the same bytes either way
# What each recorded key means on the command line, for the message naming what differs.
NAMES = {"input": "--input", "level": "--level", "shape": "the input's shape", "channels": "the input's channels",
         "dtype": "the input's dtype", "model": "the model's files", "folds": "--folds", "patch_size": "--patch_size",
         "overlap": "--overlap", "tta": "TTA", "skip_empty": "skipping empty patches",
         "chunk_size": "--chunk_size", "bbox": "--bbox", "frame": "the input's frame (voxel size, offset, units)",
         "labels": "the model's class names", "kind": "the output kind", "mode": "--mode", "threshold": "--threshold",
         "levels": "--levels", "num_parts": "the number of parts (--gpus, --devices, --parts-per-gpu)",
         "format": "the part format", "ngff": "--ngff_version (the output's format)",
         "input_zarr_format": "the input's Zarr format", "partition": "--partition",
         "seams": "where seams are merged (pairs: by predict, on stores with conditional writes; blend: by blend)"}


# Settings with an on and an off flag: a difference names the flag each run used (old -> new), never
# "--disable_tta false -> true", which read backwards.
SWITCHES = {"tta": ("--tta", "--disable_tta"), "skip_empty": ("--skip_empty_patches", "--no_skip_empty_patches")}


@dataclass(frozen=True)
class Existing:
    """What a path holds now."""

    state: str
    config: dict[str, Any] | None = None
    complete: bool = False
    names: list[str] = field(default_factory=list)


def inspect(place: Place) -> Existing:
    """ABSENT, NOT_ZARR (anything else: a file, a folder of notes), FOREIGN (a Zarr store we did not
    write) or OURS (with its recorded configuration and whether it is complete)."""
    fs, path = storage.filesystem(place)
    if not fs.exists(path):
        return Existing(ABSENT)
    if fs.isfile(path):
        return Existing(NOT_ZARR, names=[os.path.basename(path)])
    names = storage.list_names(place)
    if not names:
        return Existing(ABSENT)  # an empty folder (or an S3 prefix with nothing under it)
    if not any(n in names for n in ZARR_METADATA):
        return Existing(NOT_ZARR, names=names)
    meta = storage.read_json(place.join("zarr.json")) or {}
    attrs = meta.get("attributes") if meta else storage.read_json(place.join(".zattrs"))
    v = (attrs or {}).get("vesuvius")
    if not isinstance(v, dict) or "config" not in v:
        return Existing(FOREIGN, names=names)
    return Existing(OURS, v["config"], bool(v.get("complete")), names)


def _flat(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in ("predict", *IGNORED)}
    out.update({k: v for k, v in (config.get("predict") or {}).items() if k not in IGNORED})
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Each setting whose recorded value differs, as ``--overlap 0.5 -> 0.25``."""
    a, b = _flat(old), _flat(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            name = NAMES.get(key, key)
            if key in ("model", "frame", "labels", "shape"):
                out.append(f"{name} differ")
            elif key in SWITCHES and isinstance(a.get(key), bool) and isinstance(b.get(key), bool):
                on, off = SWITCHES[key]
                out.append(f"{on if a[key] else off} -> {on if b[key] else off}")
            else:
                out.append(f"{name} {_show(a.get(key))} -> {_show(b.get(key))}")
    return out


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The differences as one clause for a message: what the existing work was written with -> this run."""
    diff = differences(old, new)
    return "written with -> this run: " + "; ".join(diff) if diff else "no recorded setting differs"


def _show(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return "unset" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def not_ours(what: str) -> BadInput:
    """The refusal for a Zarr store somebody else wrote: no --overwrite advice, since it would not apply."""
    return BadInput(f"{what} is a Zarr store that vesuvius-inference did not write; it is left untouched "
                    "(--overwrite replaces only outputs of this program): choose another output")


def check_output(place: Place, expected: Mapping[str, Any], *, overwrite: bool, flag: str = "--output") -> Existing:
    """Refuse an output that cannot be (re)used; return what is there (``complete``: done already)."""
    url, found = place.url, inspect(place)
    if found.state == NOT_ZARR:
        raise BadInput(f"{flag} {url} exists and is not a Zarr store (it holds {_listing(found.names)}); it is left "
                       "untouched: choose another output, or remove it yourself")
    if found.state == FOREIGN:  # a scan, or anybody's image: never ours to replace, --overwrite or not
        raise not_ours(f"{flag} {url}")
    if found.state == OURS and differences(found.config or {}, expected) and not overwrite:
        raise BadInput(f"{flag} {url} was written with other settings ({settings_diff(found.config or {}, expected)}); "
                       "pass --overwrite to replace it, or choose another output")
    return found


def reusable(found: Existing, expected: Mapping[str, Any]) -> bool:
    """Whether what ``check_output`` found is this configuration's own (to finish or to skip)."""
    return found.state == OURS and not differences(found.config or {}, expected)


def foreign_parts(parts_dir: Place, expected_fp: Mapping[str, Any]) -> list[str]:
    """The differences of the first predict part in ``parts_dir`` made with another configuration."""
    for name in storage.list_names(parts_dir):
        if name.startswith("part_") and name.endswith(".json") and not name.endswith(".claim.json"):
            marker = storage.read_json(parts_dir.join(name)) or {}
            diff = differences({"predict": marker.get("config") or {}}, {"predict": dict(expected_fp)})
            if diff:
                return [f"{name}: {d}" for d in diff]
    return []


def require_writable(place: Place, flag: str = "--output") -> None:
    """Fail now, not after the compute, when ``place`` cannot be written (permissions, credentials)."""
    url = place.url
    if place.is_local:
        path = os.path.abspath(place.local_path)
        while not os.path.exists(path):
            path = os.path.dirname(path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise BadInput(f"{flag} {url}: {path} is not writable by this user; choose another output")
        return
    probe = place.join(f".vesuvius-write-probe-{uuid.uuid4().hex[:8]}")
    storage.write_json(probe, {"probe": True})  # PermissionError / NoCredentialsError -> one line, exit 3
    storage.remove(probe, recursive=False)
