"""nnU-Net v2 trained-model folders as networks: build each fold's network from its checkpoint (torch).

Network construction, plans and label handling are nnU-Net's own (``nnUNetPredictor``
initialisation), so any trainer/architecture nnU-Net can load, we can run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.errors import BadInput
from vesuvius_inference.contract.frame import triple
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
        return triple(int(p) for p in self.configuration_manager.patch_size)

    def to(self, device: Any) -> Model:
        self.networks = [n.to(device).eval() for n in self.networks]
        return self


def load_model(files: ModelFiles) -> Model:
    """Build the networks of a resolved model folder on the CPU (the checkpoints ``files`` found)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from vesuvius_inference.store import storage

    folder = storage.local_path(files.folder)
    ckpts = files.checkpoints
    first_fold, first_ckpt = next(iter(ckpts.items()))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a CUDA note when built for the CPU
        predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                    allow_tqdm=False, verbose=False)
    try:
        predictor.initialize_from_trained_model_folder(
            folder, use_folds=(first_fold if first_fold == "all" else int(first_fold),),
            checkpoint_name=os.path.basename(first_ckpt))
    except Exception as e:
        raise BadInput(f"cannot load nnU-Net model from {folder}: {type(e).__name__}: {e}") from None
    if predictor.label_manager.has_regions:
        raise BadInput(f"model {folder} is region-based (sigmoid outputs); only label-based models are supported")
    networks = []
    for path in ckpts.values():
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            net = copy.deepcopy(predictor.network)
            net.load_state_dict(ck["network_weights"])
        except Exception as e:
            raise BadInput(f"checkpoint {path} does not load into the plans' network: {type(e).__name__}: {e}") from None
        networks.append(net.eval())
    n_in = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                        predictor.dataset_json)
    axes = predictor.allowed_mirroring_axes
    return Model(
        folder=folder,
        networks=networks,
        plans_manager=predictor.plans_manager,
        configuration_manager=predictor.configuration_manager,
        dataset_json=predictor.dataset_json,
        folds=list(ckpts),
        mirror_axes=tuple(int(a) for a in axes) if axes is not None else None,
        num_input_channels=int(n_in),
        num_classes=int(predictor.label_manager.num_segmentation_heads),
    )
