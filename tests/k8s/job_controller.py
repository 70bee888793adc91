"""A test fixture playing kube-controller-manager's Job controller (batch/v1), with local processes as pods.

It polls the API for the Jobs of one namespace and does what the real controller does for the
features our manifests use:

- starts pods up to ``parallelism``, honouring ``completions``; ``completionMode: Indexed`` gives each
  pod its index (annotation and label ``batch.kubernetes.io/job-completion-index``, env
  ``JOB_COMPLETION_INDEX`` through a fieldRef, hostname ``<job>-<index>``);
- ``backoffLimitPerIndex`` (per-index retries, annotations ``job-index-failure-count`` and
  ``job-index-ignored-failure-count``), ``maxFailedIndexes``, ``backoffLimit``,
  ``podFailurePolicy`` (Ignore / FailIndex / FailJob / Count on exit codes and pod conditions),
  ``activeDeadlineSeconds``, ``suspend`` (running pods are deleted and not counted, condition
  Suspended True/False, ``startTime`` reset);
- the terminal states in the order syncJob evaluates them (pkg/controller/job/job_controller.go):
  an earlier FailureTarget, a FailJob rule, then BackoffLimitExceeded (failed > backoffLimit, which
  the API server defaults to MaxInt32 with backoffLimitPerIndex), DeadlineExceeded (active longer
  than activeDeadlineSeconds since startTime), MaxFailedIndexesExceeded, FailedIndexes (every index
  succeeded or failed); then the remaining active pods are deleted, each counted as failed, and its
  index becomes a failed index only if that was its last allowed attempt (indexed_job_utils.go,
  calculateFailedIndexes/isIndexFailed); indexes never started stay neither completed nor failed;
- a Job being deleted (deletionTimestamp, e.g. foreground deletion by the TTL controller) gets no
  new pods and its pods' processes are killed;
- writes the Job status through ``/status`` like the real controller: active, ready, succeeded,
  failed, terminating, completedIndexes and failedIndexes as range strings ("0-3,5"), conditions
  SuccessCriteriaMet then Complete, FailureTarget then Failed (reasons FailedIndexes,
  MaxFailedIndexesExceeded, BackoffLimitExceeded, PodFailurePolicy, DeadlineExceeded),
  startTime, completionTime;
- creates Pod objects (``generateName: <job>-<index>-``, label ``job-name``, ownerReference to the Job)
  and finishes them with a terminated containerStatus (exit code; for
  ``terminationMessagePolicy: FallbackToLogsOnError`` the last lines of the output as ``message``).

A pod's container runs LOCALLY as a subprocess: the worker image's entrypoint is
``vesuvius-inference``, so the command is ``[sys.executable, "-m", "vesuvius_inference.cli", *args]``,
with the container's env (``env`` values and fieldRefs, ``envFrom`` Secrets and ConfigMaps read from
the API) merged over ``base_env`` (default: this process's environment, which holds the moto S3
endpoint and credentials), and ``$(VAR)`` references in args and env expanded as the kubelet does.
The pod's emptyDir volumes (/tmp, /var/cache/vesuvius) become per-pod temporary directories: every
env value and arg equal to a mount path or below it is rewritten to the pod's directory (so
``VESUVIUS_MODEL_CACHE_DIR``, ``HOME`` and ``--model_cache_dir /var/cache/vesuvius`` point there).

Pod creation the API server refuses (tests/k8s/admission.py: ResourceQuota, ServiceAccount, Priority):
no pod, and a Warning Event ``FailedCreate`` "Error creating: <the server's message>" on the Job,
repeated ones aggregated into one Event with a count (pkg/controller/controller_utils.go,
RealPodControl.createPods; client-go tools/record/events_cache.go, EventCorrelator); the controller
stops creating pods for that sync and tries again on the next (syncJob's manageJob returns the error).

A scheduler (:attr:`JobController.nodes`, off by default: every pod fits): a pod goes to the first node
whose labels match its nodeSelector and that has its ``nvidia.com/gpu`` limit free; none: it stays
Pending with ``PodScheduled=False``, reason ``Unschedulable`` and the scheduler's message
("0/N nodes are available: K Insufficient nvidia.com/gpu, M node(s) didn't match Pod's node
affinity/selector. preemption: ...": pkg/scheduler/framework/types.go, FitError.Error; its diagnosis
counted per node), and is scheduled once a node frees up.

The kubelet's node-pressure eviction (:meth:`JobController.evict`, pkg/kubelet/eviction/eviction_manager.go,
evictPod): the pod gets ``DisruptionTarget`` reason ``TerminationByKubelet``, phase Failed, status reason
``Evicted`` and the eviction manager's message (helpers.go: "The node was low on resource: memory.
Threshold quantity: ..., available: .... Container C was using X, request is Y, has larger consumption
of memory."), and its container is killed (137). :func:`rank_memory_pressure` is the manager's order of
victims (helpers.go, rankMemoryPressure: exceedMemoryRequests, then priority, then usage over request).

The downward API: ``fieldRef`` (annotations, labels, name, namespace, uid) and ``resourceFieldRef``
(requests/limits of cpu and memory, rounded up to the divisor: pkg/api/v1/resource/helpers.go,
ExtractContainerResourceValue) in env, and ``downwardAPI`` volumes written as files. The Job controller's
pod annotations are as upstream: the failure count always, the ignored-failure count only when above
zero (pkg/controller/job/indexed_job_utils.go, addIndexFailureCountAnnotation). A pod's output is served
as its log (``pods/log``) when the controller is given the API server (``api``).

The kubelet's start-up failures: a container whose ``envFrom``/``secretKeyRef`` names a Secret that
does not exist waits in ``CreateContainerConfigError`` with the message ``secret "NAME" not found``
and starts once the Secret appears (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables, retried by
the pod workers); an image in :attr:`JobController.unpullable` waits in ErrImagePull, then
ImagePullBackOff, forever.

A node that stops answering (:meth:`JobController.lose_node`): the node lifecycle controller marks it
NotReady and taints it ``node.kubernetes.io/unreachable:NoExecute``; the taint manager deletes its pods
(``DisruptionTarget`` reason ``DeletionByTaintManager``, pkg/controller/tainteviction/taint_eviction.go);
with the Job controller's ``batch.kubernetes.io/job-tracking`` finalizer the pod stays, Terminating, with a
``deletionTimestamp``, because no kubelet confirms that its container stopped. The Job counts it in
``status.terminating``, not ``active``, and with ``podReplacementPolicy: Failed`` creates no replacement
for its index until it is terminal (pkg/controller/job/job_controller.go, manageJob; indexed_job_utils.go,
getPodsWithDelayedDeletionPerIndex). PodGC (pkg/controller/podgc/gc_controller.go, gcTerminating): a
terminating pod whose node is NotReady and carries the ``node.kubernetes.io/out-of-service`` taint is
marked Failed and force-deleted (markFailedAndDeletePod); the Job controller then sees a failed pod whose
DisruptionTarget condition its podFailurePolicy Ignores, and re-creates the index elsewhere.

Test hooks (:meth:`JobController.fail`, :meth:`JobController.preempt`, :meth:`JobController.stub`)
change what pods do, here and not in product code: ``fail`` replaces one attempt's command with a
Python one-liner that prints a message and exits with a code; ``preempt`` runs the real command, then
marks the pod with a ``DisruptionTarget`` condition and SIGKILLs it (exit 137), as a preemption does;
``stub`` replaces the command of every pod of matching Jobs with a one-liner that waits (``sleep``
seconds, or until ``release`` is called) and exits with a code: for tests of the control plane that
need no real inference. When a Job is deleted (or suspended) its pods' processes are killed.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesuvius_inference.contract.ranges import (
    format_ranges,  # Kubernetes' own "0-3,5" form, unit-tested there
)

ENTRYPOINT = [sys.executable, "-m", "vesuvius_inference.cli"]  # the worker image's ENTRYPOINT
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FAILURES_KEY = "batch.kubernetes.io/job-index-failure-count"
IGNORED_KEY = "batch.kubernetes.io/job-index-ignored-failure-count"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion: defined vars are replaced, $$ is a literal $, others stay."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


class MissingObject(Exception):
    """A Secret or ConfigMap a container's env names does not exist (the kubelet's error text)."""


@dataclass
class Node:
    name: str
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)


EVICTION_MESSAGE = ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 96Mi. Container {c} "
                    "was using {use}, request is {req}, has larger consumption of memory. ")


@dataclass
class Hook:
    exit_code: int | None = None
    message: str = ""
    preempt_after: float | None = None
    preempt_reason: str = "PreemptionByScheduler"
    evict_after: float | None = None
    sleep: float = 0.0
    wait_for: Path | None = None  # the one-liner waits until this file exists
    lines: tuple[str, ...] = ()  # printed at start (e.g. progress lines), before the wait

    def command(self) -> list[str]:
        wait = (f"import os\nwhile not os.path.exists({str(self.wait_for)!r}): time.sleep(0.05)\n"
                if self.wait_for else "")
        say = "".join(f"print({ln!r}, file=sys.stderr, flush=True)\n" for ln in self.lines)
        return [sys.executable, "-c", f"import sys, time\n{say}{wait}time.sleep({self.sleep})\n"
                                      f"print({self.message!r}, file=sys.stderr)\nsys.exit({self.exit_code or 0})"]


@dataclass
class PodRun:
    job: str
    index: int | None
    attempt: int
    name: str
    proc: subprocess.Popen[bytes] | None  # None while the kubelet cannot start the container
    log: Path
    root: Path
    started: float
    preempt_at: float | None = None
    preempt_reason: str = "PreemptionByScheduler"
    stranded: bool = False  # deleted on a node that stopped answering: Terminating until PodGC removes it
    preempted: bool = False
    evict_at: float | None = None
    evicted: bool = False
    waiting: tuple[str, str] | None = None  # (reason, message) of a container that has not started
    launch: Any = None  # retries the start (kubelet) while waiting
    node: str | None = None
    gpus: int = 0


@dataclass
class PodResult:
    """A finished pod, for assertions."""

    job: str
    index: int | None
    attempt: int
    name: str
    exit_code: int
    conditions: list[str]
    action: str  # what the failure policy made of it: Succeeded, Count, Ignore, FailIndex, FailJob
    seconds: float


@dataclass
class JobState:
    name: str
    uid: str
    indexed: bool
    running: dict[int, PodRun] = field(default_factory=dict)  # index (0 for NonIndexed pod slots) -> pod
    attempts: dict[int, int] = field(default_factory=dict)  # pods started per index
    index_failures: dict[int, int] = field(default_factory=dict)  # counted failures per index
    index_ignored: dict[int, int] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    fail_job: tuple[str, str] | None = None  # (reason, message) once the Job is to fail
    finished: bool = False
    last_status: dict[str, Any] | None = None
    started_mono: float | None = None


class JobController:
    """Plays the Job controller for one namespace; use as a context manager (see the module docstring)."""

    def __init__(self, api_client: Any, namespace: str, workdir: Path, base_env: dict[str, str] | None = None,
                 poll: float = 0.2) -> None:
        import kubernetes

        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace = namespace
        self.workdir = Path(workdir)
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.poll = poll
        self.jobs: dict[str, JobState] = {}  # by uid
        self.results: list[PodResult] = []
        self.pods_started: list[tuple[str, int | None, int]] = []  # (job, index, attempt)
        self.errors: list[BaseException] = []
        self._hooks: dict[tuple[str, int | None, int], Hook] = {}
        self._stubs: list[tuple[re.Pattern[str], Hook | None]] = []
        self.unpullable: set[str] = set()  # images no registry serves
        self.nodes: list[Node] | None = None  # None: every pod is scheduled at once
        self.lost_nodes: set[str] = set()  # nodes that stopped answering (lose_node)
        self.api: Any = None  # a kmock_api.KubeAPI: pods' output served as their logs
        self.events: dict[tuple[str, str], tuple[str, int]] = {}  # (job uid, message) -> (Event name, count)
        self.release_dir = Path(tempfile.mkdtemp(prefix="release-", dir=self.workdir))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="job-controller", daemon=True)

    # ---- test hooks -----------------------------------------------------------------------------

    def fail(self, job: str, index: int | None, exit_code: int, attempt: int = 0, message: str = "") -> None:
        """Make ``attempt`` of ``index`` of Job ``job`` print ``message`` and exit with ``exit_code``."""
        self._hooks[(job, index, attempt)] = Hook(exit_code=exit_code, message=message or f"injected exit {exit_code}")

    def preempt(self, job: str, index: int | None, after: float = 1.0, attempt: int = 0) -> None:
        """Preempt ``attempt`` of ``index`` ``after`` seconds: DisruptionTarget condition, then SIGKILL (137)."""
        self._hooks[(job, index, attempt)] = Hook(preempt_after=after)

    def drain(self, job: str, index: int | None, after: float = 0.5, attempts: range = range(1)) -> None:
        """``kubectl drain`` (or an autoscaler's consolidation) evicts these attempts of ``index`` ``after``
        seconds through the eviction API: the API server adds DisruptionTarget with reason EvictionByEvictionAPI
        before it deletes the pod (pkg/registry/core/pod/storage/eviction.go, addConditionAndDeletePod)."""
        for attempt in attempts:
            self._hooks[(job, index, attempt)] = Hook(preempt_after=after, preempt_reason="EvictionByEvictionAPI")

    def evict(self, job: str, index: int | None, after: float = 0.5, attempts: range = range(1)) -> None:
        """The kubelet evicts these attempts of ``index`` under memory pressure ``after`` seconds (their
        command runs until then)."""
        for attempt in attempts:
            self._hooks[(job, index, attempt)] = Hook(evict_after=after)

    def hook(self, job: str, index: int | None, attempt: int = 0, exit_code: int = 0, sleep: float = 0.0,
             held: bool = False, message: str = "", lines: tuple[str, ...] = ()) -> None:
        """One attempt of one index: print ``lines``, wait ``sleep`` s (or, ``held``, until :meth:`release`),
        then exit."""
        self._hooks[(job, index, attempt)] = Hook(exit_code=exit_code, message=message, sleep=sleep,
                                                  wait_for=self.release_dir / "go" if held else None, lines=lines)

    def stub(self, job_pattern: str = ".*", exit_code: int = 0, sleep: float = 0.0, held: bool = False,
             lines: tuple[str, ...] = ()) -> None:
        """Every pod of the Jobs whose name matches: print ``lines``, wait (``sleep`` s; ``held``: until
        :meth:`release`), exit. The stub registered last wins."""
        self._stubs.insert(0, (re.compile(job_pattern), Hook(exit_code=exit_code, message="stub", sleep=sleep,
                                                          wait_for=self.release_dir / "go" if held else None,
                                                          lines=lines)))

    def unstub(self, job_pattern: str) -> None:
        """Pods of the Jobs whose name matches run their real command again (registered last, it wins)."""
        self._stubs.insert(0, (re.compile(job_pattern), None))

    def release(self) -> None:
        """Let every held pod finish."""
        (self.release_dir / "go").touch()

    def results_of(self, job: str) -> list[PodResult]:
        with self._lock:
            return [r for r in self.results if r.job == job]

    def preempt_running(self, job_pattern: str = ".*") -> int:
        """Preempt every pod of the matching Jobs whose container runs now (DisruptionTarget, then SIGKILL), as
        an eviction of the whole Workload does; returns how many."""
        pattern, n = re.compile(job_pattern), 0
        for st in list(self.jobs.values()):
            if pattern.search(st.name):
                for run in list(st.running.values()):
                    if run.proc is not None and run.proc.poll() is None and not run.stranded:
                        run.preempt_at, n = time.monotonic(), n + 1
        return n

    def lose_node(self, name: str) -> None:
        """Node ``name`` stops answering (module docstring): it becomes NotReady with the unreachable taint (a
        Node object in the API), and its pods are deleted by the taint manager and stay Terminating."""
        import kubernetes

        t = now_iso()
        node = {"metadata": {"name": name}, "spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": t}]},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                       "message": "Kubelet stopped posting node status.", "lastTransitionTime": t}]}}
        try:
            self.core.create_node(node)
        except kubernetes.client.ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_node(name, {"spec": node["spec"]})
        self.core.patch_node_status(name, {"status": node["status"]})
        self.lost_nodes.add(name)

    def running(self) -> list[tuple[str, int | None]]:
        """(Job, index) of the pods whose container runs now (list() copies are atomic under the GIL)."""
        return [(st.name, i) for st in list(self.jobs.values()) for i, r in list(st.running.items())
                if r.proc is not None and not r.stranded]

    # ---- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> JobController:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(30)
        for st in list(self.jobs.values()):
            for run in list(st.running.values()):
                self._kill(run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - reported to the test; keep controlling
                self.errors.append(e)
                import traceback

                traceback.print_exc()
            self._stop.wait(self.poll)

    # ---- one reconcile pass -----------------------------------------------------------------------

    def _tick(self) -> None:
        items = self.batch.list_namespaced_job(self.namespace).items
        jobs = {j.metadata.uid: self.batch.api_client.sanitize_for_serialization(j) for j in items}
        for uid in [u for u in self.jobs if u not in jobs]:  # deleted Jobs: kill their pods' processes
            st = self.jobs.pop(uid)
            for run in list(st.running.values()):
                self._kill(run)
        for uid, job in jobs.items():
            st = self.jobs.get(uid)
            if st is None:
                st = self.jobs[uid] = JobState(job["metadata"]["name"], uid,
                                               job["spec"].get("completionMode") == "Indexed")
            if job["metadata"].get("deletionTimestamp"):  # being deleted: manageJob is not called
                for run in list(st.running.values()):
                    self._kill(run)
                st.running.clear()
                continue
            if not st.finished:
                self._reconcile(st, job)

    def _reconcile(self, st: JobState, job: dict[str, Any]) -> None:
        spec = job["spec"]
        completions = int(spec.get("completions") or 1)
        per_index = spec.get("backoffLimitPerIndex")
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        container = spec["template"]["spec"]["containers"][0]["name"]
        # 1. finished and preempted pods; containers the kubelet could not start yet are retried
        for slot, run in list(st.running.items()):
            if run.node is not None and run.node in self.lost_nodes and not run.stranded:
                self._strand(run)
            if run.stranded:
                if not self._pod_gc(run):
                    continue  # Terminating: its index waits (podReplacementPolicy: Failed)
                code = -signal.SIGKILL
            elif run.proc is None:
                run.launch()
                continue
            else:
                self._disrupt(run, container)
                code = run.proc.poll()
                if code is None:
                    continue
            del st.running[slot]
            exit_code = 128 - code if code < 0 else code
            conditions = ["DisruptionTarget"] if run.preempted or run.evicted or run.stranded else []
            action, rule = ("Succeeded", -1) if exit_code == 0 else match_rule(rules, container, exit_code, conditions)
            if not run.stranded:  # PodGC wrote a stranded pod's end, and deleted it
                self._finish_pod(run, exit_code, container, job, conditions)
            with self._lock:
                self.results.append(PodResult(st.name, run.index, run.attempt, run.name, exit_code, conditions,
                                              action, time.monotonic() - run.started))
            i = run.index if run.index is not None else 0
            if exit_code == 0:
                st.succeeded += 1
                if st.indexed:
                    st.completed.add(i)
            elif action == "Ignore":
                st.index_ignored[i] = st.index_ignored.get(i, 0) + 1
            else:
                st.failed += 1
                if action == "FailJob":
                    st.fail_job = st.fail_job or ("PodFailurePolicy", f"Container {container} for pod "
                                                  f"{self.namespace}/{run.name} failed with exit code {exit_code} "
                                                  f"matching FailJob rule at index {rule}")
                elif st.indexed and action == "FailIndex":
                    st.failed_indexes.add(i)
                elif st.indexed and per_index is not None:
                    st.index_failures[i] = st.index_failures.get(i, 0) + 1
                    if st.index_failures[i] > int(per_index):
                        st.failed_indexes.add(i)
        # 2. Job-level failure, in syncJob's order: FailJob (above), backoffLimit, activeDeadlineSeconds,
        # then for backoffLimitPerIndex maxFailedIndexes and "every index succeeded or failed"
        if st.fail_job is None:
            if st.failed > int(spec.get("backoffLimit", 6)):
                st.fail_job = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            elif spec.get("activeDeadlineSeconds") and st.started_mono is not None and \
                    time.monotonic() - st.started_mono > int(spec["activeDeadlineSeconds"]):
                st.fail_job = ("DeadlineExceeded", "Job was active longer than specified deadline")
            elif st.indexed and per_index is not None:
                if spec.get("maxFailedIndexes") is not None and len(st.failed_indexes) > int(spec["maxFailedIndexes"]):
                    st.fail_job = ("MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of "
                                                                "failed indexes")
                elif st.failed_indexes and len(st.completed | st.failed_indexes) >= completions:
                    st.fail_job = ("FailedIndexes", "Job has failed indexes")
        suspended = bool(spec.get("suspend"))
        if st.fail_job is not None:
            self._terminate(st, job, "FailureTarget", *st.fail_job)
            return
        # 3. success
        done = len(st.completed) >= completions if st.indexed else st.succeeded >= completions
        if done:
            self._terminate(st, job, "SuccessCriteriaMet", "CompletionsReached",
                            "Reached expected number of succeeded pods")
            return
        # 4. suspend / resume
        if suspended:
            for slot, run in list(st.running.items()):  # deleted, not counted as failures
                self._kill(run)
                self._delete_pod(run.name)
                # deleteJobPods removes the tracking finalizer before deleting, so the pod is no "pod being
                # replaced" for the index's next pod (getPodsWithDelayedDeletionPerIndex lists only pods that
                # still have it): that pod starts from counts of 0 (indexed_job_utils.go, getNewIndexFailureCounts)
                st.index_failures.pop(slot, None)
                st.index_ignored.pop(slot, None)
            st.running.clear()
            if not self._cond_true(st, "Suspended"):
                self._set_cond(st, "Suspended", "True", "JobSuspended", "Job suspended")
                st.start_time, st.started_mono = None, None
            self._write_status(st, job)
            return
        if self._cond_true(st, "Suspended"):
            self._set_cond(st, "Suspended", "False", "JobResumed", "Job resumed")
        if st.start_time is None:
            st.start_time, st.started_mono = now_iso(), time.monotonic()
        # 5. start pods up to parallelism
        parallelism = int(spec.get("parallelism") or 1)
        if st.indexed:
            pending = [i for i in range(completions)
                       if i not in st.completed and i not in st.failed_indexes and i not in st.running]
        else:  # NonIndexed: free pod slots, as many as completions still missing
            free = max(0, completions - st.succeeded - len(st.running))
            pending = [s for s in range(parallelism) if s not in st.running][:free]
        for i in pending:
            if len(st.running) >= parallelism:
                break
            run = self._start_pod(st, job, i if st.indexed else None)
            if run is None:  # the API server refused the pod: FailedCreate, try again next sync
                break
            st.running[i] = run
        self._write_status(st, job)

    def _strand(self, run: PodRun) -> None:
        """The taint manager deletes a pod of a node that stopped answering; no kubelet confirms the end, so
        the pod stays Terminating (the Job controller's tracking finalizer keeps the object)."""
        self._signal(run, signal.SIGKILL)  # the node is gone: so is whatever ran there, unseen
        run.stranded = True
        with contextlib.suppress(Exception):
            self.core.patch_namespaced_pod(run.name, self.namespace, {"metadata": {
                "finalizers": ["batch.kubernetes.io/job-tracking"]}}, _content_type="application/merge-patch+json")
        self._patch_pod_status(run.name, {"conditions": [
            {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
             "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": now_iso()}]})
        self._delete_pod(run.name)

    def _pod_gc(self, run: PodRun) -> bool:
        """PodGC's gcTerminating for one stranded pod: True once it marked it Failed and force-deleted it."""
        import kubernetes

        try:
            node = self.core.read_node(run.node)
        except kubernetes.client.ApiException as e:
            if e.status != 404:
                raise
            return False
        ready = any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
        if ready or not any(t.key == "node.kubernetes.io/out-of-service" for t in (node.spec.taints or [])):
            return False
        self._patch_pod_status(run.name, {"phase": "Failed"})
        with contextlib.suppress(Exception):
            self.core.patch_namespaced_pod(run.name, self.namespace, {"metadata": {"finalizers": []}},
                                           _content_type="application/merge-patch+json")
        self._delete_pod(run.name)
        return True

    def _disrupt(self, run: PodRun, container: str) -> None:
        """A preemption or a kubelet eviction that is due: the pod's conditions first, then SIGKILL."""
        now = time.monotonic()
        if run.proc is None or run.proc.poll() is not None or run.preempted or run.evicted:
            return
        if run.preempt_at is not None and now >= run.preempt_at:
            message = {"PreemptionByScheduler": "Preempted in order to admit critical pod",
                       "EvictionByEvictionAPI": "Eviction API: evicting"}[run.preempt_reason]
            self._patch_pod_status(run.name, {"conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": run.preempt_reason,
                 "message": message, "lastTransitionTime": now_iso()}]})
            run.preempted = True
        elif run.evict_at is not None and now >= run.evict_at:
            message = EVICTION_MESSAGE.format(c=container, use="9Gi", req="0")
            self._patch_pod_status(run.name, {"reason": "Evicted", "message": message, "conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": message,
                 "lastTransitionTime": now_iso()}]})
            run.evicted = True
        else:
            return
        self._signal(run, signal.SIGKILL)

    # ---- status ---------------------------------------------------------------------------------

    @staticmethod
    def _cond_true(st: JobState, kind: str) -> bool:
        return any(c["type"] == kind and c["status"] == "True" for c in st.conditions)

    @staticmethod
    def _set_cond(st: JobState, kind: str, status: str, reason: str, message: str) -> None:
        t = now_iso()
        for c in st.conditions:
            if c["type"] == kind:
                if c["status"] != status:
                    c["lastTransitionTime"] = t
                c.update(status=status, reason=reason, message=message, lastProbeTime=t)
                return
        st.conditions.append({"type": kind, "status": status, "reason": reason, "message": message,
                              "lastProbeTime": t, "lastTransitionTime": t})

    def _terminate(self, st: JobState, job: dict[str, Any], interim: str, reason: str, message: str) -> None:
        """FailureTarget/SuccessCriteriaMet first, then the remaining pods go, then Failed/Complete."""
        container = job["spec"]["template"]["spec"]["containers"][0]["name"]
        self._set_cond(st, interim, "True", reason, message)
        self._write_status(st, job, terminating=len(st.running))
        per_index = job["spec"].get("backoffLimitPerIndex")
        rules = (job["spec"].get("podFailurePolicy") or {}).get("rules") or []
        for slot, run in list(st.running.items()):
            self._kill(run)
            code = 128 + signal.SIGTERM if run.proc is None else run.proc.returncode
            exit_code = 128 - code if code < 0 else code
            self._finish_pod(run, exit_code, container, job, [])
            if interim == "FailureTarget":  # "when the job is considered finished, every non-terminated pod is
                # considered failed" (trackJobStatusAndRemoveFinalizers), as the policy counts it
                action, _ = match_rule(rules, container, exit_code, [])
                if action != "Ignore":
                    st.failed += 1
                    if st.indexed and per_index is not None and (
                            action == "FailIndex" or st.index_failures.get(slot, 0) >= int(per_index)):
                        st.failed_indexes.add(slot)  # isIndexFailed: its last allowed attempt
        st.running.clear()
        final = "Failed" if interim == "FailureTarget" else "Complete"
        self._set_cond(st, final, "True", reason if final == "Failed" else "", message if final == "Failed" else "")
        st.finished = True
        self._write_status(st, job, completion=final == "Complete")

    def _write_status(self, st: JobState, job: dict[str, Any], terminating: int = 0, completion: bool = False) -> None:
        stranded = sum(r.stranded for r in st.running.values())
        status: dict[str, Any] = {
            "active": len(st.running) - stranded,
            "ready": sum(r.proc is not None and not r.stranded for r in st.running.values()),
            "terminating": terminating + stranded,
            "succeeded": st.succeeded, "failed": st.failed, "uncountedTerminatedPods": {},
            "startTime": st.start_time, "conditions": [dict(c) for c in st.conditions] or None,
        }
        if st.indexed:
            status["completedIndexes"] = format_ranges(st.completed)
            if (job.get("spec") or {}).get("backoffLimitPerIndex") is not None or st.failed_indexes:
                status["failedIndexes"] = format_ranges(st.failed_indexes)
        if completion:
            status["completionTime"] = now_iso()
        if status == st.last_status:
            return
        st.last_status = status
        try:
            self.batch.patch_namespaced_job_status(st.name, self.namespace, {"status": status},
                                                   _content_type="application/merge-patch+json")
        except Exception as e:  # noqa: BLE001 - a Job deleted meanwhile
            if getattr(e, "status", None) != 404:
                raise

    # ---- pods -----------------------------------------------------------------------------------

    def _start_pod(self, st: JobState, job: dict[str, Any], index: int | None) -> PodRun | None:
        key = -1 if index is None else index  # NonIndexed: attempts count every pod of the Job
        attempt = st.attempts.get(key, 0)
        tmpl = job["spec"]["template"]
        pod_spec = dict(tmpl["spec"])
        labels = dict((tmpl.get("metadata") or {}).get("labels") or {})
        annotations = dict((tmpl.get("metadata") or {}).get("annotations") or {})
        containers = [dict(c) for c in pod_spec["containers"]]
        if index is not None:
            labels[INDEX_KEY] = annotations[INDEX_KEY] = str(index)
            pod_spec["hostname"] = f"{st.name}-{index}"
            if job["spec"].get("backoffLimitPerIndex") is not None:
                annotations[FAILURES_KEY] = str(st.index_failures.get(index, 0))
                if st.index_ignored.get(index, 0) > 0:
                    annotations[IGNORED_KEY] = str(st.index_ignored[index])
            for c in containers:  # the control plane injects the index as an env var through a fieldRef
                c["env"] = [*(c.get("env") or []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                    "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}}]
        pod_spec["containers"] = containers
        prefix = f"{st.name}-{index}-" if index is not None else f"{st.name}-"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": prefix, "namespace": self.namespace, "labels": labels,
                            "annotations": annotations,
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": st.name,
                                                 "uid": st.uid, "controller": True, "blockOwnerDeletion": True}]},
               "spec": pod_spec}
        try:
            created = self.core.create_namespaced_pod(self.namespace, pod)
        except Exception as e:  # noqa: BLE001 - an admission refusal becomes the Job's FailedCreate Event
            if getattr(e, "status", None) not in (403, 422):
                raise
            self._failed_create(job, _status_message(e))
            return None
        st.attempts[key] = attempt + 1
        name = created.metadata.name
        root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        c = containers[0]
        if c.get("command"):
            raise NotImplementedError(f"container command {c['command']} is not the worker image's entrypoint")
        hook = self._hooks.pop((st.name, index, attempt), None)
        if hook is None:
            hook = next((h for pattern, h in self._stubs if pattern.search(st.name)), None)
        run = PodRun(st.name, index, attempt, name, None, root / "output.log", root, time.monotonic())

        def launch() -> None:
            """The scheduler, then the kubelet's container start (image pull and env first), retried while
            they fail."""
            if not self._schedule(run, pod_spec, c):
                return
            if c.get("image") in self.unpullable:
                reason = "ImagePullBackOff" if run.waiting else "ErrImagePull"
                self._wait(run, c, reason, f'Back-off pulling image "{c["image"]}"' if run.waiting else
                           f'failed to pull image "{c["image"]}": not found')
                return
            try:
                env, mounts = self._container_env(c, pod_spec, pod["metadata"] | {"name": name}, root)
            except MissingObject as e:
                self._wait(run, c, "CreateContainerConfigError", str(e))
                return
            args = [self._remap(expand(a, env), mounts) for a in c.get("args") or []]
            cmd = [*ENTRYPOINT, *args]
            if hook is not None and (hook.exit_code is not None or hook.wait_for or hook.sleep or hook.lines):
                cmd = hook.command()
            with open(run.log, "wb") as out:
                run.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                            start_new_session=True)
            run.started = time.monotonic()
            if hook is not None and hook.preempt_after:
                run.preempt_at, run.preempt_reason = run.started + hook.preempt_after, hook.preempt_reason
            if hook is not None and hook.evict_after:
                run.evict_at = run.started + hook.evict_after
            if self.api is not None:  # the pod's output is its log (pods/log)
                self.api.pod_logs[(self.namespace, name)] = lambda: run.log.read_text(errors="replace")
            run.waiting = None
            with self._lock:
                self.pods_started.append((st.name, index, attempt))
            t = now_iso()
            self._patch_pod_status(name, {
                "phase": "Running", "startTime": t, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                               {"type": "Ready", "status": "True", "lastTransitionTime": t}],
                "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True,
                                       "restartCount": 0, "started": True, "state": {"running": {"startedAt": t}}}]})

        run.launch = launch
        launch()
        return run

    def _failed_create(self, job: dict[str, Any], message: str) -> None:
        """A Warning Event FailedCreate on the Job; the same one again only raises its count."""
        uid, text = job["metadata"]["uid"], f"Error creating: {message}"
        t = now_iso()
        known = self.events.get((uid, text))
        if known is not None:
            name, count = known
            self.events[(uid, text)] = (name, count + 1)
            with contextlib.suppress(Exception):
                self.core.patch_namespaced_event(name, self.namespace, {"count": count + 1, "lastTimestamp": t},
                                                 _content_type="application/merge-patch+json")
            return
        ev = self.core.create_namespaced_event(self.namespace, {
            "metadata": {"generateName": f"{job['metadata']['name']}."},
            "involvedObject": {"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                               "namespace": self.namespace, "uid": uid},
            "reason": "FailedCreate", "message": text, "type": "Warning", "count": 1, "firstTimestamp": t,
            "lastTimestamp": t, "source": {"component": "job-controller"}})
        self.events[(uid, text)] = (ev.metadata.name, 1)

    def _schedule(self, run: PodRun, pod_spec: dict[str, Any], c: dict[str, Any]) -> bool:
        """Bind the pod to a node (module docstring); False: it stays Pending, Unschedulable, with why."""
        if self.nodes is None or run.node is not None:
            return True
        want = int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu") or 0)
        selector = pod_spec.get("nodeSelector") or {}
        used: dict[str, int] = {}
        for st in list(self.jobs.values()):
            for other in list(st.running.values()):
                if other.node is not None:
                    used[other.node] = used.get(other.node, 0) + other.gpus
        short = mismatch = 0
        tainted = 0
        for node in self.nodes:
            if node.name in self.lost_nodes:  # NotReady, unreachable NoExecute taint (TaintToleration filter)
                tainted += 1
            elif any(node.labels.get(k) != v for k, v in selector.items()):
                mismatch += 1
            elif node.gpus - used.get(node.name, 0) < want:
                short += 1
            else:
                run.node, run.gpus = node.name, want
                with contextlib.suppress(Exception):  # the binding (pods/binding sets spec.nodeName)
                    self.core.patch_namespaced_pod(run.name, self.namespace, {"spec": {"nodeName": node.name}},
                                                   _content_type="application/merge-patch+json")
                self._patch_pod_status(run.name, {"conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now_iso()}]})
                return True
        n = len(self.nodes)
        why = [f"{short} Insufficient nvidia.com/gpu"] if short else []
        why += [f"{tainted} node(s) had untolerated taint {{node.kubernetes.io/unreachable: }}"] if tainted else []
        why += [f"{mismatch} node(s) didn't match Pod's node affinity/selector"] if mismatch else []
        message = (f"0/{n} nodes are available: {', '.join(why)}. preemption: 0/{n} nodes are available: {n} "
                   "Preemption is not helpful for scheduling.")
        if run.waiting != ("Unschedulable", message):
            run.waiting = ("Unschedulable", message)
            self._patch_pod_status(run.name, {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                 "lastTransitionTime": now_iso()}]})
        return False

    def _wait(self, run: PodRun, c: dict[str, Any], reason: str, message: str) -> None:
        """A pod whose container cannot start: Pending, the container waiting with the kubelet's reason."""
        if run.waiting == (reason, message):
            return
        run.waiting = (reason, message)
        t = now_iso()
        self._patch_pod_status(run.name, {
            "phase": "Pending", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": t,
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
                           {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                            "lastTransitionTime": t}],
            "containerStatuses": [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                                   "restartCount": 0, "started": False,
                                   "state": {"waiting": {"reason": reason, "message": message}}}]})

    def _container_env(self, c: dict[str, Any], pod_spec: dict[str, Any], meta: dict[str, Any],
                       root: Path) -> tuple[dict[str, str], dict[str, str]]:
        # emptyDir volumes -> per-pod directories (the pod's /tmp and /var/cache/vesuvius)
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        mounts: dict[str, str] = {}
        for m in c.get("volumeMounts") or []:
            vol = volumes.get(m["name"]) or {}
            if "emptyDir" in vol or "downwardAPI" in vol:
                host = root / "volumes" / m["name"]
                host.mkdir(parents=True, exist_ok=True)
                mounts[m["mountPath"].rstrip("/")] = str(host)
                for item in (vol.get("downwardAPI") or {}).get("items") or []:  # the kubelet writes the files
                    (host / item["path"]).write_text(field_ref(meta, item["fieldRef"]["fieldPath"]))
        env = dict(self.base_env)
        for src in c.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                sec = self._read("secret", src["secretRef"]["name"])
                env.update({prefix + k: base64.b64decode(v).decode() for k, v in (sec.data or {}).items()})
            if "configMapRef" in src:
                cm = self._read("configmap", src["configMapRef"]["name"])
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = self._remap(expand(e["value"], env), mounts)
            elif "fieldRef" in (e.get("valueFrom") or {}):
                env[e["name"]] = field_ref(meta, e["valueFrom"]["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in (e.get("valueFrom") or {}):
                env[e["name"]] = resource_field_ref(c, e["valueFrom"]["resourceFieldRef"])
            elif "secretKeyRef" in (e.get("valueFrom") or {}):
                ref = e["valueFrom"]["secretKeyRef"]
                sec = self._read("secret", ref["name"])
                env[e["name"]] = base64.b64decode((sec.data or {})[ref["key"]]).decode()
        if "/tmp" in mounts:
            env["TMPDIR"] = mounts["/tmp"]
        return env, mounts

    def _read(self, kind: str, name: str) -> Any:
        """A Secret or ConfigMap for a container's env; MissingObject ("secret \"x\" not found") if absent."""
        import kubernetes

        try:
            if kind == "secret":
                return self.core.read_namespaced_secret(name, self.namespace)
            return self.core.read_namespaced_config_map(name, self.namespace)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                raise MissingObject(f'{kind} "{name}" not found') from None
            raise

    @staticmethod
    def _remap(value: str, mounts: dict[str, str]) -> str:
        for path, host in mounts.items():
            if value == path or value.startswith(path + "/"):
                return host + value[len(path):]
        return value

    def _finish_pod(self, run: PodRun, exit_code: int, container: str, job: dict[str, Any],
                    conditions: list[str]) -> None:
        tail = ""
        containers = (job.get("spec") or {}).get("template", {}).get("spec", {}).get("containers") or [{}]
        policy = containers[0].get("terminationMessagePolicy", "File")  # File: /dev/termination-log, never written
        if exit_code != 0 and policy == "FallbackToLogsOnError" and run.log.exists():
            lines = run.log.read_bytes().decode(errors="replace").splitlines()[-80:]
            tail = "\n".join(lines)[-2048:]
        t = now_iso()
        conds = [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": t}]
        if run.preempted:
            conds.append({"type": "DisruptionTarget", "status": "True", "reason": run.preempt_reason,
                          "message": {"PreemptionByScheduler": "Preempted in order to admit critical pod",
                                      "EvictionByEvictionAPI": "Eviction API: evicting"}[run.preempt_reason],
                          "lastTransitionTime": t})
        if run.evicted:
            conds.append({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
                          "message": EVICTION_MESSAGE.format(c=container, use="9Gi", req="0"),
                          "lastTransitionTime": t})
        status = {"phase": "Succeeded" if exit_code == 0 else "Failed", "conditions": conds,
                  "containerStatuses": [{"name": container, "image": "", "imageID": "", "ready": False,
                                         "restartCount": 0, "started": False, "state": {"terminated": {
                                             "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                             "message": tail or None, "startedAt": t, "finishedAt": t}}}]}
        self._patch_pod_status(run.name, status)
        shutil.rmtree(run.root / "volumes", ignore_errors=True)

    def _patch_pod_status(self, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status},
                                                  _content_type="application/merge-patch+json")
        except Exception as e:  # noqa: BLE001 - the pod is gone (garbage-collected with its Job)
            if getattr(e, "status", None) != 404:
                raise

    def _delete_pod(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_namespaced_pod(name, self.namespace)

    @staticmethod
    def _signal(run: PodRun, sig: int) -> None:
        if run.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.proc.pid, sig)

    def _kill(self, run: PodRun) -> None:
        if run.proc is not None and run.proc.poll() is None:
            self._signal(run, signal.SIGTERM)
            try:
                run.proc.wait(5)
            except subprocess.TimeoutExpired:
                self._signal(run, signal.SIGKILL)
                run.proc.wait(10)


def field_ref(meta: dict[str, Any], path: str) -> str:
    m = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta.get(path.split(".", 1)[1], ""))
    raise NotImplementedError(f"fieldRef {path}")


def resource_field_ref(container: dict[str, Any], ref: dict[str, Any]) -> str:
    """A container's request or limit in units of the divisor, rounded up (pkg/api/v1/resource/helpers.go,
    ExtractContainerResourceValue / convertResourceCPUToString)."""
    import math

    from vesuvius_inference.k8s.quantity import parse_quantity

    kind, _, name = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return ""  # the kubelet substitutes the node's allocatable; unknown here
    return str(math.ceil(parse_quantity(value) / parse_quantity(ref.get("divisor") or "1")))


def _status_message(e: Any) -> str:
    import json

    try:
        return json.loads(e.body).get("message") or str(e.reason)
    except (TypeError, ValueError):
        return str(e.reason)


def rank_memory_pressure(pods: list[dict[str, Any]], usage: dict[str, int]) -> list[str]:
    """The kubelet's eviction order under memory pressure (pkg/kubelet/eviction/helpers.go, rankMemoryPressure:
    orderedBy(exceedMemoryRequests, priority, memory)): pods using more than they request first, then lower
    priority, then by how far usage exceeds the request. ``usage`` in bytes by pod name."""
    from vesuvius_inference.k8s.quantity import parse_quantity

    def request(p: dict[str, Any]) -> int:
        return int(sum(parse_quantity(((c.get("resources") or {}).get("requests") or {}).get("memory", 0))
                       for c in (p.get("spec") or {}).get("containers") or []))

    def key(p: dict[str, Any]) -> tuple[int, int, int]:
        name, req = p["metadata"]["name"], request(p)
        return (0 if usage[name] > req else 1, int((p.get("spec") or {}).get("priority") or 0), req - usage[name])

    return [p["metadata"]["name"] for p in sorted(pods, key=key)]


def match_rule(rules: list[dict[str, Any]], container: str, exit_code: int, conditions: list[str]) -> tuple[str, int]:
    """(action, rule index) of the first podFailurePolicy rule matching a failed pod; ("Count", -1) if none."""
    for n, rule in enumerate(rules):
        oc = rule.get("onExitCodes")
        if oc is not None:
            if oc.get("containerName") not in (None, container) or exit_code == 0:
                continue
            inside = exit_code in (oc.get("values") or [])
            if inside == (oc.get("operator") == "In"):
                return rule["action"], n
        for pat in rule.get("onPodConditions") or []:
            if pat["type"] in conditions and pat.get("status", "True") == "True":
                return rule["action"], n
    return "Count", -1
