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
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import IMAGE_TIMES  # IMAGE_TIMES: the root conftest's summary reads it

from images.containers import Image, ocibuild

# helm, cluster, e2e_storage, s3_env, s3_server: the plugins' fixtures (tests/conftest.py's pytest_plugins)

UNAVAILABLE = ocibuild.unavailable()
TIMES: dict[str, str] = {}  # this process's image builds, for the terminal summary (tests/conftest.py)


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


