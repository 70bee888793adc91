"""Test data helpers shared by tests and benchmarks."""

from __future__ import annotations

import numpy as np

IMAGE_TIMES = "image times"  # a test report's user property: tests/images' build times (tests/conftest.py sums up)


def smooth_volume(shape, seed=0, dtype=np.uint8):
    """Structured random data (blurred noise), so logits vary smoothly like on real scans."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.normal(size=shape), 2.0)
    x = (x - x.min()) / (x.max() - x.min())
    hi = 255 if dtype == np.uint8 else 4000
    return (x * hi).astype(dtype)


def write_zarr(path, data, chunks=(32, 32, 32), zarr_format=3, **kw):
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format,
                            fill_value=0, overwrite=True, **kw)
    arr[...] = data
    return str(path)
