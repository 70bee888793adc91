"""Host path benchmark (issue 11): predict with a network that costs nothing, against a plain zarr copy.

Run: ``python tests/bench/bench_hostpath.py``. On a GPU the model takes milliseconds per 128^3 patch,
so everything else predict does (read, normalise, weight, quantise, accumulate, divide, write) must
keep up. The network is replaced by a stand-in returning zeros of the right shape; the peer, in the
same run, is a plain zarr copy of the same volume: read every input chunk and write the C-channel
float16 output with the same codecs and chunks. Prints ratios, never asserts on them.

Twice: on the machine as it is ("quiet"), and beside a competing CPU load, one busy process per CPU this
process may use ("loaded"), as other pods on a shared node, both measured in the same run against the
copy measured under the same load. Predict sizes torch's and its I/O pools to the CPUs it may use
(cpuquota.py: the container's CPU quota, else the pod's request, else the affinity).
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
import vesuvius_inference  # noqa: E402,F401 - its environment defaults (OMP_WAIT_POLICY) before torch loads
from helpers import smooth_volume  # noqa: E402

ROUNDS = 4


def _spin() -> None:
    while True:
        pass


class CompetingLoad:
    """One busy process per CPU (a context manager): the other work of a shared node."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n or len(os.sched_getaffinity(0))
        self.procs: list = []

    def __enter__(self) -> CompetingLoad:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=_spin, daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


class NullNet:
    """Zeros of the network's output shape: no compute, so predict's own cost is what is left.

    The zeros are allocated once per shape and handed out again (predict's in-place clamp and
    quantisation keep them zeros): a fresh 67 MB tensor per batch at patch 128^3 costs the host a
    memset and ~16k page faults, work a GPU's caching allocator does not do and that is not predict's.
    """

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.out: dict[tuple[int, ...], object] = {}

    def __call__(self, x):
        import torch

        shape = (x.shape[0], self.classes) + tuple(x.shape[2:])
        if shape not in self.out:
            self.out[shape] = torch.zeros(shape, dtype=torch.float32, device=x.device)
        return self.out[shape]

    def to(self, device):
        return self

    def eval(self):
        return self


def null_predict(model: Path, inp: str, out: Path, patch: int) -> float:
    """Seconds of one predict part (whole volume) with the null network, blended float16 output."""
    import vesuvius_inference.model.network as model_mod
    from vesuvius_inference.contract.config import PredictConfig
    from vesuvius_inference.predict.stage import run_predict

    real = model_mod.load_model

    def load(files):
        m = real(files)
        m.networks = [NullNet(m.num_classes)]
        return m

    model_mod.load_model = load
    try:
        t = time.perf_counter()
        run_predict(PredictConfig(model_path=str(model), input_dir=inp, output_dir=str(out / "parts"), device="cpu", do_tta=False, batch_size=4,
                                  cache_gb=2.0, blended_output=str(out / "blended.zarr"), checkpoint_s=1e9,
                                  intensity_check="off", quiet=True))
        return time.perf_counter() - t
    finally:
        model_mod.load_model = real


def zarr_copy(inp: str, out: Path, chunk: int, classes: int = 2) -> float:
    """Seconds to read every input chunk and write it as C-channel float16 with the output's codecs."""
    import zarr
    from vesuvius_inference.store.output import blosc

    src = zarr.open_group(inp, mode="r")["0"]
    t = time.perf_counter()
    dst = zarr.create_array(str(out), shape=(classes,) + src.shape, chunks=(classes, chunk, chunk, chunk),
                            dtype="float16", fill_value=float("nan"), compressors=[blosc()], zarr_format=3)
    for z in range(0, src.shape[0], chunk):
        for y in range(0, src.shape[1], chunk):
            for x in range(0, src.shape[2], chunk):
                block = np.asarray(src[z:z + chunk, y:y + chunk, x:x + chunk]).astype(np.float16)
                dst[:, z:z + chunk, y:y + chunk, x:x + chunk] = np.broadcast_to(block, (classes,) + block.shape)
    return time.perf_counter() - t


def rounds(model: Path, inp: str, root: Path, patch: int, tag: str) -> tuple[float, float]:
    """Best of ROUNDS runs each, ours and the copy alternating: this machine's other load moves single runs by
    tens of percent, and alternating exposes both to the same spells of it."""
    t_ours, t_copy = [], []
    for r in range(ROUNDS):
        t_ours.append(null_predict(model, inp, root / f"ours{tag}{patch}_{r}", patch))
        t_copy.append(zarr_copy(inp, root / f"copy{tag}{patch}_{r}.zarr", patch))
        shutil.rmtree(root / f"ours{tag}{patch}_{r}", ignore_errors=True)
        shutil.rmtree(root / f"copy{tag}{patch}_{r}.zarr", ignore_errors=True)
    return min(t_ours), min(t_copy)


def main() -> None:
    import nnunetv2.inference.predict_from_raw_data  # noqa: F401 - imports are not the host path
    from vesuvius_inference.demo.synthetic import write_zarr as write_image
    from vesuvius_inference.model.nnunet_folder import make_dataset_json, make_plans, write_model_folder
    from vesuvius_inference.store import cpuquota

    root = Path(tempfile.mkdtemp(prefix="vhost-"))
    shape = (256, 256, 256)
    vol = smooth_volume(shape, seed=3)
    inp = write_image(vol, str(root / "in.zarr"), chunks=(64, 64, 64), levels=1)
    nvox = int(np.prod(shape))
    plan = cpuquota.plan()
    lines = []
    for patch in (128, 64):
        model = root / f"model{patch}"
        write_model_folder(model, make_plans((patch,) * 3, (4, 8, 16), "CTNormalization"), make_dataset_json(),
                           folds=(0,))
        ratios = {}
        for tag in ("quiet", "loaded"):
            if tag == "loaded":
                with CompetingLoad():
                    t_ours, t_copy = rounds(model, inp, root, patch, tag)
            else:
                t_ours, t_copy = rounds(model, inp, root, patch, tag)
            ours, copy = nvox / t_ours / 1e6, nvox / t_copy / 1e6
            ratios[tag] = (ours, ours / copy)
            print(f"patch {patch}^3, {tag}: ours {t_ours:.1f} s, zarr copy {t_copy:.1f} s ({copy:.1f} Mvox/s)")
        lines.append(f"host path: null-network predict {ratios['quiet'][0]:.1f} Mvox/s = {ratios['quiet'][1]:.2f} x zarr "
                     f"copy quiet, {ratios['loaded'][0]:.1f} Mvox/s = {ratios['loaded'][1]:.2f} x loaded (one busy "
                     f"process per CPU) (patch {patch}^3, overlap 0.5, {plan.cpus} CPUs: torch {plan.torch_intra} "
                     f"threads, {plan.io_threads} I/O, {plan.writers} writers, "
                     f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
    shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))  # the 64^3 figure last


if __name__ == "__main__":
    main()
