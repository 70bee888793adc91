"""Progress a user can follow in a terminal and in ``kubectl logs``, and that the operator can read.

In a terminal a stage draws a tqdm bar. Anywhere else (a pod's log, a file, a pipe) a bar's carriage
returns make one unreadable line, so the stage prints one plain line every ``interval_s`` seconds
instead, and a summary line at its end. The line is also a contract: the operator reads the last
one from each running pod's log (``pods/log``, ``tailLines``) to show percent done and an ETA on the
InferenceJob, so its format lives here, with its parser, and is tested both ways. It is torch-free
(the operator imports it).

    progress predict 3/64: 1200/5000 patches (24.0%), 3.10 patches/s, ETA 20m25s
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

PREFIX = "progress"
_LINE = re.compile(
    r"^progress (?P<stage>[a-z+]+) (?P<part>\d+)/(?P<parts>\d+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>[a-z]+) "
    r"\((?P<pct>[\d.]+)%\), (?P<rate>[\d.]+|-) [a-z]+/s, ETA (?P<eta>[\dhms]+|-)$")


def format_duration(seconds: float | None) -> str:
    """``1h02m03s`` / ``20m25s`` / ``7s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def parse_duration(text: str) -> float | None:
    if text == "-":
        return None
    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not m or not any(m.groups()):
        return None
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


@dataclass(frozen=True)
class ProgressLine:
    """One progress report of one unit of work (a predict part, a blend or finalize split)."""

    stage: str
    part: int
    parts: int
    done: int
    total: int
    unit: str
    rate: float | None  # units per second over this run, None before the first is done
    eta_s: float | None

    def format(self) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = f"{self.rate:.2f}" if self.rate is not None else "-"
        return (f"{PREFIX} {self.stage} {self.part}/{self.parts}: {self.done}/{self.total} {self.unit} "
                f"({pct:.1f}%), {rate} {self.unit}/s, ETA {format_duration(self.eta_s)}")


def parse_line(text: str) -> ProgressLine | None:
    """The progress report in one log line (None if the line is something else)."""
    m = _LINE.match(text.strip())
    if m is None:
        return None
    rate = None if m["rate"] == "-" else float(m["rate"])
    return ProgressLine(m["stage"], int(m["part"]), int(m["parts"]), int(m["done"]), int(m["total"]), m["unit"],
                        rate, parse_duration(m["eta"]))


def last_progress(log_text: str) -> ProgressLine | None:
    """The last progress report in a log excerpt (the operator reads a pod's last lines)."""
    for line in reversed(log_text.splitlines()):
        found = parse_line(line)
        if found is not None:
            return found
    return None


class _TqdmWrite(logging.Handler):
    """A log handler that writes through ``tqdm.write``: the bar is cleared, the line written, the bar
    drawn again below it (tqdm.contrib.logging's handler, for the handler that writes on the bar's stream)."""

    def __init__(self, orig: logging.StreamHandler[Any]) -> None:
        super().__init__(orig.level)
        self.setFormatter(orig.formatter)
        self.filters = list(orig.filters)
        self.stream = orig.stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: a handler never raises
            self.handleError(record)


class AboveBar:
    """While a bar is drawn on ``stream``, the root logger's handlers that write there write above it
    (a part's summary, a warning), never onto the bar's line; ``restore`` puts them back."""

    def __init__(self, stream: TextIO) -> None:
        root = logging.getLogger()
        self._saved = list(root.handlers)
        root.handlers = [_TqdmWrite(h) if isinstance(h, logging.StreamHandler) and h.stream is stream
                         and not isinstance(h, logging.FileHandler) else h for h in root.handlers]

    def restore(self) -> None:
        logging.getLogger().handlers = self._saved


