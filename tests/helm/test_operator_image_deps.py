"""The operator image's dependency set has no torch: its pip install, run for real in a fresh venv.

The build context is what images/operator/Dockerfile COPYs; the install is the Dockerfile's own
`pip install -c constraints.txt ".[operator]"` (dependencies resolved by pip as in the image, from the
local wheel cache or PyPI), into an empty venv without system site-packages. About 30 s.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers import tool

from helm import dockerfile
from helm.helmtool import REPO

CHECK = ("import sys, vesuvius_inference, vesuvius_inference.k8s.operator_main, vesuvius_inference.k8s.handlers; "
         "assert 'torch' not in sys.modules, 'torch imported'; print(vesuvius_inference.__file__)")


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _dockerfile_pip_install() -> list[str]:
    """The words of the operator Dockerfile's `pip install ...` command."""
    for ins in dockerfile.load(dockerfile.OPERATOR):
        if ins.keyword == "RUN":
            for words in dockerfile.commands(ins):
                if words[:2] == ["pip", "install"]:
                    return words
    raise AssertionError("no `pip install` in images/operator/Dockerfile")


def _images_testable() -> bool:
    return tool("ocibuild").unavailable() is None


@pytest.mark.skipif(_images_testable(), reason="tests/images builds and runs the real operator image here")
def test_operator_install_has_no_torch(tmp_path):
    # 1. the build context: exactly what the Dockerfile copies
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for src in dockerfile.copy_sources(dockerfile.load(dockerfile.OPERATOR)):
        source = REPO / src
        if source.is_dir():
            shutil.copytree(source, ctx / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(source, ctx / src)

    # 2. the package as a wheel (the same setuptools build the image runs, without a build-isolation venv)
    wheels = tmp_path / "wheels"
    proc = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                 "-w", str(wheels), str(ctx)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("vesuvius_inference-*.whl")

    # 3. a fresh venv (no system site-packages), and the Dockerfile's install command in it
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    words = _dockerfile_pip_install()
    targets = [w for w in words if w.startswith(".[")]
    assert targets == ['.[operator]'], words
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    cmd = pip + ["install", "-q"] + [f"{wheel}{w[1:]}" if w.startswith(".[") else w for w in words[2:]]
    proc = _run(cmd, cwd=ctx)
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    # 4. the operator imports without torch, and torch (or the engine) is not installed at all
    proc = _run([str(python), "-c", CHECK], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(env_dir), f"imported from {proc.stdout.strip()}, not the venv"
    for dist in ("torch", "nnunetv2", "torchvision"):
        proc = _run(pip + ["show", dist], cwd=tmp_path)
        assert proc.returncode != 0, f"{dist} is installed in the operator's environment:\n{proc.stdout}"
    for dist in ("kopf", "kubernetes", "vesuvius-inference"):
        assert _run(pip + ["show", dist], cwd=tmp_path).returncode == 0, dist

    # 5. the image's entrypoint works there
    proc = _run([str(env_dir / "bin" / "vesuvius-inference"), "operator", "--help"], cwd=tmp_path)
    assert proc.returncode == 0 and "--all-namespaces" in proc.stdout, proc.stderr
