"""Progress and summaries tell the work this process did: resumed patches are resumed, not run; a stage
that found its work done shows no rate; a part's rate and the stage's are in the same unit (voxels of the
region, a --bbox's); and in a terminal a log line never lands on the bar."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest
from helpers import smooth_volume, write_zarr
from vesuvius_inference.cli import main
from vesuvius_inference.contract.config import PredictConfig
from vesuvius_inference.contract.progress import Reporter, RunProgress
from vesuvius_inference.predict.stage import run_predict


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen_lines(text: str) -> list[str]:
    """What a terminal shows: each line after its last carriage return, padding gone."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]


@pytest.fixture
def terminal(monkeypatch):
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    yield term
    logging.basicConfig(level=logging.WARNING, stream=sys.__stderr__, force=True)


def test_a_log_line_in_a_terminal_is_never_glued_onto_the_bar(terminal):
    bar = Reporter("predict", 0, 1, 10, "patches", stream=terminal, tty=True)
    bar.update(3)
    logging.getLogger("vesuvius_inference.predict.part").info("predict part 0/1: 3 patches run")
    bar.update(3)
    bar.close()
    logging.getLogger("vesuvius_inference").info("after the bar")
    shown = screen_lines(terminal.getvalue())
    assert "predict part 0/1: 3 patches run" in shown and "after the bar" in shown
    assert not [s for s in shown if "patche/s" in s]


def test_a_workers_log_line_goes_above_the_stages_bar(terminal):
    progress = RunProgress("predict", {0: 4, 1: 4}, "patches", stream=terminal, tty=True)
    progress.write("predict part 1/2: 4 patches run, 0 empty skipped\n")
    progress.close()
    assert "predict part 1/2: 4 patches run, 0 empty skipped" in screen_lines(terminal.getvalue())


def test_resumed_patches_are_counted_as_resumed_not_run(tmp_path, model_factory, caplog):
    model = model_factory(patch=(32, 32, 32), folds=(0,))
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((32, 64, 64), seed=5), chunks=(32, 32, 32))
    cfg = PredictConfig(model_path=str(model), input_dir=vol, output_dir=str(tmp_path / "parts"), device="cpu",
                        do_tta=False, checkpoint_s=0.0, quiet=True)
    seen = []

    def stop_after_three(line):
        seen.append(line)
        if line.done - seen[0].done >= 3:
            raise KeyboardInterrupt  # a Ctrl-C in the fourth batch: three patches are in the checkpoint

    with pytest.raises(KeyboardInterrupt):
        run_predict(cfg, listener=stop_after_three)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vesuvius_inference"):
        run_predict(cfg)
    line = next(r.getMessage() for r in caplog.records if " patches run" in r.getMessage())
    m = re.search(r": (\d+) patches run \((\d+) more run before, resumed from a checkpoint at (\d+)\)", line)
    assert m, line
    here, before, at = map(int, m.groups())
    assert before >= 2 and at >= before and here > 0
    total = seen[0].total
    assert here + before <= total and "Mvox/s of the region" in line


def test_stage_rates_are_over_work_done_and_match_the_parts(tmp_path, model_factory, capsys):
    model = model_factory(patch=(32, 32, 32), folds=(0,))
    vol = write_zarr(tmp_path / "in.zarr", smooth_volume((48, 96, 96), seed=6), chunks=(24, 48, 48))
    out = str(tmp_path / "out.zarr")
    args = ["pipeline", "--input", vol, "--output", out, "--model", str(model), "--devices", "cpu",
            "--disable_tta", "--bbox", "0:40,8:90,0:60", "--keep_intermediates"]
    assert main([*args, "--skip_finalize"]) == 0  # the command's own log lines, on stderr
    text = capsys.readouterr().err
    part = float(re.search(r"predict part 0/1: .*, ([\d.]+) Mvox/s of the region", text).group(1))
    stage = float(re.search(r"== predict done in [\d.]+ s \(([\d.]+) Mvox/s over", text).group(1))
    assert stage <= part <= 1.6 * stage, text  # the same unit: the part's time is within the stage's
    assert main(args) == 0  # predict and blend were done by the first run; only finalize works
    text = capsys.readouterr().err
    for name in ("predict", "blend"):
        assert re.search(rf"== {name} done in [\d.]+ s: nothing left to do", text), text
    assert re.search(r"== finalize done in [\d.]+ s \([\d.]+ Mvox/s over", text), text
