"""Images and containers of the image tests: built images, podman runs as our pods run, probes inside.

Imported by tests/images' tests and its conftest (fixtures there, helpers here: no test imports a conftest).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helpers import tool

ocibuild = tool("ocibuild")  # tools/ocibuild.py: buildah builds, podman run flags, the stand-in bases


@dataclass(frozen=True)
class Image:
    ref: str
    base: str
    user: str  # the image's USER, which the pods run as


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
