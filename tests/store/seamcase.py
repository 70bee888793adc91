"""A two-part seam on any store, driven through the real protocol (seams.SeamMerge) with synthetic sums.

The sums are what an accumulator holds: for every patch that ran, the Gaussian's int64 weights times
random quantised logits, added over its region; some patches are "skipped" (they never ran), so the
second finisher has to recompute the first's weights from the patch ids that did. The expected output
is one part's view of the whole volume: ``encode(divide(sums_a + sums_b))`` chunk by chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from vesuvius_inference.contract.locations import join
from vesuvius_inference.contract.place import Place
from vesuvius_inference.geometry.fixedpoint import divide_np, gaussian_q, logit_bits_for, weights_digest
from vesuvius_inference.geometry.grid import PatchGrid, Shape3
from vesuvius_inference.geometry.layout import PAIR, PartLayout
from vesuvius_inference.geometry.partition import split
from vesuvius_inference.store import storage
from vesuvius_inference.store.output import FINAL, Output, OutputSpec
from vesuvius_inference.store.seams import SeamMerge

SHAPE, PATCH, CHUNKS, C = (96, 40, 40), (32, 32, 32), (16, 20, 20), 2


@dataclass
class SeamCase:
    """Two z-slab parts of a small grid, their sums, and the seam chunks they share."""

    grid: PatchGrid
    layout: PartLayout
    sums: list[np.ndarray]  # per part: (C+1, SHAPE) int64, weights last
    ran: list[set[int]]
    wq: np.ndarray
    bits: int
    pairs: list[Shape3]

    @classmethod
    def make(cls, seed: int = 0) -> SeamCase:
        grid = PatchGrid(SHAPE, PATCH, 0.5)
        nonempty = np.ones(grid.n_patches, dtype=bool)
        parts = split(grid, nonempty, 2, None)
        layout = PartLayout.build(grid, nonempty, parts, shape=SHAPE, chunks=CHUNKS, pairs=True)
        wq = gaussian_q(PATCH)
        rng = np.random.default_rng(seed)
        sums, ran = [], []
        for part in parts:
            s = np.zeros((C + 1,) + SHAPE, dtype=np.int64)
            done = set()
            for i in part.members(grid):
                if rng.random() < 0.2:
                    continue  # a homogeneous patch: skipped at run time, adds nothing
                done.add(int(i))
                lo, hi = grid.region(int(i))
                st = grid.start(int(i))
                w = wq[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, st))]
                box = tuple(slice(a, b) for a, b in zip(lo, hi))
                s[(slice(0, C),) + box] += w[None] * rng.integers(-40000, 40000, (C,) + w.shape)
                s[(C,) + box] += w
            sums.append(s)
            ran.append(done)
        pairs = layout.chunks_of(PAIR)
        assert pairs, "the case must have two-part seam chunks"
        return cls(grid, layout, sums, ran, wq, logit_bits_for(grid.max_coverage()), pairs)

    def output(self, url: str, so: dict) -> Output:
        return Output(OutputSpec(url, FINAL, "binary", False, 1), Place(url, so), num_classes=C, shape=SHAPE,
                      chunks=CHUNKS, config={})

    def merger(self, part: int, run: str, seams_url: str, out: Output, so: dict) -> SeamMerge:
        return SeamMerge(place=Place(seams_url, dict(so)), part=part, run=run, layout=self.layout, grid=self.grid,
                         wq=self.wq, wq_digest=weights_digest(self.wq), bits=self.bits, classes=C, output=out)

    def complete(self, merge: SeamMerge, chunks: Sequence[Shape3]) -> list[str]:
        """What PartWriter does for this part's PAIR chunks (sums, or None where none of its patches ran)."""
        outcomes = []
        for idx in chunks:
            lo, hi = self.layout.cgrid.box(idx)
            buf = self.sums[merge.part][(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))].copy()
            shared, _ = self.layout.piece_boxes(merge.part, idx)
            ids = self.grid.patches_touching(*shared) if shared is not None else np.zeros(0, dtype=np.int64)
            ran = [int(i) for i in ids if int(i) in self.ran[merge.part]]
            data = (lambda b=buf: b) if buf[C].any() else None
            outcomes.append(merge.complete(idx, data, ran))
        return outcomes

    def expected(self, out: Output) -> np.ndarray:
        """The output's level 0 where the seam chunks are merged (one part's division of both parts' sums)."""
        total = self.sums[0] + self.sums[1]
        want = np.zeros(out.array.shape, dtype=np.uint8)
        for idx in self.pairs:
            lo, hi = self.layout.cgrid.box(idx)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            want[(slice(None),) + box] = out.encode_full(divide_np(total[(slice(0, C),) + box], total[(C,) + box],
                                                                   self.bits))
        return want


