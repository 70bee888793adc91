"""vesuvius-inference: nnU-Net v2 segmentation over Zarr volumes, locally and on Kubernetes.

The seed's Python API is importable from here; the engine (torch, nnU-Net) is only imported when
one of these names is first used, so the operator runs without it.
"""

from __future__ import annotations

import os
from typing import Any

# nnU-Net warns at import unless these point somewhere; inference never reads them.
for _var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_var, os.path.join(os.path.expanduser("~"), ".cache", "vesuvius-inference", "nnunet"))

__version__ = "0.1.0"

_LAZY = {
    "Inferer": "vesuvius_inference.predict",
    "merge_inference_outputs": "vesuvius_inference.blend",
    "finalize_logits": "vesuvius_inference.finalize",
    "run_pipeline": "vesuvius_inference.cli",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vesuvius_inference' has no attribute {name!r}")
