"""One split of a stage (blend or finalize ``--num_parts/--part_id``): claimed, journaled, resumable.

The split claims its share (claims.py) so two live runs never write the same chunks, processes its
units in a fixed order while a journal records how many are written (only after their writes have
landed, so a killed run resumes after the last journaled unit), and writes a done marker. The split
that finds every marker present runs the stage's completion (which must be idempotent: a rerun of
a finished split checks again).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import cpuquota, storage
from .claims import Lease, default_lease_s, trusted_complete
from .grid import split_chunks
from .iopool import WritePool

log = logging.getLogger("vesuvius_inference.stages")
MARKERS = "_vesuvius"
# Seconds between journal writes (0: after every unit). Longer means fewer small PUTs on object
# storage and more units redone after a kill.
ENV_JOURNAL_INTERVAL = "VESUVIUS_JOURNAL_INTERVAL_S"


class Progress:
    """Resume point of one stage split: how many of its units are written, saved every few seconds."""

    def __init__(self, url: str, stage: str, part_id: int, config: dict[str, Any], so: dict[str, Any],
                 every_s: float | None = None) -> None:
        self.url = storage.join(url, MARKERS, f"{stage}_{part_id:05d}.progress.json")
        if every_s is None:
            every_s = float(os.environ.get(ENV_JOURNAL_INTERVAL, "2"))
        self.config, self.so, self.every_s = config, so, every_s
        prev = storage.read_json(self.url, so) or {}
        self.start = int(prev.get("done", 0)) if prev.get("config") == config else 0
        self._last = time.monotonic()

    def update(self, done: int, flush: Callable[[], None], force: bool = False) -> None:
        if force or time.monotonic() - self._last >= self.every_s:
            flush()
            storage.write_json(self.url, {"config": self.config, "done": done}, self.so)
            self._last = time.monotonic()


def all_done(work: str, stage: str, num_parts: int, config: dict[str, Any], so: dict[str, Any]) -> bool:
    mdir = storage.join(work, MARKERS)
    names = set(storage.list_names(mdir, so))
    if not all(f"{stage}_{i:05d}.json" in names for i in range(num_parts)):
        return False
    return all((storage.read_json(storage.join(mdir, f"{stage}_{i:05d}.json"), so) or {}).get("config") == config
               for i in range(num_parts))


@dataclass
class Split:
    stage: str
    work: str  # where claims, journals and done markers of this stage live
    part_id: int
    num_parts: int
    config: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)
    lease_s: float | None = None
    quiet: bool = False

    def run(self, units: Sequence[Any], process: Callable[[Any, WritePool], int], on_complete: Callable[[], None],
            what: str) -> tuple[int, bool]:
        """Process this split's share of ``units`` (``process`` returns voxels written, for the speed shown);
        returns (units processed, whether the whole stage is now complete)."""
        from tqdm import tqdm

        so, name = self.storage_options, f"{self.stage}_{self.part_id:05d}"
        lease = Lease(storage.join(self.work, f"{name}.claim.json"), f"{what} {self.part_id}/{self.num_parts}", so,
                      self.lease_s if self.lease_s is not None else default_lease_s())
        found = lease.acquire()
        marker = storage.join(self.work, MARKERS, f"{name}.json")
        mine = split_chunks(list(units), self.num_parts, self.part_id)
        if found is not None and (storage.read_json(marker, so) or {}).get("config") == self.config \
                and trusted_complete(lease.url, found.run, so):
            log.info("%s %d/%d is already complete", what, self.part_id, self.num_parts)
            return 0, self._complete_if_all_done(on_complete)
        if found is not None:
            lease.acquire(take_complete=True)
        with lease:
            progress = Progress(self.work, self.stage, self.part_id, self.config, so)
            if progress.start:
                log.info("%s %d/%d: resuming after %d of %d units", what, self.part_id, self.num_parts,
                         progress.start, len(mine))
            io = WritePool(cpuquota.plan().writers, guard=lease.check)  # the CPU quota's
            t0, vox = time.perf_counter(), 0
            try:
                with tqdm(total=len(mine), initial=progress.start, desc=f"{what} {self.part_id}/{self.num_parts}",
                          unit="unit", disable=self.quiet, mininterval=1.0) as bar:
                    for n, unit in enumerate(mine[progress.start:], start=progress.start):
                        vox += process(unit, io)
                        bar.update(1)
                        bar.set_postfix_str(f"{vox / max(time.perf_counter() - t0, 1e-9) / 1e6:.1f} Mvox/s")
                        progress.update(n + 1, io.wait_all)
                io.close()
            except BaseException:
                io.abandon()
                raise
            lease.confirm()
            storage.write_json(marker, {"config": self.config, "units": len(mine)}, so)
            lease.complete()
        return len(mine), self._complete_if_all_done(on_complete)

    def _complete_if_all_done(self, on_complete: Callable[[], None]) -> bool:
        """The last split completes the stage, under a claim of its own: two splits finishing at the same
        moment would otherwise both run the completion."""
        from .errors import Busy

        so = self.storage_options
        if not all_done(self.work, self.stage, self.num_parts, self.config, so):
            return False
        lease = Lease(storage.join(self.work, f"{self.stage}_complete.claim.json"), f"completing {self.stage}", so,
                      self.lease_s if self.lease_s is not None else default_lease_s())
        try:
            lease.acquire(take_complete=True)
        except Busy:
            log.info("another run is completing %s", self.stage)
            return False
        with lease:
            on_complete()
            lease.complete()
        return True
