"""The side venv for ome-zarr-models and ome-zarr-py (see checkers-requirements.txt for why).

``python tests/ngff/checker_env.py`` builds it (what ``make install`` can call); the checks build it
on first use when it is missing. It lives in ``.venv/ngff-checkers`` (or ``$VESUVIUS_NGFF_CHECKERS``)
and is rebuilt when the requirements file changes, like the Makefile's install stamp. Building
takes ~30 s from PyPI; a lock keeps two test runs from building it at once.
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
REQUIREMENTS = HERE / "checkers-requirements.txt"


def env_dir() -> Path:
    return Path(os.environ.get("VESUVIUS_NGFF_CHECKERS", REPO / ".venv" / "ngff-checkers"))


def _stamp(root: Path) -> Path:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    return root / f".installed-{digest}"


def checker_python(build: bool = True) -> Path:
    """The side venv's interpreter, building the venv first if it is missing or stale."""
    root = env_dir()
    python = root / "bin" / "python"
    if _stamp(root).exists():
        return python
    if not build:
        raise FileNotFoundError(f"no NGFF checker venv at {root}: run `python tests/ngff/checker_env.py`")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".ngff-checkers.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _stamp(root).exists():
            print(f"building the NGFF checker venv at {root} (ome-zarr-models, ome-zarr-py)", file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
            # The base interpreter, not this venv's: the side venv must not see the project's packages.
            base = getattr(sys, "_base_executable", sys.executable)
            for cmd in ([base, "-m", "venv", str(root)],
                        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                         "-r", str(REQUIREMENTS)]):
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}): {done.stderr[-3000:]}")
            _stamp(root).touch()
    return python


if __name__ == "__main__":
    print(checker_python())
