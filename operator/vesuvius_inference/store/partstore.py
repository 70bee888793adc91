"""The part store: what a predict part keeps for blend, and its scratch, under its own run id.

```
PARTS_DIR/
  part_00003.json          marker, written last; names the run whose store holds the part, its patches
                           (``part``), which may hold data (``listed``) and which ran (``ran``)
  part_00003.claim.json    the run's claim (claims.py): the marker is trusted only if they agree
  part_00003/<run id>/     zarr v3 group of that run:
     pieces/<z>.<y>.<x>    its pieces (pieces.py) of the chunks blend merges: int64 sums with the weight
                           plane over the shared box, final values over the edge box
     final                 float16 (C, Z, Y, X): the chunks only this part reaches, when predict was
                           not told where the output goes (the seed's layout; blend copies them)
     spill0, spill1        int64 (C+1, Z, Y, X): partial sums evicted from the cache (scratch)
     checkpoint.json       resume point: the journal's head (scratch)
     checkpoint/<n>.json   the journal's segments (checkpoint.py; scratch)
  _seams/<config digest>/<z>.<y>.<x>   first finishers' pieces of two-part seams (seams.py)
```
A piece is one object per chunk a part shares, a seam one patch overlap deep, not whole output
chunks. Spills and the checkpoint are removed when the part completes; a run never writes into
another run's store.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.intensity import ATTRIBUTE
from vesuvius_inference.contract.paths import CHECKPOINT, CHECKPOINT_SEGMENTS, claim_url, part_name, store_url
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.grid import PatchGrid, Shape3
from vesuvius_inference.geometry.layout import PartLayout
from vesuvius_inference.geometry.partition import Part
from vesuvius_inference.geometry.partplan import make_grid
from vesuvius_inference.store import storage
from vesuvius_inference.store.claims import trusted_complete
from vesuvius_inference.store.output import OutputSpec, blosc

FORMAT_VERSION = 3
SPILLS = ("spill0", "spill1")
PAIRS, BLEND = "pairs", "blend"  # who merges two-part seams: their second finisher, or blend


def pack_mask(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(mask.astype(bool)).tobytes()).decode()


def unpack_mask(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=n).astype(bool)


def _array(group: Any, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill: Any) -> Any:
    return group.create_array(name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill,
                              compressors=[blosc()], config={"write_empty_chunks": False}, overwrite=True)


def create_store(place: Place, attrs: dict[str, Any], *, n_classes: int, shape: Shape3, chunks: Shape3,
                 seed_layout: bool) -> Any:
    """A new, empty part store for one run."""
    import zarr

    group = zarr.open_group(store=storage.zarr_store(place), mode="w", zarr_format=3)
    group.attrs.update(attrs)
    c = n_classes
    if seed_layout:
        _array(group, "final", (c,) + tuple(shape), (c,) + tuple(chunks), "float16", float("nan"))
    for name in SPILLS:
        _array(group, name, (c + 1,) + tuple(shape), (c + 1,) + tuple(chunks), "int64", 0)
    return group


def open_store(place: Place, *, read_only: bool = False) -> Any:
    import zarr

    return zarr.open_group(store=storage.zarr_store(place, read_only=read_only),
                           mode="r" if read_only else "r+", zarr_format=3)


def drop_scratch(parts_dir: Place, part_id: int, run: str) -> None:
    """After the marker: spills and the checkpoint, and the stores of earlier runs, go."""
    store = parts_dir.at(store_url(parts_dir.url, part_id, run))
    for name in (*SPILLS, CHECKPOINT, CHECKPOINT_SEGMENTS):
        storage.remove(store.join(name))
    for other in storage.list_names(parts_dir.join(part_name(part_id))):
        if other != run:
            storage.remove(parts_dir.at(store_url(parts_dir.url, part_id, other)))


@dataclass
class PartSet:
    """The complete, mutually consistent, trusted set of predict parts in one directory."""

    place: Place
    config: dict[str, Any]
    markers: list[dict[str, Any]]

    @property
    def parts_dir(self) -> str:
        return self.place.url

    @property
    def shape(self) -> Shape3:
        return triple(self.config["shape"])

    @property
    def chunks(self) -> Shape3:
        return triple(self.config["chunk_size"])

    @property
    def num_classes(self) -> int:
        return int(self.markers[0]["num_classes"])

    @property
    def logit_bits(self) -> int:
        return int(self.markers[0]["logit_bits"])

    @property
    def output(self) -> OutputSpec | None:
        return OutputSpec.from_dict(self.config.get("output"))

    @property
    def intensity(self) -> dict[str, Any] | None:
        """The input-intensity finding the parts recorded (intensity.py; every part checks the same sample)."""
        return next((m[ATTRIBUTE] for m in self.markers if m.get(ATTRIBUTE)), None)

    @property
    def pairs(self) -> bool:
        return self.config.get("seams") == PAIRS

    def grid(self) -> PatchGrid:
        c = self.config
        return make_grid(self.shape, triple(c["patch_size"]), float(c["overlap"]), bbox=c.get("bbox"))

    def masks(self, key: str) -> np.ndarray:
        """Per patch of the grid: the markers' ``listed`` (may hold data) or ``ran`` masks, together."""
        grid = self.grid()
        out = np.zeros(grid.n_patches, dtype=bool)
        for m in self.markers:
            ids = Part.from_dict(m["part"]).members(grid)
            out[ids] = unpack_mask(m[key], len(ids))
        return out

    def layout(self) -> PartLayout:
        """The layout every part predicted with (the same pure function of the same split)."""
        parts = [Part.from_dict(m["part"]) for m in self.markers]
        return PartLayout.build(self.grid(), self.masks("listed"), parts, shape=self.shape, chunks=self.chunks,
                                pairs=self.pairs)


