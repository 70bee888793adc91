"""Percent done, rate and ETA of a stage across all its parts, from a sample of running pods. Pure.

Worker pods print one progress line every 30 s (progress.py, ``progress predict 3/64: 1200/5000 patches
(24.0%), 3.10 patches/s, ETA 20m25s``); the operator reads the last one of a few running pods
(``pods/log`` with ``tailLines``, a bounded number per interval: observe.py). Parts are balanced by
work (predict's split by non-empty patches), so the sampled parts stand for the running ones and
their mean total for every part:

    total = parts x mean(total of a sampled part)
    done  = parts done x mean total + running x mean(done of a sampled part)
    rate  = running x mean(rate of a sampled part)           ETA = (total - done) / rate

``running`` is the Jobs' ``status.active`` as last seen, which can lag the pods (the Job controller
counts them from its own cache, the operator's view of the Job is older than its pod list): never
fewer than the pods that just reported a line.

With no sample yet, the parts alone give the percentage (unit ``parts``) and no ETA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vesuvius_inference.contract.progress import ProgressLine, format_duration
from vesuvius_inference.k8s.status import parse_time


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _rate_text(rate: float | None) -> str:
    return "-" if rate is None else (f"{rate:.2f}/s" if rate < 100 else f"{rate:.0f}/s")


def _count(n: float) -> str:
    n = int(round(n))
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= 10 * size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


def aggregate(stage: str, parts: int, parts_done: int, *, running: int, samples: Sequence[ProgressLine],
              now: str) -> dict[str, Any]:
    """The InferenceJob's ``status.progress`` for ``stage``."""
    samples = [s for s in samples if s.stage.split("+")[0] == stage and s.total > 0]
    if not samples or parts <= 0:
        pct = 100.0 * parts_done / parts if parts else 0.0
        return {"stage": stage, "unit": "parts", "done": parts_done, "total": parts, "percent": f"{pct:.1f}%",
                "eta": "-", "rate": "-", "summary": f"{parts_done}/{parts} parts", "sampledPods": 0,
                "observedAt": now}
    unit = samples[0].unit
    per_part = _mean([s.total for s in samples])
    total = parts * per_part
    running = max(0, min(max(running, len(samples)), parts - parts_done))
    done = min(total, parts_done * per_part + running * _mean([s.done for s in samples]))
    rates = [s.rate for s in samples if s.rate is not None]
    rate = running * _mean(rates) if rates and running else None
    eta = (total - done) / rate if rate else None
    out = {"stage": stage, "unit": unit, "done": int(done), "total": int(round(total)),
           "percent": f"{100.0 * done / total:.1f}%", "eta": format_duration(eta), "rate": _rate_text(rate),
           "ratePerSecond": round(rate, 3) if rate is not None else 0.0,
           "summary": f"{_count(done)}/{_count(total)} {unit}", "sampledPods": len(samples), "observedAt": now}
    if eta is not None:
        out["etaSeconds"] = round(eta, 1)  # what the whole run's ETA adds up (run_view)
    return out


def finished(progress: dict[str, Any] | None, stage: str) -> dict[str, Any] | None:
    """What progress shows once the run succeeded: the last stage at 100%."""
    if not progress:
        return None
    total = progress.get("total") or 0
    out = dict(progress, stage=stage, done=total, percent="100.0%", eta="0s", rate="-", ratePerSecond=0.0,
               summary=f"{_count(total)}/{_count(total)} {progress.get('unit', 'parts')}")
    out.pop("etaSeconds", None)
    return out


# ---- the whole run: predict + blend + finalize ------------------------------------------------------------

STAGES = ("predict", "blend", "finalize")


@dataclass(frozen=True)
class RunShape:
    """What the spec says about how the stages share the run's time: pods that run each stage at once
    (predict: ``parallelism``, at most ``parts``; blend and finalize: their ``parallelism``) and where predict
    runs (``inference.device``)."""

    predict_pods: int
    blend_pods: int = 1
    finalize_pods: int = 1
    device: str = "cuda"


# Pod-seconds of blend and finalize per pod-second of predict, before they report their own rate. Finalize
# reads every output chunk once and writes the pyramid (1/7 of it again, compressed): about a zarr copy's
# work per voxel. Predict's host work alone (quantised accumulation, division, compression, without the
# network) is 2.1-2.4 copies (README Benchmarks, bench_hostpath: 0.41-0.48), and on a GPU the network's
# forward passes, the input reads and the seams come on top: a tenth. On the CPU predict runs ~0.55 Mvox/s
# (bench_engine), about 40x slower than a copy: 0.025. Blend with the fused data path touches ~0.1% of the
# bytes (bench_scaleout) and costs its pod's start: a tenth of finalize's share. Per pod: one finalize pod
# after 64 predict GPUs takes 6.4x predict's wall time, which is what a user waits for.
PRIOR = {"cuda": {"blend": 0.01, "finalize": 0.1}, "cpu": {"blend": 0.0025, "finalize": 0.025}}


# Reasons (decide.WAITING, shown in kubectl get's REASON) that hold the whole run: its pods wait, were evicted or
# were never created, so there is no current rate and no ETA (DONE stays what was done). A pod stuck
# Terminating holds one part only: the others' rate still counts.
HELD = frozenset({"KueueMissing", "GPUUnavailable", "PodsNotCreated", "PodsUnschedulable", "StorageUnreachable",
                  "PodsStuck", "Evicted", "Queued"})


