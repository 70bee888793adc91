"""Runs inside the zarr2-reader venv (checker_env.py: zarr-python 2.x), never in the project venv.

Usage: ``python zarr2_read.py PATHS_JSON``; prints one line ``ZARR2-READ:`` + a JSON list, one result
per path: ``{"path", "ok", "error", "zarr": version, "multiscales": the group's multiscales (0.4: at the
top of .zattrs), "levels": [{"path", "shape", "dtype", "sha256"}]}``, the digest over each level's
C-order bytes as this reader decodes them, for comparison with what zarr 3 reads.
"""

from __future__ import annotations

import hashlib
import json
import sys


def read(path: str) -> dict:
    import numpy as np
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        ms = attrs.get("multiscales")
        if not ms:
            raise ValueError(f"no multiscales in the group's attributes (keys: {sorted(attrs)})")
        levels = []
        for d in ms[0]["datasets"]:
            data = np.ascontiguousarray(group[d["path"]][...])
            levels.append({"path": d["path"], "shape": list(data.shape), "dtype": str(data.dtype),
                           "sha256": hashlib.sha256(data.tobytes()).hexdigest()})
        return {"path": path, "ok": True, "error": None, "zarr": zarr.__version__, "multiscales": ms,
                "levels": levels}
    except Exception as e:  # the reader's own message is the point
        return {"path": path, "ok": False, "error": f"{type(e).__name__}: {e}", "zarr": zarr.__version__,
                "multiscales": None, "levels": []}


if __name__ == "__main__":
    print("ZARR2-READ:" + json.dumps([read(p) for p in json.loads(sys.argv[1])]))
