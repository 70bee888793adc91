#!/usr/bin/env python3
"""Build the project's container images with buildah and run them with podman: no Docker engine needed.

The Dockerfiles (images/worker, images/operator) take their base as ``--build-arg BASE_IMAGE``; their
defaults are the pinned production bases. Where those cannot be pulled (no registry but PyPI, Debian and
npm here), this module makes local stand-ins from Debian packages:

- ``python``: Debian bookworm minbase with Python 3.11 and pip (debootstrap), what python:3.11-slim-bookworm
  is: no EXTERNALLY-MANAGED marker, ``python`` and ``pip`` on PATH, ``CMD ["python3"]``.
- ``torch``: the same plus one torch build, installed from a wheel file, so that ``pip freeze`` prints
  ``torch @ file://...`` as it does for a conda-installed torch (stands in for pytorch/pytorch's CUDA base).

Stand-ins are tagged ``localhost/vesuvius-standin-<kind>:<hash of their recipe and inputs>`` and kept in
podman's image store, so a second build (in the same test run or a later one on this machine) reuses them.

The build machine's pip configuration (``pip config list``: its CA bundle, find-links, local indexes,
constraint files) reaches each build through mounts only: a generated pip.conf and the files and folders
it names are bind-mounted read-only over ``/root`` for the RUN steps (root's pip reads
``~/.config/pip/pip.conf``; HOME is /root while the Dockerfiles install). ``/root`` exists in every base, so
buildah leaves no mount-point stub behind and the image holds no trace of the build machine.

CLI (as root)::

    python3 tools/ocibuild.py base python|torch [--torch SPEC] [--rebuild]
    python3 tools/ocibuild.py build operator|worker [--base IMAGE] [--tag TAG]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import fcntl
import hashlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"operator": REPO / "images" / "operator" / "Dockerfile", "worker": REPO / "images" / "worker" / "Dockerfile"}
TORCH_CONTAINERFILE = REPO / "images" / "standin" / "torch.Containerfile"
STANDIN_REPO = "localhost/vesuvius-standin"
SUITE = "bookworm"
PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates", "passwd")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TOOLS = ("buildah", "podman", "runc", "debootstrap")
# runc fails on setrlimit without explicit limits on this kind of host; crun fails on hybrid cgroups.
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
PODMAN = ("podman", "--runtime", "runc")
LOCK = Path("/var/tmp/vesuvius-inference-ocibuild.lock")
HOST_PIP = "/root/.host-pip"  # where the build machine's pip inputs appear during RUN steps


class BuildError(RuntimeError):
    """A command of a build failed; the message ends with the tail of its output."""


def unavailable() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    if sys.platform != "linux":
        return f"container image tests need Linux (this is {sys.platform})"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f"container image tests need {' '.join(TOOLS)} (missing: {' '.join(missing)}); "
                "`make test` installs them as root on Debian")
    if os.geteuid() != 0:
        return "container image tests need root (rootful buildah/podman and debootstrap)"
    return None


def _run(cmd: Sequence[str], log: Path | None = None, timeout: float = 1800, stdin: int | None = None,
         env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; output to ``log`` (appended) or returned; BuildError with the output's tail on failure."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(log, "ab")) if log else subprocess.PIPE
        if log:
            out.write(f"$ {shlex.join(cmd)}\n".encode())
            out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=stdin, timeout=timeout,
                              env=env)
    text = log.read_text(errors="replace") if log else proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-60:])
        raise BuildError(f"`{shlex.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return text


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One stand-in build at a time on this machine (concurrent test runs share podman's store)."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def image_exists(ref: str) -> bool:
    return subprocess.run([*PODMAN, "image", "exists", ref], capture_output=True).returncode == 0


def remove_image(ref: str) -> None:
    subprocess.run([*PODMAN, "rmi", "--force", ref], capture_output=True)


def _drop_other_tags(repo: str, keep: str) -> None:
    """Stand-ins of older recipes are dead weight (a GB each): remove them."""
    proc = subprocess.run([*PODMAN, "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                          capture_output=True, text=True)
    for ref in proc.stdout.split():
        if ref != keep and ref.startswith(repo + ":"):
            remove_image(ref)


# ---- the build machine's pip configuration, as mounts --------------------------------------------

def host_pip_config(python: str = sys.executable) -> dict[str, dict[str, str]]:
    """``pip config list`` as {section: {key: value}}; environment variables (``:env:``) go to ``global``
    and override the same key in every section, as they do in pip."""
    proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    conf: dict[str, dict[str, str]] = {}
    env: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"([^=]*)\.([a-z0-9_-]+)=(.*)", line.strip())
        if not m:
            continue
        section, key, value = m.group(1), m.group(2).replace("_", "-"), str(ast.literal_eval(m.group(3)))
        if section == ":env:":
            env[key] = value
        else:
            conf.setdefault(section, {})[key] = value
    for key, value in env.items():
        for section in conf.values():
            section.pop(key, None)
        conf.setdefault("global", {})[key] = value
    return conf


# Host paths that make no sense inside a build (or would write to the host).
_DROPPED_KEYS = {"cache-dir", "log", "target", "prefix", "root", "src", "user", "require-virtualenv", "python"}


@dataclass
class PipMounts:
    """A staging folder mounted over /root, plus the read-only binds of the folders pip.conf names."""

    staging: Path
    binds: list[tuple[str, str]] = field(default_factory=list)  # (host path, container path)

    def volume_args(self) -> list[str]:
        args = ["-v", f"{self.staging}:/root:ro"]
        for host, ctr in self.binds:
            args += ["-v", f"{host}:{ctr}:ro"]
        return args


def pip_mounts(staging: Path, conf: dict[str, dict[str, str]] | None = None,
               extra_dirs: Sequence[Path] = ()) -> PipMounts:
    """Stage the host's pip configuration for a build: files (CA bundles, constraint files) are copied,
    folders (find-links, file:// indexes, ``extra_dirs``) become bind mounts under /root/.host-pip."""
    conf = host_pip_config() if conf is None else conf
    mounts = PipMounts(staging)
    host = staging / ".host-pip"
    host.mkdir(parents=True)
    (staging / ".config" / "pip").mkdir(parents=True)
    counter = iter(range(10_000))

    def bind(path: Path) -> str:
        name = f"d{next(counter)}"
        (host / name).mkdir()  # the mount point lives in the staging folder, not in the image
        mounts.binds.append((str(path), f"{HOST_PIP}/{name}"))
        return f"{HOST_PIP}/{name}"

    def copy(path: Path) -> str:
        name = f"f{next(counter)}-{path.name}"
        shutil.copy2(path, host / name)
        return f"{HOST_PIP}/{name}"

    def local(value: str) -> Path | None:
        if value.startswith("file://"):
            return Path(urllib.parse.unquote(urllib.parse.urlparse(value).path))
        return None if "://" in value else Path(value)

    def find_link(value: str) -> str:
        path = local(value)
        if path is None or not path.exists():
            return value
        if path.is_dir():
            return bind(path)
        return f"{bind(path.parent)}/{path.name}"  # an HTML page of links: its folder holds what it links to

    def index(value: str) -> str:
        path = local(value)
        if path is None or not path.exists():
            return value
        # A PEP 503 page links relatively (../../files/x.whl from simple/<project>/): mount the parent.
        return "file://" + urllib.parse.quote(f"{bind(path.parent)}/{path.name}")

    lines: list[str] = []
    for section, items in conf.items():
        lines.append(f"[{section}]")
        for key, value in items.items():
            if key in _DROPPED_KEYS:
                continue
            words = value.split()
            if key in ("cert", "client-cert"):
                value = copy(Path(value)) if Path(value).is_file() else value
            elif key in ("constraint", "requirement"):
                value = " ".join(copy(Path(w)) if Path(w).is_file() else w for w in words)
            elif key == "find-links":
                value = " ".join(find_link(w) for w in words)
            elif key in ("index-url", "extra-index-url"):
                value = " ".join(index(w) for w in words)
            lines.append(f"{key} = {value}")
    for path in extra_dirs:
        bind(Path(path))
    (staging / ".config" / "pip" / "pip.conf").write_text("\n".join(lines) + "\n")
    return mounts


# ---- stand-in bases -------------------------------------------------------------------------------

def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org."""
    override = os.environ.get("VESUVIUS_DEBIAN_MIRROR")
    if override:
        return override
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        with contextlib.suppress(OSError):
            text = src.read_text()
            for block in text.split("\n\n"):
                if re.search(r"^Suites:.*\bbookworm\b", block, re.M) and re.search(r"^Components:.*\bmain\b", block, re.M):
                    m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                    if m and m.group(1).rstrip("/").endswith("/debian"):
                        return m.group(1)
            for line in text.splitlines():
                m = re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+bookworm\s+.*\bmain\b", line)
                if m:
                    return m.group(1)
    return DEFAULT_MIRROR


def _python_rootfs(root: Path, mirror: str, log: Path) -> None:
    """python:3.11-slim-bookworm, from Debian packages."""
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
         log=log)
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()  # the official image has none: pip installs system-wide
    (root / "usr/bin/python").symlink_to("python3")
    for junk in [*root.glob("var/cache/apt/archives/*.deb"), *root.glob("var/lib/apt/lists/*")]:
        if junk.is_file():
            junk.unlink()
    for required in ("usr/bin/python3", "usr/bin/pip", "usr/sbin/useradd", "usr/sbin/groupadd",
                     "etc/ssl/certs/ca-certificates.crt"):
        if not (root / required).exists():
            raise BuildError(f"the stand-in base lacks /{required}")


PYTHON_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                  'CMD ["python3"]')


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:12]


def python_base_ref() -> str:
    return f"{STANDIN_REPO}-python:" + _key(inspect.getsource(_python_rootfs), repr(PACKAGES), SUITE,
                                              repr(PYTHON_CHANGES))


def python_base(log: Path, rebuild: bool = False) -> str:
    """The Python stand-in's image reference, made if missing (debootstrap, ~1-2 min)."""
    ref = python_base_ref()
    with _locked():
        if image_exists(ref) and not rebuild:
            return ref
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="vesuvius-standin-") as tmp:
            root = Path(tmp) / "rootfs"
            _python_rootfs(root, debian_mirror(), log)
            changes = [a for c in PYTHON_CHANGES for a in ("--change", c)]
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                _run([*PODMAN, "import", *changes, "-", ref], log=log, stdin=tar.stdout)
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
        _drop_other_tags(f"{STANDIN_REPO}-python", ref)
        return ref


