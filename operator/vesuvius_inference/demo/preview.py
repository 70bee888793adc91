"""A PNG a person can look at after the demo: input slice, probability overlay, ground truth.

Numbers (Dice, voxels/s) say the pipeline works; a picture shows *what* it found: whether the
predicted surface follows the papyrus sheets and where it misses. The figure is drawn with
matplotlib's object API on the Agg canvas, so it never touches pyplot's global state or the
user's interactive backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# Colours for the comparison panel (RGBA): agreement, missed truth, extra prediction.
AGREE = (0.15, 0.85, 0.25, 0.75)
MISSED = (1.0, 0.15, 0.15, 0.95)
EXTRA = (0.2, 0.55, 1.0, 0.95)


def _as_unit_probability(probability: np.ndarray) -> np.ndarray:
    """uint8 0..255 (the pipeline's output) or float 0..1 -> float32 0..1."""
    p = np.asarray(probability)
    if np.issubdtype(p.dtype, np.integer):
        return p.astype(np.float32) / 255.0
    return np.clip(p.astype(np.float32), 0.0, 1.0)


def write_preview(volume: np.ndarray, probability_uint8: np.ndarray, labels: np.ndarray | None,
                  path_png: str | os.PathLike[str], z: int | None = None) -> Path:
    """Write a PNG of one Z slice (default: the middle) with three panels and return its path.

    Panels: the input in gray; the input with the surface probability as a coloured overlay
    (transparent below 5 %); the prediction (probability >= 0.5) against the ground truth, coloured
    by agreement, missed and extra voxels, with the slice's Dice in the title. Without ``labels``
    the third panel is left out. ``volume`` is (Z, Y, X) of any dtype (gray range from its slice's
    0.5-99.5 percentiles); ``probability_uint8`` is (Z, Y, X) uint8 0..255, or float 0..1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    volume = np.asarray(volume)
    if volume.ndim != 3 or np.shape(probability_uint8) != volume.shape:
        raise ValueError(f"volume {volume.shape} and probability {np.shape(probability_uint8)} must be the "
                         "same (Z, Y, X) shape")
    z = volume.shape[0] // 2 if z is None else int(z)
    if not 0 <= z < volume.shape[0]:
        raise ValueError(f"z={z} outside 0..{volume.shape[0] - 1}")
    img = volume[z].astype(np.float32)
    lo, hi = np.percentile(img, (0.5, 99.5))
    gray = {"cmap": "gray", "vmin": float(lo), "vmax": float(max(hi, lo + 1e-6)), "interpolation": "nearest"}
    prob = _as_unit_probability(np.asarray(probability_uint8)[z])

    panels = 3 if labels is not None else 2
    fig = Figure(figsize=(4.6 * panels, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    axes[0].imshow(img, **gray)
    axes[0].set_title(f"input CT, slice z = {z}")
    axes[1].imshow(img, **gray)
    im = axes[1].imshow(np.ma.masked_less(prob, 0.05), cmap="inferno", alpha=0.7, vmin=0, vmax=1,
                        interpolation="nearest")
    axes[1].set_title("surface probability")
    cbar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    cbar.set_label("probability")
    if labels is not None:
        truth = np.asarray(labels)[z] > 0
        pred = prob >= 0.5
        overlay = np.zeros(truth.shape + (4,), dtype=np.float32)
        overlay[truth & pred] = AGREE
        overlay[truth & ~pred] = MISSED
        overlay[~truth & pred] = EXTRA
        denom = int(truth.sum()) + int(pred.sum())
        slice_dice = 2 * int((truth & pred).sum()) / denom if denom else 1.0
        axes[2].imshow(img, **gray)
        axes[2].imshow(overlay, interpolation="nearest")
        axes[2].set_title(f"prediction vs ground truth (slice Dice {slice_dice:.3f})", fontsize=10)
        axes[2].legend(handles=[Patch(color=AGREE, label="both"), Patch(color=MISSED, label="missed"),
                                Patch(color=EXTRA, label="extra")],
                       loc="lower center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False, fontsize=9)
    for a in axes:
        a.set_axis_off()
    fig.tight_layout()
    path = Path(path_png)
    fig.savefig(path, format="png")
    return path
