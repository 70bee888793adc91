"""The shipped demo model is a real nnU-Net v2 model folder that segments unseen synthetic scrolls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import vesuvius_inference.demo as demo_pkg
from vesuvius_inference.demo.synthetic import dice, make_scroll
from vesuvius_inference.demo.train import EVAL_SEED, TRAIN_SEED_BASE, intensity_properties, train
from vesuvius_inference.model.nnunet_folder import build_network

MODEL_DIR = Path(demo_pkg.__file__).parent / "model"
UNSEEN_SEED = 4321


def _predictor(folder: Path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"),
                        perform_everything_on_device=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    return p


def _normalize(volume: np.ndarray, plans: dict) -> np.ndarray:
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    props = plans["foreground_intensity_properties_per_channel"]["0"]
    return CTNormalization(False, props, np.float32).run(volume.astype(np.float32))


@pytest.fixture(scope="module")
def plans() -> dict:
    return json.loads((MODEL_DIR / "plans.json").read_text())


def test_shipped_folder_is_complete_and_small(plans):
    ckpt = MODEL_DIR / "fold_0" / "checkpoint_final.pth"
    assert ckpt.is_file() and (MODEL_DIR / "dataset.json").is_file()
    assert ckpt.stat().st_size < 2_500_000  # shared conv weights stay shared in the file
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["normalization_schemes"] == ["CTNormalization"]
    assert cfg["patch_size"] == [64, 64, 64]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    assert 0 < props["percentile_00_5"] < props["median"] < props["percentile_99_5"] <= 255
    assert json.loads((MODEL_DIR / "dataset.json").read_text())["labels"] == {"background": 0, "surface": 1}


def test_weights_load_strictly_with_and_without_deep_supervision(plans):
    dataset_json = json.loads((MODEL_DIR / "dataset.json").read_text())
    ckpt = torch.load(MODEL_DIR / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer" and ckpt["init_args"]["configuration"] == "3d_fullres"
    for ds in (False, True):
        net = build_network(plans, dataset_json, deep_supervision=ds)
        result = net.load_state_dict(ckpt["network_weights"], strict=True)
        assert not result.missing_keys and not result.unexpected_keys


def test_unseen_scroll_reaches_dice_with_nnunet_predictor(plans):
    """nnU-Net's own predictor (no mirroring, step 0.5) on a seed never used in training."""
    assert UNSEEN_SEED < TRAIN_SEED_BASE and UNSEEN_SEED != EVAL_SEED
    volume, labels = make_scroll((64, 112, 112), seed=UNSEEN_SEED)
    predictor = _predictor(MODEL_DIR)
    with torch.no_grad():
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(_normalize(volume, plans)[None]))
    assert tuple(logits.shape) == (2, *volume.shape)
    pred = logits.float().argmax(0).numpy()
    assert dice(pred, labels) >= 0.9
    # The model segments sheets, not "everything inside the scroll": air between wraps stays background.
    assert pred[labels == 0].mean() < 0.05


def test_intensity_properties_match_nnunet_fingerprint():
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )

    volume, labels = make_scroll((24, 48, 48), seed=11)
    ours = intensity_properties([volume], [labels])
    _, theirs = DatasetFingerprintExtractor.collect_foreground_intensities(
        labels[None].astype(np.int16), volume[None].astype(np.float32))
    for key in ("mean", "median", "min", "max", "percentile_00_5", "percentile_99_5"):
        assert ours[key] == pytest.approx(float(theirs[0][key]), rel=1e-6), key
    assert ours["std"] == pytest.approx(float(volume[labels > 0].std()))


def test_train_writes_a_folder_nnunet_loads(tmp_path):
    """A few seconds of training on a tiny scroll: the output loads with nnU-Net's predictor."""
    folder = train(tmp_path / "m", seconds=2.0, patch=(32, 32, 32), scrolls=[((32, 64, 64), 1)], refresh_every=0)
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    volume, labels = make_scroll((32, 64, 64), seed=1)
    assert props == pytest.approx(intensity_properties([volume], [labels]))
    predictor = _predictor(folder)
    assert predictor.allowed_mirroring_axes == (0, 1, 2)
    with torch.no_grad():
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(_normalize(volume, plans)[None]))
    assert tuple(logits.shape) == (2, 32, 64, 64) and torch.isfinite(logits).all()
