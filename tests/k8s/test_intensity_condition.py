"""The operator raises IntensityOutOfRange from what the predict pods said (issue 23, point 5).

The real kopf operator against KMock, with real predict pods run by the Job controller fixture, on a
uint16 scan in moto's S3 and a CTNormalization model trained (by its plans) on 0..255: by default the
parts refuse it (exit 3) and the run fails with the condition naming the rescaling; with
``intensityCheck: warn`` the run succeeds, with the condition, and the output records the finding.
"""

from __future__ import annotations

import pytest
import yaml
import zarr
from plugins.k8s import SAMPLE, VOLUME_CHUNKS, cond

pytestmark = pytest.mark.slow

CT_MODEL = "s3://models/ct-nnunet"
U16_SCAN = "s3://scrolls/PHerc0332-u16/volume.zarr"


@pytest.fixture(scope="module")
def uint16_scan(e2e_storage, model_factory):
    """The e2e scan as uint16 (x * 257) and a CT model (plans' foreground range [5, 250]) in S3, written once
    for the module's tests (which only read them)."""
    import numpy as np
    import s3fs
    from helpers import write_zarr

    with pytest.MonkeyPatch.context() as mp:
        for k, v in e2e_storage.env.items():
            mp.setenv(k, v)
        model = model_factory(patch=(32, 32, 32), folds=(0,), features=(2, 4, 8), normalization="CTNormalization")
        fs = s3fs.S3FileSystem()
        for f in sorted(model.rglob("*")):
            if f.is_file():
                fs.put_file(str(f), f"{CT_MODEL[len('s3://'):]}/{f.relative_to(model)}")
        write_zarr(U16_SCAN, e2e_storage.volume.astype(np.uint16) * 257, chunks=VOLUME_CHUNKS)
    return U16_SCAN


def _spec(name: str, **inference) -> dict:
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = name
    body["spec"]["input"]["uri"] = U16_SCAN
    body["spec"]["model"]["uri"] = CT_MODEL
    body["spec"]["output"]["uri"] = f"s3://results/{name}/surface.zarr"
    body["spec"]["inference"] = {"tta": False, "device": "cpu", **inference}  # the emulated nodes have no GPU
    return body


def _warnings(cluster, name: str) -> list[dict]:
    return [e for e in cluster.events(name) if e["reason"] == "IntensityOutOfRange" and e["type"] == "Warning"]


def test_a_uint16_scan_fails_the_run_by_default_with_the_condition(cluster, operator, controller, uint16_scan):
    cluster.create_ij(_spec("u16-default"))
    failed = cluster.wait_phase("u16-default", "Failed", timeout=240)
    c = cluster.wait("the condition", lambda: cond(cluster.ij("u16-default"), "IntensityOutOfRange"))
    assert c["status"] == "True" and c["reason"] == "OnAnotherScale", c
    assert c["message"].startswith("predict pod u16-default-predict-0-") and " refused the input: " in c["message"]
    assert "the input's intensities do not match the model's training data: they are on another scale" in c["message"]
    assert "[5, 250]" in c["message"] and "(uint16)" in c["message"] and "divide by 256" in c["message"]
    assert [r.exit_code for r in controller.results if r.job == "u16-default-predict"] == [3]  # no retry
    assert failed["status"]["stage"] == "predict"
    assert len(_warnings(cluster, "u16-default")) == 1


def test_a_warned_run_succeeds_with_the_condition_and_the_output_records_it(cluster, operator, controller,
                                                                           uint16_scan):
    cluster.create_ij(_spec("u16-warn", intensityCheck="warn"))
    done = cluster.wait_phase("u16-warn", "Succeeded", timeout=240)
    c = cond(done, "IntensityOutOfRange")
    assert c and c["status"] == "True" and c["reason"] == "OnAnotherScale", done["status"]
    assert " ran on with a warning: the input's intensities do not match" in c["message"], c
    assert "--intensity_check error refuses it" not in c["message"]  # warn: no advice to refuse
    assert len(_warnings(cluster, "u16-warn")) == 1
    note = dict(zarr.open_group("s3://results/u16-warn/surface.zarr", mode="r", zarr_format=3).attrs)[
        "vesuvius"]["intensity_warning"]
    assert note["dtype"] == "uint16" and note["trained_range"] == [5.0, 250.0] and note["check"] == "warn"
    assert note["fraction_outside"] == 1.0 and note["another_scale"] is True


def test_a_scan_on_the_training_scale_gets_the_condition_false(cluster, operator, controller, s3_env, uint16_scan):
    body = _spec("u8-ct")
    body["spec"]["input"]["uri"] = "s3://scrolls/PHerc0332/volume.zarr"  # the same scan as uint8
    cluster.create_ij(body)
    done = cluster.wait_phase("u8-ct", "Succeeded", timeout=240)
    c = cond(done, "IntensityOutOfRange")
    assert c and c["status"] == "False" and c["reason"] == "NoneReported", done["status"]
    assert not _warnings(cluster, "u8-ct")


def test_the_first_word_is_kept_and_stops_the_reads():
    """Pure: a pod's report sets the condition once (with one Warning Event); later passes keep it as it was
    and the observer no longer reads (``wanted``); ``intensityCheck: off`` never reads."""
    from vesuvius_inference.contract.intensity import Reported
    from vesuvius_inference.k8s import inputcheck

    line = "the input's intensities do not match the model's training data: 0.5% of 10 sampled voxels ..."
    conds, events = inputcheck.carry([], [], Reported(True, "ij-predict-0-abc", line), now="T1", generation=1)
    assert [(c["type"], c["status"], c["reason"]) for c in conds] == [
        ("IntensityOutOfRange", "True", "OutsideTrainingRange")]
    assert events == [("Warning", "IntensityOutOfRange", conds[0]["message"])]
    assert conds[0]["message"] == f"predict pod ij-predict-0-abc ran on with a warning: {line}"
    kept, again = inputcheck.carry([], conds, Reported(False, "ij-predict-1-def"), now="T2", generation=1)
    assert kept == conds and not again
    assert not inputcheck.wanted({"spec": {}, "status": {"conditions": conds}})
    assert inputcheck.wanted({"spec": {}, "status": {}})
    assert not inputcheck.wanted({"spec": {"inference": {"intensityCheck": "off"}}, "status": {}})
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Running"}}
    assert inputcheck.from_pod(pod, "loading the model\n") is None  # not checked yet: read again later
    said = inputcheck.from_pod(pod, "progress predict 0/1: 0/8 patches (0.0%), - patches/s, ETA -\n")
    assert said == Reported(False, "p")
