"""Child Job statuses -> InferenceJob status. Pure: the handlers feed it what the API returned.

Kept O(1) in size whatever the number of parts: part sets travel as index-range strings, as in a
Job's ``status.completedIndexes``. Retry Jobs run chosen parts, so their indexes are mapped back to
part ids through the Job's ``--part_ids`` list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .ranges import count_ranges, format_ranges, parse_ranges
from .spec import JobSpec

PHASES = ("Pending", "Predicting", "Blending", "Finalizing", "Succeeded", "Failed", "Suspended")


@dataclass
class ChildJobs:
    """The Jobs of one InferenceJob, by stage; ``retries`` are (job, part ids) of retry Jobs."""

    predict: dict[str, Any] | None = None
    retries: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)
    blend: dict[str, Any] | None = None
    finalize: dict[str, Any] | None = None


def _cond(job: Mapping[str, Any] | None, kind: str) -> bool:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return True
    return False


def job_finished(job: Mapping[str, Any] | None) -> bool:
    return _cond(job, "Complete") or _cond(job, "Failed")


def part_sets(spec: JobSpec, jobs: ChildJobs) -> tuple[set[int], set[int], int]:
    """(completed part ids, failed part ids not completed since, active pods)."""
    done: set[int] = set()
    failed: set[int] = set()
    active = 0
    runs: list[tuple[Mapping[str, Any], Sequence[int] | None]] = []
    if jobs.predict:
        runs.append((jobs.predict, None))
    runs += [(j, ids) for j, ids in jobs.retries]
    for job, ids in runs:
        st = job.get("status") or {}
        mapper = (lambda i: i) if ids is None else (lambda i, ids=ids: ids[i] if 0 <= i < len(ids) else -1)
        done |= {mapper(i) for i in parse_ranges(st.get("completedIndexes"))}
        failed |= {mapper(i) for i in parse_ranges(st.get("failedIndexes"))}
        active += int(st.get("active") or 0)
    done.discard(-1)
    failed.discard(-1)
    return done, failed - done, active


def _condition(prev: Sequence[Mapping[str, Any]], kind: str, status: bool, reason: str, message: str, now: str,
               generation: int) -> dict[str, Any]:
    old = next((c for c in prev if c.get("type") == kind), None)
    value = "True" if status else "False"
    changed = old is None or old.get("status") != value
    return {"type": kind, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
            "observedGeneration": generation}


def derive(spec: JobSpec, jobs: ChildJobs, previous: Mapping[str, Any] | None, now: str, generation: int,
           names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The full status for the object, from its spec and its child Jobs."""
    prev = dict(previous or {})
    done, failed, active = part_sets(spec, jobs)
    total = spec.parts
    predict_done = len(done) >= total
    phase, stage, message = "Pending", "", "waiting for the predict Job"
    reason = "Created"
    predict_jobs_finished = jobs.predict is not None and job_finished(jobs.predict) and all(
        job_finished(j) for j, _ in jobs.retries)
    if _cond(jobs.finalize, "Complete"):
        phase, stage, reason, message = "Succeeded", "finalize", "Completed", f"output written to {spec['output']['uri']}"
    elif _cond(jobs.finalize, "Failed"):
        phase, stage, reason, message = "Failed", "finalize", "FinalizeFailed", _job_message(jobs.finalize, "finalize")
    elif jobs.finalize is not None:
        phase, stage, reason, message = "Finalizing", "finalize", "Finalizing", "finalizing blended logits"
    elif _cond(jobs.blend, "Failed"):
        phase, stage, reason, message = "Failed", "blend", "BlendFailed", _job_message(jobs.blend, "blend")
    elif jobs.blend is not None:
        phase, stage, reason, message = "Blending", "blend", "Blending", "blending predicted parts"
    elif jobs.predict is not None:
        stage = "predict"
        if predict_done:
            phase, reason, message = "Predicting", "PredictComplete", "all parts predicted; starting blend"
        elif failed and predict_jobs_finished:
            phase, reason = "Failed", "PartsFailed"
            message = (f"{len(failed)} of {total} parts failed (parts {format_ranges(failed)}); "
                       "bump spec.retryFailedParts to re-run only them")
        else:
            phase, reason = "Predicting", "Predicting"
            message = f"{len(done)}/{total} parts done, {active} running" + (
                f", {len(failed)} failed" if failed else "")
    suspended = bool(spec["suspend"]) and phase not in ("Succeeded", "Failed")
    if suspended:
        phase, reason, message = "Suspended", "Suspended", f"suspended during {stage or 'start'}"
    conds = prev.get("conditions") or []
    conditions = [
        _condition(conds, "PredictComplete", predict_done, "AllPartsDone" if predict_done else "PartsPending",
                   f"{len(done)}/{total} parts", now, generation),
        _condition(conds, "BlendComplete", _cond(jobs.blend, "Complete"), "BlendJobComplete" if _cond(
            jobs.blend, "Complete") else "NotYet", "blended logits written" if _cond(jobs.blend, "Complete") else "",
            now, generation),
        _condition(conds, "Complete", phase == "Succeeded", reason if phase == "Succeeded" else "NotYet",
                   message if phase == "Succeeded" else "", now, generation),
        _condition(conds, "Failed", phase == "Failed", reason if phase == "Failed" else "NoFailure",
                   message if phase == "Failed" else "", now, generation),
        _condition(conds, "Suspended", suspended, "SpecSuspend" if suspended else "Running",
                   "spec.suspend is true" if suspended else "", now, generation),
    ]
    status: dict[str, Any] = {
        "phase": phase, "stage": stage, "message": message, "reason": reason, "observedGeneration": generation,
        "parts": {"total": total, "succeeded": len(done), "failed": len(failed), "active": active,
                  "completedIndexes": format_ranges(done), "failedIndexes": format_ranges(failed),
                  "summary": f"{len(done)}/{total}"},
        "conditions": conditions,
        "jobs": dict(names or {}),
        "startTime": prev.get("startTime") or now,
    }
    if phase in ("Succeeded", "Failed"):
        status["completionTime"] = prev.get("completionTime") or now
    return status


def _job_message(job: Mapping[str, Any] | None, stage: str) -> str:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed":
            return f"{stage} Job failed: {c.get('reason', '')} {c.get('message', '')}".strip()
    return f"{stage} Job failed"


def next_stage(status: Mapping[str, Any], jobs: ChildJobs) -> str | None:
    """Which Job the operator should create now, if any."""
    if status.get("phase") in ("Failed", "Succeeded", "Suspended"):
        return None
    if jobs.predict is None:
        return "predict"
    parts = status.get("parts") or {}
    if jobs.blend is None and parts.get("succeeded", 0) >= parts.get("total", 1):
        return "blend"
    if jobs.blend is not None and jobs.finalize is None and _cond(jobs.blend, "Complete"):
        return "finalize"
    return None


__all__ = ["ChildJobs", "derive", "next_stage", "part_sets", "job_finished", "count_ranges", "PHASES"]
