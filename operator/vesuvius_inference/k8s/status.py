"""Child Jobs + what the status already recorded -> InferenceJob status. Pure: the handlers feed it
what the API returned.

Child Jobs do not live forever (``ttlSecondsAfterFinished``, a user's ``kubectl delete``), so the
status is a ledger, never a view of the Jobs that exist now: the parts done only grow, each stage's
completion is recorded with its time, and Succeeded or Failed are never left except when a retry
Job starts (spec.retryFailedParts). Part sets travel as index-range strings, as in a Job's
``status.completedIndexes``; retry Jobs run chosen parts, mapped back through their ``--part_ids``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ranges import count_ranges, format_ranges, parse_ranges
from .spec import JobSpec

PHASES = ("Pending", "Predicting", "Blending", "Finalizing", "Succeeded", "Failed", "Suspended")
LABEL_JOB = "vesuvius.dev/inferencejob"
LABEL_STAGE = "vesuvius.dev/stage"
RETRY = re.compile(r"-predict-r(\d+)$")
MAX_MESSAGE = 1024  # status.message and condition messages stay far below the CRD's maxLength
MAX_RANGES = 12  # part ranges quoted in a message; the rest is counted
# Waiting reasons with which a container never starts on its own (pkg/kubelet/kuberuntime/kuberuntime_container.go
# ErrCreateContainerConfig/ErrCreateContainer, pkg/kubelet/images/types.go ErrImagePull/ImagePullBackOff/...).
STUCK_REASONS = ("CreateContainerConfigError", "CreateContainerError", "ImagePullBackOff", "ErrImagePull",
                 "InvalidImageName", "ErrImageNeverPull")


@dataclass
class ChildJobs:
    """The Jobs of one InferenceJob (owned by its uid), by stage; ``retries`` are (job, part ids) of retry
    Jobs in attempt order; ``foreign`` are Jobs with its label that another owner (e.g. a deleted
    InferenceJob of the same name, not yet garbage-collected) holds."""

    predict: dict[str, Any] | None = None
    retries: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)
    blend: dict[str, Any] | None = None
    finalize: dict[str, Any] | None = None
    foreign: list[dict[str, Any]] = field(default_factory=list)

    def predict_runs(self) -> list[tuple[dict[str, Any], list[int] | None]]:
        return ([(self.predict, None)] if self.predict else []) + [(j, ids) for j, ids in self.retries]

    def owned(self) -> list[dict[str, Any]]:
        return [j for j, _ in self.predict_runs()] + [j for j in (self.blend, self.finalize) if j]


def owner_uids(job: Mapping[str, Any]) -> set[str]:
    return {r.get("uid", "") for r in (job.get("metadata") or {}).get("ownerReferences") or []}


def retry_attempt(job: Mapping[str, Any]) -> int:
    m = RETRY.search(job["metadata"]["name"])
    return int(m.group(1)) if m else 0


def run_part_ids(job: Mapping[str, Any]) -> list[int] | None:
    """The part ids a retry Job runs (its index i is part ids[i]); None for the first predict Job."""
    if not retry_attempt(job):
        return None
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return sorted(parse_ranges(args[args.index("--part_ids") + 1]))


def classify(jobs: Iterable[Mapping[str, Any]], uid: str) -> ChildJobs:
    """Sort listed Jobs into stages; only Jobs whose ownerReferences name ``uid`` are this object's."""
    out = ChildJobs()
    for j in jobs:
        j = dict(j)
        if uid not in owner_uids(j):
            out.foreign.append(j)
            continue
        stage = (j["metadata"].get("labels") or {}).get(LABEL_STAGE)
        if retry_attempt(j):
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


def _condition(prev: Sequence[Mapping[str, Any]], kind: str, status: bool, reason: str, message: str, now: str,
               generation: int) -> dict[str, Any]:
    old = next((c for c in prev if c.get("type") == kind), None)
    value = "True" if status else "False"
    changed = old is None or old.get("status") != value
    return {"type": kind, "status": value, "reason": reason, "message": bounded(message),
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
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
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def _rfc3339(value: Any, default: str) -> str:
    import datetime as dt

    t = parse_time(value)
    return default if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _stages(prev: Mapping[str, Any], jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], now: str,
            predict_done: bool, total: int) -> dict[str, Any]:
    """Per stage: the Job that ran it and how it ended. Complete and Failed are final; a Job recorded
    Running that is gone without its final state having been seen is Lost."""
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
    if predict_done:
        rec = out.setdefault("predict", {})
        if rec.get("state") != "Complete" or "parts" not in rec:
            rec.update(state="Complete", completionTime=rec.get("completionTime") if rec.get("state") == "Complete"
                       else now, parts=f"{total}/{total}")
            rec.pop("reason", None)
            rec.pop("message", None)
    return out


