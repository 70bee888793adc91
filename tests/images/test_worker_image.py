"""The worker image, built from images/worker/Dockerfile on the CUDA base's stand-in (the project's CPU
torch, installed from a wheel file the way conda-style bases install theirs), and run as the operator's
Jobs run it: the Job manifests' args and env (vesuvius_inference.k8s.manifests), the image's user, a
read-only root filesystem with emptyDirs at /tmp and the model cache, no capabilities; S3 is moto's
server (tests/k8s/conftest.py's ``e2e_storage``: a tiny model and a 32x64x64 volume)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s.job_controller import (  # the kubelet's $(VAR) expansion, downward API
    expand,
    field_ref,
    resource_field_ref,
)
from plugins.k8s import NAMESPACE, SAMPLE
from vesuvius_inference.k8s import manifests, spec

from images.containers import Container, Image, podman, python_in, writable_paths

pytestmark = pytest.mark.slow

TORCH_PROBE = """
import hashlib, importlib.metadata as m, json, os, subprocess, sys
import torch
d = m.distribution("torch")
lib = os.path.join(os.path.dirname(torch.__file__), "lib")
stats = {f: os.stat(os.path.join(lib, f)) for f in sorted(os.listdir(lib)) if f.startswith("libtorch")}
files = {f: [s.st_size, s.st_mtime_ns] for f, s in stats.items()}
freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
print(json.dumps({
    "version": torch.__version__, "module": torch.__file__, "files": files,
    "record": hashlib.sha256((d.read_text("RECORD") or "").encode()).hexdigest(),
    "torch_dists": sorted(x.version for x in m.distributions() if (x.metadata["Name"] or "").lower() == "torch"),
    "freeze": [line for line in freeze.splitlines() if line.lower().startswith("torch ") or line.lower().startswith("torch==")],
}))
"""


def test_torch_is_the_bases(worker_image, torch_version):
    """pip did not replace (or shadow) the base's torch: same distribution, same files, same mtimes."""
    base = python_in(Image(worker_image.base, worker_image.base, "0:0"), TORCH_PROBE)
    image = python_in(worker_image, TORCH_PROBE)
    assert base["version"] == torch_version  # the stand-in carries the project's torch
    # the base installed torch from a file, as conda-style bases do: pip's freeze has no version to grep
    assert base["freeze"] and base["freeze"][0].startswith("torch @ file://"), base["freeze"]
    assert image["torch_dists"] == [base["version"]], f"torch in the image: {image['torch_dists']}"
    for key in ("version", "module", "record", "files"):
        assert image[key] == base[key], f"the image's torch differs from its base's ({key}): {image[key]} != {base[key]}"


def test_adds_only_the_model_cache_as_writable(worker_image):
    base = writable_paths(Image(worker_image.base, worker_image.base, "0:0"), worker_image.user)
    mine = writable_paths(worker_image, worker_image.user)
    assert "/tmp" in mine
    assert mine - base == {manifests.MODEL_CACHE}, f"writable for {worker_image.user} beyond the base's"


# ---- the three stages on S3, as the Jobs run them ---------------------------------------------------

def _spec(prefix: str) -> dict:
    body = yaml.safe_load(SAMPLE.read_text())
    body["spec"]["output"]["uri"] = f"s3://results/{prefix}/PHerc0332/surface.zarr"
    body["spec"]["inference"] = {"tta": False, "device": "cpu"}  # no GPU here: cuda would exit 69
    body["spec"]["keepIntermediates"] = True  # compare what the stages leave in the workdir too
    return body


