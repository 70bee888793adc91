"""finalize: blended logits -> uint8 probabilities, masks or labels, as an OME-Zarr image.

Probabilities are ``round(p * 255)`` with one global scale (the seed rescaled each chunk to its own
min..max, which made seams and broke multiclass outputs). Voxels no patch predicted (NaN logits:
skipped empty regions) are 0: background, probability 0.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.config import FinalizeConfig
from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.intensity import ATTRIBUTE, IntensityFinding, notes
from vesuvius_inference.contract.ngff import NGFF_VERSION, ngff_for
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.downsample import downsample2
from vesuvius_inference.geometry.grid import ChunkGrid, Shape3
from vesuvius_inference.stages.pyramid import Pyramid, unit_level, units_with_data
from vesuvius_inference.store import cpuquota, ownership, storage
from vesuvius_inference.store.optioncheck import check_options
from vesuvius_inference.store.output import (
    BLENDED,
    DATA_PATH,
    FINAL,
    PARTS_NOTE,
    Output,
    OutputSpec,
    finalize_chunk,
    is_complete,
    list_chunk_coords,
    output_channels,
    output_config,
    read_attributes,
    written_config,
)

log = logging.getLogger("vesuvius_inference.stages.finalize")
__all__ = ["run_finalize", "finalize_chunk", "finalize_logits", "output_channels", "DATA_PATH"]


def _looks_like_parts(place: Place) -> bool:
    """Only for the error message when --input_kind does not match what INPUT holds."""
    return any(n.startswith("part_") and n.endswith(".json") for n in storage.list_names(place))


EXPECTED = ("finalize's INPUT is the blended float16 logits (C,Z,Y,X) that blend writes "
            "(vesuvius.blend_logits PARTS OUTPUT)")


def _describe_zarr(place: Place) -> tuple[str, str]:
    """("array" or "group", ``uint8 48x80x80`` of the array or of an OME-Zarr image's level 0); ("", "")
    when it cannot be opened."""
    import zarr

    try:
        node = zarr.open(store=storage.zarr_store(place, read_only=True), mode="r")
        kind = "group" if isinstance(node, zarr.Group) else "array"
        if isinstance(node, zarr.Group):
            attrs: dict[str, Any] = dict(node.attrs)
            ms = (attrs.get("ome") or attrs).get("multiscales") or [{}]
            node = node[ms[0]["datasets"][0]["path"]]
        if not isinstance(node, zarr.Array):
            return "", ""
        return kind, f"{node.dtype} {'x'.join(map(str, node.shape))}"
    except Exception:  # noqa: BLE001 - only the message's detail depends on it
        return "", ""


def not_blended(place: Place) -> BadInput:
    """INPUT is not complete blended logits: say what it is (absent, not Zarr, a scan, a finished output,
    another program's array, blend's unfinished output) and what finalize expects."""
    from vesuvius_inference.store.whatsthere import not_zarr

    url, attrs = place.url, read_attributes(place)
    if attrs is None:
        found = not_zarr(place)
        if found is None:
            return BadInput(f"INPUT {url} does not exist: run blend first ({EXPECTED})")
        return BadInput(f"INPUT {url} exists but is not a Zarr store: {found}; {EXPECTED}")
    ours = (attrs.get("vesuvius") or {}).get("config") or {}
    node, what = _describe_zarr(place)
    detail = f" ({what})" if what else ""
    if ours.get("kind") == BLENDED:
        return BadInput(f"INPUT {url} is incomplete (blend has not finished every part); finish blend first")
    if ours.get("kind") == FINAL:
        return BadInput(f"INPUT {url} is an output vesuvius-inference already finalized{detail}, not blended logits; "
                        f"{EXPECTED}")
    if "multiscales" in attrs or "multiscales" in (attrs.get("ome") or {}):
        return BadInput(f"INPUT {url} is an OME-Zarr image{detail}, a scan perhaps, not blended logits; {EXPECTED}")
    return BadInput(f"INPUT {url} is a Zarr {node or 'store'} vesuvius-inference did not write{detail}, not blended "
                    f"logits; {EXPECTED}")


def _from_parts(cfg: FinalizeConfig) -> tuple[Output, Any, list[Shape3], str]:
    """A final output the predict parts (and blend) wrote level 0 of: the pyramid comes from the staging."""
    import zarr

    from vesuvius_inference.store.partstore import load_parts

    source, target = cfg.place(cfg.input_path), cfg.place(cfg.output_path)
    parts = load_parts(source)
    spec = parts.output
    if spec is None:  # the seed's layout: blend --mode made the output; its own metadata says how
        made = written_config(target) or {}
        if made.get("kind") == FINAL:
            spec = OutputSpec(cfg.output_path, FINAL, made.get("mode", "binary"), bool(made.get("threshold")),
                              made.get("levels"), made.get("ngff", NGFF_VERSION))
    if spec is None or spec.kind != FINAL or not spec.same_place(cfg.output_path):
        raise BadArguments(f"the parts in {cfg.input_path} did not write a final output at {cfg.output_path}; "
                           "blend them first (vesuvius.blend_logits PARTS OUTPUT)")
    config = output_config(parts.config, spec)
    if (storage.read_json(source.at(paths.level0_marker(source.url))) or {}).get("config") != config:
        raise BadInput(f"the seams of {cfg.output_path} are not finished: run blend (vesuvius.blend_logits "
                       f"{cfg.input_path} {cfg.output_path}) first")
    out = Output(spec, target.at(spec.url), num_classes=parts.num_classes, shape=parts.shape, chunks=parts.chunks,
                 config=config, notes=notes(parts.intensity))
    staging_at = source.at(paths.pyramid_staging(source.url))
    staging = zarr.open_array(store=storage.zarr_store(staging_at), mode="r", zarr_format=3) \
        if out.levels > 1 else None
    chunks = [triple(c[-3:]) for c in list_chunk_coords(staging)] if staging is not None else []

    def leaf(idx: Shape3) -> np.ndarray | None:
        if staging is None or idx not in present:
            return None
        return np.asarray(staging[out.selection(1, idx, [c // 2 for c in out.chunks])])

    present = set(chunks)
    return out, leaf, chunks, paths.finalize_work(cfg.input_path, "parts", cfg.output_path)


def _from_blended(cfg: FinalizeConfig, io_ref: list[Any]) -> tuple[Output, Any, list[Shape3], str]:
    """Blended logits: level 0 is written here, chunk by chunk, and feeds the pyramid at once."""
    import zarr

    source = cfg.place(cfg.input_path)
    blended_state = is_complete(source)
    if blended_state is None or (blended_state.get("config") or {}).get("kind") != BLENDED:
        if _looks_like_parts(source):
            raise BadArguments(f"{cfg.input_path} holds predict parts, not blended logits: pass --input_kind parts "
                               "(the parts wrote the output themselves), or blend them first")
        raise not_blended(source)
    src = zarr.open_array(store=storage.zarr_store(source, read_only=True), mode="r", zarr_format=3)
    c = int(src.shape[0])
    shape = triple(int(s) for s in src.shape[1:])
    chunks = triple(int(s) for s in src.chunks[1:])
    output_channels(cfg.mode, cfg.threshold, c)
    predicted = (blended_state.get("config") or {}).get("predict") or {}
    ngff = ngff_for(cfg.ngff_version, predicted.get("input_zarr_format"))  # the scan's format by default
    spec = OutputSpec(cfg.output_path, FINAL, cfg.mode, cfg.threshold, cfg.levels, ngff)
    config = {**output_config({}, spec), "predict": predicted or None, "from": "blended"}
    out = Output(spec, cfg.place(spec.url), num_classes=c, shape=shape, chunks=chunks, config=config,
                 overwrite=cfg.overwrite, notes=notes(blended_state.get(ATTRIBUTE)))  # the parts' finding, carried by the blended logits
    cgrid = ChunkGrid(shape, chunks)
    present = {triple(k[1:]) for k in list_chunk_coords(src)}

    def leaf(idx: Shape3) -> np.ndarray | None:
        if idx not in present:
            return None
        lo, hi = cgrid.box(idx)
        logits = np.asarray(src[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))])
        data = out.encode(logits)
        out.write_level(0, idx, data, io_ref[0])
        return downsample2(data, out.how) if out.levels > 1 else None

    return out, leaf, sorted(present), paths.finalize_work(cfg.input_path, "blended", cfg.output_path)


def _deleted(cfg: FinalizeConfig) -> list[tuple[str, Place]]:
    """What --delete_intermediates removes, in order: the predict parts blended logits were made from (their
    record, output.PARTS_NOTE; first, so a kill in between cannot lose the record), INPUT, --also_delete."""
    if not cfg.delete_intermediates:
        return []
    source = cfg.place(cfg.input_path)
    out = [("INPUT", source), *(("--also_delete", cfg.place(u)) for u in cfg.also_delete)]
    if cfg.input_kind == "blended":
        v = (read_attributes(source) or {}).get("vesuvius") or {}
        if v.get(PARTS_NOTE):
            out.insert(0, ("the predict parts INPUT was blended from", cfg.place(str(v[PARTS_NOTE]))))
    return out


def _check_deletable(cfg: FinalizeConfig) -> None:
    """Before any work: what --delete_intermediates would remove must be ours (ownership.py), or absent."""
    for flag, place in _deleted(cfg):
        if storage.exists(place) and ownership.mark_of(place) is None:
            raise BadArguments(f"--delete_intermediates: {flag} {place} was not written by vesuvius-inference (it carries "
                               "no mark of ours); it would be left untouched, so drop it from the command")


def _delete_intermediates(cfg: FinalizeConfig) -> None:
    for flag, place in _deleted(cfg):
        if ownership.remove_ours(place, flag=flag, strict=False):
            log.info("deleted intermediate %s", place)


def run_finalize(cfg: FinalizeConfig) -> str:
    """Finalize this process's share of the output; returns the output URL.

    INPUT is blended logits (two-stage runs: level 0 and the pyramid are written here), or the predict
    parts directory of an output they wrote themselves (fused runs: the pyramid is built from the 2x
    blocks the level-0 writers staged, and the output is completed).
    """
    from vesuvius_inference.store.stagesplit import StageSplit

    cfg.validate()
    check_options(cfg)
    _check_deletable(cfg)
    t0 = time.perf_counter()
    io_ref: list[Any] = [None]
    fused = cfg.input_kind == "parts"
    out, leaf, level0, work = _from_parts(cfg) if fused else _from_blended(cfg, io_ref)
    if out.is_complete():
        log.info("finalize output %s is already complete: nothing to do", cfg.output_path)
        _delete_intermediates(cfg)  # a rerun after a kill between completing and cleaning up
        return cfg.output_path
    unit = unit_level(out.shape, out.chunks, out.levels, cfg.num_parts)
    units = units_with_data(level0, unit)
    if fused and unit == 0:
        units = []  # no pyramid: level 0 is all there is, and the parts and blend wrote it
    def process(idx: Shape3, io: Any) -> int:
        io_ref[0] = io
        if unit == 0:
            leaf(idx)
        else:
            Pyramid(out, io).build(unit, idx, leaf)
        return int(np.prod(out.chunks)) * 8 ** unit

    def complete() -> None:
        from vesuvius_inference.store.iopool import WritePool

        io = WritePool(cpuquota.plan().writers)  # the CPU quota's, not a fixed 4
        try:
            if unit:
                Pyramid(out, io).build_top(unit)
            io.close()
        except BaseException:
            io.abandon()
            raise
        out.complete()

    split = StageSplit(stage="finalize", work=cfg.place(work), part_id=cfg.part_id, num_parts=cfg.num_parts,
                  config=out.config, lease_s=cfg.lease_s, quiet=cfg.quiet, journal_s=cfg.journal_s,
                  progress_s=cfg.progress_s)
    n, finished = split.run(units, process, complete, "finalize")
    if finished:
        storage.remove(split.work)  # claims and journals are done with once the output is complete
        if fused:
            storage.remove(cfg.place(paths.pyramid_staging(cfg.input_path)))
        _delete_intermediates(cfg)
    found = IntensityFinding.from_dict(out.notes.get(ATTRIBUTE))
    log.info("finalize %d/%d: %d units of level %d (%d levels)%s, %.1f s -> %s%s%s", cfg.part_id, cfg.num_parts, n,
             unit, out.levels, f", {split.resumed} of them resumed from the journal" if split.resumed else "",
             time.perf_counter() - t0, cfg.output_path, " (complete)" if finished else "",
             f"; {found.brief()} (recorded in its vesuvius.{ATTRIBUTE} attribute)" if found else "")
    return cfg.output_path


async def finalize_logits(input_path: str, output_path: str, mode: str = "binary", threshold: bool = False,
                          delete_intermediates: bool = False, cache_pool_gb: float = 4.0, num_parts: int = 1,
                          part_id: int = 0, verbose: bool = True, storage_options: dict[str, Any] | None = None,
                          **ignored: Any) -> str:
    """The seed's async API; runs finalize in a worker thread."""
    import asyncio

    cfg = FinalizeConfig(input_path=input_path, output_path=output_path, mode=mode, threshold=threshold,
                         delete_intermediates=delete_intermediates, cache_gb=cache_pool_gb, num_parts=num_parts,
                         part_id=part_id, quiet=not verbose, storage_options=dict(storage_options or {}))
    return await asyncio.to_thread(run_finalize, cfg)
