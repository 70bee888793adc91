"""Scale-out data path benchmark (issue 10): intermediates, stage I/O and writes, measured in one run.

Run: ``python tests/bench/bench_scaleout.py``. Prints ratios, never asserts on them.
- intermediates: 8 parts over a 720 x 96 x 96 scroll, patch 32^3 (2.8 patch depths of Z per part, as
  PHerc1218 on 64 GPUs), fused pipeline with --keep-intermediates: bytes under the workdir / the
  uncompressed float16 logits, of which the seam pieces (the first finishers' under _seams/, and those
  left for blend); the same bytes as plan estimated them;
- plan's figure at PHerc1218's geometry (64 parts, patch 128), from metadata only, z-slabs and the
  partition plan chooses;
- blend + finalize I/O (bytes the processes read and wrote through zarr and fsspec) of the fused path
  against the seed's layout in the same build (predict without an output: blend copies every chunk,
  finalize reads blended logits back): the "every output byte written three times" path; and the bytes
  the fused blend reads (what the second finishers left it);
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
from fsspec.implementations.local import LocalFileSystem
moved = [0, 0]  # read, written
get, set_ = zarr.storage.LocalStore.get, zarr.storage.LocalStore.set
async def counted_get(self, key, *a, **k):
    out = await get(self, key, *a, **k)
    moved[0] += len(out) if out is not None else 0
    return out
async def counted_set(self, key, value, *a, **k):
    moved[1] += len(value)
    return await set_(self, key, value, *a, **k)
zarr.storage.LocalStore.get, zarr.storage.LocalStore.set = counted_get, counted_set
cat = LocalFileSystem.cat_file
def counted_cat(self, path, *a, **k):
    out = cat(self, path, *a, **k)
    moved[0] += len(out)
    return out
LocalFileSystem.cat_file = counted_cat
copyfile = shutil.copyfile
def counted_copy(src, dst, *a, **k):
    moved[0] += os.path.getsize(src)
    moved[1] += os.path.getsize(src)
    return copyfile(src, dst, *a, **k)
shutil.copyfile = counted_copy
atexit.register(lambda: open(sys.argv[1], "w").write(f"{moved[0]} {moved[1]}"))
from vesuvius_inference.cli import main
sys.exit(main(sys.argv[2:]))
"""


def io_bytes(args: list[str]) -> tuple[int, int]:
    """(read, written): bytes one CLI process moved through its Zarr stores (every chunk and metadata
    object), fsspec's whole-object reads (seam pieces, JSON) and blend's byte copies (shutil)."""
    with tempfile.NamedTemporaryFile("r", suffix=".io") as f:
        subprocess.run([sys.executable, "-c", CHILD, f.name, *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        r, w = open(f.name).read().split()
        return int(r), int(w)


def cli(*args) -> None:
    subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def seam_bytes(parts_dir: Path) -> tuple[int, int]:
    """(first finishers' pieces under _seams/, pieces the parts left for blend) in bytes."""
    def size(files) -> int:
        return sum(f.stat().st_size for f in files if f.is_file())

    return size(parts_dir.glob("_seams/*/*")), size(parts_dir.glob("part_*/*/pieces/*"))


def main() -> None:
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.store.storage import tree_bytes

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
    left = tree_bytes(Place(str(work)))
    parts = work / "parts"
    firsts, for_blend = seam_bytes(parts)
    seams = firsts + for_blend
    plan = json.loads(subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "plan", "--input", inp,
                                      "--model", model, "--num_parts", "8", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    est = plan["seams"]["compressed_estimate"]
    print(f"intermediates, 8 parts ({plan['parts']['partition']}), {shape[0]}x{shape[1]}x{shape[2]}, patch 32: "
          f"workdir {left / 1e6:.2f} MB / float16 logits {logits / 1e6:.1f} MB = {left / logits:.3f} (seam pieces "
          f"{seams / logits:.3f}: first finishers' {firsts / logits:.3f}, left for blend {for_blend / logits:.3f}); "
          f"plan estimated {est / logits:.3f} ({est / max(seams, 1):.2f}x the pieces written)")
    # blend + finalize I/O: fused (parts wrote their rows) vs the seed's layout (predict without an output)
    seed = root / "seed"
    for p in range(8):
        cli("predict", "--model_path", model, "--input_dir", inp, "--output_dir", seed, "--part_id", p,
            "--num_parts", 8, "--device", "cpu", "--disable_tta", "--quiet", "--batch_size", 4)
    old = sum(io_bytes(["blend", seed, root / "seed_b.zarr", "--quiet"])) + \
        sum(io_bytes(["finalize", root / "seed_b.zarr", root / "seed_o.zarr", "--quiet"]))
    fused = root / "fused"
    for p in range(8):
        cli("predict", "--model_path", model, "--input_dir", inp, "--output_dir", fused, "--part_id", p,
            "--num_parts", 8, "--device", "cpu", "--disable_tta", "--quiet", "--batch_size", 4,
            "--final_output", root / "fused_o.zarr")
    blend_read, blend_written = io_bytes(["blend", fused, root / "fused_o.zarr", "--quiet", "--seams_only"])
    new = blend_read + blend_written + sum(io_bytes(["finalize", fused, root / "fused_o.zarr", "--input_kind", "parts",
                                                                  "--quiet"]))
    print(f"blend reads {blend_read / 1e6:.3f} MB ({blend_read / logits:.3f}x the float16 logits), writes "
          f"{blend_written / 1e6:.3f} MB; blend+finalize bytes read+written: fused {new / 1e6:.1f} MB, seed layout "
          f"{old / 1e6:.1f} MB: {new / old:.2f}x")
    # plan at PHerc1218's geometry (metadata only: an empty array of that shape)
    import zarr

    big = root / "pherc1218.zarr"
    zarr.create_array(str(big), shape=(23247, 7593, 7593), chunks=(128, 128, 128), dtype="uint8", zarr_format=3,
                      fill_value=0)
    m128 = model_folder(root / "m128", (128, 128, 128), features)
    for partition in ("slabs", "auto"):
        p = json.loads(subprocess.run([sys.executable, "-m", "vesuvius_inference.cli", "plan", "--input", big,
                                       "--model", m128, "--num_parts", "64", "--no_skip_empty_patches", "--partition",
                                       partition, "--json"], capture_output=True, text=True, check=True).stdout)
        s = p["seams"]
        print(f"plan, PHerc1218 on 64 parts ({p['parts']['partition']}), patch 128: intermediates "
              f"~{s['ratio_to_logits']:.3f}x the float16 logits compressed ({s['uncompressed_ratio_to_logits']:.3f}x "
              f"uncompressed; worst finish order {s['worst']['ratio_to_logits']:.3f}x / "
              f"{s['worst']['uncompressed_ratio_to_logits']:.3f}x), {s['pair_chunks']:,} two-part seam chunks, "
              f"{s['shared_chunks']:,} for blend, {p['objects']['output_chunks']:,} output chunks at level 0, "
              f"{s['objects']:,} intermediate objects")
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
