"""The suite's root: the nnU-Net environment, the shared fixtures as plugins, the image build summary.

Shared fixtures live in tests/plugins/ (models and reference runs, moto's S3, the emulated cluster and
the real operator, helm) and reach every directory through ``pytest_plugins``: no test or conftest
imports another conftest, and nothing edits ``sys.path`` (pytest's default import mode puts tests/ on
it for this file, which is how ``helpers``, ``oracle``, ``seamcase`` and ``plugins`` import).
"""

from __future__ import annotations

import os

import pytest

for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet-unused")

from helpers import IMAGE_TIMES  # noqa: E402 - after the environment nnU-Net reads at import

pytest_plugins = ["plugins.models", "plugins.s3", "plugins.k8s", "plugins.helm"]

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
