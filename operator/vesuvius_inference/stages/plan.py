"""``vesuvius-inference plan``: what a run will cost, from metadata and the chunk listing only.

No voxel is read and the model is not loaded, so this answers in seconds for a TB volume. The
patch counts are exactly what predict will process (same grid, same listing-based emptiness, same
part split and layout). It says what it planned (the level, its voxel size from the OME-Zarr frame,
the region), checks the input's channels against the model as predict does at start (exit 3 here,
before any GPU is booked), and labels every byte count: uncompressed from the geometry; compressed
from the input's stored chunk sizes (all of them when few, else a sample, said so), and for what this
program writes at the ratios measured on its test models. GPU-hours come from ``--throughput`` or a
default it names (throughput.py). When the parts' intermediates would exceed half the float16
logits, a warning names a part count and partition that would not, checked with the same layout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vesuvius_inference.contract.config import PlanConfig
from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.frame import Frame, triple
from vesuvius_inference.contract.prechecks import check_channels, check_pyramid, chunks_source
from vesuvius_inference.geometry.grid import ChunkGrid, PatchGrid, Shape3, chunks_touched
from vesuvius_inference.geometry.layout import PartLayout
from vesuvius_inference.geometry.partition import Part, factorisations
from vesuvius_inference.geometry.partplan import choose_parts, make_grid, patch_nonempty, region
from vesuvius_inference.model.files import open_model_files
from vesuvius_inference.stages.throughput import Rate, default_rate, given_rate
from vesuvius_inference.store.optioncheck import check_options
from vesuvius_inference.store.volume import open_volume

log = logging.getLogger("vesuvius_inference.stages.plan")

# blosc-zstd ratios of what the pieces hold, measured on this project's test models (bench_scaleout prints
# the run's own): int64 logit sums 0.65 (C planes; with the weight plane, C+1 planes, 0.5: the weights
# compress to a seventh), float16 logits 0.93, finalised uint8 values 0.84.
SUMS_RATIO, WEIGHTED_SUMS_RATIO, EDGE_RATIO, FINAL_EDGE_RATIO = 0.65, 0.5, 0.93, 0.84
# Intermediates above this fraction of the float16 logits draw a warning with a part count that stays under
# it (ARCHITECTURE.md's target at a whole scroll).
INTERMEDIATE_LIMIT = 0.5
# The suggestion aims this far under the limit before it is checked with the real layout.
SUGGEST_MARGIN = 0.9
# Stored sizes of up to this many input chunks are read one by one (a stat or a HEAD each); above it a
# deterministic sample of SIZE_SAMPLE of them stands for all, and the plan says so.
SIZE_EXACT_LIMIT, SIZE_SAMPLE = 2000, 256


@dataclass
class InputMeta:
    """What plan knows of the input: its geometry from metadata, which chunks are stored (None: unknown,
    every chunk may hold data) and, when it has a store, how to read stored sizes. ``open_volume``'s
    InputVolume is one; a test or a what-if passes this with a scroll's numbers and no store."""

    url: str
    shape: Shape3
    chunks: Shape3
    channels: int = 1
    dtype: np.dtype = field(default_factory=lambda: np.dtype("uint8"))
    occupancy: np.ndarray | None = None
    frame: Frame = field(default_factory=Frame)
    where: str = "the input"
    stored_sizes: Callable[[np.ndarray], Any] | None = None

    @property
    def chunk_grid(self) -> ChunkGrid:
        return ChunkGrid(self.shape, self.chunks)


def input_meta(volume: Any) -> InputMeta:
    """The plan's view of an opened InputVolume (the listing is read here, once)."""
    return InputMeta(volume.url, volume.shape, volume.chunks, volume.channels, volume.dtype, volume.occupancy,
                     volume.frame, volume.where, stored_sizes=lambda mask: stored_chunk_sizes(volume, mask))


