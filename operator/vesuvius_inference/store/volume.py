"""Input volume access: Zarr v2/v3 arrays and OME-Zarr levels, chunk occupancy, region reads.

Scroll volumes are stored with absent chunks where there is only air (absent = fill value), so the
chunk listing tells which patches are empty before a single voxel is fetched.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from vesuvius_inference.contract.errors import BadArguments, BadInput, classify, is_transient, kind
from vesuvius_inference.contract.frame import Frame, triple
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.grid import ChunkGrid, Shape3
from vesuvius_inference.store import cpuquota, storage

log = logging.getLogger("vesuvius_inference.store.volume")


def _multiscales(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first OME-Zarr multiscales entry (0.4: group attributes; 0.5: under "ome")."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms[0] if ms else None


@dataclass
class InputVolume:
    """A (C, Z, Y, X) view of an input array, whatever its on-disk layout."""

    url: str
    array: Any  # zarr.Array
    has_channel_axis: bool
    frame: Frame = field(default_factory=Frame)  # the world frame of the chosen level
    where: str = "the input"  # which array of the input this is, for messages ("level 1 of the input")
    zarr_format: int = 3  # the input's Zarr format: outputs follow it by default
    cache_bytes: int = 0
    io_threads: int = field(default_factory=lambda: cpuquota.plan().io_threads)  # the CPU quota's, not 8
    _cache: OrderedDict[Shape3, np.ndarray] = field(default_factory=OrderedDict, repr=False)
    _cached: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    fetched_chunks: int = 0

    def fresh(self) -> InputVolume:
        """The same opened array with a chunk cache and counters of its own (one per part): what opening
        the input again gave, without reading its metadata, its parent group or its chunk listing again."""
        view = InputVolume(url=self.url, array=self.array, has_channel_axis=self.has_channel_axis, frame=self.frame,
                           where=self.where, zarr_format=self.zarr_format, io_threads=self.io_threads)
        if "occupancy" in self.__dict__:  # cached_property: the listing, when it was made
            view.__dict__["occupancy"] = self.__dict__["occupancy"]
        return view

    @property
    def channels(self) -> int:
        return int(self.array.shape[0]) if self.has_channel_axis else 1

    @property
    def shape(self) -> Shape3:
        return triple(int(s) for s in self.array.shape[-3:])

    @property
    def chunks(self) -> Shape3:
        return triple(int(c) for c in self.array.chunks[-3:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def fill_value(self) -> float:
        fv = self.array.fill_value
        return float(fv) if fv is not None else 0.0

    @property
    def chunk_grid(self) -> ChunkGrid:
        return ChunkGrid(self.shape, self.chunks)

    def read(self, lo: Shape3, hi: Shape3) -> np.ndarray:
        """Voxels of [lo, hi) as stored (C, dz, dy, dx): uint8 stays uint8 until the device normalises it.

        With a cache, whole chunks are fetched (in parallel) and kept in an LRU bounded by
        ``cache_bytes``, so overlapping patches do not fetch the same chunk again; chunks the
        listing shows absent are the fill value and never fetched.
        """
        if self.cache_bytes <= 0:
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            data = self.array[(slice(None),) + sl] if self.has_channel_axis else self.array[sl][None]
            return np.asarray(data)
        grid = self.chunk_grid
        ids = list(grid.touching(lo, hi))
        missing = [i for i in ids if i not in self._cache]
        if len(missing) > 1:
            with ThreadPoolExecutor(min(self.io_threads, len(missing))) as pool:
                fetched = list(pool.map(self._fetch, missing))
        else:
            fetched = [self._fetch(i) for i in missing]
        chunks = {i: self._cache[i] for i in ids if i in self._cache}
        chunks.update(zip(missing, fetched))
        for i in ids:
            if i in self._cache:
                self._cache.move_to_end(i)
        for i, data in zip(missing, fetched):
            self._put(i, data)
        out = np.empty((self.channels,) + tuple(b - a for a, b in zip(lo, hi)), dtype=self.dtype)
        for i in ids:
            clo, chi = grid.box(i)
            a = [max(x, y) for x, y in zip(lo, clo)]
            b = [min(x, y) for x, y in zip(hi, chi)]
            src = tuple(slice(x - c, y - c) for x, y, c in zip(a, b, clo))
            dst = tuple(slice(x - c, y - c) for x, y, c in zip(a, b, lo))
            out[(slice(None),) + dst] = chunks[i][(slice(None),) + src]
        return out

    def _fetch(self, idx: Shape3) -> np.ndarray:
        lo, hi = self.chunk_grid.box(idx)
        occ = self.occupancy
        if occ is not None and not occ[idx]:
            return np.full((self.channels,) + tuple(b - a for a, b in zip(lo, hi)), self.fill_value, dtype=self.dtype)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        data = self.array[(slice(None),) + sl] if self.has_channel_axis else self.array[sl][None]
        with self._lock:
            self.fetched_chunks += 1
        return np.asarray(data)

    def _put(self, idx: Shape3, data: np.ndarray) -> None:
        self._cache[idx] = data
        self._cached += data.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes

    @cached_property
    def occupancy(self) -> np.ndarray | None:
        """Which spatial chunks exist in the store (absent = all fill value), or None if unknown.

        A spatial chunk counts as present when any channel chunk at that position is.
        """
        from zarr.core.sync import sync

        store = self.array.store
        prefix = self.array.store_path.path
        prefix = prefix.rstrip("/") + "/" if prefix else ""

        async def _keys() -> set[str]:
            return {k[len(prefix):] async for k in store.list_prefix(prefix)}

        try:
            keys = sync(_keys())
        except Exception as e:  # stores that cannot list (plain HTTP) simply give no shortcut ...
            if is_transient(e):  # ... but a store that is down must not silently change the part split
                raise classify(e, f"listing the chunks of the input {self.url}") from e
            return None
        meta = self.array.metadata
        counts = self.chunk_grid.counts
        occ = np.zeros(counts, dtype=bool)
        cgrid = self.array.cdata_shape if hasattr(self.array, "cdata_shape") else None
        n_c = int(cgrid[0]) if (self.has_channel_axis and cgrid is not None) else 1
        for idx in np.ndindex(*counts):
            for c in range(n_c):
                coords = ((c,) + idx) if self.has_channel_axis else idx
                if meta.encode_chunk_key(coords) in keys:
                    occ[idx] = True
                    break
        return occ


def _parent_multiscales(place: Place, zarr_format: int, depth: int = 3) -> tuple[dict[str, Any], int, str] | None:
    """For an array given by its path inside an OME-Zarr group (``scroll.zarr/1``, ``img.zarr/s0/data``):
    the enclosing group's multiscales entry, the array's level in it and the group's URL. None if no
    group up to ``depth`` levels above lists the array. Storage trouble is raised, not taken for "none"."""
    import zarr

    url = place.url
    head, rel = url.rstrip("/"), ""
    for _ in range(depth):
        if "/" not in head.split("://", 1)[-1].strip("/"):
            return None  # the bucket or filesystem root: no group above
        head, _, last = head.rpartition("/")
        rel = f"{last}/{rel}".strip("/")
        try:
            group = zarr.open_group(store=storage.zarr_store(place.at(head), read_only=True), mode="r",
                                    zarr_format=storage.as_zarr_format(zarr_format))
        except Exception as e:  # not a group (absent, a plain folder): look one level up
            if is_transient(e):
                raise classify(e, f"reading the metadata above the input {url}") from e
            continue
        ms = _multiscales(dict(group.attrs))
        paths = [str(d.get("path", "")).strip("/") for d in (ms or {}).get("datasets", [])]
        if ms is not None and rel in paths:
            return ms, paths.index(rel), head
    return None


_warned_frames: set[str] = set()


def _array_frame(place: Place, node: Any, level: int) -> tuple[Frame, str]:
    """The frame of an input given as an array, and how to name it ("level 1 of scroll.zarr")."""
    url = place.url
    found = _parent_multiscales(place, int(node.metadata.zarr_format))
    if found is not None:
        ms, k, group = found
        if level != 0:
            raise BadArguments(f"--level {level} selects a level of an OME-Zarr group, but {url} is already level {k} "
                               f"of {group}: pass {group} with --level {level}, or this array without --level")
        return Frame.from_multiscales(ms, k), f"level {k} of {group}"
    if level != 0:
        raise BadArguments(f"--level {level} needs an OME-Zarr group, but {url} is a plain array")
    if url not in _warned_frames:  # once per process, however often the input is opened
        _warned_frames.add(url)
        log.warning("warning: input %s has no OME-Zarr multiscales (neither its own nor an enclosing group's): "
                    "the output will be in voxel units (scale 1, origin 0, no units)", url)
    return Frame(), "the input"


def _missing(place: Place) -> BadInput:
    """No Zarr node at ``place``: nothing there, or something else (a file, a zip archive, a folder of notes)."""
    from vesuvius_inference.store.whatsthere import not_zarr

    url = place.url
    try:
        found = not_zarr(place)
    except Exception as e:  # noqa: BLE001 - only the message depends on it; storage trouble shows on the read
        if kind(e) == "transient":
            raise classify(e, f"opening the input {url}") from e
        found = None
    if found is None:
        return BadInput(f"input {url} does not exist (expected a Zarr array or OME-Zarr group)")
    return BadInput(f"input {url} exists but is not a Zarr store: {found}")


def open_volume(place: Place, level: int = 0) -> InputVolume:
    """Open ``place`` as the model's input; one clear BadInput line for anything unusable.

    The world frame (scale, translation, units) comes from the OME-Zarr multiscales: the group's when
    ``url`` is a group (level ``level``), the enclosing group's when it is one of that group's arrays.
    """
    import zarr

    url = place.url
    try:
        store = storage.zarr_store(place, read_only=True)
        node = zarr.open(store=store, mode="r")
    except FileNotFoundError:
        raise _missing(place) from None
    except Exception as e:  # zarr raises a variety of errors for non-zarr paths; storage trouble is not one
        if kind(e) is not None:
            raise classify(e, f"opening the input {url}") from e
        raise BadInput(f"input {url} is not a readable Zarr array or group: {type(e).__name__}: {e}") from None
    if isinstance(node, zarr.Group):
        ms = _multiscales(dict(node.attrs))
        if ms is None:
            raise BadInput(f"input {url} is a Zarr group without OME-Zarr 'multiscales'; pass the array's path")
        paths = [d["path"] for d in ms["datasets"]]
        if not 0 <= level < len(paths):
            raise BadArguments(f"--level {level} is out of range: {url} has levels 0..{len(paths) - 1}")
        node = node[paths[level]]
        if not isinstance(node, zarr.Array):
            raise BadInput(f"input {url}: level {level} ({paths[level]}) is a Zarr group, not an array")
        frame, where = Frame.from_multiscales(ms, level), f"level {level} of the input"
    else:
        frame, where = _array_frame(place, node, level)
    if node.ndim not in (3, 4):
        raise BadInput(f"input {url} has {node.ndim} dimensions {tuple(node.shape)}; expected (Z,Y,X) or (C,Z,Y,X)")
    if np.dtype(node.dtype).kind not in "uif":
        raise BadInput(f"input {url} has dtype {node.dtype}; expected an integer or float type (uint8, uint16, float32)")
    if 0 in node.shape:
        raise BadInput(f"input {url} is empty: shape {tuple(node.shape)}")
    return InputVolume(url=url, array=node, has_channel_axis=node.ndim == 4, frame=frame, where=where,
                       zarr_format=int(node.metadata.zarr_format))
