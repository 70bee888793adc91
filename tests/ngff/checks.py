"""Checks of an OME-Zarr path by implementations we did not write: the harness for issue 9.

Each function takes any path (an output of ours, an input, a hand-built fixture) and either
returns what the other implementation made of it or raises :class:`NGFFCheckError` carrying that
implementation's own message, so a test says ``validate_ome_zarr_models(out)`` and fails with the
validator's words.

- ome-zarr-models and ome-zarr-py run in their own venv (checker_env.py: they need pydantic<2.13,
  the project's kubernetes needs >=2.13.5) through side_checks.py, in one subprocess per batch.
- ngff-zarr, napari (headless: napari's ``ViewerModel``, the GUI's model without Qt) and its
  napari-ome-zarr reader run in this process.

World frame: a voxel with index ``i`` is centred at ``scale * i + translation``; a layer's world
box is the region its voxels cover, from the corner of the first voxel to the far corner of the
last one: ``scale * (-0.5) + t`` to ``scale * (shape - 0.5) + t`` per axis. Corners rather than
centres make the box the same at every level of a 2x pyramid, so an output written at
``--level 1`` still has the input's box.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
_MARK = "NGFF-SIDE-CHECKS:"


class NGFFCheckError(AssertionError):
    """An implementation we did not write rejected the path; the message is its own."""


# --- ome-zarr-models and ome-zarr-py (side venv) ---------------------------------------------

def side_checks(paths: Iterable[str | Path], version: str | None = "0.5") -> list[dict]:
    """ome-zarr-models validation and ome-zarr-py's Reader for many paths in one subprocess.

    ``version`` picks the ome-zarr-models module (``"0.5"``: every output of ours; ``"0.4"``: the
    public scans' layout; ``None``: what the group's attributes say). One result dict per path,
    see side_checks.py.
    """
    from .checker_env import checker_python

    requests = [{"path": str(p), "version": version} for p in paths]
    proc = subprocess.run([str(checker_python()), str(HERE / "side_checks.py"), json.dumps(requests)],
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"side_checks.py failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len(_MARK):])


def validate_ome_zarr_models(path: str | Path, version: str | None = "0.5") -> str:
    """Validate with ``ome_zarr_models.v05.Image.from_zarr`` (``ImageLabel`` for a label image,
    ``Labels`` for a labels group; v04 models with ``version="0.4"``); return the model's name.

    An image's ``labels`` subgroup is validated with it (ome-zarr-models does that itself).
    """
    res = side_checks([path], version)[0]["ome_zarr_models"]
    if not res["ok"]:
        raise NGFFCheckError(f"ome-zarr-models rejects {path}: " + " ".join(res["error"].split()))
    return res["model"]


def ome_zarr_py_nodes(path: str | Path) -> list[dict]:
    """The nodes ome-zarr-py's Reader (what ``ome_zarr info`` prints) finds: specs, level shapes,
    axes and per-level coordinateTransformations. Raises if it finds none."""
    res = side_checks([path], None)[0]["ome_zarr_py"]
    if not res["ok"]:
        raise NGFFCheckError(f"ome-zarr-py cannot read {path}: {res['error']}")
    return res["nodes"]


def zarr2_read(paths: Iterable[str | Path]) -> list[dict]:
    """Open each path with zarr-python 2.x (its own venv) and read every multiscale level; see zarr2_read.py.

    A Zarr v2 reader is what many tools of the field still embed: a 0.4 output must open there with the
    bytes zarr 3 reads, and a v3 output does not open at all."""
    from .checker_env import checker_python

    proc = subprocess.run([str(checker_python(name="zarr2-reader")), str(HERE / "zarr2_read.py"),
                           json.dumps([str(p) for p in paths])], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ZARR2-READ:")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"zarr2_read.py failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("ZARR2-READ:"):])


def ome_attrs(attrs: dict) -> dict:
    """The OME metadata of a group's attributes, 0.5 (under ``ome``) or 0.4 (at the top)."""
    return attrs.get("ome", attrs)


# --- ngff-zarr -------------------------------------------------------------------------------

def validate_ngff_zarr(path: str | Path):
    """``ngff_zarr.from_ngff_zarr(path, validate=True)``: the official NGFF JSON schemas.

    The version comes from the metadata (``ome.version`` for 0.5); ``validate=True`` needs
    jsonschema (a dev dependency). A label image is also checked against the label schema, and
    an image's labels (listed in ``labels/``) are checked the same way, as ngff-zarr does not
    descend into them. Returns the ``NgffMultiscales`` it read.
    """
    import ngff_zarr
    import zarr
    from ngff_zarr.validate import validate as validate_schema

    path = Path(path)
    try:
        ms = ngff_zarr.from_ngff_zarr(str(path), validate=True)
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        version = _version(attrs)
        ome = attrs.get("ome", attrs)
        if "image-label" in ome:
            validate_schema(attrs, version=version, model="label")
        for name in _label_names(path):
            validate_ngff_zarr(path / "labels" / name)
    except NGFFCheckError:
        raise
    except Exception as e:
        raise NGFFCheckError(f"ngff-zarr rejects {path}: {type(e).__name__}: " + " ".join(str(e).split())) from e
    return ms


