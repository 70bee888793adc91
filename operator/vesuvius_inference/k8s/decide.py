"""The operator's pure middle: what it observed -> a plan of creates, patches, Events and the status.

A pass is observe (observe.py: the InferenceJob, its Jobs by label, their Kueue Workloads, and only when
the Jobs' counts call for it a bounded sample of pods and Events) -> decide (here, no I/O) -> act
(act.py, with the API clients passed in), like the Job controller's syncJob with its injected
podControl, updateStatusHandler and clock (kubernetes pkg/controller/job/job_controller.go). Deciding
runs twice in a pass: once for the Jobs to create, and once more with what the creates returned (the
Jobs as stored, or the API server's refusal) for everything else, so no pass re-lists after creating.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.intensity import Reported
from vesuvius_inference.k8s import inputcheck, kueue, manifests, policy, progressview, stalls
from vesuvius_inference.k8s.checks import refusals
from vesuvius_inference.k8s.names import job_name
from vesuvius_inference.k8s.policy import SecretFacts
from vesuvius_inference.k8s.spec import JobSpec, parse
from vesuvius_inference.k8s.status import (
    ChildJobs,
    bounded,
    checks_needed,
    compute_status,
    job_finished,
    missing_parts,
    owner_uids,
    parse_time,
    part_sets,
    ranges_brief,
    sort_children,
    stage_to_create,
)

Event = tuple[str, str, str]  # type, reason, message
Extra = tuple[str, bool, str, str]  # condition type, true?, reason, message
KUEUE_KINDS = ("Queued", "Evicted", "KueueMissing")


@dataclass
class Diagnosis:
    """A bounded sample read to explain one Job's stall (stalls.py); None: not read this pass."""

    events: list[dict[str, Any]] | None = None
    pending: list[dict[str, Any]] | None = None
    failed: list[dict[str, Any]] | None = None
    terminating: list[dict[str, Any]] | None = None  # pods being deleted, not terminal yet

    def covers(self, kind: str) -> bool:
        """Whether this sample can tell if a stall of ``kind`` is there."""
        source = {"PodsNotCreated": self.events, "PodsUnschedulable": self.pending, "PodsStuck": self.pending,
                  "GPUUnavailable": self.failed, "PodsStuckTerminating": self.terminating}[kind]
        return source is not None


@dataclass
class Observed:
    namespace: str
    body: dict[str, Any]  # the InferenceJob as read
    jobs: list[dict[str, Any]]  # Jobs with its label (owned or not)
    defaults: manifests.OperatorDefaults
    now_s: float
    gone: list[dict[str, Any]] = field(default_factory=list)  # final bodies of Jobs deleted since the last pass
    workloads: dict[str, tuple[dict[str, Any] | None, str | None]] = field(default_factory=dict)  # by Job uid
    diagnoses: dict[str, Diagnosis] | None = None  # by Job uid; None: nothing was read this pass
    notes: dict[str, str] = field(default_factory=dict)  # check Jobs' verdict lines by uid
    progress: dict[str, Any] | None = None  # a fresh status.progress (None: no sample this pass)
    intensity: Reported | None = None  # a predict pod's word on the input's intensities (None: none this pass)
    kueue_missing: bool = False  # Jobs carry a queue label but the cluster serves no Kueue Workload API
    storage_waits: list[tuple[str, str]] | None = None  # (pod, line) waiting for storage; None: no sample
    storage_answered: bool = False  # this pass's sample saw a pod working with the store (a progress line)
    stall_grace_s: float = 300.0
    policy: policy.Policy = field(default_factory=policy.Policy)  # the cluster admin's (policy.py)
    secret: SecretFacts | None = None  # the labels of the spec's Secret, when the policy needs them


@dataclass
class Outcomes:
    """What the creates of the first round returned."""

    created: list[tuple[str, dict[str, Any], tuple[str, str]]] = field(default_factory=list)  # stage, Job, event
    refused: tuple[str, str] | None = None  # (stage, message): a 4xx other than 409/429
    conflicts: list[str] = field(default_factory=list)  # names held by a Job of another owner


@dataclass
class Plan:
    creates: list[tuple[str, dict[str, Any], tuple[str, str]]] = field(default_factory=list)
    job_patches: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    workload_patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # name, version, patch
    status: dict[str, Any] | None = None  # None: nothing to write
    events: list[Event] = field(default_factory=list)


