"""Shared fixtures: nnU-Net env, small real model folders, input volumes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet-unused")

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "bench"))

from helpers import IMAGE_TIMES  # noqa: E402 - after the path it needs

_image_times: dict[str, str] = {}


def pytest_runtest_logreport(report):
    """Runs where the terminal is (the xdist controller, or the only process): collects the build times."""
    for name, value in report.user_properties:
        if name == IMAGE_TIMES:  # tests/images' build times, whichever process built
            _image_times.update(value)


def pytest_terminal_summary(terminalreporter):
    if _image_times:
        terminalreporter.write_line("container images: " + "; ".join(f"{k} {v}" for k, v in _image_times.items()))


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """``cli.main`` called in-process points the root logger at the test's captured stderr (logging.basicConfig
    force=True); once that stream is closed, a later test's log record (aiohttp's access log of an emulated
    API server) would print 'Logging error'. Each test gets the root logger back as it found it."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """Build (and cache) nnU-Net model folders with random weights."""
    from vesuvius_inference.nnunet_folder import make_dataset_json, make_plans, write_model_folder

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
