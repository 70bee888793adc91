"""GPU benchmark (issue 11): ours / forward-only and ours / nnU-Net's predictor, one GPU, one run.

Run on a CUDA machine (tools/gpu_check.sh runs it): nnU-Net's default 3d_fullres U-Net (PlainConvUNet,
32..320 features, 6 stages, patch 128^3, random weights) over a 384^3 uint8 volume at overlap 0.5.
- forward-only: the same number of batches of the same shape through the same Runner (autocast,
  flips batched), timed with CUDA events: what the GPU alone needs;
- ours: a whole predict part (read, upload, normalise, forward, accumulate, write), wall clock;
- nnU-Net: nnUNetPredictor.predict_sliding_window_return_logits on the same normalised volume.
Prints one table; never asserts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet")

FEATURES = (32, 64, 128, 256, 320, 320)
PATCH = (128, 128, 128)


def forward_only(model_dir: Path, n_patches: int, tta: bool, batch: int) -> float:
    import torch
    from vesuvius_inference.model.files import ModelFiles
    from vesuvius_inference.model.network import load_model
    from vesuvius_inference.predict.runner import Runner

    runner = Runner(load_model(ModelFiles(str(model_dir))), torch.device("cuda:0"), tta, batch)
    x = torch.randn((batch, 1) + PATCH, device="cuda:0")
    runner(x)  # warm-up: cuDNN handles, autocast caches
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(-(-n_patches // batch)):
        runner(x)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def ours(model_dir: Path, inp: str, out: Path, tta: bool, batch: int) -> tuple[float, int]:
    import json

    from vesuvius_inference.contract.config import PredictConfig
    from vesuvius_inference.predict.stage import run_predict

    t = time.perf_counter()
    run_predict(PredictConfig(model_path=str(model_dir), input_dir=inp, output_dir=str(out / "parts"), device="cuda:0", do_tta=tta, batch_size=batch,
                              final_output=str(out / "out.zarr"), cache_gb=16, quiet=True, intensity_check="off"))
    marker = json.loads((out / "parts" / "part_00000.json").read_text())
    return time.perf_counter() - t, int(marker["patches"]["run"])


def nnunet(model_dir: Path, vol: np.ndarray, tta: bool) -> float:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from oracle import normalize_like_nnunet

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=torch.device("cuda:0"),
                           perform_everything_on_device=True, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    data = torch.from_numpy(normalize_like_nnunet(model_dir, vol[None]))
    pred.predict_sliding_window_return_logits(data[:, :128, :128, :128])  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    pred.predict_sliding_window_return_logits(data)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    import torch
    from helpers import smooth_volume
    from vesuvius_inference.demo.synthetic import write_zarr
    from vesuvius_inference.model.nnunet_folder import make_dataset_json, make_plans, write_model_folder

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here; nothing measured")
        return
    root = Path(tempfile.mkdtemp(prefix="vgpu-"))
    model = root / "model"
    write_model_folder(model, make_plans(PATCH, FEATURES, "CTNormalization"), make_dataset_json(), folds=(0,))
    shape = (384, 384, 384)
    vol = smooth_volume(shape, seed=5)
    inp = write_zarr(vol, str(root / "in.zarr"), chunks=(128, 128, 128), levels=1)
    nvox = int(np.prod(shape))
    rows = [f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, volume {shape}, patch {PATCH}, "
            f"U-Net {FEATURES}"]
    for tta in (False, True):
        batch = 2
        t_ours, n = ours(model, inp, root / f"ours{tta}", tta, batch)
        t_ours, n = ours(model, inp, root / f"ours{tta}b", tta, batch)  # second run: no first-call costs
        t_fwd = forward_only(model, n, tta, batch)
        t_nn = nnunet(model, vol, tta)
        rows.append(f"tta={'on ' if tta else 'off'} ours {nvox / t_ours / 1e6:7.1f} Mvox/s | forward-only "
                    f"{nvox / t_fwd / 1e6:7.1f} | ours/forward-only {t_fwd / t_ours:.2f} | nnU-Net "
                    f"{nvox / t_nn / 1e6:7.1f} | ours/nnU-Net {t_nn / t_ours:.2f}")
    print("\n".join(rows))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
