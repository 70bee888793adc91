"""The numerical contract: our blended logits are nnU-Net's, for any number of parts."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from helpers import smooth_volume, write_zarr
from oracle import nnunet_logits, normalize_like_nnunet, probabilities_uint8
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
from vesuvius_inference.predict.stage import run_predict
from vesuvius_inference.stages.blend import run_blend
from vesuvius_inference.stages.finalize import run_finalize

SHAPE = (77, 130, 101)  # z smaller than the patch (80): padded as nnU-Net pads


def run_ours(tmp, model, inp, parts, tta, chunk=(32, 48, 48)):
    parts_dir = tmp / f"parts_{parts}_{tta}"
    for p in range(parts):
        run_predict(PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(parts_dir), part_id=p, num_parts=parts, device="cpu",
                                  do_tta=tta, chunk_size=chunk, quiet=True))
    blended = tmp / f"blended_{parts}_{tta}.zarr"
    run_blend(BlendConfig(parts_dir=str(parts_dir), output=str(blended), quiet=True))
    out = tmp / f"out_{parts}_{tta}.zarr"
    run_finalize(FinalizeConfig(input_path=str(blended), output_path=str(out), quiet=True))
    return zarr.open_array(str(blended), mode="r")[:], zarr.open_group(str(out), mode="r")["0"][:]


# Mirroring (8x the passes, in ours and in both of nnU-Net's references) on a smaller volume, which still
# holds what the flips can get wrong: z shorter than the patch (the padded patch is flipped, then cropped),
# 2 patches along y and along x overlapping by half (Gaussian-weighted seams between mirrored patches;
# y != x, so a flip of the wrong axis shows), 2 folds averaged. The flips and their mean are per patch;
# the grid, padding and part arithmetic at the full size are the no-TTA case's. 20 patches -> 4.
MIRROR_SHAPE = (77, 64, 56)


def _case(tmp_path_factory, model, shape):
    tmp = tmp_path_factory.mktemp("oracle")
    vol = smooth_volume(shape, seed=3)
    inp = write_zarr(tmp / "in.zarr", vol, chunks=(40, 64, 64))
    normalized = normalize_like_nnunet(model, vol[None])
    return tmp, inp, normalized


@pytest.fixture(scope="module")
def case(tmp_path_factory, model2):
    return _case(tmp_path_factory, model2, SHAPE)


@pytest.fixture(scope="module")
def mirror_case(tmp_path_factory, model2):
    return _case(tmp_path_factory, model2, MIRROR_SHAPE)


@pytest.mark.parametrize("tta", [False, True], ids=["no-tta", "mirroring"])
def test_matches_nnunet_for_1_3_7_parts(request, model2, tta):
    tmp, inp, normalized = request.getfixturevalue("mirror_case" if tta else "case")
    ref32 = nnunet_logits(model2, normalized, mirroring=tta, fp32_accumulation=True)
    ref16 = nnunet_logits(model2, normalized, mirroring=tta, fp32_accumulation=False)
    # part-count invariance does not depend on TTA (tested without it): with mirroring (8x the passes)
    # one part checks the flips against nnU-Net's
    counts = (1,) if tta else (1, 3, 7)
    results = {n: run_ours(tmp, model2, inp, n, tta) for n in counts}
    blended1, probs1 = results[1]
    assert blended1.dtype == np.float16 and blended1.shape == ref32.shape
    assert not np.isnan(blended1).any()
    # the same nnU-Net computation with float32 accumulators: everywhere, to float16 output precision
    assert np.abs(blended1.astype(np.float32) - ref32).max() <= 1e-2
    # nnU-Net as shipped accumulates in float16: away from the volume faces (where its weights
    # underflow) we are as close to it as its own float16 error, measured against its float32 twin
    m = 8
    inner = (slice(None), slice(m, -m), slice(m, -m), slice(m, -m))
    own_error = np.abs(ref16[inner] - ref32[inner]).max()
    ours_vs_shipped = np.abs(blended1.astype(np.float32)[inner] - ref16[inner]).max()
    assert ours_vs_shipped <= max(1e-2, 2 * own_error), (ours_vs_shipped, own_error)
    # probabilities within 1/255 of nnU-Net's softmax
    expected = probabilities_uint8(ref32)[1:2]
    assert np.abs(probs1.astype(int) - expected.astype(int)).max() <= 1
    for n in counts[1:]:
        blended_n, probs_n = results[n]
        assert np.array_equal(blended_n, blended1, equal_nan=True), f"{n} parts changed the blended logits"
        assert np.array_equal(probs_n, probs1), f"{n} parts changed the probabilities"


def test_overlap_is_overlap_fraction(case, model2, tmp_path):
    """--overlap 0.25 means a tile step of 0.75 (the seed used the value as the step)."""
    _, inp, normalized = case
    ref = nnunet_logits(model2, normalized, mirroring=False, folds=(0,), step=0.75)
    parts_dir = tmp_path / "parts"
    run_predict(PredictConfig(model_path=str(model2), input_dir=inp, output_dir=str(parts_dir), device="cpu", do_tta=False, overlap=0.25,
                              folds=[0], quiet=True))
    run_blend(BlendConfig(parts_dir=str(parts_dir), output=str(tmp_path / "b.zarr"), quiet=True))
    ours = zarr.open_array(str(tmp_path / "b.zarr"), mode="r")[:]
    assert np.abs(ours.astype(np.float32) - ref).max() <= 1e-2
