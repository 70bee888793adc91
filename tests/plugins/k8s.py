"""Fixtures of the end-to-end operator tests: KMock API server, the real operator, a Job controller, moto S3.

A pytest plugin (tests/conftest.py's ``pytest_plugins``): tests/k8s and tests/images use these fixtures by
name; tests import the helpers below from ``plugins.k8s``.

- ``cluster``: a fresh :class:`kmock_api.KubeAPI` in a thread, the InferenceJob CRD installed from
  crds/inferencejob.yaml, namespace ``vesuvius``, a kubeconfig pointing at it (``KUBECONFIG`` and the
  kubernetes client's default location are set to it, so handlers.py's ``_apis()`` finds it).
- ``operator``: the product's own entry point ``vesuvius-inference operator -n vesuvius`` as a
  subprocess, started, with a 2 s resync (VESUVIUS_RESYNC_SECONDS) and a 3 s grace for pods that
  cannot start (VESUVIUS_STUCK_POD_SECONDS); ``kill()`` is SIGKILL (a crash, mid-handler if need be),
  ``start()`` restarts it (with ``env`` changes, if any).
- ``kueue``: tests/k8s/kueue.py's Kueue (Job webhook + controllers) on the same API server.
- ``controller``: :class:`job_controller.JobController` on that namespace (pods run as local processes);
  ``stub_controller``: the same with every pod stubbed (a short sleep, exit 0), for control-plane tests.
- ``e2e_storage`` (session) and ``s3_env`` (its endpoint and credentials in one test's env): moto's S3 server (plugins/s3.py's ``s3_server``), buckets scrolls,
  results and models, a tiny model folder at s3://models/surface-nnunet and a tiny input volume at
  s3://scrolls/PHerc0332/volume.zarr (the URIs of crds/samples/minimal.yaml).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "vesuvius"
GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
SAMPLE = ROOT / "crds" / "samples" / "minimal.yaml"
VOLUME_SHAPE, VOLUME_CHUNKS = (32, 64, 64), (16, 32, 32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- storage ------------------------------------------------------------------------------------

@dataclass
class Storage:
    endpoint: str
    model_dir: Path
    volume: Any
    env: dict[str, str]


@pytest.fixture(scope="session")
def e2e_storage(s3_server, model_factory) -> Storage:
    import boto3
    import s3fs
    from helpers import smooth_volume, write_zarr

    env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3", endpoint_url=s3_server)
        for bucket in ("scrolls", "results", "models"):
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=bucket)
        model = model_factory(patch=(32, 32, 32), folds=(0,), features=(2, 4, 8))
        fs = s3fs.S3FileSystem()
        for f in sorted(model.rglob("*")):
            if f.is_file():
                fs.put_file(str(f), f"models/surface-nnunet/{f.relative_to(model)}")
        volume = smooth_volume(VOLUME_SHAPE, seed=3)
        write_zarr("s3://scrolls/PHerc0332/volume.zarr", volume, chunks=VOLUME_CHUNKS)
    return Storage(s3_server, model, volume, env)


@pytest.fixture
def s3_env(e2e_storage, monkeypatch) -> Storage:
    """The moto endpoint and credentials in this test's environment (pods and the test read S3 through it)."""
    for k, v in e2e_storage.env.items():
        monkeypatch.setenv(k, v)
    return e2e_storage


# ---- the API server -------------------------------------------------------------------------------

