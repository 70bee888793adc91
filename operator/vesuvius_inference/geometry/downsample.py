"""2x downsampling of output blocks (uint8; floats and wider integers for inputs): the pyramid's only arithmetic.

Probabilities average the (up to) 8 voxels of a 2x2x2 block, rounding half up in integers, so every
writer gets the same byte; class ids take the most frequent id of the block (ties: the higher id,
so a sheet that fills half a block survives), which keeps label values. Blocks at an odd edge use
the voxels that exist. Only the last three axes are spatial.
"""

from __future__ import annotations

import numpy as np

MEAN, MODE = "mean", "mode"


def _blocks(a: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """(..., z2, y2, x2, 8) values and a validity mask of the same shape."""
    lead = a.shape[:-3]
    z, y, x = a.shape[-3:]
    pz, py, px = z % 2, y % 2, x % 2
    pad = [(0, 0)] * len(lead) + [(0, pz), (0, py), (0, px)]
    v = np.pad(a, pad, constant_values=fill)
    m = np.pad(np.ones((z, y, x), dtype=bool), pad[-3:], constant_values=False)
    z2, y2, x2 = (z + pz) // 2, (y + py) // 2, (x + px) // 2
    v = v.reshape(*lead, z2, 2, y2, 2, x2, 2)
    m = m.reshape(z2, 2, y2, 2, x2, 2)
    n = len(lead)
    order = list(range(n)) + [n, n + 2, n + 4, n + 1, n + 3, n + 5]
    v = v.transpose(order).reshape(*lead, z2, y2, x2, 8)
    m = m.transpose(0, 2, 4, 1, 3, 5).reshape(z2, y2, x2, 8)
    return v, m


def downsample2(a: np.ndarray, how: str) -> np.ndarray:
    v, m = _blocks(a, 0)
    if how == MEAN and np.issubdtype(a.dtype, np.floating):
        return (np.where(m, v, 0).sum(axis=-1) / m.sum(axis=-1)).astype(a.dtype)
    if how == MEAN:
        n = m.sum(axis=-1).astype(np.uint32)
        s = v.astype(np.uint32).sum(axis=-1)
        return ((s + n // 2) // n).astype(a.dtype)
    if how != MODE:
        raise ValueError(f"unknown downsampling {how!r}")
    top = int(a.max()) if a.size else 0
    best = np.zeros(v.shape[:-1], dtype=a.dtype)
    best_count = np.full(v.shape[:-1], -1, dtype=np.int16)
    for value in range(top + 1):  # few classes: one pass each
        count = ((v == value) & m).sum(axis=-1).astype(np.int16)
        better = count >= best_count  # >=: ties go to the higher id
        best = np.where(better & (count > 0), np.asarray(value, dtype=a.dtype), best)
        best_count = np.where(better & (count > 0), count, best_count)
    return best
