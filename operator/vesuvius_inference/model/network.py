"""nnU-Net v2 trained-model folders as networks: build each fold's network from its checkpoint (torch).

Network construction, plans and label handling are nnU-Net's own (``nnUNetPredictor``
initialisation), so any trainer/architecture nnU-Net can load, we can run.

Start-up cost matters: every pod a preemption, drain or outage replaces loads the model again, and the GPU is
held meanwhile. ``nnUNetPredictor.initialize_from_trained_model_folder`` (nnunetv2/inference/
predict_from_raw_data.py) costs ~10 s of imports per process (measured 2026-12-07: importing
predict_from_raw_data pulls in torch._dynamo and the preprocessors, ~6 s; finding the trainer class by name
imports nnUNetTrainer, whose logger imports seaborn and matplotlib, ~4.5 s, plus matplotlib's font cache built
afresh in every pod whose HOME is an emptyDir). For the stock ``nnUNetTrainer`` it builds the network with
``nnUNetTrainer.build_network_architecture``, which is ``get_network_from_plans(arch class, arch kwargs,
kwargs requiring import, input channels, segmentation heads, allow_init=True, deep_supervision)``
(nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py); :func:`_plain_network` does exactly that with the same
nnU-Net utilities (~1.2 s of imports), and any other trainer (which may override the architecture) still goes
through nnUNetPredictor.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.model.files import ModelFiles


@dataclass
class Model:
    """A loaded ensemble: one network per fold, plus what inference needs from the plans."""

    folder: str
    networks: list[Any]
    plans_manager: Any
    configuration_manager: Any
    dataset_json: dict[str, Any]
    folds: list[str]
    mirror_axes: tuple[int, ...] | None
    num_input_channels: int
    num_classes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.configuration_manager.patch_size)  # type: ignore[return-value]

    def to(self, device: Any) -> Model:
        self.networks = [n.to(device).eval() for n in self.networks]
        return self


# Trainers whose network is nnUNetTrainer.build_network_architecture's (not overridden): built without
# importing the trainer (module docstring).
PLAIN_TRAINERS = ("nnUNetTrainer",)


@dataclass
class _Built:
    network: Any
    plans_manager: Any
    configuration_manager: Any
    dataset_json: dict[str, Any]
    mirror_axes: Any
    label_manager: Any
    num_input_channels: int


def _plain_network(folder: str, checkpoint: dict[str, Any]) -> _Built:
    """What initialize_from_trained_model_folder builds for a PLAIN_TRAINERS checkpoint, without its imports."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(os.path.join(folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    with open(os.path.join(folder, "plans.json")) as f:
        plans_manager = PlansManager(json.load(f))
    cm = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    n_in = determine_num_input_channels(plans_manager, cm, dataset_json)
    labels = plans_manager.get_label_manager(dataset_json)
    network = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, n_in, labels.num_segmentation_heads,
                                     allow_init=True, deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    return _Built(network, plans_manager, cm, dataset_json, checkpoint.get("inference_allowed_mirroring_axes"),
                  labels, int(n_in))


def _predictor_network(folder: str, first_fold: str, first_ckpt: str) -> _Built:
    """nnUNetPredictor's own initialisation: any trainer nnU-Net can load."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a CUDA note when built for the CPU
        predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                    allow_tqdm=False, verbose=False)
    try:
        predictor.initialize_from_trained_model_folder(
            folder, use_folds=(first_fold if first_fold == "all" else int(first_fold),),
            checkpoint_name=os.path.basename(first_ckpt))
    except Exception as e:
        raise BadInput(f"cannot load nnU-Net model from {folder}: {type(e).__name__}: {e}") from None
    n_in = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                        predictor.dataset_json)
    return _Built(predictor.network, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json,
                  predictor.allowed_mirroring_axes, predictor.label_manager, int(n_in))


def load_model(files: ModelFiles) -> Model:
    """Build the networks of a resolved model folder on the CPU (the checkpoints ``files`` found)."""
    import torch

    from vesuvius_inference.store import storage

    folder = storage.local_path(files.folder)
    ckpts = files.checkpoints
    first_fold, first_ckpt = next(iter(ckpts.items()))
    loaded: dict[str, Any] = {}

    def checkpoint(path: str) -> Any:
        if path not in loaded:
            try:
                loaded[path] = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as e:
                raise BadInput(f"checkpoint {path} does not load: {type(e).__name__}: {e}") from None
        return loaded[path]

    first = checkpoint(first_ckpt)
    if isinstance(first, dict) and first.get("trainer_name") in PLAIN_TRAINERS:
        try:
            built = _plain_network(folder, first)
        except Exception as e:
            raise BadInput(f"cannot load nnU-Net model from {folder}: {type(e).__name__}: {e}") from None
    else:
        built = _predictor_network(folder, first_fold, first_ckpt)
    if built.label_manager.has_regions:
        raise BadInput(f"model {folder} is region-based (sigmoid outputs); only label-based models are supported")
    networks = []
    for path in ckpts.values():
        try:
            ck = checkpoint(path)
            net = copy.deepcopy(built.network)
            net.load_state_dict(ck["network_weights"])
        except BadInput:
            raise
        except Exception as e:
            raise BadInput(f"checkpoint {path} does not load into the plans' network: {type(e).__name__}: {e}") from None
        networks.append(net.eval())
    axes = built.mirror_axes
    return Model(
        folder=folder,
        networks=networks,
        plans_manager=built.plans_manager,
        configuration_manager=built.configuration_manager,
        dataset_json=built.dataset_json,
        folds=list(ckpts),
        mirror_axes=tuple(int(a) for a in axes) if axes is not None else None,
        num_input_channels=built.num_input_channels,
        num_classes=int(built.label_manager.num_segmentation_heads),
    )