def stored_chunk_sizes(volume: Any, mask: np.ndarray) -> dict[str, Any] | None:
    """Compressed bytes of the stored input chunks in ``mask`` (a boolean chunk grid): every chunk's size
    when there are at most SIZE_EXACT_LIMIT, else SIZE_SAMPLE of them spread evenly over the list and
    scaled up. Sizes come from the store (a stat on disk, a HEAD on object stores), never a chunk's bytes.
    None when the store gives no sizes (the plan then says the compressed size is unknown)."""
    from zarr.core.sync import sync

    ids = np.argwhere(mask)
    n = len(ids)
    if n == 0:
        return {"bytes": 0, "chunks": 0, "measured": 0, "exact": True}
    pick = ids if n <= SIZE_EXACT_LIMIT else ids[np.linspace(0, n - 1, SIZE_SAMPLE).round().astype(int)]
    array, store = volume.array, volume.array.store
    prefix = array.store_path.path.rstrip("/")
    prefix = prefix + "/" if prefix else ""
    cgrid = getattr(array, "cdata_shape", None)
    n_c = int(cgrid[0]) if (volume.has_channel_axis and cgrid is not None) else 1
    keys = [prefix + array.metadata.encode_chunk_key(((c,) + tuple(int(v) for v in i)) if volume.has_channel_axis
                                                     else tuple(int(v) for v in i))
            for i in pick for c in range(n_c)]

    async def sizes() -> list[int]:
        gate = asyncio.Semaphore(32)

        async def one(key: str) -> int:
            async with gate:
                try:
                    return int(await store.getsize(key))
                except FileNotFoundError:  # absent (a store without a listing): the fill value, 0 bytes
                    return 0

        return list(await asyncio.gather(*(one(k) for k in keys)))

    try:
        got = sync(sizes())
    except Exception as e:  # noqa: BLE001 - sizes are a nicety: a store that will not tell gives "unknown"
        log.debug("no stored sizes for %s: %s", volume.url, e)
        return None
    measured = int(sum(got))
    total = measured if len(pick) == n else int(round(measured * n / len(pick)))
    return {"bytes": total, "chunks": n, "measured": int(len(pick)), "exact": len(pick) == n}


def region_voxels(touched: np.ndarray, cgrid: ChunkGrid) -> int:
    """Voxels of the chunks in ``touched`` (edge chunks counted at their clipped size)."""
    sizes = [np.minimum(np.arange(n) * c + c, s) - np.arange(n) * c for n, c, s in
             zip(cgrid.counts, cgrid.chunks, cgrid.shape)]
    return int(np.einsum("zyx,z,y,x->", touched.astype(np.int64), *[s.astype(np.int64) for s in sizes]))


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    """The plan as a dict (printed by the CLI as a table or JSON)."""
    cfg.validate()
    check_options(cfg)
    if cfg.throughput is not None and not cfg.throughput > 0:
        raise BadArguments(f"--throughput is model passes per second per GPU, > 0; got {cfg.throughput}")
    volume = open_volume(cfg.input_place, cfg.level)
    model = open_model_files(cfg.place(cfg.model_path), cache_dir=cfg.model_cache_dir, folds=cfg.folds)
    return plan_of(cfg, input_meta(volume), model)


