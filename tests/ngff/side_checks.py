"""Runs inside the NGFF checker venv (checker_env.py), never in the project venv.

Usage: ``python side_checks.py REQUEST_JSON`` where the request is a list of
``{"path": ..., "version": "0.5" | "0.4" | null}``; prints one JSON list, one result per request:
``{"path", "ome_zarr_models": {"ok", "model", "error"}, "ome_zarr_py": {"ok", "nodes", "error"}}``.
Batching amortises the interpreter start and imports (~2 s) over many outputs.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback


def _chain(e: BaseException) -> str:
    """The message of ``e`` and of each exception it was raised from (ome-zarr-models wraps them)."""
    parts, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return "\n  caused by ".join(parts)


def ome_zarr_models_check(path: str, version: str | None) -> dict:
    """Validate with the model that matches the group's kind: Image, ImageLabel or Labels."""
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        attrs = group.attrs.asdict()
        ome = attrs.get("ome", attrs)
        detected = "0.5" if "ome" in attrs else "0.4"
        version = version or detected
        if version == "0.5":
            from ome_zarr_models import v05 as models
        elif version == "0.4":
            from ome_zarr_models import v04 as models
        else:
            raise ValueError(f"unsupported version {version!r}")
        if "image-label" in ome:
            cls = models.ImageLabel
        elif "labels" in ome and "multiscales" not in ome:
            cls = models.Labels
        else:
            cls = models.Image
        cls.from_zarr(group)
        return {"ok": True, "model": f"v{version.replace('.', '')}.{cls.__name__}", "error": None}
    except Exception as e:  # the validator's own message is the point
        return {"ok": False, "model": None, "error": _chain(e)}


def ome_zarr_py_nodes(path: str) -> dict:
    """What ome-zarr-py's Reader (the library behind ``ome_zarr info``) makes of the path."""
    try:
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

        location = parse_url(path)
        if location is None:
            return {"ok": False, "nodes": [], "error": "ome_zarr.io.parse_url found no Zarr at the path"}
        nodes = []
        for node in Reader(location)():
            md = node.metadata
            nodes.append({
                "path": str(node.zarr),
                "specs": [type(s).__name__ for s in node.specs],
                "shapes": [list(d.shape) for d in node.data],
                "dtype": str(node.data[0].dtype) if node.data else None,
                "axes": md.get("axes"),
                "coordinateTransformations": md.get("coordinateTransformations"),
                "name": md.get("name"),
                "channel_names": md.get("channel_names"),
                "contrast_limits": md.get("contrast_limits"),
                "visible": node.visible,
            })
        return {"ok": bool(nodes), "nodes": nodes, "error": None if nodes else "Reader returned no nodes"}
    except Exception as e:
        return {"ok": False, "nodes": [], "error": _chain(e) + "\n" + traceback.format_exc(limit=3)}


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)  # ome-zarr-py logs a version-mismatch warning for every 0.4 input
    requests = json.loads(argv[1])
    out = [{"path": r["path"],
            "ome_zarr_models": ome_zarr_models_check(r["path"], r.get("version")),
            "ome_zarr_py": ome_zarr_py_nodes(r["path"])} for r in requests]
    print("NGFF-SIDE-CHECKS:" + json.dumps(out))  # stdout may carry the libraries' prints too
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
