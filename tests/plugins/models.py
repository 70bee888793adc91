"""Models and inputs shared by the session: small real nnU-Net model folders, volumes, reference runs.

A pytest plugin (tests/conftest.py lists it in ``pytest_plugins``): every test directory gets these
fixtures by name, under pytest-xdist too, without importing a conftest module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Build (and cache) nnU-Net model folders with random weights."""
    from vesuvius_inference.model.nnunet_folder import make_dataset_json, make_plans, write_model_folder

    made: dict[tuple, Path] = {}

    def make(patch=(80, 48, 48), folds=(0, 1), num_classes=2, normalization="ZScoreNormalization",
             features=(2, 4, 8), mirror_axes=(0, 1, 2), checkpoint="checkpoint_final.pth", channels=1) -> Path:
        key = (patch, folds, num_classes, normalization, features, mirror_axes, checkpoint, channels)
        if key not in made:
            folder = tmp_path_factory.mktemp("model")
            write_model_folder(folder, make_plans(patch, features, normalization, num_input_channels=channels),
                               make_dataset_json(num_classes, channels), folds=folds, mirror_axes=mirror_axes,
                               seed=sum(map(ord, repr(key))) % 1000, checkpoint_name=checkpoint)
            made[key] = folder
        return made[key]

    return make


@pytest.fixture(scope="session")
def model2(model_factory):
    """The default test model: 2 folds, patch 80x48x48, 2 classes, ZScore normalization."""
    return model_factory()


@pytest.fixture(scope="session")
def volume_factory(tmp_path_factory):
    """Input volumes (helpers.smooth_volume written as Zarr), one per (shape, seed, chunks), shared by the session.

    Read them, never write into them: a test that changes its input writes its own.
    """
    from helpers import smooth_volume, write_zarr

    made: dict[tuple, str] = {}

    def make(shape: tuple[int, int, int], seed: int, chunks: tuple[int, int, int]) -> str:
        key = (tuple(shape), seed, tuple(chunks))
        if key not in made:
            made[key] = write_zarr(tmp_path_factory.mktemp("volume") / "in.zarr", smooth_volume(shape, seed=seed),
                                   chunks=chunks)
        return made[key]

    return make


@dataclass(frozen=True)
class ReferenceRun:
    """What one predict part, blend and finalize (default settings) make of a volume: the arrays a test
    compares its own route against. Arrays only: the run's folders are nobody's to change."""

    blended: np.ndarray  # blend's float16 logits
    output: np.ndarray  # finalize's level 0, uint8 probabilities


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The 1-part reference of (model, input, predict settings), run once per session (per xdist worker).

    Many tests compare a route (several parts, S3, HTTP, a tiny cache, a remote model) against the same
    plain run; the blended logits and the output are byte-identical for any number of parts
    (predict/test_oracle.py, stages/test_stages.py), so one plain run serves them all.
    """
    import zarr
    from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
    from vesuvius_inference.predict.stage import run_predict
    from vesuvius_inference.stages.blend import run_blend
    from vesuvius_inference.stages.finalize import run_finalize

    made: dict[tuple, ReferenceRun] = {}

    def run(model, inp, **settings) -> ReferenceRun:
        key = (str(model), str(inp), tuple(sorted(settings.items())))
        if key not in made:
            tmp = tmp_path_factory.mktemp("reference")
            run_predict(PredictConfig(model_path=str(model), input_dir=str(inp), output_dir=str(tmp / "parts"),
                                      device="cpu", do_tta=False, quiet=True, **settings))
            run_blend(BlendConfig(parts_dir=str(tmp / "parts"), output=str(tmp / "b.zarr"), quiet=True))
            run_finalize(FinalizeConfig(input_path=str(tmp / "b.zarr"), output_path=str(tmp / "o.zarr"), quiet=True))
            made[key] = ReferenceRun(zarr.open_array(str(tmp / "b.zarr"), mode="r")[:],
                                     zarr.open_group(str(tmp / "o.zarr"), mode="r")["0"][:])
        return made[key]

    return run
