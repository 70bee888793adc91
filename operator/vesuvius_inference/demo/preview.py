"""A PNG a person can look at: input slice, probability overlay, ground truth."""

from __future__ import annotations

import numpy as np


def write_preview(volume: np.ndarray, probability: np.ndarray, labels: np.ndarray | None, path: str,
                  z: int | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = volume.shape[0] // 2 if z is None else z
    panels = 3 if labels is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), dpi=110)
    axes[0].imshow(volume[z], cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"input, z = {z}")
    axes[1].imshow(volume[z], cmap="gray", vmin=0, vmax=255)
    prob = probability[z].astype(np.float32) / 255
    axes[1].imshow(np.ma.masked_less(prob, 0.05), cmap="magma", alpha=0.75, vmin=0, vmax=1)
    axes[1].set_title("surface probability")
    if labels is not None:
        axes[2].imshow(volume[z], cmap="gray", vmin=0, vmax=255)
        pred = prob >= 0.5
        truth = labels[z].astype(bool)
        overlay = np.zeros(truth.shape + (4,), dtype=np.float32)
        overlay[truth & pred] = (0.2, 0.9, 0.2, 0.8)   # agree
        overlay[truth & ~pred] = (1.0, 0.2, 0.2, 0.9)  # missed
        overlay[~truth & pred] = (0.2, 0.5, 1.0, 0.9)  # extra
        axes[2].imshow(overlay)
        axes[2].set_title("vs truth: green ok, red missed, blue extra", fontsize=9)
    for a in axes:
        a.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
