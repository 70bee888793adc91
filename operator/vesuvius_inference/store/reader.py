"""The reader: patches of the input, read ahead of the model by a producer thread.

I/O overlaps the model: the thread fills a bounded queue while the device computes. Voxels stay as
stored (uint8 for scans): they cross to the device at their own size and are normalised there.
Homogeneous patches (all one value, including chunks absent from the store) are flagged so they
cost no model time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vesuvius_inference.contract.errors import classify_read
from vesuvius_inference.geometry.grid import PatchGrid, Shape3
from vesuvius_inference.store.volume import InputVolume


@dataclass
class Patch:
    index: int
    lo: Shape3
    hi: Shape3
    data: np.ndarray | None  # the region's voxels as stored (C_in, region), or None if homogeneous


def read_patch(volume: InputVolume, grid: PatchGrid, i: int, skip_homogeneous: bool) -> Patch:
    lo, hi = grid.region(i)
    raw = volume.read(lo, hi)
    if skip_homogeneous and all(c.min() == c.max() for c in raw):
        return Patch(i, lo, hi, None)
    return Patch(i, lo, hi, raw)


class PatchReader:
    """Iterate ``Patch`` objects for ``indices`` in order, read ahead by one thread."""

    def __init__(self, volume: InputVolume, grid: PatchGrid, indices: Sequence[int], skip_homogeneous: bool,
                 depth: int) -> None:
        self.q: queue.Queue[Any] = queue.Queue(maxsize=max(2, depth))  # patches, then None or an error
        self.stop = threading.Event()
        self.url = volume.url
        self.thread = threading.Thread(target=self._produce, daemon=True,
                                       args=(volume, grid, list(indices), skip_homogeneous))
        self.thread.start()

    def _produce(self, volume: InputVolume, grid: PatchGrid, indices: list[int], skip: bool) -> None:
        try:
            for i in indices:
                if self.stop.is_set():
                    return
                self.q.put(read_patch(volume, grid, i, skip))
            self.q.put(None)
        except BaseException as e:  # surfaced in the consumer
            self.q.put(e)

    def __iter__(self) -> Iterator[Patch]:
        while True:
            item = self.q.get()
            if isinstance(item, BaseException):
                if isinstance(item, Exception):  # the one classifier: storage trouble is transient, bad chunks are not
                    raise classify_read(item, self.url) from item
                raise item
            if item is None:
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self.q.get_nowait()
            except queue.Empty:
                self.thread.join(timeout=0.1)
