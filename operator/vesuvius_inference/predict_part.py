"""The work of one claimed predict part: the loop from patches to completed chunks, and resume.

Called by ``predict.run_predict`` once the part's claim is held. Everything a kill can interrupt
is recoverable: the checkpoint (every ``--checkpoint_s``) records how many patches are done, which
ran, and where the partial sums of unfinished chunks are; a rerun (after a kill, or a takeover of
a dead run's claim) copies that run's store into its own and continues, giving the same bytes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from . import storage
from .accumulate import ChunkAccumulator
from .claims import Lease
from .devicestep import DeviceStep
from .errors import BadInput
from .fixedpoint import logit_bits_for, weight_q
from .grid import ChunkGrid, grid_parts
from .iopool import WritePool
from .layout import PartLayout
from .output import Output, output_config
from .partstore import (
    CHECKPOINT,
    SPILLS,
    PartWriter,
    create_store,
    drop_scratch,
    open_store,
    pack_mask,
    store_url,
)
from .predict import _Context, _digest, _shared_stats, make_grid, part_order, patch_nonempty, plan_part
from .reader import Patch, PatchReader

log = logging.getLogger("vesuvius_inference.predict")
WRITERS = 4


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="patch", disable=quiet, dynamic_ncols=True, mininterval=1.0)


def _resume_point(ctx: _Context, lease: Lease, key: dict[str, Any], mine: str) -> dict[str, Any] | None:
    """The latest usable checkpoint of an earlier run of this part, copied into this run's store."""
    so = ctx.cfg.storage_options
    if ctx.cfg.overwrite or lease.previous is None:
        return None
    runs = [lease.previous.run, *reversed(lease.previous.doc.get("prev_runs", []))]
    for run in runs:
        theirs = store_url(ctx.cfg.output_dir, ctx.cfg.part_id, run)
        ckpt = storage.read_json(storage.join(theirs, CHECKPOINT), so)
        if ckpt is None or any(ckpt.get(k) != v for k, v in key.items()):
            continue
        storage.copy_tree(theirs, mine, so)
        log.info("predict part %d/%d: resuming after patch %d (the checkpoint of run %s)", ctx.cfg.part_id,
                 ctx.cfg.num_parts, ckpt["position"], run)
        return ckpt
    return None


