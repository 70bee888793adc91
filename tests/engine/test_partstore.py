"""The part store's write-back cache: checkpoints survive a kill at any point and resume to the
same bytes as an uninterrupted run, whatever was spilled after the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from vesuvius_inference.grid import ChunkGrid
from vesuvius_inference.partstore import PartAccumulator, create_part_arrays, open_part_arrays

SHAPE, CHUNKS, C = (24, 32, 32), (8, 8, 8), 2


def _patches(seed: int, n: int = 60) -> list[tuple[tuple, tuple, np.ndarray, np.ndarray]]:
    """Random overlapping boxes with random quantised sums, in a random order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = rng.integers(6, 13, size=3)
        lo = tuple(int(rng.integers(0, s - z + 1)) for s, z in zip(SHAPE, size))
        hi = tuple(a + int(z) for a, z in zip(lo, size))
        box = tuple(b - a for a, b in zip(lo, hi))
        out.append((lo, hi, rng.integers(-2**34, 2**34, size=(C, *box)), rng.integers(2**20, 2**30, size=box)))
    return out


def _setup(patches, shared_every: int):
    cgrid = ChunkGrid(SHAPE, CHUNKS)
    remaining: dict = {}
    for lo, hi, _, _ in patches:
        for idx in cgrid.touching(lo, hi):
            remaining[idx] = remaining.get(idx, 0) + 1
    shared = {idx for k, idx in enumerate(sorted(remaining)) if k % shared_every == 0}
    return cgrid, remaining, shared


def _run(group, patches, cache_chunks: int, shared_every: int, kill_at: list[int], ckpt_every: int):
    """Process ``patches`` with checkpoints every ``ckpt_every``; at each ``kill_at`` position throw the
    accumulator away (like SIGKILL: nothing flushed) and resume from the last saved checkpoint."""
    chunk_bytes = (C + 1) * int(np.prod(CHUNKS)) * 8
    saved: dict | None = None
    position, kills = 0, list(kill_at)
    while True:
        cgrid, remaining, shared = _setup(patches, shared_every)
        acc = PartAccumulator(*open_part_arrays(group), cgrid, C, remaining, shared, cache_chunks * chunk_bytes)
        if saved is not None:
            for lo, hi, _, _ in patches[:saved["position"]]:
                acc.replay_done(lo, hi)
            acc.restore(saved["state"])
        position = saved["position"] if saved else 0
        killed = False
        for lo, hi, wl, w in patches[position:]:
            acc.add(lo, hi, wl, w)
            acc.patch_done(lo, hi)
            position += 1
            if kills and position == kills[0]:
                kills.pop(0)
                acc.pool.shutdown(wait=True)  # writes already handed to the OS land; the rest is lost
                killed = True
                break
            if position % ckpt_every == 0:
                state = acc.checkpoint()
                saved = {"position": position, "state": state}
                acc.committed()
        if not killed:
            acc.close()
            return acc


def _arrays(group):
    final, acc, _ = open_part_arrays(group)
    return final[:], acc[:]


@pytest.mark.parametrize("seed,cache_chunks,shared_every,kills,every", [
    (1, 3, 3, [17, 18, 40], 5),   # kill right after a checkpoint's successor, twice in a row
    (2, 1, 2, [9, 33, 34, 59], 4),  # one-chunk cache: every touch spills
    (3, 64, 4, [30], 7),  # large cache: the checkpoint itself writes the partial chunks
])
def test_resume_from_checkpoint_gives_identical_bytes(seed, cache_chunks, shared_every, kills, every):
    patches = _patches(seed)
    ref_group = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    create_part_arrays(ref_group, C, SHAPE, CHUNKS)
    ref = _run(ref_group, patches, 1000, shared_every, [], 10 ** 9)
    group = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    create_part_arrays(group, C, SHAPE, CHUNKS)
    out = _run(group, patches, cache_chunks, shared_every, kills, every)
    assert out.evictions > 0 or cache_chunks == 64
    assert sorted(out.final_chunks) == sorted(ref.final_chunks) and sorted(out.acc_chunks) == sorted(ref.acc_chunks)
    (f_ref, a_ref), (f_out, a_out) = _arrays(ref_group), _arrays(group)
    assert np.array_equal(f_ref, f_out, equal_nan=True)
    assert np.array_equal(a_ref, a_out)


def test_spill_after_checkpoint_never_overwrites_the_checkpointed_copy():
    """Without the second spill array a resumed part would add post-checkpoint patches twice."""
    patches = _patches(5, 30)
    group = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    create_part_arrays(group, C, SHAPE, CHUNKS)
    cgrid, remaining, shared = _setup(patches, 2)
    chunk_bytes = (C + 1) * int(np.prod(CHUNKS)) * 8
    acc = PartAccumulator(*open_part_arrays(group), cgrid, C, remaining, shared, chunk_bytes)

    def stored(idx, parity):
        lo, hi = cgrid.box(idx)
        return acc.spills[parity][(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]

    for lo, hi, wl, w in patches[:10]:
        acc.add(lo, hi, wl, w)
        acc.patch_done(lo, hi)
    acc.checkpoint()
    acc.committed()
    kept = {idx: stored(idx, p) for idx, p in acc.ckpt.items()}
    assert kept
    for lo, hi, wl, w in patches[10:20]:
        acc.add(lo, hi, wl, w)
        acc.patch_done(lo, hi)
    acc._wait_all()
    respilled = [idx for idx, p in acc.where.items() if idx in kept and p != acc.ckpt[idx]]
    assert respilled  # the scenario happened: chunks changed and were spilled again after the checkpoint
    for idx, data in kept.items():
        assert np.array_equal(stored(idx, acc.ckpt[idx]), data)
    acc.pool.shutdown(wait=True)
