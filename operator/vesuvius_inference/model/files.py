"""An nnU-Net v2 trained-model folder read without torch: plans, labels, folds, one fingerprint.

Everything a run decides before the network is built (the patch size, the classes a mode needs, the
normalization schemes, whether a part is already done) comes from these files, so plan, the
pipeline's checks and a finished part's early exit never import torch. The folder is read once per
run and every checkpoint hashed once (model.py builds the networks from the same paths).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


def file_digest(path: str, block: int = 1 << 20) -> str:
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


@dataclass(frozen=True)
class ModelFiles:
    """A resolved (local) model folder and the folds a run uses."""

    folder: str
    folds: Sequence[int | str] | None = None

    def _json(self, name: str) -> dict[str, Any]:
        try:
            with open(os.path.join(storage.local_path(self.folder), name)) as f:
                return json.load(f)
        except FileNotFoundError:
            raise BadInput(f"model {self.folder} is not an nnU-Net v2 model folder: {name} is missing") from None
        except json.JSONDecodeError as e:
            raise BadInput(f"model {self.folder}: {name} is not valid JSON ({e.msg})") from None

    @cached_property
    def plans(self) -> dict[str, Any]:
        return self._json("plans.json")

    @cached_property
    def dataset(self) -> dict[str, Any]:
        return self._json("dataset.json")

    @cached_property
    def checkpoints(self) -> dict[str, str]:
        return find_checkpoints(storage.local_path(self.folder), self.folds)

    @property
    def configuration(self) -> dict[str, Any]:
        confs = self.plans.get("configurations", {})
        return confs.get("3d_fullres") or next(iter(confs.values()), {})

    @property
    def patch_size(self) -> tuple[int, int, int]:
        ps = self.configuration.get("patch_size")
        if not ps or len(ps) != 3:
            raise BadInput(f"model {self.folder}: plans.json has no 3D patch_size; only 3D models are supported")
        return triple(int(p) for p in ps)

    @property
    def normalization_schemes(self) -> list[str]:
        return list(self.configuration.get("normalization_schemes", []))

    @property
    def labels(self) -> dict[str, Any]:
        """dataset.json's class names -> ids."""
        return dict(self.dataset.get("labels", {}))

    @property
    def num_classes(self) -> int:
        """Output classes of a label-based nnU-Net model."""
        return max(1, len(self.labels))

    @property
    def num_input_channels(self) -> int:
        return len(self.dataset.get("channel_names", {"0": ""}))

    @cached_property
    def fingerprint(self) -> str:
        """Identity of the files that fix the model's outputs (each checkpoint hashed once per run)."""
        folder = storage.local_path(self.folder)
        digest = hashlib.sha256()
        for name in ("plans.json", "dataset.json"):
            digest.update(file_digest(os.path.join(folder, name)).encode())
        for fold, path in self.checkpoints.items():
            digest.update(f"{fold}:{file_digest(path)}".encode())
        return digest.hexdigest()[:16]


def open_model_files(place: Place, *, cache_dir: str | None = None,
                     folds: Sequence[int | str] | None = None) -> ModelFiles:
    """Resolve ``place`` (local, s3://, hf://: downloaded once into the cache) and read it without torch.
    A ``fold_N`` folder given as the model is its parent folder with that fold (one line says so)."""
    from vesuvius_inference.model.source import fold_parent, resolve_model

    url, folds = fold_parent(place.url, folds)
    return ModelFiles(resolve_model(place.at(url), cache_dir=cache_dir), folds)
