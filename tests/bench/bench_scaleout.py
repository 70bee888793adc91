"""Scale-out data path benchmark (issue 10): intermediates, stage I/O and writes, measured in one run.

Run: ``python tests/bench/bench_scaleout.py``. Prints ratios, never asserts on them.
- intermediates: 8 parts over a 720 x 96 x 96 scroll, patch 32^3 (2.8 patch depths of Z per part, as
  PHerc1218 on 64 GPUs), fused pipeline with --keep-intermediates: bytes under the workdir / the
  uncompressed float16 logits; the same bytes as plan estimated them; and the same seams stored as
  float16 partial means + weights (the lossy alternative to exact int64 sums), compressed the same way;
- plan's figure at PHerc1218's geometry (64 parts, patch 128), from metadata only;
- blend + finalize I/O (bytes the processes read and wrote, /proc/self/io) of the fused path against the
  seed's layout in the same build (predict without an output: blend copies every chunk, finalize
  reads blended logits back): the "every output byte written three times" path;
- peak RSS of predict for a volume and one 8x larger at the same --cache_gb.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
for _v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(_v, "/tmp/nnunet")

from bench_engine import model_folder, peak_rss_mb  # noqa: E402
from helpers import smooth_volume, write_zarr  # noqa: E402

CHILD = """
import atexit, os, shutil, sys
import zarr.storage
moved = [0]
get, set_ = zarr.storage.LocalStore.get, zarr.storage.LocalStore.set
async def counted_get(self, key, *a, **k):
    out = await get(self, key, *a, **k)
    moved[0] += len(out) if out is not None else 0
    return out
async def counted_set(self, key, value, *a, **k):
    moved[0] += len(value)
    return await set_(self, key, value, *a, **k)
zarr.storage.LocalStore.get, zarr.storage.LocalStore.set = counted_get, counted_set
copyfile = shutil.copyfile
def counted_copy(src, dst, *a, **k):
    moved[0] += 2 * os.path.getsize(src)
    return copyfile(src, dst, *a, **k)
