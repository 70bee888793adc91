"""``vesuvius-inference render``: the Jobs the operator would create, valid for the API server (the ported
ValidateJob rules and the Kubernetes schema), refused specs as exit 2 with one line, no torch."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers import run_cli
from k8s.job_validation import validate_job
from k8s.kmock_api import default_job
from vesuvius_inference.cli import main as cli_main
from vesuvius_inference.contract.ranges import parse_ranges
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))
CLI = [sys.executable, "-m", "vesuvius_inference.cli"]


def real_process(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def render(args, env=None, check=True, run=run_cli):
    """In-process (helpers.run_cli); ``run=real_process`` for the test whose process is the point."""
    r = run("render", *args, env=env)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def accepted(job):
    """What the API server says: defaulting as it stores the Job, then the ported validation."""
    obj = copy.deepcopy(job)
    obj["metadata"]["uid"] = "00000000-0000-0000-0000-0000000000aa"
    default_job(obj)
    return validate_job(obj)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_render_of_every_sample_is_what_the_operator_creates_and_the_api_server_accepts(path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("VESUVIUS_")]:
        monkeypatch.delenv(name)
    docs = list(yaml.safe_load_all(render(["-f", str(path)]).stdout))
    doc = yaml.safe_load(path.read_text())
    name, spec = doc["metadata"]["name"], specmod.parse(doc["spec"])
    ns = doc["metadata"].get("namespace") or "default"
    assert [d["metadata"]["name"] for d in docs] == [f"{name}-predict", f"{name}-blend", f"{name}-finalize"]
    assert docs == [manifests.predict_job(name, ns, "", spec=spec), manifests.blend_job(name, ns, "", spec=spec),
                    manifests.finalize_job(name, ns, "", spec=spec)]
    for job in docs:
        assert accepted(job) == [], job["metadata"]["name"]
        kubernetes_validate.validate(job, "1.35.0", strict=True)
        assert "ownerReferences" not in job["metadata"]  # no uid in the file


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_render_of_retries_passes_the_api_servers_rules(path):
    doc = yaml.safe_load(path.read_text())
    parts = specmod.parse(doc["spec"]).parts
    for ranges in {"0", f"{parts - 1}", "0-" + str(parts - 1)} | ({"3,17,40-42"} if parts > 42 else set()):
        (job,) = yaml.safe_load_all(render(["-f", str(path), "--retry-parts", ranges]).stdout)
        assert job["metadata"]["name"] == f"{doc['metadata']['name']}-predict-r1"
        assert parse_ranges(job["metadata"]["annotations"]["vesuvius.dev/part-ids"]) == parse_ranges(ranges)
        assert accepted(job) == [], ranges
        kubernetes_validate.validate(job, "1.35.0", strict=True)
        if doc["spec"].get("retry", {}).get("maxFailedParts") is not None:
            assert job["spec"]["maxFailedIndexes"] <= job["spec"]["completions"]


def test_render_takes_the_operators_defaults_from_the_charts_env(tmp_path):
    doc = yaml.safe_load((ROOT / "crds" / "samples" / "minimal.yaml").read_text())
    doc["metadata"].update(namespace="scrolls", uid="1234-abcd")
    path = tmp_path / "ij.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = dict(VESUVIUS_WORKER_IMAGE="registry.example.com/worker:9", VESUVIUS_QUEUE_NAME="gpu-queue", VESUVIUS_GPU_NODE_SELECTOR='{"pool": "gpu"}')
    predict, blend, _ = yaml.safe_load_all(render(["-f", str(path)], env=env).stdout)
    pod = predict["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/worker:9" and pod["nodeSelector"] == {"pool": "gpu"}
    assert predict["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert predict["metadata"]["namespace"] == "scrolls"
    assert predict["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    assert "nodeSelector" not in blend["spec"]["template"]["spec"]
    r = render(["-f", "-"], env=dict(env, VESUVIUS_GPU_NODE_SELECTOR="{pool"), check=False)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr


def _long_name(doc):
    doc["metadata"]["name"] = "x" * 60


def _same_output(doc):
    doc["spec"]["workdir"] = doc["spec"]["output"]["uri"]


@pytest.mark.parametrize("mutate, args, fragment", [
    (_long_name, [], "the predict pods' hostname"),
    (_same_output, [], "are the same place"),
    (lambda d: d["spec"].update(predict={"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {
        "nvidia.com/gpu": 2}}}), [], "must equal limits[nvidia.com/gpu]"),
    (None, ["--retry-parts", "1"], "part ids must be in 0..0"),
    (None, ["--retry-parts", "3-1"], "expected part ids and ranges"),
    (lambda d: d.update(kind="Job"), [], "holds 0 InferenceJob documents"),
])
def test_refused_specs_exit_2_with_one_line(tmp_path, capsys, mutate, args, fragment):
    doc = yaml.safe_load((ROOT / "crds" / "samples" / "minimal.yaml").read_text())
    if mutate:
        mutate(doc)
    path = tmp_path / "ij.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli_main(["render", "-f", str(path), *args]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1 and fragment in out.err, out.err
    assert out.err.startswith("error: ")


def test_render_exits_2_in_a_subprocess_and_imports_neither_torch_nor_kubernetes(tmp_path):
    path = tmp_path / "ij.yaml"
    path.write_text("kind: InferenceJob\nmetadata: {name: UPPER}\nspec: {}\n")
    r = render(["-f", str(path)], check=False, run=real_process)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    probe = ("import sys\nfrom vesuvius_inference.cli import main\n"
             f"rc = main(['render', '-f', {str(ROOT / 'crds' / 'samples' / 'full.yaml')!r}])\n"
             "heavy = sorted(m for m in ('torch', 'nnunetv2', 'kopf', 'kubernetes') if m in sys.modules)\n"
             "print(rc, heavy, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == "0 []", r.stderr
