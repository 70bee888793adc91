"""Fixtures of the end-to-end operator tests: KMock API server, the real operator, a Job controller, moto S3.

A pytest plugin (tests/conftest.py's ``pytest_plugins``): tests/k8s and tests/images use these fixtures by
name; tests import the helpers below from ``plugins.k8s``.

What is expensive is shared by the tests of one module; what a test changes is its own:

- ``cluster``: a namespace of its own (``vesuvius-<n>-<test>``) on the module's :class:`kmock_api.KubeAPI`
  (``kube_server``: a server in a thread, the InferenceJob CRD installed from crds/inferencejob.yaml), a
  kubeconfig pointing at it with that namespace (``KUBECONFIG`` and the kubernetes client's default location
  are set to it, so handlers.py's ``_apis()`` finds it). Server-wide switches a test flips (``gc.delay``,
  ``validate_crds``) are put back and its InferenceJobs deleted when it ends. A test gets a server of its own
  (namespace ``vesuvius``), started and stopped with it, when it does not use ``operator`` (no operator may act
  on what it checks), uses ``kueue`` (Kueue's CRDs and webhook are cluster-wide, and the operator remembers for
  10 minutes that Kueue was missing), or says why with ``@pytest.mark.own_cluster("why")``.
- ``operator``: the product's own entry point ``vesuvius-inference operator`` as a subprocess, with a 2 s
  resync (VESUVIUS_RESYNC_SECONDS) and a 3 s grace for pods that cannot start (VESUVIUS_STUCK_POD_SECONDS).
  On the module's server one process (``--all-namespaces``, as the chart runs it with ``rbac.allNamespaces``)
  serves every test of the module, each in its namespace; it is (re)started when a test finds it stopped
  or with other settings. On a server of the test's own, a process of its own (``--namespace vesuvius``).
  ``kill()`` is SIGKILL (a crash, mid-handler if need be), ``start()`` restarts it (with ``env`` changes, if
  any); ``wait_passes``/``wait_resyncs``/``settle`` wait on its /metrics counters instead of sleeping.
- ``kueue``: tests/k8s/kueue.py's Kueue (Job webhook + controllers) on the same API server.
- ``controller``: :class:`job_controller.JobController` on that namespace (pods run as local processes);
  ``stub_controller``: the same with every pod stubbed (a short sleep, exit 0), for control-plane tests.
- ``e2e_storage`` (session) and ``s3_env`` (its endpoint and credentials in one test's env): moto's S3 server (plugins/s3.py's ``s3_server``), buckets scrolls,
  results and models, a tiny model folder at s3://models/surface-nnunet and a tiny input volume at
  s3://scrolls/PHerc0332/volume.zarr (the URIs of crds/samples/minimal.yaml).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
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
from helpers import wait_until

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

    def __init__(self, server: Any, kubeconfig: str, namespace: str, private: bool = True) -> None:
        import kubernetes

        self.server, self.api, self.kubeconfig, self.namespace = server, server.api, kubeconfig, namespace
        self.private = private  # False: the module's server, shared with the module's other tests
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
        return wait_until(what, fn, timeout=timeout, interval=interval, detail=self.report)

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_cluster(why): this test needs an API server (and operator) of its own")


@contextlib.contextmanager
def _serve() -> Iterator[Any]:
    """A KMock API server in a thread with what every cluster here has: the admission plugins
    (ServiceAccount, Priority, ResourceQuota) and the InferenceJob CRD."""
    from k8s import admission
    from k8s.kmock_api import KubeAPI, ServerThread

    with ServerThread(KubeAPI()) as server:
        server.call(admission.install, server.api)
        server.call(server.api.install_crd, yaml.safe_load((ROOT / "crds" / "inferencejob.yaml").read_text()))
        yield server


@pytest.fixture(scope="module")
def kube_server() -> Iterator[Any]:
    """The API server the tests of one module share, each in a namespace of its own."""
    with _serve() as server:
        yield server


_namespaces = itertools.count(1)


def _own_cluster_reason(request: pytest.FixtureRequest) -> str | None:
    """Why this test gets an API server of its own (None: it shares the module's)."""
    marker = request.node.get_closest_marker("own_cluster")
    if marker is not None:
        return str(marker.args[0] if marker.args else "own_cluster")
    if "operator" not in request.fixturenames:
        return "no operator: none may act on what the test checks"
    if "kueue" in request.fixturenames:
        return "Kueue's CRDs and webhook are cluster-wide, and the operator remembers that Kueue was missing"
    return None


def _delete_inferencejobs(cluster: Cluster) -> None:
    """What a test leaves behind on the shared server: its InferenceJobs (their Jobs and pods follow by the
    garbage collector), so that the module's operator stops working on them."""
    for ij in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL)["items"]:
        with contextlib.suppress(Exception):
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, PLURAL,
                                                           ij["metadata"]["name"])


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Iterator[Cluster]:
    import kubernetes

    with contextlib.ExitStack() as stack:
        private = _own_cluster_reason(request) is not None
        if private:
            server, namespace = stack.enter_context(_serve()), NAMESPACE
        else:
            server = request.getfixturevalue("kube_server")
            slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))
            namespace = f"{NAMESPACE}-{next(_namespaces)}-{slug}"[:63].rstrip("-")
        server.call(server.api.create, "v1/namespaces", None, {"metadata": {"name": namespace}})
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", namespace)
        monkeypatch.setenv("KUBECONFIG", kubeconfig)
        # kubernetes.config reads KUBECONFIG when imported: point its default there too (handlers._apis)
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
        cl = Cluster(server, kubeconfig, namespace, private=private)
        switches = server.call(lambda: (server.api.gc.delay, server.api.validate_crds))
        yield cl
        if not private:  # the next test finds the server as this one found it
            server.call(lambda: (setattr(server.api.gc, "delay", switches[0]),
                                 setattr(server.api, "validate_crds", switches[1])))
            _delete_inferencejobs(cl)


