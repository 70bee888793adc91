"""One claimed run of a predict part: build its machinery, resume, run its patches, finish.

Called by ``predict.run_predict`` under the part's claim (claimedwork.py). Everything a kill can
interrupt is recoverable: the checkpoint (every ``--checkpoint_s``) records how many patches are
done, which ran, and where the partial sums of unfinished chunks are; a rerun (after a kill, or a
takeover of a dead run's claim) copies that run's store into its own and continues, giving the same
bytes. A stop signal (signals.py) ends the loop at the next batch boundary with a checkpoint; the
checkpoint is a journal (checkpoint.py), so writing it costs what changed since the last one. The
loop: patches read ahead (reader.py) -> the device step (devicestep.py) -> the chunk
countdown of the accumulator (accumulate.py) -> completed chunks to the part's writer (partwriter.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.config import PredictConfig
from vesuvius_inference.contract.errors import BadInput, Stopped
from vesuvius_inference.contract.intensity import ATTRIBUTE, IntensityFinding
from vesuvius_inference.contract.place import Place
from vesuvius_inference.contract.prechecks import check_channels
from vesuvius_inference.contract.progress import ProgressLine, Reporter
from vesuvius_inference.geometry.fixedpoint import logit_bits_for, weights_digest
from vesuvius_inference.geometry.grid import Shape3
from vesuvius_inference.geometry.partplan import PartPlan, Source, plan_part
from vesuvius_inference.model.files import ModelFiles
from vesuvius_inference.predict import signals
from vesuvius_inference.predict.accumulate import ChunkAccumulator, box_slices
from vesuvius_inference.predict.devicestep import DeviceStep
from vesuvius_inference.predict.fixedpoint_torch import weight_q
from vesuvius_inference.predict.partwriter import PartWriter
from vesuvius_inference.predict.runner import size_torch
from vesuvius_inference.store import storage
from vesuvius_inference.store.checkpoint import Delta, Journal, State, fold, read_head
from vesuvius_inference.store.claimedwork import ClaimedWork
from vesuvius_inference.store.claims import Lease
from vesuvius_inference.store.iopool import WritePool
from vesuvius_inference.store.output import BLENDED, FINAL, Output, OutputSpec, output_config
from vesuvius_inference.store.partstore import (
    PAIRS,
    SPILLS,
    create_store,
    drop_scratch,
    open_store,
    pack_mask,
)
from vesuvius_inference.store.preflight import settings_diff
from vesuvius_inference.store.reader import Patch, PatchReader
from vesuvius_inference.store.seams import FIRST, SECOND, SeamMerge
from vesuvius_inference.store.volume import InputVolume

log = logging.getLogger("vesuvius_inference.predict.stage")


def output_spec(cfg: PredictConfig) -> OutputSpec | None:
    """The output this part writes its own chunk rows into, if it was told one."""
    if cfg.final_output:  # ngff "auto" is resolved against the input by predict.prepare
        return OutputSpec(cfg.final_output, FINAL, cfg.mode, cfg.threshold, cfg.levels, cfg.ngff_version)
    if cfg.blended_output:
        return OutputSpec(cfg.blended_output, BLENDED)
    return None


@dataclass
class PartContext:
    """What is known before the model is loaded: enough to tell whether the part is done, and to plan it.
    The input is opened and the model folder resolved and read once per part, here."""

    cfg: PredictConfig
    parts: Place  # the parts directory (--output_dir), with the command's storage options
    volume: InputVolume
    model: ModelFiles
    patch: Shape3
    chunks: Shape3
    fp: dict[str, Any]
    device: Any = None  # a GPU asked for, checked before anything else (auto and cpu: resolved by PartRun)
    intensity: dict[str, Any] | None = None  # the input's intensities against the model's (intensity.py), if off

    @property
    def work(self) -> ClaimedWork:
        cfg, parts = self.cfg, self.parts

        def matches(marker: dict[str, Any]) -> bool:
            if marker.get("config") == self.fp:
                return True
            if not cfg.overwrite:
                diff = settings_diff({"predict": marker.get("config") or {}}, {"predict": self.fp})
                raise BadInput(f"{paths.marker_url(cfg.output_dir, cfg.part_id)} was written with other settings "
                               f"({diff}); pass --overwrite to replace it, or choose another --output_dir")
            return False

        return ClaimedWork(parts.at(paths.claim_url(parts.url, cfg.part_id)),
                           parts.at(paths.marker_url(parts.url, cfg.part_id)), f"predict part {cfg.part_id} of {parts}",
                           lease_s=cfg.lease_s, info={"part_id": cfg.part_id}, matches=matches)


def brief(finding: dict[str, Any] | None) -> str:
    """The intensity finding repeated at the end of a summary line ("" without one): a warning logged once
    at the start scrolls away under the progress lines of a long run."""
    found = IntensityFinding.from_dict(finding)
    return f"; {found.brief()}" if found else ""


def shared_stats(ctx: PartContext, normalizer: Any) -> list[dict[str, Any]]:
    """Whole-volume statistics, computed by the first part and reused by the others.

    Stored next to the parts, keyed by everything they depend on; the input is read for them at
    most once per run, not once per part.
    """
    fp = ctx.fp
    if not normalizer.needs_stats:
        return normalizer.compute_stats(ctx.volume)
    key = {k: fp[k] for k in ("input", "level", "shape", "channels", "dtype")} | {"schemes": normalizer.schemes,
                                                                                  "use_mask": normalizer.use_mask}
    place = ctx.parts.at(paths.input_stats(ctx.parts.url))
    cached = storage.read_json(place)
    if cached and cached.get("key") == key:
        normalizer.stats = cached["stats"]
        return normalizer.stats
    stats = normalizer.compute_stats(ctx.volume)
    storage.write_json(place, {"key": key, "stats": stats})
    return stats


def the_plan(ctx: PartContext) -> PartPlan:
    cfg, volume = ctx.cfg, ctx.volume
    src = Source(volume.shape, volume.chunks, volume.occupancy if cfg.skip_empty_patches else None,
                 volume.channels * volume.dtype.itemsize)
    return plan_part(src, patch=ctx.patch, chunks=ctx.chunks, overlap=cfg.overlap, bbox=cfg.bbox,
                     num_parts=cfg.num_parts, part_id=cfg.part_id, skip_empty=cfg.skip_empty_patches,
                     patch_order=cfg.patch_order, input_cache_bytes=cfg.input_cache_bytes, partition=cfg.partition,
                     pairs=ctx.fp.get("seams") == PAIRS)


def drop_scratch_quietly(parts: Place, part_id: int, run: str) -> None:
    """After the marker: spills, the checkpoint and earlier runs' stores go (leftovers only cost space)."""
    try:
        drop_scratch(parts, part_id, run)
    except OSError as e:
        log.warning("could not remove scratch data of %s: %s", paths.store_url(parts.url, part_id, run), e)


