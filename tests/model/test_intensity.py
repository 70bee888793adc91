"""Scans on another intensity scale than the model's training data (issue 23, point 5).

A uint16 scan, or floats in [0, 1], through a model trained on uint8 scans runs and writes garbage.
By default (``--intensity_check auto``) such a scan is refused before any work (exit 3) with the
rescaling that fixes it; with ``warn`` the run goes on, and the finding is repeated in the predict
part's summary and the pipeline's last line, kept in the part markers and written into the output's
``vesuvius`` attributes. Schemes that normalise by the volume's own statistics (ZScore) have no trained
range, so no finding. The README's rescaling snippet is run as written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from vesuvius_inference import cli
from vesuvius_inference.demo.synthetic import make_scroll

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One synthetic scroll as the uint8 the model was trained on, as uint16 (x * 257) and as [0, 1] floats;
    and a uint8 scan of air only (on the training scale, below its range)."""
    from helpers import write_zarr

    tmp = tmp_path_factory.mktemp("scales")
    vol, _ = make_scroll(SHAPE, seed=77)
    air = np.random.default_rng(3).integers(0, 4, SHAPE).astype(np.uint8)
    return {"uint8": write_zarr(tmp / "u8.zarr", vol, chunks=(16, 32, 32)),
            "uint16": write_zarr(tmp / "u16.zarr", vol.astype(np.uint16) * 257, chunks=(16, 32, 32)),
            "float": write_zarr(tmp / "f32.zarr", vol.astype(np.float32) / 255, chunks=(16, 32, 32)),
            "air": write_zarr(tmp / "air.zarr", air, chunks=(16, 32, 32))}


@pytest.fixture(scope="module")
def ct_model(model_factory):
    """CTNormalization: the plans' foreground range [5, 250] (nnunet_folder.make_plans) is applied as is."""
    return model_factory(patch=(16, 32, 32), folds=(0,), normalization="CTNormalization")


def _pipeline(capsys, scan, out, model, *extra):
    code = cli.main(["pipeline", "--input", str(scan), "--output", str(out), "--model", str(model), "--devices",
                     "cpu", "--disable-tta", *map(str, extra)])
    return code, capsys.readouterr().err


def _attrs(url) -> dict:
    return dict(zarr.open_group(str(url), mode="r").attrs)


ADVICE = {"uint16": "divide by 256 (uint16 -> uint8: x // 256, i.e. x >> 8), which puts",
          "float": "multiply by 255 (a [0, 1] float scan -> 0..255: round(x * 255) as uint8), which puts"}


@pytest.mark.parametrize("kind", ["uint16", "float"])
def test_a_scan_on_another_scale_is_refused_by_default_with_the_rescaling(capsys, scans, ct_model, tmp_path, kind):
    code, err = _pipeline(capsys, scans[kind], tmp_path / "out.zarr", ct_model)
    last = err.strip().splitlines()[-1]
    assert code == 3, err
    assert last.startswith("error: the input's intensities do not match the model's training data: they are on "
                           "another scale: 0.0% of "), last
    assert "[5, 250]" in last and ADVICE[kind] in last and "--intensity_check warn" in last
    after = re.search(r"which puts (\d+)% of the sampled voxels in that range", last)
    assert after and int(after[1]) >= 10, last  # checked on the sample: far above the 1% a finding needs
    assert not (tmp_path / "out.zarr").exists() and not (tmp_path / "out.zarr_work").exists()  # before any work


