"""What one pass reads, with the clients passed in: O(what changed), never O(pods).

Every pass reads the InferenceJob and its Jobs (one list, by label): the Jobs' own status (active,
ready, failed, completedIndexes, failedIndexes, conditions) is the ledger. A Kueue-managed unfinished
Job adds a read of its Workload. Pods and Events are read only to explain a stall the counts point
at (stalls.wanted_reads), as one small page (``limit``) selected on the server by the Job's
controller-uid label and ``status.phase`` (pods: pkg/registry/core/pod/strategy.go, ToSelectableFields)
or ``involvedObject.uid`` and ``reason`` (events: pkg/registry/core/event/strategy.go), at most once
per ``diagnose_s`` per InferenceJob. Progress reads the last lines of a few running pods' logs
(``pods/log``, ``tailLines``) once per ``progress_s``, walking the running pods page by page with the
list's ``continue`` token from one round to the next. What it keeps between passes is small and per
InferenceJob: when it last read, the Jobs' failed counts then, the progress samples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.intensity import Reported
from vesuvius_inference.contract.progress import ProgressLine, last_progress
from vesuvius_inference.contract.ranges import count_ranges
from vesuvius_inference.contract.storagelines import storage_answers, waiting_line
from vesuvius_inference.k8s import inputcheck, kueue, manifests, progressview, stalls
from vesuvius_inference.k8s.clients import Clients
from vesuvius_inference.k8s.decide import Diagnosis, Observed, iso
from vesuvius_inference.k8s.opsettings import OperatorEnv, env_value
from vesuvius_inference.k8s.status import ChildJobs, check_verdict, cond, job_finished, sort_children

GROUP, VERSION, PLURAL = "vesuvius.dev", "v1alpha1", "inferencejobs"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
STAGE_PHASES = {"Predicting": "predict", "Blending": "blend", "Finalizing": "finalize"}


@dataclass
class Settings:
    """The operator's timing (env, set through the chart's extraEnv)."""

    # from the environment (their declarations, defaults and help: opsettings.OperatorEnv)
    diagnose_s: float = OperatorEnv.diagnose_s  # at most one stall read per InferenceJob this often
    stall_grace_s: float = OperatorEnv.stuck_pod_s  # a pod may wait this long before it is a stall
    progress_s: float = OperatorEnv.progress_s  # progress sampling interval (0: off)
    progress_pods: int = OperatorEnv.progress_pods  # pod logs read per interval and InferenceJob
    page: int = 20  # pods or Events per stall read
    terminating_pages: int = 5  # pages per read when looking for pods stuck terminating
    log_lines: int = 20
    kueue_recheck_s: float = 600.0  # how long a Kueue API version that 404'd is not asked again

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        return cls(diagnose_s=env_value("diagnose_s", env), stall_grace_s=env_value("stuck_pod_s", env),
                   progress_s=env_value("progress_s", env), progress_pods=env_value("progress_pods", env))


@dataclass
class _Samples:
    next_at: float = 0.0
    tokens: dict[str, str] = field(default_factory=dict)  # Job uid -> continue token of its running pods
    lines: dict[str, tuple[ProgressLine, float]] = field(default_factory=dict)  # pod -> last line, when read
    waits: dict[str, tuple[str, float]] = field(default_factory=dict)  # pod -> its storage-wait line, when read
    answered: float = -1.0  # when a sampled pod's log last showed the store working (storagelines.storage_answers)
    sampled_at: float = -1.0


def _raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


class Observer:
    def __init__(self, clients: Clients, settings: Settings, defaults: Callable[[], manifests.OperatorDefaults],
                 *, clock: Callable[[], float] = time.time) -> None:
        self.c, self.settings, self.defaults, self.clock = clients, settings, defaults, clock
        self.kueue_versions = list(kueue.VERSIONS)
        self._kueue_checked = clock()
        self._last_read: dict[tuple[str, str], float] = {}
        self._failed_seen: dict[str, int] = {}
        self._failure_read: set[str] = set()  # failed Jobs whose failed pods were read for the failure's Event
        self._samples: dict[tuple[str, str], _Samples] = {}
        self._head_read: dict[tuple[str, str], float] = {}  # when a running predict pod's log head was last read
        self._heads_after_end: set[str] = set()  # finished predict Jobs whose pods' log heads were read
        self._walks: dict[str, str] = {}  # Job uid -> continue token of the walk for terminating pods

    def forget(self, namespace: str, name: str) -> None:
        for d in (self._last_read, self._samples, self._head_read):
            d.pop((namespace, name), None)

    def observe(self, namespace: str, name: str, gone: Sequence[dict[str, Any]] = ()) -> Observed | None:
        body = self._get(namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        jobs = _raw(self.c.batch.list_namespaced_job(
            namespace, label_selector=f"{manifests.LABEL_JOB}={name}", _preload_content=False)).get("items") or []
        now = self.clock()
        obs = Observed(namespace, body, jobs, self.defaults(), now, gone=list(gone),
                       stall_grace_s=self.settings.stall_grace_s)
        children = sort_children(jobs, body["metadata"].get("uid", ""))
        obs.workloads = self._workloads(namespace, children)
        # both Workload API versions 404'd (now, or within kueue_recheck_s) while Jobs carry a queue label
        obs.kueue_missing = not self.kueue_versions and any(
            kueue.managed(j) and not job_finished(j) for j in children.owned())
        obs.diagnoses = self._diagnose(namespace, name, body, children=children, now=now)
        obs.notes = self._notes(namespace, body, children, gone=gone)
        obs.progress = self._progress(namespace, name, body, children=children, now=now)
        obs.intensity = self._intensity(namespace, name, body, children=children, now=now)
        obs.storage_waits = self._storage_waits(namespace, name, now)
        state = self._samples.get((namespace, name))
        obs.storage_answered = state is not None and state.sampled_at == now and state.answered == now
        return obs

    def _storage_waits(self, namespace: str, name: str, now: float) -> list[tuple[str, str]] | None:
        """(pod, line) of the sampled pods whose log ends waiting for storage (storagewait.py); None: no
        sample this pass. From the same log tails as progress: no extra request."""
        state = self._samples.get((namespace, name))
        if state is None or state.sampled_at != now:
            return None
        return sorted((pod, line) for pod, (line, _) in state.waits.items())

    def _get(self, namespace: str, name: str) -> dict[str, Any] | None:
        import kubernetes

        try:
            return self.c.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def _workloads(self, namespace: str, children: ChildJobs) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
        if not self.kueue_versions and self.clock() - self._kueue_checked > self.settings.kueue_recheck_s:
            self.kueue_versions, self._kueue_checked = list(kueue.VERSIONS), self.clock()
        out = {}
        for job in children.owned():
            if kueue.managed(job) and not job_finished(job) and self.kueue_versions:
                uid = job["metadata"]["uid"]
                out[uid] = kueue.find(self.c.custom, namespace, uid, versions=self.kueue_versions)
        return out

    def _diagnose(self, namespace: str, name: str, body: dict[str, Any], *, children: ChildJobs,
                  now: float) -> dict[str, Diagnosis] | None:
        """Stall reads, when the Jobs' counts ask for them and the rate allows; a Job that just failed has its
        failed pods read once for the failure's Event."""
        key = (namespace, name)
        due = now - self._last_read.get(key, 0.0) >= self.settings.diagnose_s
        reporting = (body.get("status") or {}).get("phase") != "Failed"
        out: dict[str, Diagnosis] = {}
        for job in children.owned():
            uid = job["metadata"]["uid"]
            failed_now = int((job.get("status") or {}).get("failed") or 0)
            reads = stalls.wanted_reads(job, self._failed_seen.get(uid))
            just_failed = reporting and cond(job, "Failed") is not None and failed_now > 0 and \
                uid not in self._failure_read
            if not (reads and due) and not just_failed:
                continue
            d = Diagnosis()
            if due and reads.events:
                d.events = self._list("event", namespace, f"involvedObject.uid={uid},reason=FailedCreate",
                                      labels=None)
            if due and reads.pending:
                d.pending = self._list("pod", namespace, "status.phase=Pending",
                                       labels=f"{CONTROLLER_UID}={uid}")
            if due and reads.terminating:
                d.terminating = self._terminating(namespace, uid)
            if (due and reads.failed) or just_failed:
                d.failed = self._list("pod", namespace, "status.phase=Failed",
                                      labels=f"{CONTROLLER_UID}={uid}")
            if just_failed:
                self._failure_read.add(uid)
            self._failed_seen[uid] = failed_now
            out[uid] = d
        if out:
            self._last_read[key] = now
        return out or None

    def _terminating(self, namespace: str, uid: str) -> list[dict[str, Any]]:
        """The Job's pods that are being deleted. No selector picks ``deletionTimestamp`` (pod fields:
        pkg/registry/core/pod/strategy.go, ToSelectableFields), so this walks the Job's unfinished pods a few
        pages per read, from where the last read stopped (the list's ``continue`` token), and keeps those
        with a deletionTimestamp: bounded per read however many pods the Job runs."""
        import kubernetes

        found: list[dict[str, Any]] = []
        for _ in range(self.settings.terminating_pages):
            try:
                page = _raw(self.c.core.list_namespaced_pod(
                    namespace, field_selector="status.phase!=Succeeded,status.phase!=Failed",
                    label_selector=f"{CONTROLLER_UID}={uid}", limit=self.settings.page,
                    _continue=self._walks.get(uid) or None, _preload_content=False))
            except kubernetes.client.ApiException as e:
                if e.status != 410:  # an expired continue token: from the start next time
                    raise
                self._walks.pop(uid, None)
                break
            found += [p for p in page.get("items") or [] if (p.get("metadata") or {}).get("deletionTimestamp")]
            self._walks[uid] = (page.get("metadata") or {}).get("continue") or ""
            if found or not self._walks[uid]:
                break
        return found

    def _list(self, kind: str, namespace: str, fields: str, *, labels: str | None) -> list[dict[str, Any]]:
        if kind == "event":
            resp = self.c.core.list_namespaced_event(namespace, field_selector=fields, limit=self.settings.page,
                                                     _preload_content=False)
        else:
            resp = self.c.core.list_namespaced_pod(namespace, field_selector=fields, label_selector=labels,
                                                   limit=self.settings.page, _preload_content=False)
        return _raw(resp).get("items") or []

    def _notes(self, namespace: str, body: dict[str, Any], children: ChildJobs,
               *, gone: Sequence[dict[str, Any]]) -> dict[str, str]:
        """The verdict line of each finished check Job not yet in the status (its pod's termination message)."""
        known = {(rec.get("check") or {}).get("uid") for rec in ((body.get("status") or {}).get("stages") or {}).values()
                 if (rec.get("check") or {}).get("message")}
        out = {}
        for job in list(children.checks.values()):
            uid = job["metadata"]["uid"]
            if uid in known or check_verdict(job) == "Running":
                continue
            pods = self._list("pod", namespace, "", labels=f"{CONTROLLER_UID}={uid}")
            lines = [ln for p in pods for ln in (stalls.terminated(p).get("message") or "").splitlines() if ln.strip()]
            if not lines and pods:  # exit 0 leaves no termination message with FallbackToLogsOnError: the log
                lines = self._log_tail(namespace, pods[-1]["metadata"]["name"], "check", lines=5).splitlines()
            lines = [ln for ln in lines if ln.strip()]
            if lines:
                out[uid] = lines[-1]
        return out

    def _intensity(self, namespace: str, name: str, body: dict[str, Any], *, children: ChildJobs,
                   now: float) -> Reported | None:
        """A predict pod's word on the input's intensities (inputcheck.py), until the status records one: the
        head of up to a few started pods' logs, at most once per diagnose interval while a predict Job runs
        and once after it ended; nothing while its pods have not started (the Job's counts say so)."""
        if not inputcheck.wanted(body):
            return None
        for job, _ in children.predict_runs():
            uid, st = job["metadata"]["uid"], job.get("status") or {}
            if not any(int(st.get(k) or 0) for k in ("active", "succeeded", "failed")):
                continue
            if job_finished(job):
                if uid in self._heads_after_end:
                    continue
                self._heads_after_end.add(uid)
            elif now - self._head_read.get((namespace, name), 0.0) < self.settings.diagnose_s:
                continue
            else:
                self._head_read[(namespace, name)] = now
            pods = self._list("pod", namespace, "status.phase!=Pending", labels=f"{CONTROLLER_UID}={uid}")
            for pod in pods[:inputcheck.PODS_PER_READ]:
                head = self._log_head(namespace, pod["metadata"]["name"], "predict",
                                      limit=inputcheck.HEAD_BYTES)
                said = inputcheck.from_pod(pod, head)
                if said is not None:
                    return said
        return None

    def _log_head(self, namespace: str, pod: str, container: str, *, limit: int) -> str:
        import kubernetes

        try:
            return self.c.core.read_namespaced_pod_log(pod, namespace, container=container, limit_bytes=limit) or ""
        except kubernetes.client.ApiException:
            return ""  # gone, or not started

    def _log_tail(self, namespace: str, pod: str, container: str, *, lines: int) -> str:
        import kubernetes

        try:
            return self.c.core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines,
                                                       limit_bytes=16384) or ""
        except kubernetes.client.ApiException:
            return ""  # gone, or not started

    def _progress(self, namespace: str, name: str, body: dict[str, Any], *, children: ChildJobs,
                  now: float) -> dict[str, Any] | None:
        status = body.get("status") or {}
        stage = STAGE_PHASES.get(status.get("phase", ""))
        if stage is None or self.settings.progress_s <= 0:
            self._samples.pop((namespace, name), None)
            return None
        state = self._samples.setdefault((namespace, name), _Samples())
        if now < state.next_at:
            return None
        state.next_at = now + self.settings.progress_s
        jobs = [j for j, _ in children.predict_runs()] if stage == "predict" else [getattr(children, stage)]
        jobs = [j for j in jobs if j is not None and not job_finished(j)]
        budget = self.settings.progress_pods
        for job in jobs:
            budget -= self._sample_job(namespace, stage, job, state=state, budget=budget, now=now)
        for d in (state.lines, state.waits):
            for pod, (_, t) in list(d.items()):
                if now - t > 3 * self.settings.progress_s:
                    del d[pod]
        state.sampled_at = now
        lines = [ln for ln, _ in state.lines.values()]
        running = sum(int((j.get("status") or {}).get("active") or 0) for j in jobs)  # the Jobs' counts, now
        if stage == "predict":
            parts = status.get("parts") or {}
            return progressview.aggregate(stage, int(parts.get("total") or 0), int(parts.get("succeeded") or 0),
                                          running=running, samples=lines, now=iso(now))
        job = jobs[0] if jobs else getattr(children, stage)
        st, spec = (job or {}).get("status") or {}, (job or {}).get("spec") or {}
        done = count_ranges(st.get("completedIndexes")) if st.get("completedIndexes") else int(st.get("succeeded") or 0)
        return progressview.aggregate(stage, int(spec.get("completions") or 1), done, running=running,
                                      samples=lines, now=iso(now))

    def _sample_job(self, namespace: str, stage: str, job: dict[str, Any], *, state: _Samples, budget: int,
                    now: float) -> int:
        """Read the last progress line of up to ``budget`` running pods of one Job; returns how many were read."""
        import kubernetes

        if budget <= 0:
            return 0
        uid = job["metadata"]["uid"]
        try:
            page = _raw(self.c.core.list_namespaced_pod(
                namespace, field_selector="status.phase=Running", label_selector=f"{CONTROLLER_UID}={uid}",
                limit=budget, _continue=state.tokens.get(uid) or None, _preload_content=False))
        except kubernetes.client.ApiException as e:
            if e.status != 410:  # an expired continue token: start the walk again next round
                raise
            state.tokens.pop(uid, None)
            return 0
        state.tokens[uid] = (page.get("metadata") or {}).get("continue") or ""
        read = 0
        for pod in page.get("items") or []:
            pod_name = pod["metadata"]["name"]
            text = self._log_tail(namespace, pod_name, stage, lines=self.settings.log_lines)
            read += 1
            line = last_progress(text)
            if line is not None:
                state.lines[pod_name] = (line, now)
            waiting = waiting_line(text)
            if storage_answers(text):
                state.answered = now
            if waiting is not None:
                state.waits[pod_name] = (waiting, now)
            else:
                state.waits.pop(pod_name, None)
        return max(read, 1)