def ngff_zarr_world_boxes(path: str | Path) -> list[np.ndarray]:
    """Per level, the world box from ngff-zarr's reading of the scale and translation."""
    import ngff_zarr

    ms = ngff_zarr.from_ngff_zarr(str(path))
    boxes = []
    for im in ms.images:
        spatial = [d for d in im.dims if d in ("z", "y", "x")]
        shape = [im.data.shape[im.dims.index(d)] for d in spatial]
        boxes.append(box_from_transform(shape, [im.scale[d] for d in spatial],
                                        [im.translation.get(d, 0.0) for d in spatial]))
    return boxes


def _version(attrs: dict) -> str:
    if "ome" in attrs:
        return str(attrs["ome"].get("version", "0.5"))
    ms = attrs.get("multiscales") or [{}]
    return str(ms[0].get("version", "0.4"))


def _label_names(image: Path) -> list[str]:
    import zarr

    try:
        attrs = zarr.open_group(str(image / "labels"), mode="r").attrs.asdict()
    except Exception:  # no labels group: nothing to descend into
        return []
    return list(attrs.get("ome", attrs).get("labels", []))


# --- napari ----------------------------------------------------------------------------------

@dataclass
class NapariLayer:
    """One layer as napari builds it from napari-ome-zarr's reader (its own classes and transforms)."""

    name: str
    kind: str  # "image" or "labels"
    dtype: str
    level_shapes: list[tuple[int, ...]]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    affine: list[list[float]]  # napari's physical-to-world affine, (ndim+1) x (ndim+1)
    world_box: np.ndarray  # 2 x ndim: voxel corners through napari's data_to_world
    axis_labels: tuple[str, ...]
    units: tuple[str, ...]
    visible: bool
    opacity: float
    blending: str
    contrast_limits: tuple[float, float] | None = None  # images
    colormap: Any = None  # an image's colormap name; a labels layer's {value: rgba}
    features: dict = field(default_factory=dict)  # labels: per-value properties (class names)
    layer: Any = field(default=None, repr=False)


def napari_layers(path: str | Path) -> list[NapariLayer]:
    """Open ``path`` as napari does on ``napari.Viewer().open(path, plugin="napari-ome-zarr")``,
    without a GUI: napari's ``ViewerModel`` (the viewer minus Qt) after napari's plugin discovery.

    Needs the napari package (napari-ome-zarr imports its colormaps and transforms) but no Qt
    binding. Multichannel images come back one layer per channel, as in the GUI.
    Note napari-ome-zarr 0.10 (the last release for Python 3.11) reads only the first of each
    dataset's coordinateTransformations: the scale, not the translation (see test_checks.py).
    """
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()
    vm = ViewerModel()
    with contextlib.redirect_stdout(io.StringIO()):  # the reader prints the root attributes
        layers = vm.open(str(path), plugin="napari-ome-zarr")
    if not layers:
        raise NGFFCheckError(f"napari-ome-zarr returned no layers for {path}")
    return [_describe(layer) for layer in layers]


def _describe(layer) -> NapariLayer:
    kind = layer._type_string
    colormap: Any
    if kind == "labels":
        colormap = {int(k): [float(c) for c in v] for k, v in getattr(layer.colormap, "color_dict", {}).items()
                    if k is not None}
        features = {c: list(layer.features[c]) for c in layer.features.columns}
        clim = None
    else:
        colormap = layer.colormap.name
        features = {}
        clim = tuple(float(c) for c in layer.contrast_limits)
    shapes = [tuple(int(s) for s in sh) for sh in layer.level_shapes] if layer.multiscale else [
        tuple(int(s) for s in layer.data.shape)]
    data0 = layer.data[0] if layer.multiscale else layer.data
    return NapariLayer(
        name=layer.name, kind=kind, dtype=str(data0.dtype), level_shapes=shapes,
        scale=tuple(float(s) for s in layer.scale), translate=tuple(float(t) for t in layer.translate),
        affine=layer.affine.affine_matrix.tolist(), world_box=_napari_box(layer, shapes[0]),
        axis_labels=tuple(layer.axis_labels), units=tuple(str(u) for u in layer.units),
        visible=bool(layer.visible), opacity=float(layer.opacity), blending=str(layer.blending),
        contrast_limits=clim, colormap=colormap, features=features, layer=layer)


def _napari_box(layer, shape: Sequence[int]) -> np.ndarray:
    corners = np.array([[-0.5 if c == 0 else s - 0.5 for c, s in zip(choice, shape)]
                        for choice in itertools.product((0, 1), repeat=len(shape))])
    world = np.array([layer.data_to_world(c) for c in corners], dtype=float)
    return np.stack([world.min(axis=0), world.max(axis=0)])