def _state(stages: Mapping[str, Any], stage: str) -> str | None:
    return (stages.get(stage) or {}).get("state")


FAILURE_REASONS = {"FailedIndexes": "PartsFailed"}


def _predict_failure(jobs: ChildJobs, gone: Sequence[Mapping[str, Any]], stages: Mapping[str, Any]
                     ) -> tuple[str, str]:
    """Reason and detail of the predict run that ended last with parts missing."""
    finished = [j for j, _ in jobs.predict_runs() if job_finished(j)]
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
    if _state(stages, "predict") == "Lost" and not jobs.retries:
        return "JobLost", f"{stages['predict']['job']} was deleted before the operator saw it finish"
    return "PartsIncomplete", "no predict Job is left to run them"


def derive(spec: JobSpec, jobs: ChildJobs, previous: Mapping[str, Any] | None, now: str, generation: int,
           gone: Sequence[Mapping[str, Any]] = (), extra: Sequence[tuple[str, bool, str, str]] = (),
           refused: tuple[str, str] | None = None) -> dict[str, Any]:
    """The full status.

    ``gone``: final bodies of deleted child Jobs (their watch DELETED events); ``extra``: (type, true?,
    reason, message) of the operator's own conditions; ``refused``: (stage, message) when the API
    server refused to create that stage's Job (4xx): the run fails with reason CreateFailed.
    """
    prev = dict(previous or {})
    total = spec.parts
    ps = part_sets(spec, jobs, gone)
    prev_parts = prev.get("parts") or {}
    done = ps.done | {i for i in parse_ranges(prev_parts.get("completedIndexes")) if 0 <= i < total}
    failed = (ps.failed | parse_ranges(prev_parts.get("failedIndexes"))) - done - ps.covered
    failed = {i for i in failed if 0 <= i < total}
    predict_done = len(done) >= total
    stages = _stages(prev.get("stages") or {}, jobs, gone, now, predict_done, total)
    unfinished = [j for j, _ in jobs.predict_runs() if not job_finished(j)]
    missing = total - len(done)

    stage, phase = "", "Pending"
    reason, message = "Created", "waiting for the predict Job"
    blend, finalize = _state(stages, "blend"), _state(stages, "finalize")
    if finalize == "Complete":
        phase, stage, reason, message = "Succeeded", "finalize", "Completed", f"output written to {spec['output']['uri']}"
    elif finalize == "Failed":
        phase, stage, reason = "Failed", "finalize", "FinalizeFailed"
        message = f"finalize Job failed: {stages['finalize'].get('reason', '')} {stages['finalize'].get('message', '')}"
    elif finalize == "Lost":
        phase, stage, reason = "Failed", "finalize", "JobLost"
        message = (f"{stages['finalize']['job']} was deleted before the operator saw it finish; check the output at "
                   f"{spec['output']['uri']}")
    elif finalize == "Running":
        phase, stage, reason, message = "Finalizing", "finalize", "Finalizing", "building the output's pyramid and metadata"
    elif blend == "Complete":
        phase, stage, reason, message = "Finalizing", "blend", "BlendComplete", "blend complete; starting finalize"
    elif blend == "Failed":
        phase, stage, reason = "Failed", "blend", "BlendFailed"
        message = f"blend Job failed: {stages['blend'].get('reason', '')} {stages['blend'].get('message', '')}"
    elif blend == "Running":
        phase, stage, reason, message = "Blending", "blend", "Blending", "blending predicted parts"
    elif predict_done:
        phase, stage, reason, message = "Predicting", "predict", "PredictComplete", "all parts predicted; starting blend"
    elif unfinished:
        phase, stage, reason = "Predicting", "predict", "Predicting"
        message = f"{len(done)}/{total} parts done, {ps.active} running" + (f", {len(failed)} failed" if failed else "")
    elif stages.get("predict") or jobs.retries or any(
            (g["metadata"].get("labels") or {}).get(LABEL_STAGE) == "predict" for g in gone):
        phase, stage = "Failed", "predict"
        reason, detail = _predict_failure(jobs, gone, stages)
        never = missing - len(failed)
        message = (f"{missing} of {total} parts not done ({len(failed)} failed"
                   + (f": parts {ranges_brief(failed)}" if failed else "")
                   + (f"; {never} never ran" if never else "") + f"); {detail}; "
                   "bump spec.retryFailedParts to re-run every part not done")
    if refused is not None and phase not in ("Succeeded", "Failed"):
        phase, stage, reason = "Failed", refused[0], "CreateFailed"
        message = refused[1]
    message = bounded(message)

    prev_phase = prev.get("phase")
    sticky = prev_phase == "Succeeded" or (prev_phase == "Failed" and prev.get("reason") != "InvalidSpec"
                                           and not unfinished)
    suspended = bool(spec["suspend"]) and phase not in ("Succeeded", "Failed") and not sticky
    if suspended:
        phase, reason, message = "Suspended", "Suspended", f"suspended during {stage or 'start'}"
    conds = prev.get("conditions") or []
    if sticky:
        phase, stage, reason, message = prev_phase, prev.get("stage", stage), prev.get("reason", reason), \
            prev.get("message", message)
    blend_done = blend == "Complete" or finalize in ("Complete", "Running", "Failed", "Lost")
    conditions = [
        _condition(conds, "PredictComplete", predict_done, "AllPartsDone" if predict_done else "PartsPending",
                   f"{len(done)}/{total} parts", now, generation),
        _condition(conds, "BlendComplete", blend_done, "BlendJobComplete" if blend_done else "NotYet",
                   "seams written" if blend_done else "", now, generation),
        _condition(conds, "Complete", phase == "Succeeded", reason if phase == "Succeeded" else "NotYet",
                   message if phase == "Succeeded" else "", now, generation),
        _condition(conds, "Failed", phase == "Failed", reason if phase == "Failed" else "NoFailure",
                   message if phase == "Failed" else "", now, generation),
        _condition(conds, "Suspended", suspended, "SpecSuspend" if suspended else "Running",
                   "spec.suspend is true" if suspended else "", now, generation),
    ]
    if sticky:  # the terminal conditions as they were when the run ended
        keep = {c.get("type"): c for c in conds}
        conditions = [dict(keep[c["type"]]) if c["type"] in keep and c["type"] in ("Complete", "Failed") else c
                      for c in conditions]
    present = {c.get("type") for c in conds}
    for kind, on, why, text in extra:
        if on or kind in present:
            conditions.append(_condition(conds, kind, on, why if on else "Resolved", text if on else "", now,
                                         generation))
    names: dict[str, Any] = {}
    if jobs.predict is not None:
        names["predict"] = jobs.predict["metadata"]["name"]
    for st in ("blend", "finalize"):
        if getattr(jobs, st) is not None:
            names[st] = getattr(jobs, st)["metadata"]["name"]
    if jobs.retries:
        names["retries"] = [j["metadata"]["name"] for j, _ in jobs.retries]
    status: dict[str, Any] = {
        "phase": phase, "stage": stage, "message": message, "reason": reason, "observedGeneration": generation,
        "parts": {"total": total, "succeeded": len(done), "failed": len(failed), "active": ps.active,
                  "completedIndexes": format_ranges(done), "failedIndexes": format_ranges(failed),
                  "summary": f"{len(done)}/{total}"},
        "conditions": conditions,
        "jobs": names,
        "stages": stages,
        "retryAttempt": max(int(prev.get("retryAttempt") or 0), len(jobs.retries)),
        "startTime": prev.get("startTime") or now,
    }
    if prev.get("retryFailedPartsHandled") is not None:
        status["retryFailedPartsHandled"] = prev["retryFailedPartsHandled"]
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = (prev.get("completionTime") if prev_phase in ("Succeeded", "Failed") else None) \
            or now
    return status


