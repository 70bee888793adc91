"""The device path (issue 11) on torch's CPU kernels: normalisation ported to torch gives the bytes of
nnU-Net's own classes (the host path the engine used before), in the strided, zero-padded batch the
device step fills. The whole predict through it is held to nnU-Net's predictor by test_oracle.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
    CTNormalization,
    NoNormalization,
    RGBTo01Normalization,
)
from vesuvius_inference.model.normalization import Normalizer

PROPS = {"mean": 131.7, "std": 27.3, "percentile_00_5": 71.5, "percentile_99_5": 199.25, "min": 3.0, "max": 250.0}


@pytest.mark.parametrize("scheme,cls", [("CTNormalization", CTNormalization), ("NoNormalization", NoNormalization),
                                        ("RGBTo01Normalization", RGBTo01Normalization)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_torch_normalisation_is_nnunets_to_the_bit(scheme, cls, dtype):
    rng = np.random.default_rng(4)
    hi = 255 if scheme == "RGBTo01Normalization" or dtype == np.uint8 else 4000
    raw = (rng.random((2, 9, 17, 23)) * hi).astype(dtype)
    expected = np.stack([cls(use_mask_for_norm=False, intensityproperties=PROPS, target_dtype=np.float32)
                         .run(raw[c].astype(np.float32)) for c in range(2)])
    norm = Normalizer([scheme] * 2, [False] * 2, [PROPS] * 2)
    x = torch.zeros((2, 12, 20, 30))
    view = x[:, 1:10, 2:19, 3:26]  # a strided region of a padded batch, as the device step fills it
    view.copy_(torch.from_numpy(raw))
    norm.apply_torch(view)
    assert np.array_equal(view.numpy(), expected)
    assert not x[:, 0].any() and not x[:, 10:].any()  # the padding stays zero (nnU-Net pads after normalising)


@pytest.mark.parametrize("use_mask", [False, True])
def test_whole_volume_zscore_and_rescale_match_the_host_path(use_mask):
    rng = np.random.default_rng(5)
    raw = (rng.random((1, 10, 10, 10)) * 200).astype(np.uint8)
    raw[0, :3] = 0
    stats = [{"mean": 91.3, "std": 40.1, "min": 0.0, "max": 199.0}]
    st = stats[0]
    x = raw.astype(np.float32)
    # the host path as it was: nnU-Net's ZScore/RescaleTo01 arithmetic in numpy float32 with the whole
    # volume's statistics (ZScoreNormalization.run with use_mask normalises only the nonzero voxels)
    zscore = x.copy()
    m = zscore != 0 if use_mask else np.ones_like(zscore, dtype=bool)
    zscore[m] = (zscore[m] - st["mean"]) / max(st["std"], 1e-8)
    rescale = x.copy()
    rescale -= st["min"]
    rescale /= max(st["max"] - st["min"], 1e-8)
    for scheme, host in (("ZScoreNormalization", zscore), ("RescaleTo01Normalization", rescale)):
        norm = Normalizer([scheme], [use_mask], [PROPS], stats)
        dev = norm.apply_torch(torch.from_numpy(raw).float())
        assert np.array_equal(dev.numpy(), host), scheme


def _host_path_sums(model, grid, vol, normalizer, batch_size, wq, bits, indices):
    """The host path predict used before the device path, as it was: nnU-Net's CTNormalization of float32
    voxels in numpy into a zero-padded float32 batch, the network's logits quantised as round(clamp(x) * 2^bits)
    into int64, and lq * w added into dense sums on the host."""
    from vesuvius_inference.geometry.fixedpoint import FP16_MAX
    from vesuvius_inference.predict.runner import Runner

    runner = Runner(model, torch.device("cpu"), True, batch_size)
    sums = np.zeros((3,) + vol.shape[1:], dtype=np.int64)
    for k0 in range(0, len(indices), batch_size):
        chunk = indices[k0:k0 + batch_size]
        x = np.zeros((batch_size, 1) + tuple(grid.patch), dtype=np.float32)
        for k, i in enumerate(chunk):
            lo, hi = grid.region(i)
            start = grid.start(i)
            raw = vol[0][tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
            ct = CTNormalization(use_mask_for_norm=False, intensityproperties=normalizer.intensity_properties[0],
                                 target_dtype=np.float32)
            x[(k, 0) + tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))] = ct.run(raw)
        logits = runner(torch.from_numpy(x))
        for k, i in enumerate(chunk):
            lo, hi = grid.region(i)
            start = grid.start(i)
            src = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
            w = wq[src].numpy()
            lq = torch.round(logits[k][(slice(None),) + src].float().clamp(-FP16_MAX, FP16_MAX) * 2.0 ** bits).long()
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            sums[(slice(0, 2),) + box] += lq.numpy() * w
            sums[(2,) + box] += w
    return sums


def test_device_step_gives_the_host_paths_sums(model_factory):
    """One part's patches (edge patches padded, a short last batch) through DeviceStep on torch's CPU
    kernels: the accumulated int64 sums equal the previous host path's, bit for bit."""
    from vesuvius_inference.geometry.fixedpoint import logit_bits_for
    from vesuvius_inference.geometry.grid import ChunkGrid, PatchGrid
    from vesuvius_inference.model.files import ModelFiles
    from vesuvius_inference.model.network import load_model
    from vesuvius_inference.predict.accumulate import ChunkAccumulator
    from vesuvius_inference.predict.devicestep import DeviceStep
    from vesuvius_inference.predict.fixedpoint_torch import weight_q
    from vesuvius_inference.predict.runner import Runner
    from vesuvius_inference.store.iopool import WritePool
    from vesuvius_inference.store.reader import Patch

    folder = model_factory(patch=(16, 24, 24), folds=(0,), normalization="CTNormalization")
    model = load_model(ModelFiles(str(folder)))
    normalizer = Normalizer.from_plans(model.configuration_manager, model.plans_manager, 1)
    rng = np.random.default_rng(11)
    vol = (rng.random((1, 29, 37, 30)) * 255).astype(np.uint8)  # not a multiple of the patch: edge patches
    grid = PatchGrid(vol.shape[1:], (16, 24, 24), 0.5)
    indices = list(range(grid.n_patches))
    batch_size, bits = 4, logit_bits_for(grid.max_coverage())
    assert len(indices) % batch_size, "the last batch must be short"
    wq = weight_q(grid.patch)
    expected = _host_path_sums(model, grid, vol, normalizer, batch_size, wq, bits, indices)

    cgrid = ChunkGrid(vol.shape[1:], (8, 8, 8))
    remaining: dict = {}
    for i in indices:
        for idx in cgrid.touching(*grid.region(i)):
            remaining[idx] = remaining.get(idx, 0) + 1
    got = np.zeros_like(expected)
    completed = []

    def complete(idx, buf):
        completed.append(idx)
        lo, hi = cgrid.box(idx)
        got[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))] = buf.numpy()

    accum = ChunkAccumulator(cgrid, 3, remaining, cache_bytes=1 << 30, device=torch.device("cpu"), spills=(None, None),
                             on_complete=complete, io=WritePool(1))
    step = DeviceStep(Runner(model, torch.device("cpu"), True, batch_size), normalizer, grid, channels=1,
                      batch_size=batch_size, wq=wq, bits=bits, accum=accum)
    for k0 in range(0, len(indices), batch_size):
        batch = []
        for i in indices[k0:k0 + batch_size]:
            lo, hi = grid.region(i)
            batch.append(Patch(i, lo, hi, vol[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))].copy()))
        step(batch)
        for p in batch:
            accum.patch_done(p.lo, p.hi)
    step.check()
    accum.finish()
    assert len(completed) == len(remaining) == len(set(completed))
    assert expected[2].min() > 0  # every voxel was predicted
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 64, 64, 64), (1, 3, 300, 2)])
def test_division_is_the_contracts_arithmetic(shape, monkeypatch):
    """Both divisions give the contract's bytes: (sums / weights) * 2**-bits in float64, rounded to float32,
    then to float16, NaN (positive, quiet) where no weight arrived. Sums span the whole int64 range the
    accumulator can reach (beyond 2**53, where int64 -> float64 rounds), weights include zeros, and the
    CPU slabs are made small enough to cut every test shape, so a slab bound that dropped or repeated
    planes, a division in float32, or numpy's one direct float64 -> float16 rounding (it differs from
    the two-step one for about 1 value in 17,000; the 64^3 case has 45 of them) fails."""
    import vesuvius_inference.geometry.fixedpoint as fp
    import vesuvius_inference.predict.fixedpoint_torch as fpt

    rng = np.random.default_rng(sum(shape))
    bits = fp.logit_bits_for(8)
    c = shape[0]
    weights = rng.integers(0, 8 * 10 * 2 ** fp.WEIGHT_BITS, size=shape[1:], dtype=np.int64)
    weights.flat[rng.integers(0, weights.size, size=max(1, weights.size // 10))] = 0
    logits = rng.normal(scale=rng.choice([1e-4, 1.0, 50.0, 6e4], size=shape), size=shape).clip(-fp.FP16_MAX,
                                                                                               fp.FP16_MAX)
    sums = np.round(logits * 2.0 ** bits).astype(np.int64) * weights  # the sums a single contribution gives
    weights[0, 0, 0] = 8 * 10 * 2 ** fp.WEIGHT_BITS - 1  # 8 contributions of the largest weight
    sums[:, 0, 0, 0] = weights[0, 0, 0] * (int(fp.FP16_MAX * 2 ** bits) - 7)  # ~2**61: beyond float64's integers
    with np.errstate(invalid="ignore"):  # 0 / 0 where no weight: replaced by NaN below
        expected = ((sums.astype(np.float64) / weights.astype(np.float64)) * 2.0 ** -bits)
    expected = expected.astype(np.float32).astype(np.float16)
    expected[:, weights == 0] = np.nan

    monkeypatch.setattr(fp, "DIVIDE_SLAB_VOXELS", 2 * int(np.prod(shape[2:])) - 1)  # slabs of 1 plane
    got_torch = fpt.divide_torch(torch.from_numpy(sums), torch.from_numpy(weights), bits).numpy()
    monkeypatch.setattr(fp, "DIVIDE_SLAB_VOXELS", 1 << 30)  # one slab
    got_whole = fpt.divide_torch(torch.from_numpy(sums), torch.from_numpy(weights), bits).numpy()
    got_np = fp.divide_np(sums, weights, bits)
    nan = np.array(np.nan, dtype=np.float16).view(np.uint16)
    for got in (got_torch, got_whole, got_np):
        assert got.dtype == np.float16 and got.shape == sums.shape
        assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
        assert (got.view(np.uint16)[:, weights == 0] == nan).all()
    assert c == 1 or not np.array_equal(got_np[0], got_np[-1])  # channels kept apart