def iso(now_s: float) -> str:
    return dt.datetime.fromtimestamp(now_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Ctx:
    obs: Observed
    spec: JobSpec
    prev: dict[str, Any]
    uid: str
    name: str
    generation: int
    now: str
    children: ChildJobs
    gone: list[dict[str, Any]]


def _context(obs: Observed, outcomes: Outcomes | None) -> _Ctx:
    meta = obs.body["metadata"]
    uid = meta.get("uid", "")
    jobs = list(obs.jobs) + [job for _, job, _ in (outcomes.created if outcomes else [])]
    return _Ctx(obs, parse(obs.body.get("spec") or {}), dict(obs.body.get("status") or {}), uid, meta["name"],
                int(meta.get("generation") or 1), iso(obs.now_s), sort_children(jobs, uid),
                [g for g in obs.gone if uid in owner_uids(g)])


def decide(obs: Observed, outcomes: Outcomes | None = None) -> Plan:
    """The plan of this pass: without ``outcomes`` the Jobs to create; with them, everything else."""
    ctx = _context(obs, outcomes)
    prev = ctx.prev
    if obs.body["metadata"].get("deletionTimestamp"):
        # Being deleted (foreground deletion waits for the children): create nothing, patch nothing. A Job
        # made now would outlive the garbage collector's pass over the dependents it already listed.
        return Plan()
    if prev.get("reason") == "InvalidSpec" and prev.get("observedGeneration") == ctx.generation:
        return Plan()
    errors = refusals(ctx.name, ctx.spec, obs.defaults)
    if errors:
        return _invalid(ctx, bounded("; ".join(errors)))
    # The admin's policy (policy.py): nothing is created while the spec asks for what it does not allow. Not
    # terminal, unlike InvalidSpec: every pass (and the resync) checks again, so a Secret labelled or a policy
    # widened later lets the run go on, as the Job controller retries pods an admission plugin refused.
    refused = policy.violations(ctx.spec.raw, obs.policy, obs.secret)
    if outcomes is None:
        return Plan(creates=[] if refused else _creates(ctx))
    return _settle(ctx, outcomes, refused)


def _invalid(ctx: _Ctx, text: str) -> Plan:
    status = dict(ctx.prev, phase="Failed", reason="InvalidSpec", message=text, observedGeneration=ctx.generation,
                  stage="", conditions=[{"type": "Failed", "status": "True", "reason": "InvalidSpec",
                                         "message": text, "lastTransitionTime": ctx.now,
                                         "observedGeneration": ctx.generation}])
    return Plan(status=status, events=[("Warning", "InvalidSpec", text)])


def _status0(ctx: _Ctx) -> dict[str, Any]:
    return compute_status(ctx.spec, ctx.children, ctx.prev, now=ctx.now, generation=ctx.generation, gone=ctx.gone,
                          notes=ctx.obs.notes)


def _retry_create(ctx: _Ctx, status: Mapping[str, Any]) -> tuple[str, dict[str, Any], tuple[str, str]] | None:
    attempt, handled = int(ctx.spec["retryFailedParts"] or 0), int(ctx.prev.get("retryFailedPartsHandled") or 0)
    if attempt <= handled:
        return None
    retry_name = job_name(ctx.name, "predict", attempt)
    if any(j["metadata"]["name"] == retry_name for j, _ in ctx.children.retries):
        return None
    todo = missing_parts(status, part_sets(ctx.spec, ctx.children).covered)
    if not todo:
        return None
    job = manifests.predict_job(ctx.name, ctx.obs.namespace, ctx.uid, spec=ctx.spec,
                                defaults=ctx.obs.defaults,
                                part_ids=sorted(todo), attempt=attempt)
    return "predict", job, ("RetryingParts", f"re-running parts {ranges_brief(todo)} as {retry_name}")


def deleted_by_kueue(ctx: _Ctx) -> tuple[str, str] | None:
    """(stage, message) when a stage's Job vanished while Kueue held the run deactivated: Kueue's retention
    policy deletes the Job of a Workload it deactivated (Configuration objectRetentionPolicies.workloads.
    afterDeactivatedByKueue; kueue pkg/controller/jobframework/reconciler.go, ReconcileGenericJob deletes the
    job once the Workload has been deactivated by Kueue for that long). That is Kueue's decision, not a lost Job:
    no check Job judges it and the run fails with Kueue's reason; spec.retryFailedParts re-runs what is left."""
    reason = str(ctx.prev.get("reason") or "")
    if not reason.startswith("DeactivatedByKueue"):
        return None
    present = {j["metadata"]["name"] for j in ctx.children.owned()}
    for stage in ("predict", "blend", "finalize"):
        rec = (ctx.prev.get("stages") or {}).get(stage) or {}
        if rec.get("state") in ("Running", "Lost") and rec.get("job") and rec["job"] not in present:
            return stage, (f"Kueue deleted {rec['job']} after deactivating its Workload ({reason}: "
                           f"{ctx.prev.get('message') or ''}); its retention policy (objectRetentionPolicies.workloads."
                           "afterDeactivatedByKueue) removes such Jobs. Fix the cause, then bump "
                           "spec.retryFailedParts to run what is not done")
    return None


def _creates(ctx: _Ctx) -> list[tuple[str, dict[str, Any], tuple[str, str]]]:
    status = _status0(ctx)
    out = []
    retry = _retry_create(ctx, status)
    if retry is not None:
        out.append(retry)
    if deleted_by_kueue(ctx) is not None:
        return out  # nothing else: neither the next stage nor a check of a Job Kueue deleted on purpose
    stage = stage_to_create(status, ctx.children)
    if stage is not None and retry is None:
        make = {"predict": manifests.predict_job, "blend": manifests.blend_job, "finalize": manifests.finalize_job}
        job = make[stage](ctx.name, ctx.obs.namespace, ctx.uid, spec=ctx.spec, defaults=ctx.obs.defaults)
        started = {"predict": ("PredictStarted", f"created {job['metadata']['name']} with {ctx.spec.parts} parts"),
                   "blend": ("BlendStarted", "all parts predicted; created the blend Job"),
                   "finalize": ("FinalizeStarted", "blend complete; created the finalize Job")}[stage]
        out.append((stage, job, started))
    for checked, lost_uid in checks_needed(status, ctx.children):
        job = manifests.check_job(ctx.name, ctx.obs.namespace, ctx.uid, spec=ctx.spec, stage=checked,
                                  lost_uid=lost_uid, defaults=ctx.obs.defaults)
        lost = (status.get("stages") or {}).get(checked, {}).get("job", "")
        out.append(("check", job, ("CheckingLostStage", f"{lost} was deleted before its end was seen; "
                                                         f"{job['metadata']['name']} checks its work on storage")))
    return out


def _settle(ctx: _Ctx, outcomes: Outcomes, refused: Sequence[str] = ()) -> Plan:
    plan = Plan()
    plan.events += [("Normal", reason, message) for _, _, (reason, message) in outcomes.created if reason]
    if outcomes.refused is not None:
        plan.events.append(("Warning", "CreateFailed", outcomes.refused[1]))
    prev = _handle_retry(ctx, outcomes, plan)
    extra: list[Extra] = []
    held = _kueue(ctx, plan, extra)
    _sync_suspend(ctx, plan)
    _sync_parallelism(ctx, plan, extra)
    extra += _stall_conditions(ctx)
    extra.append(_storage_condition(ctx))
    _give_up(ctx, plan, extra)
    conflict_text = (f"{', '.join(outcomes.conflicts)} exists but belongs to another owner (a deleted InferenceJob "
                     "of the same name whose Jobs are not garbage-collected yet?); waiting for it to go"
                     ) if outcomes.conflicts else ""
    extra.append(("ChildJobConflict", bool(outcomes.conflicts), "ForeignJob", conflict_text))
    policy_text = bounded("; ".join(refused))
    extra.append((policy.REASON, bool(refused), policy.REASON, policy_text))
    status = compute_status(ctx.spec, ctx.children, prev, now=ctx.now, generation=ctx.generation, gone=ctx.gone,
                            extra=extra, refused=outcomes.refused, held=held, notes=ctx.obs.notes)
    if refused and status["phase"] not in ("Succeeded", "Failed", "Suspended") and not _unfinished(ctx):
        status.update(reason=policy.REASON, message=policy_text)  # nothing runs: the policy is why
    status = _with_progress(ctx, status)
    status["reason"] = _waiting_reason(status, extra)
    status = _failed_by_outage(ctx, status, extra)
    kueue_deleted = deleted_by_kueue(ctx)
    if kueue_deleted is not None and not any(not job_finished(j) for j, _ in ctx.children.retries):
        status = _failed_by_kueue(ctx, status, kueue_deleted)
    status = _with_run(ctx, status)
    status["conditions"], found = inputcheck.carry(status["conditions"], ctx.prev.get("conditions") or [],
                                                   ctx.obs.intensity, now=ctx.now, generation=ctx.generation)
    plan.events += _condition_events(ctx, extra) + found + _phase_events(ctx, status)
    plan.status = status
    return plan


def _handle_retry(ctx: _Ctx, outcomes: Outcomes, plan: Plan) -> dict[str, Any]:
    attempt, handled = int(ctx.spec["retryFailedParts"] or 0), int(ctx.prev.get("retryFailedPartsHandled") or 0)
    if attempt <= handled:
        return ctx.prev
    retry_name = job_name(ctx.name, "predict", attempt)
    if retry_name in outcomes.conflicts:
        return ctx.prev  # tried again once the foreign Job is gone
    exists = any(j["metadata"]["name"] == retry_name for j, _ in ctx.children.retries)
    refused = outcomes.refused is not None and outcomes.refused[0] == "predict"
    if not exists and not refused:
        plan.events.append(("Normal", "NothingToRetry",
                            f"spec.retryFailedParts={attempt}: every predict part is done or being run"))
    return dict(ctx.prev, retryFailedPartsHandled=attempt)  # a refused create is not repeated until the next bump


def _unfinished(ctx: _Ctx) -> list[dict[str, Any]]:
    return [j for j in ctx.children.owned() if not job_finished(j)]


def _queued(ctx: _Ctx, job: Mapping[str, Any]) -> bool:
    """Whether Kueue runs this Job: it has a queue label and the cluster has Kueue. Without Kueue the label
    does nothing (nobody admits or suspends the Job), so the operator suspends such Jobs itself."""
    return kueue.managed(job) and not ctx.obs.kueue_missing


def _kueue(ctx: _Ctx, plan: Plan, extra: list[Extra]) -> tuple[str, str] | None:
    """Kueue's decisions as conditions; Workloads follow spec.suspend when that undoes nothing of Kueue's."""
    held = queued = evicted = None
    managed = False
    labelled = [j for j in _unfinished(ctx) if kueue.managed(j)]
    missing = ctx.obs.kueue_missing and bool(labelled)
    for job in labelled:
        if not _queued(ctx, job):
            continue
        managed = True
        wl, version = ctx.obs.workloads.get(job["metadata"].get("uid", ""), (None, None))
        if wl is None or version is None:
            continue
        d = kueue.decision(wl, job["metadata"]["name"])
        held, queued, evicted = held or d.held, queued or d.queued, evicted or d.evicted
        patch = kueue.suspend_patch(wl, bool(ctx.spec["suspend"]), ctx.name)
        if patch is not None:
            plan.workload_patches.append((wl["metadata"]["name"], version, patch))
    present = {c.get("type") for c in ctx.prev.get("conditions") or []}
    if managed or missing or present & set(KUEUE_KINDS):
        extra.append(("Queued", queued is not None, *(queued or ("", ""))))
        extra.append(("Evicted", evicted is not None, *(evicted or ("", ""))))
        queues = sorted({j["metadata"]["labels"][kueue.QUEUE_LABEL] for j in labelled})
        text = (f"queue {', '.join(queues)} is set (kueue.x-k8s.io/queue-name on {len(labelled)} Job(s)) but this "
                "cluster serves no Kueue Workload API (kueue.x-k8s.io v1beta2 or v1beta1): nothing queues these "
                "Jobs, they run as soon as they are created, and the operator suspends them itself on "
                "spec.suspend. Install Kueue, or leave queueName (and the chart's worker.queueName) out"
                ) if missing else ""
        extra.append(("KueueMissing", missing, "KueueNotInstalled" if missing else "", text))
    return held


def _sync_suspend(ctx: _Ctx, plan: Plan) -> None:
    """A Job without Kueue follows spec.suspend directly (Kueue's are handled through their Workloads)."""
    suspend = bool(ctx.spec["suspend"])
    for job in _unfinished(ctx):
        if not _queued(ctx, job) and bool(job["spec"].get("suspend")) != suspend:
            plan.job_patches.append((job["metadata"]["name"], {"spec": {"suspend": suspend}}))


def _sync_parallelism(ctx: _Ctx, plan: Plan, extra: list[Extra]) -> None:
    refused = []
    for job, _ in ctx.children.predict_runs():
        if job_finished(job):
            continue
        want = min(ctx.spec.parallelism, int(job["spec"].get("completions") or 1))
        if int(job["spec"].get("parallelism") or 1) == want:
            continue
        wl, _ = ctx.obs.workloads.get(job["metadata"].get("uid", ""), (None, None))
        if kueue.partially_admitted(job, want):
            continue  # Kueue admitted fewer pods than asked (minParallelism): its parallelism, not ours to undo
        if not _queued(ctx, job) or kueue.parallelism_allowed(job, wl):
            plan.job_patches.append((job["metadata"]["name"], {"spec": {"parallelism": want}}))
        else:
            refused.append(job["metadata"]["name"])
    note = (f"spec.parallelism {ctx.spec.parallelism} is not applied to {', '.join(refused)} while Kueue runs it: "
            "Kueue would suspend and re-queue a running Job whose pod count changed; it is applied when the Job "
            "waits in the queue again, and Jobs created from now on (retries) use it") if refused else ""
    extra.append(("ParallelismNotApplied", bool(refused), "KueueAdmitted", note))


def _stall_conditions(ctx: _Ctx) -> list[Extra]:
    """Stalls from this pass's sample; a kind the sample did not cover keeps its last state until the Jobs'
    counts clear it (stalls.cleared)."""
    unfinished = _unfinished(ctx)
    prev = {c.get("type"): c for c in ctx.prev.get("conditions") or []}
    samples = [d for j in unfinished if (d := (ctx.obs.diagnoses or {}).get(j["metadata"].get("uid", "")))]
    found: dict[str, stalls.Stall] = {}
    for job in unfinished:
        d = (ctx.obs.diagnoses or {}).get(job["metadata"].get("uid", ""))
        if d is not None:
            for s in stalls.explain(d.events or [], d.pending or [], d.failed or [],
                                    job_name=job["metadata"]["name"], now_s=ctx.obs.now_s,
                                    grace_s=ctx.obs.stall_grace_s, terminating=d.terminating or []):
                found.setdefault(s.kind, s)
    out: list[Extra] = []
    for kind in stalls.KINDS:
        if kind in found:
            out.append((kind, True, found[kind].reason, found[kind].message))
            continue
        old = prev.get(kind) or {}
        covered = any(d.covers(kind) for d in samples)
        still = old.get("status") == "True" and not covered and not stalls.cleared(kind, unfinished)
        out.append((kind, still, old.get("reason", "") if still else "", old.get("message", "") if still else ""))
    return out


# What keeps a running run from running, most telling first: the Reason column of kubectl get ij.
WAITING = ("KueueMissing", "GPUUnavailable", "PodsNotCreated", "PodsUnschedulable", "PodsStuckTerminating",
           "StorageUnreachable", "PodsStuck", "Evicted", "Queued")


def _waiting_reason(status: Mapping[str, Any], extra: Sequence[Extra]) -> str:
    """status.reason of a run in a running phase: the first true condition of :data:`WAITING` (a stalled or
    queued run reads as such in kubectl get), else the phase's own reason."""
    if status["phase"] not in ("Pending", "Predicting", "Blending", "Finalizing"):
        return str(status.get("reason") or "")
    on = {kind for kind, true, _, _ in extra if true}
    return next((kind for kind in WAITING if kind in on), str(status.get("reason") or ""))


STORAGE = "StorageUnreachable"
GAVE_UP = "OutageTooLong"
GIVE_UP_DEADLINE = 1  # activeDeadlineSeconds the operator sets to stop a Job it gave up on


def _storage_condition(ctx: _Ctx) -> Extra:
    """``StorageUnreachable`` while sampled pods wait for storage (their log ends in storagewait.py's line): the
    run is not stuck and not failing, it waits; and the run's outage budget.

    The condition is the outage's clock: True from the first sample with a pod waiting (its lastTransitionTime
    is when the outage was first seen) until a sample shows a pod working with the store again (a progress line
    or the 'reachable again' line: storagelines.storage_answers), or no Job runs. A sample where nobody waits but
    nobody works either (pods starting after an exit 74, loading the model) changes nothing: an outage long
    enough to cycle pods is one outage, not many short ones (nor do the gaps of the index's backoff reset it).
    Pods that give up exit 74, which the Job's podFailurePolicy ignores (manifests._failure_rules: no retry
    spent, the pod re-created after the index's backoff), so the Job controller alone would retry a permanent
    outage for ever; the bound is here: once the outage has lasted
    ``storage.maxOutageSeconds``, the condition's reason becomes OutageTooLong and the operator stops the run's
    Jobs (:func:`_give_up`), and the run fails with that reason. A Job created later (spec.retryFailedParts)
    starts a fresh clock."""
    old: Mapping[str, Any] = next((c for c in ctx.prev.get("conditions") or [] if c.get("type") == STORAGE), {})
    unfinished = _unfinished(ctx)
    fresh = [j for j in unfinished if j["spec"].get("activeDeadlineSeconds") != GIVE_UP_DEADLINE]
    if old.get("status") == "True" and old.get("reason") == GAVE_UP:
        if not fresh:
            return (STORAGE, True, GAVE_UP, old.get("message", ""))
        old = {}  # a retry after the give-up: a new clock
    if not unfinished:
        return (STORAGE, False, "", "")
    waits = ctx.obs.storage_waits
    on_before = old.get("status") == "True"
    if waits:
        pod, line = waits[0]
        more = f" (and {len(waits) - 1} more of the sampled pods)" if len(waits) > 1 else ""
        wait_s = (ctx.spec.get("storage") or {}).get("waitSeconds", 300)
        budget = (ctx.spec.get("storage") or {}).get("maxOutageSeconds", 3600)
        message = bounded(
            f"pod {pod}{more} waits for storage: {line}. Pods retry for up to storage.waitSeconds={wait_s:g}s, then "
            "exit 74, which costs the part none of its retries (the pod is re-created); the run gives up once the "
            f"outage has lasted storage.maxOutageSeconds={budget:g}s; check the object store (endpoint, health, "
            "throttling)")
    elif waits is not None and ctx.obs.storage_answered:
        return (STORAGE, False, "", "")
    elif on_before:
        message = old.get("message", "")
    else:
        return (STORAGE, False, "", "")
    since = parse_time(old.get("lastTransitionTime")) if on_before else None
    since = ctx.obs.now_s if since is None else since
    budget = float((ctx.spec.get("storage") or {}).get("maxOutageSeconds", 3600))
    lasted = ctx.obs.now_s - since
    if lasted >= budget:
        return (STORAGE, True, GAVE_UP, bounded(
            f"storage has been unreachable for {_duration(lasted)} (since {iso(since)}), storage.maxOutageSeconds="
            f"{budget:g}: gave up, the run's Jobs are stopped and completed work is kept; once the store answers "
            f"again, bump spec.retryFailedParts to run the parts not done. Last seen: {message}"))
    return (STORAGE, True, "WaitingForStorage", message)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _give_up(ctx: _Ctx, plan: Plan, extra: Sequence[Extra]) -> None:
    """Stop every unfinished Job of a run whose outage outlasted its budget: ``activeDeadlineSeconds`` is
    mutable, and a Job active longer than it fails with reason DeadlineExceeded, its pods deleted (kubernetes
    pkg/controller/job/job_controller.go, syncJob: pastActiveDeadline), which Kueue also respects; the indexes
    done stay done (completedIndexes), the rest are what spec.retryFailedParts re-runs."""
    if not any(kind == STORAGE and on and why == GAVE_UP for kind, on, why, _ in extra):
        return
    for job in _unfinished(ctx):
        if job["spec"].get("activeDeadlineSeconds") != GIVE_UP_DEADLINE:
            plan.job_patches.append((job["metadata"]["name"], {"spec": {"activeDeadlineSeconds": GIVE_UP_DEADLINE}}))


def _failed_by_outage(ctx: _Ctx, status: dict[str, Any], extra: Sequence[Extra]) -> dict[str, Any]:
    """A run that failed because the operator gave up on an outage says so, not DeadlineExceeded."""
    text = next((t for kind, on, why, t in extra if kind == STORAGE and on and why == GAVE_UP), None)
    if text is None or status["phase"] != "Failed" or status.get("reason") == STORAGE:
        return status
    status.update(reason=STORAGE, message=text)
    for c in status.get("conditions") or []:
        if c.get("type") == "Failed":
            c.update(reason=STORAGE, message=text)
    return status


def _with_progress(ctx: _Ctx, status: dict[str, Any]) -> dict[str, Any]:
    phase, stage = status["phase"], status["stage"]
    fresh = ctx.obs.progress
    if phase == "Succeeded":
        done = progressview.finished(status.get("progress"), "finalize")
        if done is not None:
            status["progress"] = done
    elif fresh is not None and fresh.get("stage") == stage:
        status["progress"] = fresh
    elif phase not in ("Failed", "Suspended") and (status.get("progress") or {}).get("stage") != stage:
        status.pop("progress", None)
    return status


def _with_run(ctx: _Ctx, status: dict[str, Any]) -> dict[str, Any]:
    """``status.run``: DONE and ETA over the whole run (progressview.run_view), what ``kubectl get ij`` shows."""
    spec = ctx.spec
    status["run"] = progressview.run_view(status, progressview.RunShape(
        predict_pods=min(spec.parallelism, spec.parts), blend_pods=int(spec["blend"]["parallelism"]),
        finalize_pods=int(spec["finalize"]["parallelism"]), device=spec.device))
    return status


def _failed_by_kueue(ctx: _Ctx, status: dict[str, Any], deleted: tuple[str, str]) -> dict[str, Any]:
    stage, message = deleted
    text = bounded(message)
    status.update(phase="Failed", stage=stage, reason="DeletedByKueue", message=text,
                  completionTime=status.get("completionTime") or ctx.now)
    conds = [c for c in status.get("conditions") or [] if c.get("type") != "Failed"]
    conds.append({"type": "Failed", "status": "True", "reason": "DeletedByKueue", "message": text,
                  "lastTransitionTime": ctx.now, "observedGeneration": ctx.generation})
    status["conditions"] = conds
    return status


def _condition_events(ctx: _Ctx, extra: Sequence[Extra]) -> list[Event]:
    old = {c.get("type"): (c.get("status"), c.get("reason")) for c in ctx.prev.get("conditions") or []}
    out = []
    for kind, on, why, text in extra:
        if on and old.get(kind) != ("True", why):
            kind_reason = why if kind in stalls.KINDS else kind
            out.append(("Normal" if kind == "Queued" else "Warning", kind_reason, text))
    return out


def _failure_detail(ctx: _Ctx, job_name_: str) -> str:
    job = next((j for j in ctx.children.owned() if j["metadata"]["name"] == job_name_), None)
    if job is None or ctx.obs.diagnoses is None:
        return ""
    d = ctx.obs.diagnoses.get(job["metadata"].get("uid", ""))
    return stalls.failure_lines(d.failed) if d and d.failed else ""


def _phase_events(ctx: _Ctx, status: Mapping[str, Any]) -> list[Event]:
    old_phase = ctx.prev.get("phase")
    phase = status["phase"]
    if phase == old_phase:
        return []
    message = status["message"]
    if phase == "Failed" and status["reason"] == "CreateFailed":
        return []  # the CreateFailed Event says it already
    if status["reason"] == policy.REASON:
        return []  # the PolicyViolation Warning says it already
    if phase == "Failed":
        if status["stage"] == "predict":
            failing = ctx.children.retries[-1][0]["metadata"]["name"] if ctx.children.retries else \
                job_name(ctx.name, "predict")
        else:
            failing = job_name(ctx.name, status["stage"])
        detail = _failure_detail(ctx, failing)
        return [("Warning", status["reason"], bounded(message + (f" ({detail})" if detail else "")))]
    if phase == "Suspended" and status["reason"] != "Suspended":  # held by Kueue or a person, not by the spec
        return [("Warning", status["reason"], message)]
    return [("Normal", phase, message)]


__all__ = ["Observed", "Outcomes", "Plan", "Diagnosis", "decide", "iso"]
