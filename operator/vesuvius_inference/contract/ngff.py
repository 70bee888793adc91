"""OME-Zarr metadata of our outputs (NGFF 0.4 on Zarr v2, 0.5 on Zarr v3), and the geometry of their
pyramids. Pure, no I/O.

Outputs take the scan's format by default: the public scans are OME-Zarr 0.4 on Zarr v2, and tools of
the field that read only Zarr v2 (zarr-python 2.x, older viewers) cannot open a v3 output. The two
versions hold the same metadata: 0.5 nests it under ``ome`` with one ``version``; 0.4 keeps
``multiscales``, ``omero`` and ``image-label`` at the top of the group's attributes, each versioned.

Written as plain JSON: ome-zarr-models (the pydantic models of the spec) needs pydantic < 2.13,
which the kubernetes client we also depend on does not allow, so the models validate our output in
the tests (tests/ngff) instead of writing it. Probabilities are an image with a channel axis and an
``omero`` block (channel names, colours, a 0-255 window, which neuroglancer and napari use for
display); masks and argmax labels are a label image (``image-label``: class names from the model's
dataset.json, colours) of three spatial axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vesuvius_inference.contract.frame import Frame, triple

NGFF_VERSION = "0.5"  # the default for Zarr v3 inputs
NGFF_VERSIONS = {"0.4": 2, "0.5": 3}  # NGFF version -> the Zarr format it is stored in
AUTO = "auto"


def ngff_for(requested: str, input_zarr_format: int | None) -> str:
    """The NGFF version of an output: ``requested``, or for ``auto`` the input's (Zarr v2 -> 0.4, v3 -> 0.5)."""
    if requested != AUTO:
        return requested
    return "0.4" if input_zarr_format == 2 else NGFF_VERSION


def group_attributes(ome: dict[str, Any]) -> dict[str, Any]:
    """``ome`` metadata (as made below, with its ``version``) as the group's attributes in that version."""
    if ome["version"] != "0.4":
        return {"ome": ome}
    out = {k: v for k, v in ome.items() if k != "version"}
    out["multiscales"] = [{"version": "0.4", **m} for m in ome["multiscales"]]
    if "image-label" in out:
        out["image-label"] = {**out["image-label"], "version": "0.4"}
    return out
# Distinct, readable on a grey scan: magenta first (papyrus surfaces), then a qualitative palette.
PALETTE = ["FF00FF", "00FFFF", "FFFF00", "FF8000", "00FF00", "0080FF", "FF0040", "80FF80", "8000FF", "FFFFFF"]


def auto_levels(shape: Sequence[int], chunks: Sequence[int]) -> int:
    """Levels of a 2x pyramid down to the first level whose every axis fits in one chunk."""
    n = 1
    s = list(shape)
    while any(a > c for a, c in zip(s, chunks)):
        s = [-(-a // 2) for a in s]
        n += 1
    return n


def level_shapes(shape: Sequence[int], levels: int) -> list[tuple[int, int, int]]:
    out = [triple(int(a) for a in shape)]
    for _ in range(levels - 1):
        out.append(triple(-(-a // 2) for a in out[-1]))
    return out


def class_names(labels: dict[str, Any] | None, n: int) -> list[str]:
    """Class name per class index, from dataset.json's ``labels`` (name -> index)."""
    names = [f"class {i}" for i in range(n)]
    for name, value in (labels or {}).items():
        if isinstance(value, int) and 0 <= value < n:
            names[value] = str(name)
    return names


def _rgba(hex_color: str, alpha: int = 255) -> list[int]:
    return [int(hex_color[i:i + 2], 16) for i in (0, 2, 4)] + [alpha]


def multiscales(name: str, frame: Frame, levels: int, *, channel: bool, how: str) -> dict[str, Any]:
    return {
        "name": name,
        "axes": frame.axes(channel),
        "datasets": [{"path": str(k), "coordinateTransformations": frame.level(k).transforms(channel)}
                     for k in range(levels)],
        "type": how,
        "metadata": {"description": "2x per axis: intensities and probabilities by mean, class ids by mode "
                                    "(ties: the higher id)"},
    }


def image_metadata(name: str, frame: Frame, levels: int, *, channel_names: Sequence[str], depth: int,
                   version: str = NGFF_VERSION) -> dict[str, Any]:
    """``ome`` attributes of a probability image (C, Z, Y, X) of uint8 ``round(p * 255)``."""
    return {
        "version": version,
        "multiscales": [multiscales(name, frame, levels, channel=True, how="mean")],
        "omero": {
            "name": name,
            "channels": [{"label": label, "color": PALETTE[i % len(PALETTE)], "active": True, "coefficient": 1.0,
                          "family": "linear", "inverted": False,
                          "window": {"min": 0.0, "max": 255.0, "start": 0.0, "end": 255.0}}
                         for i, label in enumerate(channel_names)],
            "rdefs": {"model": "color", "defaultT": 0, "defaultZ": depth // 2},
        },
    }


def label_metadata(name: str, frame: Frame, levels: int, *, names: Sequence[str],
                   version: str = NGFF_VERSION, source: str | None = None) -> dict[str, Any]:
    """``ome`` attributes of a label image (Z, Y, X) of class ids: 0 (background) is transparent.

    ``source``: the image the labels were predicted from, as the relative path NGFF asks for
    ("image-label": "source": {"image": "../../"}); None leaves the optional key out (the input lies on
    another store, or no relative path reaches it)."""
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colors += [{"label-value": i, "rgba": _rgba(PALETTE[(i - 1) % len(PALETTE)])} for i in range(1, len(names))]
    label: dict[str, Any] = {"version": version, "colors": colors,
                             "properties": [{"label-value": i, "class": n} for i, n in enumerate(names)]}
    if source:
        label["source"] = {"image": source}
    return {"version": version, "multiscales": [multiscales(name, frame, levels, channel=False, how="mode")],
            "image-label": label}


def chunk_counts(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(-(-a // c) for a, c in zip(shape, chunks))
