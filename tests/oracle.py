"""nnU-Net's own predictor as the numerical oracle.

``nnUNetPredictor`` accumulates logits and weights in float16. Near the volume's edges the Gaussian
weights (down to 1e-10 of the centre) underflow float16, so its own result there is off by up to
~0.5 from the exact weighted mean. ``fp32_accumulation=True`` runs the very same nnU-Net code with
its accumulators in float32 (the module's ``torch.half`` is redirected for the duration of the
call); everything else - grid, padding, Gaussian, mirroring, fold averaging - is untouched.
"""

from __future__ import annotations

import types

import numpy as np
import torch


class _Float32Half(types.ModuleType):
    def __getattr__(self, name):
        return torch.float32 if name == "half" else getattr(torch, name)


def normalize_like_nnunet(model_folder, volume: np.ndarray) -> np.ndarray:
    """(C, Z, Y, X) raw -> float32 normalized with nnU-Net's classes over the whole volume."""
    import json

    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        channel_name_to_normalization_mapping,
    )
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((model_folder / "plans.json").read_text())
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    classes = {c.__name__: c for c in channel_name_to_normalization_mapping.values()}
    out = volume.astype(np.float32).copy()
    for c, scheme in enumerate(cm.normalization_schemes):
        norm = classes[scheme](use_mask_for_norm=False,
                               intensityproperties=pm.foreground_intensity_properties_per_channel[str(c)],
                               target_dtype=np.float32)
        out[c] = norm.run(out[c])
    return out


def nnunet_logits(model_folder, normalized: np.ndarray, mirroring: bool, folds=(0, 1), step=0.5,
                  fp32_accumulation: bool = True, device: str = "cpu") -> np.ndarray:
    import nnunetv2.inference.predict_from_raw_data as pfrd
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                           device=torch.device(device), perform_everything_on_device=device != "cpu",
                           allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_folder), use_folds=tuple(folds))
    saved = pfrd.torch
    if fp32_accumulation:
        pfrd.torch = _Float32Half("torch")
    try:
        out = pred.predict_logits_from_preprocessed_data(torch.from_numpy(normalized))
    finally:
        pfrd.torch = saved
    return out.float().cpu().numpy()


def probabilities_uint8(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return np.rint(e / e.sum(axis=0, keepdims=True) * 255).astype(np.uint8)
