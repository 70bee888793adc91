"""Spec -> Job manifests: valid for Kubernetes 1.33 and 1.35, and the pods run our real CLI."""

from __future__ import annotations

import functools
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from vesuvius_inference.cli import parse
from vesuvius_inference.contract import paths
from vesuvius_inference.contract.ranges import count_ranges, format_ranges, parse_ranges
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def sample(name):
    return specmod.parse(yaml.safe_load((SAMPLES / name).read_text())["spec"])


def expand(args, index="7"):
    """The kubelet's $(VAR) expansion of a pod's args: the Job controller's index."""
    return [a.replace("$(JOB_COMPLETION_INDEX)", index) for a in args]


def all_jobs(spec):
    d = manifests.OperatorDefaults(gpu_node_selector={"gpu": "yes"}, queue_name="q1")
    return [manifests.predict_job("ij", "ns", "uid-1", spec=spec, defaults=d),
            manifests.predict_job("ij", "ns", "uid-1", spec=spec, defaults=d, part_ids=[3, 4, 5, 9], attempt=1),
            manifests.blend_job("ij", "ns", "uid-1", spec=spec, defaults=d), manifests.finalize_job("ij", "ns", "uid-1", spec=spec, defaults=d)]


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
@pytest.mark.parametrize("version", ["1.33.0", "1.35.0"])
def test_every_job_validates_strictly(name, version):
    for job in variants(sample(name)):
        kubernetes_validate.validate(job, version, strict=True)


