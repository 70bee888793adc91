"""Preemption benchmark: what a SIGTERM costs a predict part (issue 24: "a preemption costs at most one batch").

Run: ``python tests/bench/bench_preemption.py [--signals 5] [--shape 64,160,160] [--batch 2] [--seed 0]``.
Never asserts on time. One predict part on the CPU runs uninterrupted once (the reference), then again
with SIGTERM at ``--signals`` random moments of its compute (when its progress lines pass random patch
counts drawn at the start), each followed by a rerun, until a rerun finishes. Then it prints::

    preemption: N SIGTERMs, R patches recomputed of P (R/N per preemption, batch B), bytes identical to an
    uninterrupted run: yes|no

- P: the part's patches (its whole order, listed-empty ones included);
- R: patches of the order that some run went through again: each run starts where the checkpoint its
  rerun found says (the ``resuming after patch S`` line, 0 without one) and gets as far as its stop line
  says (``stopped by SIGTERM after patch N``; a run killed before it printed one, or a SIGTERM that lands
  before the handler is installed, counts its last progress line), so R = sum of max(0, N_i - S_(i+1))
  over the interrupted runs: the work thrown away;
- identical: every chunk object of the output's level 0 is byte-for-byte the uninterrupted run's.

Goal: R/N <= B and identical yes. A checkpoint after every batch would meet it too, at a cost on every
batch; here the checkpoint is written on the signal (signals.py), and its cost does not grow with the part
(checkpoint.py). Also printed: each stop's checkpoint time and bytes, from its stop line.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet-unused")

from helpers import smooth_volume, write_zarr  # noqa: E402

PROGRESS = re.compile(r"predict \S+: (\d+)/(\d+) patches")
STOP = re.compile(r"stopped by SIGTERM after patch (\d+) of (\d+) .*checkpoint written \(([\d.]+) s, (\d+) bytes\)")
RESUME = re.compile(r"resuming after patch (\d+)")


def model_folder(root: Path) -> Path:
    code = ("import sys; from vesuvius_inference.model.nnunet_folder import *; "
            "write_model_folder(sys.argv[1], make_plans((16, 32, 32), (2, 4, 8), 'CTNormalization'), "
            "make_dataset_json(), folds=(0,))")
    subprocess.run([sys.executable, "-c", code, str(root / "model")], check=True)
    return root / "model"


class Run:
    """One predict process and what its log says."""

    def __init__(self, argv: list[str]) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.first_progress: float | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if self.first_progress is None and PROGRESS.search(line):
                self.first_progress = time.monotonic()

    def finish(self) -> int:
        code = self.proc.wait()
        self.reader.join(10)
        return code

    def last(self, pattern: re.Pattern) -> re.Match | None:
        found = [m for line in self.lines for m in [pattern.search(line)] if m]
        return found[-1] if found else None


def chunk_bytes(out: Path) -> dict[str, bytes]:
    level0 = out / "0"
    return {str(p.relative_to(level0)): p.read_bytes() for p in sorted(level0.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--signals", type=int, default=5)
    ap.add_argument("--shape", default="64,160,160")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    root = Path(tempfile.mkdtemp(prefix="bench-preemption-"))
    model = model_folder(root)
    vol = write_zarr(root / "in.zarr", smooth_volume(tuple(int(s) for s in a.shape.split(",")), seed=7),
                     chunks=(16, 32, 32))

    def argv(name: str) -> list[str]:
        return [sys.executable, "-m", "vesuvius_inference.cli", "predict", "--model_path", str(model), "--input_dir",
                vol, "--output_dir", str(root / name / "parts"), "--final_output", str(root / name / "out.zarr"),
                "--device", "cpu", "--disable_tta", "--chunk_size", "16,32,32", "--batch_size", str(a.batch),
                "--progress_s", "0.05"]

    ref = Run(argv("reference"))
    assert ref.finish() == 0, "\n".join(ref.lines)
    assert ref.first_progress is not None
    total = int(ref.last(PROGRESS).group(2))  # type: ignore[union-attr]
    print(f"reference: {total} patches, {time.monotonic() - ref.first_progress:.1f} s of compute", file=sys.stderr)

    # the moments: random patch counts of the order (progress lines every 0.05 s), whatever the machine's speed
    targets = sorted(rng.sample(range(1, total - 1), a.signals))
    sent, lost, stops = 0, 0, []
    runs: list[tuple[int, int]] = []  # (started at, got to) of each interrupted run
    while True:
        run = Run(argv("preempted"))
        if sent < len(targets):
            while run.proc.poll() is None:
                m = run.last(PROGRESS)
                if m and int(m.group(1)) >= targets[sent]:
                    run.proc.send_signal(15)
                    sent += 1
                    break
                time.sleep(0.01)
        code = run.finish()
        resumed = run.last(RESUME)
        start = int(resumed.group(1)) if resumed else 0
        if runs and any("is already complete" in line for line in run.lines):
            start = runs[-1][1]  # the previous run completed the part after all: nothing was thrown away
        if runs:  # what the previous run did past the point this one resumed from was thrown away
            lost += max(0, runs[-1][1] - start)
        if code == 0:
            break
        stop = run.last(STOP)
        progress = run.last(PROGRESS)
        got_to = int(stop.group(1)) if stop else (int(progress.group(1)) if progress else start)
        if stop:
            stops.append((float(stop.group(3)), int(stop.group(4))))
        print(f"run {len(runs) + 1}: exit {code}, patches {start} -> {got_to}", file=sys.stderr)
        runs.append((start, got_to))
    same = chunk_bytes(root / "reference" / "out.zarr") == chunk_bytes(root / "preempted" / "out.zarr")
    if stops:
        print(f"stop checkpoints: {', '.join(f'{s:.3f} s/{b} B' for s, b in stops)}", file=sys.stderr)
    per = lost / sent if sent else 0.0
    print(f"preemption: {sent} SIGTERMs, {lost} patches recomputed of {total} ({per:g} per preemption, batch "
          f"{a.batch}), bytes identical to an uninterrupted run: {'yes' if same else 'no'}")
    if not a.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
