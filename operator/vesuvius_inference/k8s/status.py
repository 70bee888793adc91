"""Child Jobs + what the status already recorded -> InferenceJob status. Pure: the handlers feed it
what the API returned.

Child Jobs do not live forever (``ttlSecondsAfterFinished``, a user's ``kubectl delete``), so the
status is a ledger, never a view of the Jobs that exist now: the parts done only grow, each stage's
completion is recorded with its time, and Succeeded or Failed are never left except when a retry
Job starts (spec.retryFailedParts). Part sets travel as index-range strings, as in a Job's
``status.completedIndexes``; retry Jobs run chosen parts, mapped back through their
``vesuvius.dev/part-ids`` annotation. A stage whose Job vanished before its end was seen is Lost and
judged by what it left on storage: a check Job (stagecheck.py) answers, and its verdict is recorded.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract import stageplan
from vesuvius_inference.contract.ranges import count_ranges, decode_part_ids, format_ranges, parse_ranges
from vesuvius_inference.k8s.spec import JobSpec

PHASES = ("Pending", "Predicting", "Blending", "Finalizing", "Succeeded", "Failed", "Suspended")
LABEL_JOB = "vesuvius.dev/inferencejob"
LABEL_STAGE = "vesuvius.dev/stage"
LABEL_CHECK = "vesuvius.dev/checks"
PART_IDS = "vesuvius.dev/part-ids"
CHECKS_UID = "vesuvius.dev/checks-uid"
CHECKED = ("predict", "finalize")  # stages whose lost Job is judged by a check Job (blend simply re-runs)
RETRY = re.compile(r"-predict-r(\d+)$")
MAX_MESSAGE = 1024  # status.message and condition messages stay far below the CRD's maxLength
MAX_RANGES = 12  # part ranges quoted in a message; the rest is counted


@dataclass
class ChildJobs:
    """The Jobs of one InferenceJob (owned by its uid), by stage; ``retries`` are (job, part ids) of retry
    Jobs in attempt order; ``foreign`` are Jobs with its label that another owner (e.g. a deleted
    InferenceJob of the same name, not yet garbage-collected) holds."""

    predict: dict[str, Any] | None = None
    retries: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)
    blend: dict[str, Any] | None = None
    finalize: dict[str, Any] | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # by the stage they check
    foreign: list[dict[str, Any]] = field(default_factory=list)

    def predict_runs(self) -> list[tuple[dict[str, Any], list[int] | None]]:
        return ([(self.predict, None)] if self.predict else []) + [(j, ids) for j, ids in self.retries]

    def owned(self) -> list[dict[str, Any]]:
        return [j for j, _ in self.predict_runs()] + [j for j in (self.blend, self.finalize) if j] + list(
            self.checks.values())


def owner_uids(job: Mapping[str, Any]) -> set[str]:
    return {r.get("uid", "") for r in (job.get("metadata") or {}).get("ownerReferences") or []}


def retry_attempt(job: Mapping[str, Any]) -> int:
    m = RETRY.search(job["metadata"]["name"])
    return int(m.group(1)) if m else 0


def run_part_ids(job: Mapping[str, Any]) -> list[int] | None:
    """The part ids a retry Job runs (its index i is part ids[i]), from its ``vesuvius.dev/part-ids``
    annotation (manifests.py); None for the first predict Job. State is read from the API object, never
    from container args."""
    if not retry_attempt(job):
        return None
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(PART_IDS)
    try:
        return decode_part_ids(text) if text else []
    except ValueError:
        return []


def checked_uid(job: Mapping[str, Any]) -> str:
    """The uid of the lost Job a check Job was created for (its ``vesuvius.dev/checks-uid`` annotation)."""
    return ((job.get("metadata") or {}).get("annotations") or {}).get(CHECKS_UID, "")


def sort_children(jobs: Iterable[Mapping[str, Any]], uid: str) -> ChildJobs:
    """Sort listed Jobs into stages; only Jobs whose ownerReferences name ``uid`` are this object's."""
    out = ChildJobs()
    for j in jobs:
        j = dict(j)
        if uid not in owner_uids(j):
            out.foreign.append(j)
            continue
        labels = j["metadata"].get("labels") or {}
        stage = labels.get(LABEL_STAGE)
        if stage == "check":
            out.checks[labels.get(LABEL_CHECK, "")] = j
        elif retry_attempt(j):
            out.retries.append((j, run_part_ids(j) or []))
        elif stage in ("predict", "blend", "finalize"):
            setattr(out, stage, j)
    out.retries.sort(key=lambda r: retry_attempt(r[0]))
    return out


