"""A predict pod told to stop (SIGTERM) checkpoints and exits 80: its Job ignores that exit (no retry spent),
before any rule that could fail the part on it, and gives the pod the time a batch and the stop's
checkpoint take (k8s/grace.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from k8s.job_controller import match_rule
from vesuvius_inference.contract.errors import EXIT_STOPPED
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.k8s.grace import MIN_GRACE_S, predict_grace_seconds

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def sample(name: str) -> specmod.JobSpec:
    return specmod.parse(yaml.safe_load((SAMPLES / name).read_text())["spec"])


def _predict(raw: dict) -> dict:
    return manifests.predict_job("ij", "ns", "u", spec=specmod.parse(raw))


def test_a_stopped_part_costs_no_retry_whatever_the_non_retryable_codes_say():
    base = sample("minimal.yaml").raw
    for codes in ([2, 3], [2, 3, EXIT_STOPPED], []):  # a user listing 80 cannot turn a stop into a failure
        job = _predict(dict(base, retry={"nonRetryableExitCodes": codes}))
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert match_rule(rules, "predict", EXIT_STOPPED, []) == ("Ignore", 1)
        assert match_rule(rules, "predict", 143, []) == ("Count", -1)  # died of SIGTERM without its checkpoint
        assert match_rule(rules, "predict", 143, ["DisruptionTarget"]) == ("Ignore", 0)
    blend = manifests.blend_job("ij", "ns", "u", spec=specmod.parse(base))  # only predict stops with a checkpoint
    assert all(EXIT_STOPPED not in (r.get("onExitCodes") or {}).get("values", [])
               for r in blend["spec"]["podFailurePolicy"]["rules"])
    assert "terminationGracePeriodSeconds" not in blend["spec"]["template"]["spec"]


def test_the_grace_period_covers_a_batch_and_the_stops_checkpoint():
    base = sample("minimal.yaml").raw

    def grace(**inference) -> int:
        raw = dict(base, inference={**base.get("inference", {}), **inference})
        pod = _predict(raw)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == predict_grace_seconds(specmod.parse(raw))
        return pod["terminationGracePeriodSeconds"]

    default = grace()
    assert default == 55 > MIN_GRACE_S  # 10 s to exit + 4 s of batch + 4 GiB of cache at 100 MiB/s
    assert grace(cacheGb=1) < default < grace(cacheGb=16)  # the stop writes the cache's changed chunks
    assert grace(batchSize=8) > default and grace(tta=False) < default
    assert grace(device="cpu") > grace(patchSize=[192, 192, 192]) > default
    assert grace(cacheGb=0.01, tta=False, folds=[0]) == MIN_GRACE_S  # never under Kubernetes' default