def plan_of(cfg: PlanConfig, volume: InputMeta, model: Any) -> dict[str, Any]:
    """The plan of ``cfg`` over an input described by ``volume`` with the model files ``model``: pure
    but for the stored sizes ``volume`` may read."""
    patch = triple(cfg.patch_size or model.patch_size)
    n_folds, n_classes = len(model.checkpoints), model.num_classes
    check_channels(model.num_input_channels, volume.channels, cfg.input_dir)  # what predict would refuse
    chunks = triple(cfg.chunk_size or patch)
    box = region(cfg.bbox, volume.shape, volume.where)
    check_pyramid(volume.shape, chunks, cfg.levels, chunks_source(cfg.chunk_size, cfg.patch_size, chunks))
    grid = make_grid(volume.shape, patch, cfg.overlap, bbox=cfg.bbox, where=volume.where)
    occ = volume.occupancy if cfg.skip_empty_patches else None
    nonempty = patch_nonempty(grid, occ, volume.chunks)
    parts, layout = choose_parts(grid, nonempty, cfg.num_parts, partition=cfg.partition, shape=volume.shape,
                                 chunks=chunks, pairs=True)
    per_part = [int(nonempty[p.members(grid)].sum()) for p in parts]
    n_run = int(nonempty.sum())
    passes = n_run * n_folds * (8 if cfg.do_tta else 1)
    in_chunk_bytes = int(np.prod(volume.chunks)) * volume.channels * volume.dtype.itemsize
    present = int(volume.occupancy.sum()) if volume.occupancy is not None else int(np.prod(volume.chunk_grid.counts))
    # bytes to read: stored input chunks under a non-empty patch (the whole ROI with skipping off)
    touched = chunks_touched(grid, nonempty, volume.chunks, volume.chunk_grid.counts)
    read_mask = touched & volume.occupancy if volume.occupancy is not None else touched
    to_read = int(read_mask.sum())
    compressed = volume.stored_sizes(read_mask) if volume.stored_sizes is not None else None
    # output voxels that receive predictions: the output chunks a non-empty patch touches
    out_vox = region_voxels(chunks_touched(grid, nonempty, chunks, ChunkGrid(volume.shape, chunks).counts),
                            ChunkGrid(volume.shape, chunks))
    c_out = 1 if n_classes <= 2 else n_classes
    blended = out_vox * n_classes * 2
    seams = seam_estimate(grid, nonempty, layout, n_classes)
    lo, hi = box if box is not None else ((0, 0, 0), volume.shape)
    rate = (given_rate(cfg.throughput, model.configuration, patch, volume.channels, n_classes)
            if cfg.throughput is not None else default_rate(model.configuration, patch, volume.channels, n_classes))
    plan: dict[str, Any] = {
        "input": {"url": cfg.input_dir, "level": cfg.level, "where": volume.where, "shape": list(volume.shape),
                  "channels": volume.channels, "dtype": str(volume.dtype), "chunks": list(volume.chunks),
                  "voxel_size": list(volume.frame.scale), "units": list(volume.frame.units),
                  "axes": list(volume.frame.names), "origin": list(volume.frame.translation),
                  "stored_chunks": present, "total_chunks": int(np.prod(volume.chunk_grid.counts)),
                  "listing": volume.occupancy is not None},
        "region": {"bbox": cfg.bbox, "whole": box is None, "lo": list(lo), "hi": list(hi),
                   "voxels": int(np.prod([b - a for a, b in zip(lo, hi)]))},
        "channels": {"input": volume.channels, "model": model.num_input_channels, "match": True},
        "grid": {"patch": list(patch), "overlap": cfg.overlap, "per_axis": list(grid.counts),
                 "patches": grid.n_patches, "non_empty": n_run, "skipped_empty": grid.n_patches - n_run},
        "parts": {"count": cfg.num_parts, "non_empty_per_part": per_part, "partition": partition_name(parts),
                  "imbalance": (max(per_part) / max(1e-9, float(np.mean(per_part)))) if n_run else 1.0},
        "model": {"folds": n_folds, "classes": n_classes, "tta": cfg.do_tta, "passes": passes,
                  "tflop_per_pass": rate.tflop_per_pass},
        "bytes": {"read": to_read * in_chunk_bytes, "read_uncompressed": to_read * in_chunk_bytes,
                  "read_chunks": to_read,
                  "read_compressed": compressed["bytes"] if compressed else None,
                  "read_compressed_measured_chunks": compressed["measured"] if compressed else 0,
                  "read_compressed_exact": bool(compressed and compressed["exact"]),
                  "blended_logits": int(blended), "intermediates_estimate": seams["compressed_estimate"],
                  "intermediates_uncompressed": seams["expected"]["uncompressed"],
                  "output": int(out_vox * c_out), "output_compressed_estimate": int(out_vox * c_out * FINAL_EDGE_RATIO)},
        "seams": seams,
        "objects": {"output_chunks": seams["output_chunks"], "intermediate_chunks": seams["objects"],
                    "markers": 2 * cfg.num_parts},
        "gpu": gpu_estimate(passes, rate, patch),
        "warnings": [],
    }
    plan["gpu_hours"] = plan["gpu"]["hours"]
    if seams["ratio_to_logits"] > INTERMEDIATE_LIMIT:
        better = suggest_parts(grid, nonempty, layout, parts=parts, shape=volume.shape, chunks=chunks,
                               n_classes=n_classes, ratio=seams["ratio_to_logits"])
        plan["suggestion"] = better
        plan["warnings"].append(intermediates_warning(cfg.num_parts, plan["parts"]["partition"], seams, better))
    return plan