def _env_value(meta: dict, container: dict, e: dict) -> str:
    """One env entry as the kubelet resolves it: a literal, or the downward API (a pod annotation, a request)."""
    ref = e.get("valueFrom") or {}
    if "fieldRef" in ref:
        return field_ref(meta, ref["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in ref:
        return resource_field_ref(container, ref["resourceFieldRef"])
    return e["value"]


def _containers(body: dict) -> list[dict]:
    js = spec.parse(body["spec"])
    name = body["metadata"]["name"]
    jobs = [manifests.predict_job(name, NAMESPACE, "uid", spec=js), manifests.blend_job(name, NAMESPACE, "uid", spec=js),
            manifests.finalize_job(name, NAMESPACE, "uid", spec=js)]
    out = []
    for job in jobs:
        assert job["spec"]["completions"] == 1
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert all("emptyDir" in v for v in pod["volumes"]), pod["volumes"]
        env = {e["name"]: _env_value(job["spec"]["template"]["metadata"], container, e) for e in container["env"]}
        if job["spec"]["completionMode"] == "Indexed":
            env["JOB_COMPLETION_INDEX"] = "0"  # the Job controller injects it into Indexed pods
        out.append({"stage": container["name"], "args": [expand(a, env) for a in container["args"]], "env": env,
                    "mounts": [m["mountPath"] for m in container["volumeMounts"]]})
    return out


# Objects that name the run that wrote them (claims, part markers, journals: run ids, hosts, times):
# compared by name only. Everything else (the zarr.json documents and chunks of the output, the blended
# logits and the parts, input_stats.json) must be the same bytes.
BOOKKEEPING = re.compile(r"\.claim\.json$|/parts/part_\d+\.json$|/_[^/]+/")
RUN_DIR = re.compile(r"/\d{8}T\d{6}-[0-9a-f]{6,}/")  # a part's attempt folder (partstore): time + random


def _json_diff(a, b, path: str = "") -> list[str]:
    """Where two JSON documents differ: 'path: image value != host value'."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _json_diff(a.get(k), b.get(k), f"{path}.{k}")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _objects(prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` by relative key, with attempt folders (and their ids inside) named RUN."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    out = {}
    for key in (k for k in fs.find(prefix) if not k.endswith("/")):
        data = fs.cat_file(key)
        m = RUN_DIR.search(key)
        if m:  # the attempt's own id, in its path and its zarr.json ("run"), is the one allowed difference
            data = data.replace(m.group(0).strip("/").encode(), b"RUN")
        out[RUN_DIR.sub("/RUN/", key[len(prefix):])] = data
    return out


def test_predict_blend_finalize_on_s3_match_the_same_commands_outside(worker_image, s3_env, tmp_path):
    """The three Jobs' commands in the image, then the very same commands (same URLs) with the venv's
    `vesuvius-inference` on the host after removing what the image wrote: the same objects, same bytes."""
    import s3fs

    body = _spec("stages")
    prefix = "results/stages/"
    cache = tmp_path / "model-cache"  # the model-cache emptyDir (kubelet: 0777, root-owned)
    cache.mkdir()
    cache.chmod(0o777)
    aws = s3_env.env  # in a cluster: the Secret the spec names (envFrom); the sample relies on ambient ones
    for stage in _containers(body):
        assert stage["mounts"] == ["/tmp", manifests.MODEL_CACHE]
        c = Container(worker_image, args=stage["args"], env={**stage["env"], **aws},
                      volumes=[(cache, manifests.MODEL_CACHE)])
        proc = c.run(timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{stage['stage']} in the image exited {proc.returncode}:\n{out[-4000:]}"
        for bad in ("Read-only file system", "Permission denied", "not writable"):
            assert bad not in out, f"{stage['stage']}: {bad!r} in its output:\n{out[-4000:]}"
    assert any(cache.rglob("checkpoint_final.pth")), "the model was not cached in the model-cache volume"
    got = _objects(prefix)
    s3fs.S3FileSystem().rm(prefix, recursive=True)
    assert not _objects(prefix)

    cli = Path(sys.executable).parent / "vesuvius-inference"
    home, host_cache = tmp_path / "home", tmp_path / "host-cache"
    for stage in _containers(body):
        env = {**os.environ, **stage["env"], **aws, "HOME": str(home), "VESUVIUS_MODEL_CACHE_DIR": str(host_cache)}
        args = [str(host_cache) if a == manifests.MODEL_CACHE else a for a in stage["args"]]
        proc = subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{stage['stage']} on the host exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    want = _objects(prefix)

    assert "PHerc0332/surface.zarr/zarr.json" in want and any("/parts/" in k for k in want), sorted(want)
    assert sorted(got) == sorted(want), "\n".join(["in the image:", *sorted(got), "on the host:", *sorted(want)])
    data = [k for k in want if not BOOKKEEPING.search(k)]
    # whatever the stages' data path keeps (output levels, intermediates): the output's chunks at least
    assert any(k.startswith("PHerc0332/surface.zarr/") and "/c/" in k for k in data), "\n".join(data)
    differ = [k for k in data if got[k] != want[k]]
    shown = [f"{k}: {_json_diff(json.loads(got[k]), json.loads(want[k]))}" for k in differ[:3] if k.endswith(".json")]
    assert not differ, f"{len(differ)} of {len(data)} objects differ, e.g. {differ[:5]}\n" + "\n".join(shown)


def test_image_defaults_write_only_tmp_and_the_model_cache(worker_image, s3_env, tmp_path):
    """`docker run IMAGE predict ...` with the image's own ENV (no HOME or cache dir from a Job) on a
    writable root filesystem: afterwards podman's diff of the container's filesystem shows nothing but what
    podman itself changes in an idle container of the image (/tmp and the cache are volumes)."""
    cache = tmp_path / "model-cache"
    cache.mkdir()
    cache.chmod(0o777)
    args = ["predict", "--model_path", "s3://models/surface-nnunet", "--input_dir", "s3://scrolls/PHerc0332/volume.zarr",
            "--output_dir", "s3://results/image-defaults/parts", "--disable_tta", "--device", "cpu", "--quiet"]

    def changes(**kw) -> set[str]:
        c = Container(worker_image, env=dict(s3_env.env), volumes=[(cache, manifests.MODEL_CACHE)], read_only=False,
                      **kw)
        try:
            proc = c.run(timeout=300, keep=True)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
            return {line for line in podman("diff", c.name).stdout.splitlines() if line.strip()}
        finally:
            c.remove()

    noise = changes(entrypoint="true")  # podman's own: mount points of /etc/hosts, /etc/resolv.conf...
    written = changes(args=args) - noise
    assert written == set(), f"the worker wrote into the image's filesystem: {sorted(written)}"
    assert any(cache.rglob("checkpoint_final.pth")), "the model was not cached in /var/cache/vesuvius"
