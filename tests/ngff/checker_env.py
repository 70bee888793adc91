"""The side venvs of the checkers that cannot share the project venv.

- ``ngff-checkers`` (checkers-requirements.txt): ome-zarr-models and ome-zarr-py, which need
  pydantic<2.13 while the project's kubernetes needs >=2.13.5.
- ``zarr2-reader`` (zarr2-requirements.txt): zarr-python 2.x, the reader of the Zarr v2 era that many
  tools of the field still embed; it must open our OME-Zarr 0.4 outputs (the project itself needs zarr 3).

``python tests/ngff/checker_env.py`` builds both (what ``make test``'s install calls); the checks build
one on first use when it is missing. They live in ``.venv/<name>`` (``$VESUVIUS_NGFF_CHECKERS`` moves
``ngff-checkers``) and are rebuilt when their requirements file changes, like the Makefile's install
stamp. Building takes ~30 s each from PyPI; a lock keeps two test runs from building one at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ENVS = {"ngff-checkers": HERE / "checkers-requirements.txt", "zarr2-reader": HERE / "zarr2-requirements.txt"}
REQUIREMENTS = ENVS["ngff-checkers"]


def env_dir(name: str = "ngff-checkers") -> Path:
    if name == "ngff-checkers" and os.environ.get("VESUVIUS_NGFF_CHECKERS"):
        return Path(os.environ["VESUVIUS_NGFF_CHECKERS"])
    return REPO / ".venv" / name


def _stamp(root: Path, requirements: Path) -> Path:
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    return root / f".installed-{digest}"


def checker_python(build: bool = True, name: str = "ngff-checkers") -> Path:
    """The side venv's interpreter, building the venv first if it is missing or stale."""
    root, requirements = env_dir(name), ENVS[name]
    python = root / "bin" / "python"
    if _stamp(root, requirements).exists():
        return python
    if not build:
        raise FileNotFoundError(f"no {name} venv at {root}: run `python tests/ngff/checker_env.py`")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stamp(root, requirements).exists():
            print(f"building the {name} venv at {root} ({requirements.name})", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
            # The base interpreter, not this venv's: the side venv must not see the project's packages.
            base = getattr(sys, "_base_executable", sys.executable)
            for cmd in ([base, "-m", "venv", str(root)],
                        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                         "-r", str(requirements)]):
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr[-3000:]}")
            _stamp(root, requirements).touch()
    return python


if __name__ == "__main__":
    for env in ENVS:
        print(checker_python(name=env))