def gpu_estimate(passes: int, rate: Rate, patch: tuple[int, ...]) -> dict[str, Any]:
    hours = passes / rate.passes_per_s / 3600 if rate.passes_per_s > 0 else float("inf")
    return {"hours": hours, "passes_per_s": rate.passes_per_s, "source": "given" if rate.given else "default",
            "basis": rate.basis, "patch": list(patch)}


def partition_name(parts: list[Part]) -> str:
    """``slabs``, or ``NZxNY`` of a block split."""
    if parts[0].block is None:
        return "slabs"
    zs = {p.block[0] for p in parts if p.block}
    return f"{len(zs)}x{len(parts) // len(zs)}"


def seam_estimate(grid: PatchGrid, nonempty: np.ndarray, layout: PartLayout, n_classes: int) -> dict[str, Any]:
    """What the seam pieces of a fused run will hold (layout.py's geometry, the one predict uses):
    uncompressed bytes exact from the geometry, compressed at the measured ratios, both as a fraction of
    the float16 logits of the output chunks that receive predictions (a --bbox's, not the whole
    volume's). Which side of a two-part seam stores its edge depends on which part finishes first:
    ``expected`` takes each side half the time, ``worst`` the larger edge every time."""
    cg = layout.cgrid
    touched = chunks_touched(grid, nonempty, cg.chunks, cg.counts)
    v = layout.piece_voxels()
    c_out = 1 if n_classes <= 2 else n_classes  # a binary model's probability, or every class's
    pair_sums = v["pair_shared"] * n_classes * 8
    shared_sums = v["shared_shared"] * (n_classes + 1) * 8
    edges = {"expected": (v["pair_edge_low"] + v["pair_edge_high"]) / 2, "worst": v["pair_edge_max"]}
    out: dict[str, Any] = {"own_chunks": v["own_chunks"], "pair_chunks": v["pair_chunks"],
                           "shared_chunks": v["shared_chunks"], "objects": v["pair_chunks"] + v["shared_pieces"],
                           "output_chunks": int(touched.sum())}
    logits = region_voxels(touched, cg) * n_classes * 2
    out["logits_bytes"] = logits
    for name, pair_edge in edges.items():
        edge = (pair_edge + v["shared_edge"]) * c_out
        unc = pair_sums + shared_sums + edge
        cmp_ = pair_sums * SUMS_RATIO + shared_sums * WEIGHTED_SUMS_RATIO + edge * FINAL_EDGE_RATIO
        out[name] = {"sums_bytes": int(pair_sums + shared_sums), "edge_bytes": int(edge), "compressed": int(cmp_),
                     "uncompressed": int(unc), "ratio_to_logits": cmp_ / max(logits, 1),
                     "uncompressed_ratio_to_logits": unc / max(logits, 1)}
    e = out["expected"]
    out.update(compressed_estimate=e["compressed"], ratio_to_logits=e["ratio_to_logits"],
               uncompressed_ratio_to_logits=e["uncompressed_ratio_to_logits"])
    return out


def cut_area(split: tuple[int, int], grid: PatchGrid) -> float:
    """Interior faces of a (nz, ny) split of the grid's box, what the seams grow with (partition.py)."""
    z, y, x = grid.shape
    return float((split[0] - 1) * y * x + (split[1] - 1) * z * x)


def _split_of(name: str, count: int) -> tuple[int, int]:
    if name == "slabs":
        return count, 1
    nz, _, ny = name.partition("x")
    return int(nz), int(ny)


def _best_split(count: int, grid: PatchGrid) -> tuple[int, int]:
    splits = [f for f in factorisations(count, grid) if f[0] <= grid.counts[0] or f[1] == 1]
    return min(splits, key=lambda f: cut_area(f, grid))


