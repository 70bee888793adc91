"""The accumulator's write-back cache: checkpoints survive a kill at any point and resume to the
same bytes as an uninterrupted run, whatever was spilled after the checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from vesuvius_inference.geometry.grid import ChunkGrid
from vesuvius_inference.predict.accumulate import ChunkAccumulator
from vesuvius_inference.store.iopool import WritePool

SHAPE, CHUNKS, C = (24, 32, 32), (8, 8, 8), 2


def _patches(seed: int, n: int = 60) -> list[tuple[tuple, tuple, torch.Tensor, torch.Tensor]]:
    """Random overlapping boxes with random quantised logits (C, box) and a plane of ones, and weights (box),
    in a random order."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = rng.integers(6, 13, size=3)
        lo = tuple(int(rng.integers(0, s - z + 1)) for s, z in zip(SHAPE, size))
        hi = tuple(a + int(z) for a, z in zip(lo, size))
        box = tuple(b - a for a, b in zip(lo, hi))
        lq = torch.from_numpy(rng.integers(-2**30, 2**30, size=(C, *box)))
        lq = torch.cat([lq, torch.ones((1, *box), dtype=torch.int64)])  # the device step's plane of ones
        wq = torch.from_numpy(rng.integers(2**20, 2**27, size=box))
        out.append((lo, hi, lq, wq))
    return out


def _arrays():
    group = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    kw = dict(shape=(C + 1,) + SHAPE, chunks=(C + 1,) + CHUNKS, dtype="int64", fill_value=0)
    return group, tuple(group.create_array(n, **kw) for n in ("spill0", "spill1", "done"))


def _remaining(cgrid, patches):
    remaining: dict = {}
    for lo, hi, _, _ in patches:
        for idx in cgrid.touching(lo, hi):
            remaining[idx] = remaining.get(idx, 0) + 1
    return remaining


def _run(arrays, patches, cache_chunks: int, kill_at: list[int], ckpt_every: int):
    """Process ``patches`` with checkpoints every ``ckpt_every``; at each ``kill_at`` position throw the
    accumulator away (like SIGKILL: nothing flushed) and resume from the last saved checkpoint.
    Completed chunks are written to the third array, as the part writer would. A checkpoint returns only
    the spill slots that changed since the previous one (checkpoint.py journals them): folded here."""
    spill0, spill1, done = arrays
    chunk_bytes = (C + 1) * int(np.prod(CHUNKS)) * 8
    saved: dict | None = None
    kills = list(kill_at)
    cgrid = ChunkGrid(SHAPE, CHUNKS)
    while True:
        io = WritePool(2)

        def complete(idx, buf, io=io):
            lo, hi = cgrid.box(idx)
            io.submit(("done", idx), done.__setitem__, (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi)),
                      buf.numpy().copy())

        acc = ChunkAccumulator(cgrid, C + 1, _remaining(cgrid, patches), cache_bytes=cache_chunks * chunk_bytes,
                               device=torch.device("cpu"), spills=(spill0, spill1), on_complete=complete, io=io)
        if saved is not None:
            for lo, hi, _, _ in patches[:saved["position"]]:
                acc.replay_done(lo, hi)
            acc.restore(saved["where"], 0)
        position = saved["position"] if saved else 0
        killed = False
        for lo, hi, lq, wq in patches[position:]:
            acc.add(lo, hi, lq, wq)
            acc.patch_done(lo, hi)
            position += 1
            if kills and position == kills[0]:
                kills.pop(0)
                io.pool.shutdown(wait=True)  # writes already handed to the OS land; the rest is lost
                killed = True
                break
            if position % ckpt_every == 0:
                moved = acc.checkpoint()
                where = dict(saved["where"]) if saved else {}
                for idx, slot in moved.items():
                    if slot < 0:
                        where.pop(idx, None)
                    else:
                        where[idx] = slot
                assert where == acc.where  # the deltas fold to the whole map
                saved = {"position": position, "where": where}
                acc.committed()
        if not killed:
            acc.finish()
            io.close()
            return acc


@pytest.mark.parametrize("seed,cache_chunks,kills,every", [
    (1, 3, [17, 18, 40], 5),   # kill right after a checkpoint's successor, twice in a row
    (2, 1, [9, 33, 34, 59], 4),  # one-chunk cache: every touch spills
    (3, 64, [30], 7),  # large cache: the checkpoint itself writes the partial chunks
])
def test_resume_from_checkpoint_gives_identical_bytes(seed, cache_chunks, kills, every):
    patches = _patches(seed)
    _, ref_arrays = _arrays()
    _run(ref_arrays, patches, 1000, [], 10 ** 9)
    _, arrays = _arrays()
    out = _run(arrays, patches, cache_chunks, kills, every)
    assert out.evictions > 0 or cache_chunks == 64
    assert np.array_equal(ref_arrays[2][:], arrays[2][:])
    # and the sums are the plain sum of the contributions
    expected = np.zeros((C + 1,) + SHAPE, dtype=np.int64)
    for lo, hi, lq, wq in patches:
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        expected[(slice(0, C),) + box] += lq[:C].numpy() * wq.numpy()
        expected[(C,) + box] += wq.numpy()
    assert np.array_equal(arrays[2][:], expected)


def test_spill_after_checkpoint_never_overwrites_the_checkpointed_copy():
    """Without the second spill array a resumed part would add post-checkpoint patches twice."""
    patches = _patches(5, 30)
    _, (spill0, spill1, _) = _arrays()
    cgrid = ChunkGrid(SHAPE, CHUNKS)
    chunk_bytes = (C + 1) * int(np.prod(CHUNKS)) * 8
    io = WritePool(2)
    acc = ChunkAccumulator(cgrid, C + 1, _remaining(cgrid, patches), cache_bytes=chunk_bytes,
                           device=torch.device("cpu"), spills=(spill0, spill1), on_complete=lambda idx, buf: None, io=io)

    def stored(idx, parity):
        lo, hi = cgrid.box(idx)
        return acc.spills[parity][(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]

    for lo, hi, lq, wq in patches[:10]:
        acc.add(lo, hi, lq, wq)
        acc.patch_done(lo, hi)
    acc.checkpoint()
    acc.committed()
    kept = {idx: stored(idx, p) for idx, p in acc.ckpt.items()}
    assert kept
    for lo, hi, lq, wq in patches[10:20]:
        acc.add(lo, hi, lq, wq)
        acc.patch_done(lo, hi)
    io.wait_all()
    respilled = [idx for idx, p in acc.where.items() if idx in kept and p != acc.ckpt[idx]]
    assert respilled  # the scenario happened: chunks changed and were spilled again after the checkpoint
    for idx, data in kept.items():
        assert np.array_equal(stored(idx, acc.ckpt[idx]), data)
    io.close()
