#!/usr/bin/env python3
"""Render an input volume and a prediction together in neuroglancer (headless Chromium) and measure
whether the prediction lies on the input's papyrus.

    python tools/neuroglancer_overlay.py INPUT.zarr OUTPUT.zarr --png overlay.png

Both paths are OME-Zarr groups (0.4 on Zarr v2, or 0.5 on Zarr v3); each is served from
127.0.0.1 by neuroglancer's own CORS static file server and opened as a layer (``zarr://`` for
v2, ``zarr3://`` for v3). neuroglancer places each layer by its own OME metadata (axis names,
units, scale, translation), so the layers overlay only if those agree. The view is a single XY
cross-section through the centre of the input, zoomed to fit the input.

Colours (fixed shaders, so the picture is measurable): the input in the green channel (its
intensity), the output in the red channel (full red where its value is above ``--threshold``, by
default the middle of its display window: probabilities above 0.5, any label),
added. Yellow = prediction on papyrus, green = papyrus without prediction, red = prediction on
air. The last stdout line is a JSON object with the pixel counts: ``input_pixels`` (green above
``--input-threshold``), ``prediction_pixels`` (red), ``prediction_on_input`` (both),
``prediction_off_input``, plus the view's position and scale.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``)
and the neuroglancer and selenium packages. WebGL runs on SwiftShader (no GPU).
neuroglancer cannot read float16 arrays: such an output is refused (exit 3).
Exit codes: 0 rendered; 2 bad arguments or no Chromium; 3 bad input data; 4 rendering failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

CHROME_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox",
               "--disable-dev-shm-usage", "--disable-gpu-sandbox"]
UNITS = {"micrometer": "um", "nanometer": "nm", "millimeter": "mm", "meter": "m", None: ""}


class BadData(Exception):
    pass


def ngff_frame(path: Path) -> dict:
    """Level 0's axes, units, shape, scale and translation, from the group's OME metadata."""
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise BadData(f"{path} is not a Zarr group ({type(e).__name__}: {e}); pass an OME-Zarr image") from e
    attrs = group.attrs.asdict()
    ms = (attrs.get("ome") or attrs).get("multiscales")
    if not ms:
        raise BadData(f"{path} has no OME-Zarr 'multiscales' metadata; pass an OME-Zarr image")
    ms = ms[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", [])]
    names = [a["name"] for a in axes]
    ds0 = ms["datasets"][0]
    scale, translation = [1.0] * len(names), [0.0] * len(names)
    for t in ds0.get("coordinateTransformations", []):
        if t["type"] == "scale":
            scale = [float(s) for s in t["scale"]]
        elif t["type"] == "translation":
            translation = [float(v) for v in t["translation"]]
    for path_k in (d["path"] for d in ms["datasets"]):
        if np.dtype(group[path_k].dtype) == np.float16:
            raise BadData(f"{path}/{path_k} is float16, which neuroglancer cannot read; write float32 or uint8")
    arr = group[ds0["path"]]
    spatial = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
    return {"names": names, "units": [a.get("unit") for a in axes], "shape": list(arr.shape),
            "scale": scale, "translation": translation, "spatial": spatial,
            "zarr_format": group.metadata.zarr_format}


def default_threshold(path: Path) -> float:
    """The value above which the output counts as predicted: the middle of its omero display window
    for an image that has one (probabilities stored as round(p * 255): 127.5, i.e. p > 0.5); 0 for
    label images and anything else (any nonzero value)."""
    import zarr

    ome = zarr.open_group(str(path), mode="r").attrs.asdict()
    ome = ome.get("ome") or ome
    channels = (ome.get("omero") or {}).get("channels") or []
    if "image-label" in ome or not channels or "window" not in channels[0]:
        return 0.0
    w = channels[0]["window"]
    return (float(w["start"]) + float(w["end"])) / 2


def source_url(path: Path, base_url: str, fmt: int) -> str:
    return f"{'zarr3' if fmt == 3 else 'zarr'}://{base_url}/{path.name}/"


def measure(rgb: np.ndarray, threshold: int = 128, input_threshold: int = 60) -> dict:
    """Pixel counts of the additive picture: red = prediction, green = input intensity."""
    red, green = rgb[..., 0] >= threshold, rgb[..., 1] >= input_threshold
    return {"pixels": int(red.size), "input_pixels": int(green.sum()), "prediction_pixels": int(red.sum()),
            "prediction_on_input": int((red & green).sum()), "prediction_off_input": int((red & ~green).sum())}


def render(input_path: Path, output_path: Path, png: Path, size: tuple[int, int] = (1200, 900),
           threshold: float = 0.0, input_threshold: int = 60, timeout: float = 120.0) -> dict:
    import neuroglancer
    import neuroglancer.static_file_server
    import neuroglancer.webdriver

    fin, fout = ngff_frame(input_path), ngff_frame(output_path)
    sp = fin["spatial"]
    names = [fin["names"][i] for i in sp]
    scale = np.array([fin["scale"][i] for i in sp])
    shape = np.array([fin["shape"][i] for i in sp])
    translation = np.array([fin["translation"][i] for i in sp])
    centre = translation + scale * (shape - 1) / 2  # world units (the input's, e.g. micrometer)
    units = [UNITS.get(fin["units"][i], fin["units"][i] or "") for i in sp]
    # A screen pixel covers `zoom` input voxels: the input's in-plane extent fits with a 10% margin.
    zoom = 1.1 * max(shape[-1] / size[0], shape[-2] / size[1])

    # neuroglancer asks for metadata files of both Zarr formats and for chunks never stored
    # (all air): the 404s are expected, not worth a log line each.
    logging.getLogger("tornado.access").setLevel(logging.ERROR)
    neuroglancer.set_server_bind_address("127.0.0.1")
    servers = {}
    for p in {input_path.parent, output_path.parent}:
        servers[p] = neuroglancer.static_file_server.StaticFileServer(
            static_dir=str(p), bind_address="127.0.0.1", daemon=True)
    try:
        viewer = neuroglancer.Viewer()
        with viewer.txn() as s:
            # The "xy" panel shows the first two global dimensions: list them x, y, z (NGFF's
            # z, y, x reversed); layers are matched to these by axis name.
            s.dimensions = neuroglancer.CoordinateSpace(names=names[::-1], units=units[::-1],
                                                        scales=scale[::-1].tolist())
            s.layers["input"] = neuroglancer.ImageLayer(
                source=source_url(input_path, servers[input_path.parent].url, fin["zarr_format"]),
                shader="void main() { emitRGB(vec3(0.0, toNormalized(getDataValue()), 0.0)); }",
                opacity=1.0)
            s.layers["output"] = neuroglancer.ImageLayer(
                source=source_url(output_path, servers[output_path.parent].url, fout["zarr_format"]),
                shader=("void main() { float v = float(toRaw(getDataValue()));"
                        f" emitRGB(vec3(v > {float(threshold):.6f} ? 1.0 : 0.0, 0.0, 0.0)); }}"),
                opacity=1.0, blend="additive")
            s.layout = "xy"
            s.position = (centre / scale)[::-1].tolist()  # in the global space's units: input voxels
            s.cross_section_scale = float(zoom)
            s.cross_section_background_color = "#000000"  # the default grey would count as both colours
            s.show_axis_lines = False
            s.show_scale_bar = False
            s.show_default_annotations = False  # the yellow outline of the layers' bounds
        box: dict = {}
        errors: list[str] = []

        def shoot() -> None:
            try:
                with neuroglancer.webdriver.Webdriver(
                        viewer, headless=True, browser="chrome", browser_binary_path=shutil.which("chromium"),
                        docker=True, print_logs=False, extra_command_line_args=CHROME_ARGS):
                    box["shot"] = viewer.screenshot(size=list(size))
            except Exception as e:  # reported to the caller as one line
                errors.append(f"{type(e).__name__}: {e}")

        t = threading.Thread(target=shoot, daemon=True)
        t.start()
        t.join(timeout)
        if t.is_alive():
            raise RuntimeError(f"neuroglancer did not finish rendering within {timeout:.0f} s")
        if errors:
            raise RuntimeError(errors[0])
        shot = box["shot"].screenshot
        png.write_bytes(shot.image)
        facts = measure(np.asarray(shot.image_pixels)[..., :3], 128, input_threshold)
        facts.update({"png": str(png), "size": list(size), "position_world": centre.tolist(),
                      "voxels_per_screen_pixel": float(zoom), "dimensions": names, "units": units,
                      "input_source": viewer.state.layers["input"].source[0].url,
                      "output_source": viewer.state.layers["output"].source[0].url})
        return facts
    finally:
        for srv in servers.values():
            srv.request_stop()


def chromium_missing() -> str | None:
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if missing:
        return (f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver)")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path, help="the input OME-Zarr image (the scan)")
    ap.add_argument("output", type=Path, help="the output OME-Zarr image (the prediction)")
    ap.add_argument("--png", type=Path, required=True, help="where to write the screenshot")
    ap.add_argument("--size", default="1200x900", help="screenshot size WxH (default 1200x900)")
    ap.add_argument("--threshold", type=float, default=None,
                    help="output values above this are drawn red (default: the middle of the output's omero "
                         "window, 127.5 for probabilities; 0 for label images)")
    ap.add_argument("--input-threshold", type=int, default=60,
                    help="green level (0-255) counted as papyrus in the picture (default 60)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the render")
    args = ap.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        print(f"--size must be WxH in pixels, got {args.size!r}", file=sys.stderr)
        return 2
    try:
        for p in (args.input, args.output):
            ngff_frame(p)  # refuse bad data before looking for a browser
    except BadData as e:
        print(str(e), file=sys.stderr)
        return 3
    problem = chromium_missing()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must use the system chromedriver, not download one
    try:
        threshold = default_threshold(args.output) if args.threshold is None else args.threshold
        facts = render(args.input.resolve(), args.output.resolve(), args.png, size, threshold,
                       args.input_threshold, args.timeout)
    except BadData as e:
        print(str(e), file=sys.stderr)
        return 3
    except RuntimeError as e:
        print(f"rendering failed: {e}", file=sys.stderr)
        return 4
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
