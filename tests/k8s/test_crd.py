"""The CRD: a valid apiextensions/v1 object; samples pass; bad specs fail with the right message."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s.crd_check import load_crd, validate

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


@pytest.mark.parametrize("version", ["1.33.0", "1.35.0"])
def test_crd_is_valid_apiextensions_v1(version):
    crd = load_crd()
    kubernetes_validate.validate(crd, version, strict=True)
    v = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["ij"] and v["subresources"] == {"status": {}}
    assert [c["name"] for c in v["additionalPrinterColumns"]] == ["Phase", "Reason", "Parts", "Done", "ETA", "Stage", "Age", "Work", "Rate", "Message"]


def _schema_defaults(schema: dict) -> dict:
    """The object the API server's defaulting makes of an empty spec (objects with default {} recurse)."""
    out = {}
    for key, prop in schema.get("properties", {}).items():
        if prop.get("type") == "object" and "default" in prop:
            out[key] = {**prop["default"], **_schema_defaults(prop)}
        elif "default" in prop:
            out[key] = prop["default"]
    return out


def test_operator_applies_the_same_defaults_as_the_crd():
    """Objects stored before a default existed reach the operator without it: spec.py fills the same values."""
    from vesuvius_inference.k8s.spec import DEFAULTS

    crd = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    from_crd = _schema_defaults(crd)
    from_crd["input"] = _schema_defaults(crd["properties"]["input"])  # input has no default of its own
    assert from_crd == DEFAULTS


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
def test_samples_are_valid(name):
    obj = yaml.safe_load((SAMPLES / name).read_text())
    assert validate(obj) == []


def minimal():
    return yaml.safe_load((SAMPLES / "minimal.yaml").read_text())


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s["input"].update(uri="ftp://x/y.zarr"), "uri must start with"),
    (lambda s: s["output"].update(uri="https://x/out.zarr"), "http is read-only"),
    (lambda s: s.update(workdir="http://x/work"), "http is read-only"),
    (lambda s: s.update(workdir=s["output"]["uri"]), "workdir must differ"),
    (lambda s: s.update(inference={"bbox": "0:10,0:10"}), "does not match"),
    (lambda s: s.update(retry={"nonRetryableExitCodes": [0]}), "less than the minimum"),
    (lambda s: s["output"].update(uri=s["input"]["uri"]), "output.uri must differ from input.uri"),
    (lambda s: s.update(parts=0), "less than the minimum"),
    (lambda s: s.update(partition="4-2"), "does not match"),
    (lambda s: s.update(partition="0x4"), "does not match"),
    (lambda s: s.update(parts=100001), "greater than the maximum"),
    (lambda s: s.update(parts=4, parallelism=8), "parallelism must not exceed parts"),
    (lambda s: s.update(mode="semantic"), "is not one of"),
    (lambda s: s.update(inference={"overlap": 1.5}), "greater than"),
    (lambda s: s.pop("model"), "'model' is a required property"),
    (lambda s: s.update(queueName="gpu queue"), "does not match"),
    (lambda s: s.update(nodeSelector={"pool": "a b"}), "does not match"),
    (lambda s: s.update(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
     "value must be empty when operator is Exists"),
    (lambda s: s.update(predict={"tolerations": [{"key": "k", "operator": "Exists", "tolerationSeconds": 5}]}),
     "tolerationSeconds needs effect NoExecute"),
    (lambda s: s.update(serviceAccountName="Not_A_Name"), "does not match"),
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
        assert any("immutable" in e or "cannot be added to or removed" in e for e in validate(bad, old)), change
    lowered = copy.deepcopy(new)
    lowered["spec"]["retryFailedParts"] = 0
    assert any("can only increase" in e for e in validate(lowered, new))


def test_names_the_child_jobs_could_not_carry_are_rejected_at_admission():
    """Root-level CEL on metadata.name: the Jobs' names and pod hostnames must fit (see names.py)."""
    obj = minimal()
    obj["spec"]["parts"] = 512
    obj["metadata"]["name"] = "a" * 51
    assert validate(obj) == []
    obj["metadata"]["name"] = "a" * 52
    assert any(f"{'a' * 52}-predict-511 must be at most 63 characters" in e for e in validate(obj))
    obj["metadata"]["name"] = "with.dot"
    assert any("must be a DNS-1123 label" in e for e in validate(obj))
    # a retryFailedParts bump that would make the retry Job's hostname too long is refused on update
    old = minimal()
    old["metadata"]["name"] = "b" * 50
    old["spec"]["parts"] = 10
    new = copy.deepcopy(old)
    new["spec"]["retryFailedParts"] = 9
    assert validate(new, old) == []
    new["spec"]["retryFailedParts"] = 10
    assert any("-predict-r10-9 must be at most 63 characters" in e for e in validate(new, old))