# --- world frame -----------------------------------------------------------------------------

def box_from_transform(shape: Sequence[int], scale: Sequence[float], translation: Sequence[float]) -> np.ndarray:
    """World box (2 x ndim, voxel corners) of an array whose voxel i sits at scale * i + translation."""
    shape, scale, translation = (np.asarray(v, dtype=float) for v in (shape, scale, translation))
    a, b = scale * -0.5 + translation, scale * (shape - 0.5) + translation
    return np.stack([np.minimum(a, b), np.maximum(a, b)])


def world_box(layer: NapariLayer | np.ndarray) -> np.ndarray:
    return np.asarray(layer.world_box if isinstance(layer, NapariLayer) else layer, dtype=float)


def assert_same_world_frame(a: NapariLayer | np.ndarray, b: NapariLayer | np.ndarray,
                            atol: float | None = None, what: str = "") -> None:
    """Fail unless ``a`` and ``b`` cover the same world box.

    ``atol`` defaults to 1e-6 of the box's size: transforms copied from the input agree to
    rounding. Pass half a voxel when comparing pyramids built by conventions that do not shift
    the translation of coarser levels.
    """
    ba, bb = world_box(a), world_box(b)
    if ba.shape != bb.shape:
        raise NGFFCheckError(f"{what}world boxes have different dimensionality: {ba.tolist()} vs {bb.tolist()}")
    tol = atol if atol is not None else 1e-6 * float(np.abs(np.concatenate([ba, bb])).max() + 1.0)
    if not np.allclose(ba, bb, rtol=0, atol=tol):
        size_a, size_b = ba[1] - ba[0], bb[1] - bb[0]
        raise NGFFCheckError(
            f"{what}not one world frame: box {_fmt(ba)} vs {_fmt(bb)}; "
            f"size ratio {_fmt(size_a / np.where(size_b == 0, np.nan, size_b))}, offset {_fmt(bb[0] - ba[0])}")


def box_contains(outer: NapariLayer | np.ndarray, inner: NapariLayer | np.ndarray, atol: float = 1e-6) -> bool:
    """Whether ``inner`` lies within ``outer`` (a ``--bbox`` output within its input)."""
    o, i = world_box(outer), world_box(inner)
    return bool(np.all(i[0] >= o[0] - atol) and np.all(i[1] <= o[1] + atol))


def assert_overlays(output: str | Path, input: str | Path, input_level: int = 0, bbox: bool = False) -> None:
    """The whole world-frame check of an output against its input, as issue 9 asks for it.

    From the metadata (ngff-zarr's reading): output level 0 has the input level's scale, axis
    names and units, and the same world box (``bbox=True``: a box within the input's). Through
    napari (napari-ome-zarr): every layer the output opens as has the input level's scale and,
    for a whole-volume output, the input's box to half an output voxel (napari-ome-zarr 0.10
    drops translations, so finer agreement and ``--bbox`` placement are left to the metadata).
    """
    import ngff_zarr

    def spatial_axes(path):
        ms = ngff_zarr.from_ngff_zarr(str(path))
        return [(a.name, a.unit) for a in ms.metadata.axes if a.type == "space"], ms

    in_axes, in_ms = spatial_axes(input)
    out_axes, out_ms = spatial_axes(output)
    if in_axes != out_axes:
        raise NGFFCheckError(f"output axes {out_axes} differ from the input's {in_axes} (name, unit)")
    names = [n for n, _ in in_axes]
    in_scale = [in_ms.images[input_level].scale[n] for n in names]
    out_scale = [out_ms.images[0].scale[n] for n in names]
    if not np.allclose(in_scale, out_scale, rtol=1e-9, atol=0):
        raise NGFFCheckError(f"output level 0 scale {out_scale} is not the input level {input_level}'s {in_scale}")
    in_box = ngff_zarr_world_boxes(input)[input_level]
    out_box = ngff_zarr_world_boxes(output)[0]
    if bbox:
        if not box_contains(in_box, out_box, atol=1e-6 * float(np.abs(in_box).max() + 1.0)):
            raise NGFFCheckError(f"output box {_fmt(out_box)} is not within the input's {_fmt(in_box)}")
    else:
        assert_same_world_frame(in_box, out_box, what="metadata (ngff-zarr): ")
    in_layer = next(la for la in napari_layers(input) if la.kind == "image")
    for la in napari_layers(output):
        if not np.allclose(la.scale, in_scale, rtol=1e-9, atol=0):
            raise NGFFCheckError(f"napari layer {la.name!r} has scale {la.scale}, the input level {input_level} {in_scale}")
        if not bbox:
            assert_same_world_frame(in_layer, la, atol=max(out_scale) / 2, what=f"napari layer {la.name!r}: ")


def _fmt(a: np.ndarray) -> str:
    """One line (pytest.raises(match=...) and logs read messages line by line)."""
    return np.array2string(np.asarray(a, dtype=float), precision=3, suppress_small=True,
                           max_line_width=10_000).replace("\n", "")

