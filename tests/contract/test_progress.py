"""The progress line: what pods log and what the operator parses back (one format, both ways)."""

from __future__ import annotations

import io

import pytest
from vesuvius_inference.contract.progress import (
    ProgressLine,
    Reporter,
    format_duration,
    last_progress,
    parse_duration,
    parse_line,
)


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (7.4, "7s"), (1225, "20m25s"), (3723, "1h02m03s"),
                                          (None, "-"), (float("inf"), "-")])
def test_durations_round_trip(seconds, text):
    assert format_duration(seconds) == text
    back = parse_duration(text)
    assert back == (None if seconds is None or seconds == float("inf") else round(seconds))


def test_line_round_trips_through_the_parser():
    line = ProgressLine("predict", 3, 64, 1200, 5000, "patches", 3.1, 1225.0)
    text = line.format()
    assert text == "progress predict 3/64: 1200/5000 patches (24.0%), 3.10 patches/s, ETA 20m25s"
    assert parse_line(text) == line
    unknown = ProgressLine("blend", 0, 1, 0, 10, "units", None, None)
    assert parse_line(unknown.format()) == unknown
    assert parse_line("predict part 3/64: 10 patches run") is None


def test_last_progress_finds_the_latest_line_among_other_logs():
    log = "\n".join(["loading model", ProgressLine("predict", 1, 2, 5, 10, "patches", 1.0, 5.0).format(),
                     "warning: something", ProgressLine("predict", 1, 2, 7, 10, "patches", 1.0, 3.0).format(),
                     "summary line"])
    assert last_progress(log).done == 7
    assert last_progress("nothing here") is None


def test_reporter_prints_lines_without_a_terminal_and_nothing_when_quiet():
    out = io.StringIO()
    r = Reporter("predict", 0, 1, 10, "patches", interval_s=0.0, done=4, stream=out, tty=False)
    r.update(3)
    r.close()
    lines = [parse_line(x) for x in out.getvalue().splitlines()]
    assert all(lines) and "\r" not in out.getvalue()
    assert [x.done for x in lines] == [4, 7, 7]
    assert lines[-1].rate is not None and lines[-1].eta_s is not None
    quiet = io.StringIO()
    r = Reporter("predict", 0, 1, 10, "patches", quiet=True, interval_s=0.0, stream=quiet, tty=False)
    r.update(10)
    r.close()
    assert quiet.getvalue() == ""
