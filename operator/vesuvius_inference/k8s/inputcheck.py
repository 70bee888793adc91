"""The ``IntensityOutOfRange`` condition: what the predict pods said about the input's intensities. Pure.

Every predict part checks the input against the model's training intensities before it loads the
model (normalization.py, intensity.py) and logs one line when they do not match: ``warning: the
input's intensities do not match ...``, or ``error: ...`` when it refuses the input (exit 3). Every
part samples the same chunks, so one pod's word is the run's. The operator learns it the cheapest
reliable way: the first bytes of one started predict pod's log (``pods/log`` with ``limitBytes``, no
``tailLines``), which hold that line, if any, before the first progress line (the part logs it before
its model loads). A progress line, or a pod that exited 0, without it means no finding. The tail the
progress sampler reads would do only while the line is among a pod's last lines (minutes), and a
termination message only once a pod ends (hours); the head is there from the part's first minute to
its last. observe.py reads it at most once per diagnose interval while a predict Job runs, once
after it finished, and never again once the condition is set (``decided``): the status is the ledger.

The condition is True with reason ``OnAnotherScale`` (the parts refuse such an input by default, so
the run fails with it) or ``OutsideTrainingRange`` and the part's own line as message, or False with
reason ``NoneReported``. ``spec.inference.intensityCheck: off``: no check, no condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vesuvius_inference.contract.intensity import OFF, Reported, reported
from vesuvius_inference.contract.progress import parse_line
from vesuvius_inference.k8s.status import bounded

CONDITION = "IntensityOutOfRange"
HEAD_BYTES = 65536  # the part's line comes before its model loads: far inside the log's first 64 KiB
PODS_PER_READ = 3


def wanted(body: Mapping[str, Any]) -> bool:
    """Whether the run still has something to learn: the parts check, and no pod has said yet."""
    check = (((body.get("spec") or {}).get("inference") or {}).get("intensityCheck")) or "auto"
    conditions = ((body.get("status") or {}).get("conditions")) or []
    return check != OFF and not any(c.get("type") == CONDITION for c in conditions)


def from_pod(pod: Mapping[str, Any], head: str) -> Reported | None:
    """What one predict pod's log head says (None: nothing yet)."""
    progressed = any(parse_line(line) is not None for line in head.splitlines())
    succeeded = ((pod.get("status") or {}).get("phase")) == "Succeeded"
    return reported(head, (pod.get("metadata") or {}).get("name", ""), progressed=progressed, succeeded=succeeded)


def condition(report: Reported, now: str, generation: int) -> dict[str, Any]:
    if not report.found:
        return {"type": CONDITION, "status": "False", "reason": "NoneReported",
                "message": f"predict pod {report.pod} found the input's intensities in the model's training range "
                           "(or its normalization has none)", "lastTransitionTime": now,
                "observedGeneration": generation}
    said = "refused the input" if report.refused else "ran on with a warning"
    # the spec is immutable once created: the line's "--intensity_check warn" is a new InferenceJob here
    hint = " (on Kubernetes: spec.inference.intensityCheck, in a new InferenceJob)" if report.refused else ""
    return {"type": CONDITION, "status": "True", "reason": "OnAnotherScale" if report.another_scale else
            "OutsideTrainingRange", "message": bounded(f"predict pod {report.pod} {said}: {report.message}{hint}"),
            "lastTransitionTime": now, "observedGeneration": generation}


def carry(conditions: list[dict[str, Any]], previous: Sequence[Mapping[str, Any]], report: Reported | None,
          *, now: str, generation: int) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """The status's conditions with this one: set once from a pod's report, kept as it was after that
    (the status is rebuilt every pass); and the Warning Event of a finding."""
    old = next((dict(c) for c in previous if c.get("type") == CONDITION), None)
    if old is not None:
        return [*conditions, old], []
    if report is None:
        return conditions, []
    new = condition(report, now, generation)
    events = [("Warning", CONDITION, new["message"])] if report.found else []
    return [*conditions, new], events
