"""nnU-Net v2 trained-model folders: find folds and checkpoints, build networks, describe the model.

Network construction, plans and label handling are nnU-Net's own (``nnUNetPredictor``
initialisation), so any trainer/architecture nnU-Net can load, we can run.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .errors import BadArguments, BadInput

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


def _file_digest(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def find_checkpoints(folder: str, folds: Sequence[int | str] | None = None) -> dict[str, str]:
    """fold name -> checkpoint path, preferring checkpoint_final over checkpoint_best per fold."""
    if not os.path.isdir(folder):
        raise BadInput(f"model folder {folder} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise BadInput(f"model folder {folder} has no {name}: expected an nnU-Net v2 trained model folder "
                           "(plans.json, dataset.json, fold_N/checkpoint_final.pth)")
    available: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        if not entry.startswith("fold_"):
            continue
        for ck in CHECKPOINTS:
            p = os.path.join(folder, entry, ck)
            if os.path.isfile(p):
                available[entry[len("fold_"):]] = p
                break
    if not available:
        raise BadInput(f"model folder {folder} has no fold_N/checkpoint_final.pth (or checkpoint_best.pth)")
    if folds is None:
        return available
    chosen = {}
    for f in folds:
        key = str(f)
        if key not in available:
            raise BadArguments(f"--folds asks for fold {key}, but {folder} has folds {', '.join(available)}")
        chosen[key] = available[key]
    return chosen


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
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.configuration_manager.patch_size)  # type: ignore[return-value]

    def to(self, device: Any) -> Model:
        self.networks = [n.to(device).eval() for n in self.networks]
        return self


def load_model(folder: str, folds: Sequence[int | str] | None = None) -> Model:
    """Load the model folder (a local path or ``file://`` URL) on the CPU."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    folder = storage.local_path(folder)
    ckpts = find_checkpoints(folder, folds)
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
    digest = hashlib.sha256()
    for name in ("plans.json", "dataset.json"):
        digest.update(_file_digest(os.path.join(folder, name)).encode())
    for fold, path in ckpts.items():
        try:
            ck = torch.load(path, map_location="cpu", weights_only=False)
            net = copy.deepcopy(predictor.network)
            net.load_state_dict(ck["network_weights"])
        except Exception as e:
            raise BadInput(f"checkpoint {path} does not load into the plans' network: {type(e).__name__}: {e}") from None
        networks.append(net.eval())
        digest.update(f"{fold}:{_file_digest(path)}".encode())
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
        fingerprint=digest.hexdigest()[:16],
    )