# ---- the operator -------------------------------------------------------------------------------

DEFAULT_ENV = {"VESUVIUS_RESYNC_SECONDS": "2", "VESUVIUS_STUCK_POD_SECONDS": "3", "VESUVIUS_DIAGNOSE_SECONDS": "1",
               "VESUVIUS_PROGRESS_SECONDS": "1", "VESUVIUS_MIN_PASS_INTERVAL": "0.2"}
DEFAULT_ARGS = ["--metrics-auth=none"]  # metrics read without a token here (test_metrics_auth.py: with)


class OperatorProcess:
    """``vesuvius-inference operator`` (the Helm chart's command) as a subprocess against the KMock server,
    serving ``namespace`` (None: every namespace, ``--all-namespaces``)."""

    def __init__(self, kubeconfig: str, namespace: str | None, logdir: Path) -> None:
        self.kubeconfig, self.namespace, self.logdir = kubeconfig, namespace, logdir
        self.env = dict(DEFAULT_ENV)
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args = list(DEFAULT_ARGS)
        self.starts = 0
        self.port = 0
        self.metrics_port = 0
        self._started_with: tuple[dict[str, str], list[str]] = ({}, [])

    @property
    def log(self) -> Path:
        return self.logdir / f"operator-{self.starts}.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        assert not self.running(), "the operator is already running"
        self.starts += 1
        self.port, self.metrics_port = _free_port(), _free_port()
        env = dict(os.environ, KUBECONFIG=self.kubeconfig, **self.env)
        scope = ["-n", self.namespace] if self.namespace else ["--all-namespaces"]
        self._started_with = (dict(self.env), list(self.extra_args))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vesuvius_inference.cli", "operator", *scope,
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

    def ensure_default(self) -> None:
        """Running, with the default settings: what a test of the module's shared operator starts from
        (a test before it may have stopped it, or restarted it with other settings)."""
        self.env, self.extra_args = dict(DEFAULT_ENV), list(DEFAULT_ARGS)
        if self.running() and self._started_with != (self.env, self.extra_args):
            self.kill()
        if not self.running():
            self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def snapshot(self) -> dict[str, float]:
        """The unlabelled series of this operator process's ``/metrics``, from one scrape."""
        return {f[0]: float(f[1]) for f in (line.split() for line in self.metrics().splitlines())
                if len(f) == 2 and not f[0].startswith("#") and "{" not in f[0]}

    def metric(self, name: str) -> float:
        """One unlabelled series of this operator process's ``/metrics``."""
        value = self.snapshot().get(name)
        if value is None:
            raise AssertionError(f"no {name} in /metrics")
        return value

    def passes(self) -> float:
        """The reconcile passes this operator process has made (its ``/metrics`` counter)."""
        return self.metric("vesuvius_operator_reconcile_passes_total")

    def resyncs(self) -> float:
        """The periodic resyncs this operator process has made (each listed the unfinished InferenceJobs
        and queued a pass for each)."""
        return self.metric("vesuvius_operator_resyncs_total")

    def _wait_metric(self, what: str, name: str, n: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (value := self.metric(name)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator made {value:.0f} of {n} {what} in {timeout:.0f}s:\n" + self.tail())
            time.sleep(0.1)

    def wait_passes(self, n: float, timeout: float = 60.0) -> None:
        """Until this process has made ``n`` passes in all: a bounded wait on what a fixed sleep hoped for."""
        self._wait_metric("passes", "vesuvius_operator_reconcile_passes_total", n, timeout)

    def wait_resyncs(self, n: float, timeout: float = 60.0) -> None:
        """Until this process has made ``n`` resyncs in all."""
        self._wait_metric("resyncs", "vesuvius_operator_resyncs_total", n, timeout)

    def settle(self, resyncs: int = 1, timeout: float = 60.0) -> None:
        """Until ``resyncs`` more resyncs have queued their passes and every queued pass has run: what the
        operator would do about the present state (an event, or the resync of an unfinished run) is done.
        The bound for tests that prove something does NOT happen, instead of sleeping a resync period."""
        self.wait_resyncs(self.resyncs() + resyncs, timeout)
        deadline, idle = time.monotonic() + timeout, 0
        while idle < 2:  # two scrapes in a row: the depth and the running passes are read one after the other
            m = self.snapshot()
            idle = idle + 1 if m["vesuvius_operator_queue_depth"] == m["vesuvius_operator_queue_processing"] == 0 else 0
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator's queue did not drain in {timeout:.0f}s:\n" + self.tail())
            time.sleep(0.05)

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


@pytest.fixture(scope="module")
def shared_operator(kube_server, tmp_path_factory) -> Iterator[OperatorProcess]:
    """One operator process for the module's tests on its shared server (started by the first that asks)."""
    logdir = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(kube_server.kubeconfig(logdir / "kubeconfig"), None, logdir)
    yield op
    op.kill()


def _series_gone(op: OperatorProcess, namespace: str) -> bool:
    with contextlib.suppress(OSError):
        return f'namespace="{namespace}"' not in op.metrics()
    return True  # no answer: not running


@pytest.fixture
def operator(request: pytest.FixtureRequest, cluster, tmp_path) -> Iterator[OperatorProcess]:
    if cluster.private:  # a server of the test's own: an operator of its own (cluster's docstring says when)
        op = OperatorProcess(cluster.kubeconfig, cluster.namespace, tmp_path)
        cluster.diagnostics.append(op.tail)
        op.start()
        yield op
        op.kill()
        return
    op = request.getfixturevalue("shared_operator")
    op.ensure_default()
    cluster.diagnostics.append(op.tail)
    yield op
    # the test's InferenceJobs go, and with them their metrics series (the next test's metrics are its own)
    _delete_inferencejobs(cluster)
    if op.running():
        cluster.wait("the operator to drop the namespace's metrics", lambda: _series_gone(op, cluster.namespace),
                     timeout=30)


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

    assert cluster.private, "Kueue is installed cluster-wide: mark the test @pytest.mark.own_cluster(...)"
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
