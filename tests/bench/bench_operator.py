"""The operator at scale (issue 17): peak memory and API requests per reconcile pass, at 100, 1,000 and 10,000
parts, with every pod object present as on a real cluster.

Run: ``python tests/bench/bench_operator.py [--parts 100,1000,10000] [--passes 20]``. Prints figures, never
asserts on them. For each part count, against a fresh emulated API server (tests/k8s/kmock_api.py) in this
process:

- an InferenceJob and its predict Job as the operator creates them (manifests.predict_job), its status
  as the Job controller leaves it mid-run: 80% of the parts done, 64 running (4 of them not ready yet),
  1% failed once; and one Pod object per attempt (Succeeded, Running, Pending, Failed) with the labels,
  annotations and owner the Job controller gives them. Running pods log a progress line (pods/log);
- the real operator (``vesuvius-inference operator``, the Helm chart's command) as a subprocess;
- ``--passes`` times, one every ``--every`` seconds, the Job's status advances by one part (as the Job
  controller writes it) and the bench waits until the operator's status shows it: one reconcile pass
  each (the operator's own ``vesuvius_operator_reconcile_passes_total`` says how many ran). Stall reads
  and progress sampling run every 5 s here (VESUVIUS_DIAGNOSE_SECONDS, VESUVIUS_PROGRESS_SECONDS;
  defaults 30 and 60): they are timed, not per pass, so at the same cadence every part count's window
  holds as many of them, and the per-pass figure includes them.

Printed per part count: the operator's peak RSS (VmHWM, its whole life: start, kopf's initial lists,
every pass) against the chart's memory limit (values.yaml), and the API requests the operator made
(requests with its User-Agent in the server's log) per pass, then what they were. The 10,000-part line
comes last.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import yaml  # noqa: E402
from k8s.kmock_api import KubeAPI, ServerThread  # noqa: E402

NS = "bench"
INDEX = "batch.kubernetes.io/job-completion-index"
LINE = "progress predict {i}/{n}: 1200/5000 patches (24.0%), 3.10 patches/s, ETA 20m25s\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chart_limit_mib() -> int:
    from vesuvius_inference.k8s.quantity import parse_quantity

    values = yaml.safe_load((ROOT / "charts" / "vesuvius-inference" / "values.yaml").read_text())
    return int(parse_quantity(values["resources"]["limits"]["memory"]) / 2**20)


def _pod(job: dict[str, Any], i: int, attempt: int, phase: str, ready: bool = True) -> dict[str, Any]:
    tmpl = job["spec"]["template"]
    name = f"{job['metadata']['name']}-{i}-{attempt:02d}x{i:05d}"[-63:]
    labels = {**tmpl["metadata"]["labels"], INDEX: str(i), "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
              "batch.kubernetes.io/job-name": job["metadata"]["name"], "controller-uid": job["metadata"]["uid"],
              "job-name": job["metadata"]["name"]}
    container = tmpl["spec"]["containers"][0]
    state: dict[str, Any] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    if phase in ("Succeeded", "Failed"):
        code = 0 if phase == "Succeeded" else 1
        state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                "message": None if code == 0 else "transient: connection reset by peer",
                                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T01:00:00Z"}}
    elif phase == "Pending":
        state = {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"name": name, "namespace": NS, "labels": labels,
                         "annotations": {INDEX: str(i), "batch.kubernetes.io/job-index-failure-count": str(attempt)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                              "uid": job["metadata"]["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": dict(tmpl["spec"], nodeName=f"gpu-{i % 64}"),
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": container["name"], "ready": ready and phase == "Running",
                                              "restartCount": 0, "image": container["image"], "imageID": "",
                                              "state": state}]}}


def populate(server: ServerThread, parts: int) -> tuple[str, int]:
    """The InferenceJob, its predict Job mid-run and every pod; returns (Job name, parts done)."""
    from vesuvius_inference.k8s import manifests
    from vesuvius_inference.k8s import spec as specmod

    api = server.api
    server.call(api.install_crd, yaml.safe_load((ROOT / "crds" / "inferencejob.yaml").read_text()))
    server.call(api.create, "v1/namespaces", None, {"metadata": {"name": NS}})
    body = yaml.safe_load((ROOT / "crds" / "samples" / "minimal.yaml").read_text())
    body["metadata"] = {"name": "scroll", "namespace": NS}
    body["spec"].update(parts=parts, parallelism=min(64, parts))
    ij = server.call(api.create, "vesuvius.dev/v1alpha1/inferencejobs", NS, body)
    spec = specmod.parse(ij["spec"])
    job = manifests.predict_job("scroll", NS, ij["metadata"]["uid"], spec=spec)
    job = server.call(api.create, "batch/v1/jobs", NS, job)
    running = min(64, parts // 5)
    done = parts - running - parts // 10  # 80%+ done, the rest running or not yet started
    failed = list(range(0, done, 100))  # 1% of the done parts failed once before succeeding
    pods = [_pod(job, i, 0, "Failed") for i in failed]
    pods += [_pod(job, i, 1 if i in set(failed) else 0, "Succeeded") for i in range(done)]
    pods += [_pod(job, i, 0, "Running" if k >= 4 else "Pending", ready=k >= 4)
             for k, i in enumerate(range(done, done + running))]
    def create(batch: list[dict[str, Any]]) -> None:  # as the Job controller and the kubelet write them
        for p in batch:
            status = p.pop("status")
            api.create("v1/pods", NS, p)
            api._patch(_route(api, "v1/pods", p["metadata"]["name"], "status"), {"status": status},
                       "application/merge-patch+json")
            p["status"] = status

    for start in range(0, len(pods), 500):
        server.call(create, pods[start:start + 500])
    for p in pods:
        if p["status"]["phase"] == "Running":
            api.pod_logs[(NS, p["metadata"]["name"])] = lambda i=int(p["metadata"]["labels"][INDEX]): LINE.format(
                i=i, n=parts)
    status = {"active": running, "ready": running - 4, "failed": len(failed), "succeeded": done,
              "completedIndexes": f"0-{done - 1}", "failedIndexes": "", "startTime": "2026-01-01T00:00:00Z",
              "uncountedTerminatedPods": {}}
    server.call(api._patch, _route(api, "batch/v1/jobs", job["metadata"]["name"], "status"), {"status": status},
                "application/merge-patch+json")
    return job["metadata"]["name"], done


def _route(api: KubeAPI, res: str, name: str, sub: str | None = None) -> Any:
    import kmock
    from k8s.kmock_api import Route

    r = kmock.resource(res)
    return Route(r, api.resources[r], NS, name, sub)


def _ij_status(server: ServerThread) -> dict[str, Any]:
    obj = server.call(server.api._live, (_route(server.api, "vesuvius.dev/v1alpha1/inferencejobs", "").resource,
                                         NS, "scroll"))
    return (obj or {}).get("status") or {}


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def _wait(what: str, fn: Any, timeout: float = 300.0) -> Any:
    from helpers import wait_until

    return wait_until(what, fn, timeout=timeout, interval=0.1, error=SystemExit)


def _operator_requests(server: ServerThread, since: int) -> list[Any]:
    def pick() -> list[Any]:
        reqs = list(server.api)[since:]
        return [(str(getattr(r.method, "value", r.method)).upper(), r.url.path, dict(r.params)) for r in reqs
                if (r.headers.get("User-Agent") or "").startswith("vesuvius-inference-operator/")]
    return server.call(pick)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(parts: int, passes: int, every: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, ServerThread(KubeAPI()) as server:
        t0 = time.monotonic()
        job_name, done = populate(server, parts)
        setup_s = time.monotonic() - t0
        kubeconfig = server.kubeconfig(Path(tmp) / "kubeconfig", NS)
        metrics_port, live_port = _free_port(), _free_port()
        # stall reads and progress sampling every 5 s (defaults 30 and 60): the window of passes includes them
        env = dict(os.environ, KUBECONFIG=kubeconfig, VESUVIUS_RESYNC_SECONDS="30", VESUVIUS_MIN_PASS_INTERVAL="0.2",
                   VESUVIUS_DIAGNOSE_SECONDS="5", VESUVIUS_PROGRESS_SECONDS="5")
        log = open(Path(tmp) / "operator.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "vesuvius_inference.cli", "operator", "-n", NS,
                                 "--liveness", f"http://127.0.0.1:{live_port}/healthz",
                                 "--metrics-port", str(metrics_port), "--metrics-auth=none"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait("the operator's first status", lambda: _ij_status(server).get("parts", {}).get("succeeded") == done)
            time.sleep(2)  # its start-up passes settle
            since = server.call(lambda: len(list(server.api)))
            startup = _operator_requests(server, 0)
            before = _metric(metrics_port, "vesuvius_operator_reconcile_passes_total")
            window = time.monotonic()
            for k in range(1, passes + 1):
                began = time.monotonic()
                status = {"completedIndexes": f"0-{done - 1 + k}", "succeeded": done + k}
                server.call(server.api._patch, _route(server.api, "batch/v1/jobs", job_name, "status"),
                            {"status": status}, "application/merge-patch+json")
                _wait(f"pass {k}", lambda k=k: _ij_status(server).get("parts", {}).get("succeeded") == done + k)
                time.sleep(max(0.0, every - (time.monotonic() - began)))
            window = time.monotonic() - window
            time.sleep(0.5)
            ran = _metric(metrics_port, "vesuvius_operator_reconcile_passes_total") - before
            reqs = _operator_requests(server, since)
            rss = peak_rss_mib(proc.pid)
            progress = _ij_status(server).get("progress") or {}
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()
    pod_lists = [r for r in reqs if r[0] == "GET" and r[1].endswith("/pods")]
    return {"parts": parts, "rss": rss, "requests": len(reqs), "passes": ran, "pod_lists": len(pod_lists),
            "startup": _kinds(startup), "window_s": window,
            "pod_limits": sorted({int(r[2].get("limit") or 0) for r in pod_lists}), "setup_s": setup_s,
            "progress": progress.get("percent"), "by_kind": _kinds(reqs)}


def _kinds(reqs: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for method, path, params in reqs:
        kind = path.rstrip("/").split("/")[-1] if not path.endswith("/status") else path.split("/")[-2] + "/status"
        key = f"{method} {kind}" + (" (watch)" if params.get("watch") else "")
        out[key] = out.get(key, 0) + 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="100,1000,10000")
    p.add_argument("--passes", type=int, default=20)
    p.add_argument("--every", type=float, default=1.5, help="seconds between two Job status changes")
    args = p.parse_args()
    limit = chart_limit_mib()
    results = [measure(int(n), args.passes, args.every) for n in args.parts.split(",")]
    for r in results:
        per_pass = r["requests"] / max(r["passes"], 1)
        print(f"  at {r['parts']} parts, start-up (kopf's lists aside, first passes with their stall and progress "
              f"reads): {json.dumps(r['startup'], sort_keys=True)}")
        print(f"  at {r['parts']} parts: {r['passes']:.0f} passes in {r['window_s']:.0f} s, {r['requests']} requests "
              f"({json.dumps(r['by_kind'], sort_keys=True)}); pod lists {r['pod_lists']} with limit "
              f"{r['pod_limits']}; progress {r['progress']}; cluster set up in {r['setup_s']:.0f} s; "
              f"{per_pass:.2f} requests per pass")
    for r in results:
        per_pass = r["requests"] / max(r["passes"], 1)
        print(f"operator at {r['parts']} parts: peak RSS {r['rss']:.0f} MiB (chart limit {limit} MiB), "
              f"{per_pass:.1f} API requests per pass")


if __name__ == "__main__":
    main()
