"""Fixtures for the NGFF checks: one scroll input stored as the public scans are, per session."""

from __future__ import annotations

import pytest

from .fixtures import ScrollInput, write_scroll_input


@pytest.fixture(scope="session")
def scroll(tmp_path_factory) -> ScrollInput:
    """64 x 128 x 128 uint8 synthetic scroll, levels 0..2, 7.91 um voxels, offset (40, 24, 16) voxels."""
    return write_scroll_input(tmp_path_factory.mktemp("input") / "scroll.zarr")
