"""The outputs and the one writer of their chunks: blended float16 logits, or the final uint8 image.

Whoever owns an output chunk (a predict part for the chunk rows only it covers, blend for the seam
rows, finalize for a standalone conversion) writes it through ``ChunkWriter``, once, as blended
logits or finalized (``finalize_chunk``: the same pure function everywhere, so a fused run and a
two-stage run give the same bytes). Arrays are created by whichever writer comes first; creation
never deletes anything (two parts starting together write identical metadata), and an output of
another configuration is refused unless the caller, the only writer at that moment, asks to
overwrite it. The ``complete`` flag (and for final outputs the OME metadata) is written last, by the
stage that finishes the output, so an incomplete output never looks like an image.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract.config import MODES
from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.frame import Frame, triple
from vesuvius_inference.contract.locations import refuse_read_only_scheme
from vesuvius_inference.contract.ngff import (
    NGFF_VERSION,
    NGFF_VERSIONS,
    class_names,
    group_attributes,
    image_metadata,
    label_metadata,
    level_shapes,
)
from vesuvius_inference.contract.place import Place
from vesuvius_inference.contract.prechecks import check_pyramid
from vesuvius_inference.geometry.downsample import MEAN, MODE, downsample2
from vesuvius_inference.geometry.grid import ChunkGrid, Shape3
from vesuvius_inference.store import storage
from vesuvius_inference.store.iopool import WritePool
from vesuvius_inference.store.ownership import remove_ours
from vesuvius_inference.store.preflight import not_ours, settings_diff

DATA_PATH = "0"
# Blended logits record the parts they were blended from: finalize --delete_intermediates removes both.
PARTS_NOTE = "parts"
# how the work was split and where seams were merged: recorded with the parts, never changing an output byte
SPLIT_KEYS = ("num_parts", "partition", "seams")
BLENDED, FINAL = "blended", "final"


def blosc(zarr_format: int = 3) -> Any:
    """blosc-zstd level 1 with byte shuffle, as a Zarr v3 codec or (v2) the numcodecs compressor."""
    if zarr_format == 2:
        from numcodecs import Blosc

        return Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")


def output_channels(mode: str, threshold: bool, num_classes: int) -> int:
    if mode not in MODES:
        raise BadArguments(f"--mode must be binary or multiclass, got {mode!r}")
    if mode == "binary":
        if num_classes > 2:
            raise BadInput(f"the model has {num_classes} classes: binary mode needs 1 or 2; use --mode multiclass")
        return 1
    return 1 if threshold else num_classes


def finalize_chunk(logits: np.ndarray, mode: str, threshold: bool) -> np.ndarray:
    """(C, ...) float16 logits -> (C_out, ...) uint8. Pure; every finalizing writer uses it."""
    x = logits.astype(np.float32)
    missing = np.isnan(x).any(axis=0)
    x = np.nan_to_num(x, nan=0.0)
    c = x.shape[0]
    if c == 1:
        if threshold:
            out = (x[0] > 0).astype(np.uint8)[None]
        else:
            p = 1.0 / (1.0 + np.exp(-np.clip(x[0], -80, 80)))
            out = np.rint(p * 255).astype(np.uint8)[None]
    else:
        if threshold:
            out = np.argmax(x, axis=0).astype(np.uint8)[None]
        else:
            x = x - x.max(axis=0, keepdims=True)
            e = np.exp(x)
            p = e / e.sum(axis=0, keepdims=True)
            probs = np.rint(p * 255).astype(np.uint8)
            out = probs[1:2] if mode == "binary" else probs
    out[:, missing] = 0
    return out


@dataclass(frozen=True)
class OutputSpec:
    """Where an output goes and what it holds."""

    url: str
    kind: str = BLENDED  # BLENDED float16 logits, or FINAL uint8 (finalized)
    mode: str = "binary"
    threshold: bool = False
    levels: int | None = None  # FINAL: pyramid levels (None: down to one chunk)
    ngff: str = NGFF_VERSION  # FINAL: OME-Zarr 0.4 (on Zarr v2) or 0.5 (on Zarr v3); blended logits are v3

    @property
    def zarr_format(self) -> int:
        return NGFF_VERSIONS[self.ngff] if self.kind == FINAL else 3

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"url": self.url.rstrip("/"), "kind": self.kind}
        if self.kind == FINAL:
            d.update(mode=self.mode, threshold=self.threshold, levels=self.levels, ngff=self.ngff)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OutputSpec | None:
        if not d:
            return None
        return cls(d["url"], d["kind"], d.get("mode", "binary"), bool(d.get("threshold", False)), d.get("levels"),
                   d.get("ngff", NGFF_VERSION))

    def same_place(self, url: str) -> bool:
        return self.url.rstrip("/") == url.rstrip("/")


def output_config(predict_config: dict[str, Any], spec: OutputSpec) -> dict[str, Any]:
    """What an output's bytes depend on: the predict configuration and the encoding (not the URL)."""
    common = {k: v for k, v in predict_config.items() if k not in ("output", *SPLIT_KEYS)}
    enc = {k: v for k, v in spec.as_dict().items() if k != "url"}
    return {"predict": common, **enc}