def cond(job: Mapping[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def job_finished(job: Mapping[str, Any] | None) -> bool:
    return cond(job, "Complete") is not None or cond(job, "Failed") is not None


def bounded(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def ranges_brief(ids: Iterable[int], limit: int = MAX_RANGES) -> str:
    """``0-3,7,9`` for few ranges; the first ``limit`` ranges and a count of the rest for many."""
    text = format_ranges(ids)
    pieces = text.split(",") if text else []
    if len(pieces) <= limit:
        return text
    return ",".join(pieces[:limit]) + f",… ({len(pieces) - limit} more ranges)"


@dataclass
class PartSets:
    done: set[int]
    failed: set[int]
    active: int
    covered: set[int]  # parts an unfinished Job may still run: never handed to another Job


def part_sets(spec: JobSpec, jobs: ChildJobs, gone: Sequence[Mapping[str, Any]] = ()) -> PartSets:
    """Parts done, failed and covered according to the Jobs listed now and the final state of deleted ones."""
    done: set[int] = set()
    failed: set[int] = set()
    covered: set[int] = set()
    active = 0
    runs: list[tuple[Mapping[str, Any], list[int] | None, bool]] = [(j, ids, True) for j, ids in jobs.predict_runs()]
    runs += [(g, run_part_ids(g), False) for g in gone
             if (g.get("metadata", {}).get("labels") or {}).get(LABEL_STAGE) == "predict"]
    for job, ids, listed in runs:
        st = job.get("status") or {}
        completions = int((job.get("spec") or {}).get("completions") or 0)

        def part(i: int, ids: list[int] | None = ids) -> int:
            return i if ids is None else (ids[i] if 0 <= i < len(ids) else -1)

        job_done = {part(i) for i in parse_ranges(st.get("completedIndexes"))}
        job_failed = {part(i) for i in parse_ranges(st.get("failedIndexes"))}
        done |= job_done
        failed |= job_failed
        if listed and not job_finished(job):
            covered |= {part(i) for i in range(completions)} - job_failed - job_done
            active += int(st.get("active") or 0)
    total = spec.parts
    keep = set(range(total))
    return PartSets(done & keep, failed & keep, active, covered & keep)


def _condition(prev: Sequence[Mapping[str, Any]], kind: str, status: bool, *, reason: str, message: str,
               now: str,
               generation: int) -> dict[str, Any]:
    old = next((c for c in prev if c.get("type") == kind), None)
    value = "True" if status else "False"
    since = now if old is None or old.get("status") != value else old.get("lastTransitionTime", now)
    return {"type": kind, "status": value, "reason": reason, "message": bounded(message),
            "lastTransitionTime": since,
            "observedGeneration": generation}


def parse_time(value: Any) -> float | None:
    """An RFC 3339 time (the API's "...Z", or "+00:00" as the kubernetes client renders datetimes) as epoch s."""
    import datetime as dt

    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _rfc3339(value: Any, default: str) -> str:
    import datetime as dt

    t = parse_time(value)
    return default if t is None else dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_record(job: Mapping[str, Any], now: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"job": job["metadata"]["name"], "uid": job["metadata"].get("uid", "")}
    done, failed = cond(job, "Complete"), cond(job, "Failed")
    if done:
        rec.update(state="Complete", completionTime=_rfc3339((job.get("status") or {}).get("completionTime"), now))
    elif failed:
        rec.update(state="Failed", completionTime=_rfc3339(failed.get("lastTransitionTime"), now),
                   reason=failed.get("reason") or "Failed", message=bounded(failed.get("message") or ""))
    else:
        rec["state"] = "Running"
    return rec


def _stages(prev: Mapping[str, Any], jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], *,
            now: str) -> dict[str, Any]:
    """Per stage: the Job that ran it and how it ended. Complete and Failed are final; a Job recorded
    Running that is gone without its final state having been seen is Lost (then judged by a check Job)."""
    out = copy.deepcopy(dict(prev))
    gone_by_stage = {(g["metadata"].get("labels") or {}).get(LABEL_STAGE): g for g in gone if not retry_attempt(g)}
    for stage in ("predict", "blend", "finalize"):
        job = getattr(jobs, stage) or gone_by_stage.get(stage)
        old = out.get(stage)
        if job is not None:
            rec = _job_record(job, now)
            if old and old.get("uid") == rec["uid"] and old.get("state") in ("Complete", "Failed"):
                continue
            if stage == "predict" and old and old.get("state") == "Complete":
                continue
            out[stage] = rec
        elif old and old.get("state") == "Running":
            old["state"] = "Lost"
    return out


def check_verdict(job: Mapping[str, Any]) -> str:
    """Running, Complete (the work is on storage), Incomplete (the check's FailJob rule on
    stagecheck.EXIT_INCOMPLETE: pkg/controller/job/job_controller.go reports it as reason PodFailurePolicy)
    or Failed (it could not tell: retries used up, a deadline)."""
    if cond(job, "Complete"):
        return "Complete"
    failed = cond(job, "Failed")
    if failed is None:
        return "Running"
    return "Incomplete" if failed.get("reason") == "PodFailurePolicy" else "Failed"


def _apply_checks(stages: dict[str, Any], jobs: ChildJobs, gone: Sequence[Mapping[str, Any]],
                  *, notes: Mapping[str, str]) -> None:
    """Record, on each Lost stage, what its check Job found; a Complete verdict makes the stage Complete.
    ``notes``: the check pods' own verdict lines by check Job uid (read from their termination message)."""
    found: dict[str, Mapping[str, Any]] = dict(jobs.checks)
    for g in gone:
        labels = (g.get("metadata") or {}).get("labels") or {}
        if labels.get(LABEL_STAGE) == "check":
            found.setdefault(labels.get(LABEL_CHECK, ""), g)
    for stage in CHECKED:
        rec = stages.get(stage)
        if not rec or rec.get("state") != "Lost":
            continue
        job = found.get(stage)
        old = rec.get("check") or {}
        if job is None or checked_uid(job) != rec.get("uid"):
            if old.get("state") == "Running":
                old["state"] = "Lost"  # the check Job vanished unseen as well: it is created again
            continue
        verdict = check_verdict(job)
        uid = job["metadata"].get("uid", "")
        note = notes.get(uid) or old.get("message") or ""
        rec["check"] = {"job": job["metadata"]["name"], "uid": uid, "state": verdict, "message": bounded(note)}
        if verdict == "Complete":
            rec.update(state="Complete", verifiedBy=job["metadata"]["name"])


def _close_predict(stages: dict[str, Any], predict_done: bool, total: int, *, now: str) -> None:
    if not predict_done:
        return
    rec = stages.setdefault("predict", {})
    if rec.get("state") != "Complete" or "parts" not in rec:
        rec.update(state="Complete", completionTime=rec.get("completionTime") if rec.get("state") == "Complete"
                   else now, parts=f"{total}/{total}")
        rec.pop("reason", None)
        rec.pop("message", None)


def _state(stages: Mapping[str, Any], stage: str) -> str | None:
    return (stages.get(stage) or {}).get("state")


def _check_state(stages: Mapping[str, Any], stage: str) -> str | None:
    return ((stages.get(stage) or {}).get("check") or {}).get("state")


FAILURE_REASONS = {"FailedIndexes": "PartsFailed"}


def _predict_failure(jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], stages: Mapping[str, Any]
                     ) -> tuple[str, str]:
    """Reason and detail of the predict run that ended last with parts missing."""
    finished: list[Mapping[str, Any]] = [j for j, _ in jobs.predict_runs() if job_finished(j)]
    finished += [g for g in gone if (g["metadata"].get("labels") or {}).get(LABEL_STAGE) == "predict"
                 and job_finished(g)]
    finished.sort(key=retry_attempt)
    if finished:
        last = finished[-1]
        failed = cond(last, "Failed")
        if failed:
            reason = failed.get("reason") or "Failed"
            return FAILURE_REASONS.get(reason, reason), (f"{last['metadata']['name']} failed: {reason}: "
                                                         f"{failed.get('message', '')}").strip()
    check = (stages.get("predict") or {}).get("check") or {}
    if check.get("state") == "Incomplete" and not jobs.retries:
        return "PartsIncomplete", (f"{stages['predict']['job']} was deleted before the operator saw it finish, "
                                   f"and {check['job']} found: {check.get('message') or 'parts without markers'}")
    if check.get("state") == "Failed" and not jobs.retries:
        return "CheckFailed", (f"{stages['predict']['job']} was deleted before the operator saw it finish and "
                               f"{check['job']} could not read the parts' markers (see its pod's log)")
    return "PartsIncomplete", "no predict Job is left to run them"


@dataclass
class Ledger:
    """What the operator knows of the parts: only ever grows from what it saw (Jobs, deleted Jobs, checks)."""

    total: int
    done: set[int]
    failed: set[int]
    sets: PartSets

    @property
    def predict_done(self) -> bool:
        return len(self.done) >= self.total


def ledger(spec: JobSpec, jobs: ChildJobs, prev: Mapping[str, Any], *, gone: Sequence[Mapping[str, Any]],
           stages: Mapping[str, Any]) -> Ledger:
    total = spec.parts
    ps = part_sets(spec, jobs, gone)
    prev_parts = prev.get("parts") or {}
    done = ps.done | {i for i in parse_ranges(prev_parts.get("completedIndexes")) if 0 <= i < total}
    if _check_state(stages, "predict") == "Complete":  # every part's marker is on storage
        done = set(range(total))
    failed = (ps.failed | parse_ranges(prev_parts.get("failedIndexes"))) - done - ps.covered
    return Ledger(total, done, {i for i in failed if 0 <= i < total}, ps)


Phase = tuple[str, str, str, str]  # phase, stage, reason, message


def _finalize_phase(spec: JobSpec, stages: Mapping[str, Any]) -> Phase | None:
    state, check = _state(stages, "finalize"), _check_state(stages, "finalize")
    rec = stages.get("finalize") or {}
    if state == "Complete":
        how = f" (verified on storage by {rec['verifiedBy']})" if rec.get("verifiedBy") else ""
        return "Succeeded", "finalize", "Completed", f"output written to {spec['output']['uri']}{how}"
    if state == "Failed":
        return ("Failed", "finalize", "FinalizeFailed",
                f"finalize Job failed: {rec.get('reason', '')} {rec.get('message', '')}")
    if state == "Lost" and check == "Failed":
        return ("Failed", "finalize", "CheckFailed",
                f"{rec['job']} was deleted before the operator saw it finish and {rec['check']['job']} could not "
                f"read the output's metadata; check {spec['output']['uri']} yourself")
    if state == "Lost" and check == "Incomplete":
        return "Finalizing", "finalize", "RerunningFinalize", (
            f"{rec['job']} was deleted before it finished ({rec['check']['job']}: "
            f"{rec['check'].get('message') or 'output incomplete'}); running finalize again")
    if state == "Lost":
        return "Finalizing", "finalize", "CheckingLostStage", (
            f"{rec['job']} was deleted before the operator saw it finish; checking the output on storage")
    if state == "Running":
        return "Finalizing", "finalize", "Finalizing", "building the output's pyramid and metadata"
    return None


def _blend_phase(stages: Mapping[str, Any]) -> Phase | None:
    state = _state(stages, "blend")
    if state == "Complete":
        return "Finalizing", "blend", "BlendComplete", "blend complete; starting finalize"
    if state == "Failed":
        rec = stages["blend"]
        return "Failed", "blend", "BlendFailed", f"blend Job failed: {rec.get('reason', '')} {rec.get('message', '')}"
    if state == "Running":
        return "Blending", "blend", "Blending", "blending predicted parts"
    return None


def _predict_phase(jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], stages: Mapping[str, Any],
                   *, led: Ledger) -> Phase:
    total, done, failed = led.total, led.done, led.failed
    unfinished = [j for j, _ in jobs.predict_runs() if not job_finished(j)]
    if led.predict_done:
        return "Predicting", "predict", "PredictComplete", "all parts predicted; starting blend"
    if unfinished:
        return "Predicting", "predict", "Predicting", (
            f"{len(done)}/{total} parts done, {led.sets.active} running" + (f", {len(failed)} failed" if failed else ""))
    if _state(stages, "predict") == "Lost" and _check_state(stages, "predict") in (None, "Running", "Lost") \
            and not jobs.retries:
        return "Predicting", "predict", "CheckingLostStage", (
            f"{stages['predict']['job']} was deleted before the operator saw it finish; checking the parts' markers "
            "on storage")
    if stages.get("predict") or jobs.retries or any(
            (g["metadata"].get("labels") or {}).get(LABEL_STAGE) == "predict" for g in gone):
        reason, detail = _predict_failure(jobs, gone, stages)
        missing = total - len(done)
        never = missing - len(failed)
        return "Failed", "predict", reason, (
            f"{missing} of {total} parts not done ({len(failed)} failed"
            + (f": parts {ranges_brief(failed)}" if failed else "")
            + (f"; {never} never ran" if never else "") + f"); {detail}; "
            "bump spec.retryFailedParts to re-run every part not done")
    return "Pending", "", "Created", "waiting for the predict Job"