@pytest.mark.parametrize("kind", ["uint16", "float"])
def test_a_warned_run_repeats_the_finding_and_records_it_in_the_output(capsys, scans, ct_model, tmp_path, kind):
    out = tmp_path / "out.zarr"
    code, err = _pipeline(capsys, scans[kind], out, ct_model, "--intensity_check", "warn", "--keep-intermediates")
    assert code == 0, err
    lines = err.splitlines()
    assert sum(ln.startswith("warning: the input's intensities do not match") for ln in lines) == 1, err
    brief = "warning: input intensities on another scale than the model's training range (0.0% of sampled " \
            "voxels in [5, 250], input ["
    summary = [ln for ln in lines if ln.startswith("predict part 0/1:")]
    assert summary and brief in summary[-1], err  # the part's summary says it again
    assert lines[-1].startswith("== pipeline done") and brief in lines[-1], err  # and the last line
    assert "recorded in the output's vesuvius.intensity_warning attribute" in lines[-1]

    note = _attrs(out)["vesuvius"]["intensity_warning"]
    assert note["trained_range"] == [5.0, 250.0] and note["fraction_outside"] == 1.0
    assert note["dtype"] == str(zarr.open_array(str(scans[kind]), mode="r").dtype) and note["channel"] == 0
    top = 65535 if kind == "uint16" else 1.0
    assert note["input_range"][1] <= top and note["input_range"][1] > top / 2
    assert note["another_scale"] is True and note["check"] == "warn" and note["scheme"] == "CTNormalization"
    assert note["message"].startswith("the input's intensities do not match")
    assert _attrs(out)["vesuvius"]["complete"] is True
    assert zarr.open_group(str(out), mode="r")["0"].attrs["vesuvius"]["intensity_warning"] == note
    marker = json.loads((tmp_path / "out.zarr_work" / "parts" / "part_00000.json").read_text())
    assert marker["intensity_warning"] == note  # what blend and finalize carried into the output


def test_worker_processes_do_not_repeat_the_warning_but_their_summaries_carry_it(capsys, scans, ct_model, tmp_path):
    """Two CPU workers (subprocesses): the preflight's line once, each part's summary with the finding."""
    out = tmp_path / "out.zarr"
    code = cli.main(["pipeline", "--input", str(scans["float"]), "--output", str(out), "--model", str(ct_model),
                     "--devices", "cpu,cpu", "--disable-tta", "--intensity_check", "warn"])
    err = capsys.readouterr().err  # the workers' lines pass through this process's stderr
    lines = err.splitlines()
    assert code == 0, err
    assert sum(ln.startswith("warning: the input's intensities do not match") for ln in lines) == 1, err
    parts = [ln for ln in lines if re.match(r"predict part [01]/2: ", ln)]
    assert len(parts) == 2 and all("; warning: input intensities on another scale" in ln for ln in parts), err
    assert _attrs(out)["vesuvius"]["intensity_warning"]["dtype"] == "float32"


def test_the_finding_travels_from_the_parts_through_blended_logits_to_the_final_output(capsys, scans, ct_model,
                                                                                      tmp_path):
    parts, blended, final = tmp_path / "parts", tmp_path / "blended.zarr", tmp_path / "final.zarr"
    assert cli.main(["predict", "--model_path", str(ct_model), "--input_dir", str(scans["uint16"]), "--output_dir",
                     str(parts), "--device", "cpu", "--disable_tta", "--intensity_check", "warn"]) == 0
    err = capsys.readouterr().err
    assert "predict part 0/1:" in err and "; warning: input intensities on another scale" in err.split(
        "predict part 0/1:")[-1], err
    assert cli.main(["blend", str(parts), str(blended)]) == 0
    note = zarr.open_array(str(blended), mode="r").attrs["vesuvius"]["intensity_warning"]
    assert note["dtype"] == "uint16" and note["another_scale"]
    assert cli.main(["finalize", str(blended), str(final)]) == 0
    err = capsys.readouterr().err
    assert _attrs(final)["vesuvius"]["intensity_warning"] == note
    assert "recorded in its vesuvius.intensity_warning attribute" in err.strip().splitlines()[-1], err


def test_a_mild_mismatch_is_warned_by_default_and_refused_by_error(capsys, scans, ct_model, tmp_path):
    """Air around the scroll is below the training range, on its scale: a --bbox there can be meant."""
    code, err = _pipeline(capsys, scans["air"], tmp_path / "a.zarr", ct_model, "--intensity_check", "auto")
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: the input's intensities do not match")]
    assert len(warned) == 1 and "on another scale" not in warned[0] and "[0, 3] (uint8)" in warned[0], err
    assert "--intensity_check error refuses it" in warned[0] and "check that the region holds papyrus" in warned[0]
    assert "outside the model's training range" in err.strip().splitlines()[-1]
    code, err = _pipeline(capsys, scans["air"], tmp_path / "b.zarr", ct_model, "--intensity_check", "error")
    assert code == 3 and err.strip().splitlines()[-1].startswith("error: the input's intensities do not match"), err


