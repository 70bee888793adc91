"""A predict part's checkpoint as a journal, so that writing one costs what changed, not the part's size.

The state a resume needs is: how many patches of the part's order are done (``position``), which of
them ran (the ``ran`` mask that blend reads from the marker), which output chunks were written, and,
for every unfinished chunk whose partial sums are stored, the spill slot that holds them (``where``).
The last three grow with the part (a scroll part has ~80,000 patches and ~10,000 chunks); rewriting them
whole at every checkpoint made each one cost O(part) and a checkpoint after every batch O(part^2) in
all. Measured before this journal: the checkpoint JSON of one part grew from 1.3 KB to 9.5 KB over a
64x192x192 volume.

Layout, in the run's store::

    checkpoint.json           head: the part's key (config + todo digest), position, counters, and the
                              range [first, last] of segments to read; written last, atomically
    checkpoint/<n>.json       segment n: a delta (patches that ran, chunks written, spill slots changed
                              since segment n-1) or a base (the whole state)

A checkpoint writes one segment, then the head. A reader folds the base ``first`` and the deltas after
it. Every :data:`MAX_SEGMENTS` segments, or when the deltas since the base outweigh it, the next
checkpoint writes a base instead (log compaction: O(delta) per checkpoint amortised, and a resume
reads at most about twice the state); a checkpoint taken on a stop signal never compacts, so the one a
grace period must cover costs only its delta. Segments before the head's ``first`` are removed after
the head names a newer base; a kill at any point leaves the previous head and the segments it names
intact (segment numbers only grow, and a head is only written after its segment).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vesuvius_inference.contract.paths import CHECKPOINT, CHECKPOINT_SEGMENTS
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.grid import Shape3
from vesuvius_inference.store import storage
from vesuvius_inference.store.partstore import pack_mask, unpack_mask

log = logging.getLogger("vesuvius_inference.predict.stage")
SEGMENTS = CHECKPOINT_SEGMENTS
MAX_SEGMENTS = 64
MIN_COMPACT_BYTES = 64 << 10  # deltas smaller than this in all are never worth a base


@dataclass
class State:
    """Everything a checkpoint says, folded."""

    position: int
    stats: dict[str, int]
    evictions: int
    ran: np.ndarray  # per member of the part
    written: list[Shape3]
    where: dict[Shape3, int]  # unfinished chunk -> spill slot holding its checkpointed sums


@dataclass
class Delta:
    """What changed since the previous checkpoint."""

    ran: list[int]  # member positions that ran
    written: list[Shape3]  # output chunks written
    where: dict[Shape3, int] = field(default_factory=dict)  # spill slot now holding the chunk; -1: no longer


def _segment(store: Place, n: int) -> Place:
    return store.join(SEGMENTS, f"{n:08d}.json")


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _where_list(where: dict[Shape3, int]) -> list[list[int]]:
    return [[*idx, slot] for idx, slot in where.items()]


class Journal:
    """The writer of one run's checkpoints (see the module docstring)."""

    def __init__(self, store: Place) -> None:
        self.store = store
        self.first = 0
        self.next = 0
        self.base_bytes = 0
        self.delta_bytes = 0
        self.last_bytes = 0  # bytes the last checkpoint wrote (segment + head)

    def write(self, head: dict[str, Any], delta: Delta, full: Callable[[], State] | None) -> int:
        """Write one checkpoint: a segment (a base when ``full`` is given and compaction is due), then the
        head. Returns the bytes written."""
        n = self.next
        compact = n == 0 or (full is not None and (n - self.first >= MAX_SEGMENTS or
                                                   self.delta_bytes >= max(self.base_bytes, MIN_COMPACT_BYTES)))
        if compact and full is None:
            raise ValueError("the first checkpoint of a run must be a base")
        if compact:
            assert full is not None
            state = full()
            raw = _encode({"base": True, "ran": pack_mask(state.ran), "ran_count": int(state.ran.size),
                           "written": [list(w) for w in state.written], "where": _where_list(state.where)})
        else:
            raw = _encode({"base": False, "ran": delta.ran, "written": [list(w) for w in delta.written],
                           "where": _where_list(delta.where)})
        storage.write_bytes(_segment(self.store, n), raw)
        old_first = self.first
        if compact:
            self.first, self.base_bytes, self.delta_bytes = n, len(raw), 0
        else:
            self.delta_bytes += len(raw)
        self.next = n + 1
        head_raw = _encode({**head, "segments": [self.first, n]})
        storage.write_bytes(self.store.join(CHECKPOINT), head_raw)
        if compact:
            for k in range(old_first, n):  # superseded; a leftover only costs space
                try:
                    storage.remove(_segment(self.store, k), recursive=False)
                except OSError:
                    pass
        self.last_bytes = len(raw) + len(head_raw)
        return self.last_bytes


def read_head(store: Place) -> dict[str, Any] | None:
    """The head of a store's checkpoint (None: none, or one of an older format without segments)."""
    head = storage.read_json(store.join(CHECKPOINT))
    if head is None or "segments" not in head:
        return None
    return head


def fold(store: Place, head: dict[str, Any], *, members: int) -> State | None:
    """The state a head names: its base and the deltas after it (None if a segment is missing)."""
    first, last = (int(x) for x in head["segments"])
    ran = np.zeros(members, dtype=bool)
    written: list[Shape3] = []
    where: dict[Shape3, int] = {}
    for n in range(first, last + 1):
        seg = storage.read_json(_segment(store, n))
        if seg is None or (n == first) != bool(seg.get("base")):
            log.warning("checkpoint segment %s is missing or out of order: not resuming from it",
                        _segment(store, n))
            return None
        if seg["base"]:
            ran = unpack_mask(seg["ran"], members)
        else:
            ran[np.asarray(seg["ran"], dtype=np.int64)] = True
        written += [tuple(w) for w in seg["written"]]
        for *idx, slot in seg["where"]:
            if slot < 0:
                where.pop(tuple(idx), None)
            else:
                where[tuple(idx)] = int(slot)
    return State(int(head["position"]), dict(head["stats"]), int(head.get("evictions", 0)), ran, written, where)
