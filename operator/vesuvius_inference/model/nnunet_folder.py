"""Write nnU-Net v2 "trained model folders" from code.

Tests need real model folders without downloads (random weights), and the demo trains a small
model and ships it in the same format, so both go through this one writer. The folder is exactly
what ``nnUNetPredictor.initialize_from_trained_model_folder`` loads: ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_FEATURES = (8, 16, 32, 64)
TRAINER_NAME = "nnUNetTrainer"
CONFIGURATION = "3d_fullres"


def make_plans(
    patch_size: Sequence[int],
    features: Sequence[int] = DEFAULT_FEATURES,
    normalization: str = "ZScoreNormalization",
    *,
    num_input_channels: int = 1,
    intensity_properties: dict[str, float] | None = None,
    use_mask_for_norm: bool = False,
) -> dict[str, Any]:
    """Plans for a 3d_fullres PlainConvUNet (InstanceNorm3d, LeakyReLU), one stage per feature count."""
    n_stages = len(features)
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1)
    props = intensity_properties or {
        "mean": 100.0, "std": 40.0, "median": 100.0, "min": 0.0, "max": 255.0,
        "percentile_00_5": 5.0, "percentile_99_5": 250.0,
    }
    return {
        "dataset_name": "Dataset001_Vesuvius",
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [int(p) * 2 for p in patch_size],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 2,
                "patch_size": [int(p) for p in patch_size],
                "median_image_size_in_voxels": [int(p) * 2 for p in patch_size],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": [normalization] * num_input_channels,
                "use_mask_for_norm": [use_mask_for_norm] * num_input_channels,
                "resampling_fn_data": "resample_data_or_seg_to_shape",
                "resampling_fn_seg": "resample_data_or_seg_to_shape",
                "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                "resampling_fn_probabilities_kwargs": {
                    "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
                "architecture": {
                    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                    "arch_kwargs": {
                        "n_stages": n_stages,
                        "features_per_stage": [int(f) for f in features],
                        "conv_op": "torch.nn.modules.conv.Conv3d",
                        "kernel_sizes": [[3, 3, 3]] * n_stages,
                        "strides": strides,
                        "n_conv_per_stage": [2] * n_stages,
                        "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                        "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                        "dropout_op": None,
                        "dropout_op_kwargs": None,
                        "nonlin": "torch.nn.LeakyReLU",
                        "nonlin_kwargs": {"inplace": True},
                    },
                    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
                },
                "batch_dice": False,
            }
        },
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            str(c): dict(props) for c in range(num_input_channels)
        },
    }


def make_dataset_json(num_classes: int = 2, num_input_channels: int = 1) -> dict[str, Any]:
    """dataset.json with ``background`` plus ``num_classes - 1`` foreground labels."""
    labels = {"background": 0}
    for i in range(1, num_classes):
        labels["surface" if num_classes == 2 else f"class_{i}"] = i
    return {
        "channel_names": {str(c): "CT" if c == 0 else f"ch{c}" for c in range(num_input_channels)},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }


def build_network(plans: dict[str, Any], dataset_json: dict[str, Any],
                  deep_supervision: bool = False) -> Any:  # a torch nn.Module
    """The network exactly as nnU-Net's trainer builds it for these plans (imports torch lazily)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(CONFIGURATION)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(pm, cm, n_in, n_out, enable_deep_supervision=deep_supervision)


def write_model_folder(
    folder: str | os.PathLike[str],
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    *,
    fold_weights: dict[int | str, dict[str, Any]] | None = None,
    folds: Sequence[int] = (0,),
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    seed: int = 0,
    checkpoint_name: str = "checkpoint_final.pth",
) -> Path:
    """Write a model folder; folds without given weights get seeded random weights."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    fold_weights = dict(fold_weights or {})
    for i, fold in enumerate(folds):
        weights = fold_weights.get(fold)
        if weights is None:
            torch.manual_seed(seed + i)
            net = build_network(plans, dataset_json, deep_supervision=True)
            weights = net.state_dict()
        ckpt = {
            "network_weights": weights,
            "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold,
                          "dataset_json": dataset_json},
            "trainer_name": TRAINER_NAME,
            "inference_allowed_mirroring_axes": tuple(mirror_axes) if mirror_axes is not None else None,
        }
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(ckpt, folder / f"fold_{fold}" / checkpoint_name)
    return folder
