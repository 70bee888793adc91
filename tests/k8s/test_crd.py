"""The CRD: a valid apiextensions/v1 object; samples pass; bad specs fail with the right message."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from crd_check import load_crd, validate

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


@pytest.mark.parametrize("version", ["1.33.0", "1.35.0"])
def test_crd_is_valid_apiextensions_v1(version):
    crd = load_crd()
    kubernetes_validate.validate(crd, version, strict=True)
    v = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ij"] and v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == ["Phase", "Parts", "Stage", "Age"]


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
def test_samples_are_valid(name):
    obj = yaml.safe_load((SAMPLES / name).read_text())
    assert validate(obj) == []


def minimal():
    return yaml.safe_load((SAMPLES / "minimal.yaml").read_text())


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s["input"].update(uri="ftp://x/y.zarr"), "uri must start with"),
    (lambda s: s["output"].update(uri="https://x/out.zarr"), "http is read-only"),
    (lambda s: s["output"].update(uri=s["input"]["uri"]), "output.uri must differ from input.uri"),
    (lambda s: s.update(parts=0), "less than the minimum"),
    (lambda s: s.update(parts=100001), "greater than the maximum"),
    (lambda s: s.update(parts=4, parallelism=8), "parallelism must not exceed parts"),
    (lambda s: s.update(mode="semantic"), "is not one of"),
    (lambda s: s.update(inference={"overlap": 1.5}), "greater than the maximum"),
    (lambda s: s.pop("model"), "'model' is a required property"),
])
def test_bad_specs_are_rejected(mutate, message):
    obj = minimal()
    mutate(obj["spec"])
    errors = validate(obj)
    assert any(message in e for e in errors), errors


def test_spec_is_immutable_except_suspend_parallelism_and_retry():
    old = minimal()
    old["spec"]["parts"] = 8
    new = copy.deepcopy(old)
    new["spec"].update(suspend=True, parallelism=2, retryFailedParts=1)
    assert validate(new, old) == []
    for change in (lambda s: s.update(parts=9), lambda s: s["model"].update(uri="s3://models/other/"),
                   lambda s: s.update(inference={"overlap": 0.25}), lambda s: s.update(workdir="s3://scratch/w")):
        bad = copy.deepcopy(old)
        change(bad["spec"])
        assert any("immutable" in e for e in validate(bad, old))