class Cluster:
    """The API server plus kubernetes-client handles and small helpers for the tests."""

    def __init__(self, server: Any, kubeconfig: str, namespace: str) -> None:
        import kubernetes

        self.server, self.api, self.kubeconfig, self.namespace = server, server.api, kubeconfig, namespace
        self.client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.diagnostics: list[Callable[[], str]] = []

    # reads, as plain dicts
    def _dict(self, obj: Any) -> Any:
        return self.client.sanitize_for_serialization(obj)

    def ij(self, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_ij(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch_ij(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch,
                                                          _content_type="application/merge-patch+json")

    def jobs(self, owner: str | None = None) -> dict[str, dict[str, Any]]:
        sel = f"vesuvius.dev/inferencejob={owner}" if owner else None
        return {j.metadata.name: self._dict(j) for j in self.batch.list_namespaced_job(
            self.namespace, label_selector=sel).items}

    def pods(self, job: str | None = None) -> list[dict[str, Any]]:
        sel = f"job-name={job}" if job else None
        return [self._dict(p) for p in self.core.list_namespaced_pod(self.namespace, label_selector=sel).items]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [self._dict(e) for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name and e.involved_object.kind == "InferenceJob"]

    def phases(self, name: str) -> list[str]:
        """The distinct phases the object went through, in order (from the API server's stored versions)."""
        out: list[str] = []
        for v in self.server.call(self.api.history, f"{GROUP}/{VERSION}/{PLURAL}", self.namespace, name):
            phase = ((v or {}).get("status") or {}).get("phase")
            if phase and (not out or out[-1] != phase):
                out.append(phase)
        return out

    def wait(self, what: str, fn: Callable[[], Any], timeout: float = 180.0, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n" + self.report())
            time.sleep(interval)

    def wait_phase(self, name: str, phase: str, timeout: float = 180.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.ij(name)
            return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

        return self.wait(f"{name} phase {phase}", check, timeout)

    def report(self) -> str:
        lines = []
        with contextlib.suppress(Exception):
            for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]:
                lines.append(f"IJ {item['metadata']['name']}: {yaml.safe_dump(item.get('status'), width=200)}")
            for name, j in self.jobs().items():
                lines.append(f"Job {name}: suspend={j['spec'].get('suspend')} status={j.get('status')}")
        for diag in self.diagnostics:
            with contextlib.suppress(Exception):
                lines.append(diag())
        return "\n".join(lines)


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Iterator[Cluster]:
    import kubernetes
    from k8s import admission
    from k8s.kmock_api import KubeAPI, ServerThread

    with ServerThread(KubeAPI()) as server:
        server.call(admission.install, server.api)  # on in every cluster: ServiceAccount, Priority, ResourceQuota
        server.call(server.api.install_crd, yaml.safe_load((ROOT / "crds" / "inferencejob.yaml").read_text()))
        server.call(server.api.create, "v1/namespaces", None, {"metadata": {"name": NAMESPACE}})
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
        monkeypatch.setenv("KUBECONFIG", kubeconfig)
        # kubernetes.config reads KUBECONFIG when imported: point its default there too (handlers._apis)
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        yield Cluster(server, kubeconfig, NAMESPACE)


# ---- the operator -------------------------------------------------------------------------------

class OperatorProcess:
    """``vesuvius-inference operator`` (the Helm chart's command) as a subprocess against the KMock server."""

    def __init__(self, kubeconfig: str, namespace: str, logdir: Path) -> None:
        self.kubeconfig, self.namespace, self.logdir = kubeconfig, namespace, logdir
        self.env = {"VESUVIUS_RESYNC_SECONDS": "2", "VESUVIUS_STUCK_POD_SECONDS": "3",
                    "VESUVIUS_DIAGNOSE_SECONDS": "1", "VESUVIUS_PROGRESS_SECONDS": "1", "VESUVIUS_MIN_PASS_INTERVAL": "0.2"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args = ["--metrics-auth=none"]  # metrics read without a token here (test_metrics_auth.py: with)
        self.starts = 0
        self.port = 0
        self.metrics_port = 0

    @property
    def log(self) -> Path:
        return self.logdir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the operator is already running"
        self.starts += 1
        self.port, self.metrics_port = _free_port(), _free_port()
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, **self.env)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vesuvius_inference.cli", "operator", "-n", self.namespace,
                 "--liveness", f"http://127.0.0.1:{self.port}/healthz", "--log-level", "INFO",
                 "--metrics-port", str(self.metrics_port), *self.extra_args],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:  # the liveness endpoint answers once kopf runs
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not become live:\n{self.tail()}")
            time.sleep(0.2)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def passes(self) -> float:
        """The reconcile passes this operator process has made (its ``/metrics`` counter)."""
        for line in self.metrics().splitlines():
            if line.startswith("vesuvius_operator_reconcile_passes_total"):
                return float(line.split()[-1])
        raise AssertionError("no vesuvius_operator_reconcile_passes_total in /metrics")

    def wait_passes(self, n: float, timeout: float = 60.0) -> None:
        """Until this process has made ``n`` passes in all: a bounded wait on what a fixed sleep hoped for."""
        deadline = time.monotonic() + timeout
        while self.passes() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator made {self.passes():.0f} of {n} passes in {timeout:.0f}s:\n"
                                     + self.tail())
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, whatever handler is running dies with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, n: int = 40) -> str:
        out = []
        for i in range(1, self.starts + 1):
            p = self.logdir / f"operator-{i}.log"
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- operator run {i} ---\n" + "\n".join(lines))
        return "\n".join(out)


