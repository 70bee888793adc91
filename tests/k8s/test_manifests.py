"""Spec -> Job manifests: valid for Kubernetes 1.33 and 1.35, and the pods run our real CLI."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from vesuvius_inference.cli import blend_parser, finalize_parser, predict_parser
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.ranges import count_ranges, format_ranges, parse_ranges

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def sample(name):
    return specmod.parse(yaml.safe_load((SAMPLES / name).read_text())["spec"])


def all_jobs(spec):
    d = manifests.OperatorDefaults(gpu_node_selector={"gpu": "yes"}, queue_name="q1")
    return [manifests.predict_job("ij", "ns", "uid-1", spec, d),
            manifests.predict_job("ij", "ns", "uid-1", spec, d, part_ids=[3, 4, 5, 9], attempt=1),
            manifests.blend_job("ij", "ns", "uid-1", spec, d), manifests.finalize_job("ij", "ns", "uid-1", spec, d)]


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
@pytest.mark.parametrize("version", ["1.33.0", "1.35.0"])
def test_every_job_validates_strictly(name, version):
    for job in all_jobs(sample(name)):
        kubernetes_validate.validate(job, version, strict=True)


def test_predict_job_shape_and_cli_contract():
    s = sample("full.yaml")
    job = manifests.predict_job("ij", "scrolls", "u", s)
    js = job["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == 512 and js["parallelism"] == 64
    assert js["backoffLimitPerIndex"] == 3 and js["maxFailedIndexes"] == 10 and js["podReplacementPolicy"] == "Failed"
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1]["action"] == "FailIndex" and rules[1]["onExitCodes"]["values"] == [2, 3]
    pod = js["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False
    assert c["envFrom"] == [{"secretRef": {"name": "scroll-s3-credentials"}}]
    assert not any("SECRET" in e["name"] for e in c["env"])  # credentials only through the Secret
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "7") for a in c["args"]]
    assert args[0] == "predict"
    parsed = predict_parser().parse_args(args[1:])  # the real parser: a manifest flag it lacks fails here
    assert (parsed.part_id, parsed.num_parts, parsed.batch_size, parsed.folds, parsed.patch_size) == (
        7, 512, 4, ["0", "1", "2", "3", "4"], (192, 192, 192))
    assert parsed.input_dir == "s3://scrollprize-volumes/PHerc1218.zarr/0" and parsed.input_anon
    assert parsed.output_dir == "s3://scratch/PHerc1218/work/parts"


def test_retry_job_maps_indexes_to_failed_parts():
    s = sample("minimal.yaml")
    s = specmod.parse(dict(s.raw, parts=100))
    job = manifests.predict_job("ij", "ns", "u", s, part_ids=[3, 17, 40, 41, 42], attempt=2)
    assert job["metadata"]["name"] == "ij-predict-r2" and job["spec"]["completions"] == 5
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = predict_parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in args[1:]])
    assert parsed.part_ids == "3,17,40-42" and sorted(parse_ranges(parsed.part_ids))[parsed.part_id] == 17
    assert parsed.num_parts == 100


def test_blend_and_finalize_jobs():
    s = sample("full.yaml")
    b = manifests.blend_job("ij", "ns", "u", s)
    assert b["spec"]["completionMode"] == "Indexed" and b["spec"]["completions"] == 32
    parsed = blend_parser().parse_args([a.replace("$(JOB_COMPLETION_INDEX)", "3") for a in
                                        b["spec"]["template"]["spec"]["containers"][0]["args"][1:]])
    assert (parsed.num_parts, parsed.part_id, parsed.output) == (32, 3, "s3://scratch/PHerc1218/work/blended.zarr")
    assert "nvidia.com/gpu" not in b["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    m = specmod.parse(yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"])
    f = manifests.finalize_job("ij", "ns", "u", m)
    assert f["spec"]["completionMode"] == "NonIndexed" and f["spec"]["podFailurePolicy"]["rules"][1]["action"] == "FailJob"
    parsed = finalize_parser().parse_args(f["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert parsed.delete_intermediates and parsed.output == "s3://results/PHerc0332/surface.zarr"


def test_spec_validation_beyond_the_schema():
    ok = sample("minimal.yaml")
    assert specmod.validate(ok) == []
    bad = specmod.parse(dict(ok.raw, workdir=ok["output"]["uri"]))
    assert any("workdir" in e for e in specmod.validate(bad))
    bad = specmod.parse(dict(ok.raw, inference={"folds": [0, 0]}))
    assert any("duplicates" in e for e in specmod.validate(bad))
    bad = specmod.parse(dict(ok.raw, input={"uri": "ftp://x"}))
    assert any("no known scheme" in e for e in specmod.validate(bad))


def test_ranges_are_compact_for_100000_parts():
    done = set(range(100000)) - {5, 77777}
    text = format_ranges(done)
    assert text == "0-4,6-77776,77778-99999" and parse_ranges(text) == done and count_ranges(text) == 99998
    assert format_ranges([]) == "" and parse_ranges("") == set()
    with pytest.raises(ValueError):
        parse_ranges("5-3")


def test_stage_scheduling_adds_to_the_spec_wide_settings():
    s = sample("full.yaml")
    d = manifests.OperatorDefaults(gpu_node_selector={"operator-default": "gpu"})
    pred, blend, fin = (j["spec"]["template"]["spec"] for j in (manifests.predict_job("ij", "ns", "u", s, d),
                                                                 manifests.blend_job("ij", "ns", "u", s, d),
                                                                 manifests.finalize_job("ij", "ns", "u", s, d)))
    region = {"topology.kubernetes.io/region": "us-east-1"}
    assert pred["nodeSelector"] == {**region, "nvidia.com/gpu.present": "true"}
    assert blend["nodeSelector"] == {**region, "node.kubernetes.io/instance-type": "c7i.4xlarge"}
    assert fin["nodeSelector"] == region  # the spec's own selector replaces the operator's GPU default
    spot = s["tolerations"][0]
    assert pred["tolerations"] == [spot, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert blend["tolerations"] == [spot, {"key": "batch", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}]
    assert fin["tolerations"] == [spot]
    # a spec without scheduling: the operator's GPU defaults on predict only
    m = sample("minimal.yaml")
    mp = manifests.predict_job("ij", "ns", "u", m, d)["spec"]["template"]["spec"]
    mb = manifests.blend_job("ij", "ns", "u", m, d)["spec"]["template"]["spec"]
    assert mp["nodeSelector"] == {"operator-default": "gpu"} and mp["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in mb and "tolerations" not in mb
    # per-stage caches reach the CLI
    idx = "$(JOB_COMPLETION_INDEX)"
    bargs = blend_parser().parse_args([a.replace(idx, "0") for a in manifests.blend_args(s)[1:]])
    fargs = finalize_parser().parse_args([a.replace(idx, "0") for a in manifests.finalize_args(s)[1:]])
    assert (bargs.cache_gb, fargs.cache_gb) == (8.0, 4.0)


def test_quantities_are_strings_and_finalize_removes_every_intermediate():
    """kubernetes-client 37 refuses integer quantities; the workdir is gone after a run unless kept."""
    s = sample("full.yaml")
    for job in all_jobs(s):
        for key, quantities in job["spec"]["template"]["spec"]["containers"][0]["resources"].items():
            assert all(isinstance(v, str) for v in quantities.values()), (key, quantities)
    m = sample("minimal.yaml")
    args = finalize_parser().parse_args(manifests.finalize_args(m)[1:])
    assert args.delete_intermediates and args.also_delete == [manifests.parts_dir(m)]
    assert args.input == manifests.blended_uri(m) and {args.input, *args.also_delete} == {
        m.workdir + "/blended.zarr", m.workdir + "/parts"}
    kept = specmod.parse(dict(m.raw, keepIntermediates=True))
    args = finalize_parser().parse_args(manifests.finalize_args(kept)[1:])
    assert not args.delete_intermediates and not args.also_delete