class PartRun:
    """The machinery of one run of one part, and its loop. ``run()`` returns the part's marker."""

    def __init__(self, ctx: PartContext, lease: Lease, listener: Callable[[ProgressLine], None] | None = None) -> None:
        from vesuvius_inference.model.network import load_model
        from vesuvius_inference.model.normalization import Normalizer
        from vesuvius_inference.predict.runner import Runner, resolve_device

        self.t0 = time.perf_counter()
        self.ctx, self.cfg, self.lease, self.listener = ctx, ctx.cfg, lease, listener
        cfg, volume = ctx.cfg, ctx.volume
        self.model = load_model(ctx.model)
        check_channels(self.model.num_input_channels, volume.channels, cfg.input_dir)
        self.device = ctx.device if ctx.device is not None else resolve_device(cfg.device)
        self.plan = the_plan(ctx)
        self.normalizer = Normalizer.from_plans(self.model.configuration_manager, self.model.plans_manager,
                                                volume.channels)
        self.stats = shared_stats(ctx, self.normalizer)
        self.key = {"config": ctx.fp, "todo": self.plan.todo_digest}
        self.store = ctx.parts.at(paths.store_url(ctx.parts.url, cfg.part_id, lease.run_id))
        self.spec = output_spec(cfg)
        self.runner = Runner(self.model, self.device, cfg.do_tta, cfg.batch_size, compile=cfg.compile)
        self.ran = np.zeros(len(self.plan.members), dtype=bool)  # per member of the part: did it run
        self.counts = {"run": 0, "skipped_homogeneous": 0, "skipped_absent": self.plan.listed_empty}
        self.start = 0
        self.run_here = 0
        self.ran_new: list[int] = []  # member positions that ran since the last checkpoint
        self.written_saved = 0  # how many of the writer's written chunks the last checkpoint holds
        self.journal = Journal(self.store)
        self.ckpt_times: list[float] = []

    # ---- building --------------------------------------------------------------------------------

    def _previous_checkpoint(self) -> tuple[Place, State] | None:
        """The latest usable checkpoint of an earlier run of this part: (its store, its state)."""
        cfg, parts, prev = self.cfg, self.ctx.parts, self.lease.previous
        if cfg.overwrite or prev is None:
            return None
        for run in [prev.run, *reversed(prev.doc.get("prev_runs", []))]:
            theirs = parts.at(paths.store_url(parts.url, cfg.part_id, run))
            head = read_head(theirs)
            if head is None or any(head.get(k) != v for k, v in self.key.items()):
                continue
            state = fold(theirs, head, members=len(self.plan.members))
            if state is None:
                continue
            log.info("predict part %d/%d: resuming after patch %d (the checkpoint of run %s)", cfg.part_id,
                     cfg.num_parts, state.position, run)
            return theirs, state
        return None

    def _adopt(self, theirs: Place, state: State, group: Any) -> None:
        """Copy into this run's new store what the earlier run's checkpoint refers to, and nothing else:
        the checkpointed sums of its unfinished chunks (each in the same spill slot), its pieces and, in
        the seed's layout, its final chunks. Not the whole store: its spill arrays also keep the stale
        sums of every chunk that completed since, which grow with the part. This run's own checkpoint
        (the journal's base) is written after the copies, so a kill mid-copy leaves nothing to resume
        from here, never a checkpoint whose sums are missing."""
        cgrid = self.plan.cgrid
        old = open_store(theirs, read_only=True)
        for idx, slot in state.where.items():
            sel = (slice(None),) + box_slices(*cgrid.box(idx))
            self.io.submit(("adopt", idx), _copy, old[SPILLS[slot]], group[SPILLS[slot]], sel)
        self.io.wait_all()
        for sub in (paths.PIECES, "final/c"):
            src = theirs.join(sub)
            if storage.exists(src):
                storage.copy_tree(src, self.store.join(sub))

    def _build(self) -> None:
        ctx, cfg, plan = self.ctx, self.cfg, self.plan
        c, volume = self.model.num_classes, ctx.volume
        group = create_store(self.store, {"config": ctx.fp, "part_id": cfg.part_id, "run": self.lease.run_id},
                             n_classes=c, shape=volume.shape, chunks=ctx.chunks, seed_layout=self.spec is None)
        self.group = group
        threads = size_torch()  # torch and the writers follow the container's CPU quota, not the node's
        self.io = WritePool(threads.writers, guard=self.lease.check)
        spec = self.spec
        owned = Output(spec, ctx.parts.at(spec.url), num_classes=c, shape=volume.shape, chunks=ctx.chunks,
                       config=output_config(ctx.fp, spec),
                       staging=ctx.parts.at(paths.pyramid_staging(ctx.parts.url))) if spec \
            else Output.for_array(group["final"])
        self.bits = logit_bits_for(plan.grid.max_coverage())
        wq = weight_q(ctx.patch)
        self.seams = SeamMerge(place=ctx.parts.at(paths.seams_dir(ctx.parts.url, paths.config_digest(ctx.fp))),
                               part=cfg.part_id, run=self.lease.run_id, layout=plan.layout, grid=plan.grid,
                               wq=wq.numpy(), wq_digest=weights_digest(wq), bits=self.bits, classes=c,
                               output=owned) if plan.layout.pairs else None
        self.writer = PartWriter(plan.layout, cfg.part_id, owned, cgrid=plan.cgrid, logit_bits=self.bits, io=self.io,
                                 pieces=self.store.at(paths.pieces_dir(self.store.url)), seams=self.seams,
                                 ran_ids=self.ran_ids, edge_encode=owned.encode_full)
        cache_bytes = max(1, int(cfg.cache_gb * (1 << 30)) - volume.cache_bytes)
        self.accum = ChunkAccumulator(plan.cgrid, c + 1, plan.remaining, cache_bytes=cache_bytes, device=self.device,
                                      spills=(group[SPILLS[0]], group[SPILLS[1]]), on_complete=self.writer,
                                      io=self.io)
        self.step = DeviceStep(self.runner, self.normalizer, plan.grid, channels=volume.channels,
                               batch_size=cfg.batch_size, wq=wq.to(self.device), bits=self.bits, accum=self.accum)

    def ran_ids(self, box: Any) -> list[int]:
        """This part's patches that ran and reach ``box`` (a seam piece's shared box)."""
        members = self.plan.members
        ids = self.plan.grid.patches_touching(*box)
        if members.size == 0 or ids.size == 0:
            return []
        pos = np.minimum(self.plan.position(ids), len(members) - 1)
        mine = members[pos] == ids
        return [int(i) for i in ids[mine][self.ran[pos[mine]]]]

    def _resume(self, theirs: Place, state: State) -> None:
        self._adopt(theirs, state, self.group)
        self.start = state.position
        self.counts = dict(state.stats)
        self.ran = state.ran
        self.writer.written = list(state.written)
        for i in self.plan.todo[:self.start]:
            self.accum.replay_done(*self.plan.grid.region(i))
        self.accum.restore(state.where, state.evictions)
        self.checkpoint(self.start)  # this run's own base, after the copies it names

    def _state(self, position: int) -> State:
        return State(position, dict(self.counts), self.accum.evictions, self.ran, list(self.writer.written),
                     dict(self.accum.where))

    def checkpoint(self, position: int, stopping: bool = False) -> float:
        """Write a checkpoint after ``position`` patches of the order; returns its seconds. A stop's checkpoint
        writes only its delta (never a compaction), so what a grace period must cover stays small."""
        t = time.perf_counter()
        self.step.check()  # a NaN must not reach a checkpoint
        moved = self.accum.checkpoint()
        written = self.writer.written[self.written_saved:]
        head = {**self.key, "position": position, "stats": self.counts, "evictions": self.accum.evictions,
                "run": self.lease.run_id}
        self.journal.write(head, Delta(self.ran_new, written, moved),
                           None if stopping and self.journal.next > 0 else lambda: self._state(position))
        self.accum.committed()
        self.ran_new = []
        self.written_saved += len(written)
        dt = time.perf_counter() - t
        self.ckpt_times.append(dt)
        return dt

    def _stop_if_asked(self, position: int) -> None:
        """At a batch boundary: on a stop signal, checkpoint here and stop (signals.py)."""
        name = signals.requested()
        if name is None:
            return
        cfg = self.cfg
        dt = self.checkpoint(position, stopping=True)
        raise Stopped(f"stopped by {name} after patch {self.plan.listed_empty + position} of "
                      f"{self.plan.part.size()} (predict part {cfg.part_id}/{cfg.num_parts}); checkpoint written "
                      f"({dt:.2f} s, {self.journal.last_bytes} bytes); rerun resumes")

    def _run_batch(self, batch: list[Patch], bar: Reporter) -> None:
        self.step(batch)
        for p in batch:
            pos = int(self.plan.position(np.asarray(p.index, dtype=np.int64)))
            self.ran[pos] = True
            self.ran_new.append(pos)
            self.accum.patch_done(p.lo, p.hi)
        self.counts["run"] += len(batch)
        self.run_here += len(batch)
        dt = max(time.perf_counter() - self.t_loop, 1e-9)
        bar.update(len(batch), f"{self.run_here * int(np.prod(self.ctx.patch)) / dt / 1e6:.2f} Mvox/s")

    def _loop(self, bar: Reporter) -> None:
        plan, cfg = self.plan, self.cfg
        for i in plan.members:  # patches empty by the listing only count down chunks
            if not plan.nonempty[i]:
                self.accum.patch_done(*plan.grid.region(int(i)))
        reader = PatchReader(self.ctx.volume, plan.grid, plan.todo[self.start:], cfg.skip_empty_patches,
                             2 * cfg.batch_size + 2)
        self.t_loop, last_ckpt = time.perf_counter(), time.monotonic()
        batch: list[Patch] = []
        position = self.start
        try:
            for item in reader:
                position += 1
                if item.data is None:
                    self.counts["skipped_homogeneous"] += 1
                    self.accum.patch_done(item.lo, item.hi)
                    bar.update(1)
                    if not batch:  # a batch boundary: the resumed run batches exactly as this one would
                        self._stop_if_asked(position)
                    continue
                batch.append(item)
                if len(batch) == cfg.batch_size:
                    self._run_batch(batch, bar)
                    batch = []
                    self._stop_if_asked(position)
                    if time.monotonic() - last_ckpt >= cfg.checkpoint_s:
                        self.checkpoint(position)  # every patch drained so far is finished
                        last_ckpt = time.monotonic()
            if batch:
                self._run_batch(batch, bar)
        finally:
            reader.close()

    def run(self) -> dict[str, Any]:
        """Called inside ``signals.deferred`` (predict.run_predict): a stop signal ends the loop at a batch
        boundary, with a checkpoint."""
        resume = self._previous_checkpoint()
        self._build()
        if resume is not None:
            self._resume(*resume)
        cfg = self.cfg
        bar = Reporter("predict", cfg.part_id, cfg.num_parts, self.plan.part.size(), "patches",
                       quiet=cfg.quiet or self.listener is not None, interval_s=cfg.progress_s,
                       done=self.plan.listed_empty + self.start, listener=self.listener)
        try:
            signals.raise_if_requested(f"before this run computed a patch of predict part {cfg.part_id}/"
                                       f"{cfg.num_parts}" + (f" (its checkpoint after patch {self.start} is kept)"
                                                             if resume is not None else ""))
            self._loop(bar)
            self.step.check()
            self.accum.finish()
            self.io.close()
        except BaseException:
            self.io.abandon()
            raise
        finally:
            bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """The part's marker (claimedwork writes it once the lease is confirmed), and its summary line."""
        cfg, plan, writer = self.cfg, self.plan, self.writer
        seams = dict(self.seams.outcomes) if self.seams else {}
        marker = {
            "config": self.ctx.fp, "complete": True, "part_id": cfg.part_id, "part": plan.part.as_dict(),
            "store": self.store.url, "num_classes": self.model.num_classes, "logit_bits": self.bits,
            "normalization": self.stats, "listed": pack_mask(plan.nonempty[plan.members]),
            "ran": pack_mask(self.ran), "written": [list(x) for x in writer.written],
            "pieces": writer.piece_count, "seams": seams,
            "patches": {"total": plan.part.size(), **self.counts, "run_by_last_run": self.run_here,
                        "resumed_at": self.start},
            "evictions": self.accum.evictions, "cache_peak_bytes": self.accum.peak,
            "checkpoints": {"count": len(self.ckpt_times), "seconds": round(sum(self.ckpt_times), 4),
                            "max_seconds": round(max(self.ckpt_times, default=0.0), 4)},
            "input_chunks_fetched": self.ctx.volume.fetched_chunks,
            "model_passes": self.counts["run"] * self.runner.passes_per_patch,
            ATTRIBUTE: self.ctx.intensity,  # blend and finalize carry it into the output's attributes
        }
        log.info("%s", self.summary(len(writer.written), seams, writer.piece_count))
        return marker

    def summary(self, written: int, seams: dict[str, int], pieces: int) -> str:
        """The part's summary line. Patches a checkpoint already had are counted as resumed, not run, and
        the rate is over this process's work in voxels of the region (its share of the --bbox, or of the
        level), the unit of the pipeline's stage line, so the two agree."""
        cfg, plan = self.cfg, self.plan
        dt = time.perf_counter() - self.t0
        before = self.counts["run"] - self.run_here
        skipped = self.counts["skipped_homogeneous"] + self.counts["skipped_absent"]
        advanced = len(plan.todo) - self.start  # the part's patches this process read (run or found homogeneous)
        vox = advanced * region_voxels_per_patch(plan.grid, self.ctx.volume.channels)
        rate = f"{vox / max(dt, 1e-9) / 1e6:.2f} Mvox/s of the region" if advanced else "nothing left to run"
        resumed = f" ({before} more run before, resumed from a checkpoint at {self.start})" if self.start else ""
        return (f"predict part {cfg.part_id}/{cfg.num_parts}: {self.run_here} patches run{resumed}, {skipped} empty "
                f"skipped, {written} chunks written{f' to {self.spec.url}' if self.spec else ''}, seams: "
                f"{seams.get(SECOND, 0)} merged, {seams.get(FIRST, 0)} pieces left for the other part, {pieces} for "
                f"blend, {dt:.1f} s, {rate}{brief(self.ctx.intensity)}")


def region_voxels_per_patch(grid: Any, channels: int = 1) -> float:
    """Each patch's share of the region's voxels (the --bbox, or the level): how a count of patches becomes
    voxels for a rate, the same for a part and for the stage."""
    return float(np.prod(grid.shape)) * channels / max(grid.n_patches, 1)

def _copy(src: Any, dst: Any, sel: tuple[slice, ...]) -> None:
    dst[sel] = src[sel]
