"""The operator image, built from images/operator/Dockerfile and run as the Helm chart runs it: the
chart's container args and env, its user (podSecurityContext runAsUser/runAsGroup), a read-only root
filesystem with an emptyDir at /tmp, no capabilities; the API server is KMock (tests/k8s/kmock_api.py)."""

from __future__ import annotations

import contextlib
import shutil
import time
import urllib.request

import yaml
from plugins.k8s import SAMPLE, _free_port

from images.containers import Container, Image, python_in, writable_paths

NO_TORCH = """
import importlib.metadata, importlib.util, json, os, sys
import vesuvius_inference.k8s.handlers, vesuvius_inference.k8s.operator_main
dists = sorted((d.metadata['Name'] or '').lower() for d in importlib.metadata.distributions())
print(json.dumps({"specs": {m: importlib.util.find_spec(m) is not None for m in ("torch", "nnunetv2", "torchvision")},
                  "loaded": sorted(m for m in ("torch", "numpy.core", "nnunetv2") if m in sys.modules),
                  "dists": dists, "uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME")}))
"""


def deployment(helm) -> dict:
    docs = helm.template()
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    return dep


def test_holds_no_torch_and_runs_as_the_charts_user(operator_image, helm):
    pod = deployment(helm)["spec"]["template"]["spec"]
    uid, gid = pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    assert operator_image.user == f"{uid}:{gid}", "the image's USER must be the chart's runAsUser:runAsGroup"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    got = python_in(operator_image, NO_TORCH)
    assert got["specs"] == {"torch": False, "nnunetv2": False, "torchvision": False}, got["specs"]
    assert not {"torch", "nnunetv2", "torchvision", "triton"} & set(got["dists"])
    assert {"kopf", "kubernetes", "vesuvius-inference"} <= set(got["dists"])
    assert (got["uid"], got["gid"], got["home"]) == (uid, gid, "/tmp")


def test_adds_no_writable_path(operator_image):
    """As the image's user, the image's own filesystem is writable exactly where its base's is (/tmp...)."""
    base = writable_paths(Image(operator_image.base, operator_image.base, "0:0"), operator_image.user)
    mine = writable_paths(operator_image, operator_image.user)
    assert "/tmp" in mine
    assert mine - base == set(), f"writable for {operator_image.user} in the image but not in its base"


def _wait_live(container: Container, url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        if not container.running():
            raise AssertionError(f"the operator container exited:\n{container.logs()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the liveness endpoint {url} never answered:\n{container.logs()[-4000:]}")
        time.sleep(0.5)


def test_takes_an_inferencejob_to_its_first_job(operator_image, helm, cluster, tmp_path):
    spec = deployment(helm)["spec"]["template"]["spec"]
    (chart,) = spec["containers"]
    assert chart["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}], "only /tmp is writable in the pod"
    env = {e["name"]: e["value"] for e in chart["env"] if "value" in e}
    # In the cluster the service account's token is mounted; here a kubeconfig for KMock stands in for it.
    kube = tmp_path / "kube"
    kube.mkdir(mode=0o755)
    shutil.copy(cluster.kubeconfig, kube / "config")
    (kube / "config").chmod(0o644)
    env["KUBECONFIG"] = "/var/run/vesuvius-kube/config"
    # Host network: the liveness endpoint binds 127.0.0.1 on a free port instead of the chart's 0.0.0.0:8080
    # (the last --liveness wins); everything else is the chart's.
    port = _free_port()
    args = [*chart["args"], f"--liveness=http://127.0.0.1:{port}/healthz"]
    assert f"--namespace={cluster.namespace}" in args
    op = Container(operator_image, args=args, env=env, ro_volumes=[(kube, "/var/run/vesuvius-kube")])
    cluster.diagnostics.append(lambda: "--- operator container ---\n" + op.logs()[-4000:])
    op.start()
    try:
        _wait_live(op, f"http://127.0.0.1:{port}/healthz")
        body = yaml.safe_load(SAMPLE.read_text())
        cluster.create_ij(body)
        jobs = cluster.wait("the operator container to create the predict Job",
                            lambda: cluster.jobs(body["metadata"]["name"]), timeout=120)
        assert set(jobs) == {"minimal-predict"}, jobs
        job = jobs["minimal-predict"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == env["VESUVIUS_WORKER_IMAGE"], "the chart's worker image reaches the Jobs"
        assert container["args"][:3] == ["predict", "--model_path", body["spec"]["model"]["uri"]]
        status = cluster.wait("a status on the InferenceJob", lambda: (cluster.ij("minimal") or {}).get("status"))
        assert status.get("phase") in ("Pending", "Predicting"), status
        assert status["jobs"]["predict"] == "minimal-predict"
        # still live once it has worked, and nothing tried to write outside /tmp
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        logs = op.logs()
        for bad in ("Read-only file system", "Permission denied", "Traceback"):
            assert bad not in logs, f"{bad!r} in the operator's output:\n{logs[-4000:]}"
    finally:
        op.remove()