def suggest_parts(grid: PatchGrid, nonempty: np.ndarray, layout: PartLayout, *, parts: list[Part], shape: Shape3,
                  chunks: Shape3, n_classes: int, ratio: float) -> dict[str, Any] | None:
    """The largest part count under this plan's, with its partition, whose intermediates stay under
    INTERMEDIATE_LIMIT of the logits. The seams grow with the split's cut area, so the ratio per unit of
    cut area (this plan's, then each measured candidate's) predicts each count's; a candidate is then
    measured with the real layout (seconds at scroll scale). Down until one measures under the limit,
    then once more up towards this plan's count with the better calibration. None only when the current
    split has no cut to scale from or no measured candidate fits."""
    n = len(parts)
    area = cut_area(_split_of(partition_name(parts), n), grid)
    if area <= 0:
        return None
    per_area = ratio / area
    target = INTERMEDIATE_LIMIT * SUGGEST_MARGIN

    def predicted_fit(lo: int, hi: int) -> int | None:
        """The largest count in [lo, hi] predicted under the target."""
        for count in range(hi, lo - 1, -1):
            if per_area * cut_area(_best_split(count, grid), grid) <= target:
                return count
        return None

    def measure(count: int) -> dict[str, Any]:
        split = _best_split(count, grid)
        name = "slabs" if split[1] == 1 else f"{split[0]}x{split[1]}"
        new_parts, new_layout = choose_parts(grid, nonempty, count, partition=name, shape=shape, chunks=chunks,
                                             pairs=True)
        return {"num_parts": count, "partition": partition_name(new_parts),
                "ratio_to_logits": seam_estimate(grid, nonempty, new_layout, n_classes)["ratio_to_logits"]}

    found: dict[str, Any] | None = None
    hi = n - 1
    for _ in range(4):  # each round measures one layout
        count = predicted_fit(1, hi)
        if count is None:
            return found
        if count == 1:
            return found or {"num_parts": 1, "partition": "slabs", "ratio_to_logits": 0.0}
        got = measure(count)
        per_area = got["ratio_to_logits"] / max(cut_area(_best_split(count, grid), grid), 1.0)
        if got["ratio_to_logits"] <= INTERMEDIATE_LIMIT:
            found = got
            up = predicted_fit(count + 1, n - 1)  # the measurement may allow more parts
            if up is None:
                return found
            better = measure(up)
            return better if better["ratio_to_logits"] <= INTERMEDIATE_LIMIT else found
        hi = count - 1
    return found


def intermediates_warning(count: int, partition: str, seams: dict[str, Any], better: dict[str, Any] | None) -> str:
    head = (f"{count} parts ({partition}) make intermediates ~{seams['ratio_to_logits']:.2f}x the float16 logits "
            f"(~{_bytes(seams['compressed_estimate'])} compressed), above {INTERMEDIATE_LIMIT}x")
    if better is None:
        return head + ": fewer parts, or a smaller --overlap, make fewer seam bytes"
    tail = "; run more parts at once with spec.parallelism, not more parts" if better["num_parts"] > 1 else \
        " (the volume is small for its seams)"
    return (head + f"; --num_parts {better['num_parts']} --partition {better['partition']} (InferenceJob "
            f"spec.parts {better['num_parts']}, spec.partition {better['partition']}) stays at "
            f"~{better['ratio_to_logits']:.2f}x" + tail)


def _bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:,.2f} {unit}"
    return f"{int(b)} B"


def _hours(h: float) -> str:
    """GPU time a person reads: hours above six minutes, else minutes or seconds (never a bare 0.0)."""
    if h >= 0.1:
        return f"~{h:,.1f} GPU-hours"
    if h * 60 >= 0.1:
        return f"~{h * 60:.1f} GPU-minutes"
    if h * 3600 >= 0.1:
        return f"~{h * 3600:.1f} GPU-seconds"
    return "under 0.1 GPU-seconds"


def _voxel(i: dict[str, Any]) -> str:
    units = [u for u in i["units"] if u]
    if i["voxel_size"] == [1.0, 1.0, 1.0] and not units:
        return "voxel size unknown (no OME-Zarr multiscales: voxel units)"
    unit = f" {units[0]}" if units and len(set(units)) == 1 else (f" ({', '.join(u or '?' for u in i['units'])})"
                                                                 if units else "")
    size = " x ".join(f"{s:g}" for s in i["voxel_size"])
    return f"voxel {size}{unit} ({','.join(i['axes'])})"