def test_no_finding_on_the_training_scale_with_a_scale_free_scheme_or_with_off(capsys, scans, ct_model,
                                                                               model_factory, tmp_path):
    """ZScore normalises by the volume's own mean and std: x * 257 gives the network the same input, so
    it has no trained range (the plans still record one: nnU-Net's fingerprint always does)."""
    zscore = model_factory(patch=(16, 32, 32), folds=(0,), normalization="ZScoreNormalization")
    code, err = _pipeline(capsys, scans["uint16"], tmp_path / "z.zarr", zscore)
    assert code == 0 and "intensit" not in err, err
    assert "intensity_warning" not in _attrs(tmp_path / "z.zarr")["vesuvius"]
    code, err = _pipeline(capsys, scans["uint8"], tmp_path / "a.zarr", ct_model, "--intensity_check", "error")
    assert code == 0 and "intensit" not in err, err
    assert "intensity_warning" not in _attrs(tmp_path / "a.zarr")["vesuvius"]
    code, err = _pipeline(capsys, scans["uint16"], tmp_path / "b.zarr", ct_model, "--intensity_check", "off")
    assert code == 0 and "intensit" not in err, err


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Input intensities"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_readme_rescaling_keeps_chunks_and_ome_metadata_and_passes_the_check(tmp_path):
    from ngff.fixtures import write_scroll_input
    from vesuvius_inference.contract.intensity import IntensityFinding
    from vesuvius_inference.contract.place import Place
    from vesuvius_inference.model.normalization import check_intensities
    from vesuvius_inference.store.volume import open_volume

    u8 = write_scroll_input(tmp_path / "u8.zarr", shape=(32, 64, 64), n_levels=2, chunks=(16, 32, 32))
    src = zarr.open_group(str(u8.path), mode="r")
    scan = zarr.open_group(str(tmp_path / "scan16.zarr"), mode="w", zarr_format=2)
    scan.attrs.update(dict(src.attrs))
    for name, a in src.arrays():  # the same scan as uint16, laid out as the public scans are
        b = scan.create_array(name, shape=a.shape, chunks=a.chunks, dtype="uint16", fill_value=0,
                              compressors=a.compressors, chunk_key_encoding={"name": "v2", "separator": "/"})
        b[...] = a[...].astype(np.uint16) * 257

    namespace: dict = {}
    exec(compile(_readme_snippet(), "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    namespace["rescale"](str(tmp_path / "scan16.zarr"), str(tmp_path / "scan8.zarr"), namespace["uint16_to_uint8"])

    out = zarr.open_group(str(tmp_path / "scan8.zarr"), mode="r")
    assert dict(out.attrs) == dict(src.attrs) and out.metadata.zarr_format == 2
    for name, a in src.arrays():
        b = out[name]
        assert b.dtype == np.uint8 and b.chunks == a.chunks and b.shape == a.shape
        assert b.metadata.dimension_separator == "/"  # nested keys, as the public scans
        assert np.array_equal(b[...], a[...])  # (x * 257) // 256 == x for every uint8 x
    plans = json.loads(Path(cli.__file__).with_name("demo").joinpath("model", "plans.json").read_text())
    schemes = plans["configurations"]["3d_fullres"]["normalization_schemes"]
    assert isinstance(check_intensities(open_volume(Place(str(tmp_path / "scan16.zarr")), 0), plans, schemes),
                      IntensityFinding)
    assert check_intensities(open_volume(Place(str(tmp_path / "scan8.zarr")), 0), plans, schemes) is None

    floats = zarr.open_array(str(tmp_path / "f.zarr"), mode="w", shape=(8, 8, 8), chunks=(4, 8, 8), dtype="float32",
                             zarr_format=3)
    floats[...] = np.linspace(0, 1, 512, dtype=np.float32).reshape(8, 8, 8)
    namespace["rescale"](str(tmp_path / "f.zarr"), str(tmp_path / "f8.zarr"), namespace["unit_float_to_uint8"])
    back = zarr.open_array(str(tmp_path / "f8.zarr"), mode="r")
    assert back.dtype == np.uint8 and back.chunks == (4, 8, 8) and back[...].max() == 255 and back[0, 0, 0] == 0
