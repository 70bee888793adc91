"""``vesuvius-inference plan``: what a run will cost, from metadata and the chunk listing only.

No voxel is read and the model is not loaded, so this answers in seconds for a TB volume. The
patch counts are exactly what predict will process (same grid, same listing-based emptiness, same
part split); bytes are uncompressed sizes.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .config import PlanConfig
from .errors import BadArguments
from .grid import ChunkGrid, PatchGrid, chunks_touched, grid_parts
from .layout import SUMS, PartLayout
from .model_files import open_model_files
from .partplan import make_grid, patch_nonempty
from .volume import open_volume

# Typical blosc-zstd ratios of what the part stores hold, measured on this project's test models
# (tests/bench/bench_engine.py prints the run's own): int64 fixed-point sums compress to about half,
# float16 logits hardly at all.
SUMS_RATIO, EDGE_RATIO = 0.5, 0.95


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    """The plan as a dict (printed by the CLI as a table or JSON)."""
    if cfg.num_parts < 1:
        raise BadArguments("--num_parts must be >= 1")
    volume = open_volume(cfg.input_dir, cfg.level, cfg.input_storage_options)
    model = open_model_files(cfg.model_path, cfg.storage_options, cfg.model_cache_dir, cfg.folds)
    patch = tuple(cfg.patch_size or model.patch_size)
    n_folds, n_classes = len(model.checkpoints), model.num_classes
    chunks = tuple(cfg.chunk_size or patch)
    grid = make_grid(volume.shape, patch, cfg.overlap, cfg.bbox, volume.where)  # type: ignore[arg-type]
    occ = volume.occupancy if cfg.skip_empty_patches else None
    nonempty = patch_nonempty(grid, occ, volume.chunks)
    parts = grid_parts(grid, nonempty, cfg.num_parts)
    per_part = [int(nonempty[a:b].sum()) for a, b in parts]
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
    seams = seam_estimate(grid, nonempty, parts, volume.shape, chunks, n_classes)  # type: ignore[arg-type]
    plan = {
        "input": {"url": cfg.input_dir, "shape": list(volume.shape), "channels": volume.channels,
                  "dtype": str(volume.dtype), "chunks": list(volume.chunks),
                  "stored_chunks": present, "total_chunks": int(np.prod(volume.chunk_grid.counts))},
        "grid": {"patch": list(patch), "overlap": cfg.overlap, "per_axis": list(grid.counts),
                 "patches": grid.n_patches, "non_empty": n_run, "skipped_empty": grid.n_patches - n_run},
        "parts": {"count": cfg.num_parts, "non_empty_per_part": per_part,
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


def seam_estimate(grid: PatchGrid, nonempty: np.ndarray, parts: list[tuple[int, int]], shape: tuple[int, int, int],
                  chunks: tuple[int, int, int], n_classes: int) -> dict[str, Any]:
    """What the part stores will hold: the seam segments of the layout, over the chunk columns that get
    predictions. Uncompressed bytes are exact from the geometry; compressed ones assume typical ratios."""
    cg = ChunkGrid(shape, chunks)
    touched = chunks_touched(grid, nonempty, chunks, cg.counts)
    layout = PartLayout.build(grid, nonempty, parts, shape[0], chunks[0])
    ys = np.minimum(np.arange(cg.counts[1]) * chunks[1] + chunks[1], shape[1]) - np.arange(cg.counts[1]) * chunks[1]
    xs = np.minimum(np.arange(cg.counts[2]) * chunks[2] + chunks[2], shape[2]) - np.arange(cg.counts[2]) * chunks[2]
    area = np.outer(ys, xs)
    sums = edge = objects = 0
    for seg in layout.segments():
        cols = touched[seg.z0 // chunks[0]]
        vox = int((area * cols).sum()) * (seg.z1 - seg.z0)
        objects += int(cols.sum())
        if seg.kind == SUMS:
            sums += vox * (n_classes + 1) * 8
        else:
            edge += vox * n_classes * 2
    logits = int(np.prod(shape)) * n_classes * 2
    compressed = int(sums * SUMS_RATIO + edge * EDGE_RATIO)
    return {"seam_rows": len(layout.seam_rows), "rows": layout.rows, "seam_depth": layout.seam_depth(),
            "sums_bytes": sums, "edge_bytes": edge, "objects": objects, "compressed_estimate": compressed,
            "output_chunks": int(touched.sum()),
            "ratio_to_logits": compressed / max(logits, 1), "uncompressed_ratio_to_logits": (sums + edge) / max(logits, 1)}


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
        f"seams      {p['seams']['seam_rows']} of {p['seams']['rows']} chunk rows, {p['seams']['seam_depth']:,} z-slices "
        f"shared; intermediates ~{p['seams']['ratio_to_logits']:.2f}x the float16 logits "
        f"({p['seams']['uncompressed_ratio_to_logits']:.2f}x uncompressed)",
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