def next_stage(status: Mapping[str, Any], jobs: ChildJobs) -> str | None:
    """Which stage's Job the operator should create now, if any. A stage that status records as
    created (even if its Job is gone since) is never created again, except a blend Job that was lost
    before its end was seen: blend is idempotent and its inputs stay until finalize runs."""
    if status.get("phase") in ("Failed", "Succeeded", "Suspended"):
        return None
    stages = status.get("stages") or {}
    parts = status.get("parts") or {}
    if not stages.get("predict") and jobs.predict is None and not jobs.retries:
        return "predict"
    if parts.get("succeeded", 0) >= parts.get("total", 1) and jobs.blend is None and _state(stages, "blend") in (
            None, "Lost"):
        return "blend"
    if _state(stages, "blend") == "Complete" and jobs.finalize is None and _state(stages, "finalize") is None:
        return "finalize"
    return None


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


def stuck_pods(pods: Iterable[Mapping[str, Any]], now_s: float, grace_s: float) -> list[tuple[str, str, str]]:
    """(pod, reason, message) of pods waiting in a state that never resolves itself, for longer than grace."""
    out = []
    for p in pods:
        st = p.get("status") or {}
        if st.get("phase") not in (None, "Pending", "Running"):
            continue
        created = parse_time((p.get("metadata") or {}).get("creationTimestamp"))
        if created is None or now_s - created < grace_s:
            continue
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                out.append((p["metadata"]["name"], waiting["reason"], waiting.get("message") or ""))
                break
    return out


__all__ = ["ChildJobs", "classify", "derive", "next_stage", "part_sets", "job_finished", "count_ranges", "PHASES",
           "status_patch", "stuck_pods", "missing_parts", "ranges_brief"]