def _chunk_coords(meta: Any, key: str) -> tuple[int, ...] | None:
    """The chunk coordinates a store key encodes (None: metadata or anything else)."""
    if meta.zarr_format == 2:
        parts = key.split(meta.dimension_separator)
    else:
        enc = meta.chunk_key_encoding
        if enc.name == "default":
            if not key.startswith("c" + enc.separator):
                return None
            key = key[2:]
        parts = key.split(enc.separator)
    if len(parts) != len(meta.shape) or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def list_chunk_coords(array: Any) -> list[tuple[int, ...]]:
    """Coordinates of the chunks stored for ``array`` (one listing, no chunk reads; Zarr v2 or v3 keys)."""
    from zarr.core.sync import sync

    store = array.store
    prefix = array.store_path.path
    prefix = prefix.rstrip("/") + "/" if prefix else ""

    async def _keys() -> list[str]:
        return [k[len(prefix):] async for k in store.list_prefix(prefix)]

    found = (_chunk_coords(array.metadata, k) for k in sync(_keys()))
    return sorted(c for c in found if c is not None)


def read_attributes(place: Place, path: str | None = None) -> dict[str, Any] | None:
    """The user attributes of the Zarr node at ``place``/``path`` (v3 ``zarr.json``, else v2 ``.zattrs``);
    None when there is no node. Every place that asks "what is already there?" reads it here."""
    base = place.join(path) if path else place
    meta = storage.read_json(base.join("zarr.json"))
    if meta is not None:
        return dict(meta.get("attributes") or {})
    attrs = storage.read_json(base.join(".zattrs"))
    if attrs is not None:
        return attrs
    for marker in (".zarray", ".zgroup"):
        if storage.read_json(base.join(marker)) is not None:
            return {}
    return None


def written_config(place: Place, path: str | None = None) -> dict[str, Any] | None:
    """The configuration recorded in an existing output of ours (None: nothing there, or not ours)."""
    return ((read_attributes(place, path) or {}).get("vesuvius") or {}).get("config")


def relative_source(output: Place, source: str | None) -> str | None:
    """The input as a path relative to the output (NGFF's label ``source``), when both lie in one place."""
    if not source:
        return None
    out, src = output.location(), output.at(source).location()
    if out.service != src.service:
        return None
    return posixpath.relpath("/" + "/".join(src.key), "/" + "/".join(out.key))


def _refuse_foreign_root(place: Place) -> None:
    """An array or a group with attributes of somebody else's at ``place`` (a scan, an image) is never written
    into. A group with no attributes yet may be ours being created by another part this very moment."""
    attrs = read_attributes(place)
    meta = storage.read_json(place.join("zarr.json")) or {}
    array = meta.get("node_type") == "array" or storage.read_json(place.join(".zarray"))
    if attrs is not None and not isinstance(attrs.get("vesuvius"), dict) and (attrs or array):
        raise not_ours(place.url)


def create_or_open(place: Place, *, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill_value: Any,
                   config: dict[str, Any], overwrite: bool, attributes: dict[str, Any] | None = None,
                   path: str | None = None, dimension_names: Sequence[str] | None = None,
                   zarr_format: int = 3) -> Any:
    """Create the array, or open it if it was made for the same configuration (by anyone).

    Zarr v2 arrays are laid out as the public scans are: nested chunk keys (``/``), blosc-zstd."""
    import zarr
    from zarr.errors import ContainsArrayError, ContainsGroupError

    def same() -> Any:
        existing = read_attributes(place, path)
        if existing is None:
            return None
        if (existing.get("vesuvius") or {}).get("config") == config:
            return zarr.open_array(store=storage.zarr_store(place), path=path or "", mode="r+",
                                   zarr_format=storage.as_zarr_format(zarr_format))
        return existing

    url = place.url
    if path:
        _refuse_foreign_root(place)
    found = same()
    if isinstance(found, dict):
        theirs = (found.get("vesuvius") or {}).get("config")
        if not isinstance(theirs, dict):  # not ours: never replaced (ownership.py)
            raise not_ours(url)
        if not overwrite:
            raise BadInput(f"{url} already exists and was written with other settings ({settings_diff(theirs, config)}); "
                           "pass --overwrite to replace it, or choose another output")
        remove_ours(place, flag="the output")
    elif found is not None:
        return found
    store = storage.zarr_store(place)
    attrs = {"vesuvius": {"config": config, "complete": False}}
    attrs.update(attributes or {})
    kwargs: dict[str, Any] = dict(shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value,
                                  compressors=[blosc(zarr_format)], config={"write_empty_chunks": False},
                                  attributes=attrs, overwrite=False)
    if zarr_format == 2:
        kwargs.update(chunk_key_encoding={"name": "v2", "separator": "/"}, compressors=blosc(2))
    else:
        kwargs.update(dimension_names=tuple(dimension_names) if dimension_names else None)
    try:
        if path:
            group = zarr.open_group(store=store, mode="a", zarr_format=storage.as_zarr_format(zarr_format))
            if "vesuvius" not in group.attrs:
                group.attrs.update({"vesuvius": {"config": config, "complete": False}})
            return group.create_array(path, **kwargs)
        return zarr.create_array(store=store, zarr_format=storage.as_zarr_format(zarr_format), **kwargs)
    except (ContainsArrayError, ContainsGroupError):
        found = same()  # another writer created it at the same moment
        if not found:
            raise BadInput(f"{url} was just created by a run of a different configuration") from None
        return found


