"""The InferenceJob samples users copy are configurations ``plan`` recommends at scroll scale: planned at
PHerc1218's geometry (23,247 x 7,593 x 7,593 uint8, 128^3 chunks: ARCHITECTURE.md), each keeps its parts'
intermediates at most half the float16 logits, with every chunk stored (the upper bound) and with a
scroll-shaped listing (a cylinder of stored chunks along z)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from vesuvius_inference.contract.config import PlanConfig
from vesuvius_inference.contract.settings import crd_values
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.model.files import ModelFiles
from vesuvius_inference.model.nnunet_folder import make_dataset_json, make_plans
from vesuvius_inference.stages.plan import INTERMEDIATE_LIMIT, InputMeta, plan_of

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml")) + sorted(
    (ROOT / "charts").glob("*/samples/*.yaml"))
PHERC1218, CHUNKS = (23247, 7593, 7593), (128, 128, 128)


def scroll_model(tmp_path: Path, folds: int) -> ModelFiles:
    """A model folder as plan reads it: the default 3d_fullres plans at patch 128^3 (features 32..320), two
    classes, ``folds`` folds. plan counts the checkpoints and never opens one, so each is an empty file
    (a 31 M-parameter checkpoint per fold would only slow the test down)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "plans.json").write_text(json.dumps(make_plans((128, 128, 128), (32, 64, 128, 256, 320, 320))))
    (folder / "dataset.json").write_text(json.dumps(make_dataset_json(2, 1)))
    for f in range(folds):
        (folder / f"fold_{f}").mkdir()
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"")
    return ModelFiles(str(folder))


def cylinder() -> np.ndarray:
    """Stored chunks of a scroll scan: a cylinder along z filling the y-x square (air outside is absent)."""
    counts = [-(-s // c) for s, c in zip(PHERC1218, CHUNKS)]
    yy, xx = np.meshgrid(*(np.arange(n) + 0.5 for n in counts[1:]), indexing="ij")
    r = counts[1] / 2
    disk = (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    return np.broadcast_to(disk, counts).copy()


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("stored", ["every chunk", "cylinder"])
def test_each_sample_keeps_intermediates_under_half_the_logits_at_scroll_scale(sample, stored, tmp_path):
    spec = specmod.parse(yaml.safe_load(sample.read_text())["spec"])
    values = crd_values(PlanConfig, "predict", spec.raw)
    cfg = PlanConfig(**{**values, "model_path": str(tmp_path / "model")}, input_dir=spec.input_uri)
    model = scroll_model(tmp_path, len(cfg.folds or (0,)))
    occupancy = None if stored == "every chunk" else cylinder()
    p = plan_of(cfg, InputMeta(spec.input_uri, PHERC1218, CHUNKS, occupancy=occupancy), model)
    assert p["parts"]["count"] == spec.parts
    ratio = p["seams"]["ratio_to_logits"]
    assert ratio <= INTERMEDIATE_LIMIT, (sample.name, p["warnings"])
    assert not p["warnings"]
