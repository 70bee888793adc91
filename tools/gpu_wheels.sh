#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's image lacks (it has torch, numpy, scipy, scikit-image,
# pandas, fsspec, tqdm, pytest, ... but no zarr or nnU-Net; nothing can be installed there from a registry).
# They go to .whl/ (ignored by git); tools/gpu_check.sh installs them there. Pass the device call
# carry=[".whl"]. Unverified on a device (none was lent when this was written): if an import fails
# there, add the missing name below. Python 3.12 manylinux wheels, as the device's README says.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PKGS=(zarr==3.1.6 numcodecs==0.16.6 donfig google-crc32c nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
      batchgenerators==0.25.5 batchgeneratorsv2 acvl-utils==0.2.6 connected-components-3d blosc2 ndindex msgpack
      yacs graphviz future unittest2 argparse nibabel SimpleITK imagecodecs)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${PKGS[@]}"
du -sh .whl
