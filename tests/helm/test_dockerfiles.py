"""The worker and operator Dockerfiles, parsed and checked against the package and the chart (fast, and run
where images cannot be built; tests/images builds and runs them with buildah and podman)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from vesuvius_inference.k8s import manifests

from helm import dockerfile
from helm.helmtool import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

IMAGES = {"worker": dockerfile.WORKER, "operator": dockerfile.OPERATOR}
ENTRYPOINTS = {"worker": ["vesuvius-inference"], "operator": ["vesuvius-inference", "operator"]}
EXTRAS = {"worker": {"engine", "s3"}, "operator": {"operator"}}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_parser_joins_continuations_and_drops_comments():
    parsed = dockerfile.parse("FROM a:1.2.3\n# c\nRUN x \\\n  # inner comment\n  && y \\\n  && z\nUSER 1\n")
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "a:1.2.3", 1), ("RUN", "x && y && z", 3), ("USER", "1", 7)]


@pytest.mark.parametrize("image", list(IMAGES))
def test_base_image_is_pinned(image):
    froms = dockerfile.base_images(dockerfile.load(IMAGES[image]))
    assert froms
    for ref in froms:
        name, _, digest = ref.partition("@")
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        assert tag != "latest", ref
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or re.search(r"\d+\.\d+\.\d+", tag), (
            f"{ref}: pin an exact version tag (x.y.z) or a digest")


@pytest.mark.parametrize("image", list(IMAGES))
def test_base_image_is_a_build_argument(image):
    """`ARG BASE_IMAGE=<pinned>` then `FROM ${BASE_IMAGE}`: releases use the pin, tests a local stand-in."""
    instructions = dockerfile.load(IMAGES[image])
    assert [i.args for i in instructions if i.keyword == "FROM"] == ["${BASE_IMAGE}"]
    default = dockerfile.global_args(instructions)["BASE_IMAGE"]
    assert default and dockerfile.base_images(instructions) == [default]
    assert dockerfile.base_images(instructions, {"BASE_IMAGE": "localhost/x:1"}) == ["localhost/x:1"]


@pytest.mark.parametrize("image", list(IMAGES))
def test_runs_as_a_numeric_non_root_user(image):
    instructions = dockerfile.load(IMAGES[image])
    users = [i for i in instructions if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1].args}: use a numeric non-zero UID (runAsNonRoot)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # nothing after the last USER runs as someone else
    assert all(i.keyword not in ("RUN", "COPY", "ADD") for i in instructions if i.line > users[-1].line)
    env = dockerfile.env_vars(instructions)
    assert env.get("HOME") == "/tmp", "HOME must be writable with a read-only root filesystem"


@pytest.mark.parametrize("image", list(IMAGES))
def test_entrypoint_is_the_console_script(image):
    entrypoints = [i for i in dockerfile.load(IMAGES[image]) if i.keyword == "ENTRYPOINT"]
    assert entrypoints and entrypoints[-1].exec_form() == ENTRYPOINTS[image]
    scripts = {ep.name: ep for ep in importlib.metadata.distribution("vesuvius-inference").entry_points
               if ep.group == "console_scripts"}
    assert scripts["vesuvius-inference"].value == "vesuvius_inference.cli:main"
    assert callable(scripts["vesuvius-inference"].load())
    assert PYPROJECT["project"]["scripts"]["vesuvius-inference"] == "vesuvius_inference.cli:main"


def test_operator_entrypoint_runs():
    script = Path(sys.executable).parent / "vesuvius-inference"
    assert script.exists(), f"{script}: is the package installed in this venv?"
    proc = subprocess.run([str(script), "operator", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--all-namespaces" in proc.stdout and "--namespace" in proc.stdout and "--liveness" in proc.stdout


@pytest.mark.parametrize("image", list(IMAGES))
def test_installs_the_right_extras(image):
    installs = dockerfile.pip_install_extras(dockerfile.load(IMAGES[image]))
    assert installs == [EXTRAS[image]], installs
    assert EXTRAS[image] <= set(PYPROJECT["project"]["optional-dependencies"])


def test_operator_image_installs_no_torch():
    extras = PYPROJECT["project"]["optional-dependencies"]
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] + extras["operator"]]
    assert not {r.name for r in reqs} & {"torch", "nnunetv2", "torchvision"}
    text = dockerfile.OPERATOR.read_text()
    assert not re.search(r"pip install[^\n]*\btorch\b", text)


def test_worker_keeps_the_base_torch():
    """The base image's torch satisfies the engine extra and nnunetv2, and pip is told not to replace it."""
    instructions = dockerfile.load(dockerfile.WORKER)
    (base,) = dockerfile.base_images(instructions)
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", base.split("@")[0])
    assert m, f"{base}: expected an official pytorch/pytorch CUDA runtime tag"
    torch_version = Version(m.group(1))
    engine = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["engine"]]
    nnunet_torch = [Requirement(r) for r in importlib.metadata.requires("nnunetv2") or []
                    if Requirement(r).name == "torch" and not Requirement(r).marker]
    for req in [r for r in engine if r.name == "torch"] + nnunet_torch:
        assert req.specifier.contains(torch_version), f"torch {torch_version} (base image) does not satisfy {req}"
    pins, check = _torch_pin_commands()
    install = next(c for i in instructions if i.keyword == "RUN" for c in dockerfile.commands(i) if c[:2] == ["pip", "install"])
    assert install[install.index("-c") + 1] == pins["file"], install
    cmds = [c for i in instructions if i.keyword == "RUN" for c in dockerfile.commands(i)]
    assert cmds.index(pins["words"]) < cmds.index(install) < cmds.index(check["words"]), "pin, install, check"