def load_parts(place: Place) -> PartSet:
    """Read and cross-check every part marker; name the first missing, mismatched or untrusted part."""
    parts_dir = place.url
    names = [n for n in storage.list_names(place)
             if n.startswith("part_") and n.endswith(".json") and not n.endswith(".claim.json")]
    if not names:
        raise BadInput(f"{parts_dir} holds no completed predict parts (part_NNNNN.json); run predict first")
    markers = [storage.read_json(place.join(n)) or {} for n in names]
    ref = markers[0]
    if not ref.get("complete") or "config" not in ref:
        raise BadInput(f"{parts_dir}/{names[0]} is not a completed predict part marker")
    config = ref["config"]
    if config.get("format") != FORMAT_VERSION:
        raise BadInput(f"{parts_dir} holds parts of an older format; predict them again")
    n = int(config["num_parts"])
    by_id = {}
    for m in markers:
        pid: Any = m.get("part_id")  # a JSON value; a part's marker always has it
        if not m.get("complete"):
            raise BadInput(f"part {pid} in {parts_dir} is incomplete; rerun predict --part_id {pid}")
        diff = sorted(k for k in set(config) | set(m.get("config", {})) if config.get(k) != m.get("config", {}).get(k))
        if diff:
            raise BadInput(f"part {pid} in {parts_dir} was predicted with a different {', '.join(diff)} than part "
                           f"{ref.get('part_id')}; rerun it or remove the stale part")
        if not trusted_complete(place.at(claim_url(parts_dir, int(pid))), m.get("run")):
            raise BadInput(f"part {pid} in {parts_dir} was marked complete by run {m.get('run')}, which does not hold "
                           f"its claim; rerun predict --part_id {pid}")
        by_id[int(pid)] = m
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise BadInput(f"{parts_dir} is missing {len(missing)} of {n} predict parts (part {shown}); "
                       f"run predict for them before blending")
    extra = sorted(set(by_id) - set(range(n)))
    if extra:
        raise BadInput(f"{parts_dir} holds part {extra[0]} but the parts were split {n} ways: remove the stale part")
    return PartSet(place, config, [by_id[i] for i in range(n)])
