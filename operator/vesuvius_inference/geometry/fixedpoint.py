"""Exact, order-independent blending arithmetic.

A voxel near a part boundary gets contributions from two parts, and float sums depend on the order
they are added in, so 1 part and 5 parts would round differently. Instead every contribution is an
integer: the weight is nnU-Net's float16 Gaussian (``value_scaling_factor=10``) times 2**24, exact
because every float16 is a multiple of 2**-24; the logit is rounded once to a multiple of
2**-logit_bits. Their product and every sum of products are exact int64, so the blended logit
``sum(wq * lq) / sum(wq) / 2**logit_bits`` is the same bytes for any number of parts, any cache
eviction order and any device. The division goes int64 -> float64 -> float32 -> float16 with each
step an IEEE round-to-nearest conversion, identically in numpy and in torch.

Accuracy: the logit quantum is 2**-15 (3e-5) at nnU-Net's usual overlap, far below float16's
resolution, and unlike quantising ``w * logit`` it does not grow where the weights are tiny (the
volume's corners).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FP16_MAX = 65504.0
WEIGHT_BITS = 24
WEIGHT_SCALE = 10.0  # nnU-Net's value_scaling_factor: the largest weight


def logit_bits_for(max_coverage: int) -> int:
    """Fraction bits of the logits such that ``coverage * max(wq) * max(lq)`` stays inside int64."""
    max_wq = math.log2(WEIGHT_SCALE) + WEIGHT_BITS
    bits = math.floor(62 - max_wq - math.log2(FP16_MAX) - math.log2(max(1, max_coverage)))
    return max(4, min(15, bits))


def gaussian_q(patch: Sequence[int]) -> np.ndarray:
    """nnU-Net's Gaussian importance map as exact int64, in numpy.

    Ported from nnunetv2 ``inference/sliding_window_prediction.py`` ``compute_gaussian`` (sigma = patch/8,
    peak ``value_scaling_factor``, zeros floored to the smallest nonzero weight) with the same
    ``scipy.ndimage.gaussian_filter``; its float64 -> float16 step goes through float32 because torch's
    does (c10::Half is built from a float: two roundings, which differ from numpy's direct one for some
    patch sizes). tests/geometry/test_geometry_oracle.py holds it equal to nnU-Net's torch map."""
    from scipy.ndimage import gaussian_filter

    tile = tuple(int(p) for p in patch)
    tmp = np.zeros(tile)
    tmp[tuple(i // 2 for i in tile)] = 1
    g = gaussian_filter(tmp, [i / 8 for i in tile], 0, mode="constant", cval=0)
    g /= np.max(g) / WEIGHT_SCALE
    half = g.astype(np.float32).astype(np.float16)
    zero = half == 0
    if zero.any():
        half[zero] = half[~zero].min()
    return np.round(half.astype(np.float64) * 2.0 ** WEIGHT_BITS).astype(np.int64)


# z-planes per slab of the CPU division: its float64 temporaries stay in the cache (about 1 MB per
# plane of a 128^2 chunk), instead of a 128^3 chunk's ~160 MB of them, which glibc maps and unmaps
# afresh each time (over its 32 MB mmap threshold: a page fault per 4 KB, measured 1.1-1.6 s of
# system time in one 256^3 predict at patch 128)
DIVIDE_SLAB_VOXELS = 1 << 16


def divide_np(sums: np.ndarray, weights: np.ndarray, bits: int) -> np.ndarray:
    """(C, ...) int64 sums and (...) int64 weights -> (C, ...) float16 logits; NaN where no weight.

    ``sums / (weights * 2**bits)`` equals ``(sums / weights) * 2**-bits`` bit for bit: the weights
    times a power of two stay exact in float64 (< 2**53), and scaling by a power of two commutes
    with round-to-nearest away from under- and overflow; folding the scale saves a pass. Slab by slab
    along the first spatial axis, as fixedpoint_torch.divide_torch on the CPU (every step is elementwise).
    """
    out = np.empty(sums.shape, dtype=np.float16)
    n = sums.shape[1] if sums.ndim > 1 else 0
    plane = max(1, int(np.prod(sums.shape[2:])))
    step = max(1, DIVIDE_SLAB_VOXELS // plane)
    for z in range(0, n, step):
        w = weights[z:z + step]
        scaled = w.astype(np.float64) * (2.0 ** bits)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, z:z + step] = (sums[:, z:z + step].astype(np.float64) / scaled).astype(np.float32)
        out[:, z:z + step][:, w == 0] = np.nan
    return out


def weights_digest(wq: Any) -> str:
    """What the second finisher of a seam checks before recomputing the first's weights: the same map."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(np.asarray(wq), dtype=np.int64).tobytes()).hexdigest()[:16]


def weights_for(grid: Any, wq: np.ndarray, ids: Sequence[int], lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
    """The summed weights over the box [lo, hi) of the patches ``ids`` (patch grid flat ids): exactly the
    weight plane an accumulator holds there after adding those patches, because every patch adds
    ``wq`` over its in-region part (integers: order free). Lets a seam piece leave its weights out."""
    out = np.zeros(tuple(b - a for a, b in zip(lo, hi)), dtype=np.int64)
    for i in ids:
        start = grid.start(int(i))
        rlo, rhi = grid.region(int(i))
        a = [max(x, y) for x, y in zip(rlo, lo)]
        b = [min(x, y) for x, y in zip(rhi, hi)]
        if any(x >= y for x, y in zip(a, b)):
            continue
        dst = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo))
        src = tuple(slice(x - o, y - o) for x, y, o in zip(a, b, start))
        out[dst] += wq[src]
    return out
