"""Hand-built OME-Zarr stores for the NGFF checks: a scroll input as the public scans are stored,
and NGFF 0.5 "outputs" (right and deliberately wrong) to prove each check can fail.

Written with zarr-python directly and the metadata as plain JSON, not with a library we also check
against, so a mistake in a checker cannot be hidden by the same mistake in the writer.

The public Herculaneum scans (e.g. ``54keV_7.91um_Scroll1A.zarr``) are OME-Zarr 0.4 on Zarr v2:
levels ``0..5``, each 2x smaller per axis, ``.zarray`` with ``"dimension_separator": "/"`` and a
Blosc zstd compressor, uint8 voxels of 7.91 um, axes ``z, y, x`` in micrometers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

VOXEL_UM = 7.91
AXES = ("z", "y", "x")


@dataclass(frozen=True)
class ScrollInput:
    """What :func:`write_scroll_input` wrote, for tests to compare outputs against."""

    path: Path
    levels: list[np.ndarray]  # level 0 first
    scales: list[list[float]]  # per level, z y x in micrometers
    translations: list[list[float]]
    labels: np.ndarray = field(repr=False)  # level-0 papyrus mask (1 = sheet)


def downsample2(a: np.ndarray, how: str = "mean") -> np.ndarray:
    """2x per spatial axis (odd sides cropped): mean for intensities, stride for label values.
    A 4-D array is (c, z, y, x): each channel on its own."""
    if a.ndim == 4:
        return np.stack([downsample2(c, how) for c in a])
    a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2, : a.shape[2] // 2 * 2]
    if how == "nearest":
        return a[::2, ::2, ::2].copy()
    z, y, x = a.shape
    m = a.reshape(z // 2, 2, y // 2, 2, x // 2, 2).astype(np.float32).mean(axis=(1, 3, 5))
    return np.rint(m).astype(a.dtype) if np.issubdtype(a.dtype, np.integer) else m.astype(a.dtype)


def pyramid(level0: np.ndarray, n_levels: int, how: str = "mean") -> list[np.ndarray]:
    out = [level0]
    for _ in range(n_levels - 1):
        out.append(downsample2(out[-1], how))
    return out


def level_transforms(scale0: Sequence[float], translation0: Sequence[float], n_levels: int,
                     ) -> tuple[list[list[float]], list[list[float]]]:
    """Scale and translation of each level of a 2x mean pyramid.

    A voxel of level k averages 2**k voxels of level 0 per axis, so its centre lies (2**k - 1) / 2
    level-0 voxels after the first of them: the translation moves by that much, as ngff-zarr's
    and ome-zarr-py's pyramids do, so every level covers the same world box.
    """
    scales, translations = [], []
    for k in range(n_levels):
        f = 2 ** k
        scales.append([round(float(s) * f, 9) for s in scale0])
        translations.append([round(float(t) + (f - 1) / 2 * float(s), 9) for s, t in zip(scale0, translation0)])
    return scales, translations


def _multiscale(name: str, n_levels: int, scales, translations, units: str | None, version: str | None,
                channels: bool = False):
    axes = [{"name": a, "type": "space", **({"unit": units} if units else {})} for a in AXES]
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for k in range(n_levels):
        c = [1.0] if channels else []
        ct = [{"type": "scale", "scale": c + scales[k]}]
        if translations is not None:
            ct.append({"type": "translation", "translation": [0.0] * len(c) + translations[k]})
        datasets.append({"path": str(k), "coordinateTransformations": ct})
    ms = {"name": name, "axes": axes, "datasets": datasets}
    if version:
        ms["version"] = version
    return ms


def write_scroll_input(path: str | Path, shape: Sequence[int] = (64, 128, 128), n_levels: int = 3,
                       voxel_um: float = VOXEL_UM, offset_voxels: Sequence[int] = (40, 24, 16),
                       chunks: Sequence[int] = (32, 32, 32), seed: int = 0) -> ScrollInput:
    """Write a synthetic scroll as OME-Zarr 0.4 on Zarr v2, the layout of the public scans.

    ``offset_voxels`` puts level 0's first voxel at ``offset * voxel_um`` in world space (a crop of
    a larger scan keeps its position), so an output without the input's translation lands
    visibly elsewhere.
    """
    import numcodecs
    from vesuvius_inference.demo.synthetic import make_scroll

    path = Path(path)
    vol, labels = make_scroll(tuple(shape), seed=seed)
    levels = pyramid(vol, n_levels)
    scales, translations = level_transforms([voxel_um] * 3, [o * voxel_um for o in offset_voxels], n_levels)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    compressor = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    for k, data in enumerate(levels):
        arr = root.create_array(str(k), shape=data.shape, dtype=data.dtype, fill_value=0,
                                chunks=tuple(min(c, s) for c, s in zip(chunks, data.shape)),
                                compressors=compressor, chunk_key_encoding={"name": "v2", "separator": "/"},
                                config={"write_empty_chunks": False})
        arr[...] = data
    root.attrs["multiscales"] = [_multiscale(path.name, n_levels, scales, translations, "micrometer", "0.4")]
    return ScrollInput(path=path, levels=levels, scales=scales, translations=translations, labels=labels)


def write_ngff05(path: str | Path, levels: Sequence[np.ndarray], scale0: Sequence[float],
                 translation0: Sequence[float] | None, *, units: str | None = "micrometer",
                 dimension_names: bool = True, name: str | None = None, omero: dict | None = None,
                 image_label: dict | None = None, chunks: Sequence[int] = (32, 32, 32),
                 ) -> zarr.Group:
    """Write an NGFF 0.5 multiscale image (Zarr v3) by hand: the shape of a correct output.

    4-D levels are (c, z, y, x), with a channel axis first (multiclass probabilities).
    ``dimension_names=False`` leaves the array metadata without the names NGFF 0.5 requires;
    ``image_label`` makes the group a label image (its ``image-label`` metadata); ``omero`` is
    written as given (channel names, colours, display window).
    """
    path = Path(path)
    n = len(levels)
    scales, translations = level_transforms(scale0, translation0 if translation0 is not None else [0.0] * 3, n)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    channels = levels[0].ndim == 4
    names = (("c",) if channels else ()) + AXES
    for k, data in enumerate(levels):
        chunk = ((data.shape[0],) if channels else ()) + tuple(chunks)
        arr = root.create_array(str(k), shape=data.shape, dtype=data.dtype, fill_value=0,
                                chunks=tuple(min(c, s) for c, s in zip(chunk, data.shape)),
                                dimension_names=names if dimension_names else None)
        arr[...] = data
    ome: dict = {"version": "0.5", "multiscales": [
        _multiscale(name or path.name, n, scales, translations if translation0 is not None else None, units, None,
                    channels)]}
    if omero is not None:
        ome["omero"] = omero
    if image_label is not None:
        ome["image-label"] = image_label
    root.attrs["ome"] = ome
    return root


def add_labels_group(image_path: str | Path, names: Sequence[str]) -> None:
    """Make ``image/labels`` the NGFF labels group listing ``names`` (written under it beforehand)."""
    grp = zarr.open_group(str(Path(image_path) / "labels"), mode="a", zarr_format=3)
    grp.attrs["ome"] = {"version": "0.5", "labels": list(names)}