def _fraction(progress: dict[str, Any]) -> float:
    total = float(progress.get("total") or 0)
    return min(1.0, float(progress.get("done") or 0) / total) if total > 0 else 0.0


def _measured(status: dict[str, Any], here: int, progress: dict[str, Any]) -> list[float | None]:
    """Each stage's duration where it is known: a finished one's from its start to its end, the running one's
    time so far plus its ETA at the sample; None for the rest."""
    stages = status.get("stages") or {}
    ends = [parse_time((stages.get(s) or {}).get("completionTime")) if i < here else None
            for i, s in enumerate(STAGES)]
    begins = [parse_time(status.get("startTime")), ends[0], ends[1]]
    at, eta_s = parse_time(progress.get("observedAt")), progress.get("etaSeconds")
    measured: list[float | None] = []
    for i in range(len(STAGES)):
        b, e = begins[i], ends[i]
        if i < here and b is not None and e is not None:
            measured.append(max(0.0, e - b))
        elif i == here and eta_s is not None and at is not None and b is not None:
            measured.append(max(0.0, at - b) + float(eta_s))
        else:
            measured.append(None)
    return measured


def _durations(measured: list[float | None], shape: RunShape) -> list[float]:
    """Every stage's duration: measured where known (once predict's is), else predict's times the prior, per
    pod (predict unknown: 1, so that only the priors' proportions count)."""
    prior = PRIOR.get(shape.device, PRIOR["cuda"])
    pods = {"blend": shape.blend_pods, "finalize": shape.finalize_pods}
    scale = measured[0]
    durations: list[float] = [scale if scale is not None else 1.0]
    for s in STAGES[1:]:
        m = measured[STAGES.index(s)]
        guess = prior[s] * durations[0] * max(1, shape.predict_pods) / max(1, pods[s])
        durations.append(m if (m is not None and scale is not None) else guess)
    return durations


def run_view(status: dict[str, Any], shape: RunShape) -> dict[str, Any]:
    """``status.run``: DONE and ETA of the whole run (predict + blend + finalize), for ``kubectl get ij``.

    The stages do different work in different units (predict's patches on GPUs, blend's and finalize's
    chunks on CPUs), so they are weighed by what a user waits for: their wall time. Each stage's duration is
    the best thing known about it:

    - a finished stage: measured (``status.startTime`` -> ``stages.predict.completionTime`` -> blend's ->
      the run's end; each stage starts when the one before it ended, as the operator creates its Job then);
    - the running stage, once its pods report a rate (``status.progress``, their progress lines): its time
      so far plus its ETA, both taken at the sample (``progress.observedAt``);
    - a stage not started, or running with no rate yet: estimated from predict, ``PRIOR[device][stage] x
      predict's duration x predict pods / the stage's pods`` (its work in pod-seconds relative to predict's,
      spread over its own pods: one finalize pod after 64 predict GPUs takes long), replaced by its own
      measure as soon as it has one.

    DONE = sum(fraction done x duration) / sum(duration), a stage's fraction from its progress (predict:
    patches, or parts before any pod reported; a finished stage 1); ETA = the running stage's ETA + the
    later stages' durations. Until predict has a rate there is no duration at all: DONE uses the priors'
    proportions and ETA is ``-``; so is it while something holds the run (:data:`HELD`: evicted, queued,
    waiting for storage...) or it is suspended or failed. Every input is in the status (times of samples and stage ends, never the
    clock), so the view changes only when the status does and costs no extra status write.

    An estimate, like the stage's own: a stage much slower or faster than the prior moves DONE when it
    reports its first rate. Time predict waited in a queue counts as predict's (its wall time).
    """
    phase, stage = status.get("phase") or "", status.get("stage") or ""
    if phase == "Succeeded":
        return {"percent": "100.0%", "fraction": 1.0, "eta": "0s", "etaSeconds": 0.0}
    if stage not in STAGES:
        return {"percent": "0.0%", "fraction": 0.0, "eta": "-"}
    progress = status.get("progress") or {}
    if progress.get("stage") != stage:
        progress = {}
    parts = status.get("parts") or {}
    here = STAGES.index(stage)
    if stage == "predict" and not progress:
        total = int(parts.get("total") or 0)
        progress = {"done": int(parts.get("succeeded") or 0), "total": total} if total else {}
    stages = status.get("stages") or {}
    while here + 1 < len(STAGES) and (stages.get(STAGES[here]) or {}).get("state") == "Complete":
        here, progress = here + 1, {}  # e.g. all parts predicted, the blend Job about to start
    fractions = [1.0 if i < here else (_fraction(progress) if i == here and progress else 0.0)
                 for i in range(len(STAGES))]
    eta_s = progress.get("etaSeconds")
    measured = _measured(status, here, progress)
    scale = measured[0]  # None: no duration known, the priors' proportions only
    durations = _durations(measured, shape)
    whole = sum(durations)
    done = sum(f * d for f, d in zip(fractions, durations))
    fraction = done / whole if whole > 0 else 0.0
    view: dict[str, Any] = {"percent": f"{100.0 * fraction:.1f}%", "fraction": round(fraction, 4), "eta": "-"}
    if phase in ("Failed", "Suspended") or scale is None or status.get("reason") in HELD:
        return view
    if eta_s is not None and measured[here] is not None:
        left = float(eta_s)
    else:  # the running stage has no rate yet: the part of its estimate not done
        left = durations[here] * (1.0 - fractions[here])
    left += sum(durations[here + 1:])
    return dict(view, eta=format_duration(left), etaSeconds=round(left, 1))
