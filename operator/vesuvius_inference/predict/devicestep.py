"""One batch on the device: raw patches in, integer contributions into the accumulator out.

The voxels cross to the device as stored (uint8: a quarter of float32's bytes), from pinned host
memory without blocking, and are normalised there into a zero-padded batch (nnU-Net pads after
normalising). The network's float logits are quantised patch by patch, next to a plane of ones,
and each patch's region is added to the chunk cache with one fused multiply-add per chunk (the
weighted logits and the weight together): no per-patch numpy, and nothing leaves the device but
completed chunks. A NaN from the network is noted on the
device without a synchronisation and raised at the end or at the next checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.geometry.fixedpoint import FP16_MAX
from vesuvius_inference.geometry.grid import PatchGrid
from vesuvius_inference.predict.accumulate import ChunkAccumulator, box_slices
from vesuvius_inference.store.reader import Patch


def to_host(t: Any, copy: bool = False) -> Callable[[], np.ndarray]:
    """Start moving ``t`` to the host; the returned call waits for it and gives the numpy array.

    On CUDA the copy goes into pinned memory on the current stream without blocking: the device goes
    on computing while a writer thread waits for the copy (downloads overlap compute; a blocking
    ``.cpu()`` would drain the device's queue at every completed chunk). On the CPU it is the tensor's
    own memory, or a copy with ``copy`` when the tensor is a view of a buffer that will be reused.
    """
    if t.device.type != "cuda":
        a = t.numpy().copy() if copy else t.numpy()
        return lambda: a
    import torch

    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def get() -> np.ndarray:
        done.synchronize()
        return host.numpy()

    return get


class DeviceStep:
    def __init__(self, runner: Any, normalizer: Any, grid: PatchGrid, *, channels: int, batch_size: int, wq: Any,
                 bits: int, accum: ChunkAccumulator) -> None:
        import torch

        self.torch, self.runner, self.normalizer, self.grid = torch, runner, normalizer, grid
        self.device = runner.device
        self.batch_size, self.wq, self.bits, self.accum = batch_size, wq, bits, accum
        self.x = torch.zeros((batch_size, channels) + tuple(grid.patch), dtype=torch.float32, device=self.device)
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)  # NaN if any logit was NaN
        # one patch's quantised logits with a last plane of ones: one multiply-add by the weights then
        # adds the weighted logits and the weight itself (all C+1 sums) in a single pass per chunk. One
        # patch, not the batch: it is read back while still in the cache (6 MB at 64^3, a batch of 4 is
        # 25 MB), and a 128^3 batch would hold 200 MB of int64 the device does not need
        self.q = torch.ones((accum.channels,) + tuple(grid.patch), dtype=torch.int64, device=self.device)

    def _upload(self, raw: Any) -> Any:
        t = self.torch.from_numpy(raw)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def __call__(self, batch: Sequence[Patch]) -> None:
        x = self.x
        for k in range(len(batch), self.batch_size):  # unused samples keep every call the same batch size
            x[k].zero_()
        starts = [self.grid.start(p.index) for p in batch]
        for k, (p, start) in enumerate(zip(batch, starts)):
            dst = box_slices([a - s for a, s in zip(p.lo, start)], [b - s for b, s in zip(p.hi, start)])
            if any(b - a != n for a, b, n in zip(p.lo, p.hi, self.grid.patch)):
                x[k].zero_()  # a patch at the volume's edge: zero padding around its region
            view = x[(k, slice(None)) + dst]
            view.copy_(self._upload(p.data))
            self.normalizer.apply_torch(view)
        logits = self.runner(x).clamp_(-FP16_MAX, FP16_MAX)  # clamp keeps NaN, so the sum below sees it
        # float32 sums of clamped values cannot overflow (2^31 values x 65504 < 3e38), so only NaN makes
        # the total NaN; a float64 sum would cost 9x the time of this pass
        self.total += logits[:len(batch)].sum()
        c = self.q.shape[0] - 1
        for k, (p, start) in enumerate(zip(batch, starts)):
            self.q[:c].copy_(logits[k].mul_(float(2 ** self.bits)).round_())  # integers already: the cast is exact
            src = box_slices([a - s for a, s in zip(p.lo, start)], [b - s for b, s in zip(p.hi, start)])
            self.accum.add(p.lo, p.hi, self.q[(slice(None),) + src], self.wq[src])

    def check(self) -> None:
        """Raise if the network produced NaN since the start (synchronises the device)."""
        if bool(self.torch.isnan(self.total)):
            raise BadInput("the model produced NaN logits; check the model and the input's normalisation")