class Reporter:
    """A bar in a terminal, a line every ``interval_s`` elsewhere; nothing when ``quiet``.

    ``done`` counts work finished before this run (resumed, or skipped by a listing) so percentages
    are of the whole unit of work, while the rate and the ETA use only what this run did.
    """

    def __init__(self, stage: str, part: int, parts: int, total: int, unit: str, *, quiet: bool = False,
                 interval_s: float = 30.0, done: int = 0, stream: TextIO | None = None,
                 tty: bool | None = None, listener: Callable[[ProgressLine], None] | None = None,
                 name: str | None = None) -> None:
        self.stage, self.part, self.parts, self.total, self.unit = stage, part, parts, total, unit
        self.done, self._start_done = done, done
        self.stream = stream if stream is not None else sys.stderr
        self.quiet, self.interval_s, self.listener, self.name = quiet, interval_s, listener, name
        self._t0 = self._last = time.monotonic()
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar: Any = None
        self._redirect: Any = None
        if not quiet and is_tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=done, desc=name or f"{stage} {part}/{parts}", unit=unit,
                             file=self.stream, dynamic_ncols=True, mininterval=1.0)
            self._redirect = AboveBar(self.stream)
        elif not quiet:
            self._emit()
        if listener is not None:
            listener(self.line())

    def skip(self, n: int) -> None:
        """Work found done (resumed, or empty by the listing): counts towards done, not the rate."""
        self.done += n
        self._start_done += n
        if self._bar is not None:
            self._bar.update(n)

    @property
    def rate(self) -> float | None:
        dt = time.monotonic() - self._t0
        n = self.done - self._start_done
        return n / dt if n > 0 and dt > 0 else None

    def line(self) -> ProgressLine:
        rate = self.rate
        eta = (self.total - self.done) / rate if rate else None
        return ProgressLine(self.stage, self.part, self.parts, self.done, self.total, self.unit, rate, eta)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.done += n
        if self.listener is not None:
            self.listener(self.line())
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
        elif not self.quiet and time.monotonic() - self._last >= self.interval_s:
            self._emit()

    def write(self, text: str) -> None:
        """A line for people (a worker's log line) that must not land on the bar."""
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text.rstrip("\n"), file=self.stream)
        else:  # passed on as it came (a quiet worker logs warnings and errors only)
            self.stream.write(text if text.endswith("\n") else text + "\n")
            self.stream.flush()

    @property
    def done_here(self) -> int:
        """Units this process finished (resumed and listed work excluded)."""
        return self.done - self._start_done

    @property
    def resumed(self) -> int:
        """Units found done when this process started (a checkpoint, a journal, a listing)."""
        return self._start_done

    def _emit(self) -> None:
        self._last = time.monotonic()
        text = self.line().format()
        if self.name:  # an aggregate, for people: not a line the operator reads
            text = f"{self.name}:" + text.split(":", 1)[1]
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """The bar ends; elsewhere a last line says where the unit stopped (100% when done)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            if self._redirect is not None:
                self._redirect.restore()
                self._redirect = None
        elif not self.quiet and self.done != self._start_done:
            self._emit()


class RunProgress:
    """Progress across the parts of a stage (the local pipeline): one bar or line for all of them.

    Parts report their own ``ProgressLine`` (in this process through a ``Reporter`` listener, from a
    worker process through its log lines); the total counts every part, known from the plan before
    any part starts, so the ETA is the whole stage's.
    """

    def __init__(self, stage: str, totals: dict[int, int], unit: str, *, quiet: bool = False,
                 interval_s: float = 30.0, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.totals, self.seen = dict(totals), dict.fromkeys(totals, 0)
        self._started: set[int] = set()
        self._lock = threading.Lock()  # worker processes' readers report from their own threads
        self.reporter = Reporter(stage, 0, len(totals), sum(totals.values()), unit, quiet=quiet,
                                 interval_s=interval_s, stream=stream, tty=tty,
                                 name=f"{stage} ({len(totals)} parts)")

    def observe(self, line: ProgressLine) -> None:
        """A part's latest report: the aggregate advances by what is new in it."""
        with self._lock:
            self._observe(line)

    def _observe(self, line: ProgressLine) -> None:
        if line.part not in self.seen:
            return
        first = line.part not in self._started
        self._started.add(line.part)
        delta = line.done - self.seen[line.part]
        if delta > 0:
            self.seen[line.part] = line.done
            if first:  # what the part found done when it started is not this run's speed
                self.reporter.skip(delta)
            else:
                self.reporter.update(delta)

    def write(self, text: str) -> None:
        """A worker's log line (not a progress line), above the bar in a terminal."""
        with self._lock:
            self.reporter.write(text)

    def part_done(self, part: int) -> None:
        self.observe(ProgressLine("", part, 0, self.totals.get(part, 0), 0, "", None, None))

    def close(self) -> None:
        self.reporter.close()
