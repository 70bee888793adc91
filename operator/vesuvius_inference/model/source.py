"""Where a model folder comes from: local paths, object storage (s3://, gs://, ...) or hf://.

Remote models are downloaded once into a content-addressed cache (``--model_cache_dir``, default
``$VESUVIUS_MODEL_CACHE_DIR`` or ``~/.cache/vesuvius-inference/models``) under a file lock, so
several parts on one node share one download, and a filled cache works offline. The seed
downloaded hf:// models into a fresh temporary folder for every part.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vesuvius_inference.contract.errors import BadArguments, BadInput, classify, is_transient
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage
from vesuvius_inference.store.storagewait import call as waiting_call

log = logging.getLogger("vesuvius_inference.model.network")
FOLD = re.compile(r"^fold_(\w+)$")
WANTED = re.compile(r"^(plans\.json|dataset\.json|fold_[^/]+/checkpoint_(final|best)\.pth)$")


def default_cache_dir() -> str:
    """Without --model_cache_dir (or its $VESUVIUS_MODEL_CACHE_DIR, read in config.py)."""
    return os.path.join(os.path.expanduser("~"), ".cache", "vesuvius-inference", "models")


@contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remote_listing(place: Place) -> tuple[Any, str, dict[str, dict[str, Any]]]:
    url = place.url
    fs, root = storage.filesystem(place)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    root = root.rstrip("/")
    files = {}
    for path, info in found.items():
        rel = path[len(root):].lstrip("/")
        if WANTED.match(rel):
            files[rel] = info
    if "plans.json" not in files:
        hint = f"; {url} looks like one fold: pass its parent folder" if FOLD.match(url.rstrip("/").rsplit("/", 1)[-1]) \
            else ""
        raise BadInput(f"model {url} has no plans.json: expected an nnU-Net v2 trained model folder (plans.json, "
                       f"dataset.json, fold_N/checkpoint_final.pth){hint}")
    return fs, root, files


def remote_identity(place: Place) -> str:
    """Content key of a remote model folder from its listing (sizes and ETags), no download."""
    _, _, files = _remote_listing(place)
    h = hashlib.sha256(place.url.encode())
    for rel in sorted(files):
        info = files[rel]
        h.update(f"{rel}:{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime')}".encode())
    return h.hexdigest()[:16]


def _fetch_remote(place: Place, cache_dir: str) -> str:
    """Download into the cache; an outage while listing or downloading waits (storagewait.py): a pod that
    would otherwise fail, be re-created and download the model again waits for the store instead."""
    url = place.url
    doing = f"downloading the model {url}"
    fs, root, files = waiting_call(_remote_listing, place, doing=doing)
    key = waiting_call(remote_identity, place, doing=doing)
    target = os.path.join(cache_dir, key)
    with _locked(target + ".lock"):
        if os.path.exists(os.path.join(target, ".complete")):
            log.info("model %s from cache %s", url, target)
            return target
        tmp = f"{target}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t = time.perf_counter()
        total = 0
        for rel, info in sorted(files.items()):
            dst = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            waiting_call(fs.get_file, f"{root}/{rel}", dst, doing=doing)
            total += int(info.get("size") or 0)
        Path(tmp, ".complete").write_text(url)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        log.info("downloaded model %s (%.1f MB) in %.1f s -> %s", url, total / 1e6, time.perf_counter() - t, target)
        return target


def _fetch_hf(url: str, cache_dir: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise BadArguments("hf:// models need huggingface_hub: pip install 'vesuvius-inference[hf]'") from None
    spec = url[len("hf://"):]
    repo, _, revision = spec.partition("@")
    if repo.count("/") != 1:
        raise BadArguments(f"expected hf://org/model[@revision], got {url!r}")
    try:
        path = waiting_call(snapshot_download, doing=f"downloading the model {url}", repo_id=repo, revision=revision or None, cache_dir=os.path.join(cache_dir, "hf"),
                                 allow_patterns=["plans.json", "dataset.json", "*checkpoint_final.pth",
                                                 "*checkpoint_best.pth"], token=os.environ.get("HF_TOKEN"))
    except Exception as e:  # offline without a cached snapshot, unknown repo, no permission
        if is_transient(e):
            raise classify(e, f"downloading the model {url}") from e
        raise BadInput(f"cannot get model {url}: {type(e).__name__}: {e}") from None
    if not any(p.name.startswith("fold_") for p in Path(path).iterdir()) and Path(path, "checkpoint_final.pth").exists():
        # a flat repo (checkpoint next to plans.json): present it as fold_0, as nnU-Net expects
        flat = os.path.join(cache_dir, "hf-flat", hashlib.sha256(path.encode()).hexdigest()[:16])
        with _locked(flat + ".lock"):
            if not os.path.exists(os.path.join(flat, "fold_0")):
                os.makedirs(os.path.join(flat, "fold_0"), exist_ok=True)
                for name in ("plans.json", "dataset.json"):
                    os.symlink(os.path.join(path, name), os.path.join(flat, name))
                os.symlink(os.path.join(path, "checkpoint_final.pth"),
                           os.path.join(flat, "fold_0", "checkpoint_final.pth"))
        return flat
    return path


def fold_parent(url: str, folds: Sequence[int | str] | None) -> tuple[str, Sequence[int | str] | None]:
    """A local ``fold_N`` folder given as the model: its parent folder with that fold (one line says so).

    nnU-Net's results hold ``plans.json`` and ``dataset.json`` next to the ``fold_N`` folders, so the fold
    folder alone is not a model; pointing at it means "this fold of that model"."""
    if not storage.is_local(url):
        return url, folds
    path = storage.local_path(url).rstrip("/")
    m = FOLD.match(os.path.basename(path))
    parent = os.path.dirname(path) or "."
    if m is None or not os.path.isfile(os.path.join(parent, "plans.json")) or os.path.isfile(os.path.join(path, "plans.json")):
        return url, folds
    fold = m.group(1)
    if folds is not None and [str(f) for f in folds] != [fold]:
        raise BadArguments(f"the model {url} is fold {fold} of the nnU-Net model folder {parent}, but --folds asks "
                           f"for {','.join(map(str, folds))}: pass --model_path {parent} --folds "
                           f"{','.join(map(str, folds))}")
    log.warning("warning: the model %s is fold %s of the nnU-Net model folder %s: using that folder with --folds %s "
                "(pass %s itself to ensemble every fold)", url, fold, parent, fold, parent)
    return parent, [fold]


def _check_local(path: str) -> str:
    """A local model folder that is not there, or is not one, says so (not "check the bucket")."""
    if not os.path.exists(path):
        raise BadInput(f"model folder {path} does not exist on this machine (a model on object storage is given "
                       "by its URL: s3://..., gs://..., hf://org/model)")
    if not os.path.isdir(path):
        raise BadInput(f"model {path} is a file: expected an nnU-Net v2 trained model folder (plans.json, "
                       "dataset.json, fold_N/checkpoint_final.pth)")
    if not os.path.isfile(os.path.join(path, "plans.json")):
        raise BadInput(f"model folder {path} has no plans.json: expected an nnU-Net v2 trained model folder "
                       "(plans.json, dataset.json, fold_N/checkpoint_final.pth)")
    return path


def resolve_model(place: Place, *, cache_dir: str | None = None) -> str:
    """A local folder holding the model at ``place`` (downloaded once into the cache if remote)."""
    cache_dir = cache_dir or default_cache_dir()
    if place.url.startswith("hf://"):
        return _fetch_hf(place.url, cache_dir)
    if place.is_local:
        return _check_local(place.local_path)
    return _fetch_remote(place, cache_dir)
