"""A label image names its source image by a relative path, as NGFF asks (issue 23: it held a sentence)."""

from __future__ import annotations

import zarr
from ngff.fixtures import write_scroll_input
from vesuvius_inference import cli


def test_a_label_output_points_at_its_input_by_relative_path(tmp_path, model_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_scroll_input(tmp_path / "scans" / "scan.zarr", shape=(16, 32, 32), n_levels=2)
    model = model_factory(patch=(16, 32, 32), folds=(0,))
    code = cli.main(["pipeline", "--input", "scans/scan.zarr", "--model", str(model), "--output",
                     str(tmp_path / "out" / "mask.zarr"), "--threshold", "--devices", "cpu", "--disable_tta",
                     "--quiet"])
    assert code == 0
    attrs = zarr.open_group(str(tmp_path / "out" / "mask.zarr"), mode="r").attrs.asdict()
    label = attrs.get("ome", attrs)["image-label"]
    assert label["source"] == {"image": "../../scans/scan.zarr"}
    assert (tmp_path / "out" / "mask.zarr" / label["source"]["image"] / ".zattrs").exists()  # it resolves


def test_finalize_delete_intermediates_removes_the_parts_the_logits_came_from(tmp_path, model_factory):
    """The seed's three steps: predict -> blend -> finalize --delete_intermediates left the parts folder behind."""
    from helpers import smooth_volume, write_zarr

    model = model_factory(patch=(16, 32, 32), folds=(0,))
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((32, 48, 48), seed=4), chunks=(16, 24, 24))
    parts, blended, out = tmp_path / "parts", tmp_path / "blended.zarr", tmp_path / "out.zarr"
    for p in (0, 1):
        assert cli.main(["predict", "--model_path", str(model), "--input_dir", vol, "--output_dir", str(parts),
                         "--part_id", str(p), "--num_parts", "2", "--device", "cpu", "--disable_tta", "--quiet"]) == 0
    assert cli.main(["blend", str(parts), str(blended), "--quiet"]) == 0
    assert cli.main(["finalize", str(blended), str(out), "--delete_intermediates", "--quiet"]) == 0
    assert not parts.exists() and not blended.exists()
    assert zarr.open_group(str(out), mode="r").attrs["vesuvius"]["complete"] is True
