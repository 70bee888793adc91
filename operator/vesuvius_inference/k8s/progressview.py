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
from typing import Any

from vesuvius_inference.contract.progress import ProgressLine, format_duration


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


def aggregate(stage: str, parts: int, parts_done: int, running: int, samples: Sequence[ProgressLine],
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
    return {"stage": stage, "unit": unit, "done": int(done), "total": int(round(total)),
            "percent": f"{100.0 * done / total:.1f}%", "eta": format_duration(eta), "rate": _rate_text(rate),
            "ratePerSecond": round(rate, 3) if rate is not None else 0.0,
            "summary": f"{_count(done)}/{_count(total)} {unit}", "sampledPods": len(samples), "observedAt": now}


def finished(progress: dict[str, Any] | None, stage: str) -> dict[str, Any] | None:
    """What progress shows once the run succeeded: the last stage at 100%."""
    if not progress:
        return None
    total = progress.get("total") or 0
    return dict(progress, stage=stage, done=total, percent="100.0%", eta="0s", rate="-", ratePerSecond=0.0,
                summary=f"{_count(total)}/{_count(total)} {progress.get('unit', 'parts')}")
