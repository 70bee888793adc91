"""How fast a GPU runs a model's forward passes, for ``plan``'s GPU-hours when the user gives no
``--throughput``: the model's FLOPs per pass, counted from its plans, over a measured effective rate.

No GPU was lent to the sessions that built this, so the rate is a published measurement of the same
network, not ours: NVIDIA's DeepLearningExamples nnU-Net (PyTorch/Segmentation/nnUNet, README,
"Inference performance: NVIDIA DGX A100 (1x A100 80G)", PyTorch 22.11 NGC container) ran the 3D
U-Net nnU-Net plans for 128^3 patches (features min(2^(5+i), 320), six stages, two 3x3x3 convs per
stage, strided-conv down, transposed-conv up: the default 3d_fullres PlainConvUNet) at 76.39 patches/s
in FP16 with batch 4 on one A100 80GB. That network costs 0.954 TFLOP per 128^3 forward (counted
below; torch.utils.flop_counter gives 0.95, NOTES.md), so the A100 sustained ~73 TFLOP/s on it. Other
models and patch sizes scale by their own FLOPs per pass. An H100 is faster than this (about 1.6x the
memory bandwidth and 3x the dense FP16 rate of an A100), so the default overstates an H100's GPU-hours:
a ceiling to budget with, until ``--throughput`` gives a rate measured on the user's GPUs. Pure and
torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REFERENCE_PASSES_PER_S = 76.39  # NVIDIA DLE nnU-Net, A100 80GB, FP16 (AMP), batch 4, 128^3, PyTorch 22.11
REFERENCE_PATCH = (128, 128, 128)
REFERENCE_FEATURES = (32, 64, 128, 256, 320, 320)
REFERENCE_GPU = "A100 80GB"
REFERENCE_SOURCE = ("NVIDIA DeepLearningExamples' nnU-Net 3D U-Net at 128^3 ran 76.4 passes/s on one A100 80GB, "
                    "FP16, batch 4")
# A floor per layer (a convolution, a normalisation and a non-linearity: three kernels launched in turn,
# ~10 us each from eager PyTorch) however small the layer: what keeps a tiny network from an absurd rate.
LAYER_S = 30e-6


@dataclass(frozen=True)
class Rate:
    """Model passes per second per GPU, and where the number comes from (for the plan's line)."""

    passes_per_s: float
    given: bool  # True: the user's --throughput
    tflop_per_pass: float | None  # the model's, counted from its plans (None: an architecture we cannot count)
    basis: str


def _stage_sizes(patch: Sequence[int], strides: Sequence[Sequence[int]]) -> list[np.ndarray]:
    sizes, cur = [], np.asarray(patch, dtype=np.int64)
    for s in strides:
        cur = cur // np.asarray(s if isinstance(s, Sequence) else [s] * 3, dtype=np.int64)
        sizes.append(cur)
    return sizes


def _kernel(k: Any) -> int:
    return int(np.prod(k if isinstance(k, Sequence) else [k] * 3))


@dataclass(frozen=True)
class Cost:
    """One forward pass: its FLOPs (2 per multiply-add, convolutions only) and its layers (each a
    convolution, a normalisation and a non-linearity: the kernels a GPU launches one after another)."""

    flops: float
    layers: int


def forward_cost(configuration: Mapping[str, Any], patch: Sequence[int], in_channels: int,
                 num_classes: int) -> Cost | None:
    """The cost of one forward pass at ``patch``, from an nnU-Net v2 plans configuration:
    dynamic_network_architectures' PlainConvUNet and ResidualEncoderUNet (``architecture.arch_kwargs``;
    the older ``UNet_base_num_features`` form too). Normalisation and non-linearities add no FLOPs here
    (a fraction of a percent). Deep supervision is off at inference, so one segmentation head. None for
    an architecture this does not know."""
    arch = configuration.get("architecture") or {}
    kw = arch.get("arch_kwargs")
    name = str(arch.get("network_class_name", ""))
    if kw:
        feats = [int(f) for f in kw["features_per_stage"]]
        kernels, strides = kw["kernel_sizes"], kw["strides"]
        residual = "ResidualEncoder" in name
        enc = kw.get("n_blocks_per_stage") if residual else kw.get("n_conv_per_stage")
        dec = kw.get("n_conv_per_stage_decoder")
        if not ("PlainConvUNet" in name or residual) or enc is None or dec is None:
            return None
    elif "UNet_base_num_features" in configuration and "conv_kernel_sizes" in configuration:
        kernels, strides = configuration["conv_kernel_sizes"], configuration["pool_op_kernel_sizes"]
        base, top = int(configuration["UNet_base_num_features"]), int(configuration.get("unet_max_num_features", 320))
        feats = [min(base * 2 ** i, top) for i in range(len(kernels))]
        enc, dec, residual = configuration["n_conv_per_stage_encoder"], configuration["n_conv_per_stage_decoder"], False
    else:
        return None
    enc = [int(e) for e in (enc if isinstance(enc, Sequence) else [enc] * len(feats))]
    dec = [int(d) for d in (dec if isinstance(dec, Sequence) else [dec] * (len(feats) - 1))]
    sizes = _stage_sizes(patch, strides)
    macs, ch, layers = 0.0, int(in_channels), 0
    if residual:  # a stem conv at the first stage's resolution, then blocks of two convs (+ a 1x1 projection)
        macs += float(np.prod(sizes[0])) * _kernel(kernels[0]) * ch * feats[0]
        ch, layers = feats[0], 1
    for s, f in enumerate(feats):
        v, k = float(np.prod(sizes[s])), _kernel(kernels[s])
        if residual:
            macs += enc[s] * 2 * v * k * f * f + (v * ch * f if ch != f or s else 0.0)
            layers += 2 * enc[s] + 1
        else:
            macs += v * k * ch * f + (enc[s] - 1) * v * k * f * f
            layers += enc[s]
        ch = f
    for s in range(len(feats) - 2, -1, -1):  # decoder: transposed conv (kernel = stride), concat conv, convs
        v, k, f = float(np.prod(sizes[s])), _kernel(kernels[s]), feats[s]
        macs += v * feats[s + 1] * f + v * k * 2 * f * f + (dec[s] - 1) * v * k * f * f
        layers += 1 + dec[s]
    macs += float(np.prod(sizes[0])) * feats[0] * num_classes
    return Cost(2.0 * macs, layers + 1)


def forward_flops(configuration: Mapping[str, Any], patch: Sequence[int], in_channels: int,
                  num_classes: int) -> float | None:
    cost = forward_cost(configuration, patch, in_channels, num_classes)
    return cost.flops if cost else None


def reference_cost() -> Cost:
    """The network behind REFERENCE_PASSES_PER_S (0.97 TFLOP with BraTS' 4 channels in and out)."""
    conf = {"architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
        "features_per_stage": list(REFERENCE_FEATURES), "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5, "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}}}
    cost = forward_cost(conf, REFERENCE_PATCH, 4, 4)
    assert cost is not None
    return cost


