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
# torch's OpenMP threads sleep instead of spinning while they wait (read once, when torch loads): beside
# other work on the same CPUs a spinning thread burns the time the thread it waits for needs (cpuquota.py;
# bench_hostpath beside one busy process per CPU, 2 CPUs: 0.09-0.20x -> 0.19-0.33x of a zarr copy; on an
# idle machine it may cost up to ~15%, within that benchmark's noise). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "Inferer": "vesuvius_inference.predict.stage",
    "merge_inference_outputs": "vesuvius_inference.stages.blend",
    "finalize_logits": "vesuvius_inference.stages.finalize",
    "run_pipeline": "vesuvius_inference.cli",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vesuvius_inference' has no attribute {name!r}")
