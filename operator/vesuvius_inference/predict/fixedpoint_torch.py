"""fixedpoint.py's maps and division on a torch device, for predict's device step: bit-identical to the
numpy forms there, which blend and finalize use without torch (their processes never load it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vesuvius_inference.geometry import fixedpoint


def weight_q(patch: Sequence[int]) -> Any:
    """The same map as a torch tensor, for predict's device step."""
    import torch

    return torch.from_numpy(fixedpoint.gaussian_q(patch))


def divide_torch(sums: Any, weights: Any, bits: int) -> Any:
    """The same as ``divide_np`` on a torch device (bit-identical results), into a new float16 tensor.

    On the CPU the chunk goes slab by slab along its first spatial axis (the values do not depend on
    it: every step is elementwise); on a GPU in one pass.
    """
    import torch

    out = torch.empty(sums.shape, dtype=torch.float16, device=sums.device)
    n = sums.shape[1]
    plane = max(1, int(np.prod(sums.shape[2:])))
    step = n if sums.device.type == "cuda" else max(1, fixedpoint.DIVIDE_SLAB_VOXELS // plane)
    for z in range(0, n, step):
        w = weights[z:z + step]
        q = sums[:, z:z + step].double().div_(w.double().mul_(2.0 ** bits))
        o = out[:, z:z + step]
        o.copy_(q.float())  # float64 -> float32 -> float16: two IEEE roundings, as in numpy
        o.masked_fill_(w == 0, float("nan"))
    return out