def set_complete(array: Any, notes: dict[str, Any] | None = None) -> None:
    v = dict(array.attrs.get("vesuvius", {}))
    v.update(notes or {}, complete=True)
    array.attrs.update({"vesuvius": v})


def is_complete(place: Place, path: str | None = None) -> dict[str, Any] | None:
    """The ``vesuvius`` attributes of a complete output of ours (Zarr v2 or v3), else None."""
    v = (read_attributes(place, path) or {}).get("vesuvius") or {}
    return v if v.get("complete") else None


class Output:
    """An output opened for writing chunks: blended logits (one array), or a final image (a group with
    one array per pyramid level, ``"0"`` full resolution)."""

    def __init__(self, spec: OutputSpec, place: Place, *, num_classes: int, shape: Shape3, chunks: Shape3,
                 config: dict[str, Any], overwrite: bool = False, staging: Place | None = None,
                 notes: dict[str, Any] | None = None) -> None:
        """``place``: where ``spec.url`` is, reached with the command's storage options."""
        self.spec, self.num_classes, self.shape, self.chunks = spec, num_classes, triple(shape), triple(chunks)
        self.config, self.place = config, place
        # what the output's ``vesuvius`` attributes say beside its configuration once complete (e.g. the
        # input-intensity finding of the parts, intensity.notes): facts about the run, not its identity
        self.notes = dict(notes or {})
        self.cgrid = ChunkGrid(self.shape, self.chunks)
        predict = config.get("predict", {})
        self.frame = Frame.from_dict(predict.get("frame"))
        self.class_names = class_names(predict.get("labels"), num_classes)
        refuse_read_only_scheme(spec.url, "the output")
        if spec.kind == FINAL:
            self.channels = output_channels(spec.mode, spec.threshold, num_classes)
            self.labels = spec.threshold  # class ids: a label image of three spatial axes
            self.how = MODE if self.labels else MEAN
            self.levels = check_pyramid(self.shape, self.chunks, spec.levels,  # predict, blend and finalize: at start
                                        "the chunks predict wrote (its --chunk_size)", predicted=True)
            lead, names = ((), self.frame.dimension_names(False)) if self.labels else \
                ((self.channels,), self.frame.dimension_names(True))
            self.arrays = [create_or_open(place, shape=lead + s, chunks=lead + self.chunks, dtype="uint8", fill_value=0,
                                          config=config, overwrite=overwrite, path=str(k), dimension_names=names,
                                          zarr_format=spec.zarr_format)
                           for k, s in enumerate(level_shapes(self.shape, self.levels))]
            self.array = self.arrays[0]
            self.staging = None
            if staging is not None and self.levels > 1:
                half = tuple(c // 2 for c in self.chunks)
                self.staging = create_or_open(staging, shape=lead + level_shapes(self.shape, 2)[1], chunks=lead + half,
                                              dtype="uint8", fill_value=0, config=config, overwrite=False,
                                              dimension_names=names)
        else:
            self.channels, self.labels, self.levels, self.staging = num_classes, False, 1, None
            self.array = create_or_open(place, shape=(num_classes,) + self.shape,
                                        chunks=(num_classes,) + self.chunks, dtype="float16", fill_value=float("nan"),
                                        config=config, overwrite=overwrite,
                                        dimension_names=self.frame.dimension_names(True))
            self.arrays = [self.array]

    @classmethod
    def for_array(cls, array: Any) -> Output:
        """Write blended logits into an existing array (a part store's ``final``)."""
        self = cls.__new__(cls)
        self.spec, self.array, self.arrays, self.staging = OutputSpec("", BLENDED), array, [array], None
        self.num_classes = self.channels = int(array.shape[0])
        self.shape, self.chunks = triple(array.shape[1:]), triple(array.chunks[1:])
        self.cgrid = ChunkGrid(self.shape, self.chunks)
        self.config, self.place, self.labels, self.levels, self.notes = {}, Place(""), False, 1, {}
        return self

    def encode_full(self, logits: np.ndarray) -> np.ndarray:
        """float16 (C, box) logits -> what this output stores for them, with a channel axis even for a
        label image: voxel-wise, so seam pieces finalise their own voxels ahead of the chunk."""
        if self.spec.kind == FINAL:
            return finalize_chunk(logits, self.spec.mode, self.spec.threshold)
        return logits

    def encode(self, logits: np.ndarray) -> np.ndarray:
        """float16 (C, box) logits -> what this output stores for them (level 0)."""
        out = self.encode_full(logits)
        return out[0] if self.labels else out

    def store(self, idx: Shape3, encoded: np.ndarray) -> None:
        """Store one whole level-0 chunk, ``encode_full``'s result, now (and its 2x block for the pyramid)."""
        data = encoded[0] if self.labels else encoded
        self.array[self.selection(0, idx)] = data
        if self.staging is not None:  # the 2x block the pyramid's level 1 is made of: no second full-resolution read
            self.staging[self.selection(1, idx, [c // 2 for c in self.chunks])] = downsample2(data, self.how)

    def selection(self, level: int, idx: Sequence[int], chunks: Sequence[int] | None = None) -> tuple[slice, ...]:
        """The index of chunk ``idx`` of ``level`` in its array (all channels)."""
        c = tuple(chunks or self.chunks)
        shape = level_shapes(self.shape, level + 1)[level]
        box = tuple(slice(i * n, min(s, (i + 1) * n)) for i, n, s in zip(idx, c, shape))
        return box if self.labels else (slice(None),) + box

    def write(self, idx: Shape3, logits: np.ndarray | Callable[[], np.ndarray], io: WritePool) -> None:
        """Write one whole level-0 chunk of float16 (C, box) logits, encoded, in the background.

        ``logits`` may be a call that waits for them (a download from the device still in flight)."""
        io.submit(("out", 0, idx), _encode_store, self, tuple(idx), logits)

    def write_level(self, level: int, idx: Sequence[int], data: np.ndarray, io: WritePool) -> None:
        io.submit(("out", level, tuple(idx)), _store, self.arrays[level], self.selection(level, idx), data)

    def chunk_key(self, idx: Shape3) -> str:
        return self.array.metadata.encode_chunk_key((0,) + tuple(idx))

    def metadata(self) -> dict[str, Any]:
        """The ``ome`` attributes written when the output completes."""
        name = self.place.local_path.rstrip("/").split("/")[-1]
        if self.labels:
            names = self.class_names if self.num_classes > 1 else ["background", self.class_names[0]]
            return label_metadata(name, self.frame, self.levels, names=names, version=self.spec.ngff,
                                  source=relative_source(self.place, self.config.get("predict", {}).get("input")))
        if self.spec.mode == "binary":
            channel_names = [f"p({self.class_names[-1]})"]
        else:
            channel_names = [f"p({n})" for n in self.class_names]
        return image_metadata(name, self.frame, self.levels, channel_names=channel_names, depth=self.shape[0],
                              version=self.spec.ngff)

    def complete(self) -> None:
        """Mark the output complete; a final output gets its OME metadata now, not before."""
        import zarr

        if self.spec.kind == FINAL:
            for a in self.arrays:
                set_complete(a, self.notes)
            grp = zarr.open_group(store=storage.zarr_store(self.place), mode="r+",
                                  zarr_format=storage.as_zarr_format(self.spec.zarr_format))
            info = {"mode": self.spec.mode, "threshold": self.spec.threshold, "levels": self.levels,
                    "encoding": "class ids" if self.spec.threshold else "round(probability * 255)",
                    "not_predicted": 0, "input": self.config.get("predict", {}).get("input")}
            grp.attrs.update({**group_attributes(self.metadata()), "vesuvius_output": info,
                              "vesuvius": {"config": self.config, **self.notes, "complete": True}})
        else:
            set_complete(self.array, self.notes)

    def is_complete(self) -> bool:
        return (is_complete(self.place) or {}).get("config") == self.config


def _store(array: Any, sel: tuple[slice, ...], data: np.ndarray) -> None:
    array[sel] = data


def _encode_store(out: Output, idx: Shape3, logits: np.ndarray | Callable[[], np.ndarray]) -> None:
    out.store(idx, out.encode_full(logits() if callable(logits) else logits))