def format_plan(p: dict[str, Any]) -> str:
    i, r, g, parts, m, b, gpu = p["input"], p["region"], p["grid"], p["parts"], p["model"], p["bytes"], p["gpu"]
    dims = " x ".join(map(str, i["shape"]))
    level = i["where"] if i["where"] != "the input" else f"level {i['level']}"
    if r["whole"]:
        reg = f"whole {level}: {dims}"
    else:
        reg = (f"--bbox {','.join(f'{a}:{z}' for a, z in zip(r['lo'], r['hi']))} of {level} ({dims}): "
               f"{r['voxels'] / np.prod(i['shape']) * 100:.1f}% of its voxels")
    ch = p["channels"]
    if b["read_compressed"] is None:
        cmp_ = "compressed size unknown (the store gives no sizes)"
    elif b["read_compressed_exact"]:
        cmp_ = f"{_bytes(b['read_compressed'])} compressed (the stored sizes of all {b['read_chunks']:,} chunks)"
    else:
        cmp_ = (f"~{_bytes(b['read_compressed'])} compressed (estimated from the stored sizes of "
                f"{b['read_compressed_measured_chunks']:,} of the {b['read_chunks']:,} chunks)")
    if m["passes"] == 0:
        estimate = "0 GPU-hours: no non-empty patch to run"
    else:
        estimate = (f"{_hours(gpu['hours'])}: {m['passes']:,} passes at {gpu['passes_per_s']:,.1f} passes/s per GPU "
                    + ("(--throughput)" if gpu["source"] == "given"
                       else f"({gpu['basis']}; pass --throughput to use yours)"))
    s = p["seams"]
    lines = [
        f"input      {i['url']}  {level}, {dims} x {i['channels']} ch {i['dtype']}, chunks {tuple(i['chunks'])}, "
        f"{i['stored_chunks']:,} of {i['total_chunks']:,} chunks stored" + ("" if i["listing"] else " (no listing: "
                                                                            "every chunk assumed stored)"),
        f"frame      {_voxel(i)}",
        f"region     {reg}",
        f"channels   {ch['input']} in the input, {ch['model']} the model expects: match",
        f"grid       patch {tuple(g['patch'])}, overlap {g['overlap']}, {' x '.join(map(str, g['per_axis']))} = "
        f"{g['patches']:,} patches, {g['non_empty']:,} non-empty, {g['skipped_empty']:,} skipped",
        f"parts      {parts['count']} ({parts['partition']}): non-empty patches per part min "
        f"{min(parts['non_empty_per_part']):,} max {max(parts['non_empty_per_part']):,} (imbalance {parts['imbalance']:.2f})",
        f"model      {m['folds']} fold(s), {m['classes']} classes, TTA {'on' if m['tta'] else 'off'}: "
        f"{m['passes']:,} model passes" + (f", {m['tflop_per_pass']:.3g} TFLOP each" if m["tflop_per_pass"] else ""),
        f"read       {_bytes(b['read_uncompressed'])} uncompressed ({b['read_chunks']:,} chunks), {cmp_}",
        f"write      output {_bytes(b['output'])} uncompressed (~{_bytes(b['output_compressed_estimate'])} compressed); "
        f"blended logits (unfused pipeline) {_bytes(b['blended_logits'])} uncompressed float16; intermediates "
        f"~{_bytes(b['intermediates_estimate'])} compressed, {_bytes(b['intermediates_uncompressed'])} uncompressed",
        f"seams      {s['pair_chunks']:,} two-part chunks (merged by predict), {s['shared_chunks']:,} by blend, "
        f"{s['own_chunks']:,} one part's; intermediates ~{s['ratio_to_logits']:.2f}x the float16 logits "
        f"({s['uncompressed_ratio_to_logits']:.2f}x uncompressed; worst finish order {s['worst']['ratio_to_logits']:.2f}x, "
        f"{s['worst']['uncompressed_ratio_to_logits']:.2f}x)",
        f"objects    output {p['objects']['output_chunks']:,} chunks, intermediates {p['objects']['intermediate_chunks']:,} "
        f"chunks + {p['objects']['markers']} markers",
        f"estimate   {estimate}",
    ]
    lines += [f"warning: {w}" for w in p["warnings"]]
    return "\n".join(lines)


def run_plan(cfg: PlanConfig) -> dict[str, Any]:
    plan = make_plan(cfg)
    print(json.dumps(plan, indent=1) if cfg.as_json else format_plan(plan))
    return plan