def predict_part(ctx: _Context, lease: Lease) -> tuple[str, str]:
    cfg, volume = ctx.cfg, ctx.volume
    so = cfg.storage_options
    t0 = time.perf_counter()
    from .model import load_model
    from .normalization import Normalizer
    from .runner import Runner, resolve_device

    model = load_model(ctx.model_dir, cfg.folds)
    if model.num_input_channels != volume.channels:
        raise BadInput(f"model expects {model.num_input_channels} input channel(s), {cfg.input_dir} has {volume.channels}")
    c = model.num_classes
    device = ctx.device if ctx.device is not None else resolve_device(cfg.device)
    grid = make_grid(volume.shape, ctx.patch, cfg.overlap, cfg.bbox)
    cgrid = ChunkGrid(volume.shape, ctx.chunks)
    nonempty = patch_nonempty(grid, volume, cfg.skip_empty_patches)
    parts = grid_parts(grid, nonempty, cfg.num_parts)
    part = parts[cfg.part_id]
    layout = PartLayout.build(grid, nonempty, parts, volume.shape[0], ctx.chunks[0])
    remaining = plan_part(grid, cgrid, part)
    normalizer = Normalizer.from_plans(model.configuration_manager, model.plans_manager, volume.channels)
    stats = _shared_stats(cfg, normalizer, volume, ctx.fp)
    todo = part_order(grid, part, nonempty, cfg, volume)
    key = {"config": ctx.fp, "todo": _digest(todo)}
    run = lease.run_id
    mine = store_url(cfg.output_dir, cfg.part_id, run)
    spec = cfg.output_spec
    resume = _resume_point(ctx, lease, key, mine)
    if resume is not None:
        group = open_store(mine, so)
    else:
        group = create_store(mine, {"config": ctx.fp, "part_id": cfg.part_id, "run": run}, c, volume.shape, ctx.chunks,
                             layout.segments(cfg.part_id), spec is None, so)
    io = WritePool(WRITERS, guard=lease.check)
    from .partstore import pyramid_staging

    owned = Output(spec, c, volume.shape, ctx.chunks, output_config(ctx.fp, spec), so,
                   staging=pyramid_staging(cfg.output_dir)) if spec else Output.for_array(group["final"])
    bits = logit_bits_for(grid.max_coverage())
    writer = PartWriter(layout, cfg.part_id, group, owned, cgrid, bits, io)
    cache_bytes = max(1, int(cfg.cache_gb * (1 << 30)) - volume.cache_bytes)
    accum = ChunkAccumulator(cgrid, c + 1, remaining, cache_bytes, device, (group[SPILLS[0]], group[SPILLS[1]]),
                             writer, io)
    runner = Runner(model, device, cfg.do_tta, cfg.batch_size, compile=cfg.compile)
    wq = weight_q(ctx.patch).to(device)
    a, b = part
    ran = np.zeros(b - a, dtype=bool)
    skipped_listing = (b - a) - len(todo)
    stats_run = {"run": 0, "skipped_homogeneous": 0, "skipped_absent": skipped_listing}
    start = 0
    ckpt_url = storage.join(mine, CHECKPOINT)
    if resume is not None:
        start = int(resume["position"])
        stats_run = dict(resume["stats"])
        from .partstore import unpack_mask

        ran = unpack_mask(resume["ran"], b - a)
        writer.written = [tuple(x) for x in resume["written"]]  # type: ignore[misc]
        for i in todo[:start]:
            accum.replay_done(*grid.region(i))
        accum.restore(resume["accumulator"])
    step = DeviceStep(runner, normalizer, grid, volume.channels, cfg.batch_size, wq, bits, accum)
    reader = PatchReader(volume, grid, todo[start:], cfg.skip_empty_patches, 2 * cfg.batch_size + 2)
    patch_vox = int(np.prod(ctx.patch))
    bar = _progress(b - a, f"predict part {cfg.part_id}/{cfg.num_parts}", cfg.quiet)
    bar.update(skipped_listing + start)
    t_loop, last_ckpt, run_here = time.perf_counter(), time.monotonic(), 0

    def checkpoint(position: int) -> None:
        step.check()  # a NaN must not reach a checkpoint
        state = accum.checkpoint()
        storage.write_json(ckpt_url, {**key, "position": position, "stats": stats_run, "ran": pack_mask(ran),
                                      "written": [list(x) for x in writer.written], "accumulator": state}, so)
        accum.committed()

    try:
        for i in range(a, b):  # patches empty by the listing only count down chunks
            if not nonempty[i]:
                accum.patch_done(*grid.region(i))
        batch: list[Patch] = []
        position = start
        items = iter(reader)
        while True:
            item = next(items, None)
            if item is not None:
                position += 1
                if item.data is None:
                    stats_run["skipped_homogeneous"] += 1
                    accum.patch_done(item.lo, item.hi)
                    bar.update(1)
                else:
                    batch.append(item)
            if batch and (len(batch) == cfg.batch_size or item is None):
                step(batch)
                for p in batch:
                    ran[p.index - a] = True
                    accum.patch_done(p.lo, p.hi)
                bar.update(len(batch))
                stats_run["run"] += len(batch)
                run_here += len(batch)
                batch = []
                bar.set_postfix_str(f"{run_here * patch_vox / max(time.perf_counter() - t_loop, 1e-9) / 1e6:.2f} Mvox/s")
                if item is not None and time.monotonic() - last_ckpt >= cfg.checkpoint_s:
                    checkpoint(position)  # every patch drained so far is finished
                    last_ckpt = time.monotonic()
            if item is None:
                break
        step.check()
        accum.finish()
        io.close()
    except BaseException:
        io.abandon()
        raise
    finally:
        reader.close()
        bar.close()

    marker = {
        "config": ctx.fp, "complete": True, "part_id": cfg.part_id, "part": list(part), "run": run,
        "store": mine, "num_classes": c, "logit_bits": bits, "normalization": stats,
        "cover": list(layout.covers[cfg.part_id]) if layout.covers[cfg.part_id] else None,
        "ran": pack_mask(ran), "written": [list(x) for x in writer.written],
        "segments": [s.name for s in layout.segments(cfg.part_id)],
        "patches": {"total": b - a, **stats_run, "run_by_last_run": run_here, "resumed_at": start},
        "evictions": accum.evictions, "cache_peak_bytes": accum.peak,
        "input_chunks_fetched": volume.fetched_chunks,
        "model_passes": stats_run["run"] * runner.passes_per_patch,
    }
    lease.confirm()
    storage.write_json(ctx.marker_url, marker, so)
    lease.complete(marker=ctx.marker_url)
    try:
        drop_scratch(cfg.output_dir, cfg.part_id, run, so)
    except OSError as e:  # the part is complete; leftovers only cost space
        log.warning("could not remove scratch data of %s: %s", mine, e)
    dt = time.perf_counter() - t0
    log.info("predict part %d/%d: %d patches run, %d empty skipped, %d chunks written%s, %d seam pieces, %.1f s, "
             "%.2f Mvox/s", cfg.part_id, cfg.num_parts, stats_run["run"],
             stats_run["skipped_homogeneous"] + stats_run["skipped_absent"], len(writer.written),
             f" to {spec.url}" if spec else "", writer.segment_chunks, dt,
             stats_run["run"] * patch_vox / max(dt, 1e-9) / 1e6)
    return mine, ctx.marker_url