def find_wheel(spec: str, conf: dict[str, dict[str, str]] | None = None) -> Path | None:
    """A local wheel file for ``torch==V`` in the host pip's find-links folders, if there is one."""
    m = re.fullmatch(r"torch==(\S+)", spec)
    if not m:
        return None
    conf = host_pip_config() if conf is None else conf
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for section in conf.values():
        for link in section.get("find-links", "").split():
            folder = Path(urllib.parse.unquote(urllib.parse.urlparse(link).path) if link.startswith("file://") else link)
            if folder.is_dir():
                for wheel in sorted(folder.glob(f"torch-{m.group(1)}-{py}-{py}-*linux*_x86_64.whl")):
                    return wheel
    return None


def torch_base_ref(python_ref: str, torch: str) -> str:
    wheel = Path(torch)
    ident = f"{wheel.name}:{wheel.stat().st_size}" if wheel.is_file() else torch
    return f"{STANDIN_REPO}-torch:" + _key(python_ref, TORCH_CONTAINERFILE.read_bytes(), ident)


def torch_base(log: Path, torch: str, python_ref: str | None = None, rebuild: bool = False) -> str:
    """The worker's stand-in: the Python stand-in plus ``torch`` (a wheel path, or a requirement such as
    ``torch==2.13.0+cpu`` for which a local wheel is looked up first). Built with buildah (~1 min)."""
    python_ref = python_ref or python_base(log)
    wheel = Path(torch) if Path(torch).is_file() else find_wheel(torch)
    ref = torch_base_ref(python_ref, str(wheel) if wheel else torch)
    with _locked():
        if image_exists(ref) and not rebuild:
            return ref
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="vesuvius-standin-") as tmp:
            mounts = pip_mounts(Path(tmp) / "root", extra_dirs=[wheel.parent] if wheel else [])
            target = f"{mounts.binds[-1][1]}/{wheel.name}" if wheel else torch
            context = Path(tmp) / "context"
            context.mkdir()
            _run(["buildah", "bud", *_bud_flags(), *mounts.volume_args(),
                  "--build-arg", f"BASE_IMAGE={python_ref}", "--build-arg", f"TORCH={target}",
                  "-f", str(TORCH_CONTAINERFILE), "-t", ref, str(context)], log=log)
        _drop_other_tags(f"{STANDIN_REPO}-torch", ref)
        return ref


