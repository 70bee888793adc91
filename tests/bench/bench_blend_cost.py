"""What a blend and a finalize process cost, and what loading torch used to add to them (issue 26).

Run: ``python tests/bench/bench_blend_cost.py``. Predicts a small volume in 2 parts into a final
output, then runs blend (the seams) and finalize (the pyramid) as separate processes, each twice:
as they are, and with nnU-Net's sliding-window module imported first (what the seams rework made
every blend do, through nnU-Net's patch-step function). Prints seconds and peak RSS (os.wait4) and
the ratios; never asserts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet")

from helpers import smooth_volume, write_zarr  # noqa: E402

RUN = "import sys; {pre}from vesuvius_inference import cli; sys.exit(cli.main(sys.argv[1:]))"
BEFORE = "import nnunetv2.inference.sliding_window_prediction; "


def measured(argv: list[str], pre: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN.format(pre=pre), *argv])
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-blend-"))
    try:
        code = ("import sys; from vesuvius_inference.model.nnunet_folder import *; write_model_folder(sys.argv[1], "
                "make_plans((32, 64, 64), (4, 8, 16), 'ZScoreNormalization'), make_dataset_json(), folds=(0,))")
        subprocess.run([sys.executable, "-c", code, str(root / "model")], check=True)
        vol = write_zarr(root / "in.zarr", smooth_volume((96, 192, 192), seed=1), chunks=(32, 64, 64))
        out, parts = root / "out.zarr", root / "parts"
        for p in (0, 1):
            subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "predict", "--model_path", root / "model",
                            "--input_dir", vol, "--output_dir", parts, "--part_id", str(p), "--num_parts", "2",
                            "--device", "cpu", "--disable_tta", "--final_output", out, "--quiet"], check=True)
        snapshot = root / "snapshot"
        shutil.copytree(root, snapshot, ignore=shutil.ignore_patterns("snapshot", "model", "in.zarr"))
        for stage, argv in (("blend", ["blend", str(parts), str(out), "--seams_only", "--quiet"]),
                            ("finalize", ["finalize", str(parts), str(out), "--input_kind", "parts", "--quiet"])):
            rows = {}
            for name, pre in (("now", ""), ("with torch (before)", BEFORE)):
                for item in ("out.zarr", "parts"):  # the same starting state for both
                    shutil.rmtree(root / item)
                    shutil.copytree(snapshot / item, root / item)
                rows[name] = measured(argv, pre)
            (t0, m0), (t1, m1) = rows["now"], rows["with torch (before)"]
            print(f"{stage}: now {t0:.2f} s, {m0:.0f} MB peak; with torch {t1:.2f} s, {m1:.0f} MB peak; "
                  f"time ratio {t1 / t0:.2f}x, memory ratio {m1 / m0:.2f}x")
            if stage == "blend":  # finalize starts from blend's result
                shutil.rmtree(snapshot / "out.zarr")
                shutil.copytree(root / "out.zarr", snapshot / "out.zarr")
                shutil.rmtree(snapshot / "parts")
                shutil.copytree(root / "parts", snapshot / "parts")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