def seconds_per_pass(cost: Cost) -> float:
    """The reference's measured time per pass split in two: a launch floor of LAYER_S per layer
    (small networks are bound by it, not by arithmetic) and the rest spread over its FLOPs."""
    ref = reference_cost()
    flop_rate = ref.flops / (1.0 / REFERENCE_PASSES_PER_S - ref.layers * LAYER_S)
    return cost.flops / flop_rate + cost.layers * LAYER_S


def default_rate(configuration: Mapping[str, Any], patch: Sequence[int], in_channels: int,
                 num_classes: int) -> Rate:
    """The measured reference scaled to this model (its FLOPs per pass and its layers), or by its
    patch's voxels when the architecture is one ``forward_cost`` cannot count."""
    cost = forward_cost(configuration, patch, in_channels, num_classes)
    p = "x".join(map(str, patch)) if len(set(patch)) > 1 else f"{patch[0]}^3"
    if cost:
        rate = 1.0 / seconds_per_pass(cost)
        how = (f"measured default scaled to this model at patch {p}, {cost.flops / 1e12:.3g} TFLOP per pass: "
               f"{REFERENCE_SOURCE}; an H100 is faster")
    else:
        rate = REFERENCE_PASSES_PER_S * float(np.prod(REFERENCE_PATCH)) / float(np.prod(patch))
        how = (f"measured default scaled by patch {p}'s voxels (an architecture whose FLOPs plan cannot count): "
               f"{REFERENCE_SOURCE}; an H100 is faster")
    return Rate(rate, False, cost.flops / 1e12 if cost else None, how)


def given_rate(passes_per_s: float, configuration: Mapping[str, Any], patch: Sequence[int], in_channels: int,
               num_classes: int) -> Rate:
    flops = forward_flops(configuration, patch, in_channels, num_classes)
    return Rate(passes_per_s, True, flops / 1e12 if flops else None, "--throughput")