@pytest.fixture
def operator(cluster, tmp_path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster.kubeconfig, cluster.namespace, tmp_path)
    cluster.diagnostics.append(op.tail)
    op.start()
    yield op
    op.kill()


@pytest.fixture
def controller(cluster, tmp_path, s3_env):
    from k8s.job_controller import JobController

    pods = tmp_path / "pods"
    pods.mkdir()
    ctl = JobController(cluster.client, cluster.namespace, pods)
    ctl.api = cluster.api

    def pod_logs() -> str:
        out = [f"controller errors: {ctl.errors!r}"]
        for r in ctl.results:
            out.append(f"pod {r.name} index {r.index} attempt {r.attempt}: exit {r.exit_code} {r.action} "
                       f"({r.seconds:.1f}s)")
        for log in sorted(pods.glob("*/output.log")):
            out.append(f"--- {log.parent.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    cluster.diagnostics.append(pod_logs)
    with ctl:
        yield ctl
    assert not ctl.errors, ctl.errors


@pytest.fixture
def stub_controller(cluster, tmp_path):
    """The Job controller with every pod stubbed (a short sleep, exit 0): for tests of the control plane only."""
    from k8s.job_controller import JobController

    pods = tmp_path / "pods"
    pods.mkdir()
    ctl = JobController(cluster.client, cluster.namespace, pods)
    ctl.api = cluster.api
    ctl.stub(".*", sleep=0.1)
    cluster.diagnostics.append(lambda: f"controller errors: {ctl.errors!r}\n" + "\n".join(
        f"pod {r.name} index {r.index} attempt {r.attempt}: exit {r.exit_code} {r.action}" for r in ctl.results))
    with ctl:
        yield ctl
    assert not ctl.errors, ctl.errors


@contextlib.contextmanager
def run_kueue(cluster: Cluster, versions: tuple[str, ...] = ("v1beta2", "v1beta1"), **kw: Any) -> Iterator[Any]:
    """tests/k8s/kueue.py's Kueue on this cluster: serving ``versions`` (the first stores), ``kw`` for its
    ClusterQueue quota and waitForPodsReady settings."""
    from k8s import kueue as kueue_emulation

    cluster.server.call(kueue_emulation.install, cluster.api, versions)
    ctl = kueue_emulation.KueueController(cluster.client, cluster.namespace, version=versions[0], **kw)
    cluster.diagnostics.append(lambda: f"kueue actions: {ctl.actions} errors: {ctl.errors!r}")
    with ctl:
        yield ctl
    assert not ctl.errors, ctl.errors


@pytest.fixture
def kueue(cluster):
    with run_kueue(cluster) as ctl:
        yield ctl


def cond(obj: dict, kind: str) -> dict | None:
    """The status condition of this type, if any."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)


def cond_true(obj: dict, kind: str) -> bool:
    c = cond(obj, kind)
    return bool(c and c["status"] == "True")
