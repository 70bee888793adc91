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


def weight_q(patch: Sequence[int]) -> Any:
    """nnU-Net's Gaussian importance map as exact int64 (torch, on the CPU)."""
    import torch
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    g = compute_gaussian(tuple(int(p) for p in patch), sigma_scale=1.0 / 8, value_scaling_factor=WEIGHT_SCALE,
                         dtype=torch.float16, device=torch.device("cpu"))
    return torch.round(g.double() * 2.0 ** WEIGHT_BITS).long()


def divide_np(sums: np.ndarray, weights: np.ndarray, bits: int) -> np.ndarray:
    """(C, ...) int64 sums and (...) int64 weights -> (C, ...) float16 logits; NaN where no weight."""
    w = weights.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (sums.astype(np.float64) / w) * (2.0 ** -bits)
    out = out.astype(np.float32).astype(np.float16)
    out[:, weights == 0] = np.nan
    return out


def divide_torch(sums: Any, weights: Any, bits: int) -> Any:
    """The same as ``divide_np`` on a torch device (bit-identical results)."""
    import torch

    out = (sums.double() / weights.double()) * (2.0 ** -bits)
    out = out.float().half()
    return torch.where(weights == 0, torch.full_like(out, float("nan")), out)
