"""A synthetic scroll-like CT volume with ground truth, for the demo and for training its model.

Real scroll scans cannot ship with the package and have no voxel-exact ground truth, so the demo
makes its own: a rolled papyrus whose cross-section is an Archimedean spiral of thin sheets around
a Z axis that bends a little, slightly crushed (elliptical, like the carbonised scrolls), sheets
that wave along Z and around the roll, wraps of different density separated by air gaps, fibre
texture, CT-like blur, correlated noise and mild cupping. Label 1 is the papyrus sheet (the
"surface" class), 0 is air.

Air outside the scroll's radius is exactly 0, so Zarr chunks that lie wholly in that margin are
never stored (``write_empty_chunks=False``), as in real scroll volumes; the pipeline's
empty-patch skipping is exercised by the demo too. Everything is vectorised numpy: the default
96 x 160 x 160 volume takes well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

AIR_LEVEL = 10.0  # mean air value inside the scroll's field of view
PAPER_LEVEL = 180.0  # mean papyrus value


def scroll_radius(shape: Sequence[int]) -> float:
    """Radius beyond which the volume is exactly 0 (measured from the wobbling scroll axis).

    A margin of 10 % of the smaller in-plane side (at least 4 voxels) plus the axis wobble keeps the
    box's corners, hence corner chunks, empty: for 96 x 160 x 160 with chunks 32 x 64 x 64, the
    chunks at Y, X >= 128 are all air.
    """
    side = float(min(shape[1], shape[2]))
    return side / 2 - max(4.0, 0.1 * side) - _wobble(shape)


def _wobble(shape: Sequence[int]) -> float:
    return min(3.0, 0.02 * float(min(shape[1], shape[2])))


def make_scroll(shape: Sequence[int] = (96, 160, 160), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(volume, labels)``, both uint8 of ``shape`` (Z, Y, X); label 1 = papyrus sheet.

    Deterministic for a given ``(shape, seed)``. Sheet thickness (~2.5-3.5 voxels) and the gap
    between wraps (~4-6 voxels) are in voxels and do not scale with ``shape``, so a model trained on
    one shape sees the same local appearance on any other; only the number of wraps changes.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sides of at least 8 voxels, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    z_n, y_n, x_n = (int(s) for s in shape)
    shape = (z_n, y_n, x_n)
    f32 = np.float32
    z = np.arange(z_n, dtype=f32)[:, None, None]
    y = np.arange(y_n, dtype=f32)[None, :, None]
    x = np.arange(x_n, dtype=f32)[None, None, :]

    # A slightly bent axis: the scroll's centre drifts by up to ``wobble`` voxels along Z.
    wobble = _wobble(shape)
    zt = z / z_n * 2 * np.pi
    cy = y_n / 2 + wobble * np.sin(zt * rng.uniform(0.4, 1.2) + rng.uniform(0, 2 * np.pi))
    cx = x_n / 2 + wobble * np.sin(zt * rng.uniform(0.4, 1.2) + rng.uniform(0, 2 * np.pi))
    dy, dx = y - cy, x - cx
    r_true = np.sqrt(dy * dy + dx * dx)
    r_zero = scroll_radius(shape)

    # Crushed roll: squash one in-plane direction, and let the roll swell a little along Z.
    squash = rng.uniform(0.82, 1.0)
    alpha = rng.uniform(0, np.pi)
    ca, sa = np.cos(alpha), np.sin(alpha)
    du = dx * ca + dy * sa
    dv = (-dx * sa + dy * ca) / squash
    swell = 1 + 0.04 * np.sin(zt * rng.uniform(0.5, 1.5) + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(du * du + dv * dv) / swell
    theta = np.arctan2(dv, du)

    pitch = rng.uniform(7.0, 9.0)  # voxels from one wrap to the next
    thickness = rng.uniform(2.6, 3.4)
    r0 = rng.uniform(5.0, 9.0)  # the hollow core
    r_end = r_zero - 3.0 - thickness  # the outermost sheet, blur included, stays inside r_zero
    # Waviness: around the roll and along Z (same for every wrap) plus a part that changes with the
    # radius, so the gaps between neighbouring wraps vary too.
    wave = (1.3 * np.sin(3 * theta + z / rng.uniform(9, 14) + rng.uniform(0, 6.3))
            + 0.8 * np.sin(5 * theta - z / rng.uniform(15, 25) + rng.uniform(0, 6.3))
            + 0.7 * np.sin(2 * theta + r / rng.uniform(9, 13) + z / rng.uniform(20, 30)))
    u = (r - r0 - wave) / pitch - theta / (2 * np.pi)
    wrap = np.floor(u + 0.5)
    dist = pitch * np.abs(u - wrap)  # voxels (in the un-squashed frame) to the nearest wrap's centre
    turns = wrap + theta / (2 * np.pi)  # position along the spiral, in turns from the inner end
    n_turns = max((r_end - r0) / pitch, 0.5)
    on_spiral = (turns >= 0) & (turns <= n_turns) & (r_true < r_zero - 2)
    labels = ((dist < thickness / 2) & on_spiral).astype(np.uint8)

    # Intensity: partial-volume sheet profile x per-wrap density x fibre texture, blurred, cupped, noisy.
    profile = np.clip(thickness / 2 + 0.5 - dist, 0, 1) * on_spiral
    density = rng.uniform(0.8, 1.1, size=int(n_turns) + 3).astype(f32)
    wrap_density = density[np.clip(wrap, 0, density.size - 1).astype(np.int64)]
    fibres = (gaussian_filter(rng.standard_normal(shape, dtype=f32), sigma=(4.0, 0.8, 0.8))
              + gaussian_filter(rng.standard_normal(shape, dtype=f32), sigma=(0.8, 2.5, 2.5)))
    fibres *= 0.12 / max(float(fibres.std()), 1e-6)
    vol = AIR_LEVEL + (PAPER_LEVEL - AIR_LEVEL) * profile * wrap_density * (1 + fibres)
    vol = gaussian_filter(vol.astype(f32), sigma=0.7)
    vol *= 0.92 + 0.12 * np.clip(r_true / r_zero, 0, 1) ** 2  # cupping: the centre reads darker
    noise = gaussian_filter(rng.standard_normal(shape, dtype=f32), sigma=0.6)
    vol += noise * (7.0 / max(float(noise.std()), 1e-6))
    vol = np.clip(np.rint(vol), 0, 255)
    vol[np.broadcast_to(r_true >= r_zero, shape)] = 0  # outside the scroll: exactly 0, never stored
    return vol.astype(np.uint8), labels


VOXEL_UM = 7.91  # the public scans' voxel size


def write_zarr(volume: np.ndarray, path: str, chunks: Sequence[int] = (32, 64, 64), voxel_um: float = VOXEL_UM,
               levels: int = 2) -> str:
    """Write ``volume`` as an OME-Zarr 0.5 image (Zarr v3) with a voxel size and a 2x pyramid.

    So the demo's output opens on top of it in napari and neuroglancer (both read the voxel size and
    axis names from here). All-zero chunks (pure air) are not stored: fill value 0 plus
    ``write_empty_chunks=False`` is how scroll volumes leave air out, and what the pipeline's chunk
    listing relies on to skip empty patches.
    """
    import zarr

    from vesuvius_inference.contract.frame import Frame
    from vesuvius_inference.contract.ngff import NGFF_VERSION, level_shapes, multiscales
    from vesuvius_inference.geometry.downsample import MEAN, downsample2

    frame = Frame(units=("micrometer",) * 3, scale=(voxel_um,) * 3)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    data = volume
    for k, shape in enumerate(level_shapes(volume.shape, levels)):
        arr = root.create_array(str(k), shape=shape, chunks=tuple(min(int(c), s) for c, s in zip(chunks, shape)),
                                dtype=volume.dtype, fill_value=0, dimension_names=frame.names,
                                config={"write_empty_chunks": False})
        arr[...] = data
        data = downsample2(data, MEAN)
    name = path.rstrip("/").split("/")[-1]
    root.attrs["ome"] = {"version": NGFF_VERSION, "multiscales": [multiscales(name, frame, levels, channel=False, how="mean")]}
    return path


def dice(pred_mask: np.ndarray, labels: np.ndarray) -> float:
    """Dice coefficient of two binary masks (nonzero = foreground); 1.0 when both are empty."""
    pred, truth = np.asarray(pred_mask).astype(bool), np.asarray(labels).astype(bool)
    denom = int(pred.sum()) + int(truth.sum())
    return 2.0 * int((pred & truth).sum()) / denom if denom else 1.0
