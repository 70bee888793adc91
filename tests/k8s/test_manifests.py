"""Spec -> Job manifests: valid for Kubernetes 1.33 and 1.35, and the pods run our real CLI."""

from __future__ import annotations

import functools
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from vesuvius_inference.cli import parse
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
    for job in variants(sample(name)):
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
    parsed = parse("predict", args[1:])  # the real parser: a manifest flag it lacks fails here
    assert (parsed.part_id, parsed.num_parts, parsed.batch_size, parsed.folds, parsed.patch_size) == (
        7, 512, 4, ("0", "1", "2", "3", "4"), (192, 192, 192))
    assert parsed.input_dir == "s3://scrollprize-volumes/PHerc1218.zarr/0" and parsed.input_anon
    assert parsed.output_dir == "s3://scratch/PHerc1218/work/parts"
    # each part writes the output rows it alone covers, finalized: the spec's output, mode and threshold
    assert (parsed.final_output, parsed.mode, parsed.threshold) == (s["output"]["uri"], s["mode"], s["threshold"])


def test_retry_job_maps_indexes_to_failed_parts():
    s = sample("minimal.yaml")
    s = specmod.parse(dict(s.raw, parts=100))
    job = manifests.predict_job("ij", "ns", "u", s, part_ids=[3, 17, 40, 41, 42], attempt=2)
    assert job["metadata"]["name"] == "ij-predict-r2" and job["spec"]["completions"] == 5
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = parse("predict", [a.replace("$(JOB_COMPLETION_INDEX)", "1") for a in args[1:]])
    assert parsed.part_ids == "3,17,40-42" and sorted(parse_ranges(parsed.part_ids))[parsed.part_id] == 17
    assert parsed.num_parts == 100