# ---- the product images ---------------------------------------------------------------------------

def _bud_flags() -> list[str]:
    return ["--isolation", "chroot", "--network", "host", "--pull=never", *ULIMITS]


@dataclass
class Built:
    ref: str
    base: str
    seconds: float
    log: Path


def build(image: str, base: str, tag: str, log: Path, dockerfile: Path | None = None,
          context: Path = REPO) -> Built:
    """``buildah bud`` of images/<image>/Dockerfile from the repository root, on ``base``."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="vesuvius-build-") as tmp:
        mounts = pip_mounts(Path(tmp) / "root")
        _run(["buildah", "bud", *_bud_flags(), *mounts.volume_args(), "--build-arg", f"BASE_IMAGE={base}",
              "-f", str(dockerfile or DOCKERFILES[image]), "-t", tag, str(context)], log=log)
    return Built(tag, base, time.monotonic() - start, log)


def image_config(ref: str, field_: str) -> str:
    """One field of the image's config (``User``, ``Entrypoint``, ``WorkingDir``...), as podman prints it."""
    return _run([*PODMAN, "image", "inspect", "--format", "{{.Config." + field_ + "}}", ref]).strip()


def run_flags(user: str, tmpfs: bool = True, read_only: bool = True) -> list[str]:
    """podman run flags of a pod as our manifests and chart declare it: the image's user, a read-only root
    filesystem with only /tmp writable (podman's --read-only would also make /run and /var/tmp writable
    tmpfs: Kubernetes does not), no capabilities, no privilege escalation, host network (services on
    127.0.0.1)."""
    flags = [*PODMAN[1:], "run", "--pull=never", "--network", "host", *ULIMITS, "--user", user,
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    if read_only:
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if tmpfs:
        flags += ["--tmpfs", "/tmp:rw,exec,nosuid,nodev,mode=1777"]  # an emptyDir
    return ["podman", *flags]


def default_torch() -> str:
    """``torch==<the torch this interpreter has>`` (the project venv's CPU build), else the tested release."""
    import importlib.metadata

    try:
        return f"torch=={importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        return "torch==2.13.0+cpu"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ocibuild", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="make (or find) a stand-in base; prints its reference")
    b.add_argument("kind", choices=["python", "torch"])
    b.add_argument("--torch", default=default_torch(), help="torch wheel path or requirement (default: %(default)s)")
    b.add_argument("--rebuild", action="store_true")
    i = sub.add_parser("build", help="build images/<image>/Dockerfile on a base (default: its stand-in)")
    i.add_argument("image", choices=sorted(DOCKERFILES))
    i.add_argument("--base", help="base image reference (default: the stand-in)")
    i.add_argument("--torch", default=default_torch(), help="torch of the worker's stand-in (default: %(default)s)")
    i.add_argument("--tag", help="default: localhost/vesuvius-inference-<image>:dev")
    args = p.parse_args(argv)
    reason = unavailable()
    if reason:
        print(f"ocibuild: {reason}", file=sys.stderr)
        return 2
    log = Path(tempfile.mkstemp(prefix="ocibuild-", suffix=".log")[1])
    try:
        if args.cmd == "base":
            ref = python_base(log, args.rebuild) if args.kind == "python" else torch_base(log, args.torch,
                                                                                          rebuild=args.rebuild)
            print(ref)
        else:
            base = args.base or (python_base(log) if args.image == "operator" else torch_base(log, args.torch))
            built = build(args.image, base, args.tag or f"localhost/vesuvius-inference-{args.image}:dev", log)
            print(f"{built.ref} (on {base}, {built.seconds:.0f} s; log {log})")
    except BuildError as e:
        print(f"ocibuild: {e}\n(full log: {log})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