def _phase(spec: JobSpec, jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], *, stages: Mapping[str, Any],
           led: Ledger) -> Phase:
    return (_finalize_phase(spec, stages) or _blend_phase(stages)
            or _predict_phase(jobs, gone, stages, led=led))


def _conditions(conds: Sequence[Mapping[str, Any]], led: Ledger, stages: Mapping[str, Any], *, phase: Phase,
                suspended: tuple[str, str] | None, sticky: bool, extra: Sequence[tuple[str, bool, str, str]],
                now: str, generation: int) -> list[dict[str, Any]]:
    name, _, reason, message = phase
    blend, finalize = _state(stages, "blend"), _state(stages, "finalize")
    blend_done = blend == "Complete" or finalize in ("Complete", "Running", "Failed", "Lost")
    out = [
        _condition(conds, "PredictComplete", led.predict_done,
                   reason="AllPartsDone" if led.predict_done else "PartsPending",
                   message=f"{len(led.done)}/{led.total} parts", now=now, generation=generation),
        _condition(conds, "BlendComplete", blend_done, reason="BlendJobComplete" if blend_done else "NotYet",
                   message="seams written" if blend_done else "", now=now, generation=generation),
        _condition(conds, "Complete", name == "Succeeded", reason=reason if name == "Succeeded" else "NotYet",
                   message=message if name == "Succeeded" else "", now=now, generation=generation),
        _condition(conds, "Failed", name == "Failed", reason=reason if name == "Failed" else "NoFailure",
                   message=message if name == "Failed" else "", now=now, generation=generation),
        _condition(conds, "Suspended", suspended is not None, reason=suspended[0] if suspended else "Running",
                   message=suspended[1] if suspended else "", now=now, generation=generation),
    ]
    if sticky:  # the terminal conditions as they were when the run ended
        keep = {c.get("type"): c for c in conds}
        out = [dict(keep[c["type"]]) if c["type"] in keep and c["type"] in ("Complete", "Failed") else c
               for c in out]
    present = {c.get("type") for c in conds}
    for kind, on, why, text in extra:
        if on or kind in present:
            out.append(_condition(conds, kind, on, reason=why if on else "Resolved",
                                  message=text if on else "", now=now, generation=generation))
    return out