def test_blend_and_finalize_jobs():
    s = sample("full.yaml")
    b = manifests.blend_job("ij", "ns", "u", s)
    assert b["spec"]["completionMode"] == "Indexed" and b["spec"]["completions"] == 32
    parsed = parse("blend", [a.replace("$(JOB_COMPLETION_INDEX)", "3") for a in
                                        b["spec"]["template"]["spec"]["containers"][0]["args"][1:]])
    # blend finishes the seams of the output the parts wrote; the pyramid is left to finalize
    assert (parsed.num_parts, parsed.part_id, parsed.output) == (32, 3, s["output"]["uri"]) and parsed.seams_only
    assert parsed.parts_dir == manifests.parts_dir(s)
    assert "nvidia.com/gpu" not in b["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    m = specmod.parse(yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"])
    f = manifests.finalize_job("ij", "ns", "u", m)
    assert f["spec"]["completionMode"] == "NonIndexed" and f["spec"]["podFailurePolicy"]["rules"][1]["action"] == "FailJob"
    parsed = parse("finalize", f["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert parsed.delete_intermediates and parsed.output_path == "s3://results/PHerc0332/surface.zarr"
    assert parsed.input_path == manifests.parts_dir(m) and parsed.input_kind == "parts"  # a fused output: finalize builds its pyramid from the parts


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
    bargs = parse("blend", [a.replace(idx, "0") for a in manifests.blend_args(s)[1:]])
    fargs = parse("finalize", [a.replace(idx, "0") for a in manifests.finalize_args(s)[1:]])
    assert (bargs.cache_gb, fargs.cache_gb) == (8.0, 4.0)


def test_quantities_are_strings_and_finalize_removes_every_intermediate():
    """kubernetes-client 37 refuses integer quantities; the workdir is gone after a run unless kept."""
    s = sample("full.yaml")
    for job in all_jobs(s):
        for key, quantities in job["spec"]["template"]["spec"]["containers"][0]["resources"].items():
            assert all(isinstance(v, str) for v in quantities.values()), (key, quantities)
    m = sample("minimal.yaml")
    args = parse("finalize", manifests.finalize_args(m)[1:])
    # the parts are the only intermediate (predict writes the output itself): finalize removes them, its INPUT
    assert args.delete_intermediates and args.input_path == manifests.parts_dir(m) == m.workdir + "/parts"
    kept = specmod.parse(dict(m.raw, keepIntermediates=True))
    args = parse("finalize", manifests.finalize_args(kept)[1:])
    assert not args.delete_intermediates and not args.also_delete


# ---- what the API server accepts (issue 8) ---------------------------------------------------------

def _validated(job):
    """The Job as the API server stores it (defaulting, a uid) and its validation errors."""
    import copy

    from job_validation import validate_job
    from kmock_api import default_job

    obj = copy.deepcopy(job)
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    default_job(obj)
    return validate_job(obj)


def variants(spec):
    """Every Job shape the operator creates: first predict, retries of few and many parts, indexed blend/finalize."""
    d = manifests.OperatorDefaults(gpu_node_selector={"gpu": "yes"}, queue_name="q1")
    jobs = all_jobs(spec)
    jobs.append(manifests.predict_job("ij", "ns", "u", spec, d, part_ids=[0], attempt=7))
    indexed = specmod.parse(dict(spec.raw, blend={"parallelism": 3}, finalize={"parallelism": 2}))
    jobs += [manifests.blend_job("ij", "ns", "u", indexed, d), manifests.finalize_job("ij", "ns", "u", indexed, d)]
    return jobs


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
def test_every_job_passes_the_api_servers_job_validation(name):
    """kubernetes-validate checks the schema only; job_validation ports ValidateJob's rules (maxFailedIndexes <=
    completions: a retry of 4 parts of the full sample, maxFailedParts 10, used to be refused)."""
    for job in variants(sample(name)):
        assert _validated(job) == [], job["metadata"]["name"]


def test_max_failed_parts_is_clamped_per_job_and_only_on_predict():
    s = sample("full.yaml")
    assert manifests.predict_job("ij", "ns", "u", s)["spec"]["maxFailedIndexes"] == 10
    assert manifests.predict_job("ij", "ns", "u", s, part_ids=[1, 2], attempt=1)["spec"]["maxFailedIndexes"] == 2
    assert "maxFailedIndexes" not in manifests.blend_job("ij", "ns", "u", s)["spec"]  # blend has no "parts"


def test_no_non_retryable_exit_codes_means_no_exit_code_rule():
    s = specmod.parse(dict(sample("minimal.yaml").raw, retry={"nonRetryableExitCodes": []}))
    for job in (manifests.predict_job("ij", "ns", "u", s), manifests.finalize_job("ij", "ns", "u", s)):
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        assert _validated(job) == []
    # what the API server says about the rule the operator used to write
    bad = manifests.predict_job("ij", "ns", "u", s)
    bad["spec"]["podFailurePolicy"]["rules"].append(
        {"action": "FailIndex", "onExitCodes": {"containerName": "predict", "operator": "In", "values": []}})
    assert any("onExitCodes.values: Invalid value: []: at least one value is required" in e for e in _validated(bad))


@pytest.mark.parametrize("resources, gpus, want", [
    ({}, 1, {"limits": {"nvidia.com/gpu": "1"}}),
    ({"limits": {"nvidia.com/gpu": 4}}, 1, {"limits": {"nvidia.com/gpu": "4"}}),  # the user's own count wins
    ({"requests": {"nvidia.com/gpu": 2}}, 1, {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}),
    ({"requests": {"cpu": "8"}}, 0, {"requests": {"cpu": "8"}}),
    ({"requests": {"example.com/fpga": 1, "cpu": 2}}, 1,
     {"requests": {"example.com/fpga": "1", "cpu": "2"}, "limits": {"example.com/fpga": "1", "nvidia.com/gpu": "1"}}),
])
def test_gpu_and_extended_resources_end_up_where_kubernetes_wants_them(resources, gpus, want):
    s = specmod.parse(dict(sample("minimal.yaml").raw, predict={"gpus": gpus, "resources": resources}))
    job = manifests.predict_job("ij", "ns", "u", s)
    assert job["spec"]["template"]["spec"]["containers"][0].get("resources", {}) == want
    assert _validated(job) == []


def test_the_api_server_refuses_what_the_operator_used_to_write():
    """The validator port itself: a GPU only under requests, and a request unequal to its limit."""
    s = sample("minimal.yaml")
    job = manifests.predict_job("ij", "ns", "u", s)
    res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    res.update(requests={"nvidia.com/gpu": "1"}, limits={"cpu": "2"})
    assert any("Limit must be set for non overcommitable resources" in e for e in _validated(job))
    res.update(requests={"nvidia.com/gpu": "1"}, limits={"nvidia.com/gpu": "2"})
    assert any("must be equal to nvidia.com/gpu limit of 2" in e for e in _validated(job))


@pytest.mark.parametrize("changes, fragment", [
    ({"predict": {"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}}},
     "must equal limits[nvidia.com/gpu]"),
    ({"predict": {"resources": {"limits": {"nvidia.com/gpu": "0.5"}}}}, "must be a whole number"),
    ({"blend": {"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}}, "exceeds limits[memory]"),
    ({"queueName": "team a"}, "not a valid label value"),
    ({"nodeSelector": {"bad key!": "x"}}, "not a valid label key"),
    ({"tolerations": [{"key": "spot", "operator": "Exists", "tolerationSeconds": 60}]}, "needs effect NoExecute"),
    ({"storage": {"secretName": "Not_A_Name"}}, "not a valid Secret name"),
])
def test_refusals_cover_what_the_jobs_would_break(changes, fragment):
    from vesuvius_inference.k8s.checks import refusals

    s = specmod.parse({**sample("minimal.yaml").raw, **changes})
    errors = refusals("minimal", s)
    assert any(fragment in e for e in errors), errors


def test_operator_defaults_are_checked_too():
    from vesuvius_inference.k8s.checks import refusals

    s = sample("minimal.yaml")
    assert refusals("minimal", s, manifests.OperatorDefaults(queue_name="gpu queue"))
    assert refusals("minimal", s, manifests.OperatorDefaults(gpu_node_selector={"pool": "a b"}))
    assert refusals("minimal", s, manifests.OperatorDefaults()) == []


@functools.cache
def _crd_schema():
    from crd_check import CompiledSchema, schema

    return CompiledSchema(schema())


def _crd_errors(doc):
    import copy

    from crd_check import apply_defaults

    return _crd_schema().errors(apply_defaults(_crd_schema().schema, copy.deepcopy(doc)))


@pytest.mark.parametrize("parts, blend, finalize, retry", [
    (512, 1, 1, 0), (512, 1, 1, 12), (1, 1, 1, 0), (10, 1000, 1, 0), (11, 1, 2, 0), (100000, 32, 32, 3)])
def test_crd_cel_and_the_operator_agree_on_name_lengths(parts, blend, finalize, retry):
    """At the longest accepted name both accept; one character more both refuse (the CRD at admission, the
    operator for API servers that skipped CEL), and then the API server would have refused a Job."""
    from vesuvius_inference.k8s.checks import refusals

    doc = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())
    doc["spec"].update(parts=parts, blend={"parallelism": blend}, finalize={"parallelism": finalize},
                       retryFailedParts=retry)
    longest = max(n for n in range(1, 64) if refusals("a" * n, specmod.parse(doc["spec"])) == [])
    for n, accept in ((longest, True), (longest + 1, False)):
        doc["metadata"]["name"] = "a" * n
        s = specmod.parse(doc["spec"])
        assert (_crd_errors(doc) == []) is accept and (refusals(doc["metadata"]["name"], s) == []) is accept, n
        jobs = [manifests.predict_job(doc["metadata"]["name"], "ns", "u", s),
                manifests.blend_job(doc["metadata"]["name"], "ns", "u", s),
                manifests.finalize_job(doc["metadata"]["name"], "ns", "u", s)]
        if retry:
            jobs.append(manifests.predict_job(doc["metadata"]["name"], "ns", "u", s, part_ids=range(parts),
                                              attempt=retry))
        assert all(_validated(j) == [] for j in jobs) is accept, n
