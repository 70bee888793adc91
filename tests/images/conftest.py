"""Fixtures of the container image tests: both images built for real with buildah, run with podman.

Bases: images/*/Dockerfile default to the pinned production bases, which cannot be pulled here; the tests
build on local stand-ins made from Debian packages (tools/ocibuild.py): Debian bookworm with Python 3.11 and
pip for the operator, the same plus the project's CPU torch for the worker (the CUDA base's stand-in).
Stand-ins are cached in podman's image store under a hash of their recipe, so only the first run on a
machine pays for debootstrap (~1 min each); the two product images are built once per test session and
removed at its end.

Needs root, buildah, podman, runc and debootstrap (``make test`` installs them as root on Debian);
otherwise every test here is skipped with the reason.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.append(str(REPO / "tools"))
sys.path.append(str(TESTS / "k8s"))  # kmock_api and job_controller, which k8s/conftest's fixtures import

import ocibuild  # noqa: E402
from helm.conftest import helm  # noqa: E402, F401 - the chart renderer (the operator runs with the chart's args)
from helpers import IMAGE_TIMES  # noqa: E402 - the root conftest's summary reads it
from k8s.conftest import NAMESPACE, cluster, e2e_storage, s3_env  # noqa: E402, F401 - KMock API server, moto S3
from storage.conftest import s3_server  # noqa: E402, F401

UNAVAILABLE = ocibuild.unavailable()
TIMES: dict[str, str] = {}  # this process's image builds, for the terminal summary (tests/conftest.py)


@dataclass(frozen=True)
class Image:
    ref: str
    base: str
    user: str  # the image's USER, which the pods run as


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            # one xdist worker runs every image test: the builds share base images and podman's store
            item.add_marker(pytest.mark.xdist_group("images"))
            if UNAVAILABLE:
                item.add_marker(pytest.mark.skip(reason=UNAVAILABLE))


@pytest.fixture(autouse=True)
def _report_image_times(request):
    """The build times travel with each test's report to tests/conftest.py's summary (under pytest-xdist
    this conftest is loaded by the workers only)."""
    yield
    request.node.user_properties.append((IMAGE_TIMES, dict(TIMES)))


@pytest.fixture(scope="session")
def image_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image-logs")


def _timed(label: str, ref_of, make) -> str:
    """``make()`` timed; the summary tells a cached stand-in from a built one."""
    cached = ocibuild.image_exists(ref_of())
    start = time.monotonic()
    try:
        ref, error = make(), None
    except ocibuild.BuildError as e:
        ref, error = "", f"{label}: {e}"
    if error:  # outside the except block: the message once, without the chained traceback
        pytest.fail(error, pytrace=False)
    TIMES[label] = "cached" if cached else f"{time.monotonic() - start:.0f} s"
    return ref


@pytest.fixture(scope="session")
def python_base(image_logs) -> str:
    """The operator's stand-in base (python:3.11-slim-bookworm from Debian packages)."""
    log = image_logs / "python-base.log"
    return _timed("python stand-in", ocibuild.python_base_ref, lambda: ocibuild.python_base(log))


@pytest.fixture(scope="session")
def torch_version() -> str:
    """The torch of the worker's stand-in: the project's own (the CPU build the venv holds)."""
    return importlib.metadata.version("torch")


@pytest.fixture(scope="session")
def torch_base(python_base, image_logs, torch_version) -> str:
    spec = f"torch=={torch_version}"
    wheel = ocibuild.find_wheel(spec)
    log = image_logs / "torch-base.log"
    return _timed("torch stand-in", lambda: ocibuild.torch_base_ref(python_base, str(wheel) if wheel else spec),
                  lambda: ocibuild.torch_base(log, spec, python_base))


def _build(name: str, base: str, logs: Path) -> Iterator[Image]:
    tag = f"localhost/vesuvius-inference-{name}:test-{uuid.uuid4().hex[:8]}"
    try:
        built, error = ocibuild.build(name, base, tag, logs / f"{name}.log"), None
    except ocibuild.BuildError as e:
        built, error = None, f"images/{name}/Dockerfile does not build on {base}: {e}"
    if error or built is None:  # outside the except block: the message once, without the chained traceback
        pytest.fail(error or name, pytrace=False)
    TIMES[f"{name} build"] = f"{built.seconds:.0f} s"
    try:
        yield Image(tag, base, ocibuild.image_config(tag, "User"))
    finally:
        ocibuild.remove_image(tag)


@pytest.fixture(scope="session")
def operator_image(python_base, image_logs) -> Iterator[Image]:
    yield from _build("operator", python_base, image_logs)


@pytest.fixture(scope="session")
def worker_image(torch_base, image_logs) -> Iterator[Image]:
    yield from _build("worker", torch_base, image_logs)


# ---- running containers -------------------------------------------------------------------------

def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ocibuild.PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}... exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                             f"\n{proc.stderr[-3000:]}")
    return proc


@dataclass
class Container:
    """A podman container run as a pod of ours runs: see ocibuild.run_flags."""

    image: Image
    args: Sequence[str] = ()
    entrypoint: str | None = None
    env: dict[str, str] | None = None
    volumes: Sequence[tuple[Path | str, str]] = ()  # (host path, container path), read-write
    ro_volumes: Sequence[tuple[Path | str, str]] = ()
    user: str | None = None
    read_only: bool = True
    tmpfs: bool = True

    def __post_init__(self) -> None:
        self.name = f"vesuvius-test-{uuid.uuid4().hex[:10]}"

    def command(self, detach: bool = False) -> list[str]:
        cmd = ocibuild.run_flags(self.user or self.image.user, tmpfs=self.tmpfs, read_only=self.read_only)
        cmd += ["--name", self.name]
        if detach:
            cmd.append("--detach")
        for key, value in (self.env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        for host, ctr in self.volumes:
            cmd += ["--volume", f"{host}:{ctr}:rw"]
        for host, ctr in self.ro_volumes:
            cmd += ["--volume", f"{host}:{ctr}:ro"]
        if self.entrypoint is not None:
            cmd += ["--entrypoint", self.entrypoint]
        return [*cmd, self.image.ref, *self.args]

    def run(self, timeout: float = 300, keep: bool = False) -> subprocess.CompletedProcess[str]:
        """Run to completion; the container is removed unless ``keep`` (then call ``remove``)."""
        try:
            return subprocess.run(self.command(), capture_output=True, text=True, timeout=timeout)
        finally:
            if not keep:
                self.remove()

    def start(self) -> None:
        proc = subprocess.run(self.command(detach=True), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"podman run failed:\n{proc.stderr}"

    def running(self) -> bool:
        proc = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def remove(self) -> None:
        podman("rm", "--force", "--time", "5", self.name, check=False, timeout=60)


def python_in(image: Image, code: str, **kw) -> dict:
    """Run ``code`` with the image's python (entrypoint overridden); it prints one JSON document."""
    proc = Container(image, args=["-c", code], entrypoint="python", **kw).run(timeout=120)
    assert proc.returncode == 0, f"python in {image.ref} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def writable_paths(image: Image, user: str) -> set[str]:
    """Paths ``user`` may write in the image's own filesystem (root filesystem writable, nothing mounted):
    each writable file or folder, not descending into writable folders."""
    proc = Container(image, args=["/", "-xdev", "-writable", "-print", "-prune"], entrypoint="find", user=user,
                     read_only=False, tmpfs=False).run(timeout=120)
    assert proc.stdout, proc.stderr  # find exits 1 on unreadable folders (e.g. /root): expected
    return set(proc.stdout.split())
