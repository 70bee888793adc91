"""Two-part seam chunks: the second of the two parts to complete one writes it; the first leaves a piece.

Where exactly two parts' patches reach an output chunk (layout.PAIR), each part completes the chunk
in its own time. The piece object decides who is second; nothing waits and there is no pending state:

1. Read ``PARTS/_seams/<config digest>/<z>.<y>.<x>``. Absent: create it with this part's piece, once
   (createonce.py: S3 ``If-None-Match: *``, a hard link on disks). Created: this part was first.
2. It exists and names this part: an earlier run of this part (or a frozen former holder of its
   claim) made it; its contents are what this run would store. Nothing to do.
3. It names the other part: check it (the same Gaussian weights and logit bits), recompute its weights
   from the patch ids that ran, add its sums to this part's (all in memory), put in its edge values,
   and write the chunk into the output, the one time it is written.

Crashes: killed before the create, the rerun completes the chunk again from its checkpoint; the
create is atomic; killed after it, the rerun finds its own piece; killed while merging or writing, the
rerun merges again (same bytes; the chunk counts as done only once its write has landed, at the next
checkpoint). Two parts finishing at once: one create wins, the other merges. Integer sums make the
merge the sum a single part would have accumulated, so the output does not depend on the part count
or on which part finished first.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.paths import chunk_key
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.fixedpoint import weights_for
from vesuvius_inference.geometry.grid import PatchGrid, Shape3
from vesuvius_inference.geometry.layout import PartLayout
from vesuvius_inference.store import createonce
from vesuvius_inference.store.output import Output
from vesuvius_inference.store.pieces import Chunk, Piece, cut, decode, encode

FIRST, SECOND, AGAIN = "first", "second", "again"


@dataclass(kw_only=True)
class SeamMerge:
    """One predict run's side of the two-part seams."""

    place: Place  # the configuration's _seams prefix
    part: int
    run: str
    layout: PartLayout
    grid: PatchGrid
    wq: np.ndarray  # the Gaussian as int64 (fixedpoint.weight_q), on the host
    wq_digest: str
    bits: int
    classes: int
    output: Output
    outcomes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def complete(self, idx: Shape3, data: Callable[[], np.ndarray] | None, ran: list[int]) -> str:
        """In a writer thread: this part completed chunk ``idx`` (``data``: its (C+1, chunk) sums, None
        when none of its patches ran there; ``ran``: its patches that ran and reach the shared box)."""
        buf = data() if data is not None else None
        key = self.place.join(chunk_key(idx))
        raw = createonce.read(key)
        if raw is None:
            if createonce.create(key, encode(self._piece(idx, buf, ran))):
                return self._done(FIRST)
            raw = createonce.read(key)
            if raw is None:
                raise RuntimeError(f"{key} was created by another writer but cannot be read")
        theirs = decode(raw)
        if theirs.part == self.part:
            return self._done(AGAIN)
        self._check(theirs, idx, key.url)
        out = self._merge(idx, buf, theirs)
        if out is not None:
            self.output.store(idx, out)
        return self._done(SECOND)

    def _piece(self, idx: Shape3, buf: np.ndarray | None, ran: list[int]) -> Piece:
        shared, edge = self.layout.piece_boxes(self.part, idx)
        lo, _ = self.layout.cgrid.box(idx)
        info = {"run": self.run, "weights": self.wq_digest, "logit_bits": self.bits, "classes": self.classes}
        return cut(self.part, idx, lo, buf=buf, shared=shared, edge=edge, with_weights=False, bits=self.bits,
                   encode_values=self.output.encode_full, ran=ran, info=info)

    def _check(self, theirs: Piece, idx: Shape3, key: str) -> None:
        if theirs.part not in self.layout.participants(idx):
            raise BadInput(f"{key} was stored by part {theirs.part}, which has no patch there in this split; remove "
                           "the parts and predict again")
        info = theirs.info
        mine = {"weights": self.wq_digest, "logit_bits": self.bits, "classes": self.classes}
        diff = [k for k, v in mine.items() if info.get(k) != v]
        if diff:
            raise BadInput(f"{key} was stored by part {theirs.part} with other {', '.join(diff)} ({info}) than this "
                           f"part's ({mine}): a different build of vesuvius-inference or nnU-Net ran it; predict "
                           "every part with one build")

    def _merge(self, idx: Shape3, buf: np.ndarray | None, theirs: Piece) -> np.ndarray | None:
        lo, hi = self.layout.cgrid.box(idx)
        chunk = Chunk(lo, triple(b - a for a, b in zip(lo, hi)), self.classes)
        if buf is not None:
            chunk.add((lo, hi), buf[:self.classes], buf[self.classes])
        if theirs.sums is not None and theirs.shared is not None:
            chunk.add(theirs.shared, theirs.sums, weights_for(self.grid, self.wq, theirs.ran or [], *theirs.shared))
        if theirs.values is not None and theirs.edge is not None:
            chunk.add_edge(theirs.shared, theirs.edge, theirs.values)
        return chunk.result(self.bits, self.output.encode_full)

    def _done(self, outcome: str) -> str:
        with self._lock:
            self.outcomes[outcome] += 1
        return outcome
