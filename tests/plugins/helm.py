"""Fixtures of the chart and image tests: a helm binary (downloaded once per machine) and rendering.

A pytest plugin (tests/conftest.py's ``pytest_plugins``).
"""

from __future__ import annotations

import pytest
from helm.helmtool import Helm, HelmUnavailable, helm_binary


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Helm:
    try:
        binary = helm_binary()
    except HelmUnavailable as e:
        pytest.fail(f"helm is needed for the chart tests and could not be obtained: {e}", pytrace=False)
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))
