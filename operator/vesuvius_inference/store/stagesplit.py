"""One split of a stage (blend or finalize ``--num_parts/--part_id``): claimed, journaled, resumable.

The split claims its share (claims.py) so two live runs never write the same chunks, processes its
units in a fixed order while a journal records how many are written (only after their writes have
landed, so a killed run resumes after the last journaled unit), and writes a done marker. The split
that finds every marker present runs the stage's completion (which must be idempotent: a rerun of
a finished split checks again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.paths import split_marker_dir
from vesuvius_inference.contract.place import Place
from vesuvius_inference.contract.progress import Reporter
from vesuvius_inference.geometry.grid import split_chunks
from vesuvius_inference.store import cpuquota, storage
from vesuvius_inference.store.claimedwork import ClaimedWork
from vesuvius_inference.store.claims import Lease
from vesuvius_inference.store.iopool import WritePool

log = logging.getLogger("vesuvius_inference.stages")


class Journal:
    """Resume point of one stage split: how many of its units are written, saved every ``every_s``
    seconds (0: after every unit; longer: fewer small PUTs on object storage, more units redone after a kill)."""

    def __init__(self, work: Place, stage: str, part_id: int, *, config: dict[str, Any], every_s: float) -> None:
        self.place = _markers(work).join(f"{stage}_{part_id:05d}.progress.json")
        self.config, self.every_s = config, every_s
        prev = storage.read_json(self.place) or {}
        self.start = int(prev.get("done", 0)) if prev.get("config") == config else 0
        self._last = time.monotonic()

    def update(self, done: int, flush: Callable[[], None], force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self.every_s:
            flush()
            storage.write_json(self.place, {"config": self.config, "done": done})
            self._last = time.monotonic()


def _markers(work: Place) -> Place:
    return work.at(split_marker_dir(work.url))


def all_done(work: Place, stage: str, *, num_parts: int, config: dict[str, Any]) -> bool:
    mdir = _markers(work)
    names = set(storage.list_names(mdir))
    if not all(f"{stage}_{i:05d}.json" in names for i in range(num_parts)):
        return False
    return all((storage.read_json(mdir.join(f"{stage}_{i:05d}.json")) or {}).get("config") == config
               for i in range(num_parts))


_WORK: dict[str, int] = {}  # voxels each stage processed in this process (not what a journal had done)
_WORK_LOCK = threading.Lock()


def record_work(stage: str, voxels: int) -> None:
    with _WORK_LOCK:
        _WORK[stage] = _WORK.get(stage, 0) + int(voxels)


def work_done(stage: str) -> int:
    """Voxels ``stage`` processed in this process so far: what a stage's rate is over (the local pipeline
    reads it before and after each stage; a stage that found its work done shows no rate)."""
    with _WORK_LOCK:
        return _WORK.get(stage, 0)


@dataclass(kw_only=True)
class StageSplit:
    stage: str
    work: Place  # where claims, journals and done markers of this stage live
    part_id: int
    num_parts: int
    config: dict[str, Any]
    lease_s: float = 60.0
    quiet: bool = False
    journal_s: float = 2.0
    progress_s: float = 30.0

    def run(self, units: Sequence[Any], process: Callable[[Any, WritePool], int], on_complete: Callable[[], None],
            what: str) -> tuple[int, bool]:
        """Process this split's share of ``units`` (``process`` returns voxels written, for the speed shown);
        returns (units processed, whether the whole stage is now complete)."""
        name = f"{self.stage}_{self.part_id:05d}"
        mine = split_chunks(list(units), self.num_parts, self.part_id)
        work = ClaimedWork(self.work.join(f"{name}.claim.json"), _markers(self.work).join(f"{name}.json"),
                           f"{what} {self.part_id}/{self.num_parts}", lease_s=self.lease_s,
                           matches=lambda marker: marker.get("config") == self.config)
        _, ran = work.run(lambda lease: self._process(mine, process, lease, what))
        if not ran:
            log.info("%s %d/%d is already complete", what, self.part_id, self.num_parts)
        return len(mine) if ran else 0, self._complete_if_all_done(on_complete)

    def _process(self, mine: list[Any], process: Callable[[Any, WritePool], int], lease: Lease,
                 what: str) -> dict[str, Any]:
        journal = Journal(self.work, self.stage, self.part_id, config=self.config, every_s=self.journal_s)
        if journal.start:
            log.info("%s %d/%d: resuming after %d of %d units", what, self.part_id, self.num_parts, journal.start,
                     len(mine))
        io = WritePool(cpuquota.plan().writers, guard=lease.check)  # the CPU quota's
        t0, vox = time.perf_counter(), 0
        bar = Reporter(self.stage, self.part_id, self.num_parts, len(mine), "units", quiet=self.quiet,
                       interval_s=self.progress_s, done=journal.start)
        try:
            for n, unit in enumerate(mine[journal.start:], start=journal.start):
                got = process(unit, io)
                vox += got
                record_work(self.stage, got)
                bar.update(1, f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
                journal.update(n + 1, io.wait_all)
            io.close()
        except BaseException:
            io.abandon()
            raise
        finally:
            bar.close()
        self.resumed = journal.start
        return {"config": self.config, "units": len(mine)}

    resumed: int = field(default=0, init=False)  # units of this split a journal had done before this process

    def _complete_if_all_done(self, on_complete: Callable[[], None]) -> bool:
        """The last split completes the stage, under a claim of its own: two splits finishing at the same
        moment would otherwise both run the completion."""
        from vesuvius_inference.contract.errors import Busy

        if not all_done(self.work, self.stage, num_parts=self.num_parts, config=self.config):
            return False
        lease = Lease(self.work.join(f"{self.stage}_complete.claim.json"), f"completing {self.stage}",
                      lease_s=self.lease_s)
        try:
            lease.acquire(take_complete=True)
        except Busy:
            log.info("another run is completing %s", self.stage)
            return False
        with lease:
            on_complete()
            lease.complete()
        return True
