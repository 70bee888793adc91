"""kopf's last-handled configuration kept as digests (handlers.DigestDiffBaseStorage): ``kubectl describe ij``
shows one short line for it instead of the spec as JSON, and kopf still tells exactly what changed."""

from __future__ import annotations

import copy
import json

import kopf
import pytest
from vesuvius_inference.k8s.handlers import LEGACY_DIFFBASE, DigestDiffBaseStorage


def obj(**spec) -> dict:
    return {"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob",
            "metadata": {"name": "ij", "labels": {"team": "a"}},
            "spec": {"parts": 4, "input": {"uri": "s3://scrolls/in.zarr"}, **spec}, "status": {}}


def stored(storage: DigestDiffBaseStorage, raw: dict) -> dict:
    """The object as kopf leaves it after handling: its status patched with what the storage wrote."""
    patch = kopf.Patch()
    storage.store(body=kopf.Body(raw), patch=patch, essence=storage.build(body=kopf.Body(raw)))
    out = copy.deepcopy(raw)
    for key, value in patch["status"]["kopf"].items():
        kopf_status = out["status"].setdefault("kopf", {})
        if value is None:
            kopf_status.pop(key, None)
        else:
            kopf_status[key] = value
    return out


def changed(storage: DigestDiffBaseStorage, raw: dict) -> set[str]:
    body = kopf.Body(raw)
    old, new = storage.fetch(body=body), storage.build(body=body)
    return {key for key in set(old) | set(new) if old.get(key) != new.get(key)}


def test_a_digest_per_part_tells_what_changed():
    s = DigestDiffBaseStorage()
    handled = stored(s, obj())
    text = handled["status"]["kopf"]["handled"]
    assert len(text) < 100 and "{" not in text, text  # one short line in kubectl describe, no JSON
    assert changed(s, handled) == set()  # nothing changed: no update
    spec_changed = copy.deepcopy(handled)
    spec_changed["spec"]["parallelism"] = 2
    assert changed(s, spec_changed) == {"spec"}  # on.update(field="spec") fires
    relabelled = copy.deepcopy(handled)
    relabelled["metadata"]["labels"]["vesuvius.dev/finished"] = "true"
    assert changed(s, relabelled) == {"metadata"}  # the operator's own label is no spec change


def test_the_json_of_earlier_versions_is_read_then_removed():
    s = DigestDiffBaseStorage()
    raw = obj()
    raw["status"]["kopf"] = {LEGACY_DIFFBASE: json.dumps(kopf.StatusDiffBaseStorage().build(body=kopf.Body(obj())))}
    assert changed(s, raw) == set()  # an upgrade is no spec change
    after = stored(s, raw)
    assert LEGACY_DIFFBASE not in after["status"]["kopf"] and "handled" in after["status"]["kopf"]


def test_never_handled_is_none():
    assert DigestDiffBaseStorage().fetch(body=kopf.Body(obj())) is None


@pytest.mark.slow
def test_a_spec_change_still_reaches_the_operator_without_a_resync(cluster, stub_controller, tmp_path):
    """The real operator with its periodic resync out of the way: a spec change is seen through kopf's update
    handler alone, which compares the digests; the object's status keeps no JSON of the spec."""
    from k8s.test_busy_cluster import spec_for
    from plugins.k8s import OperatorProcess

    op = OperatorProcess(cluster.kubeconfig, cluster.namespace, tmp_path)
    op.env["VESUVIUS_RESYNC_SECONDS"] = "3600"
    cluster.diagnostics.append(op.tail)
    op.start()
    try:
        stub_controller.stub(r"-predict$", held=True)
        cluster.create_ij(spec_for("digest", parts=2))
        cluster.wait_phase("digest", "Predicting", timeout=60)
        kopf_status = cluster.ij("digest")["status"]["kopf"]
        assert set(kopf_status) == {"handled"} and kopf_status["handled"].startswith("spec="), kopf_status
        cluster.patch_ij("digest", {"spec": {"suspend": True}})
        cluster.wait_phase("digest", "Suspended", timeout=30)
    finally:
        op.kill()
