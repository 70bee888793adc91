"""``vesuvius-inference demo``: the whole pipeline on a synthetic scroll, on the CPU.

Makes a scroll-like volume with known ground truth (an OME-Zarr image with the scans' voxel size), runs
predict (2 parts, each writing the output rows it alone covers) -> blend (the seams) -> finalize (the pyramid)
with the small model bundled in this package, then reports per-stage time, voxels/s and Dice,
and writes a PNG preview.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import ownership

log = logging.getLogger("vesuvius_inference.demo")
MODEL_DIR = Path(__file__).parent / "model"
DEFAULT_SHAPE = (96, 160, 160)


def run_demo(output_dir: str = "demo-output", shape: Sequence[int] | None = None, parts: int = 2, seed: int = 1234,
             tta: bool = False, device: str = "cpu", quiet: bool = False) -> dict[str, float]:
    """Run the demo; returns the measured numbers (also printed)."""
    import zarr

    from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PredictConfig
    from vesuvius_inference.demo.preview import write_preview
    from vesuvius_inference.demo.synthetic import dice, make_scroll
    from vesuvius_inference.demo.synthetic import write_zarr as write_volume
    from vesuvius_inference.predict.stage import run_predict
    from vesuvius_inference.stages.blend import run_blend
    from vesuvius_inference.stages.finalize import run_finalize

    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):  # an earlier demo's folder is replaced; anybody else's is left alone
        ownership.remove_ours(Place(str(out)), flag="demo --output_dir")
    out.mkdir(parents=True, exist_ok=True)
    ownership.mark(Place(str(out)), "demo")
    shape = tuple(shape or DEFAULT_SHAPE)
    t = time.perf_counter()
    volume, labels = make_scroll(shape=shape, seed=seed)
    inp = str(out / "scroll.zarr")
    write_volume(volume, inp)
    np.save(out / "ground_truth.npy", labels)
    nvox = int(np.prod(shape))
    log.info("demo: synthetic scroll %s (%.1f Mvox) in %.1f s -> %s", "x".join(map(str, shape)), nvox / 1e6,
             time.perf_counter() - t, inp)
    parts_dir, result = out / "work" / "parts", out / "prediction.zarr"
    times: dict[str, float] = {}
    t = time.perf_counter()
    for p in range(parts):
        run_predict(PredictConfig(model_path=str(MODEL_DIR), input_dir=inp, output_dir=str(parts_dir), part_id=p,
                                  num_parts=parts, device=device, final_output=str(result), do_tta=tta, batch_size=2,
                                  quiet=quiet))
    times["predict"] = time.perf_counter() - t
    t = time.perf_counter()
    run_blend(BlendConfig(parts_dir=str(parts_dir), output=str(result), quiet=quiet))
    times["blend"] = time.perf_counter() - t
    t = time.perf_counter()
    run_finalize(FinalizeConfig(input_path=str(parts_dir), output_path=str(result), input_kind="parts", quiet=quiet))
    times["finalize"] = time.perf_counter() - t
    prob = np.asarray(zarr.open_array(str(result / "0"), mode="r")[0])
    score = dice(prob >= 128, labels > 0)
    write_preview(volume, prob, labels, str(out / "preview.png"))
    ownership.remove_ours(Place(str(out / "work")), flag="the demo's workdir")
    lines = [f"{'stage':<10}{'seconds':>9}{'Mvox/s':>9}"]
    for k, v in times.items():
        lines.append(f"{k:<10}{v:>9.1f}{nvox / max(v, 1e-9) / 1e6:>9.2f}")
    lines.append(f"Dice vs ground truth: {score:.3f}   output: {result}   preview: {out / 'preview.png'}")
    print("\n".join(lines))
    return {**times, "dice": score}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_demo(output_dir=os.environ.get("DEMO_OUT", "demo-output"))
