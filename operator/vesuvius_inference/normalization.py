"""Intensity normalization from the model's plans, applied patch by patch on the model's device.

nnU-Net normalizes the whole image before sliding the window. Schemes that only need the plans'
intensity properties (CT, none, RGB) are pointwise, so nnU-Net's arithmetic applied to each patch
gives its bytes (tested against its classes). ZScore and RescaleTo01 need statistics of the whole
volume (the seed computed them per patch, which changed predictions): those statistics are computed
once, exactly for volumes up to ``EXACT_LIMIT_VOXELS`` stored voxels and otherwise from a
deterministic sample of chunks (every k-th stored chunk in row-major order, at most
``SAMPLE_CHUNKS``), then the same arithmetic as nnU-Net's class is applied with them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadInput
from .volume import InputVolume

EXACT_LIMIT_VOXELS = 1 << 30
SAMPLE_CHUNKS = 512
GLOBAL_SCHEMES = {"ZScoreNormalization", "RescaleTo01Normalization"}
# nnU-Net v2's schemes (map_channel_name_to_normalization.py), each ported in ``apply_torch``
SCHEMES = {"CTNormalization", "NoNormalization", "RGBTo01Normalization", *GLOBAL_SCHEMES}


@dataclass
class _Moments:
    """Running count / mean / M2 / min / max (Chan et al.), stable for float inputs."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add_values(self, x: np.ndarray) -> None:
        if x.size == 0:
            return
        x = x.astype(np.float64, copy=False)
        self.merge(_Moments(int(x.size), float(x.mean()), float(((x - x.mean()) ** 2).sum()),
                            float(x.min()), float(x.max())))

    def add_constant(self, value: float, count: int) -> None:
        if count:
            self.merge(_Moments(count, value, 0.0, value, value))

    def merge(self, o: _Moments) -> None:
        if o.n == 0:
            return
        n = self.n + o.n
        d = o.mean - self.mean
        self.mean += d * o.n / n
        self.m2 += o.m2 + d * d * self.n * o.n / n
        self.n = n
        self.lo, self.hi = min(self.lo, o.lo), max(self.hi, o.hi)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0


def check_schemes(schemes: Sequence[str]) -> None:
    """Refuse, in one line, a plans' normalization scheme nnU-Net v2 does not define."""
    unknown = sorted(set(schemes) - SCHEMES)
    if unknown:
        raise BadInput(f"the model's plans.json asks for normalization {', '.join(unknown)}, which nnU-Net v2 "
                       f"does not define (known: {', '.join(sorted(SCHEMES))}); check the model folder")


