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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import storage
from .errors import BadArguments, BadInput
from .grid import ChunkGrid, Shape3
from .iopool import WritePool

MODES = ("binary", "multiclass")
DATA_PATH = "0"
BLENDED, FINAL = "blended", "final"


def blosc() -> Any:
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


def ome_attributes(name: str, n_channels: int, mode: str, threshold: bool, labels: dict[str, int]) -> dict[str, Any]:
    """NGFF 0.5 multiscales metadata (one level) so napari and neuroglancer open the output."""
    return {
        "ome": {
            "version": "0.5",
            "multiscales": [{
                "name": name,
                "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
                         {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
                "datasets": [{"path": DATA_PATH,
                              "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]}],
            }],
        },
        "vesuvius_output": {
            "mode": mode, "threshold": threshold, "channels": n_channels, "labels": labels,
            "encoding": ("class ids" if threshold else "round(probability * 255)"),
            "not_predicted": 0,
        },
    }


@dataclass(frozen=True)
class OutputSpec:
    """Where an output goes and what it holds."""

    url: str
    kind: str = BLENDED  # BLENDED float16 logits, or FINAL uint8 (finalized)
    mode: str = "binary"
    threshold: bool = False

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"url": self.url.rstrip("/"), "kind": self.kind}
        if self.kind == FINAL:
            d.update(mode=self.mode, threshold=self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> OutputSpec | None:
        if not d:
            return None
        return cls(d["url"], d["kind"], d.get("mode", "binary"), bool(d.get("threshold", False)))

    def same_place(self, url: str) -> bool:
        return self.url.rstrip("/") == url.rstrip("/")


def output_config(predict_config: dict[str, Any], spec: OutputSpec) -> dict[str, Any]:
    """What an output's bytes depend on: the predict configuration and the encoding (not the URL)."""
    common = {k: v for k, v in predict_config.items() if k not in ("output", "num_parts")}
    enc = {k: v for k, v in spec.as_dict().items() if k != "url"}
    return {"predict": common, **enc}


def list_chunk_coords(array: Any) -> list[tuple[int, ...]]:
    """Coordinates of the chunks stored for ``array`` (one listing, no chunk reads)."""
    from zarr.core.sync import sync

    store = array.store
    prefix = array.store_path.path
    prefix = prefix.rstrip("/") + "/" if prefix else ""

    async def _keys() -> list[str]:
        return [k[len(prefix):] async for k in store.list_prefix(prefix)]

    out = []
    for k in sync(_keys()):
        parts = k.split("/")
        if len(parts) == array.ndim + 1 and parts[0] == "c":
            out.append(tuple(int(p) for p in parts[1:]))
    return sorted(out)


def _meta_url(url: str, path: str | None) -> str:
    return storage.join(url, path, "zarr.json") if path else storage.join(url, "zarr.json")


def create_or_open(url: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill_value: Any,
                   config: dict[str, Any], overwrite: bool, storage_options: dict[str, Any],
                   attributes: dict[str, Any] | None = None, path: str | None = None) -> Any:
    """Create the array, or open it if it was made for the same configuration (by anyone)."""
    import zarr
    from zarr.errors import ContainsArrayError, ContainsGroupError

    def same() -> Any:
        existing = storage.read_json(_meta_url(url, path), storage_options)
        if existing is None:
            return None
        prev = existing.get("attributes", {}).get("vesuvius", {}).get("config")
        if prev == config:
            return zarr.open_array(store=storage.zarr_store(url, storage_options), path=path or "", mode="r+",
                                   zarr_format=3)
        return False

    found = same()
    if found is False:
        if not overwrite:
            raise BadInput(f"{url} already exists and was written by a different run; pass --overwrite to replace it "
                           "(or choose another output)")
        storage.remove(url, storage_options)
    elif found is not None:
        return found
    store = storage.zarr_store(url, storage_options)
    attrs = {"vesuvius": {"config": config, "complete": False}}
    attrs.update(attributes or {})
    kwargs = dict(shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value,
                  compressors=[blosc()], config={"write_empty_chunks": False}, attributes=attrs, overwrite=False)
    try:
        if path:
            group = zarr.open_group(store=store, mode="a", zarr_format=3)
            if "vesuvius" not in group.attrs:
                group.attrs.update({"vesuvius": {"config": config, "complete": False}})
            return group.create_array(path, **kwargs)
        return zarr.create_array(store=store, zarr_format=3, **kwargs)
    except (ContainsArrayError, ContainsGroupError):
        found = same()  # another writer created it at the same moment
        if not found:
            raise BadInput(f"{url} was just created by a run of a different configuration") from None
        return found


def set_complete(array: Any) -> None:
    v = dict(array.attrs.get("vesuvius", {}))
    v["complete"] = True
    array.attrs.update({"vesuvius": v})


def is_complete(url: str, storage_options: dict[str, Any] | None = None, path: str | None = None) -> dict[str, Any] | None:
    meta = storage.read_json(_meta_url(url, path), storage_options)
    v = (meta or {}).get("attributes", {}).get("vesuvius", {})
    return v if v.get("complete") else None


class Output:
    """An output array set opened for writing chunks (level 0)."""

    def __init__(self, spec: OutputSpec, num_classes: int, shape: Shape3, chunks: Shape3, config: dict[str, Any],
                 storage_options: dict[str, Any], overwrite: bool = False) -> None:
        self.spec, self.num_classes, self.shape, self.chunks = spec, num_classes, tuple(shape), tuple(chunks)
        self.config, self.so = config, storage_options
        self.cgrid = ChunkGrid(self.shape, self.chunks)  # type: ignore[arg-type]
        storage.require_writable(spec.url, "the output")
        if spec.kind == FINAL:
            self.channels = output_channels(spec.mode, spec.threshold, num_classes)
            self.array = create_or_open(spec.url, (self.channels,) + self.shape, (self.channels,) + self.chunks,
                                        "uint8", 0, config, overwrite, storage_options, path=DATA_PATH)
        else:
            self.channels = num_classes
            self.array = create_or_open(spec.url, (num_classes,) + self.shape, (num_classes,) + self.chunks,
                                        "float16", float("nan"), config, overwrite, storage_options)

    @classmethod
    def for_array(cls, array: Any) -> Output:
        """Write blended logits into an existing array (a part store's ``final``)."""
        self = cls.__new__(cls)
        self.spec, self.array = OutputSpec("", BLENDED), array
        self.num_classes = self.channels = int(array.shape[0])
        self.shape, self.chunks = tuple(array.shape[1:]), tuple(array.chunks[1:])
        self.cgrid = ChunkGrid(self.shape, self.chunks)  # type: ignore[arg-type]
        self.config, self.so = {}, {}
        return self

    def encode(self, logits: np.ndarray) -> np.ndarray:
        if self.spec.kind == FINAL:
            return finalize_chunk(logits, self.spec.mode, self.spec.threshold)
        return logits

    def write(self, idx: Shape3, logits: np.ndarray, io: WritePool) -> None:
        """Write one whole chunk of float16 (C, box) logits, encoded for this output, in the background."""
        lo, hi = self.cgrid.box(idx)
        sel = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
        io.submit(("out", idx), _encode_store, self, sel, logits)

    def chunk_key(self, idx: Shape3) -> str:
        return self.array.metadata.encode_chunk_key((0,) + tuple(idx))

    def complete(self) -> None:
        """Mark the output complete (final outputs: also write the OME metadata)."""
        import zarr

        set_complete(self.array)
        if self.spec.kind == FINAL:
            grp = zarr.open_group(store=storage.zarr_store(self.spec.url, self.so), mode="r+", zarr_format=3)
            name = storage.local_path(self.spec.url).rstrip("/").split("/")[-1]
            ome = ome_attributes(name, self.channels, self.spec.mode, self.spec.threshold, {})
            grp.attrs.update(dict(ome, vesuvius={"config": self.config, "complete": True}))

    def is_complete(self) -> bool:
        return (is_complete(self.spec.url, self.so) or {}).get("config") == self.config


def _encode_store(out: Output, sel: tuple[slice, ...], logits: np.ndarray) -> None:
    out.array[sel] = out.encode(logits)