def _torch_pin_commands() -> tuple[dict, dict]:
    """The worker Dockerfile's two python one-liners: `python -c PIN > FILE` (pins of the base's torch stack)
    and the check after `pip install` that reads FILE."""
    cmds = [c for i in dockerfile.load(dockerfile.WORKER) if i.keyword == "RUN" for c in dockerfile.commands(i)]
    pin = next(c for c in cmds if c[:2] == ["python", "-c"] and ">" in c)
    path = pin[pin.index(">") + 1]
    check = next(c for c in cmds if c[:2] == ["python", "-c"] and path in c[2])
    return {"words": pin, "code": pin[2], "file": path}, {"words": check, "code": check[2]}


def _fake_site(root: Path, dists: dict[str, str], direct_url: bool = True) -> Path:
    """A site-packages holding only distribution metadata, as a conda-installed base has it (direct_url.json
    points at a file, so pip's freeze prints `torch @ file://...`)."""
    site = root / "site"
    for name, version in dists.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        if direct_url:
            (info / "direct_url.json").write_text(f'{{"url": "file:///opt/conda/pkgs/{name}-{version}.whl", "archive_info": {{}}}}')
    return site


def _run_code(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -S: no site-packages but the fake one (PYTHONPATH), so the venv's own torch is not seen
    env = {"PYTHONPATH": str(site), "PATH": os.environ.get("PATH", "")}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=60)


def test_worker_torch_pins_come_from_the_installed_metadata(tmp_path):
    """The Dockerfile's own pin and check code, run against a conda-style base's metadata."""
    pins, check = _torch_pin_commands()
    base = {"torch": "2.7.1+cu128", "torchvision": "0.22.1", "triton": "3.3.1", "torchmetrics": "1.0.0",
            "numpy": "2.1.0"}
    site = _fake_site(tmp_path / "base", base)
    proc = _run_code(pins["code"], site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["torch==2.7.1+cu128", "torchvision==0.22.1", "triton==3.3.1"]
    # the check after `pip install`: passes when the stack is unchanged, fails when pip swapped torch
    pinned = tmp_path / pins["file"].lstrip("/")
    pinned.parent.mkdir(parents=True, exist_ok=True)
    pinned.write_text(proc.stdout)
    code = check["code"].replace(pins["file"], str(pinned))
    assert _run_code(code, site, tmp_path).returncode == 0
    swapped = _fake_site(tmp_path / "swapped", dict(base, torch="2.14.1"))
    proc = _run_code(code, swapped, tmp_path)
    assert proc.returncode != 0 and "pip replaced the base image torch stack" in proc.stderr, proc.stderr
    # a base without torch is refused at once
    proc = _run_code(pins["code"], _fake_site(tmp_path / "none", {"numpy": "2.1.0"}), tmp_path)
    assert proc.returncode != 0 and "the base image has no torch" in proc.stderr, proc.stderr


def test_worker_model_cache_and_home():
    instructions = dockerfile.load(dockerfile.WORKER)
    env = dockerfile.env_vars(instructions)
    assert env["VESUVIUS_MODEL_CACHE_DIR"] == manifests.MODEL_CACHE == "/var/cache/vesuvius"
    uid = [i for i in instructions if i.keyword == "USER"][-1].args.split(":")[0]
    run = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert f"mkdir -p {manifests.MODEL_CACHE}" in run and re.search(rf"chown {uid}(:\d+)? {manifests.MODEL_CACHE}", run)


# ---- the build context ---------------------------------------------------------------------------

def _ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out when it or a parent directory matches; the last matching line wins."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern(pattern.lstrip("!").lstrip("/"))
        if any(regex.match(c) for c in candidates):
            out = not negate
    return out


def test_dockerignore():
    patterns = _ignore_patterns()
    for path in (".venv", ".venv/bin/python", ".git/HEAD", "tests/helm/test_chart.py", "demo-output/x.zarr",
                 "operator/vesuvius_inference/__pycache__/cli.cpython-311.pyc", ".pytest_cache", ".ruff_cache",
                 "operator/vesuvius_inference.egg-info/PKG-INFO", "build/lib"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker build context"
    for image, path in IMAGES.items():
        sources = dockerfile.copy_sources(dockerfile.load(path))
        assert sources, image
        for src in sources:
            assert (REPO / src).exists(), f"{image}: COPY {src}: no such path"
            assert not _ignored(src, patterns), f"{image}: COPY {src} is excluded by .dockerignore"
        for must in ("pyproject.toml", "README.md", "operator"):
            assert must in sources, f"{image}: the package build needs {must}"
    assert not _ignored("operator/vesuvius_inference/demo/model/plans.json", patterns)