@dataclass
class Normalizer:
    """Per-channel normalization as the plans prescribe."""

    schemes: list[str]
    use_mask: list[bool]
    intensity_properties: list[dict[str, Any]]
    stats: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_plans(cls, configuration_manager: Any, plans_manager: Any, n_channels: int) -> Normalizer:
        props = plans_manager.foreground_intensity_properties_per_channel
        schemes = list(configuration_manager.normalization_schemes)
        use_mask = [bool(m) for m in configuration_manager.use_mask_for_norm]
        if len(schemes) != n_channels:
            raise ValueError(f"plans define {len(schemes)} input channels, the volume has {n_channels}")
        check_schemes(schemes)
        return cls(schemes, use_mask, [dict(props.get(str(c), {})) for c in range(n_channels)])

    @property
    def needs_stats(self) -> bool:
        return any(s in GLOBAL_SCHEMES for s in self.schemes)

    def compute_stats(self, volume: InputVolume) -> list[dict[str, float]]:
        """Whole-volume statistics for the channels whose scheme needs them."""
        stats: list[dict[str, float]] = [{} for _ in self.schemes]
        if not self.needs_stats:
            self.stats = stats
            return stats
        grid = volume.chunk_grid
        occ = volume.occupancy
        present = [idx for idx in grid.all() if occ is None or occ[idx]]
        stored = sum(int(np.prod(np.subtract(*grid.box(i)[::-1]))) for i in present)
        exact = stored <= EXACT_LIMIT_VOXELS
        if exact:
            chosen = present
        else:
            k = max(1, math.ceil(len(present) / SAMPLE_CHUNKS))
            chosen = present[::k]
        moments = [_Moments() for _ in self.schemes]
        for idx in chosen:
            lo, hi = grid.box(idx)
            data = volume.read(lo, hi)
            for c, m in enumerate(moments):
                if self.schemes[c] in GLOBAL_SCHEMES:
                    x = data[c]
                    m.add_values(x[x != 0] if self.use_mask[c] else x)
        if exact and occ is not None:
            absent = int(np.prod(volume.shape)) - stored
            for c, m in enumerate(moments):
                if self.schemes[c] in GLOBAL_SCHEMES and not (self.use_mask[c] and volume.fill_value == 0):
                    m.add_constant(volume.fill_value, absent)
        for c, m in enumerate(moments):
            if self.schemes[c] in GLOBAL_SCHEMES:
                stats[c] = {"mean": m.mean, "std": m.std, "min": m.lo, "max": m.hi, "n": m.n, "exact": exact}
        self.stats = stats
        return stats

    def apply_torch(self, x: Any) -> Any:
        """The same normalisation of a float32 (C, ...) torch tensor in place, on its device.

        The arithmetic of nnU-Net's classes (default_normalization_schemes.py), step by step in float32
        with the constants rounded to float32 as numpy does, so the bytes equal theirs (tested against
        them); ZScore and RescaleTo01 with the whole volume's statistics instead of the patch's.
        """
        for c, scheme in enumerate(self.schemes):
            v = x[c]
            props = self.intensity_properties[c]
            if scheme == "CTNormalization":
                v.clamp_(float(props["percentile_00_5"]), float(props["percentile_99_5"]))
                v.sub_(float(props["mean"]))
                v.div_(max(float(props["std"]), 1e-8))
            elif scheme == "ZScoreNormalization":
                st = self.stats[c]
                std = max(st["std"], 1e-8)
                if self.use_mask[c]:
                    m = v != 0
                    v[m] = (v[m] - st["mean"]) / std
                else:
                    v.sub_(st["mean"])
                    v.div_(std)
            elif scheme == "RescaleTo01Normalization":
                st = self.stats[c]
                v.sub_(st["min"])
                v.div_(max(st["max"] - st["min"], 1e-8))
            elif scheme == "NoNormalization":
                pass
            elif scheme == "RGBTo01Normalization":
                v.div_(255.0)
        return x


INTENSITY_SAMPLE_CHUNKS = 16
INTENSITY_MIN_FRACTION = 0.01


def intensity_mismatch(volume: InputVolume, plans: dict[str, Any],
                       region: tuple[Sequence[int], Sequence[int]] | None = None) -> str | None:
    """One line if the input's intensities lie far outside the model's training intensities, else None.

    A uint16 scan, or floats in [0, 1], through a model trained on uint8 runs without error and gives
    garbage (CT normalisation clips every voxel). nnU-Net's plans record the training foreground's
    intensity percentiles; if fewer than 1% of a deterministic sample of the input's stored voxels (up
    to 16 chunks, every k-th in row-major order) fall inside [percentile_00_5, percentile_99_5] of a
    channel, the input is on another scale. With a ``region`` (a --bbox: lo, hi) only the chunks the
    model will see are sampled: they are chunks predict reads anyway, so with its input cache on the
    check costs no extra fetch.
    """
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    grid = volume.chunk_grid
    occ = volume.occupancy
    present = [idx for idx in grid.all() if occ is None or occ[idx]]
    if region is not None:
        in_region = set(grid.touching(*region))
        present = [idx for idx in present if idx in in_region]
    if not present or not props:
        return None
    k = max(1, math.ceil(len(present) / INTENSITY_SAMPLE_CHUNKS))
    samples = [volume.read(*grid.box(idx)) for idx in present[::k][:INTENSITY_SAMPLE_CHUNKS]]
    for c in range(volume.channels):
        p = props.get(str(c)) or {}
        lo, hi = p.get("percentile_00_5"), p.get("percentile_99_5")
        if lo is None or hi is None:
            continue
        values = np.concatenate([s[c].ravel() for s in samples])
        inside = float(((values >= lo) & (values <= hi)).mean())
        if inside < INTENSITY_MIN_FRACTION:
            return (f"the input's intensities do not match the model's training data: {inside:.1%} of "
                    f"{values.size:,} sampled voxels of channel {c} lie in the model's foreground range "
                    f"[{lo:g}, {hi:g}] (plans.json, percentiles 0.5-99.5), while the input spans "
                    f"[{float(values.min()):g}, {float(values.max()):g}] ({volume.dtype}); predictions will be poor. "
                    "Rescale the input to the training intensities (e.g. uint16 -> uint8), or pass "
                    "--intensity_check off")
    return None
