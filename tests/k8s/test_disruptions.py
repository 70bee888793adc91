"""Disruptions the cluster caused are told apart from a part's own failures and do not exhaust its retries
(issue 24, point 2, the Kubernetes side).

The Job controller keeps one count of ignored failures per index (pkg/controller/job/indexed_job_utils.go,
getNewIndexFailureCounts) and a podFailurePolicy rule matches DisruptionTarget by type only, so a drain
(EvictionByEvictionAPI), a preemption (PreemptionByScheduler) and the kubelet evicting a pod for its own
memory use (TerminationByKubelet) look the same to it. The pod's resources tell them apart instead: a pod
that requests the memory it may use is OOM-killed above it (a counted failure) and never picked by the
kubelet's rankMemoryPressure for its own use (pkg/kubelet/eviction/helpers.go, exceedMemoryRequests first),
so every disruption of it is the cluster's and none is bounded (manifests.disruptions_bounded). The tables
below pin which pods keep the bound; the end-to-end test runs the real operator, the emulated Job controller
and real worker pods: a part drained twice and preempted once with maxDisruptionsPerPart 1 still completes
(before, its fourth pod refused to start with exit 79 and the run failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from plugins.k8s import SAMPLE, cond_true
from vesuvius_inference.cli import parse
from vesuvius_inference.contract.errors import EXIT_DISRUPTION_LIMIT
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
IGNORED = "batch.kubernetes.io/job-index-ignored-failure-count"
FAILURES = "batch.kubernetes.io/job-index-failure-count"
JOB_INDEX = "batch.kubernetes.io/job-completion-index"


def spec(**changes):
    raw = yaml.safe_load((SAMPLES / "minimal.yaml").read_text())["spec"]
    raw.update(changes)
    return specmod.parse(raw)


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def told_count(job) -> bool:
    return any(e["name"] == "VESUVIUS_DISRUPTIONS" for e in container(job)["env"])


def refuses_79(job) -> bool:
    return any(EXIT_DISRUPTION_LIMIT in (r.get("onExitCodes") or {}).get("values", [])
               for r in job["spec"]["podFailurePolicy"]["rules"])


@pytest.mark.parametrize("resources, bounded", [
    (None, False),  # the operator's own: memory requested as limited
    ({"requests": {"memory": "12Gi"}, "limits": {"memory": "12Gi"}}, False),
    ({"limits": {"memory": "12Gi"}}, False),  # Kubernetes sets the request to the limit
    ({"requests": {"memory": "12288Mi"}, "limits": {"memory": "12Gi"}}, False),  # equal as quantities
    ({"requests": {"cpu": "2"}}, False),  # memory left to the operator
    ({"requests": {"memory": "6Gi"}, "limits": {"memory": "12Gi"}}, True),  # room above the request
    ({"requests": {"memory": "6Gi"}}, True),  # no limit at all
])
@pytest.mark.parametrize("stage", ["predict", "blend"])
def test_only_pods_that_can_use_more_than_they_request_keep_the_disruption_bound(resources, bounded, stage):
    changes = {"parts": 4, "blend": {"parallelism": 4}}
    if resources is not None:
        changes[stage] = dict(changes.get(stage) or {}, resources=resources)
    s = spec(**changes)
    job = manifests.predict_job("ij", "ns", "u", spec=s) if stage == "predict" else manifests.blend_job("ij", "ns", "u", spec=s)
    assert manifests.disruptions_bounded(s, stage) is bounded
    assert told_count(job) is bounded and refuses_79(job) is bounded
    res = container(job)["resources"]
    if resources is None:  # the derived memory: asked for as much as allowed
        assert res["requests"]["memory"] == res["limits"]["memory"]


def test_an_unbounded_pod_starts_whatever_the_job_controllers_count():
    """What the worker makes of its pod's env: with no VESUVIUS_DISRUPTIONS it sees no disruption, however
    often its index was drained (the annotation is there, nothing reads it)."""
    from vesuvius_inference.contract.podopts import guard

    job = manifests.predict_job("ij", "ns", "u", spec=spec(retry={"maxDisruptionsPerPart": 0}))
    assert not told_count(job)
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in container(job)["args"]]
    cfg = parse("predict", args[1:])
    assert cfg.disruptions == 0 and cfg.max_disruptions == 0
    guard(cfg)  # no refusal


def test_derived_pods_are_never_the_kubelets_choice_for_their_own_use():
    """rankMemoryPressure: a pod within its request goes after every pod above its own, whatever it uses up
    to its limit (which the kernel enforces)."""
    from job_controller import rank_memory_pressure
    from vesuvius_inference.k8s.quantity import parse_quantity

    ours = {"metadata": {"name": "ours"}, "spec": manifests.predict_job("ij", "ns", "u", spec=spec())["spec"]["template"][
        "spec"]}
    limit = int(parse_quantity(container({"spec": {"template": ours}})["resources"]["limits"]["memory"]))
    other = {"metadata": {"name": "other"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {
        "memory": "64Gi"}}}]}}
    gib = 2**30
    # ours at its very limit; the other pod barely above its request
    assert rank_memory_pressure([ours, other], {"ours": limit, "other": 64 * gib + 1}) == ["other", "ours"]


# ---- end to end ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_part_drained_and_preempted_past_the_old_bound_completes(cluster, operator, controller, s3_env):
    """Real worker pods on the CPU: the first two pods of part 0 are drained (EvictionByEvictionAPI), the third
    preempted (PreemptionByScheduler), each while it starts; with maxDisruptionsPerPart 1 the fourth used to exit
    79 (disrupted 3 times). Now the part and the run complete, the pods ask for no GPU (device cpu), and the
    InferenceJob carries no kopf JSON in its annotations. Part 1's first pod fails on its own (exit 1, a
    transient error): that failure counts, once, against its backoffLimitPerIndex, and its retry succeeds
    (this was test_operator_e2e's test_transient_failure_is_retried_and_preemption_is_not_counted, which ran
    the same podFailurePolicy wiring on a second run of real pods)."""
    body = yaml.safe_load(SAMPLE.read_text())
    body["metadata"]["name"] = "spot"
    body["spec"].update(output={"uri": "s3://results/spot/surface.zarr"}, inference={"tta": False, "device": "cpu"},
                        retry={"maxDisruptionsPerPart": 1}, parts=2)
    controller.drain("spot-predict", 0, after=1.0, attempts=range(2))
    controller.preempt("spot-predict", 0, after=1.0, attempt=2)
    controller.fail("spot-predict", 1, exit_code=1, message="transient: connection reset by peer")
    cluster.create_ij(body)
    done = cluster.wait_phase("spot", "Succeeded", timeout=300)
    assert cond_true(done, "Complete")
    assert done["status"]["parts"]["succeeded"] == 2 and done["status"]["parts"]["failed"] == 0
    # each disrupted pod got SIGTERM and its grace (the emulated kubelet): 80 once predict's handler is installed,
    # 143 when the signal came while Python was still importing; never SIGKILL (137) within its grace
    runs = [(r.index, r.attempt, 80 if r.exit_code == 143 else r.exit_code, r.action, r.conditions)
            for r in controller.results if r.job == "spot-predict"]
    assert sorted(runs) == [(0, 0, 80, "Ignore", ["DisruptionTarget"]), (0, 1, 80, "Ignore", ["DisruptionTarget"]),
                            (0, 2, 80, "Ignore", ["DisruptionTarget"]), (0, 3, 0, "Succeeded", []),
                            (1, 0, 1, "Count", []), (1, 1, 0, "Succeeded", [])], runs
    job = cluster.jobs("spot")["spot-predict"]
    assert job["spec"]["backoffLimitPerIndex"] == 2
    # the transient failure counts once; the disruptions do not count at all
    assert job["status"]["failed"] == 1 and job["status"]["succeeded"] == 2
    assert job["status"]["completedIndexes"] == "0-1" and job["status"]["failedIndexes"] == ""
    assert cond_true(job, "Complete") and not any(c["type"] == "Failed" for c in job["status"].get("conditions") or [])
    by_index: dict[str, list[dict]] = {}
    for p in cluster.pods("spot-predict"):
        by_index.setdefault(p["metadata"]["annotations"][JOB_INDEX], []).append(p)
    pods = sorted(by_index["0"], key=lambda p: int(p["metadata"]["annotations"].get(IGNORED, "0")))
    reasons = [next((c["reason"] for c in p["status"].get("conditions") or [] if c["type"] == "DisruptionTarget"),
                    None) for p in pods]
    assert reasons == ["EvictionByEvictionAPI", "EvictionByEvictionAPI", "PreemptionByScheduler", None]
    assert [p["metadata"]["annotations"].get(IGNORED) for p in pods] == [None, "1", "2", "3"]
    for disrupted in pods[:3]:  # drained, drained, preempted: stopped in their grace (80; 143 while importing)
        assert disrupted["status"]["phase"] == "Failed"
        assert disrupted["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] in (80, 143)
    # the failure count of an index on each pod; the ignored one only when above zero, as upstream
    # (indexed_job_utils.go, addIndexFailureCountAnnotation)
    counts = {i: sorted((p["metadata"]["annotations"][FAILURES], p["metadata"]["annotations"].get(IGNORED, "-"))
                        for p in ps) for i, ps in by_index.items()}
    assert counts == {"0": [("0", "-"), ("0", "1"), ("0", "2"), ("0", "3")], "1": [("0", "-"), ("1", "-")]}
    for p in cluster.pods("spot-predict") + cluster.pods("spot-blend") + cluster.pods("spot-finalize"):
        c = p["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in str(c["resources"]) and not p["spec"].get("tolerations")
        assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"]
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
    annotations = cluster.ij("spot")["metadata"].get("annotations") or {}
    assert not any("last-handled-configuration" in k for k in annotations), annotations
    assert "handled" in (cluster.ij("spot")["status"].get("kopf") or {})  # digests (handlers.DigestDiffBaseStorage)


@pytest.mark.parametrize("stage", ["blend", "finalize"])
def test_a_single_blend_or_finalize_pod_that_can_outgrow_its_request_is_bounded_too(stage):
    """One pod: NonIndexed Jobs carry no per-index counts, so such a pod evicted for its own use restarted
    forever. It becomes an Indexed Job of one, told its count, failing its index at exit 79."""
    from vesuvius_inference.k8s.checks import refusals

    make = manifests.blend_job if stage == "blend" else manifests.finalize_job
    plain = make("ij", "ns", "u", spec=spec())
    assert plain["spec"]["completionMode"] == "NonIndexed" and not told_count(plain)
    s = spec(**{stage: {"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "4Gi"}}}})
    job = make("ij", "ns", "u", spec=s)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 1
    assert told_count(job) and refuses_79(job)
    from job_validation import validate_job
    from kmock_api import default_job

    job["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    default_job(job)
    assert validate_job(job) == []
    # the name must leave room for the pod's hostname <name>-<stage>-0: 53 characters fit predict's
    # <name>-predict-0 exactly, and finalize's <name>-finalize-0 by no means
    said = refusals("a" * 53, s)
    if stage == "finalize":
        assert any("finalize pod's hostname" in m for m in said), said
    else:
        assert said == [], said
