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
