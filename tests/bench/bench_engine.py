"""Engine benchmark: ours vs nnU-Net's own predictor, measured in the same run.

Run: ``python tests/bench/bench_engine.py [--quick]``. Prints ratios, never asserts on time.
- throughput: voxels/s of our predict (1 part, CPU) / nnU-Net's predict_logits_from_preprocessed_data
  on the same model, volume, step and TTA;
- skip-empty: the same with half of the volume absent (chunks never written) and skip-empty on;
- intermediate bytes (part stores) / blended-logits bytes, for 1, 2 and 4 parts;
- peak RSS of each stage (separate processes, os.wait4) for a volume and one 8x larger, same --cache_gb.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("nnUNet_raw", "/tmp/nnunet")
os.environ.setdefault("nnUNet_preprocessed", "/tmp/nnunet")
os.environ.setdefault("nnUNet_results", "/tmp/nnunet")

from helpers import smooth_volume, write_zarr  # noqa: E402


def model_folder(root: Path, patch, features, normalization: str = "ZScoreNormalization") -> Path:
    """Written by a child process so that this one stays small (see peak_rss_mb)."""
    code = ("import sys; from vesuvius_inference.model.nnunet_folder import *; "
            f"write_model_folder(sys.argv[1], make_plans({tuple(patch)}, {tuple(features)}, {normalization!r}), "
            "make_dataset_json(), folds=(0,))")
    subprocess.run([sys.executable, "-c", code, str(root / "model")], check=True)
    return root / "model"


def nnunet_time(model: Path, vol: np.ndarray, tta: bool) -> float:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from oracle import normalize_like_nnunet

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=torch.device("cpu"),
                           perform_everything_on_device=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    t = time.perf_counter()
    data = torch.from_numpy(normalize_like_nnunet(model, vol[None]))
    pred.predict_logits_from_preprocessed_data(data)
    return time.perf_counter() - t


def ours_time(model: Path, inp: str, out: Path, tta: bool, parts: int = 1, **kw) -> float:
    from vesuvius_inference.contract.config import PredictConfig
    from vesuvius_inference.predict.stage import run_predict

    t = time.perf_counter()
    for p in range(parts):
        run_predict(PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(out), part_id=p, num_parts=parts, device="cpu", do_tta=tta,
                                  quiet=True, **kw))
    return time.perf_counter() - t


def peak_rss_mb(args: list[str]) -> float:
    """The stage's own peak RSS: VmHWM of its address space, read by the child itself at exit.

    (ru_maxrss from wait4 would include the parent's high-water mark inherited through fork.)
    """
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as f:
        code = ("import atexit, sys\n"
                "def hwm():\n"
                "    kb = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]\n"
                "    open(sys.argv[1], 'w').write(kb)\n"
                "atexit.register(hwm)\n"
                "from vesuvius_inference.cli import main\n"
                "sys.exit(main(sys.argv[2:]))\n")
        subprocess.run([sys.executable, "-c", code, f.name, *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return int(open(f.name).read()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller volumes")
    ap.add_argument("--tta", action="store_true", help="also compare with mirroring TTA")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vbench-"))
    patch, features = (64, 64, 64), (8, 16, 32, 64)  # NOTES.md's reference model: 351k parameters
    model = model_folder(root, patch, features)
    # peak RSS: a volume and one 8x larger, mostly absent chunks with non-empty bands
    rss = {}
    for scale, sh in (("1x", (128, 256, 256)), ("8x", (256, 512, 512))):
        import zarr

        path = root / f"rss_{scale}.zarr"
        arr = zarr.create_array(str(path), shape=sh, chunks=(32, 64, 64), dtype="uint8", zarr_format=3, fill_value=0)
        band = smooth_volume((sh[0], 64, 64), seed=1)
        arr[:, sh[1] // 2 - 32: sh[1] // 2 + 32, sh[2] // 2 - 32: sh[2] // 2 + 32] = band
        work = root / f"w_{scale}"
        common = ["--cache_gb", "0.05", "--quiet"]
        rss[scale] = {
            "predict": peak_rss_mb(["predict", "--model_path", str(model), "--input_dir", str(path), "--output_dir",
                                    str(work / "parts"), "--device", "cpu", "--disable_tta", *common]),
            "blend": peak_rss_mb(["blend", str(work / "parts"), str(work / "b.zarr"), *common]),
            "finalize": peak_rss_mb(["finalize", str(work / "b.zarr"), str(work / "o.zarr"), *common]),
        }
    for stage in ("predict", "blend", "finalize"):
        a1, a8 = rss["1x"][stage], rss["8x"][stage]
        print(f"peak RSS {stage}: {a1:.0f} MB at 1x, {a8:.0f} MB at 8x volume: growth {100 * (a8 / a1 - 1):+.1f}%")
    print(json.dumps({"rss_mb": rss}))
    shape = (96, 128, 128) if a.quick else (128, 160, 160)
    vol = smooth_volume(shape, seed=0)
    inp = write_zarr(root / "in.zarr", vol, chunks=(32, 64, 64))
    nvox = int(np.prod(shape))
    print(f"model PlainConvUNet {features}, patch {patch}, volume {shape}, step 0.5, CPU threads {os.cpu_count()}")
    for tta in ([False, True] if a.tta else [False]):
        t_nn = nnunet_time(model, vol, tta)
        t_ours = ours_time(model, inp, root / f"p_tta{tta}", tta, batch_size=2)
        print(f"throughput tta={tta}: nnU-Net {nvox / t_nn / 1e6:.3f} Mvox/s, ours {nvox / t_ours / 1e6:.3f} Mvox/s, "
              f"ours/nnU-Net = {t_nn / t_ours:.2f}")
    # half of the volume empty: absent chunks (x >= half), skip-empty on
    half = vol.copy()
    half[:, :, shape[2] // 2:] = 0
    inp_half = write_zarr(root / "half.zarr", half, chunks=(32, 64, 64))
    t_nn = nnunet_time(model, half, False)
    t_ours = ours_time(model, inp_half, root / "p_half", False, batch_size=2, skip_empty_patches=True)
    print(f"skip-empty (50% absent): nnU-Net {t_nn:.1f} s, ours {t_ours:.1f} s, ours/nnU-Net speed = {t_nn / t_ours:.2f}")
    # intermediate bytes
    from vesuvius_inference.contract.config import BlendConfig
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.stages.blend import run_blend
    from vesuvius_inference.store.storage import tree_bytes

    for parts in (1, 2, 4):
        pd = root / f"inter{parts}"
        ours_time(model, inp, pd, False, parts=parts, batch_size=2)
        run_blend(BlendConfig(parts_dir=str(pd), output=str(root / f"b{parts}.zarr"), quiet=True))
        ib, bb = tree_bytes(Place(str(pd))), tree_bytes(Place(str(root / f"b{parts}.zarr")))
        print(f"intermediates, {parts} part(s): {ib / 1e6:.1f} MB / blended {bb / 1e6:.1f} MB = {ib / bb:.2f}")
        shutil.rmtree(pd)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
