"""``vesuvius-inference plan``: what a run will cost, from metadata and the chunk listing only.

No voxel is read and the model is not loaded, so this answers in seconds for a TB volume. The
patch counts are exactly what predict will process (same grid, same listing-based emptiness, same
part split and layout); bytes are uncompressed sizes, the seams' also compressed at measured ratios.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .config import PlanConfig
from .grid import PatchGrid, chunks_touched
from .layout import PartLayout
from .model_files import open_model_files
from .partition import Part
from .partplan import choose_parts, make_grid, patch_nonempty
from .prechecks import check_channels, check_pyramid, chunks_source
from .volume import open_volume

# blosc-zstd ratios of what the pieces hold, measured on this project's test models (bench_scaleout prints
# the run's own): int64 logit sums 0.65 (C planes; with the weight plane, C+1 planes, 0.5: the weights
# compress to a seventh), float16 logits 0.93, finalised uint8 values 0.84.
SUMS_RATIO, WEIGHTED_SUMS_RATIO, EDGE_RATIO, FINAL_EDGE_RATIO = 0.65, 0.5, 0.93, 0.84


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    """The plan as a dict (printed by the CLI as a table or JSON)."""
    cfg.validate()
    volume = open_volume(cfg.input_dir, cfg.level, cfg.input_storage_options)
    model = open_model_files(cfg.model_path, cfg.storage_options, cfg.model_cache_dir, cfg.folds)
    patch = tuple(cfg.patch_size or model.patch_size)
    n_folds, n_classes = len(model.checkpoints), model.num_classes
    check_channels(model.num_input_channels, volume.channels, cfg.input_dir)  # what predict would refuse
    chunks = tuple(cfg.chunk_size or patch)
    check_pyramid(volume.shape, chunks, cfg.levels, chunks_source(cfg.chunk_size, cfg.patch_size, chunks))
    grid = make_grid(volume.shape, patch, cfg.overlap, cfg.bbox, volume.where)  # type: ignore[arg-type]
    occ = volume.occupancy if cfg.skip_empty_patches else None
    nonempty = patch_nonempty(grid, occ, volume.chunks)
    parts, layout = choose_parts(grid, nonempty, cfg.num_parts, cfg.partition, volume.shape, chunks,  # type: ignore[arg-type]
                                 pairs=True)
    per_part = [int(nonempty[p.members(grid)].sum()) for p in parts]
    n_run = int(nonempty.sum())
    passes = n_run * n_folds * (8 if cfg.do_tta else 1)
    in_chunk_bytes = int(np.prod(volume.chunks)) * volume.channels * volume.dtype.itemsize
    present = int(occ.sum()) if occ is not None else int(np.prod(volume.chunk_grid.counts))
    # bytes to read: stored input chunks under a non-empty patch (the whole ROI with skipping off)
    touched = chunks_touched(grid, nonempty, volume.chunks, volume.chunk_grid.counts)
    to_read = int((touched & occ).sum()) if occ is not None else int(touched.sum())
    # output chunks that receive predictions: those a non-empty patch touches (upper bound: its footprint)
    out_vox = float(np.prod(volume.shape)) * (n_run / max(grid.n_patches, 1)) if occ is not None else float(
        np.prod(volume.shape))
    blended = out_vox * n_classes * 2
    seams = seam_estimate(grid, nonempty, layout, n_classes)
    plan = {
        "input": {"url": cfg.input_dir, "shape": list(volume.shape), "channels": volume.channels,
                  "dtype": str(volume.dtype), "chunks": list(volume.chunks),
                  "stored_chunks": present, "total_chunks": int(np.prod(volume.chunk_grid.counts))},
        "grid": {"patch": list(patch), "overlap": cfg.overlap, "per_axis": list(grid.counts),
                 "patches": grid.n_patches, "non_empty": n_run, "skipped_empty": grid.n_patches - n_run},
        "parts": {"count": cfg.num_parts, "non_empty_per_part": per_part, "partition": partition_name(parts),
                  "imbalance": (max(per_part) / max(1e-9, np.mean(per_part))) if n_run else 1.0},
        "model": {"folds": n_folds, "classes": n_classes, "tta": cfg.do_tta, "passes": passes},
        "bytes": {"read": to_read * in_chunk_bytes, "read_chunks": to_read, "blended_logits": int(blended),
                  "intermediates_estimate": seams["compressed_estimate"],
                  "output": int(out_vox * (1 if n_classes <= 2 else n_classes))},
        "seams": seams,
        "objects": {"output_chunks": seams["output_chunks"], "intermediate_chunks": seams["objects"],
                    "markers": 2 * cfg.num_parts},
    }
    if cfg.throughput:
        plan["gpu_hours"] = passes / cfg.throughput / 3600
    return plan


def partition_name(parts: list[Part]) -> str:
    """``slabs``, or ``NZxNY`` of a block split."""
    if parts[0].block is None:
        return "slabs"
    zs = {p.block[0] for p in parts if p.block}
    return f"{len(zs)}x{len(parts) // len(zs)}"


def seam_estimate(grid: PatchGrid, nonempty: np.ndarray, layout: PartLayout, n_classes: int) -> dict[str, Any]:
    """What the seam pieces of a fused run will hold (layout.py's geometry, the one predict uses):
    uncompressed bytes exact from the geometry, compressed at the measured ratios. Which side of a
    two-part seam stores its edge depends on which part finishes first: ``expected`` takes each side
    half the time, ``worst`` the larger edge every time."""
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
    logits = int(np.prod(cg.shape)) * n_classes * 2
    for name, pair_edge in edges.items():
        edge = (pair_edge + v["shared_edge"]) * c_out
        unc = pair_sums + shared_sums + edge
        cmp_ = pair_sums * SUMS_RATIO + shared_sums * WEIGHTED_SUMS_RATIO + edge * FINAL_EDGE_RATIO
        out[name] = {"sums_bytes": int(pair_sums + shared_sums), "edge_bytes": int(edge), "compressed": int(cmp_),
                     "ratio_to_logits": cmp_ / max(logits, 1), "uncompressed_ratio_to_logits": unc / max(logits, 1)}
    e = out["expected"]
    out.update(compressed_estimate=e["compressed"], ratio_to_logits=e["ratio_to_logits"],
               uncompressed_ratio_to_logits=e["uncompressed_ratio_to_logits"])
    return out


def format_plan(p: dict[str, Any]) -> str:
    def gb(b: float) -> str:
        return f"{b / 1e9:,.2f} GB"

    i, g, parts, m, b = p["input"], p["grid"], p["parts"], p["model"], p["bytes"]
    lines = [
        f"input      {i['url']}  {' x '.join(map(str, i['shape']))} x {i['channels']} ch {i['dtype']}, "
        f"chunks {tuple(i['chunks'])}, {i['stored_chunks']:,} of {i['total_chunks']:,} chunks stored",
        f"grid       patch {tuple(g['patch'])}, overlap {g['overlap']}, {' x '.join(map(str, g['per_axis']))} = "
        f"{g['patches']:,} patches, {g['non_empty']:,} non-empty, {g['skipped_empty']:,} skipped",
        f"parts      {parts['count']}: non-empty patches per part min {min(parts['non_empty_per_part']):,} "
        f"max {max(parts['non_empty_per_part']):,} (imbalance {parts['imbalance']:.2f})",
        f"model      {m['folds']} fold(s), {m['classes']} classes, TTA {'on' if m['tta'] else 'off'}: "
        f"{m['passes']:,} model passes",
        f"bytes      read {gb(b['read'])}, blended logits {gb(b['blended_logits'])}, "
        f"intermediates ~{gb(b['intermediates_estimate'])}, output {gb(b['output'])}",
        f"seams      {parts['partition']}: {p['seams']['pair_chunks']:,} two-part chunks (merged by predict), "
        f"{p['seams']['shared_chunks']:,} by blend, {p['seams']['own_chunks']:,} one part's; intermediates "
        f"~{p['seams']['ratio_to_logits']:.2f}x the float16 logits ({p['seams']['uncompressed_ratio_to_logits']:.2f}x "
        f"uncompressed; worst finish order {p['seams']['worst']['ratio_to_logits']:.2f}x, "
        f"{p['seams']['worst']['uncompressed_ratio_to_logits']:.2f}x)",
        f"objects    output {p['objects']['output_chunks']:,} chunks, intermediates {p['objects']['intermediate_chunks']:,} "
        f"chunks + {p['objects']['markers']} markers",
    ]
    if "gpu_hours" in p:
        lines.append(f"estimate   {p['gpu_hours']:,.1f} GPU-hours at the given throughput")
    return "\n".join(lines)


def run_plan(cfg: PlanConfig) -> dict[str, Any]:
    plan = make_plan(cfg)
    print(json.dumps(plan, indent=1) if cfg.as_json else format_plan(plan))
    return plan
