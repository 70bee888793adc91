"""A spot run against the emulated cluster (issue 24, Targets): every pod evicted twice, a storage outage, one
pod stuck Terminating on a node that went dark, and the run must complete without a person.

Run: ``python tests/bench/bench_spot.py [--parts 4] [--outage 5]``. Prints figures, never asserts on them.
Against one emulated API server (tests/k8s/kmock_api.py) with the real operator (``vesuvius-inference
operator``) and the Job controller fixture (tests/k8s/job_controller.py: real predict/blend/finalize pods as
local processes on the CPU, 4 emulated nodes), everything on moto's S3 behind a proxy (tests/store/outage.py):

1. a baseline: the same InferenceJob undisturbed; its predict pods' seconds are the work itself;
2. the spot run, once its pods are past their first checkpoint: every running predict pod evicted
   (DisruptionTarget, then SIGTERM and SIGKILL after the pod's terminationGracePeriodSeconds, as the kubelet
   stops a preempted pod), and again once the replacements run; then the store goes away (connections refused) for ``--outage`` seconds (a 5-minute
   S3 restart, time-scaled) and comes back; then a node with a running pod goes dark (its pod stays
   Terminating). A node-health automation plays the person: when the operator's PodsStuckTerminating
   condition names the node, it applies the out-of-service taint the condition gives.

Printed: ``spot run: E evictions, GPU-seconds lost X of Y (Z%), parts failed F`` where Y is the seconds every
predict pod of the spot run held its (emulated) GPU, X = Y minus the baseline's, F the run's failed parts;
then where it went (pods started, patches recomputed) and the breakdown per pod. An evicted pod finishes its
batch, checkpoints and exits 80, so the loss per eviction is the replacement pod's start (interpreter, torch,
model: ~5 s on an idle core here, 15-20 s with four pods starting on this shared 2-core machine) plus at most a
batch; the pod on the node that went dark loses what it computed since its last checkpoint. These parts are
~5-10 s of model time each, so the starts dominate X; on a GPU cluster a part is minutes to hours.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "tests" / "k8s", ROOT / "tests", ROOT / "operator"):
    sys.path.insert(0, str(p))

import yaml  # noqa: E402

NS = "vesuvius"


def _wait(what: str, fn: Any, timeout: float = 600.0, interval: float = 0.2) -> Any:
    from helpers import wait_until

    return wait_until(what, fn, timeout=timeout, interval=interval, error=SystemExit)


def _storage(tmp: Path) -> tuple[Any, str]:
    import boto3
    import s3fs
    from helpers import smooth_volume, write_zarr
    from moto.server import ThreadedMotoServer
    from plugins.s3 import _atomic_conditional_puts
    from store.outage import free_port
    from vesuvius_inference.model.nnunet_folder import make_dataset_json, make_plans, write_model_folder

    _atomic_conditional_puts()  # moto's PutObject made atomic, as S3's is (the tests' server does the same)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ["MOTO_RECORDER_FILEPATH"] = str(tmp / "moto-recording")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    client = boto3.client("s3", endpoint_url=url)
    for bucket in ("scrolls", "results", "models"):
        client.create_bucket(Bucket=bucket)
    model = tmp / "model"
    write_model_folder(model, make_plans((32, 32, 32), (2, 4, 8), "ZScoreNormalization"), make_dataset_json(2, 1),
                       folds=(0,), mirror_axes=(0, 1, 2), seed=5)
    fs = s3fs.S3FileSystem()
    for f in sorted(model.rglob("*")):
        if f.is_file():
            fs.put_file(str(f), f"models/m/{f.relative_to(model)}")
    write_zarr("s3://scrolls/v.zarr", smooth_volume((96, 160, 160), seed=7), chunks=(16, 32, 32))
    return server, url


def _spec(name: str, parts: int) -> dict[str, Any]:
    return {"apiVersion": "vesuvius.dev/v1alpha1", "kind": "InferenceJob", "metadata": {"name": name},
            "spec": {"input": {"uri": "s3://scrolls/v.zarr"}, "output": {"uri": f"s3://results/{name}/out.zarr"},
                     "model": {"uri": "s3://models/m"}, "parts": parts, "parallelism": parts,
                     "inference": {"device": "cpu", "tta": False, "checkpointSeconds": 2, "leaseSeconds": 20},
                     "storage": {"waitSeconds": 120}}}


def _predict_seconds(ctl: Any, job: str) -> tuple[float, list[Any]]:
    runs = ctl.results_of(job)
    return sum(r.seconds for r in runs), runs


def _patches(pods: Path, runs: list[Any]) -> tuple[int, int]:
    """(patches the pods computed in all, patches the parts have): from each pod's log, what it ran past where it
    resumed (a stop's 'after patch K', a completed part's count, a SIGKILLed pod's last progress line)."""
    import re

    ran, total = 0, {}
    for r in runs:
        logs = list(pods.glob(f"{r.name}-*/output.log"))
        text = logs[0].read_text(errors="replace") if logs else ""
        start = int(m.group(1)) if (m := re.search(r"resuming after patch (\d+)", text)) else 0
        if m := re.search(r"stopped by \S+ after patch (\d+) of (\d+)", text):
            end = int(m.group(1))
        elif m := re.search(r"predict part \d+/\d+: (\d+) patches run", text):
            end = start + int(m.group(1))
        else:
            seen = [int(x) for x in re.findall(r": (\d+)/\d+ patches", text)]
            end = max(seen, default=start)
        for m in re.finditer(r": \d+/(\d+) patches", text):
            total[r.index] = int(m.group(1))
        ran += max(0, end - start)
    return ran, sum(total.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--outage", type=float, default=5.0, help="seconds the store is gone (5 minutes, time-scaled)")
    args = ap.parse_args()
    import admission
    import kubernetes
    from job_controller import JobController, Node
    from kmock_api import KubeAPI, ServerThread
    from plugins.k8s import OperatorProcess
    from store.outage import Outage, free_port, proxy

    tmp = Path(tempfile.mkdtemp(prefix="bench-spot-"))
    moto, moto_url = _storage(tmp)
    port = free_port()
    store = proxy(moto_url, port)
    pod_env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_MAX_ATTEMPTS="2")
    with ServerThread(KubeAPI()) as server:
        server.call(admission.install, server.api)
        server.call(server.api.install_crd, yaml.safe_load((ROOT / "crds" / "inferencejob.yaml").read_text()))
        server.call(server.api.create, "v1/namespaces", None, {"metadata": {"name": NS}})
        kubeconfig = server.kubeconfig(tmp / "kubeconfig", NS)
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
        custom = kubernetes.client.CustomObjectsApi(client)
        op = OperatorProcess(kubeconfig, NS, tmp)
        op.env.update(VESUVIUS_STUCK_POD_SECONDS="3", VESUVIUS_PROGRESS_SECONDS="1")
        op.start()
        pods = tmp / "pods"
        pods.mkdir()
        ctl = JobController(client, NS, pods, base_env=pod_env)
        ctl.api = server.api
        ctl.nodes = [Node(f"gpu-{c}", gpus=1) for c in "abcde"]  # one pod per node, one spare

        def ij(name: str) -> dict[str, Any]:
            return custom.get_namespaced_custom_object("vesuvius.dev", "v1alpha1", NS, "inferencejobs", name)

        def phase(name: str) -> str:
            return (ij(name).get("status") or {}).get("phase", "")

        def checkpointed(name: str, since: float) -> bool:
            """A part's checkpoint written after ``since`` (epoch seconds): its pods are past their start."""
            import s3fs

            fs = s3fs.S3FileSystem(endpoint_url=moto_url)
            fs.invalidate_cache()
            found = fs.find(f"results/{name}/out.zarr_work/", detail=True)
            return any(k.endswith("/checkpoint.json") and info["LastModified"].timestamp() > since
                       for k, info in found.items())

        try:
            with ctl:
                began = time.monotonic()
                custom.create_namespaced_custom_object("vesuvius.dev", "v1alpha1", NS, "inferencejobs",
                                                       _spec("calm", args.parts))
                _wait("the baseline run", lambda: phase("calm") in ("Succeeded", "Failed"))
                base, base_runs = _predict_seconds(ctl, "calm-predict")
                print(f"baseline: {phase('calm')} in {time.monotonic() - began:.0f} s, predict pods "
                      f"{base:.1f} s", flush=True)

                custom.create_namespaced_custom_object("vesuvius.dev", "v1alpha1", NS, "inferencejobs",
                                                       _spec("spot", args.parts))
                since = time.time()
                for round_ in (1, 2):
                    _wait(f"pods past a checkpoint ({round_})", lambda t=since: checkpointed("spot", t) and
                          len([k for k in ctl.running() if k[0] == "spot-predict"]) >= 1, interval=0.5)
                    n = ctl.preempt_running(r"^spot-predict$")
                    print(f"eviction {round_}: {n} running pods", flush=True)
                    since = time.time()
                    _wait("the evicted pods gone and replacements running", lambda: not [
                        r for st in list(ctl.jobs.values()) if st.name == "spot-predict"
                        for r in list(st.running.values()) if r.preempt_at is not None] and
                        len([k for k in ctl.running() if k[0] == "spot-predict"]) >= 1)
                store.stop()  # connections refused: the store restarts
                print(f"storage gone for {args.outage:g} s", flush=True)
                time.sleep(args.outage)  # the outage itself: its length is the scenario, not a wait on a condition
                store = proxy(moto_url, port, Outage())
                running = [k for k in ctl.running() if k[0] == "spot-predict"]
                stranded = None
                if running:
                    run = ctl.jobs[next(u for u, st in ctl.jobs.items() if st.name == "spot-predict")].running[
                        running[0][1]]
                    node, stranded = run.node, run.name
                    ctl.lose_node(node)
                    print(f"node {node} went dark with {run.name} on it", flush=True)

                    def healer() -> None:  # a node-health automation: does what the condition says
                        def stuck() -> str | None:
                            for c in (ij("spot").get("status") or {}).get("conditions") or []:
                                if c["type"] == "PodsStuckTerminating" and c["status"] == "True":
                                    return c["message"]
                            return None

                        message = _wait("PodsStuckTerminating", stuck)
                        print(f"condition: {message[:160]}...", flush=True)
                        ctl.core.patch_node(node, {"spec": {"taints": [
                            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                            {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown",
                             "effect": "NoExecute"}]}})

                    threading.Thread(target=healer, daemon=True).start()
                _wait("the spot run", lambda: phase("spot") in ("Succeeded", "Failed"), timeout=900)
                total, runs = _predict_seconds(ctl, "spot-predict")
                status = ij("spot")["status"]
        finally:
            op.kill()
            with contextlib.suppress(Exception):
                store.stop()
            moto.stop()
    failed = int((status.get("parts") or {}).get("failed") or 0)
    evictions = sum(1 for r in runs if "DisruptionTarget" in r.conditions and r.name != stranded)
    lost = max(0.0, total - base)
    print(f"spot run: {evictions} evictions, GPU-seconds lost {lost:.1f} of {total:.1f} "
          f"({100 * lost / total if total else 0:.1f}%), parts failed {failed} (phase {status.get('phase')})")
    ran, patches = _patches(pods, runs)
    print(f"  where it went: {len(runs)} predict pods started (baseline {len(base_runs)}), each paying the pod's start "
          f"(interpreter, torch, model) again; patches computed {ran} of {patches} "
          f"({ran - patches} recomputed after stops and kills)")
    for r in runs:
        print(f"  part {r.index} attempt {r.attempt}: exit {r.exit_code} {r.action} {r.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