def test_predict_job_shape_and_cli_contract(monkeypatch):
    # memory requested below its limit: the kubelet may evict such a pod for its own use, so it keeps the bound
    # on disruptions (a request equal to the limit needs none: test_disruptions.py)
    s = sample("full.yaml")
    s = specmod.parse(dict(s.raw, predict=dict(s["predict"], resources={"requests": {"cpu": "8", "memory": "40Gi"},
                                                                         "limits": {"memory": "48Gi"}})))
    job = manifests.predict_job("ij", "scrolls", "u", spec=s)
    js = job["spec"]
    assert js["completionMode"] == "Indexed" and js["completions"] == 64 and js["parallelism"] == 64
    assert js["backoffLimitPerIndex"] == 3 and js["maxFailedIndexes"] == 10 and js["podReplacementPolicy"] == "Failed"
    rules = js["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # 80: stopped on request after a checkpoint (SIGTERM): ignored before anything could fail the index on it
    assert rules[1] == {"action": "Ignore", "onExitCodes": {"containerName": "predict", "operator": "In",
                                                            "values": [80]}}
    # 79: the worker's refusal to start a part disrupted more than retry.maxDisruptionsPerPart times
    assert rules[2]["action"] == "FailIndex" and rules[2]["onExitCodes"]["values"] == [2, 3, 79]
    pod = js["template"]["spec"]
    c = pod["containers"][0]
    assert pod["restartPolicy"] == "Never" and c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["automountServiceAccountToken"] is False
    assert c["envFrom"] == [{"secretRef": {"name": "scroll-s3-credentials"}}]
    assert not any("SECRET" in e["name"] for e in c["env"])  # credentials only through the Secret
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    args = expand(c["args"])
    assert args[0] == "predict" and "--quiet" not in args  # pods log progress lines
    parsed = parse("predict", args[1:])  # the real parser: a manifest flag it lacks fails here
    assert (parsed.disruptions, parsed.max_disruptions) == (0, 5)  # no annotation yet: none
    monkeypatch.setenv("VESUVIUS_DISRUPTIONS", "2")  # the downward API's copy of the Job controller's count
    assert parse("predict", args[1:]).disruptions == 2
    env = {e["name"]: e for e in c["env"]}
    assert env["VESUVIUS_DISRUPTIONS"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-index-ignored-failure-count']"
    assert env["VESUVIUS_CPUS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": "predict", "resource": "requests.cpu", "divisor": "1"}
    assert (parsed.part_id, parsed.num_parts, parsed.batch_size, parsed.folds, parsed.patch_size) == (
        7, 64, 4, ("0", "1", "2", "3", "4"), (192, 192, 192))
    assert parsed.input_dir == "s3://scrollprize-volumes/PHerc1218.zarr/0" and parsed.input_anon
    assert parsed.output_dir == "s3://scratch/PHerc1218/work/parts"
    # each part writes the output rows it alone covers, finalized: the spec's output, mode and threshold
    assert (parsed.final_output, parsed.mode, parsed.threshold) == (s["output"]["uri"], s["mode"], s["threshold"])


def podinfo_file(job, tmp_path):
    """What the kubelet writes for the downward API volume: the pod's annotation (copied from the template)."""
    pod = job["spec"]["template"]
    item = next(v for v in pod["spec"]["volumes"] if v["name"] == "podinfo")["downwardAPI"]["items"][0]
    key = item["fieldRef"]["fieldPath"].split("'")[1]
    path = tmp_path / item["path"]
    path.write_text(pod["metadata"]["annotations"][key])
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "podinfo")
    return mount["mountPath"] + "/" + item["path"], str(path)


def test_retry_job_maps_indexes_to_failed_parts(tmp_path):
    from vesuvius_inference.contract.podopts import resolve_part

    s = sample("minimal.yaml")
    s = specmod.parse(dict(s.raw, parts=100))
    job = manifests.predict_job("ij", "ns", "u", spec=s, part_ids=[3, 17, 40, 41, 42], attempt=2)
    assert job["metadata"]["name"] == "ij-predict-r2" and job["spec"]["completions"] == 5
    assert job["metadata"]["annotations"] == {"vesuvius.dev/part-ids": "3,17,40-42"}
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--part_ids" not in args and "3,17,40-42" not in args  # state lives in the API object, not in args
    parsed = parse("predict", expand(args[1:], index="1"))
    in_pod, on_disk = podinfo_file(job, tmp_path)
    assert parsed.part_ids_file == in_pod and parsed.num_parts == 100
    assert resolve_part(parsed.part_id, parsed.part_ids, on_disk) == 17


def test_retried_part_ids_are_not_limited_by_argument_size(tmp_path):
    """50,000 scattered ids of 100,000 parts: as ranges about 290 KB, past the kernel's 128 KiB per argument
    and Kubernetes' 256 KiB for all annotations; encoded, a few KB, and every index maps back."""
    from k8s.kmock_api import default_job
    from vesuvius_inference.contract.podopts import resolve_part
    from vesuvius_inference.contract.ranges import format_ranges

    ids = list(range(1, 100000, 2))
    assert len(format_ranges(ids)) > 256 * 1024
    s = specmod.parse(dict(sample("minimal.yaml").raw, parts=100000))
    job = manifests.predict_job("ij", "ns", "u", spec=s, part_ids=ids, attempt=1)
    annotation = job["metadata"]["annotations"]["vesuvius.dev/part-ids"]
    assert len(annotation) < 64 * 1024 and job["spec"]["completions"] == 50000
    assert max(len(a) for a in job["spec"]["template"]["spec"]["containers"][0]["args"]) < 200
    _, on_disk = podinfo_file(job, tmp_path)
    for index in (0, 1, 24999, 49999):
        assert resolve_part(index, None, on_disk) == ids[index]
    stored = dict(job, metadata=dict(job["metadata"], uid="00000000-0000-0000-0000-000000000001"))
    default_job(stored)
    assert _validated(job) == []


def test_blend_and_finalize_jobs():
    s = sample("full.yaml")
    b = manifests.blend_job("ij", "ns", "u", spec=s)
    assert b["spec"]["completionMode"] == "Indexed" and b["spec"]["completions"] == 32
    parsed = parse("blend", expand(b["spec"]["template"]["spec"]["containers"][0]["args"][1:], "3"))
    # blend finishes the seams of the output the parts wrote; the pyramid is left to finalize
    assert (parsed.num_parts, parsed.part_id, parsed.output) == (32, 3, s["output"]["uri"]) and parsed.seams_only
    assert parsed.parts_dir == paths.parts_url(s.workdir)
    assert "nvidia.com/gpu" not in b["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {})
    m = specmod.parse(yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"])
    f = manifests.finalize_job("ij", "ns", "u", spec=m)
    assert f["spec"]["completionMode"] == "NonIndexed" and f["spec"]["podFailurePolicy"]["rules"][1]["action"] == "FailJob"
    parsed = parse("finalize", f["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    assert parsed.delete_intermediates and parsed.output_path == "s3://results/PHerc0332/surface.zarr"
    assert parsed.input_path == paths.parts_url(m.workdir) and parsed.input_kind == "parts"  # a fused output: finalize builds its pyramid from the parts


def test_spec_validation_beyond_the_schema():
    ok = sample("minimal.yaml")
    assert specmod.validate(ok) == []
    bad = specmod.parse(dict(ok.raw, workdir=ok["output"]["uri"]))
    assert any("workdir" in e for e in specmod.validate(bad))
    bad = specmod.parse(dict(ok.raw, inference={"folds": [0, 0]}))
    assert any("duplicates" in e for e in specmod.validate(bad))
    bad = specmod.parse(dict(ok.raw, input={"uri": "ftp://x"}))
    assert any("no known scheme" in e for e in specmod.validate(bad))
    bad = specmod.parse(dict(ok.raw, parts=7, partition="4x2"))
    assert any("partition 4x2 makes 8 parts, but parts is 7" in e for e in specmod.validate(bad))
    assert specmod.validate(specmod.parse(dict(ok.raw, parts=8, partition="4x2"))) == []


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
    pred, blend, fin = (j["spec"]["template"]["spec"] for j in (manifests.predict_job("ij", "ns", "u", spec=s, defaults=d),
                                                                 manifests.blend_job("ij", "ns", "u", spec=s, defaults=d),
                                                                 manifests.finalize_job("ij", "ns", "u", spec=s, defaults=d)))
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
    mp = manifests.predict_job("ij", "ns", "u", spec=m, defaults=d)["spec"]["template"]["spec"]
    mb = manifests.blend_job("ij", "ns", "u", spec=m, defaults=d)["spec"]["template"]["spec"]
    assert mp["nodeSelector"] == {"operator-default": "gpu"} and mp["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "nodeSelector" not in mb and "tolerations" not in mb
    # per-stage caches reach the CLI
    bargs = parse("blend", expand(manifests.blend_args(s)[1:], "0"))
    fargs = parse("finalize", expand(manifests.finalize_args(s)[1:], "0"))
    assert (bargs.cache_gb, fargs.cache_gb) == (8.0, 4.0)


def test_cpu_stages_never_inherit_the_gpu_queue():
    """spec.queueName and the chart's worker.queueName are the predict (GPU) stage's; blend, finalize and the
    check Jobs take their own queue or none."""
    m = sample("minimal.yaml")
    gpu_only = manifests.OperatorDefaults(queue_name="gpu-q")
    both = manifests.OperatorDefaults(queue_name="gpu-q", cpu_queue_name="cpu-q")
    own = specmod.parse(dict(m.raw, queueName="team-gpu", blend={"queueName": "team-cpu"}))

    def queues(s, d):
        jobs = [manifests.predict_job("ij", "ns", "u", spec=s, defaults=d), manifests.blend_job("ij", "ns", "u", spec=s, defaults=d),
                manifests.finalize_job("ij", "ns", "u", spec=s, defaults=d), manifests.check_job("ij", "ns", "u", spec=s, stage="finalize", lost_uid="lost-uid", defaults=d)]
        return [j["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") for j in jobs]

    assert queues(m, gpu_only) == ["gpu-q", None, None, None]
    assert queues(m, both) == ["gpu-q", "cpu-q", "cpu-q", "cpu-q"]
    assert queues(own, gpu_only) == ["team-gpu", "team-cpu", None, None]


def test_quantities_are_strings_and_finalize_removes_every_intermediate():
    """kubernetes-client 37 refuses integer quantities; the workdir is gone after a run unless kept."""
    s = sample("full.yaml")
    for job in all_jobs(s):
        for key, quantities in job["spec"]["template"]["spec"]["containers"][0]["resources"].items():
            assert all(isinstance(v, str) for v in quantities.values()), (key, quantities)
    m = sample("minimal.yaml")
    args = parse("finalize", manifests.finalize_args(m)[1:])
    # the parts are the only intermediate (predict writes the output itself): finalize removes them, its INPUT
    assert args.delete_intermediates and args.input_path == paths.parts_url(m.workdir) == m.workdir + "/parts"
    kept = specmod.parse(dict(m.raw, keepIntermediates=True))
    args = parse("finalize", manifests.finalize_args(kept)[1:])
    assert not args.delete_intermediates and not args.also_delete


# ---- what the API server accepts (issue 8) ---------------------------------------------------------

def _validated(job):
    """The Job as the API server stores it (defaulting, a uid) and its validation errors."""
    import copy

    from k8s.job_validation import validate_job
    from k8s.kmock_api import default_job

    obj = copy.deepcopy(job)
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    default_job(obj)
    return validate_job(obj)


def variants(spec):
    """Every Job shape the operator creates: first predict, retries of few and many parts, indexed blend/finalize."""
    d = manifests.OperatorDefaults(gpu_node_selector={"gpu": "yes"}, queue_name="q1")
    jobs = all_jobs(spec)
    jobs.append(manifests.predict_job("ij", "ns", "u", spec=spec, defaults=d, part_ids=[0], attempt=7))
    indexed = specmod.parse(dict(spec.raw, blend={"parallelism": 3}, finalize={"parallelism": 2}))
    jobs += [manifests.blend_job("ij", "ns", "u", spec=indexed, defaults=d), manifests.finalize_job("ij", "ns", "u", spec=indexed, defaults=d)]
    return jobs


@pytest.mark.parametrize("name", ["minimal.yaml", "full.yaml"])
def test_every_job_passes_the_api_servers_job_validation(name):
    """kubernetes-validate checks the schema only; job_validation ports ValidateJob's rules (maxFailedIndexes <=
    completions: a retry of 4 parts of the full sample, maxFailedParts 10, used to be refused)."""
    for job in variants(sample(name)):
        assert _validated(job) == [], job["metadata"]["name"]


def test_max_failed_parts_is_clamped_per_job_and_only_on_predict():
    s = sample("full.yaml")
    assert manifests.predict_job("ij", "ns", "u", spec=s)["spec"]["maxFailedIndexes"] == 10
    assert manifests.predict_job("ij", "ns", "u", spec=s, part_ids=[1, 2], attempt=1)["spec"]["maxFailedIndexes"] == 2
    assert "maxFailedIndexes" not in manifests.blend_job("ij", "ns", "u", spec=s)["spec"]  # blend has no "parts"


def test_no_non_retryable_exit_codes_means_no_exit_code_rule():
    s = specmod.parse(dict(sample("minimal.yaml").raw, retry={"nonRetryableExitCodes": []},
                           predict={"resources": {"requests": {"memory": "8Gi"}}}))  # may exceed: bounded
    ignore = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    finalize = manifests.finalize_job("ij", "ns", "u", spec=s)  # NonIndexed: no per-index disruption count
    outage = {"action": "Ignore", "onExitCodes": {"containerName": "finalize", "operator": "In", "values": [74]}}
    # exit 74 costs no retry: the operator's outage budget bounds it (tests/k8s/test_outage_budget.py)
    assert finalize["spec"]["podFailurePolicy"]["rules"] == [ignore, outage] and _validated(finalize) == []
    predict = manifests.predict_job("ij", "ns", "u", spec=s)  # the disruption bound's exit code stays
    stopped = {"action": "Ignore", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [80]}}
    assert predict["spec"]["podFailurePolicy"]["rules"] == [ignore, stopped, {"action": "FailIndex", "onExitCodes": {
        "containerName": "predict", "operator": "In", "values": [79]}}, {"action": "Ignore", "onExitCodes": {
            "containerName": "predict", "operator": "In", "values": [74]}}] and _validated(predict) == []
    # what the API server says about the rule the operator used to write
    bad = manifests.predict_job("ij", "ns", "u", spec=s)
    bad["spec"]["podFailurePolicy"]["rules"].append(
        {"action": "FailIndex", "onExitCodes": {"containerName": "predict", "operator": "In", "values": []}})
    assert any("onExitCodes.values: Invalid value: []: at least one value is required" in e for e in _validated(bad))


MEM = {"requests": {"memory": "10880Mi"}, "limits": {"memory": "10880Mi"}}  # (cacheGb 4 + 5 folds + CUDA) * 1.25


@pytest.mark.parametrize("resources, gpus, want", [
    ({}, 1, {"requests": {"cpu": "4", **MEM["requests"]}, "limits": {"nvidia.com/gpu": "1", **MEM["limits"]}}),
    ({"limits": {"nvidia.com/gpu": 1}}, None,  # the device's count, named by the user too
     {"requests": {"cpu": "4", **MEM["requests"]}, "limits": {"nvidia.com/gpu": "1", **MEM["limits"]}}),
    ({"requests": {"nvidia.com/gpu": 1}}, 1, {"requests": {"nvidia.com/gpu": "1", "cpu": "4", **MEM["requests"]},
                                              "limits": {"nvidia.com/gpu": "1", **MEM["limits"]}}),
    ({"requests": {"cpu": "8"}}, None, {"requests": {"cpu": "8", **MEM["requests"]},
                                        "limits": {"nvidia.com/gpu": "1", **MEM["limits"]}}),
    ({"requests": {"example.com/fpga": 1, "cpu": 2}}, 1,
     {"requests": {"example.com/fpga": "1", "cpu": "2", **MEM["requests"]},
      "limits": {"example.com/fpga": "1", "nvidia.com/gpu": "1", **MEM["limits"]}}),
    ({"limits": {"memory": "20Gi"}}, 1,  # Kubernetes makes the request equal to the limit: nothing added
     {"requests": {"cpu": "4"}, "limits": {"memory": "20Gi", "nvidia.com/gpu": "1"}}),
])
def test_gpu_and_extended_resources_end_up_where_kubernetes_wants_them(resources, gpus, want):
    predict = {"resources": resources} if gpus is None else {"gpus": gpus, "resources": resources}
    s = specmod.parse(dict(sample("minimal.yaml").raw, predict=predict))
    job = manifests.predict_job("ij", "ns", "u", spec=s)
    assert job["spec"]["template"]["spec"]["containers"][0].get("resources", {}) == want
    assert _validated(job) == []


def test_no_stage_runs_best_effort_and_requests_follow_the_caches():
    """Without resources in the spec every stage's pods request CPU and memory (Burstable QoS, never the
    kubelet's first eviction victims) sized from their caches and the model; the spec overrides per resource."""
    m = sample("minimal.yaml")
    big = specmod.parse(dict(m.raw, inference={"cacheGb": 16, "folds": [0]}, blend={"cacheGb": 8}))
    for s in (m, big):
        for job in all_jobs(s) + [manifests.check_job("ij", "ns", "u", spec=s, stage="predict", lost_uid="lost-uid")]:
            res = job["spec"]["template"]["spec"]["containers"][0]["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]), job["metadata"]["name"]
            assert res["limits"]["memory"] > "0" and _validated(job) == []
    def mem(s, make):
        return make("ij", "ns", "u", spec=s)["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]
    # one fold and a 16 GB cache against five folds and 4 GB: 16 + 0.5 + 2 GiB vs 4 + 2.5 + 2, plus a quarter
    # (at least 1 GiB): the memory a pod may use is the memory it asks for (request = limit)
    assert (mem(m, manifests.predict_job), mem(big, manifests.predict_job)) == ("10880Mi", "23680Mi")
    assert (mem(m, manifests.blend_job), mem(big, manifests.blend_job)) == ("5760Mi", "10880Mi")
    cpu = specmod.parse(dict(m.raw, inference={"device": "cpu"}))
    assert manifests.predict_job("ij", "ns", "u", spec=cpu)["spec"]["template"]["spec"]["containers"][0][
        "resources"]["requests"]["cpu"] == "8"


def test_the_api_server_refuses_what_the_operator_used_to_write():
    """The validator port itself: a GPU only under requests, and a request unequal to its limit."""
    s = sample("minimal.yaml")
    job = manifests.predict_job("ij", "ns", "u", spec=s)
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
    from k8s.crd_check import CompiledSchema, schema

    return CompiledSchema(schema())


def _crd_errors(doc):
    import copy

    from k8s.crd_check import apply_defaults

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
        jobs = [manifests.predict_job(doc["metadata"]["name"], "ns", "u", spec=s),
                manifests.blend_job(doc["metadata"]["name"], "ns", "u", spec=s),
                manifests.finalize_job(doc["metadata"]["name"], "ns", "u", spec=s)]
        if retry:
            jobs.append(manifests.predict_job(doc["metadata"]["name"], "ns", "u", spec=s, part_ids=range(parts),
                                              attempt=retry))
        assert all(_validated(j) == [] for j in jobs) is accept, n