def race(case: SeamCase, mergers: Sequence[SeamMerge]) -> list[list[str]]:
    """Every merger completes every seam chunk at once, in the same order (as close a race as threads get)."""
    gate = threading.Barrier(len(mergers))
    results: list[list[str]] = [[] for _ in mergers]
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            gate.wait()
            results[k] = case.complete(mergers[k], case.pairs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(mergers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def snapshot(url: str, so: dict) -> dict[str, bytes]:
    """Every object under ``url``, by relative name."""
    fs, root = storage.filesystem(Place(url, so))
    fs.invalidate_cache()
    return {p[len(root):]: bytes(fs.cat_file(p)) for p in fs.find(root)}


# -- the scenarios, the same on every store ------------------------------------------------------

def check_race(root: str, so: dict) -> None:
    """Both parts complete every seam chunk at the same moment: per chunk exactly one create wins, the
    other part merges, and the output is what one part would have written."""
    case = SeamCase.make(seed=1)
    out = case.output(join(root, "out.zarr"), so)
    seams = join(root, "parts", "_seams", "cfg")
    got = race(case, [case.merger(p, f"run{p}", seams, out, so) for p in (0, 1)])
    for a, b in zip(*got):
        assert sorted((a, b)) == ["first", "second"]
    assert np.array_equal(out.array[:], case.expected(out))
    assert len(snapshot(seams, so)) == len(case.pairs)  # one piece per chunk, whoever won it


def check_killed_mid_merge(root: str, so: dict) -> None:
    """The first finisher dies after creating some pieces, its rerun finds them; the second dies after
    merging half the chunks (some written, the rest not), its rerun merges everything again: the output
    is byte for byte what an uninterrupted pair writes, and the rewritten chunks did not change."""
    case = SeamCase.make(seed=2)
    out = case.output(join(root, "out.zarr"), so)
    seams = join(root, "parts", "_seams", "cfg")
    half = len(case.pairs) // 2
    assert set(case.complete(case.merger(0, "a1", seams, out, so), case.pairs[:half])) == {"first"}
    assert case.complete(case.merger(0, "a2", seams, out, so), case.pairs) == ["again"] * half + ["first"] * (
        len(case.pairs) - half)
    assert set(case.complete(case.merger(1, "b1", seams, out, so), case.pairs[half:])) == {"second"}
    merged_once = snapshot(join(root, "out.zarr"), so)
    assert set(case.complete(case.merger(1, "b2", seams, out, so), case.pairs)) == {"second"}
    assert np.array_equal(out.array[:], case.expected(out))
    after = snapshot(join(root, "out.zarr"), so)
    assert all(after[k] == v for k, v in merged_once.items() if "/c/" in k)


def check_rerun_of_finished_parts(root: str, so: dict) -> None:
    """Both parts done; each runs again (a retried Job, a frozen former holder): no piece changes, the
    output's bytes do not change, and the part that stored a piece recognises it as its own."""
    case = SeamCase.make(seed=3)
    out = case.output(join(root, "out.zarr"), so)
    seams = join(root, "parts", "_seams", "cfg")
    case.complete(case.merger(1, "b1", seams, out, so), case.pairs)
    case.complete(case.merger(0, "a1", seams, out, so), case.pairs)
    before = snapshot(root, so)
    assert set(case.complete(case.merger(1, "b2", seams, out, so), case.pairs)) == {"again"}
    assert set(case.complete(case.merger(0, "a2", seams, out, so), case.pairs)) == {"second"}
    assert snapshot(root, so) == before
    assert np.array_equal(out.array[:], case.expected(out))


def check_frozen_holder_races_its_taker(root: str, so: dict) -> None:
    """A frozen former claim holder of part 0 wakes while the run that took its claim over and part 1
    complete the same seam chunks (claims.py: no fencing token, so it can still write). Per chunk one
    create wins; a part-0 run that finds part 0's piece does nothing ("again"); if part 1 won, both part-0
    runs merge and write the chunk, the same bytes (the one write a frozen holder can double). The output
    is one part's view and one piece stays per chunk."""
    case = SeamCase.make(seed=4)
    out = case.output(join(root, "out.zarr"), so)
    seams = join(root, "parts", "_seams", "cfg")
    runs = [case.merger(0, "a-frozen", seams, out, so), case.merger(0, "a-taker", seams, out, so),
            case.merger(1, "b", seams, out, so)]
    got = race(case, runs)
    for frozen, taker, other in zip(*got):
        if other == "first":
            assert (frozen, taker) == ("second", "second")
        else:
            assert sorted((frozen, taker)) == ["again", "first"] and other == "second"
    assert np.array_equal(out.array[:], case.expected(out))
    pieces = snapshot(seams, so)
    assert len(pieces) == len(case.pairs)
    assert set(case.complete(case.merger(0, "a-frozen", seams, out, so), case.pairs)) <= {"again", "second"}
    assert snapshot(seams, so) == pieces and np.array_equal(out.array[:], case.expected(out))