shutil.copyfile = counted_copy
atexit.register(lambda: open(sys.argv[1], "w").write(str(moved[0])))
from vesuvius_inference.cli import main
sys.exit(main(sys.argv[2:]))
"""


def io_bytes(args: list[str]) -> int:
    """Bytes one CLI process read from and wrote to its Zarr stores (every chunk and metadata object
    passes through zarr's store; blend's byte copies through shutil)."""
    with tempfile.NamedTemporaryFile("r", suffix=".io") as f:
        subprocess.run([sys.executable, "-c", CHILD, f.name, *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return int(open(f.name).read())


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def lossy_seam_bytes(parts_dir: Path) -> tuple[int, int]:
    """(stored bytes of the int64 sums segments, bytes if stored as float16 means + weights instead)."""
    import zarr
    from numcodecs import Blosc

    codec = Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE)
    exact = lossy = 0
    for store in parts_dir.glob("part_*/*/"):
        g = zarr.open_group(str(store), mode="r")
        for name in g.array_keys():
            if not name.startswith("sums_"):
                continue
            exact += sum(f.stat().st_size for f in (store / name).rglob("*") if f.is_file() and f.name != "zarr.json")
            s = g[name][:]
            w = s[-1].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = (s[:-1] / np.where(w == 0, 1, w) * 2.0 ** -15).astype(np.float16)
            for arr in (mean, (w / 2 ** 24).astype(np.float16)):
                lossy += len(codec.encode(np.ascontiguousarray(arr)))
    return exact, lossy


def main() -> None:
    from vesuvius_inference.storage import tree_bytes

    root = Path(tempfile.mkdtemp(prefix="vscale-"))
    patch, features = (32, 32, 32), (4, 8, 16)
    model = model_folder(root, patch, features)
    shape = (720, 96, 96)
    inp = write_zarr(root / "in.zarr", smooth_volume(shape, seed=1), chunks=(32, 32, 32))
    logits = int(np.prod(shape)) * 2 * 2
    work = root / "work"
    cli("pipeline", "--input", inp, "--output", root / "out.zarr", "--model", model, "--workdir", work,
        "--parts-per-gpu", "8", "--disable-tta", "--fuse-blend-finalize", "--keep-intermediates", "--quiet",
        "--batch-size", "4")
    left = tree_bytes(str(work))
    parts = work / "parts"
    seams = sum(f.stat().st_size for f in parts.glob("part_*/*/*/c/**/*") if f.is_file())
    plan = json.loads(subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "plan", "--input", inp,
                                      "--model", model, "--num_parts", "8", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    est = plan["seams"]["compressed_estimate"]
    exact, lossy = lossy_seam_bytes(parts)
    print(f"intermediates, 8 parts, {shape[0]}x{shape[1]}x{shape[2]}, patch 32: workdir {left / 1e6:.1f} MB / "
          f"float16 logits {logits / 1e6:.1f} MB = {left / logits:.2f} (seam segments {seams / logits:.2f}); "
          f"plan estimated {est / logits:.2f} ({est / max(seams, 1):.2f}x the segments written)")
    print(f"seams as exact int64 sums {exact / 1e6:.1f} MB vs float16 partial means + weights {lossy / 1e6:.1f} MB "
          f"(lossy, not part-count invariant): {lossy / max(exact, 1):.2f}x")
    # blend + finalize I/O: fused (parts wrote their rows) vs the seed's layout (predict without an output)
    seed = root / "seed"
    for p in range(8):
        cli("predict", "--model_path", model, "--input_dir", inp, "--output_dir", seed, "--part_id", p,
            "--num_parts", 8, "--device", "cpu", "--disable_tta", "--quiet", "--batch_size", 4)
    old = io_bytes(["blend", seed, root / "seed_b.zarr", "--quiet"]) + \
        io_bytes(["finalize", root / "seed_b.zarr", root / "seed_o.zarr", "--quiet"])
    fused = root / "fused"
    for p in range(8):
        cli("predict", "--model_path", model, "--input_dir", inp, "--output_dir", fused, "--part_id", p,
            "--num_parts", 8, "--device", "cpu", "--disable_tta", "--quiet", "--batch_size", 4,
            "--final_output", root / "fused_o.zarr")
    new = io_bytes(["blend", fused, root / "fused_o.zarr", "--quiet", "--seams_only"]) + \
        io_bytes(["finalize", fused, root / "fused_o.zarr", "--quiet"])
    print(f"blend+finalize bytes read+written: fused {new / 1e6:.1f} MB, seed layout {old / 1e6:.1f} MB: "
          f"{new / old:.2f}x")
    # plan at PHerc1218's geometry (metadata only: an empty array of that shape)
    import zarr

    big = root / "pherc1218.zarr"
    zarr.create_array(str(big), shape=(23247, 7593, 7593), chunks=(128, 128, 128), dtype="uint8", zarr_format=3,
                      fill_value=0)
    m128 = model_folder(root / "m128", (128, 128, 128), features)
    p = json.loads(subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "plan", "--input", big, "--model",
                                   m128, "--num_parts", "64", "--no_skip_empty_patches", "--json"],
                                  capture_output=True, text=True, check=True).stdout)
    s = p["seams"]
    print(f"plan, PHerc1218 on 64 parts, patch 128: intermediates ~{s['ratio_to_logits']:.2f}x the float16 logits "
          f"({s['uncompressed_ratio_to_logits']:.2f}x uncompressed), {s['seam_rows']} of {s['rows']} chunk rows are "
          f"seams, {p['objects']['output_chunks']:,} output chunks at level 0, {s['objects']:,} intermediate chunks")
    # peak RSS of predict, 1x and 8x volume, same --cache_gb
    rss = {}
    for scale, sh in (("1x", (128, 256, 256)), ("8x", (256, 512, 512))):
        path = root / f"rss_{scale}.zarr"
        arr = zarr.create_array(str(path), shape=sh, chunks=(32, 64, 64), dtype="uint8", zarr_format=3, fill_value=0)
        arr[:, sh[1] // 2 - 32: sh[1] // 2 + 32, sh[2] // 2 - 32: sh[2] // 2 + 32] = smooth_volume((sh[0], 64, 64), 1)
        rss[scale] = peak_rss_mb(["predict", "--model_path", str(model), "--input_dir", str(path), "--output_dir",
                                  str(root / f"rss_{scale}"), "--device", "cpu", "--disable_tta", "--cache_gb", "0.05",
                                  "--final_output", str(root / f"rss_{scale}_o.zarr"), "--quiet"])
    print(f"peak RSS predict: {rss['1x']:.0f} MB at 1x, {rss['8x']:.0f} MB at 8x volume: "
          f"{100 * (rss['8x'] / rss['1x'] - 1):+.1f}%")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
