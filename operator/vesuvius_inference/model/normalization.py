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

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.intensity import MIN_INSIDE, RANGED_SCHEMES, SCALE_FACTOR, IntensityFinding
from vesuvius_inference.store.volume import InputVolume

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
PERCENTILE_SAMPLE = 1 << 20  # voxels the advice and the scale test look at (a strided subsample)


def _rescale_advice(values: np.ndarray, dtype: np.dtype, lo: float, hi: float,
                    another_scale: bool) -> tuple[str, np.ndarray | None]:
    """How to bring ``values`` onto the trained range [lo, hi], in words, and the sample so rescaled.

    uint16 -> uint8 is the top byte (x // 256), as the community's converter of the scroll TIFFs does
    (KhartesViewer/scroll2zarr, zarr_to_ome.py: ``// divisor`` with divisor 256); a [0, 1] float scan is
    x * 255. Anything else: its own 0.5-99.5 percentiles mapped linearly onto the trained range."""
    top = float(values.max())
    if dtype.kind == "u" and dtype.itemsize == 2 and hi <= 255 < top:
        return "divide by 256 (uint16 -> uint8: x // 256, i.e. x >> 8)", values // 256
    if np.issubdtype(dtype, np.floating) and float(values.min()) >= 0 and top <= 1 and hi > 1:
        return "multiply by 255 (a [0, 1] float scan -> 0..255: round(x * 255) as uint8)", np.rint(values * 255)
    a, b = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    mapping = f"map the input's own percentiles 0.5-99.5 [{a:g}, {b:g}] linearly onto [{lo:g}, {hi:g}]"
    if another_scale:
        return mapping, None
    return (f"check that the region holds papyrus (air around the scroll lies below the range); if the scan has "
            f"another contrast, {mapping}"), None


def _another_scale(values: np.ndarray, dtype: np.dtype, lo: float, hi: float) -> bool:
    """The input cannot be on the training scale: its values lie more than SCALE_FACTOR times above the
    trained range (uint16 through a uint8 model), a float scan lies that far below it ([0, 1] through a
    0..255 model), or its integer type cannot reach the range at all (uint8 through a uint16 model). An
    integer scan a bit below the range (air around the scroll) is on the training scale."""
    top = float(np.percentile(np.abs(values), 99.5))
    if top > SCALE_FACTOR * max(abs(hi), 1.0):
        return True
    if np.issubdtype(dtype, np.floating):
        return hi > 0 and top * SCALE_FACTOR < hi
    return bool(np.issubdtype(dtype, np.integer) and np.iinfo(dtype).max < lo)


def check_intensities(volume: InputVolume, plans: dict[str, Any], schemes: Sequence[str],
                      region: tuple[Sequence[int], Sequence[int]] | None = None) -> IntensityFinding | None:
    """The first channel whose intensities lie far outside the model's training intensities, else None.

    nnU-Net's plans record the training foreground's intensity percentiles; if fewer than 1% of a
    deterministic sample of the input's stored voxels (up to 16 chunks, every k-th in row-major order)
    fall inside [percentile_00_5, percentile_99_5] of a channel whose scheme uses absolute intensities
    (intensity.RANGED_SCHEMES: not ZScore or RescaleTo01, which are scale-free), the input is off the
    training range (intensity.py says what each --intensity_check does with that). Constant chunks are
    left out of the sample: predict skips constant patches, the model never sees them. With a
    ``region`` (a --bbox: lo, hi) only the chunks the model will see are sampled: they are chunks
    predict reads anyway, so with its input cache on the check costs no extra fetch.
    """
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    ranged = [c for c in range(volume.channels) if c < len(schemes) and schemes[c] in RANGED_SCHEMES]
    grid = volume.chunk_grid
    occ = volume.occupancy
    present = [idx for idx in grid.all() if occ is None or occ[idx]]
    if region is not None:
        in_region = set(grid.touching(*region))
        present = [idx for idx in present if idx in in_region]
    if not present or not props or not ranged:
        return None
    k = max(1, math.ceil(len(present) / INTENSITY_SAMPLE_CHUNKS))
    samples = [volume.read(*grid.box(idx)) for idx in present[::k][:INTENSITY_SAMPLE_CHUNKS]]
    for c in ranged:
        p = props.get(str(c)) or {}
        lo, hi = p.get("percentile_00_5"), p.get("percentile_99_5")
        if lo is None or hi is None:
            continue
        lo, hi = float(lo), float(hi)
        varying = [s[c].ravel() for s in samples if s[c].size and s[c].min() != s[c].max()]
        if not varying:
            continue
        values = np.concatenate(varying)  # the stored dtype: 16 chunks of 128^3 uint8 are 32 MiB, not 256
        inside = float(((values >= lo) & (values <= hi)).mean())
        if inside >= MIN_INSIDE:
            continue
        dtype = np.dtype(volume.dtype)
        sub = values[::max(1, values.size // PERCENTILE_SAMPLE)].astype(np.float64)  # percentiles: every k-th
        scale = _another_scale(sub, dtype, lo, hi)
        how, rescaled = _rescale_advice(sub, dtype, lo, hi, scale)
        after = None if rescaled is None else float(((rescaled >= lo) & (rescaled <= hi)).mean())
        return IntensityFinding(c, str(dtype), schemes[c], (float(values.min()), float(values.max())), (lo, hi),
                                1.0 - inside, int(values.size), scale, how, after)
    return None
