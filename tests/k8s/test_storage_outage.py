"""A storage outage on Kubernetes (issue 24, point 3): pods that wait for storage show as the
``StorageUnreachable`` condition, and a pod that gave up (exit 74, after ``storage.waitSeconds``) costs its
part none of its retries (the podFailurePolicy's Ignore rule for 74, bounded by the per-index count of
ignored failures: manifests._failure_rules).

The pure part (decide.py) as a table; the wiring with the real operator on KMock and the Job controller
fixture (job_controller.py applies podFailurePolicy as pkg/controller/job does: an Ignore'd failure is not
counted in ``failed`` and adds to the index's ``job-index-ignored-failure-count``).
"""

from __future__ import annotations

import pytest
from k8s.test_busy_cluster import condition, spec_for
from k8s.test_decide import NOW, body, predict
from plugins.k8s import cond
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.decide import Observed, Outcomes, decide

LINE = ("storage unreachable (EndpointConnectionError: Could not connect to the endpoint URL: "
        "\"http://minio:9000/scrolls/in.zarr/c/0/1/2\") reading s3://scrolls/in.zarr/c/0/1/2: retrying for up to "
        "4m10s (--storage_wait_s 300)")


def _pass(b, jobs, waits):
    obs = Observed("ns", b, jobs, manifests.OperatorDefaults(), NOW, storage_waits=waits)
    decide(obs)
    return decide(obs, Outcomes())


@pytest.mark.parametrize("before, waits, running, after", [
    (None, None, True, None),  # no sample, nothing known: no condition
    (None, [("ij-predict-0-x", LINE)], True, "True"),  # a sampled pod's log ends waiting for storage
    ("True", None, True, "True"),  # no sample this pass: kept
    ("True", [], True, "True"),  # sampled, nobody waits, nobody seen working (pods starting): kept (the outage clock)
    ("True", None, False, "False"),  # no Job runs any more: resolved
])
def test_storage_unreachable_condition(before, waits, running, after):
    prev = {"phase": "Predicting", "stage": "predict"}
    if before:
        prev["conditions"] = [{"type": "StorageUnreachable", "status": before, "reason": "WaitingForStorage",
                               "message": "earlier"}]
    b = body(status=prev, parts=2)
    jobs = [predict(b, active=2)] if running else [predict(b, done="0-1")]
    if not running:
        jobs[0]["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    plan = _pass(b, jobs, waits)
    c = cond({"status": plan.status}, "StorageUnreachable")
    assert (c["status"] if c else None) == after, plan.status.get("conditions")
    if after == "True" and waits:
        assert "ij-predict-0-x" in c["message"] and "storage.waitSeconds=300" in c["message"]
        assert LINE in c["message"] and c["reason"] == "WaitingForStorage"
        assert ("Warning", "StorageUnreachable", c["message"]) in plan.events


# A memory request below what the pod may use: the Job controller's per-index count of ignored failures is
# then told to the pod and bounded (manifests.disruptions_bounded); with the operator's own resources it is not.
LOOSE = {"resources": {"requests": {"memory": "8Gi"}}}


def test_exit_74_is_ignored_only_where_the_disruption_count_bounds_it():
    """Without the operator's outage budget (its log samples off: OperatorDefaults.outage_budget False) 74 is
    Ignore'd only where the per-index count bounds it; with the budget (the default) everywhere:
    tests/k8s/test_outage_budget.py."""
    off = manifests.OperatorDefaults(outage_budget=False)
    s = specmod.parse(dict(body()["spec"], predict=LOOSE))
    rules = manifests.predict_job("ij", "ns", "u", spec=s, defaults=off)["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "predict", "operator": "In", "values": [74]}} in rules
    own = manifests.predict_job("ij", "ns", "u", spec=specmod.parse(body()["spec"]), defaults=off)["spec"]["podFailurePolicy"]["rules"]
    assert not any(74 in (r.get("onExitCodes") or {}).get("values", []) for r in own)  # nothing would bound it
    unbounded = specmod.parse(dict(body()["spec"], predict=LOOSE, retry={"maxDisruptionsPerPart": None}))
    rules = manifests.predict_job("ij", "ns", "u", spec=unbounded, defaults=off)["spec"]["podFailurePolicy"]["rules"]
    assert not any(74 in (r.get("onExitCodes") or {}).get("values", []) for r in rules)  # would loop for ever
    finalize = manifests.finalize_job("ij", "ns", "u", spec=s, defaults=off)["spec"]["podFailurePolicy"]["rules"]  # NonIndexed
    assert not any(74 in (r.get("onExitCodes") or {}).get("values", []) for r in finalize)
    args = manifests.predict_job("ij", "ns", "u", spec=specmod.parse(dict(body()["spec"], storage={"waitSeconds": 90})))
    argv = args["spec"]["template"]["spec"]["containers"][0]["args"]
    assert float(argv[argv.index("--storage_wait_s") + 1]) == 90


@pytest.mark.slow
def test_pods_waiting_for_storage_show_and_an_outage_costs_no_retry(cluster, operator, stub_controller):
    """Part 0's first pod waits for storage (its log says so), then gives up with 74: the condition shows
    while it waits, the pod is re-created at once without using a retry, and the run completes."""
    ctl = stub_controller
    ctl.hook("outage-predict", 0, attempt=0, exit_code=74, held=True, lines=(LINE,),
             message="error: reading s3://scrolls/in.zarr/c/0/1/2: storage unreachable for longer than ...")
    ctl.hook("outage-predict", 0, attempt=1, sleep=0.2)
    cluster.create_ij(spec_for("outage", parts=2, retry={"perPartLimit": 0}, predict=LOOSE))  # no retry to spare
    obj = condition(cluster, "outage", "StorageUnreachable", timeout=60)
    c = cond(obj, "StorageUnreachable")
    assert c["reason"] == "WaitingForStorage" and "outage-predict-0-" in c["message"] and LINE in c["message"]
    assert "StorageUnreachable" in [e["reason"] for e in cluster.events("outage")]
    ctl.release()
    done = cluster.wait_phase("outage", "Succeeded", timeout=120)
    assert done["status"]["parts"]["failed"] == 0
    assert cond(done, "StorageUnreachable")["status"] == "False"
    runs = [(r.index, r.attempt, r.exit_code, r.action) for r in ctl.results_of("outage-predict")]
    assert (0, 0, 74, "Ignore") in runs and (0, 1, 0, "Succeeded") in runs, runs