def _names(jobs: ChildJobs) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for st in ("predict", "blend", "finalize"):
        if getattr(jobs, st) is not None:
            names[st] = getattr(jobs, st)["metadata"]["name"]
    if jobs.retries:
        names["retries"] = [j["metadata"]["name"] for j, _ in jobs.retries]
    if jobs.checks:
        names["checks"] = sorted(j["metadata"]["name"] for j in jobs.checks.values())
    return names


def compute_status(spec: JobSpec, jobs: ChildJobs, previous: Mapping[str, Any] | None, *, now: str,
                   generation: int, gone: Sequence[Mapping[str, Any]] = (),
                   extra: Sequence[tuple[str, bool, str, str]] = (),
                   refused: tuple[str, str] | None = None, held: tuple[str, str] | None = None,
                   notes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The full status.

    ``gone``: final bodies of deleted child Jobs (their watch DELETED events); ``extra``: (type, true?,
    reason, message) of the operator's own conditions; ``refused``: (stage, message) when the API
    server refused to create that stage's Job (4xx): the run fails with reason CreateFailed; ``held``:
    (reason, message) when something other than the spec keeps the run suspended (Kueue deactivated a
    Workload); ``notes``: check Jobs' verdict lines by uid.
    """
    prev = dict(previous or {})
    stages = _stages(prev.get("stages") or {}, jobs, gone, now=now)
    _apply_checks(stages, jobs, gone, notes=notes or {})
    led = ledger(spec, jobs, prev, gone=gone, stages=stages)
    _close_predict(stages, led.predict_done, led.total, now=now)
    phase, stage, reason, message = _phase(spec, jobs, gone, stages=stages, led=led)
    if refused is not None and phase not in ("Succeeded", "Failed"):
        phase, stage, reason, message = "Failed", refused[0], "CreateFailed", refused[1]
    unfinished = any(not job_finished(j) for j, _ in jobs.predict_runs())
    prev_phase: str = prev.get("phase") or ""
    sticky = prev_phase == "Succeeded" or (prev_phase == "Failed" and prev.get("reason") != "InvalidSpec"
                                           and not unfinished)
    suspended = None
    if phase not in ("Succeeded", "Failed") and not sticky:
        if spec["suspend"]:
            suspended = ("SpecSuspend", "spec.suspend is true")
        elif held is not None:
            suspended = held
    if suspended is not None:
        phase, reason = "Suspended", "Suspended" if suspended[0] == "SpecSuspend" else suspended[0]
        message = f"suspended during {stage or 'start'}" if suspended[0] == "SpecSuspend" else suspended[1]
    if sticky:
        phase, stage, reason, message = prev_phase, prev.get("stage", stage), prev.get("reason", reason), \
            prev.get("message", message)
    message = bounded(message)
    conditions = _conditions(prev.get("conditions") or [], led, stages, phase=(phase, stage, reason, message),
                             suspended=suspended, sticky=sticky, extra=extra, now=now, generation=generation)
    ps = led.sets
    status: dict[str, Any] = {
        "phase": phase, "stage": stage, "message": message, "reason": reason, "observedGeneration": generation,
        "parts": {"total": led.total, "succeeded": len(led.done), "failed": len(led.failed), "active": ps.active,
                  "completedIndexes": format_ranges(led.done), "failedIndexes": format_ranges(led.failed),
                  "summary": f"{len(led.done)}/{led.total}"},
        "conditions": conditions,
        "jobs": _names(jobs),
        "stages": stages,
        "retryAttempt": max(int(prev.get("retryAttempt") or 0), len(jobs.retries)),
        "startTime": prev.get("startTime") or now,
    }
    for key in ("retryFailedPartsHandled", "progress"):
        if prev.get(key) is not None:
            status[key] = prev[key]
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = (prev.get("completionTime") if prev_phase in ("Succeeded", "Failed") else None) \
            or now
    return status


def stage_to_create(status: Mapping[str, Any], jobs: ChildJobs) -> str | None:
    """Which stage's Job the operator should create now, if any: the pipeline's order (stageplan.next_stage)
    over what the ledger records as complete, gated by what Kubernetes already holds. A stage that status
    records as created (even if its Job is gone since) is never created again, except a blend Job that was
    lost before its end was seen (blend is idempotent and its inputs stay until finalize runs) and a
    finalize Job whose check found the output incomplete (finalize resumes). Predict is never created
    again once recorded: parts not done are retried through spec.retryFailedParts."""
    if status.get("phase") in ("Failed", "Succeeded", "Suspended"):
        return None
    stages = status.get("stages") or {}
    parts = status.get("parts") or {}
    done = {s for s in ("blend", "finalize") if _state(stages, s) == "Complete"}
    if stages.get("predict") and parts.get("succeeded", 0) >= parts.get("total", 1):
        done.add("predict")
    stage = stageplan.next_stage(done)
    if stage is None or getattr(jobs, stage) is not None:
        return None
    if stage == "predict":
        return None if stages.get("predict") or jobs.retries else "predict"
    if stage == "blend":
        return "blend" if _state(stages, "blend") in (None, "Lost") else None
    return "finalize" if _state(stages, "finalize") is None or _check_state(stages, "finalize") == "Incomplete" \
        else None


def checks_needed(status: Mapping[str, Any], jobs: ChildJobs) -> list[tuple[str, str]]:
    """(stage, lost Job uid) for each Lost stage that needs a check Job now: none yet, or the last one lost.
    A check Job of an earlier loss still listed is waited for (its name is taken until the TTL removes it)."""
    if status.get("phase") in ("Failed", "Succeeded", "Suspended"):
        return []
    stages = status.get("stages") or {}
    out = []
    for stage in CHECKED:
        rec = stages.get(stage) or {}
        if rec.get("state") != "Lost" or _check_state(stages, stage) not in (None, "Lost"):
            continue
        if stage == "predict" and (jobs.retries or (status.get("parts") or {}).get("succeeded", 0) >= (
                status.get("parts") or {}).get("total", 1)):
            continue
        if stage in jobs.checks:
            continue
        out.append((stage, rec.get("uid", "")))
    return out


def missing_parts(status: Mapping[str, Any], covered: set[int]) -> set[int]:
    """Parts a retry Job should run: not done and not covered by an unfinished Job."""
    parts = status.get("parts") or {}
    done = parse_ranges(parts.get("completedIndexes"))
    return set(range(int(parts.get("total") or 0))) - done - covered


def status_patch(prev: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """An RFC 7386 merge patch turning ``prev`` into ``new``: keys ``new`` lacks become null, so nothing
    stale survives (a merge patch of ``new`` alone would keep, e.g., an old completionTime)."""
    prev = prev or {}
    patch: dict[str, Any] = {}
    for key, value in new.items():
        old = prev.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = status_patch(old, value)
            if sub:
                patch[key] = sub
        elif value != old or key not in prev:
            patch[key] = copy.deepcopy(value)
    for key in prev:
        if key not in new:
            patch[key] = None
    return patch


__all__ = ["ChildJobs", "sort_children", "compute_status", "stage_to_create", "part_sets", "job_finished",
           "count_ranges", "PHASES", "status_patch", "missing_parts", "ranges_brief", "checks_needed", "check_verdict"]
