#!/usr/bin/env bash
# The GPU check (issue 11): on a machine with one CUDA GPU, in under 5 minutes, prints one table.
#  1. the CUDA oracle tests (tests/gpu): our blended logits within nnU-Net's own error on the GPU,
#     part-count invariance and kill/resume on the device path;
#  2. the GPU benchmark (tests/bench/bench_gpu.py): ours / forward-only and ours / nnU-Net, with and
#     without TTA;
#  3. a 2-part pipeline on cuda:0 with --parts-per-gpu 2 on the demo scroll, with its Dice.
# On this project's lent H200 (no registry there): run tools/gpu_wheels.sh here first and carry .whl.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="$PWD/operator:$PWD/tests:${PYTHONPATH:-}"
export nnUNet_raw=/tmp/nn nnUNet_preprocessed=/tmp/nn nnUNet_results=/tmp/nn
LOG=${OUT:-/tmp/gpu_check}; mkdir -p "$LOG"
$PY -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.cuda.get_device_name(0))' || exit 1
timeout 150 $PY -m pytest -q -p no:cacheprovider -s tests/gpu > "$LOG/tests.log" 2>&1; tests_rc=$?
timeout 120 $PY tests/bench/bench_gpu.py > "$LOG/bench.log" 2>&1; bench_rc=$?
demo=/tmp/gpu_demo; rm -rf $demo; mkdir -p $demo
timeout 60 $PY - > "$LOG/pipeline.log" 2>&1 <<'PYEOF'
import time, numpy as np, zarr
from vesuvius_inference.demo.run import MODEL_DIR
from vesuvius_inference.demo.synthetic import dice, make_scroll, write_zarr
from vesuvius_inference.contract.config import PipelineConfig
from vesuvius_inference.stages.pipeline import run_local_pipeline
vol, lab = make_scroll((160, 256, 256), seed=7)
write_zarr(vol, "/tmp/gpu_demo/in.zarr")
t = time.perf_counter()
run_local_pipeline(PipelineConfig(input_dir="/tmp/gpu_demo/in.zarr", output="/tmp/gpu_demo/out.zarr", model_path=str(MODEL_DIR),
                                  gpus="0", parts_per_gpu=2, do_tta=True, batch_size=4, quiet=True))
p = zarr.open_group("/tmp/gpu_demo/out.zarr", mode="r")["0"][0]
print(f"pipeline: 2 parts on cuda:0, TTA, {time.perf_counter() - t:.1f} s, Dice {dice(p >= 128, lab > 0):.3f}")
PYEOF
pipe_rc=$?
echo "== GPU check =="
echo "oracle tests (tests/gpu): rc=$tests_rc"; grep -E "cuda tta=|passed|failed|error" "$LOG/tests.log" | tail -6
echo "benchmark (bench_gpu): rc=$bench_rc"; tail -3 "$LOG/bench.log"
echo "pipeline: rc=$pipe_rc"; tail -1 "$LOG/pipeline.log"
